//! The e2e section's markdown: one table row per scenario (medians over rounds with their
//! spread), the flood probe's table, and the target verdicts.

use super::{Opts, Probe, Scenario, Series};
use crate::bench::load::Row;
use crate::bench::util;

fn vals(rows: &[Row], f: impl Fn(&Row) -> f64) -> Vec<f64> {
    rows.iter().map(f).collect()
}

pub(super) fn render(
    list: &[Scenario],
    series: &[Series],
    probes: &(Vec<Probe>, Vec<Probe>),
    opts: &Opts,
    access_log: (u64, f64),
    verdicts: &mut Vec<(String, bool)>,
) -> String {
    let mut md = format!(
        "### End to end against HAProxy (shared peer harness, bench.sh)\n\n\
         {} round(s) × {} s per run, {} connections, load generator 2 threads; both gateways 2 worker \
         threads; runs interleaved ours → HAProxy per scenario; both restarted before each round. \
         CPU = gateway process CPU (user+sys, all threads) per request; medians over rounds with \
         (min–max).\n\n\
         | scenario | ours µs CPU/req | HAProxy µs CPU/req | ratio | target | ours p99 ms | HAProxy p99 ms | ours rps | HAProxy rps | errors ours/HAProxy | our cache hits |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        opts.rounds, opts.secs, opts.conns
    );
    for (sc, se) in list.iter().zip(series) {
        let ours = vals(&se.ours, |r| r.us_per_req);
        let theirs = vals(&se.theirs, |r| r.us_per_req);
        let ratio = match (util::median(&ours), util::median(&theirs)) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let p99o = util::median(&vals(&se.ours, |r| r.p99_ms));
        let p99t = util::median(&vals(&se.theirs, |r| r.p99_ms));
        let err_o: u64 = se.ours.iter().map(|r| r.errors + r.bad).sum();
        let err_t: u64 = se.theirs.iter().map(|r| r.errors + r.bad).sum();
        let cpu_ok = ratio.is_some_and(|r| r <= sc.target);
        let p99_ok = matches!((p99o, p99t), (Some(a), Some(b)) if a <= b);
        verdicts.push((
            format!(
                "{}: CPU/req ratio {} ≤ {:.1}",
                sc.key,
                ratio.map_or("–".into(), |r| format!("{r:.2}")),
                sc.target
            ),
            cpu_ok,
        ));
        verdicts.push((
            format!(
                "{}: p99 ours {} ms ≤ HAProxy {} ms",
                sc.key,
                p99o.map_or("–".into(), |v| format!("{v:.2}")),
                p99t.map_or("–".into(), |v| format!("{v:.2}"))
            ),
            p99_ok,
        ));
        let hit = util::median(&se.hit).map_or("–".into(), |h| format!("{:.0}%", h * 100.0));
        md += &format!(
            "| {} | {} | {} | {} | ≤ {:.1} {} | {} | {} | {} | {} | {err_o}/{err_t} | {hit} |\n",
            sc.what,
            util::med_spread(&ours, 1),
            util::med_spread(&theirs, 1),
            ratio.map_or("–".into(), |r| format!("**{r:.2}**")),
            sc.target,
            if cpu_ok { "✓" } else { "✗" },
            util::med_spread(&vals(&se.ours, |r| r.p99_ms), 2),
            util::med_spread(&vals(&se.theirs, |r| r.p99_ms), 2),
            util::median(&vals(&se.ours, |r| r.rps)).map_or("–".into(), |v| format!("{v:.0}")),
            util::median(&vals(&se.theirs, |r| r.rps)).map_or("–".into(), |v| format!("{v:.0}")),
        );
    }
    md += &access_log_table(list, series, access_log, verdicts);
    // The probe.
    let (o, t) = probes;
    let cpu_o: Vec<f64> = o.iter().map(|p| p.us_per_req).collect();
    let cpu_t: Vec<f64> = t.iter().map(|p| p.us_per_req).collect();
    let verr = |ps: &[Probe]| -> u64 { ps.iter().map(|p| p.victim.errors + p.victim.bad).sum() };
    let ratio = match (util::median(&cpu_o), util::median(&cpu_t)) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let p99o = util::median(&o.iter().map(|p| p.victim.p99_ms).collect::<Vec<_>>());
    let p99t = util::median(&t.iter().map(|p| p.victim.p99_ms).collect::<Vec<_>>());
    md += &format!(
        "\n**Bad-signature flood with valid clients alongside** ({} s per run; flood: 10 connections of \
         `tampered_sig` tokens over plain HTTP; victims: 10 valid TLS HTTP/1.1 connections to the JWT \
         listener; CPU per request over both):\n\n\
         | side | µs CPU/req (all) | victim rps | victim p99 ms | victim errors (must be 0) | flood requests refused |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n\
         | ours | {} | {} | {} | **{}** | {} |\n\
         | HAProxy 2.6 | {} | {} | {} | **{}** | {} |\n",
        opts.probe_secs,
        util::med_spread(&cpu_o, 1),
        util::med_spread(&o.iter().map(|p| p.victim.rps).collect::<Vec<_>>(), 0),
        util::med_spread(&o.iter().map(|p| p.victim.p99_ms).collect::<Vec<_>>(), 2),
        verr(o),
        o.iter().map(|p| p.flood.total - p.flood.bad).sum::<u64>(),
        util::med_spread(&cpu_t, 1),
        util::med_spread(&t.iter().map(|p| p.victim.rps).collect::<Vec<_>>(), 0),
        util::med_spread(&t.iter().map(|p| p.victim.p99_ms).collect::<Vec<_>>(), 2),
        verr(t),
        t.iter().map(|p| p.flood.total - p.flood.bad).sum::<u64>(),
    );
    verdicts.push((
        format!("flood probe: our victims' errors = {} (must be 0)", verr(o)),
        verr(o) == 0,
    ));
    verdicts.push((
        format!(
            "flood probe: CPU/req ratio {} ≤ 1.0",
            ratio.map_or("–".into(), |r| format!("{r:.2}"))
        ),
        ratio.is_some_and(|r| r <= 1.0),
    ));
    verdicts.push((
        format!(
            "flood probe: victim p99 ours {} ms ≤ HAProxy {} ms",
            p99o.map_or("–".into(), |v| format!("{v:.2}")),
            p99t.map_or("–".into(), |v| format!("{v:.2}"))
        ),
        matches!((p99o, p99t), (Some(a), Some(b)) if a <= b),
    ));
    md += "\nNotes: the no-JWT baseline is HAProxy's `plain_proxy` frontend (its own ports) and our \
           `/plain/` route with `auth = \"none\"` (same listeners as the JWT route). The rotating-token \
           scenario cycles through a pool of distinct tokens (`bench/wrk-rotate.lua`, one offset per \
           wrk thread) and our verified-token cache is sized at 1/16 of the pool, so most of our \
           requests miss (\"our cache hits\" is measured from the gateway's /metrics); HAProxy has no \
           cache, so for it every scenario is a full verify. ES256 sends one repeated token, so \
           ours is a cache hit there. errors = socket errors + responses of the wrong status class.\n";
    md
}

/// Our gateway with the access log off and on (written to a file), interleaved in the same
/// rounds: its cost per request.
fn access_log_table(
    list: &[Scenario],
    series: &[Series],
    (lines, dropped): (u64, f64),
    verdicts: &mut Vec<(String, bool)>,
) -> String {
    let mut md = String::from(
        "\n**Access log cost** (our gateway and its twin with `[log] access` = a file, same \
         rounds, interleaved: ours → ours with the log → HAProxy):\n\n\
         | scenario | log off µs CPU/req | log on µs CPU/req | on ÷ off | target | log off rps | log on rps |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (sc, se) in list.iter().zip(series) {
        if se.logged.is_empty() {
            continue;
        }
        let off = vals(&se.ours, |r| r.us_per_req);
        let on = vals(&se.logged, |r| r.us_per_req);
        let ratio = match (util::median(&on), util::median(&off)) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let ok = ratio.is_some_and(|r| r <= 1.05);
        verdicts.push((
            format!(
                "{}: access log CPU/req on ÷ off {} ≤ 1.05",
                sc.key,
                ratio.map_or("–".into(), |r| format!("{r:.3}"))
            ),
            ok,
        ));
        md += &format!(
            "| {} | {} | {} | {} | ≤ 1.05 {} | {} | {} |\n",
            sc.what,
            util::med_spread(&off, 1),
            util::med_spread(&on, 1),
            ratio.map_or("–".into(), |r| format!("**{r:.3}**")),
            if ok { "✓" } else { "✗" },
            util::median(&vals(&se.ours, |r| r.rps)).map_or("–".into(), |v| format!("{v:.0}")),
            util::median(&vals(&se.logged, |r| r.rps)).map_or("–".into(), |v| format!("{v:.0}")),
        );
    }
    md += &format!(
        "\nLines written: {lines}; dropped by the gateway (`gateway_access_log_dropped_total`): {dropped:.0}.\n"
    );
    md
}
