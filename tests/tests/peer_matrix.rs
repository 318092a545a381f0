//! The shared HAProxy peer's correctness matrix (`../shared/peers/haproxy/matrix.sh`) against
//! the real gateway, configured like `examples/peer-haproxy.toml` (the peer's issuer,
//! audience, RS256 key and TLS certificate) but on ports this test picked, in front of the
//! peer's upstream (`backend.cfg`, a second HAProxy).
//!
//! Run three times: plain HTTP/1.1, TLS HTTP/1.1 and TLS HTTP/2. Every `core` case must pass
//! and every `strict` case must meet the RFC expectation, with no refusal seen as a reset.
//! Needs haproxy, curl, openssl and python3 (`cargo xtask setup` installs them).

use gateway_tests::gateway::GatewayProcess;
use gateway_tests::haproxy::{peer_dir, start_backend};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

fn require_tools() {
    for tool in ["haproxy", "curl", "openssl", "python3"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "`{tool}` is not installed; the peer matrix needs haproxy, curl, openssl and \
             python3 (`cargo xtask setup` installs them)"
        );
    }
}

/// `examples/peer-haproxy.toml` with the test's ports: TLS, plain HTTP and admin on port 0,
/// the upstream on the backend's port. Each address must be in the example exactly once.
fn gateway_config(backend: SocketAddr) -> String {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/peer-haproxy.toml");
    let mut text = std::fs::read_to_string(&example)
        .unwrap_or_else(|e| panic!("read {}: {e}", example.display()));
    for (from, to) in [
        ("\"127.0.0.1:9443\"", "\"127.0.0.1:0\"".to_string()),
        ("\"127.0.0.1:9080\"", "\"127.0.0.1:0\"".to_string()),
        ("\"127.0.0.1:9901\"", "\"127.0.0.1:0\"".to_string()),
        ("\"127.0.0.1:8090\"", format!("\"{backend}\"")),
    ] {
        assert_eq!(
            text.matches(from).count(),
            1,
            "{} should name {from} exactly once (this test rewrites it)",
            example.display()
        );
        text = text.replace(from, &to);
    }
    text
}

/// Runs matrix.sh once; returns its SUMMARY line, failing with the whole table otherwise.
fn run_matrix(peer: &Path, work: &Path, target: SocketAddr, scheme: &str, httpv: &str) -> String {
    let name = format!("{scheme}-h{httpv}");
    let out_path = work.join(format!("matrix-{name}.out"));
    let out = std::fs::File::create(&out_path).expect("matrix output");
    let mut child = Command::new("bash")
        .arg(peer.join("matrix.sh"))
        .env("TARGET", target.to_string())
        .env("SCHEME", scheme)
        .env("HTTPV", httpv)
        .env("WORK", work)
        .env("TOKENS", work.join("tokens"))
        .env("OUT", work.join(format!("matrix-{name}.tsv")))
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("out"))
        .stderr(out)
        .spawn()
        .expect("run matrix.sh");
    // ~70 curl requests, each bounded by --max-time 10; in practice a few seconds.
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait matrix.sh") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "matrix.sh ({name}) still running after 300 s:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let summary = output
        .lines()
        .find(|l| l.starts_with("SUMMARY "))
        .unwrap_or_else(|| panic!("matrix.sh ({name}) printed no SUMMARY:\n{output}"))
        .to_string();
    let fraction = |key: &str| -> (u32, u32) {
        let field = summary
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in `{summary}`"));
        let (a, b) = field.split_once('/').expect("n/m");
        (a.parse().expect("n"), b.parse().expect("m"))
    };
    let (core, core_total) = fraction("core=");
    let (strict, strict_total) = fraction("strict=");
    let failed_rows: Vec<&str> = output
        .lines()
        .filter(|l| l.contains(" FAIL ") || l.contains(" DIFF ") || l.contains(" RESET "))
        .collect();
    assert!(
        status.success() && core == core_total && core_total >= 42,
        "matrix.sh ({name}): core cases failed (exit {status}): {summary}\n{}\n\nfull output:\n{output}",
        failed_rows.join("\n")
    );
    assert!(
        strict == strict_total && strict_total >= 17,
        "matrix.sh ({name}): strict cases differ from the RFC expectation: {summary}\n{}",
        failed_rows.join("\n")
    );
    assert!(
        !summary.contains("resets="),
        "matrix.sh ({name}): refusals without an HTTP status: {summary}\n{}",
        failed_rows.join("\n")
    );
    summary
}

#[test]
fn shared_haproxy_peer_matrix_passes_over_http_tls_h1_and_tls_h2() {
    let peer = peer_dir();
    require_tools();
    let work_dir = TempDir::new().expect("temp dir");
    let work = work_dir.path();

    let keys = work.join("keys");
    let status = Command::new("bash")
        .arg(peer.join("gen-keys.sh"))
        .env("KEYS_DIR", &keys)
        .stdout(Stdio::null())
        .status()
        .expect("run gen-keys.sh");
    assert!(status.success(), "gen-keys.sh failed ({status})");
    let out = Command::new("python3")
        .arg(peer.join("mint.py"))
        .arg("--keys")
        .arg(&keys)
        .arg("--out")
        .arg(work.join("tokens"))
        .output()
        .expect("run mint.py");
    assert!(
        out.status.success(),
        "mint.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (_backend, backend_addr) = start_backend(&peer, work);
    let config = work.join("gateway.toml");
    std::fs::write(&config, gateway_config(backend_addr)).expect("write config");
    // `${WORK}` in the example's paths comes from the environment of `gateway run`.
    let gw = GatewayProcess::start_proxy(
        &config,
        &work.join("gateway.log"),
        2,
        &[("WORK", work.as_os_str())],
    )
    .expect("gateway starts");
    let tls = gw.listener(true).expect("https listener");
    let plain = gw.listener(false).expect("http listener");

    let mut summaries = Vec::new();
    for (target, scheme, httpv) in [
        (plain, "http", "1.1"),
        (tls, "https", "1.1"),
        (tls, "https", "2"),
    ] {
        summaries.push(run_matrix(&peer, work, target, scheme, httpv));
    }
    for s in summaries {
        eprintln!("{s}");
    }
}
