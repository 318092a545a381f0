//! `gateway stats` with an admin endpoint: user-plane counters next to the kernel's, and the
//! kernel's alone (no error) when the endpoint does not answer. Also the kernel counters in
//! `/metrics`. Needs pinned maps, hence root (see `gateway_tests::privileged`).

use gateway::admin;
use gateway::config::admin::AdminConfig;
use gateway::ebpf::loader;
use gateway::metrics::Metrics;
use gateway_common::counter;
use gateway_tests::netns::Bpffs;
use gateway_tests::privileged;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

async fn gateway(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run the gateway binary")
    })
    .await
    .expect("join")
}

fn stats_args(pin: &Path, admin: SocketAddr, json: bool) -> Vec<String> {
    let mut a = vec![
        "stats".to_owned(),
        "--pin-path".to_owned(),
        pin.display().to_string(),
        "--admin".to_owned(),
        admin.to_string(),
    ];
    if json {
        a.push("--json".to_owned());
    }
    a
}

fn ok_stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "gateway stats failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_shows_user_plane_counters_when_the_admin_endpoint_answers() {
    if !privileged::require("stats_shows_user_plane_counters") {
        return;
    }
    let fs = Bpffs::new(&format!("admin-stats-{}", std::process::id())).expect("bpffs");
    let pin: PathBuf = fs.pin_path();
    let _ebpf = loader::load_object(&pin).expect("load the object and pin its maps");

    let cfg = AdminConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        allow_non_loopback: false,
        ..AdminConfig::default()
    };
    let listener = admin::bind(&cfg).await.expect("bind");
    let addr = listener.local_addr();
    let metrics = Arc::new(Metrics::new(&["api".to_owned()], &["pool".to_owned()]));
    metrics.set_pin_path(pin.clone());
    for _ in 0..5 {
        metrics.request(Some(0), 200);
    }
    metrics.request(Some(0), 401);
    metrics.denial(gateway::proxy::refusal::DenialReason::MissingToken);
    metrics.verify_latency(Duration::from_micros(20));
    metrics.tls_handshake(true);
    metrics.upstream_error(0, gateway::proxy::upstream::UpstreamErrorKind::Timeout);
    metrics.connection_opened();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(listener.serve(
        Arc::clone(&metrics),
        Arc::new(AtomicBool::new(true)),
        async {
            let _ = rx.await;
        },
    ));

    // The kernel counters are in /metrics, one per name, read from the pinned maps.
    let text = tokio::task::spawn_blocking(move || {
        admin::client::get(addr, "/metrics", Duration::from_secs(2)).expect("GET /metrics")
    })
    .await
    .expect("join");
    for name in counter::NAMES {
        assert!(
            text.contains(&format!("\ngateway_kernel_{name}_total 0\n")),
            "gateway_kernel_{name}_total missing:\n{text}"
        );
    }

    let out = gateway(stats_args(&pin, addr, true)).await;
    let json: serde_json::Value = serde_json::from_str(&ok_stdout(&out)).expect("JSON");
    // The kernel part is unchanged.
    assert_eq!(json["pin_path"], pin.display().to_string());
    assert_eq!(json["totals"]["packets"], 0);
    assert_eq!(json["sources_tracked"], 0);
    // The user plane.
    let up = &json["user_plane"];
    assert_eq!(up["admin"], addr.to_string());
    assert_eq!(up["requests"], 6);
    assert_eq!(up["requests_by_class"]["2xx"], 5);
    assert_eq!(up["requests_by_class"]["4xx"], 1);
    assert_eq!(up["requests_by_route"]["api"], 6);
    assert_eq!(up["denials"]["missing_token"], 1);
    assert_eq!(up["verify"]["count"], 1);
    assert_eq!(up["verify"]["p99_le_us"], 25.0);
    assert_eq!(up["tls_handshakes_ok"], 1);
    assert_eq!(up["upstream_errors"]["pool"]["timeout"], 1);
    assert_eq!(up["connections_open"], 1);

    let out = gateway(stats_args(&pin, addr, false)).await;
    let text = ok_stdout(&out);
    assert!(text.starts_with("data plane maps at "), "{text}");
    assert!(
        text.contains(&format!("user plane (admin endpoint {addr})\n")),
        "{text}"
    );
    assert!(
        text.contains("requests 6  by class: 2xx 5  4xx 1\n"),
        "{text}"
    );
    assert!(text.contains("denials 1: missing_token 1\n"), "{text}");

    // Stop the endpoint: stats still prints the kernel part, user_plane is null, exit 0.
    let _ = tx.send(());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve() ends")
        .expect("join");
    let out = gateway(stats_args(&pin, addr, true)).await;
    let json: serde_json::Value = serde_json::from_str(&ok_stdout(&out)).expect("JSON");
    assert_eq!(json["totals"]["packets"], 0);
    assert!(json["user_plane"].is_null(), "{json}");
    assert!(
        json.get("user_plane").is_some(),
        "the key is always present"
    );

    let out = gateway(stats_args(&pin, addr, false)).await;
    let text = ok_stdout(&out);
    assert!(text.starts_with("data plane maps at "), "{text}");
    assert!(
        text.contains(&format!("user plane: admin endpoint {addr} not reachable")),
        "{text}"
    );
    drop(fs);
}
