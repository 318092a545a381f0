// The gateway's dashboard: polls /stats.json every second, keeps 5 minutes of samples,
// computes rates between samples, and draws them as SVG line charts. Plain JavaScript, no
// libraries; every value from the server reaches the page through textContent only.
'use strict';

(function () {
  const POLL_MS = 1000;
  const WINDOW_S = 300;
  const TOKEN_KEY = 'gateway-admin-token';
  const SVG = 'http://www.w3.org/2000/svg';
  const CLASSES = ['2xx', '3xx', '4xx', '5xx', '1xx', 'other'];
  const MAX_REASONS = 5;
  const DENIAL_COLORS = [3, 2, 4, 1, 0];

  const $ = (id) => document.getElementById(id);
  let samples = []; // {t: uptime seconds, d: document}
  let latest = null;
  let fetchedAt = 0;
  let timer = null;

  // ---- formatting -------------------------------------------------------------------------
  function fmtNum(v) {
    if (v === null || v === undefined || !isFinite(v)) return '–';
    const a = Math.abs(v);
    const units = [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']];
    for (const [n, u] of units) {
      if (a >= n) return trim(v / n) + u;
    }
    return trim(v);
  }
  function trim(v) {
    const a = Math.abs(v);
    if (a === 0) return '0';
    if (Number.isInteger(v)) return String(v);
    const digits = a >= 100 ? 0 : a >= 10 ? 1 : 2;
    return String(Number(v.toFixed(digits)));
  }
  function fmtRate(v) { return v === null ? '–' : fmtNum(v) + '/s'; }
  function fmtUs(us) {
    if (us === null || us === undefined || !isFinite(us)) return '–';
    if (us >= 1e6) return trim(us / 1e6) + ' s';
    if (us >= 1000) return trim(us / 1000) + ' ms';
    return trim(us) + ' µs';
  }
  // A quantile's bucket bound; `null` with observations means beyond the last finite bucket.
  function fmtLe(us, doc) {
    if (us !== null && us !== undefined) return fmtUs(us);
    const finite = (doc.verify_buckets || []).filter((b) => b.le_us !== null);
    return finite.length ? '> ' + fmtUs(finite[finite.length - 1].le_us) : '–';
  }
  function fmtBytes(b) {
    if (!isFinite(b)) return '–';
    const units = [[1 << 30, 'GiB'], [1 << 20, 'MiB'], [1 << 10, 'KiB']];
    for (const [n, u] of units) if (b >= n) return trim(b / n) + ' ' + u;
    return b + ' B';
  }
  function fmtPct(v) { return v === null || !isFinite(v) ? '–' : trim(v) + '%'; }
  function fmtDur(s) {
    if (s === null || !isFinite(s)) return '–';
    s = Math.max(0, Math.floor(s));
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24;
    const m = Math.floor(s / 60) % 60, sec = s % 60;
    const p2 = (n) => String(n).padStart(2, '0');
    if (d > 0) return d + 'd ' + h + 'h';
    if (h > 0) return h + 'h ' + p2(m) + 'm';
    if (m > 0) return m + 'm ' + p2(sec) + 's';
    return sec + 's';
  }
  function setText(id, text, raw) {
    const el = $(id);
    if (el.textContent !== text) el.textContent = text;
    if (raw !== undefined) el.dataset.value = String(raw);
  }

  // ---- data --------------------------------------------------------------------------------
  function headers(extra) {
    const h = Object.assign({ 'X-Gateway-Admin': '1' }, extra || {});
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) h.Authorization = 'Bearer ' + token;
    return h;
  }

  async function poll() {
    const started = performance.now();
    try {
      const resp = await fetch('/stats.json', { headers: headers(), cache: 'no-store' });
      if (resp.status === 403) {
        const body = await resp.json().catch(() => ({}));
        showLogin(body);
        return; // polling resumes after signing in
      }
      if (!resp.ok) throw new Error('HTTP ' + resp.status);
      const doc = await resp.json();
      fetchedAt = performance.now();
      accept(doc);
      setStatus('live', 'ok');
    } catch (e) {
      setStatus('no answer: ' + e.message, 'bad');
    }
    timer = setTimeout(poll, Math.max(0, POLL_MS - (performance.now() - started)));
  }

  function accept(doc) {
    const last = samples[samples.length - 1];
    if (last && doc.uptime_secs <= last.t) samples = []; // the gateway restarted
    samples.push({ t: doc.uptime_secs, d: doc });
    while (samples.length > 2 && samples[0].t < doc.uptime_secs - WINDOW_S - 2) samples.shift();
    latest = doc;
    $('login').hidden = true;
    $('main').hidden = false;
    render();
  }

  function setStatus(text, cls) {
    const el = $('status');
    el.textContent = text;
    el.className = 'status ' + cls;
  }

  function showLogin(body) {
    if (timer) clearTimeout(timer);
    setStatus('signed out', 'bad');
    $('main').hidden = true;
    $('login').hidden = false;
    const msg = $('login-message');
    if (body && body.token_required === false) {
      $('login-form').querySelector('.row').hidden = true;
      msg.textContent = body.error || 'not allowed';
    } else if (sessionStorage.getItem(TOKEN_KEY)) {
      msg.textContent = 'The token was refused. ' + (body && body.error ? body.error : '');
      sessionStorage.removeItem(TOKEN_KEY);
    }
  }

  // Counter reads along a path such as ['user_plane', 'requests'].
  function get(doc, path) {
    let v = doc;
    for (const k of path) {
      if (v === null || v === undefined) return undefined;
      v = v[k];
    }
    return v;
  }
  function total(doc, name) { return doc && doc.totals ? doc.totals[name] : undefined; }

  // Per-second rate of `pick(doc)` between consecutive samples: [{t, v}].
  function rateSeries(pick) {
    const out = [];
    for (let i = 1; i < samples.length; i++) {
      const a = samples[i - 1], b = samples[i];
      const va = pick(a.d), vb = pick(b.d), dt = b.t - a.t;
      out.push({ t: b.t, v: (typeof va === 'number' && typeof vb === 'number' && dt > 0) ? Math.max(0, vb - va) / dt : null });
    }
    return out;
  }
  function lastValue(series) {
    for (let i = series.length - 1; i >= 0; i--) if (series[i].v !== null) return series[i].v;
    return null;
  }

  // Quantile q of the verifications between two samples, from the cumulative histogram.
  function quantileBetween(a, b, q) {
    const ba = a.verify_buckets || [], bb = b.verify_buckets || [];
    if (ba.length !== bb.length || bb.length === 0) return null;
    const n = bb[bb.length - 1].count - ba[ba.length - 1].count;
    if (n <= 0) return null;
    const want = Math.ceil(q * n);
    for (let i = 0; i < bb.length; i++) {
      if (bb[i].count - ba[i].count >= want) return bb[i].le_us; // null: overflow bucket
    }
    return null;
  }
  function pairSeries(f) {
    const out = [];
    for (let i = 1; i < samples.length; i++) out.push({ t: samples[i].t, v: f(samples[i - 1].d, samples[i].d) });
    return out;
  }

  // ---- charts ------------------------------------------------------------------------------
  function el(name, attrs, text) {
    const e = document.createElementNS(SVG, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  // Axis from 0 to at least v in at most 5 steps of 1, 2, 2.5 or 5 times a power of ten.
  function niceScale(v) {
    if (!(v > 0)) return { max: 1, steps: 4 };
    const p = Math.pow(10, Math.floor(Math.log10(v / 5)));
    for (const m of [1, 2, 2.5, 5, 10]) {
      const step = m * p, steps = Math.ceil(v / step - 1e-9);
      if (steps <= 5) return { max: step * Math.max(steps, 2), steps: Math.max(steps, 2) };
    }
    return { max: v, steps: 4 };
  }

  // series: [{name, points: [{t, v}], value: text}]; opts: {fmt, max}
  function chart(id, series, opts) {
    const fig = $(id);
    let svg = fig.querySelector('svg');
    let legend = fig.querySelector('ul');
    if (!svg) {
      svg = el('svg', { role: 'img' });
      legend = document.createElement('ul');
      legend.className = 'legend';
      fig.append(svg, legend);
    }
    const w = Math.max(200, Math.round(svg.getBoundingClientRect().width || fig.clientWidth));
    const h = 160, left = 52, right = 8, top = 8, bottom = 20;
    svg.setAttribute('viewBox', '0 0 ' + w + ' ' + h);
    svg.setAttribute('aria-label', fig.querySelector('figcaption').textContent);
    const now = latest ? latest.uptime_secs : 0;
    const t0 = now - WINDOW_S;
    let max = 0;
    for (const s of series) for (const p of s.points) if (p.v !== null && p.t >= t0 && p.v > max) max = p.v;
    const scale = opts.max ? { max: opts.max, steps: 4 } : niceScale(max);
    const ymax = scale.max;
    const x = (t) => left + (w - left - right) * (t - t0) / WINDOW_S;
    const y = (v) => top + (h - top - bottom) * (1 - Math.min(v, ymax) / ymax);
    const g = el('g', {});
    for (let i = 0; i <= scale.steps; i++) {
      const v = ymax * i / scale.steps, yy = y(v);
      g.append(el('line', { x1: left, x2: w - right, y1: yy, y2: yy, class: i === 0 ? 'axis' : 'grid' }));
      g.append(el('text', { x: left - 6, y: yy + 4, class: 'tick', 'text-anchor': 'end' }, opts.fmt(v)));
    }
    for (let m = 0; m <= 5; m++) {
      const t = t0 + m * 60, xx = x(t);
      g.append(el('line', { x1: xx, x2: xx, y1: h - bottom, y2: h - bottom + 4, class: 'axis' }));
      const label = m === 5 ? 'now' : '−' + (5 - m) + 'm';
      const anchor = m === 0 ? 'start' : m === 5 ? 'end' : 'middle';
      g.append(el('text', { x: xx, y: h - 4, class: 'tick', 'text-anchor': anchor }, label));
    }
    series.forEach((s, i) => {
      let d = '', pen = false;
      for (const p of s.points) {
        if (p.t < t0 || p.v === null) { pen = false; continue; }
        d += (pen ? 'L' : 'M') + x(p.t).toFixed(1) + ' ' + y(p.v).toFixed(1);
        pen = true;
      }
      if (d) g.append(el('path', { d: d, class: 'line s' + (s.color !== undefined ? s.color : i) }));
    });
    svg.replaceChildren(g);
    const items = series.map((s, i) => {
      const li = document.createElement('li');
      const sw = document.createElement('span');
      sw.className = 'sw s' + (s.color !== undefined ? s.color : i);
      const name = document.createElement('span');
      name.textContent = s.name;
      const val = document.createElement('b');
      val.textContent = s.value;
      li.append(sw, name, val);
      return li;
    });
    if (items.length === 0) {
      const li = document.createElement('li');
      li.className = 'muted';
      li.textContent = opts.empty || 'no data';
      items.push(li);
    }
    legend.replaceChildren(...items);
  }

  // ---- tables ------------------------------------------------------------------------------
  function row(cells) {
    const tr = document.createElement('tr');
    for (const c of cells) {
      const td = document.createElement('td');
      if (c && typeof c === 'object' && c.node) td.append(c.node);
      else if (c && typeof c === 'object') {
        td.textContent = c.text;
        if (c.cls) td.className = c.cls;
        if (c.title) td.title = c.title;
        if (c.value !== undefined) td.dataset.value = String(c.value);
      } else td.textContent = c;
      tr.append(td);
    }
    return tr;
  }
  function emptyRow(cols, text) {
    const tr = document.createElement('tr');
    const td = document.createElement('td');
    td.colSpan = cols;
    td.className = 'muted empty';
    td.textContent = text;
    tr.append(td);
    return tr;
  }
  function num(v, f) { return { text: (f || fmtNum)(v), cls: 'num', value: v }; }

  function renderBans(doc) {
    const body = $('bans').tBodies[0];
    const bans = (doc.bans || []).filter((b) => !b.expired);
    const rows = bans.map((b) => {
      const btn = document.createElement('button');
      btn.type = 'button';
      btn.className = 'lift';
      btn.textContent = 'lift';
      btn.dataset.target = b.target;
      btn.setAttribute('aria-label', 'lift the ban on ' + b.target);
      btn.addEventListener('click', () => lift(b.target, btn));
      const expires = b.expires_in_secs === null
        ? { text: 'until removed', cls: 'num' }
        : { text: fmtDur(b.expires_in_secs), cls: 'num countdown', value: b.expires_in_secs };
      const hits = num(b.hits);
      hits.cls = 'num hits';
      const tr = row([b.target, b.origin, b.reason, expires, hits, { node: btn }]);
      tr.dataset.target = b.target;
      return tr;
    });
    body.replaceChildren(...(rows.length ? rows : [emptyRow(6, doc.bans_error ? 'cannot read the deny list: ' + doc.bans_error : 'no bans')]));
  }

  // Counts down between polls from the last answer's expiries.
  function tickCountdowns() {
    if (!latest) return;
    const elapsed = (performance.now() - fetchedAt) / 1000;
    for (const td of document.querySelectorAll('#bans td.countdown')) {
      const left = Number(td.dataset.value) - elapsed;
      td.textContent = fmtDur(Math.max(0, Math.ceil(left)));
    }
  }

  async function lift(target, btn) {
    btn.disabled = true;
    btn.textContent = 'lifting…';
    try {
      const path = '/deny/' + target.replace('/', '%2F');
      const resp = await fetch(path, { method: 'DELETE', headers: headers(), cache: 'no-store' });
      const body = await resp.json().catch(() => ({}));
      if (!resp.ok) throw new Error(body.error || 'HTTP ' + resp.status);
      const tr = btn.closest('tr');
      if (tr) tr.remove();
      if (latest) latest.bans = (latest.bans || []).filter((b) => b.target !== target);
      notice('');
    } catch (e) {
      btn.disabled = false;
      btn.textContent = 'lift';
      notice('Could not lift the ban on ' + target + ': ' + e.message);
    }
  }

  function notice(text) {
    const n = $('notice');
    n.textContent = text;
    n.hidden = !text;
  }

  // Requests and refusals per source are counted by the abuse engine: without one the
  // cells say so instead of showing zeros that nobody counted.
  const NOT_COUNTED = 'not counted: per-source requests need the abuse engine ([abuse])';
  function userCell(v, counted) {
    return counted && v !== null && v !== undefined ? num(v) : { text: '–', cls: 'num muted', title: NOT_COUNTED };
  }
  function renderSources(doc) {
    const body = $('sources').tBodies[0];
    const counted = doc.per_source_requests === true;
    const note = $('sources-note');
    note.textContent = counted
      ? 'Requests and refusals (4xx answers) as the abuse engine counts them: by the client address (a proxied client under its own), IPv6 by prefix.'
      : 'Requests and refusals per source are not counted: that needs the abuse engine ([abuse]).';
    note.hidden = false;
    if (!doc.top_sources) {
      body.replaceChildren(emptyRow(9, doc.data_plane ? 'kernel counters unreadable: ' + (doc.kernel_error || '?') : 'no data plane runs'));
      return;
    }
    const rows = doc.top_sources.map((s) => {
      const tr = row([s.addr, num(s.packets), num(s.bytes, fmtBytes), num(s.syns), num(s.drops_deny), num(s.drops_rate),
        userCell(s.requests, counted), userCell(s.refusals, counted),
        { text: fmtDur(s.last_seen_secs_ago) + ' ago', cls: 'num' }]);
      tr.dataset.addr = s.addr;
      return tr;
    });
    body.replaceChildren(...(rows.length ? rows : [emptyRow(9, 'no sources seen yet')]));
  }

  // A server's latency quantiles (bucket bounds in ms), or why there are none.
  function latencyCell(l) {
    if (!l) return { text: 'not measured', cls: 'num muted' };
    const ms = (v) => (v === null || v === undefined ? '–' : '≤ ' + fmtUs(v * 1000));
    return { text: ms(l.p50) + ' / ' + ms(l.p99), cls: 'num', value: [l.p50, l.p99].join(' ') };
  }

  function renderUpstreams(doc) {
    const body = $('upstreams').tBodies[0];
    const errors = (doc.user_plane && doc.user_plane.upstream_errors) || {};
    const rows = [];
    for (const u of doc.upstreams || []) {
      const errs = Object.values(errors[u.name] || {}).reduce((a, b) => a + b, 0);
      u.servers.forEach((s, i) => {
        const state = { text: s.in_rotation ? 'in rotation' : 'out', cls: s.in_rotation ? 'ok' : 'bad' };
        const tr = row([i === 0 ? u.name : '', s.addr, state, s.health_check_ok ? 'passing' : 'failing',
          num(s.consecutive_fails), latencyCell(s.latency_ms), i === 0 ? num(errs) : '']);
        tr.dataset.server = s.addr;
        rows.push(tr);
      });
    }
    body.replaceChildren(...(rows.length ? rows : [emptyRow(7, 'no upstreams (no proxy runs)')]));
  }

  // ---- the page ----------------------------------------------------------------------------
  function render() {
    const doc = latest;
    const up = doc.user_plane || {};
    setText('version', 'v' + doc.version);
    if (doc.build) $('version').title = 'commit ' + doc.build.commit + ', ' + doc.build.rustc + ', ' + doc.build.profile + ' build';
    setText('uptime', fmtDur(doc.uptime_secs));
    setText('listeners', (doc.listeners || []).map((l) => (l.tls ? 'https://' : 'http://') + l.addr).join('  ') || 'none');
    setText('dataplane', doc.data_plane ? doc.data_plane.mode + ' on ' + doc.data_plane.interface : 'off');

    const reqClasses = CLASSES.filter((c) => (up.requests_by_class || {})[c] !== undefined || c === '2xx');
    const reqSeries = reqClasses.map((c) => {
      const points = rateSeries((d) => (get(d, ['user_plane', 'requests_by_class', c]) || 0));
      return { name: c, points: points, value: fmtRate(lastValue(points)), color: CLASSES.indexOf(c) };
    });
    chart('ch-requests', reqSeries, { fmt: fmtNum });
    const rps = rateSeries((d) => get(d, ['user_plane', 'requests']));
    setText('c-rps', fmtRate(lastValue(rps)));
    setText('c-requests', fmtNum(up.requests), up.requests);

    const denials = up.denials || {};
    const denied = Object.values(denials).reduce((a, b) => a + b, 0);
    const reasons = Object.keys(denials).filter((r) => denials[r] > 0).sort((a, b) => denials[b] - denials[a]);
    const shown = reasons.slice(0, MAX_REASONS);
    const denSeries = shown.map((r, i) => {
      const points = rateSeries((d) => get(d, ['user_plane', 'denials', r]) || 0);
      return { name: r, points: points, value: fmtRate(lastValue(points)), color: DENIAL_COLORS[i] };
    });
    if (reasons.length > MAX_REASONS) {
      const rest = reasons.slice(MAX_REASONS);
      const points = rateSeries((d) => rest.reduce((a, r) => a + (get(d, ['user_plane', 'denials', r]) || 0), 0));
      denSeries.push({ name: 'other reasons', points: points, value: fmtRate(lastValue(points)), color: 5 });
    }
    chart('ch-denials', denSeries, { fmt: fmtNum, empty: 'no denials yet' });
    setText('c-dps', fmtRate(lastValue(rateSeries((d) => Object.values(get(d, ['user_plane', 'denials']) || {}).reduce((a, b) => a + b, 0)))));
    setText('c-denials', fmtNum(denied), denied);

    const p50 = pairSeries((a, b) => quantileBetween(a, b, 0.5));
    const p99 = pairSeries((a, b) => quantileBetween(a, b, 0.99));
    chart('ch-latency', [
      { name: 'p50 ≤', points: p50, value: fmtUs(lastValue(p50)) },
      { name: 'p99 ≤', points: p99, value: fmtUs(lastValue(p99)) },
    ], { fmt: fmtUs });
    const verify = up.verify || {};
    setText('c-verify', verify.count > 0
      ? fmtLe(verify.p50_le_us, doc) + ' / ' + fmtLe(verify.p99_le_us, doc) : '–');
    setText('c-verifications', fmtNum(verify.count), verify.count);

    const ratio = pairSeries((a, b) => {
      const ca = get(a, ['user_plane', 'token_cache']), cb = get(b, ['user_plane', 'token_cache']);
      if (!ca || !cb) return null;
      const hits = cb.hits - ca.hits, all = hits + cb.misses - ca.misses;
      return all > 0 ? 100 * hits / all : null;
    });
    chart('ch-cache', [{ name: 'hits', points: ratio, value: fmtPct(lastValue(ratio)) }],
      { fmt: (v) => trim(v) + '%', max: 100 });
    const cache = up.token_cache;
    if (cache) {
      const all = cache.hits + cache.misses;
      setText('c-cache', all > 0 ? fmtPct(100 * cache.hits / all) : '–');
      setText('c-cache-sub', fmtNum(cache.entries) + (cache.entries === 1 ? ' cached token' : ' cached tokens'));
    } else {
      setText('c-cache', '–');
      setText('c-cache-sub', 'cache off');
    }

    const pps = rateSeries((d) => total(d, 'packets'));
    const passed = rateSeries((d) => total(d, 'passed'));
    chart('ch-packets', [
      { name: 'packets', points: pps, value: fmtRate(lastValue(pps)) },
      { name: 'passed', points: passed, value: fmtRate(lastValue(passed)) },
    ], { fmt: fmtNum });
    const verdicts = [['deny', 'dropped_deny'], ['CIDR', 'dropped_deny_cidr'], ['rate', 'dropped_rate']];
    chart('ch-drops', verdicts.map(([name, key], i) => {
      const points = rateSeries((d) => total(d, key));
      return { name: name, points: points, value: fmtRate(lastValue(points)), color: i + 3 };
    }), { fmt: fmtNum });
    const tripsDropped = rateSeries((d) => total(d, 'dropped_rate'));
    const tripsMonitored = rateSeries((d) => total(d, 'monitored_rate'));
    chart('ch-syn', [
      { name: 'dropped', points: tripsDropped, value: fmtRate(lastValue(tripsDropped)), color: 3 },
      { name: 'monitored', points: tripsMonitored, value: fmtRate(lastValue(tripsMonitored)), color: 1 },
    ], { fmt: fmtNum });
    const kinds = ['connect', 'timeout', 'no_healthy', 'protocol', 'other'];
    chart('ch-upstream', kinds.map((k, i) => {
      const points = rateSeries((d) => Object.values(get(d, ['user_plane', 'upstream_errors']) || {})
        .reduce((a, byKind) => a + (byKind[k] || 0), 0));
      return { name: k.replace('_', ' '), points: points, value: fmtRate(lastValue(points)), color: [3, 2, 4, 1, 5][i] };
    }), { fmt: fmtNum });
    const drops = ['dropped_deny', 'dropped_deny_cidr', 'dropped_rate'];
    const dropTotal = doc.totals ? drops.reduce((a, k) => a + (doc.totals[k] || 0), 0) : undefined;
    setText('c-pps', fmtRate(lastValue(pps)));
    setText('c-packets', fmtNum(total(doc, 'packets')), total(doc, 'packets'));
    setText('c-drops-rate', fmtRate(lastValue(rateSeries((d) => d.totals ? drops.reduce((a, k) => a + (d.totals[k] || 0), 0) : undefined))));
    setText('c-drops', fmtNum(dropTotal), dropTotal);

    const bans = (doc.bans || []).filter((b) => !b.expired).length;
    setText('c-bans', fmtNum(bans), bans);
    setText('c-deny-fill', doc.deny_entries !== undefined
      ? fmtNum(doc.deny_entries) + ' of ' + fmtNum(doc.deny_capacity.address) + ' map entries'
      : 'no data plane');
    setText('c-conns', fmtNum(up.connections_open), up.connections_open);
    setText('c-tls-failed', fmtNum(up.tls_handshakes_failed), up.tls_handshakes_failed);

    renderBans(doc);
    renderSources(doc);
    renderUpstreams(doc);
  }

  function start() {
    $('login-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const token = $('token').value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $('token').value = '';
      setStatus('connecting…', '');
      poll();
    });
    setInterval(tickCountdowns, 250);
    window.addEventListener('resize', () => { if (latest) render(); });
    poll();
  }

  start();
})();
