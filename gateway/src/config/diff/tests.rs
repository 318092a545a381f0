use super::*;
use crate::config::Config;
use std::path::Path;

/// A proxy config; `extra` is appended, `listen` goes into `[listen]`.
fn plan(listen: &str, extra: &str) -> Plan {
    let text = format!(
        r#"
[listen]
http = ["127.0.0.1:8080"]
{listen}

[[upstream]]
name = "app"
servers = ["127.0.0.1:9000"]

[[route]]
name = "api"
path_prefix = "/api/"
upstream = "app"
auth = "none"
{extra}
"#
    );
    Config::parse(Path::new("gw.toml"), &text).expect("valid config")
}

#[test]
fn same_config_changes_nothing() {
    let c = diff(&plan("", ""), &plan("", ""));
    assert_eq!(c, Changes::default());
    assert_eq!(c.summary(), "nothing changed");
}

#[test]
fn routes_and_upstreams_are_named_by_what_happened_to_them() {
    let old = plan(
        "",
        r#"
[[route]]
name = "old"
path_prefix = "/old/"
upstream = "app"
auth = "none"
"#,
    );
    let new = plan(
        "",
        r#"
[[upstream]]
name = "extra"
servers = ["127.0.0.1:9001"]

[[route]]
name = "new"
path_prefix = "/new/"
upstream = "extra"
auth = "none"
"#,
    );
    let c = diff(&old, &new);
    assert_eq!(
        c.applied,
        [
            "routes added [new], removed [old]",
            "upstreams added [extra]"
        ]
    );
    assert!(c.restart.is_empty(), "{:?}", c.restart);

    // A changed server list is a changed upstream, and only it loses its pools.
    let moved = Config::parse(
        Path::new("gw.toml"),
        r#"
[listen]
http = ["127.0.0.1:8080"]

[[upstream]]
name = "app"
servers = ["127.0.0.1:9999"]

[[route]]
name = "api"
path_prefix = "/api/v2/"
upstream = "app"
auth = "none"
"#,
    )
    .expect("valid");
    let c = diff(&plan("", ""), &moved);
    assert_eq!(
        c.applied,
        ["routes changed [api]", "upstreams changed [app]"]
    );
    let running = plan("", "");
    let unchanged = &running.upstreams()[0];
    assert_eq!(plan("", "").unchanged_upstream(unchanged), Some(0));
    assert_eq!(moved.unchanged_upstream(unchanged), None);
}

#[test]
fn live_limits_apply_and_connection_settings_need_a_restart() {
    let new = plan(
        "max_body_bytes = 10\nmax_connections = 7\nhttps = []\n",
        "[runtime]\nworker_threads = 3\n",
    );
    let c = diff(&plan("", ""), &new);
    assert_eq!(c.applied, ["limits changed [max_body_bytes]"]);
    assert_eq!(
        c.restart,
        ["runtime.worker_threads", "listen.max_connections"]
    );

    let moved = plan("", "");
    let other = Config::parse(
        Path::new("gw.toml"),
        "[listen]\nhttp = [\"127.0.0.1:8081\"]\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9000\"]\n[[route]]\nname = \"api\"\npath_prefix = \"/api/\"\nupstream = \"app\"\nauth = \"none\"\n",
    )
    .expect("valid");
    let c = diff(&moved, &other);
    assert_eq!(c.restart, ["listen.http"]);
    assert!(c.applied.is_empty(), "{:?}", c.applied);
}

#[test]
fn issuers_are_compared_by_name() {
    let jwt = |issuers: &str| {
        plan(
            "",
            &format!(
                r#"
[[route]]
name = "secure"
path_prefix = "/secure/"
upstream = "app"
auth = "required"

[jwt]
issuers = ["https://a.test/"]
audiences = ["api"]
[[jwt.keys]]
pem = "/keys/a.pem"
alg = "RS256"
{issuers}
"#
            ),
        )
    };
    let partner = r#"
[[jwt.issuer]]
name = "partner"
iss = "https://partner.test/"
[[jwt.issuer.keys]]
pem = "/keys/p.pem"
alg = "RS256"
"#;
    let c = diff(&jwt(""), &jwt(partner));
    assert_eq!(c.applied, ["jwt issuers added [partner]"]);
    let c = diff(&jwt(partner), &jwt(""));
    assert_eq!(c.applied, ["jwt issuers removed [partner]"]);
    let c = diff(&plan("", ""), &jwt(""));
    assert_eq!(
        c.applied,
        ["routes added [secure]", "jwt issuers added [default]"]
    );
}

#[test]
fn abuse_prefix_needs_a_restart_and_is_kept() {
    let abuse = |prefix: u8, limit: u32| {
        plan(
            "",
            &format!(
                "[abuse]\nipv6_prefix = {prefix}\n[abuse.auth_failures]\nlimit = {limit}\nwindow = \"1m\"\nban = \"10m\"\n"
            ),
        )
    };
    let c = diff(&abuse(64, 5), &abuse(56, 5));
    assert_eq!(c.restart, ["abuse.ipv6_prefix"]);
    assert!(c.applied.is_empty(), "{:?}", c.applied);
    let c = diff(&abuse(64, 5), &abuse(56, 9));
    assert_eq!(c.applied, ["abuse rules changed"]);
    let kept = abuse(56, 9).keeping_restart_only(&abuse(64, 5));
    assert_eq!(kept.abuse.as_ref().map(|a| a.ipv6_prefix), Some(64));
    // No [abuse] before: the prefix that runs is the default.
    let kept = abuse(56, 9).keeping_restart_only(&plan("", ""));
    assert_eq!(
        kept.abuse.as_ref().map(|a| a.ipv6_prefix),
        Some(crate::config::AbuseConfig::default().ipv6_prefix)
    );
}

#[test]
fn ebpf_keys_of_the_running_program_need_a_restart() {
    let ebpf = |iface: &str, rate: u32| {
        plan(
            "",
            &format!("[ebpf]\ninterface = \"{iface}\"\nsyn_rate = {rate}\n"),
        )
    };
    let c = diff(&ebpf("lo", 100), &ebpf("eth9", 200));
    assert_eq!(c.restart, ["ebpf.interface"]);
    assert_eq!(c.applied, ["ebpf settings changed"]);
    let c = diff(&ebpf("lo", 100), &ebpf("eth9", 100));
    assert!(c.applied.is_empty(), "{:?}", c.applied);
    let c = diff(&plan("", ""), &ebpf("lo", 100));
    assert_eq!(c.restart, ["ebpf"]);
    // A proxy added to a data plane's file starts only with a restart: nothing of it is
    // said to apply.
    let data_plane =
        Config::parse(Path::new("gw.toml"), "[ebpf]\ninterface = \"lo\"\n").expect("valid");
    let c = diff(&data_plane, &ebpf("lo", 100));
    assert_eq!(c.restart, ["listen"]);
    assert!(c.applied.is_empty(), "{:?}", c.applied);
}
