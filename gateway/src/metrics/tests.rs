use super::*;
use crate::jwt::Reason;
use crate::tls::HandshakeFailure;
use std::collections::HashMap;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// `name{labels} value` lines as a map, for exact comparisons.
fn samples(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn value(text: &str, series: &str) -> Option<String> {
    samples(text).get(series).cloned()
}

/// A verifier with one HMAC key, and a token it accepts (valid for five minutes).
fn hmac_verifier_and_token() -> (Arc<crate::jwt::Verifier>, String) {
    use crate::jwt::{now_unix, Algorithm, SigningKey, Verifier, VerifierConfig};
    use crate::keys::{KeyStore, VerifyingKey};
    let secret = [7u8; 32];
    let key = VerifyingKey::hmac(&secret, None, None, "test").expect("hmac key");
    let v = Verifier::new(VerifierConfig::default(), KeyStore::with_keys([key])).expect("verifier");
    let mut claims = serde_json::Map::new();
    claims.insert("exp".into(), (now_unix() + 300).into());
    let token = SigningKey::hmac(&secret, Algorithm::HS256)
        .expect("signing key")
        .sign(serde_json::Map::new(), &claims)
        .expect("token");
    (Arc::new(v), token)
}

#[test]
fn fresh_registry_renders_fixed_series_at_zero() {
    let m = Metrics::new(&names(&["api", "admin"]), &names(&["backend"]));
    let t = m.render();
    for r in DenialReason::ALL.map(DenialReason::as_str) {
        assert_eq!(
            value(&t, &format!("gateway_denials_total{{reason=\"{r}\"}}")).as_deref(),
            Some("0"),
            "{r}"
        );
    }
    for k in UpstreamErrorKind::ALL.map(UpstreamErrorKind::as_str) {
        let s = format!("gateway_upstream_errors_total{{upstream=\"backend\",kind=\"{k}\"}}");
        assert_eq!(value(&t, &s).as_deref(), Some("0"), "{s}");
    }
    assert_eq!(
        value(&t, "gateway_tls_handshakes_total{result=\"ok\"}").as_deref(),
        Some("0")
    );
    assert_eq!(value(&t, "gateway_connections_open").as_deref(), Some("0"));
    assert_eq!(
        value(&t, "gateway_verify_duration_seconds_count").as_deref(),
        Some("0")
    );
    // No request yet: no request series (they are created on first use).
    assert!(!t.contains("gateway_requests_total"), "{t}");
    m.request(Some(1), 204);
    let t = m.render();
    assert!(t.contains("# TYPE gateway_requests_total counter"), "{t}");
    assert_eq!(
        value(&t, "gateway_requests_total{route=\"admin\",status=\"204\"}").as_deref(),
        Some("1")
    );
    // Nothing scrape-time is configured.
    assert!(!t.contains("gateway_kernel_"), "{t}");
    assert!(!t.contains("gateway_token_cache"), "{t}");
}

#[test]
fn recorded_events_show_up_with_their_labels() {
    let m = Metrics::new(&names(&["api", "admin"]), &names(&["a", "b"]));
    m.request(Some(0), 200);
    m.request(Some(0), 200);
    m.request(Some(1), 403);
    m.request(None, 404);
    m.request(Some(7), 404); // out of range: no route
    m.request(Some(0), 42); // not an HTTP status
    m.request(Some(0), 700);
    m.denial(DenialReason::Token(Reason::Expired));
    m.denial(DenialReason::InsufficientScope);
    m.tls_handshake(true);
    m.tls_handshake(false);
    m.tls_handshake(false);
    m.upstream_error(1, UpstreamErrorKind::Timeout);
    m.upstream_error(9, UpstreamErrorKind::Connect); // ignored
    m.connection_refused("per_source_limit");
    m.connection_refused("later");
    m.connection_opened();
    m.connection_opened();
    m.connection_closed();
    let t = m.render();
    let s = samples(&t);
    let get = |k: &str| s.get(k).map(String::as_str);
    assert_eq!(
        get("gateway_requests_total{route=\"api\",status=\"200\"}"),
        Some("2")
    );
    assert_eq!(
        get("gateway_requests_total{route=\"admin\",status=\"403\"}"),
        Some("1")
    );
    assert_eq!(
        get("gateway_requests_total{route=\"(none)\",status=\"404\"}"),
        Some("2")
    );
    assert_eq!(
        get("gateway_requests_total{route=\"api\",status=\"other\"}"),
        Some("2")
    );
    assert_eq!(get("gateway_denials_total{reason=\"expired\"}"), Some("1"));
    assert_eq!(
        get("gateway_denials_total{reason=\"insufficient_scope\"}"),
        Some("1")
    );
    assert_eq!(get("gateway_denials_total{reason=\"other\"}"), None);
    assert_eq!(
        get("gateway_denials_total{reason=\"malformed\"}"),
        Some("0")
    );
    assert_eq!(
        get("gateway_tls_handshakes_total{result=\"ok\"}"),
        Some("1")
    );
    assert_eq!(
        get("gateway_tls_handshakes_total{result=\"failed\"}"),
        Some("2")
    );
    assert_eq!(
        get("gateway_upstream_errors_total{upstream=\"b\",kind=\"timeout\"}"),
        Some("1")
    );
    assert_eq!(
        get("gateway_upstream_errors_total{upstream=\"a\",kind=\"timeout\"}"),
        Some("0")
    );
    assert_eq!(
        get("gateway_connections_refused_total{reason=\"per_source_limit\"}"),
        Some("1")
    );
    assert_eq!(
        get("gateway_connections_refused_total{reason=\"other\"}"),
        Some("1")
    );
    assert_eq!(get("gateway_connections_open"), Some("1"));
    let request_series = t
        .lines()
        .filter(|l| l.starts_with("gateway_requests_total{"))
        .count();
    assert_eq!(request_series, 4, "{t}");
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::new(&names(&["we\"ird\\route\n"]), &[]);
    m.request(Some(0), 200);
    let t = m.render();
    assert!(
        t.contains(r#"gateway_requests_total{route="we\"ird\\route\n",status="200"} 1"#),
        "{t}"
    );
}

#[test]
fn concurrent_increments_add_up_exactly() {
    const THREADS: usize = 8;
    const EACH: u64 = 20_000;
    let m = Arc::new(Metrics::new(&names(&["r0", "r1"]), &names(&["u"])));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let m = Arc::clone(&m);
            std::thread::spawn(move || {
                for i in 0..EACH {
                    // Every thread races to create the same lazily created series.
                    m.request(Some(t % 2), if i % 2 == 0 { 200 } else { 503 });
                    m.denial(DenialReason::Token(Reason::BadSignature));
                    m.verify_latency(Duration::from_micros(i % 300));
                    m.upstream_error(0, UpstreamErrorKind::Connect);
                    m.connection_opened();
                    m.connection_closed();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker thread");
    }
    let t = m.render();
    let s = samples(&t);
    let per_route_status = (THREADS as u64 / 2) * EACH / 2;
    for r in ["r0", "r1"] {
        for st in ["200", "503"] {
            let k = format!("gateway_requests_total{{route=\"{r}\",status=\"{st}\"}}");
            assert_eq!(s.get(&k), Some(&per_route_status.to_string()), "{k}");
        }
    }
    let total = (THREADS as u64 * EACH).to_string();
    assert_eq!(
        s.get("gateway_denials_total{reason=\"bad_signature\"}"),
        Some(&total)
    );
    assert_eq!(s.get("gateway_verify_duration_seconds_count"), Some(&total));
    assert_eq!(
        s.get("gateway_verify_duration_seconds_bucket{le=\"+Inf\"}"),
        Some(&total)
    );
    assert_eq!(
        s.get("gateway_upstream_errors_total{upstream=\"u\",kind=\"connect\"}"),
        Some(&total)
    );
    assert_eq!(
        s.get("gateway_connections_open").map(String::as_str),
        Some("0")
    );
}

#[test]
fn histogram_buckets_are_cumulative_with_inclusive_bounds() {
    let m = Metrics::new(&[], &[]);
    for d in [
        Duration::from_nanos(500),   // <= 1µs
        Duration::from_micros(1),    // exactly on the 1µs bound
        Duration::from_nanos(1_001), // 2.5µs bucket
        Duration::from_micros(30),   // 50µs bucket
        Duration::from_millis(100),  // on the last bound
        Duration::from_secs(3),      // overflow
        Duration::MAX,               // saturates, still counted
    ] {
        m.verify_latency(d);
    }
    let t = m.render();
    let s = samples(&t);
    let b = |le: &str| {
        s.get(&format!(
            "gateway_verify_duration_seconds_bucket{{le=\"{le}\"}}"
        ))
        .cloned()
        .unwrap_or_else(|| panic!("bucket {le} missing:\n{t}"))
    };
    assert_eq!(b("1e-06"), "2");
    assert_eq!(b("2.5e-06"), "3");
    assert_eq!(b("2.5e-05"), "3");
    assert_eq!(b("5e-05"), "4");
    assert_eq!(b("0.1"), "5");
    assert_eq!(b("+Inf"), "7");
    assert_eq!(
        s.get("gateway_verify_duration_seconds_count")
            .map(String::as_str),
        Some("7")
    );
    assert!(
        t.contains("# TYPE gateway_verify_duration_seconds histogram"),
        "{t}"
    );
    let bucket_lines = t
        .lines()
        .filter(|l| l.starts_with("gateway_verify_duration_seconds_bucket"))
        .count();
    assert_eq!(bucket_lines, histogram::VERIFY_BUCKETS_NS.len() + 1, "{t}");
}

#[test]
fn request_and_upstream_durations_are_labelled_by_route_and_server() {
    let servers: Vec<std::net::SocketAddr> = vec![
        "10.0.0.1:80".parse().unwrap(),
        "10.0.0.2:80".parse().unwrap(),
    ];
    let m = Metrics::with_servers(
        &names(&["api"]),
        &names(&["a", "b"]),
        &[vec![servers[0]], servers.clone()],
    );
    m.request_duration(Some(0), Duration::from_millis(3));
    m.request_duration(None, Duration::from_micros(100));
    m.request_duration(Some(9), Duration::from_micros(100)); // out of range: no route
    for ms in [1, 1, 1, 200] {
        m.upstream_duration(1, 1, Duration::from_millis(ms));
    }
    m.upstream_duration(0, 0, Duration::from_millis(40));
    m.upstream_duration(0, 1, Duration::from_millis(1)); // `a` has one server: ignored
    m.upstream_duration(7, 0, Duration::from_millis(1)); // no such upstream
    m.tls_handshake_failed(HandshakeFailure::NotTls);
    m.tls_handshake_failed(HandshakeFailure::NotTls);
    m.tls_handshake_failed(HandshakeFailure::Timeout);
    let t = m.render();
    let get = |k: &str| value(&t, k).unwrap_or_else(|| panic!("{k} missing:\n{t}"));
    assert_eq!(
        get("gateway_request_duration_seconds_bucket{route=\"api\",le=\"0.005\"}"),
        "1"
    );
    assert_eq!(
        get("gateway_request_duration_seconds_count{route=\"(none)\"}"),
        "2"
    );
    assert_eq!(
        get("gateway_upstream_duration_seconds_count{upstream=\"b\",server=\"10.0.0.2:80\"}"),
        "4"
    );
    assert_eq!(
        get("gateway_upstream_duration_seconds_count{upstream=\"a\",server=\"10.0.0.1:80\"}"),
        "1"
    );
    assert_eq!(
        get("gateway_upstream_duration_seconds_count{upstream=\"b\",server=\"10.0.0.1:80\"}"),
        "0"
    );
    assert_eq!(
        get("gateway_tls_handshake_failures_total{reason=\"not_tls\"}"),
        "2"
    );
    assert_eq!(
        get("gateway_tls_handshake_failures_total{reason=\"timeout\"}"),
        "1"
    );
    assert_eq!(
        get("gateway_tls_handshake_failures_total{reason=\"other\"}"),
        "0"
    );
    assert_eq!(get("gateway_tls_handshakes_total{result=\"failed\"}"), "3");
    // Per-server figures for /stats.json: p50 and p99 are bucket bounds.
    let lat = m.server_latencies();
    assert_eq!(lat.len(), 3);
    assert_eq!(
        (lat[2].upstream.as_str(), lat[2].server.as_str()),
        ("b", "10.0.0.2:80")
    );
    let l = lat[2].latency;
    assert_eq!(l.count, 4);
    assert_eq!(l.p50_ms, Some(1.0));
    assert_eq!(l.p99_ms, Some(250.0));
    assert!((l.mean_ms.unwrap() - 50.75).abs() < 1e-9, "{l:?}");
    assert_eq!(lat[1].latency.count, 0);
    assert_eq!(lat[1].latency.p50_ms, None);
    assert_eq!(lat[1].latency.mean_ms, None);
    let json = serde_json::to_value(&lat[0]).unwrap();
    assert_eq!(json["server"], "10.0.0.1:80");
    assert_eq!(json["p99_ms"], 50.0);
}

#[test]
fn verifier_cache_and_keys_are_read_at_scrape_time() {
    use crate::jwt::now_unix;
    let (v, token) = hmac_verifier_and_token();
    let m = Metrics::new(&[], &[]);
    m.set_verifier(Arc::clone(&v));
    v.verify(&token, now_unix()).expect("valid (miss)");
    v.verify(&token, now_unix()).expect("valid (hit)");
    let t = m.render();
    let get = |k: &str| value(&t, k).unwrap_or_else(|| panic!("{k} missing:\n{t}"));
    assert_eq!(get("gateway_keyset_keys"), "1");
    assert_eq!(get("gateway_keyset_stale"), "0");
    assert_eq!(get("gateway_token_cache_hits_total"), "1");
    assert_eq!(get("gateway_token_cache_misses_total"), "1");
    assert_eq!(get("gateway_token_cache_entries"), "1");
}

#[test]
fn unpinned_maps_export_nothing() {
    let m = Metrics::new(&[], &[]);
    m.set_pin_path(PathBuf::from("/nonexistent/gateway-metrics-test"));
    let t = m.render();
    assert!(!t.contains("kernel"), "{t}");
    assert!(t.contains("gateway_connections_open"), "{t}");
}

#[test]
fn metrics_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Metrics>();
}

#[test]
fn every_exposed_name_is_what_the_registry_renders() {
    use crate::jwt::now_unix;
    let (v, token) = hmac_verifier_and_token();
    let server: std::net::SocketAddr = "10.0.0.1:80".parse().unwrap();
    let m = Metrics::with_servers(&names(&["api"]), &names(&["u"]), &[vec![server]]);
    m.set_verifier(Arc::clone(&v));
    m.request(Some(0), 200);
    v.verify(&token, now_unix()).expect("valid");
    let t = m.render();
    let rendered: std::collections::HashSet<&str> = t
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    // Sources this registry has none of (JWKS URLs, the abuse engine) render nothing.
    let absent = [
        exposed::KEYSET_AGE,
        exposed::KEY_REFRESH_FAILURES,
        exposed::KEY_REFRESHES,
        exposed::KEY_REFETCHES_RATE_LIMITED,
        exposed::ABUSE_BANS,
        exposed::ABUSE_WOULD_BAN,
        exposed::ABUSE_PROTECTED_SKIPPED,
        exposed::DENY_EVICTIONS,
        exposed::FLEET_CONNECTED,
        exposed::FLEET_QUEUE_LENGTH,
        exposed::FLEET_EVENTS_SENT,
        exposed::FLEET_EVENTS_RECEIVED,
        exposed::FLEET_EVENTS_DROPPED,
        exposed::FLEET_BANS_REFUSED,
        exposed::FLEET_COUNTS_LOST,
        exposed::FLEET_EVENTS_REJECTED,
        exposed::FLEET_PROPAGATION_LAG_BUCKET,
        exposed::FLEET_PROPAGATION_LAG_SUM,
        exposed::FLEET_PROPAGATION_LAG_COUNT,
        // Upstream pools are not given to this registry.
        exposed::UPSTREAM_SERVER_UP,
    ];
    for name in exposed::ALL {
        if !absent.contains(name) {
            assert!(rendered.contains(name), "{name} not rendered:\n{t}");
        }
    }
    assert!(exposed::REQUESTS.starts_with(&format!("{PREFIX}_")));
}

#[test]
fn jwks_sources_are_labelled_with_their_issuer() {
    use crate::keys::{KeySourceConfig, KeyStore};
    let m = Metrics::new(&[], &[]);
    for (issuer, url) in [
        ("default", "https://idp.example/jwks.json"),
        ("corp", "https://corp.example/jwks.json"),
    ] {
        let cfg: KeySourceConfig =
            toml::from_str(&format!("jwks_url = \"{url}\"")).expect("source config");
        let (_, mut sources) = KeyStore::from_config(&[cfg]).expect("source");
        m.add_jwks_source(issuer, sources.pop().expect("one URL source"));
    }
    let t = m.render();
    for name in [
        exposed::KEY_REFRESHES,
        exposed::KEY_REFRESH_FAILURES,
        exposed::KEY_REFETCHES_RATE_LIMITED,
    ] {
        assert_eq!(
            value(
                &t,
                &format!("{name}{{issuer=\"corp\",source=\"https://corp.example/jwks.json\"}}")
            )
            .as_deref(),
            Some("0"),
            "{t}"
        );
        assert_eq!(
            value(
                &t,
                &format!("{name}{{issuer=\"default\",source=\"https://idp.example/jwks.json\"}}")
            )
            .as_deref(),
            Some("0"),
            "{t}"
        );
    }
}

#[test]
fn a_reloads_series_continue_the_names_both_sets_have() {
    let m = Metrics::new(&names(&["api", "old"]), &names(&["u"]));
    m.request(Some(0), 200);
    m.upstream_error(0, UpstreamErrorKind::Timeout);
    // The reload's names, in another order, one kept, one new.
    let s = m.series(&names(&["new", "api"]), &names(&["v", "u"]), &[]);
    s.request(Some(1), 200);
    s.request(Some(0), 200);
    s.request(Some(2), 200); // out of range: no route
    s.upstream_error(1, UpstreamErrorKind::Timeout);
    s.upstream_error(0, UpstreamErrorKind::Connect);
    // The running set records as before, beside the new one.
    m.request(Some(1), 503);
    let t = m.render();
    let s = samples(&t);
    let get = |k: &str| s.get(k).map(String::as_str);
    assert_eq!(
        get("gateway_requests_total{route=\"api\",status=\"200\"}"),
        Some("2")
    );
    assert_eq!(
        get("gateway_requests_total{route=\"new\",status=\"200\"}"),
        Some("1")
    );
    assert_eq!(
        get("gateway_requests_total{route=\"old\",status=\"503\"}"),
        Some("1")
    );
    assert_eq!(
        get("gateway_requests_total{route=\"(none)\",status=\"200\"}"),
        Some("1")
    );
    assert_eq!(
        get("gateway_upstream_errors_total{upstream=\"u\",kind=\"timeout\"}"),
        Some("2")
    );
    assert_eq!(
        get("gateway_upstream_errors_total{upstream=\"v\",kind=\"connect\"}"),
        Some("1")
    );
}
#[tokio::test]
async fn upstream_servers_are_up_while_in_rotation() {
    use crate::config::UpstreamConfig;
    use crate::proxy::upstream::Upstream;
    // A port nothing listens on: the active check's connection is refused.
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let upstream = |name: &str, servers: &str| {
        let cfg: UpstreamConfig =
            toml::from_str(&format!("name = \"{name}\"\nservers = [{servers}]")).expect("config");
        Arc::new(Upstream::new(&cfg))
    };
    let up = upstream("app", "\"192.0.2.10:80\", \"[2001:db8::10]:8080\"");
    let down = upstream("old", &format!("\"{refused}\""));
    let m = Metrics::new(&[], &names(&["app", "old"]));
    assert!(!m.render().contains(exposed::UPSTREAM_SERVER_UP));
    m.set_upstreams(vec![up, Arc::clone(&down)]);
    // One round of the active check (the first tick is immediate; the next is far away).
    let checks = Arc::clone(&down).health_checks(
        "/".into(),
        Duration::from_secs(3600),
        Duration::from_secs(2),
    );
    let _ = tokio::time::timeout(Duration::from_secs(3), checks).await;
    assert!(!down.health()[0].in_rotation, "the refused server is out");
    let t = m.render();
    let up_value = |upstream: &str, server: &str| {
        value(
            &t,
            &format!(
                "{}{{upstream=\"{upstream}\",server=\"{server}\"}}",
                exposed::UPSTREAM_SERVER_UP
            ),
        )
    };
    assert_eq!(
        up_value("app", "192.0.2.10:80").as_deref(),
        Some("1"),
        "{t}"
    );
    assert_eq!(
        up_value("app", "[2001:db8::10]:8080").as_deref(),
        Some("1"),
        "{t}"
    );
    assert_eq!(
        up_value("old", &refused.to_string()).as_deref(),
        Some("0"),
        "{t}"
    );
    assert!(
        t.contains(&format!("# TYPE {} gauge", exposed::UPSTREAM_SERVER_UP)),
        "{t}"
    );
}

#[test]
fn build_info_says_what_the_build_knows() {
    let t = Metrics::new(&[], &[]).render();
    assert!(t.contains("# TYPE gateway_build_info gauge"), "{t}");
    let line = t
        .lines()
        .find(|l| l.starts_with(exposed::BUILD_INFO))
        .expect("build info");
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let commit = option_env!("GATEWAY_GIT_COMMIT").filter(|c| !c.is_empty());
    assert_eq!(
        line,
        format!(
            "gateway_build_info{{version=\"{}\",commit=\"{}\",rustc=\"{}\",profile=\"{profile}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            commit.unwrap_or("unknown"),
            BUILD.rustc,
        )
    );
    // build.rs asked the compiler that built this test.
    assert!(BUILD.rustc.starts_with("rustc 1."), "{}", BUILD.rustc);
}
