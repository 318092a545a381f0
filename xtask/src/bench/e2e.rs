//! Section 3: end to end against HAProxy with the shared peer harness
//! (`../shared/peers/haproxy/`): same upstream (`backend.cfg`), keys and tokens (`gen-keys.sh`,
//! `mint.py`), connection count and 2 worker threads; every load run is one `bench.sh` run,
//! which reports the gateway's CPU per request from /proc. Runs are interleaved per scenario
//! (ours, HAProxy, ours, HAProxy, ...), and both gateways are restarted before each round.

mod report;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::load::{parse_row, Load, Row};
use super::peer::{
    our_config, our_es256_config, start_backend, start_haproxy, start_ours, with_access_log,
    Material, Ports,
};
use super::util::{self, Proc};
use super::Ctx;

/// Which of our two gateways serves a scenario.
#[derive(Clone, Copy, PartialEq)]
enum Which {
    /// `examples/peer-haproxy.toml`: RS256, HTTP and TLS listeners, the `/plain/` route.
    Main,
    /// The ES256 twin of HAProxy's ES256 frontend.
    Es256,
}

/// One side-by-side scenario.
struct Scenario {
    key: &'static str,
    what: &'static str,
    /// `wrk` (HTTP/1.1) or `h2load` (HTTP/2).
    tool: &'static str,
    scheme: &'static str,
    /// The token of the peer's corpus to send.
    token: &'static str,
    /// Rotate through the token pool instead (cache misses on our side).
    rotate: bool,
    /// Target ratio ours/theirs of CPU per request.
    target: f64,
    ours: Which,
    ours_port: u16,
    ours_path: &'static str,
    theirs_port: u16,
    /// Also run against our second gateway, whose access log is on (its cost).
    log_too: bool,
}

/// Who serves one load run.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Ours,
    /// Our main gateway's twin with the access log written to a file.
    OursLogged,
    Theirs,
}

/// The scenarios in the order they run and are reported. HAProxy is always asked for
/// `/api/items` (its plain frontend has its own ports); we serve the no-JWT baseline on
/// `/plain/`.
fn scenarios(p: &Ports) -> Vec<Scenario> {
    vec![
        Scenario {
            key: "nojwt-http",
            what: "proxy, no JWT, HTTP/1.1",
            tool: "wrk",
            scheme: "http",
            token: "valid",
            rotate: false,
            target: 1.0,
            ours: Which::Main,
            ours_port: p.gw_http,
            ours_path: "/plain/items",
            log_too: true,
            theirs_port: p.hp_plain_http,
        },
        Scenario {
            key: "nojwt-tls-h1",
            what: "proxy, no JWT, TLS HTTP/1.1",
            tool: "wrk",
            scheme: "https",
            token: "valid",
            rotate: false,
            target: 1.0,
            ours: Which::Main,
            ours_port: p.gw_tls,
            ours_path: "/plain/items",
            log_too: true,
            theirs_port: p.hp_plain_tls,
        },
        Scenario {
            key: "nojwt-tls-h2",
            what: "proxy, no JWT, TLS HTTP/2 (h2load)",
            tool: "h2load",
            scheme: "https",
            token: "valid",
            rotate: false,
            target: 1.0,
            ours: Which::Main,
            ours_port: p.gw_tls,
            ours_path: "/plain/items",
            log_too: true,
            theirs_port: p.hp_plain_tls,
        },
        Scenario {
            key: "rs256-http",
            what: "RS256, one token repeated, HTTP/1.1",
            tool: "wrk",
            scheme: "http",
            token: "valid",
            rotate: false,
            target: 0.5,
            ours: Which::Main,
            ours_port: p.gw_http,
            ours_path: "/api/items",
            log_too: true,
            theirs_port: p.hp_jwt_http,
        },
        Scenario {
            key: "rs256-tls-h1",
            what: "RS256, one token repeated, TLS HTTP/1.1",
            tool: "wrk",
            scheme: "https",
            token: "valid",
            rotate: false,
            target: 0.5,
            ours: Which::Main,
            ours_port: p.gw_tls,
            ours_path: "/api/items",
            log_too: false,
            theirs_port: p.hp_jwt_tls,
        },
        Scenario {
            key: "rs256-tls-h2",
            what: "RS256, one token repeated, TLS HTTP/2 (h2load)",
            tool: "h2load",
            scheme: "https",
            token: "valid",
            rotate: false,
            target: 0.5,
            ours: Which::Main,
            ours_port: p.gw_tls,
            ours_path: "/api/items",
            log_too: false,
            theirs_port: p.hp_jwt_tls,
        },
        Scenario {
            key: "rs256-fresh-http",
            what: "RS256, rotating token pool (cache misses), HTTP/1.1",
            tool: "wrk",
            scheme: "http",
            token: "valid",
            rotate: true,
            target: 1.0,
            ours: Which::Main,
            ours_port: p.gw_http,
            ours_path: "/api/items",
            log_too: false,
            theirs_port: p.hp_jwt_http,
        },
        Scenario {
            key: "es256-http",
            what: "ES256, one token repeated, HTTP/1.1",
            tool: "wrk",
            scheme: "http",
            token: "es256",
            rotate: false,
            target: 0.5,
            ours: Which::Es256,
            ours_port: p.gw_es256_http,
            ours_path: "/api/items",
            log_too: false,
            theirs_port: p.hp_es256_http,
        },
    ]
}
#[derive(Default)]
struct Series {
    ours: Vec<Row>,
    theirs: Vec<Row>,
    /// Runs against the gateway with the access log on.
    logged: Vec<Row>,
    /// Cache hit ratio of our verifier per run (main gateway only).
    hit: Vec<f64>,
}

/// The bad-signature flood probe, one side, one round.
#[derive(Default, Clone)]
struct Probe {
    victim: Row,
    flood: Row,
    us_per_req: f64,
}

/// The gateway a flood probe runs against: its process (for CPU time) and the JWT route's
/// plain HTTP and TLS ports.
struct ProbeTarget {
    side: &'static str,
    pid: u32,
    jwt_http: u16,
    jwt_tls: u16,
}

struct Running {
    haproxy: Proc,
    ours: Proc,
    ours_es: Proc,
    ours_log: Proc,
}

fn start_all(
    ctx: &Ctx,
    ports: &Ports,
    m: &Material,
    cfgs: (&Path, &Path, &Path),
) -> Result<Running> {
    let (cfg, es_cfg, log_cfg) = cfgs;
    let ours = start_ours(
        ctx,
        "gateway",
        cfg,
        &[ports.gw_http, ports.gw_tls, ports.gw_admin],
    )?;
    let ours_log = start_ours(
        ctx,
        "gateway-logged",
        log_cfg,
        &[ports.gw_log_http, ports.gw_log_tls, ports.gw_log_admin],
    )?;
    let ours_es = start_ours(ctx, "gateway-es256", es_cfg, &[ports.gw_es256_http])?;
    let haproxy = start_haproxy(ctx, ports, m)?;
    Ok(Running {
        haproxy,
        ours,
        ours_es,
        ours_log,
    })
}

fn cache_counts(admin: u16) -> Option<(f64, f64)> {
    let text = util::http_get(admin, "/metrics").ok()?;
    Some((
        util::metric(&text, "gateway_token_cache_hits_total")?,
        util::metric(&text, "gateway_token_cache_misses_total")?,
    ))
}

pub struct Opts {
    pub secs: u32,
    pub rounds: u32,
    pub conns: u32,
    pub probe_secs: u32,
}

/// Runs every scenario, interleaved; returns the markdown section and the target verdicts.
pub fn run(
    ctx: &Ctx,
    m: &Material,
    opts: &Opts,
    verdicts: &mut Vec<(String, bool)>,
) -> Result<String> {
    let ports = Ports::pick()?;
    let cfg = ctx.run_dir.join("gateway.toml");
    std::fs::write(&cfg, our_config(ctx, &ports, (m.pool_size / 16).max(64))?)?;
    let es_cfg = ctx.run_dir.join("gateway-es256.toml");
    std::fs::write(&es_cfg, our_es256_config(&ports, &m.keys))?;
    // The twin with the access log on, on ports of its own.
    let log_ports = Ports {
        gw_http: ports.gw_log_http,
        gw_tls: ports.gw_log_tls,
        gw_admin: ports.gw_log_admin,
        ..ports
    };
    let log_cfg = ctx.run_dir.join("gateway-logged.toml");
    let access_log = ctx.run_dir.join("access.log");
    std::fs::write(
        &log_cfg,
        with_access_log(
            &our_config(ctx, &log_ports, (m.pool_size / 16).max(64))?,
            &access_log,
        ),
    )?;
    let mut dropped = 0.0;
    let mut lines = 0u64;
    let backend = start_backend(ctx, &ports)?;
    let list = scenarios(&ports);
    let mut series: Vec<Series> = list.iter().map(|_| Series::default()).collect();
    let mut probes: (Vec<Probe>, Vec<Probe>) = (Vec::new(), Vec::new());
    for round in 1..=opts.rounds {
        println!(
            "\n==> e2e round {round}/{}: (re)starting both gateways",
            opts.rounds
        );
        let run = start_all(ctx, &ports, m, (&cfg, &es_cfg, &log_cfg))?;
        for (sc, se) in list.iter().zip(series.iter_mut()) {
            let sides: &[Side] = if sc.log_too {
                &[Side::Ours, Side::OursLogged, Side::Theirs]
            } else {
                &[Side::Ours, Side::Theirs]
            };
            for &who in sides {
                let (port, path, pid) = match who {
                    Side::Theirs => (sc.theirs_port, "/api/items", run.haproxy.pid()),
                    Side::OursLogged => {
                        let port = if sc.ours_port == ports.gw_tls {
                            ports.gw_log_tls
                        } else {
                            ports.gw_log_http
                        };
                        (port, sc.ours_path, run.ours_log.pid())
                    }
                    Side::Ours => {
                        let pid = match sc.ours {
                            Which::Main => run.ours.pid(),
                            Which::Es256 => run.ours_es.pid(),
                        };
                        (sc.ours_port, sc.ours_path, pid)
                    }
                };
                let side = match who {
                    Side::Theirs => "haproxy",
                    Side::OursLogged => "ours-logged",
                    Side::Ours => "ours",
                };
                println!("==> round {round}: {} [{side}]", sc.key);
                let load = Load {
                    label: format!("{side}-{}#{round}", sc.key),
                    tool: sc.tool,
                    scheme: sc.scheme,
                    port,
                    path,
                    token: sc.token,
                    expect: "2xx",
                    conns: opts.conns,
                    threads: 2,
                    secs: opts.secs,
                    gw_pid: Some(pid),
                    be_pid: Some(backend.pid()),
                    rotate: sc.rotate.then_some(m.pool.as_path()),
                };
                let counts = (who == Side::Ours
                    && sc.ours == Which::Main
                    && sc.ours_path.starts_with("/api/"))
                .then(|| cache_counts(ports.gw_admin))
                .flatten();
                let row = load.run(ctx, &m.tokens)?;
                if let (Some((h0, m0)), Some((h1, m1))) =
                    (counts, counts.and_then(|_| cache_counts(ports.gw_admin)))
                {
                    let (h, mi) = (h1 - h0, m1 - m0);
                    if h + mi > 0.0 {
                        se.hit.push(h / (h + mi));
                    }
                }
                match who {
                    Side::Theirs => se.theirs.push(row),
                    Side::Ours => se.ours.push(row),
                    Side::OursLogged => {
                        // Count the lines written, then start the file again: the disk
                        // holds a few runs' worth, not the whole bench's.
                        if let Ok(text) = std::fs::read(&access_log) {
                            lines += text.iter().filter(|b| **b == b'\n').count() as u64;
                        }
                        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&access_log) {
                            let _ = f.set_len(0);
                        }
                        se.logged.push(row);
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        // The probe runs last: a bad-signature flood can break HAProxy 2.6's later TLS
        // connections (haproxy #2643); both gateways restart at the next round.
        for theirs in [false, true] {
            let side = if theirs { "haproxy" } else { "ours" };
            println!("==> round {round}: bad-signature flood probe [{side}]");
            let target = if theirs {
                ProbeTarget {
                    side,
                    pid: run.haproxy.pid(),
                    jwt_http: ports.hp_jwt_http,
                    jwt_tls: ports.hp_jwt_tls,
                }
            } else {
                ProbeTarget {
                    side,
                    pid: run.ours.pid(),
                    jwt_http: ports.gw_http,
                    jwt_tls: ports.gw_tls,
                }
            };
            let p = probe(ctx, m, opts.probe_secs, &target, round)?;
            if theirs {
                probes.1.push(p);
            } else {
                probes.0.push(p);
            }
        }
        if let Some(d) = util::http_get(ports.gw_log_admin, "/metrics")
            .ok()
            .and_then(|t| util::metric(&t, "gateway_access_log_dropped_total"))
        {
            dropped += d;
        }
        drop(run);
    }
    drop(backend);
    Ok(report::render(
        &list,
        &series,
        &probes,
        opts,
        (lines, dropped),
        verdicts,
    ))
}

/// Valid TLS clients (10 connections) while another client floods bad-signature tokens over
/// plain HTTP (10 connections), as run.sh's "TLS flood probe".
fn probe(ctx: &Ctx, m: &Material, secs: u32, target: &ProbeTarget, round: u32) -> Result<Probe> {
    let &ProbeTarget {
        side,
        pid,
        jwt_http,
        jwt_tls,
    } = target;
    let t0 = util::cpu_ticks(pid);
    let flood = Load {
        label: format!("{side}-probe-flood#{round}"),
        tool: "wrk",
        scheme: "http",
        port: jwt_http,
        path: "/api/items",
        token: "tampered_sig",
        expect: "4xx",
        conns: 10,
        threads: 1,
        secs,
        gw_pid: None,
        be_pid: None,
        rotate: None,
    };
    let (flood_proc, flood_results) = flood.spawn(ctx, &m.tokens)?;
    let victim = Load {
        label: format!("{side}-probe-victim#{round}"),
        tool: "wrk",
        scheme: "https",
        port: jwt_tls,
        path: "/api/items",
        token: "valid",
        expect: "2xx",
        conns: 10,
        threads: 1,
        secs,
        gw_pid: None,
        be_pid: None,
        rotate: None,
    }
    .run(ctx, &m.tokens)?;
    // bench.sh bounds wrk at secs + 20 s; wait a little longer than that at most.
    let deadline = Instant::now() + Duration::from_secs(u64::from(secs) + 30);
    while Instant::now() < deadline
        && std::fs::metadata(&flood_results)
            .map(|md| md.len())
            .unwrap_or(0)
            == 0
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(200));
    flood_proc.stop();
    let t1 = util::cpu_ticks(pid);
    let flood =
        parse_row(&std::fs::read_to_string(&flood_results).unwrap_or_default()).unwrap_or_default();
    let total = (victim.total + flood.total) as f64;
    let cpu_s = (t1.saturating_sub(t0)) as f64 / util::clock_ticks_per_sec();
    println!(
        "    probe {side}: victims ok={} bad={} errors={} p99={}ms; flood requests={} refused={}",
        victim.total - victim.bad,
        victim.bad,
        victim.errors,
        victim.p99_ms,
        flood.total,
        flood.total - flood.bad
    );
    Ok(Probe {
        us_per_req: if total > 0.0 {
            cpu_s * 1e6 / total
        } else {
            f64::NAN
        },
        victim,
        flood,
    })
}
