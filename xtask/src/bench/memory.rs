//! Section 5: memory. RSS with N idle keep-alive TLS connections (`bench/idle_tls.py`
//! opens them: handshake, one request, then idle), ours and HAProxy's (`plain_proxy` TLS
//! frontend, its config with room for N connections) side by side; and our RSS after a load
//! run vs after a second identical one (growth between them should be about zero).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::load::Load;
use super::peer::{self, Material, Ports};
use super::util;
use super::Ctx;

fn mib(kib: Option<u64>) -> String {
    kib.map_or("–".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

/// One proxy's RSS (KiB) around holding idle connections.
struct Idle {
    start: Option<u64>,
    idle: Option<u64>,
    after: Option<u64>,
    ok: u64,
    failed: u64,
}

impl Idle {
    /// RSS growth per held connection, KiB.
    fn per_conn(&self) -> Option<f64> {
        match (self.idle, self.start) {
            (Some(a), Some(b)) if self.ok > 0 => Some((a as f64 - b as f64) / self.ok as f64),
            _ => None,
        }
    }
}

/// Opens `conns` idle keep-alive TLS connections to `port` (each: handshake, one request
/// for `path`), and reads `rss` before, while they are held, and after they closed.
fn hold_idle(
    ctx: &Ctx,
    who: &str,
    port: u16,
    path: &str,
    conns: u32,
    rss: &dyn Fn() -> Option<u64>,
) -> Result<Idle> {
    std::thread::sleep(Duration::from_millis(300));
    let start = rss();
    println!("==> memory: opening {conns} idle keep-alive TLS connections to {who}");
    let mut child = Command::new("python3")
        .arg(ctx.root.join("bench/idle_tls.py"))
        .args(["--port", &port.to_string(), "--conns", &conns.to_string()])
        .args(["--path", path, "--hold", "120", "--budget", "240"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("run bench/idle_tls.py")?;
    let stdout = child.stdout.take().context("idle_tls.py stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(300));
    let (ok, failed) = match &ready {
        Ok(line) if line.starts_with("READY ") => {
            let v: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            (
                v.first().copied().unwrap_or(0),
                v.get(1).copied().unwrap_or(0),
            )
        }
        other => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("idle_tls.py ({who}) did not get ready: {other:?}");
        }
    };
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss();
    drop(child.stdin.take()); // closing stdin ends the hold
    let closed = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    std::thread::sleep(Duration::from_secs(2));
    let after = rss();
    let r = Idle {
        start,
        idle,
        after,
        ok,
        failed,
    };
    println!(
        "    {who}: {ok} connections held ({failed} failed), {closed}; RSS {} → {} MiB, {} KiB each",
        mib(start),
        mib(idle),
        r.per_conn().map_or("–".into(), |k| format!("{k:.1}"))
    );
    Ok(r)
}

pub fn run(
    ctx: &Ctx,
    m: &Material,
    conns: u32,
    load_secs: u32,
    verdicts: &mut Vec<(String, bool)>,
) -> Result<String> {
    let nofile = util::raise_nofile(u64::from(conns) * 2 + 4096);
    println!("==> memory: RLIMIT_NOFILE {nofile}");
    let ports = Ports::pick()?;
    let cfg = ctx.run_dir.join("gateway-memory.toml");
    std::fs::write(
        &cfg,
        peer::our_config(ctx, &ports, (m.pool_size / 16).max(64))?,
    )?;
    let backend = peer::start_backend(ctx, &ports)?;

    let hp_cfg = peer::haproxy_idle_config(ctx, conns)?;
    let hp = peer::start_haproxy_with(ctx, &ports, m, &hp_cfg)?;
    let hp_pid = hp.pid();
    let _ = util::http_get(ports.hp_plain_http, "/plain/warm");
    let theirs = hold_idle(
        ctx,
        "HAProxy",
        ports.hp_plain_tls,
        "/plain/idle",
        conns,
        &|| util::rss_tree_kib(hp_pid),
    )?;
    drop(hp);

    let gw = peer::start_ours(ctx, "gateway-memory", &cfg, &[ports.gw_tls, ports.gw_http])?;
    let pid = gw.pid();
    let _ = util::http_get(ports.gw_http, "/plain/warm");
    let ours = hold_idle(ctx, "ours", ports.gw_tls, "/plain/idle", conns, &|| {
        util::rss_tree_kib(pid)
    })?;

    let mut after = Vec::new();
    for n in 1..=2 {
        println!("==> memory: load run {n}/2 ({load_secs} s, TLS HTTP/1.1, rotating RS256 tokens)");
        let row = Load {
            label: format!("memory-load#{n}"),
            tool: "wrk",
            scheme: "https",
            port: ports.gw_tls,
            path: "/api/items",
            token: "valid",
            expect: "2xx",
            conns: 50,
            threads: 2,
            secs: load_secs,
            gw_pid: Some(pid),
            be_pid: None,
            rotate: Some(m.pool.as_path()),
        }
        .run(ctx, &m.tokens)?;
        std::thread::sleep(Duration::from_secs(1));
        after.push((util::rss_kib(pid), row));
    }
    drop(gw);
    drop(backend);
    let kib = |k: Option<f64>| k.map_or("–".into(), |k| format!("{k:.1}"));
    let ratio = match (ours.per_conn(), theirs.per_conn()) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    verdicts.push((
        format!(
            "memory: per idle TLS connection ours {} KiB / HAProxy {} KiB = {} (goal ≤ 1.0)",
            kib(ours.per_conn()),
            kib(theirs.per_conn()),
            ratio.map_or("–".into(), |r| format!("{r:.2}"))
        ),
        ratio.is_some_and(|r| r <= 1.0),
    ));
    let growth = match (after[0].0, after[1].0) {
        (Some(a), Some(b)) => Some(b as i64 - a as i64),
        _ => None,
    };
    let grow_ok =
        growth.is_some_and(|g| (g as f64) <= 0.02 * after[0].0.unwrap_or(0) as f64 + 1024.0);
    verdicts.push((
        format!(
            "memory: RSS growth between two identical {load_secs} s load runs = {} KiB (≈ 0: ≤ 2% + 1 MiB)",
            growth.map_or("–".into(), |g| g.to_string())
        ),
        grow_ok,
    ));
    Ok(format!(
        "### Memory (ours and HAProxy)\n\n\
         | state | ours, RSS MiB | HAProxy, RSS MiB |\n| --- | ---: | ---: |\n\
         | started, one request served | {} | {} |\n\
         | {conns} idle keep-alive TLS connections (failed to open: ours {}, HAProxy {}) | {} | {} |\n\
         | **per idle connection** | **{} KiB** | **{} KiB** |\n\
         | ours / HAProxy per idle connection | {} | |\n\
         | after those connections closed | {} | {} |\n\
         | after load run 1 ({load_secs} s, {} requests, TLS HTTP/1.1, 50 connections, rotating RS256 tokens) | {} | |\n\
         | after load run 2 (identical, {} requests) | {} | |\n\
         | growth run 1 → run 2 | {} KiB | |\n\n\
         Each idle connection completed a TLS 1.3 handshake and one HTTP/1.1 request (ALPN \
         http/1.1), then stayed open; one process at a time held them (HAProxy first, then \
         ours), each freshly started. Ours: the bench config raises `max_connections_per_source` \
         and `header_read_timeout`; HAProxy: its `plain_proxy` TLS frontend, the peer's \
         haproxy.cfg with `maxconn` N + 100, `no strict-limits` and the client, http-request and keep-alive timeouts \
         at 300 s (`haproxy-memory.cfg` in the run directory), RSS summed over its processes \
         (one, 2 threads).\n",
        mib(ours.start),
        mib(theirs.start),
        ours.failed,
        theirs.failed,
        mib(ours.idle),
        mib(theirs.idle),
        kib(ours.per_conn()),
        kib(theirs.per_conn()),
        ratio.map_or("–".into(), |r| format!("{r:.2}")),
        mib(ours.after),
        mib(theirs.after),
        after[0].1.total,
        mib(after[0].0),
        after[1].1.total,
        mib(after[1].0),
        growth.map_or("–".into(), |g| g.to_string()),
    ))
}
