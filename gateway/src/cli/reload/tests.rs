use super::*;

/// Two upstreams, `app` on `app_server` and `stable`, each with a route.
fn plan(app_server: &str) -> Arc<Plan> {
    let text = format!(
        r#"
[listen]
http = ["127.0.0.1:8080"]

[[upstream]]
name = "app"
servers = ["{app_server}"]

[[upstream]]
name = "stable"
servers = ["127.0.0.1:9001"]

[[route]]
path_prefix = "/app/"
upstream = "app"
auth = "none"

[[route]]
path_prefix = "/stable/"
upstream = "stable"
auth = "none"
"#
    );
    Arc::new(Config::parse(Path::new("gw.toml"), &text).expect("valid config"))
}

#[test]
fn a_reload_keeps_each_workers_unchanged_upstreams_and_replaces_the_others() {
    let metrics = Arc::new(Metrics::new(&[], &[]));
    let first =
        Proxies::build(&plan("127.0.0.1:9000"), &metrics, None, None, 2, None).expect("built");
    let live: Vec<Arc<LiveProxy>> = first
        .proxies
        .into_iter()
        .map(|p| LiveProxy::new(Arc::new(p)))
        .collect();
    let second = Proxies::build(
        &plan("127.0.0.1:9999"),
        &metrics,
        None,
        None,
        2,
        Some(&live),
    )
    .expect("built");
    assert_eq!(second.proxies.len(), 2);
    for (w, (new, old)) in second.proxies.iter().zip(&live).enumerate() {
        let old = old.peek();
        assert!(
            Arc::ptr_eq(&new.upstreams()[1], &old.upstreams()[1]),
            "worker {w}: `stable` keeps its pools and health"
        );
        assert!(
            !Arc::ptr_eq(&new.upstreams()[0], &old.upstreams()[0]),
            "worker {w}: `app` changed servers"
        );
        assert_eq!(
            new.upstreams()[0].health()[0].addr.to_string(),
            "127.0.0.1:9999"
        );
    }
    // Each worker keeps its own connections.
    assert!(!Arc::ptr_eq(
        &second.proxies[0].upstreams()[1],
        &second.proxies[1].upstreams()[1]
    ));
}
