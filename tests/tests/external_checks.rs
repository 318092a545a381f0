//! The gateway checked by tools we did not write (issue 13, item 5), against the real
//! `gateway run` with a real echo upstream:
//!
//! - `testssl.sh` (Debian's package) scans the TLS listener: no finding above LOW, and the
//!   protocols and cipher suites are exactly the ones the README lists.
//! - An HTTP/2 abuse suite on the `h2` Python package (`tests/h2abuse/h2_abuse.py`): rapid
//!   reset, CONTINUATION flood, stream-limit and window abuse, MadeYouReset. During each
//!   attack other clients (HTTP/1.1 and HTTP/2, new connections) keep getting answers, the
//!   gateway's resident memory (VmRSS, /proc) stays within a bound, and the server answers
//!   the attack the way the protocol asks (GOAWAY, REFUSED_STREAM).
//!
//! Both are bounded in time: the scan takes about 80 s, the abuse suite about 40 s.

use gateway_tests::client::{Client, Proto, Req};
use gateway_tests::gateway::GatewayProcess;
use gateway_tests::tls::TestCa;
use gateway_tests::upstream::EchoUpstream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Debian's interpreter: the `h2` package is `python3-h2` (another python3 on PATH may lack it).
const PYTHON: &str = "/usr/bin/python3";

fn write_config(dir: &Path, upstream: &EchoUpstream, cert: &Path, key: &Path) -> PathBuf {
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[runtime]
worker_threads = 2

[listen]
https = ["127.0.0.1:0"]

[tls]
[[tls.certificates]]
cert = "{cert}"
key = "{key}"

[[upstream]]
name = "app"
servers = ["{upstream}"]

[[route]]
path_prefix = "/"
upstream = "app"
auth = "none"
"#,
            cert = cert.display(),
            key = key.display(),
            upstream = upstream.addr(),
        ),
    )
    .expect("write config");
    config
}

/// Runs `cmd` to completion, killed (and the test failed) after `limit`. Its exit status is
/// not judged: testssl.sh's sums its checks' return codes; the scan is judged by its JSON.
fn run_bounded(cmd: &mut Command, limit: Duration) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{cmd:?} ran longer than {limit:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    eprintln!("{cmd:?}: {}", out.status);
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (apt install openssl)");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A CA and a P-256 server certificate for localhost and 127.0.0.1, valid for a year (a
/// scanner rates the certificate too: it must be an ordinary one).
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "365",
            "-subj",
            "/CN=gateway scan CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "tls.key",
            "-out",
            "tls.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "365",
            "-sha256",
            "-extfile",
            "ext.cnf",
            "-out",
            "tls.crt",
        ],
    );
}

/// Findings above LOW that are not about the listener: a certificate made for one test run
/// names no CRL or OCSP responder, and the response headers of the page the scan fetches
/// (HSTS, CSP, ...) are the upstream application's, relayed as they are.
const NOT_THE_LISTENERS: [&str; 2] = ["cert_revocation", "security_headers"];

/// The cipher suites the README lists for an ECDSA certificate (RSA certificates get the
/// ECDHE_RSA twins of the TLS 1.2 ones).
const CIPHERS: [&str; 6] = [
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
];

#[test]
fn testssl_finds_nothing_above_low() {
    let dir = TempDir::new().expect("temp dir");
    certificates(dir.path());
    let upstream = EchoUpstream::start().expect("echo upstream");
    let config = write_config(
        dir.path(),
        &upstream,
        &dir.path().join("tls.crt"),
        &dir.path().join("tls.key"),
    );
    let proc = GatewayProcess::start_proxy(&config, &dir.path().join("gateway.log"), 1, &[])
        .expect("gateway starts");
    let addr = proc.listener(true).expect("https listener");
    let json = dir.path().join("testssl.json");
    run_bounded(
        Command::new("testssl")
            .args(["--quiet", "--color", "0", "--warnings", "off", "--add-ca"])
            .arg(dir.path().join("ca.crt"))
            .arg("--jsonfile")
            .arg(&json)
            .arg(format!("https://{addr}")),
        Duration::from_secs(300),
    );
    let findings: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("testssl JSON"))
            .expect("testssl JSON");
    let field = |f: &serde_json::Value, k: &str| f[k].as_str().unwrap_or("").to_string();
    let by_id = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .map(|f| field(f, "finding"))
            .unwrap_or_else(|| panic!("no `{id}` in the scan"))
    };
    let above_low: Vec<String> = findings
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("MEDIUM" | "HIGH" | "CRITICAL")))
        .filter(|f| !NOT_THE_LISTENERS.contains(&f["id"].as_str().unwrap_or("")))
        .map(|f| {
            format!(
                "{} {}: {}",
                field(f, "severity"),
                field(f, "id"),
                field(f, "finding")
            )
        })
        .collect();
    assert!(
        above_low.is_empty(),
        "testssl.sh findings above LOW: {above_low:#?}"
    );
    let problems: Vec<String> = findings
        .iter()
        .filter(|f| f["severity"] == "FATAL" || f["id"] == "scanProblem")
        .map(|f| format!("{}: {}", field(f, "id"), field(f, "finding")))
        .collect();
    assert!(
        problems.is_empty(),
        "the scan did not complete: {problems:#?}"
    );
    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        assert_eq!(by_id(old), "not offered", "{old}");
    }
    assert_eq!(by_id("TLS1_2"), "offered");
    assert!(
        by_id("TLS1_3").starts_with("offered"),
        "TLS 1.3: {}",
        by_id("TLS1_3")
    );
    let mut offered: Vec<String> = findings
        .iter()
        .filter(|f| {
            f["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("cipher_x"))
        })
        .filter_map(|f| {
            field(f, "finding")
                .split_whitespace()
                .last()
                .map(str::to_string)
        })
        .collect();
    offered.sort();
    let mut want: Vec<String> = CIPHERS.iter().map(|c| c.to_string()).collect();
    want.sort();
    assert_eq!(offered, want, "cipher suites");
    let severity = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .map(|f| field(f, "severity"))
            .unwrap_or_default()
    };
    assert_eq!(severity("cipher_order"), "OK", "{}", by_id("cipher_order"));
    // The scan spoke HTTP through the listener too (its request reached the upstream).
    assert!(
        upstream.hits() > 0,
        "testssl.sh's HTTP request never reached the upstream"
    );
}

/// The gateway's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS")
}

/// What one attack showed.
struct Outcome {
    report: serde_json::Value,
    served: usize,
    failures: Vec<String>,
    rss_growth_kib: u64,
}

/// Runs one attack while other clients keep asking and the gateway's memory is sampled.
fn attack(name: &str, port: u16, client: &Client, pid: u32) -> Outcome {
    let before = rss_kib(pid);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("h2abuse/h2_abuse.py");
    let mut child = Command::new(PYTHON)
        .arg(&script)
        .args([name, &port.to_string(), "--seconds", "8"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3 (apt install python3-h2)");
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (mut served, mut failures, mut peak) = (0, Vec::new(), before);
    rt.block_on(async {
        let mut i = 0usize;
        while child.try_wait().expect("wait").is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(40),
                "{name}: the attack overran"
            );
            let proto = Proto::BOTH[i % 2];
            let req = Req::get(&format!("/control/{i}")).timeout(Duration::from_secs(5));
            match client.send(proto, req).await {
                Ok(r) if r.status == 200 => served += 1,
                Ok(r) => failures.push(format!("{proto:?}: {}", r.status)),
                Err(e) => failures.push(format!("{proto:?}: {e:#}")),
            }
            peak = peak.max(rss_kib(pid));
            i += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let out = child.wait_with_output().expect("attack output");
    assert!(
        out.status.success(),
        "{name}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{name}: report ({e}): {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    peak = peak.max(rss_kib(pid));
    eprintln!("{name}: {report} served={served} rss {before} -> peak {peak} KiB");
    Outcome {
        report,
        served,
        failures,
        rss_growth_kib: peak.saturating_sub(before),
    }
}

#[test]
fn http2_abuse_leaves_other_clients_served_and_memory_bounded() {
    let dir = TempDir::new().expect("temp dir");
    let ca = TestCa::new().expect("test CA");
    let cert = ca.issue("gateway-h2-abuse", 1).expect("server cert");
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    cert.write(&crt, &key).expect("write cert");
    let upstream = EchoUpstream::start().expect("echo upstream");
    let config = write_config(dir.path(), &upstream, &crt, &key);
    let mut proc = GatewayProcess::start_proxy(&config, &dir.path().join("gateway.log"), 1, &[])
        .expect("gateway starts");
    let addr = proc.listener(true).expect("https listener");
    let pid = proc.pid().expect("pid");
    let client = Client::tls(
        addr,
        ca.client_config(&[b"http/1.1"]).expect("client config"),
        ca.client_config(&[b"h2"]).expect("client config"),
    );
    // The bound: 32 MiB over the gateway's memory before the attack. The window attack is
    // allowed to hold what its streams may: 960 requests whose 28 KiB answers the client
    // never takes, each holding its request head and the upstream's answer (up to 8 x 128
    // streams x (32 KiB `max_header_bytes` + 32 KiB) = 64 MiB), so it gets that on top:
    // memory grows with the streams the limits allow, never with what the client sends
    // (about 55 MiB measured, ~57 KiB per held stream).
    const BOUND_KIB: u64 = 32 * 1024;
    const WINDOW_BOUND_KIB: u64 = BOUND_KIB + 64 * 1024;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let check = |name: &str, o: &Outcome, bound: u64| {
        assert!(
            o.failures.is_empty(),
            "{name}: other clients failed: {:?}",
            o.failures
        );
        assert!(
            o.served >= 1,
            "{name}: other clients got no answer during the attack"
        );
        // ... and right after it, on both protocols.
        for proto in Proto::BOTH {
            let reply = rt
                .block_on(client.send(proto, Req::get("/after").timeout(Duration::from_secs(5))))
                .unwrap_or_else(|e| panic!("{name}: {proto:?} after the attack: {e:#}"));
            assert_eq!(reply.status, 200, "{name}: {proto:?} after the attack");
        }
        assert!(
            o.rss_growth_kib <= bound,
            "{name}: memory grew by {} KiB (bound {bound} KiB)",
            o.rss_growth_kib
        );
    };

    let o = attack("rapid_reset", addr.port(), &client, pid);
    check("rapid_reset", &o, BOUND_KIB);
    assert_eq!(o.report["goaway"], "ENHANCE_YOUR_CALM", "{}", o.report);
    assert!(o.report["streams"].as_u64() < Some(5000), "{}", o.report);

    let o = attack("continuation", addr.port(), &client, pid);
    check("continuation", &o, BOUND_KIB);
    assert_eq!(o.report["closed"], true, "{}", o.report);
    assert!(!o.report["goaway"].is_null(), "{}", o.report);
    assert!(
        o.report["bytes_out"].as_u64() < Some(1 << 20),
        "{}",
        o.report
    );

    let o = attack("stream_limit", addr.port(), &client, pid);
    check("stream_limit", &o, BOUND_KIB);
    // Four connections x 1000 streams against 128 each: the rest are refused.
    let refused = o.report["resets"]["REFUSED_STREAM"].as_u64().unwrap_or(0);
    assert!(refused >= 4 * (1000 - 128), "{}", o.report);

    let o = attack("window", addr.port(), &client, pid);
    check("window", &o, WINDOW_BOUND_KIB);
    assert_eq!(
        o.report["zero_increment"]["goaway"], "PROTOCOL_ERROR",
        "{}",
        o.report
    );
    assert_eq!(
        o.report["overflow"]["goaway"], "FLOW_CONTROL_ERROR",
        "{}",
        o.report
    );

    let hits_before = upstream.hits();
    let o = attack("made_you_reset", addr.port(), &client, pid);
    check("made_you_reset", &o, BOUND_KIB);
    assert_eq!(o.report["closed"], true, "{}", o.report);
    assert!(!o.report["goaway"].is_null(), "{}", o.report);
    // The server stops the connection early: the upstream sees a handful of the streams,
    // not the 20 000 the attack would open.
    let attack_hits = upstream.hits() - hits_before - o.served - 2;
    assert!(
        attack_hits < 2000,
        "{attack_hits} attack requests reached the upstream"
    );

    // Still standing, and still answering.
    assert!(proc
        .wait_exit(Duration::from_millis(10))
        .expect("wait")
        .is_none());
}
