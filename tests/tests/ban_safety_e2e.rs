//! Bans that cannot be turned against the people they protect (issue 12), tried from a
//! client namespace the way an attacker would: a SYN flood with a forged source address, a
//! protected address crossing a limit, and deny requests that would cut off everyone or an
//! upstream. The real gateway in a server namespace with XDP on its veth.

use gateway_tests::config::{hs256_jwt_section, xdp_section};
use gateway_tests::gateway::{bin, source_stats, stats, GatewayProcess};
use gateway_tests::netns::{exec_in, NetnsPair, TestNet};
use gateway_tests::probe::{connects_from, curl_status_from, syn_flood};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const PORT: u16 = 9443;
const UPSTREAM_PORT: u16 = 8090;
const ADMIN: &str = "127.0.0.1:9901";
/// The address the attacker forges (it exists in the client namespace, but never sends).
const VICTIM: Ipv4Addr = NetnsPair::CLIENT4_B;
/// The attacker's real address.
const ATTACKER: Ipv4Addr = NetnsPair::CLIENT4;

struct Env {
    net: TestNet,
    secret: PathBuf,
}

fn env(test: &str, short: &str) -> Option<Env> {
    let net = TestNet::new(test, short)?;
    let secret = net.dir.join("hs256.secret");
    std::fs::write(&secret, b"ban-safety-e2e-secret-0123456789ab").expect("secret");
    Some(Env { net, secret })
}

impl Env {
    /// A plain-HTTP proxy with token checks on `/api/`, the given upstream server, the
    /// given `[abuse]` rules, the admin endpoint, and XDP limiting SYNs to the proxy port.
    fn config(&self, upstream: Ipv4Addr, abuse: &str, ebpf_extra: &str) -> PathBuf {
        let text = format!(
            r#"
[listen]
http = ["{server}:{PORT}"]

{jwt}

[[upstream]]
name = "app"
servers = ["{upstream}:{UPSTREAM_PORT}"]

[[route]]
path_prefix = "/api/"
upstream = "app"

[admin]
listen = "{ADMIN}"

[abuse]
{abuse}

{ebpf}protected_ports = [{PORT}]
{ebpf_extra}
"#,
            server = NetnsPair::SERVER4,
            jwt = hs256_jwt_section(&self.secret),
            ebpf = xdp_section(&self.net),
        );
        let path = self.net.dir.join("gateway.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    fn start(&self, config: &Path) -> GatewayProcess {
        let mut gw = GatewayProcess::start(
            Some(&self.net.pair.server),
            config,
            &self.net.dir.join("gateway.log"),
        )
        .expect("gateway starts");
        gw.wait_for("proxy listening", Duration::from_secs(10))
            .expect("proxy listens");
        gw
    }

    /// The deny list as the running gateway's API gives it.
    fn deny_list(&self, config: &Path) -> serde_json::Value {
        let out = exec_in(&self.net.pair.server, &bin().display().to_string())
            .args(["deny", "list", "--json", "--config"])
            .arg(config)
            .output()
            .expect("run gateway deny list");
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).expect("deny list --json")
    }

    /// One HTTP GET of `/api/items` from `src` with a token that is not valid; the status,
    /// or 0 when no answer came.
    fn bad_token(&self, src: Ipv4Addr) -> u16 {
        curl_status_from(
            &self.net.pair.client,
            src,
            3,
            &["-H", "Authorization: Bearer not.a.token"],
            &format!("http://{}:{PORT}/api/items", NetnsPair::SERVER4),
        )
    }

    /// A TCP handshake from `src` to the proxy port.
    fn connects(&self, src: Ipv4Addr) -> bool {
        let to = SocketAddrV4::new(NetnsPair::SERVER4, PORT);
        connects_from(&self.net.pair.client, src, to, Duration::from_secs(2))
    }

    /// `POST /deny` on the admin endpoint from inside the server namespace: status and body.
    fn post_deny(&self, body: &str) -> (u16, String) {
        let out = exec_in(&self.net.pair.server, "curl")
            .args(["-s", "--max-time", "3", "-w", "\n%{http_code}"])
            .args(["-H", "Content-Type: application/json", "--data", body])
            .arg(format!("http://{ADMIN}/deny"))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }
}

#[test]
fn a_forged_syn_flood_bans_nobody_while_its_syns_are_still_limited() {
    let Some(env) = env("a_forged_syn_flood_bans_nobody", "fs") else {
        return;
    };
    // Frequent trip events (one per 100 ms): on the code before issue 12, the default
    // kernel_rate rule (5 trips in 60 s) banned the forged address within a second.
    let cfg = env.config(
        NetnsPair::SERVER4,
        "",
        "syn_rate = 20\nsyn_burst = 10\nevent_interval = \"100ms\"",
    );
    let mut gw = env.start(&cfg);
    let count = 1500u64;
    // Bounded: `count` SYNs, one per millisecond, every one claiming to come from VICTIM.
    let to = SocketAddrV4::new(NetnsPair::SERVER4, PORT);
    syn_flood(&env.net.pair.client, VICTIM, to, count);

    // The flood's SYNs were limited in the kernel, under the forged address...
    let s = stats(&env.net.fs.pin_path());
    let forged = source_stats(&s, &VICTIM.to_string()).expect("the forged source is tracked");
    assert_eq!(forged["syns"].as_u64(), Some(count), "{forged}");
    let drops = forged["drops_rate"].as_u64().unwrap_or(0);
    assert!(drops > count / 2, "most SYNs dropped in XDP: {forged}");
    gw.wait_for("SYN rate limit tripped", Duration::from_secs(5))
        .expect("the trips were reported");

    // ...and nobody is banned: not the forged address, not the real sender.
    let list = env.deny_list(&cfg);
    assert_eq!(list, serde_json::json!([]), "no deny entry: {list}");
    assert!(
        !gw.log_text().contains("abuse: banned"),
        "{}",
        gw.log_text()
    );
    // Once the flood is over the forged address's bucket refills: it connects as before.
    std::thread::sleep(Duration::from_millis(600));
    assert!(env.connects(VICTIM), "the forged address is not cut off");
    assert!(env.connects(ATTACKER));
}

#[test]
fn a_protected_address_crossing_a_limit_is_never_banned() {
    let Some(env) = env("a_protected_address_is_never_banned", "pa") else {
        return;
    };
    // VICTIM is named as an upstream server: it is protected. ATTACKER is not.
    let cfg = env.config(
        VICTIM,
        "auth_failures = { limit = 3, window = \"30s\", ban = \"1m\" }",
        "",
    );
    let mut gw = env.start(&cfg);
    for _ in 0..6 {
        assert_eq!(env.bad_token(VICTIM), 401);
    }
    gw.wait_for("protected address", Duration::from_secs(5))
        .expect("the skipped ban is logged");
    assert_eq!(env.deny_list(&cfg), serde_json::json!([]));
    assert_eq!(env.bad_token(VICTIM), 401, "still served");
    // Logged once per address, however often it crosses the limit.
    assert_eq!(gw.log_text().matches("protected address").count(), 1);
    let metrics = exec_in(&env.net.pair.server, "curl")
        .args(["-s", "--max-time", "3", &format!("http://{ADMIN}/metrics")])
        .output()
        .expect("curl metrics");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    let skipped = metrics
        .lines()
        .find(|l| l.starts_with("gateway_abuse_protected_skipped_total "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok());
    assert!(skipped.is_some_and(|n| n >= 1), "{metrics}");
    // The same behaviour from an unprotected source bans it.
    for _ in 0..4 {
        env.bad_token(ATTACKER);
    }
    let list = env.deny_list(&cfg);
    assert_eq!(list[0]["target"], ATTACKER.to_string(), "{list}");
}

#[test]
fn deny_requests_that_would_cut_off_everyone_or_an_upstream_are_refused() {
    let Some(env) = env("deny_requests_that_would_cut_off", "dr") else {
        return;
    };
    let cfg = env.config(VICTIM, "", "");
    let _gw = env.start(&cfg);
    // All of IPv4 or IPv6, in every spelling, and prefixes shorter than /8 or /16: refused
    // even with force.
    for target in [
        "0.0.0.0/0",
        "::/0",
        "::/64",
        "::/80",
        "::ffff:0:0/96",
        "::ffff:0.0.0.0/96",
        "0.0.0.0/7",
        "8000::/1",
        "2000::/15",
    ] {
        for force in [false, true] {
            let (code, body) =
                env.post_deny(&format!(r#"{{"target":"{target}","force":{force}}}"#));
            assert_eq!(code, 400, "{target} force={force}: {body}");
        }
    }
    // A prefix covering the upstream: refused naming it, accepted with force.
    let (code, body) = env.post_deny(r#"{"target":"10.77.0.2/31"}"#);
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("10.77.0.3") && body.contains("upstream app"),
        "{body}"
    );
    let (code, body) = env.post_deny(r#"{"target":"::ffff:10.77.0.3"}"#);
    assert_eq!(code, 409, "IPv4-mapped spelling: {body}");
    // The gateway's own address (an interface address in its namespace).
    let (code, body) = env.post_deny(&format!(r#"{{"target":"{}"}}"#, NetnsPair::SERVER4));
    assert_eq!(code, 409, "{body}");
    assert!(env.deny_list(&cfg).as_array().is_some_and(Vec::is_empty));
    let (code, body) = env.post_deny(r#"{"target":"10.77.0.2/31","ttl":"1m","force":true}"#);
    assert_eq!(code, 200, "{body}");
    assert_eq!(env.deny_list(&cfg)[0]["target"], "10.77.0.2/31");

    // The CLI refuses the same, with --force or not, before it touches anything.
    let out = Command::new(bin())
        .args(["deny", "add", "0.0.0.0/0", "--force", "--pin-path"])
        .arg(env.net.fs.pin_path())
        .output()
        .expect("run gateway deny add");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("all of IPv4"));
    let out = Command::new(bin())
        .args(["deny", "add", "10.1.2.3", "--ttl", "200y", "--pin-path"])
        .arg(env.net.fs.pin_path())
        .output()
        .expect("run gateway deny add");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("3153600000"),
        "the largest TTL is named: {out:?}"
    );
}
