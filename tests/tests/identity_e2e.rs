//! Identity providers end to end: the real `gateway run` with two issuers of different key
//! types (corp RS256, partners ES256, the same `kid` at both), tokens minted by `gateway token
//! mint` with the committed fixture keys, an echo upstream, and raw HTTP/1.1 clients bound to
//! chosen loopback source addresses (127.0.0.2, 127.0.0.3, ...), so that per-source budgets
//! and limits can be told apart. Checked: a token claiming one issuer but signed with the
//! other's key is 401; each issuer's own tokens pass; a route limited to one issuer refuses
//! the other's (401 invalid_token); claim rules (string, array, any-of) pass and refuse
//! (403); a per-subject limit answers 429 with Retry-After and RateLimit headers for one
//! subject while another is served; the verification budget holds a bad-signature flood from
//! one source while another source verifies normally; the metrics carry all of it; a
//! subject's 429s do not get the address it shares banned by the abuse engine.

use gateway_tests::client::{read_until_closed, RawReply};
use gateway_tests::gateway::{cli_ok, GatewayProcess};
use gateway_tests::upstream::EchoUpstream;
use socket2::{Domain, Socket, Type};
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const CORP: &str = "https://corp.test/";
const PARTNERS: &str = "https://partners.test/";
const AUD: &str = "orders";

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../gateway/tests/data/jwt")
        .join(name)
        .display()
        .to_string()
}

/// One gateway; drops stop it first, then the upstream, then the temp dir.
struct Gw {
    _proc: GatewayProcess,
    _upstream: EchoUpstream,
    addr: SocketAddr,
    admin: SocketAddr,
    _dir: TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl Gw {
    /// `budget`: the `[jwt] verify_budget` table.
    fn start(budget: &str) -> Gw {
        Gw::start_with(budget, "")
    }

    /// `extra`: further top-level tables (e.g. `[abuse]`).
    fn start_with(budget: &str, extra: &str) -> Gw {
        let dir = TempDir::new().expect("temp dir");
        let upstream = EchoUpstream::start().expect("echo upstream");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let config = format!(
            r#"
[runtime]
worker_threads = 2

[listen]
http = ["127.0.0.1:0"]

[admin]
listen = "{admin}"

{extra}

[jwt]
audiences = ["{AUD}"]
verify_budget = {budget}

[[jwt.issuer]]
name = "corp"
iss = "{CORP}"
algorithms = ["RS256"]
keys = [{{ pem = "{rsa}", kid = "k1", alg = "RS256" }}]

[[jwt.issuer]]
name = "partners"
iss = "{PARTNERS}"
keys = [{{ pem = "{ec}", kid = "k1", alg = "ES256" }}]

[[upstream]]
name = "app"
servers = ["{upstream}"]

[[route]]
name = "corp-only"
path_prefix = "/corp/"
upstream = "app"
issuers = ["corp"]

[[route]]
name = "claims"
path_prefix = "/claims/"
upstream = "app"
require = {{ tenant = "acme", roles = ["admin", "ops"] }}
require_methods = {{ DELETE = {{ roles = "admin" }} }}

[[route]]
name = "limited"
path_prefix = "/limited/"
upstream = "app"
rate_limit = {{ key = "sub", rate = "1/m", burst = 2 }}

[[route]]
name = "any"
path_prefix = "/any/"
upstream = "app"
"#,
            rsa = fixture("rsa2048.pub.pem"),
            ec = fixture("ec256.pub.pem"),
            upstream = upstream.addr(),
        );
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config).expect("write config");
        let check = gateway_tests::gateway::cli(&[
            "config",
            "check",
            "--config",
            &path.display().to_string(),
        ]);
        assert!(check.status.success(), "config check: {check:?}");
        let proc = GatewayProcess::start_proxy(&path, &dir.path().join("gateway.log"), 1, &[])
            .expect("gateway starts");
        let addr = proc.listener(false).expect("http listener");
        Gw {
            _proc: proc,
            _upstream: upstream,
            addr,
            admin,
            _dir: dir,
        }
    }

    /// `GET path` with `token` from `source`, one connection.
    fn get(&self, source: &str, path: &str, token: Option<&str>) -> Reply {
        self.send(source, "GET", path, token)
    }

    /// `method path` with `token` from `source`, one connection.
    fn send(&self, source: &str, method: &str, path: &str, token: Option<&str>) -> Reply {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: api.test\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        Reply(exchange(source, self.addr, req.as_bytes()))
    }

    /// Like [`Gw::get`], without expecting an answer.
    fn send_raw(&self, source: &str, path: &str, token: &str) -> RawReply {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        exchange(source, self.addr, req.as_bytes())
    }

    fn metrics(&self) -> String {
        // The admin endpoint answers only its own address as Host (DNS rebinding).
        let req = format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.admin
        );
        exchange("127.0.0.1", self.admin, req.as_bytes()).text()
    }
}

/// Connects from `source` (a loopback address) to `to`, sends `request`, reads to the end.
fn exchange(source: &str, to: SocketAddr, request: &[u8]) -> RawReply {
    let ip: IpAddr = source.parse().expect("source address");
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::new(ip, 0).into())
        .expect("bind the source address");
    s.connect_timeout(&to.into(), Duration::from_secs(3))
        .expect("connect");
    let mut s: TcpStream = s.into();
    s.write_all(request).expect("write");
    read_until_closed(&mut s, Duration::from_secs(10))
}

struct Reply(RawReply);

impl Reply {
    fn status(&self) -> u16 {
        self.0
            .status()
            .unwrap_or_else(|| panic!("no status: {:?}", self.0.text()))
    }
    fn header(&self, name: &str) -> Option<String> {
        let text = self.0.text();
        let head = text.split("\r\n\r\n").next()?.to_owned();
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
    fn body(&self) -> String {
        let text = self.0.text();
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    }
}

/// `gateway token mint` with a fixture key.
fn mint(key: &str, alg: &str, iss: &str, claims: &str) -> String {
    cli_ok(&[
        "token",
        "mint",
        "--key",
        &fixture(key),
        "--alg",
        alg,
        "--kid",
        "k1",
        "--iss",
        iss,
        "--aud",
        AUD,
        "--claims",
        claims,
    ])
    .trim()
    .to_owned()
}

fn corp(claims: &str) -> String {
    mint("rsa2048.key", "RS256", CORP, claims)
}

fn partners(claims: &str) -> String {
    mint("ec256.key", "ES256", PARTNERS, claims)
}

fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn issuers_routes_claim_rules_and_rate_limits() {
    let gw = Gw::start("{}");
    let read = r#"{"sub":"alice","scope":"read"}"#;

    // Each issuer's own tokens pass; the echo shows they reached the upstream.
    for t in [corp(read), partners(read)] {
        let r = gw.get("127.0.0.2", "/any/x", Some(&t));
        assert_eq!(r.status(), 200, "{}", r.body());
    }
    // Cross-signed: claiming partners, signed with corp's key (same kid), and the reverse.
    for (key, alg, iss) in [
        ("rsa2048.key", "RS256", PARTNERS),
        ("ec256.key", "ES256", CORP),
    ] {
        let forged = mint(key, alg, iss, read);
        let r = gw.get("127.0.0.2", "/any/x", Some(&forged));
        assert_eq!(r.status(), 401, "{iss} signed with {key}: {}", r.body());
        assert!(
            r.header("www-authenticate")
                .unwrap_or_default()
                .contains("error=\"invalid_token\""),
            "{:?}",
            r.header("www-authenticate")
        );
    }
    // A route limited to corp: corp's token passes, partners' valid token is invalid there.
    assert_eq!(
        gw.get("127.0.0.2", "/corp/x", Some(&corp(read))).status(),
        200
    );
    let r = gw.get("127.0.0.2", "/corp/x", Some(&partners(read)));
    assert_eq!(r.status(), 401);
    assert!(r
        .header("www-authenticate")
        .unwrap_or_default()
        .contains("error=\"invalid_token\""));

    // Claim rules: string equal, array contains, list = any of; missing or different: 403.
    for (claims, want) in [
        (
            r#"{"sub":"a","scope":"read","tenant":"acme","roles":"admin"}"#,
            200,
        ),
        (
            r#"{"sub":"a","scope":"read","tenant":"acme","roles":["dev","ops"]}"#,
            200,
        ),
        (
            r#"{"sub":"a","scope":"read","tenant":["acme","x"],"roles":"ops"}"#,
            200,
        ),
        (r#"{"sub":"a","scope":"read","tenant":"acme"}"#, 403),
        (
            r#"{"sub":"a","scope":"read","tenant":"acme","roles":"administrator"}"#,
            403,
        ),
        (
            r#"{"sub":"a","scope":"read","tenant":"acme","roles":"admin ops"}"#,
            403,
        ),
        (
            r#"{"sub":"a","scope":"read","tenant":"ACME","roles":"admin"}"#,
            403,
        ),
        (
            r#"{"sub":"a","scope":"read","tenant":1,"roles":"admin"}"#,
            403,
        ),
    ] {
        let r = gw.get("127.0.0.2", "/claims/x", Some(&partners(claims)));
        assert_eq!(r.status(), want, "{claims}: {}", r.body());
        if want == 403 {
            let body = r.body();
            assert!(body.contains("\"insufficient_scope\""), "{body}");
            assert!(
                !body.contains("acme") && !body.contains("admin"),
                "names no values: {body}"
            );
            assert!(r
                .header("www-authenticate")
                .unwrap_or_default()
                .contains("error=\"insufficient_scope\""));
        }
    }

    // Per method, on top of `require`: DELETE also needs roles = admin.
    let ops = r#"{"sub":"a","scope":"write","tenant":"acme","roles":"ops"}"#;
    let admin = r#"{"sub":"a","scope":"write","tenant":"acme","roles":["admin"]}"#;
    let r = gw.send("127.0.0.2", "DELETE", "/claims/x", Some(&partners(ops)));
    assert_eq!(r.status(), 403, "{}", r.body());
    let r = gw.send("127.0.0.2", "DELETE", "/claims/x", Some(&partners(admin)));
    assert_eq!(r.status(), 200, "{}", r.body());

    // Per-subject limit (burst 2, then 1/m): alice's third request is 429; bob is served.
    let alice = corp(r#"{"sub":"alice","scope":"read"}"#);
    let alice_again = partners(r#"{"sub":"alice","scope":"read"}"#);
    let bob = corp(r#"{"sub":"bob","scope":"read"}"#);
    assert_eq!(
        gw.get("127.0.0.2", "/limited/x", Some(&alice)).status(),
        200
    );
    assert_eq!(
        gw.get("127.0.0.3", "/limited/x", Some(&alice_again))
            .status(),
        200
    );
    let r = gw.get("127.0.0.4", "/limited/x", Some(&alice));
    assert_eq!(r.status(), 429, "{}", r.body());
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        r.header("ratelimit-policy").as_deref(),
        Some("\"sub\";q=1;w=60")
    );
    assert_eq!(
        r.header("ratelimit"),
        Some(format!("\"sub\";r=0;t={retry}"))
    );
    assert_eq!(gw.get("127.0.0.2", "/limited/x", Some(&bob)).status(), 200);
    // A forged `sub` does not reach the limiter: an invalid token is 401, not counted.
    let forged_bob = mint(
        "ec256.key",
        "ES256",
        CORP,
        r#"{"sub":"bob","scope":"read"}"#,
    );
    assert_eq!(
        gw.get("127.0.0.2", "/limited/x", Some(&forged_bob))
            .status(),
        401
    );
    assert_eq!(gw.get("127.0.0.2", "/limited/x", Some(&bob)).status(), 200);
    assert_eq!(gw.get("127.0.0.2", "/limited/x", Some(&bob)).status(), 429);

    let m = gw.metrics();
    for (series, want) in [
        ("gateway_denials_total{reason=\"issuer_not_accepted\"}", 1),
        ("gateway_denials_total{reason=\"claim_rule\"}", 6),
        ("gateway_denials_total{reason=\"rate_limited\"}", 2),
        (
            "gateway_requests_total{route=\"limited\",status=\"429\"}",
            2,
        ),
    ] {
        assert_eq!(metric(&m, series), Some(want), "{series}\n{m}");
    }
    assert!(
        metric(
            &m,
            "gateway_issuer_tokens_total{issuer=\"corp\",result=\"verified\"}"
        )
        .is_some_and(|n| n >= 5),
        "{m}"
    );
    assert!(
        metric(
            &m,
            "gateway_issuer_tokens_total{issuer=\"partners\",result=\"rejected\"}"
        )
        .is_some_and(|n| n >= 1),
        "{m}"
    );
    assert_eq!(
        metric(&m, "gateway_issuer_keys{issuer=\"partners\"}"),
        Some(1),
        "{m}"
    );
}

#[test]
fn the_verification_budget_holds_a_flood_to_its_source() {
    let gw = Gw::start(r#"{ rate = "2/s", burst = 10 }"#);
    // A partners token whose signature belongs to another payload: a signature check each
    // time (refused tokens are never cached).
    let bad = {
        let good = partners(r#"{"sub":"x","scope":"read"}"#);
        let mut parts: Vec<&str> = good.split('.').collect();
        let stranger = mint(
            "ec256.key",
            "ES256",
            PARTNERS,
            r#"{"sub":"y","scope":"read"}"#,
        );
        let sig = stranger.rsplit('.').next().expect("signature").to_owned();
        parts[2] = &sig;
        parts.join(".")
    };
    let started = Instant::now();
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..60 {
        *statuses
            .entry(gw.get("127.0.0.2", "/any/x", Some(&bad)).status())
            .or_insert(0u32) += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let checked = statuses.get(&401).copied().unwrap_or(0);
    let most = 10 + (elapsed * 2.0).ceil() as u32;
    assert!(
        (10..=most).contains(&checked),
        "{checked} signature checks in {elapsed:.1}s: {statuses:?}"
    );
    assert_eq!(
        statuses.get(&429).copied().unwrap_or(0),
        60 - checked,
        "{statuses:?}"
    );
    // The refusal says when to come back.
    let r = gw.get("127.0.0.2", "/any/x", Some(&bad));
    assert_eq!(r.status(), 429);
    assert!(r.header("retry-after").is_some());
    // Meanwhile another source verifies fresh tokens normally.
    for i in 0..8 {
        let fresh = corp(&format!(r#"{{"sub":"u{i}","scope":"read"}}"#));
        let r = gw.get("127.0.0.3", "/any/x", Some(&fresh));
        assert_eq!(r.status(), 200, "{i}: {}", r.body());
    }
    let m = gw.metrics();
    assert!(
        metric(&m, "gateway_denials_total{reason=\"verify_budget\"}").is_some_and(|n| n >= 40),
        "{m}"
    );
}

/// One client at its own pace must not get the address it shares banned: a per-subject
/// limit's 429s are not client errors for the abuse engine, while real client errors (404s)
/// from the same address still ban it (the gateway then drops its connections at accept).
#[test]
fn limit_429s_do_not_get_a_shared_address_banned() {
    let gw = Gw::start_with(
        "{}",
        "[abuse]\nclient_errors = { limit = 3, window = \"60s\", ban = \"5m\" }\n",
    );
    let shared = "127.0.0.5";
    let alice = corp(r#"{"sub":"alice","scope":"read"}"#);
    let bob = corp(r#"{"sub":"bob","scope":"read"}"#);
    let statuses: Vec<u16> = (0..12)
        .map(|_| gw.get(shared, "/limited/x", Some(&alice)).status())
        .collect();
    assert_eq!(statuses[..2], [200, 200], "{statuses:?}");
    assert!(statuses[2..].iter().all(|s| *s == 429), "{statuses:?}");
    // Ten 429s from the address, over a limit of 3 client errors: bob is still served.
    let r = gw.get(shared, "/limited/x", Some(&bob));
    assert_eq!(r.status(), 200, "{}", r.body());
    let bans = "gateway_abuse_bans_total{signal=\"client_errors\"}";
    assert_eq!(metric(&gw.metrics(), bans), Some(0));

    // Real client errors still count: the fourth 404 bans the address.
    for _ in 0..4 {
        assert_eq!(gw.get(shared, "/nowhere", None).status(), 404);
    }
    assert_eq!(metric(&gw.metrics(), bans), Some(1));
    let dropped = gw.send_raw(shared, "/limited/x", &bob);
    assert_eq!(
        dropped.status(),
        None,
        "a banned source is dropped: {:?}",
        dropped.text()
    );
}
