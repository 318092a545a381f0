//! Section 5: gateway memory. RSS with N idle keep-alive TLS connections (`bench/idle_tls.py`
//! opens them: handshake, one request, then idle), and RSS after a load run vs after a second
//! identical one (growth between them should be about zero).

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

pub fn run(
    ctx: &Ctx,
    m: &Material,
    conns: u32,
    load_secs: u32,
    verdicts: &mut Vec<(String, bool)>,
) -> Result<String> {
    let nofile = util::raise_nofile(u64::from(conns) * 2 + 4096);
    let ports = Ports::pick()?;
    let cfg = ctx.run_dir.join("gateway-memory.toml");
    std::fs::write(
        &cfg,
        peer::our_config(ctx, &ports, (m.pool_size / 16).max(64))?,
    )?;
    let backend = peer::start_backend(ctx, &ports)?;
    let gw = peer::start_ours(ctx, "gateway-memory", &cfg, &[ports.gw_tls, ports.gw_http])?;
    let pid = gw.pid();
    let _ = util::http_get(ports.gw_http, "/plain/warm");
    std::thread::sleep(Duration::from_millis(300));
    let rss_start = util::rss_kib(pid);

    println!(
        "==> memory: opening {conns} idle keep-alive TLS connections (RLIMIT_NOFILE {nofile})"
    );
    let mut child = Command::new("python3")
        .arg(ctx.root.join("bench/idle_tls.py"))
        .args([
            "--port",
            &ports.gw_tls.to_string(),
            "--conns",
            &conns.to_string(),
        ])
        .args(["--path", "/plain/idle", "--hold", "120", "--budget", "240"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("run bench/idle_tls.py")?;
    let stdout = child.stdout.take().expect("stdout");
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
            bail!("idle_tls.py did not get ready: {other:?}");
        }
    };
    std::thread::sleep(Duration::from_secs(2));
    let rss_idle = util::rss_kib(pid);
    drop(child.stdin.take()); // closing stdin ends the hold
    let closed = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    std::thread::sleep(Duration::from_secs(2));
    let rss_after_idle = util::rss_kib(pid);
    println!(
        "    {ok} connections held ({failed} failed), {closed}; RSS {} → {} MiB",
        mib(rss_start),
        mib(rss_idle)
    );

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
    let per_conn = match (rss_idle, rss_start) {
        (Some(a), Some(b)) if ok > 0 => format!("{:.1}", (a as f64 - b as f64) / ok as f64),
        _ => "–".into(),
    };
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
        "### Memory (our gateway)\n\n\
         | state | RSS MiB |\n| --- | ---: |\n\
         | started, one request served | {} |\n\
         | {ok} idle keep-alive TLS connections ({failed} failed to open) | {} |\n\
         | per idle connection | {per_conn} KiB |\n\
         | after those connections closed | {} |\n\
         | after load run 1 ({load_secs} s, {} requests, TLS HTTP/1.1, 50 connections, rotating RS256 tokens) | {} |\n\
         | after load run 2 (identical, {} requests) | {} |\n\
         | growth run 1 → run 2 | {} KiB |\n\n\
         Each idle connection completed a TLS 1.3 handshake and one HTTP/1.1 request, then stayed \
         open (the bench config raises `max_connections_per_source` and `header_read_timeout` for \
         this). HAProxy is not measured here: the peer's haproxy.cfg caps `maxconn` at 4096.\n",
        mib(rss_start),
        mib(rss_idle),
        mib(rss_after_idle),
        after[0].1.total,
        mib(after[0].0),
        after[1].1.total,
        mib(after[1].0),
        growth.map_or("–".into(), |g| g.to_string()),
    ))
}
