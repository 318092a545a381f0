use super::*;
use crate::jwt::Reason;
use crate::metrics::Metrics;
use crate::proxy::refusal::DenialReason;
use crate::proxy::upstream::UpstreamErrorKind;
use std::net::SocketAddr;

fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

#[test]
fn summarises_a_real_registry() {
    let m = Metrics::new(
        &["api".to_owned(), "admin".to_owned()],
        &["pool".to_owned()],
    );
    for _ in 0..3 {
        m.request(Some(0), 200);
    }
    m.request(Some(1), 403);
    m.request(None, 404);
    m.request(Some(0), 502);
    m.denial(DenialReason::Token(Reason::Expired));
    m.denial(DenialReason::InsufficientScope);
    m.tls_handshake(true);
    m.tls_handshake(false);
    m.upstream_error(0, UpstreamErrorKind::Connect);
    m.connection_opened();
    m.connection_refused("per_source_limit");
    for us in [2, 3, 4, 40] {
        m.verify_latency(Duration::from_micros(us));
    }
    let up = summarise(addr(), &client::parse(&m.render()));
    assert_eq!(up.admin, "127.0.0.1:9901");
    assert_eq!(up.requests, 6);
    assert_eq!(up.requests_by_class["2xx"], 3);
    assert_eq!(up.requests_by_class["4xx"], 2);
    assert_eq!(up.requests_by_class["5xx"], 1);
    assert_eq!(up.requests_by_route["api"], 4);
    assert_eq!(up.requests_by_route["admin"], 1);
    assert_eq!(up.requests_by_route["(none)"], 1);
    assert_eq!(up.denials["expired"], 1);
    assert_eq!(up.denials["insufficient_scope"], 1);
    assert_eq!(up.denials["malformed"], 0);
    assert_eq!((up.tls_handshakes_ok, up.tls_handshakes_failed), (1, 1));
    assert_eq!(up.upstream_errors["pool"]["connect"], 1);
    assert_eq!(up.upstream_errors["pool"]["timeout"], 0);
    assert_eq!(up.connections_open, 1);
    assert_eq!(up.connections_refused["per_source_limit"], 1);
    assert_eq!(up.verify.count, 4);
    let mean = up.verify.mean_us.expect("mean");
    assert!((mean - 12.25).abs() < 1e-6, "{mean}");
    assert_eq!(up.verify.p50_le_us, Some(5.0));
    assert_eq!(up.verify.p99_le_us, Some(50.0));
    assert_eq!(up.token_cache, None);
    assert_eq!(up.keyset, None);

    let text = render(&up);
    assert!(
        text.starts_with("user plane (admin endpoint 127.0.0.1:9901)\n"),
        "{text}"
    );
    assert!(
        text.contains("requests 6  by class: 2xx 3  4xx 2  5xx 1\n"),
        "{text}"
    );
    assert!(
        text.contains("  by route: (none) 1  admin 1  api 4\n"),
        "{text}"
    );
    assert!(
        text.contains("denials 2: expired 1  insufficient_scope 1\n"),
        "{text}"
    );
    assert!(
        text.contains("token verifications 4  mean 12.2µs  p50 <= 5.0µs  p99 <= 50.0µs\n")
            || text.contains("token verifications 4  mean 12.3µs  p50 <= 5.0µs  p99 <= 50.0µs\n"),
        "{text}"
    );
    assert!(
        text.contains("upstream errors: pool (connect 1)\n"),
        "{text}"
    );

    let json = serde_json::to_value(&up).expect("json");
    assert_eq!(json["requests"], 6);
    assert_eq!(json["verify"]["p99_le_us"], 50.0);
    assert!(json["token_cache"].is_null());
}

#[test]
fn empty_registry_summarises_to_zeros() {
    let up = summarise(addr(), &client::parse(&Metrics::new(&[], &[]).render()));
    assert_eq!(up.requests, 0);
    assert_eq!(up.verify, Verify::default());
    assert!(up.denials.values().all(|v| *v == 0));
    assert!(render(&up).contains("denials 0: none\n"));
}
