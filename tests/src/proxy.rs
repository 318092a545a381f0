//! One running proxy gateway for the end-to-end tests, with everything it needs: a config
//! written by the test (listeners on 127.0.0.1 port 0, read back from the log), an echo
//! upstream, real RS256 keys (openssl) and tokens (`gateway token mint`), a test CA and its
//! server certificate, and HTTPS and cleartext clients. Plus the assertions those tests share.

use crate::client::{Client, Reply};
use crate::gateway::{cli_ok, GatewayProcess};
use crate::tls::{ServerCert, TestCa};
use crate::upstream::EchoUpstream;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tempfile::TempDir;

pub const ISS: &str = "https://issuer.test/";
pub const AUD: &str = "https://api.test";

/// RS256 key pairs in PEM: the trusted issuer key and an untrusted one. Generated once per
/// test binary with the openssl CLI (in a temp dir that is removed at once).
struct RsaKeys {
    private: String,
    public: String,
    wrong_private: String,
}

fn rsa_keys() -> &'static RsaKeys {
    static KEYS: OnceLock<RsaKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = TempDir::new().expect("temp dir");
        let gen = |name: &str| -> String {
            let path = dir.path().join(name);
            let out = std::process::Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                ])
                .arg("-out")
                .arg(&path)
                .output()
                .expect("run openssl (apt install openssl)");
            assert!(out.status.success(), "openssl genpkey: {out:?}");
            std::fs::read_to_string(&path).expect("read key")
        };
        let private = gen("issuer.pem");
        let wrong_private = gen("wrong.pem");
        let out = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(dir.path().join("issuer.pem"))
            .output()
            .expect("run openssl");
        assert!(out.status.success(), "openssl pkey: {out:?}");
        RsaKeys {
            private,
            public: String::from_utf8(out.stdout).expect("PEM"),
            wrong_private,
        }
    })
}

/// Knobs of one gateway's config.
#[derive(Default)]
pub struct Setup {
    /// Extra lines for `[listen]`.
    pub listen: &'static str,
    /// Extra lines for the `[[upstream]]`.
    pub upstream: &'static str,
    /// The upstream server instead of the echo upstream.
    pub upstream_addr: Option<SocketAddr>,
    /// A second server in the upstream pool, after the first.
    pub second_server: Option<SocketAddr>,
    /// An access log in `access.log` of the test's dir, with these extra `[log]` lines
    /// (without: the default, stdout, which the harness discards).
    pub access_log: Option<&'static str>,
}

/// One running gateway with everything it needs. Fields drop in order: the gateway first
/// (SIGTERM, then SIGKILL), then the upstream, then the temp dir.
pub struct Gw {
    pub proc: GatewayProcess,
    pub upstream: EchoUpstream,
    pub ca: TestCa,
    pub cert: ServerCert,
    pub https: Client,
    pub http: Client,
    pub dir: TempDir,
}

impl Gw {
    pub fn start(setup: Setup) -> Gw {
        let dir = TempDir::new().expect("temp dir");
        let keys = rsa_keys();
        let p = |name: &str| dir.path().join(name);
        std::fs::write(p("issuer.pem"), &keys.private).expect("write key");
        std::fs::write(p("issuer.pub.pem"), &keys.public).expect("write key");
        std::fs::write(p("wrong.pem"), &keys.wrong_private).expect("write key");
        let ca = TestCa::new().expect("test CA");
        let cert = ca.issue("gateway-test-a", 1).expect("server cert");
        cert.write(&p("tls.crt"), &p("tls.key"))
            .expect("write cert");
        let upstream = EchoUpstream::start().expect("echo upstream");
        let upstream_addr = setup.upstream_addr.unwrap_or(upstream.addr());
        let config = format!(
            r#"
[runtime]
worker_threads = 2

[listen]
https = ["127.0.0.1:0"]
http = ["127.0.0.1:0"]
{listen}

[tls]
[[tls.certificates]]
cert = "{dir}/tls.crt"
key = "{dir}/tls.key"

[jwt]
issuers = ["{ISS}"]
audiences = ["{AUD}"]
algorithms = ["RS256"]

[[jwt.keys]]
pem = "{dir}/issuer.pub.pem"
alg = "RS256"

[[upstream]]
name = "app"
servers = ["{upstream_addr}"{second}]
{upstream_extra}

[[route]]
name = "open"
path_prefix = "/open/"
upstream = "app"
auth = "none"

[[route]]
name = "maybe"
path_prefix = "/maybe/"
upstream = "app"
auth = "optional"
claim_headers = {{ sub = "X-Auth-Sub" }}

[[route]]
name = "api"
path_prefix = "/api/"
upstream = "app"
auth = "required"
claim_headers = {{ sub = "X-Auth-Sub", scope = "X-Auth-Scope" }}
{log}
"#,
            log = setup
                .access_log
                .map(|extra| format!(
                    "\n[log]\naccess = \"{}/access.log\"\n{extra}\n",
                    dir.path().display()
                ))
                .unwrap_or_default(),
            listen = setup.listen,
            upstream_extra = setup.upstream,
            second = setup
                .second_server
                .map(|a| format!(", \"{a}\""))
                .unwrap_or_default(),
            dir = dir.path().display(),
        );
        std::fs::write(p("gateway.toml"), config).expect("write config");
        let proc = GatewayProcess::start_proxy(&p("gateway.toml"), &p("gateway.log"), 2, &[])
            .expect("gateway starts");
        let https = Client::tls(
            proc.listener(true).expect("https listener"),
            ca.client_config(&[b"http/1.1"]).expect("client config"),
            ca.client_config(&[b"h2"]).expect("client config"),
        );
        let http = Client::plain(proc.listener(false).expect("http listener"));
        Gw {
            proc,
            upstream,
            ca,
            cert,
            https,
            http,
            dir,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The lines of access log file `name` once there are at least `n` (waits up to 10 s),
    /// each parsed as JSON.
    pub fn access_lines(&self, name: &str, n: usize) -> Vec<serde_json::Value> {
        let path = self.path(name);
        let read = || -> Vec<serde_json::Value> {
            std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .map(|l| {
                    serde_json::from_str(l)
                        .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {l}"))
                })
                .collect()
        };
        wait_until(
            &format!("{n} lines in {name}"),
            Duration::from_secs(10),
            || read().len() >= n,
        );
        read()
    }

    /// `gateway token mint` with the trusted key (or `key` = "wrong.pem"), issuer and
    /// audience, the given claims and extra arguments.
    pub fn mint_with(&self, key: &str, claims: &str, extra: &[&str]) -> String {
        let key = self.path(key).display().to_string();
        let mut args = vec![
            "token", "mint", "--key", &key, "--alg", "RS256", "--iss", ISS, "--aud", AUD,
            "--claims", claims,
        ];
        args.extend_from_slice(extra);
        cli_ok(&args).trim().to_string()
    }

    pub fn mint(&self, claims: &str) -> String {
        self.mint_with("issuer.pem", claims, &[])
    }

    pub fn tokens(&self) -> Tokens {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let two_hours_ago = (now - 7200).to_string();
        Tokens {
            rw: self.mint(r#"{"sub":"alice","scope":"read write"}"#),
            read: self.mint(r#"{"sub":"bob","scope":"read"}"#),
            write: self.mint(r#"{"sub":"carol","scope":"write"}"#),
            expired: self.mint_with(
                "issuer.pem",
                r#"{"sub":"alice","scope":"read write"}"#,
                &["--now", &two_hours_ago, "--ttl", "1h"],
            ),
            wrong_key: self.mint_with("wrong.pem", r#"{"sub":"alice","scope":"read write"}"#, &[]),
            wrong_aud: self
                .mint(r#"{"sub":"alice","scope":"read write","aud":"https://other.test"}"#),
        }
    }

    pub fn client(&self, tls: bool) -> &Client {
        if tls {
            &self.https
        } else {
            &self.http
        }
    }
}

/// Tokens from the trusted issuer key unless named otherwise: `rw` (alice, `read write`),
/// `read` (bob), `write` (carol), one expired two hours ago, one signed by the untrusted key and
/// one for another audience.
pub struct Tokens {
    pub rw: String,
    pub read: String,
    pub write: String,
    pub expired: String,
    pub wrong_key: String,
    pub wrong_aud: String,
}

/// A multi-threaded tokio runtime for a test's async part.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The upstream's echo of what it received.
pub fn echoed(reply: &Reply) -> serde_json::Value {
    assert_eq!(
        reply.status, 200,
        "expected the upstream's echo, got {reply:?}"
    );
    let json = reply.json();
    assert!(json["headers"].is_object(), "not the echo: {json}");
    json
}

/// The values of `name` the upstream received, as the echo reports them.
pub fn echoed_header(json: &serde_json::Value, name: &str) -> Vec<String> {
    json["headers"][name]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().expect("string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts a refusal made by the gateway: status, `WWW-Authenticate`, small JSON body.
pub fn assert_refusal(what: &str, reply: &Reply, status: u16, error: &str) {
    assert_eq!(reply.status, status, "{what}: {reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{what}: {reply:?}"
    );
    let body = reply.json();
    assert_eq!(body["error"], error, "{what}: body {body}");
    assert!(reply.body.len() < 512, "{what}: body too large: {body}");
}

/// The `WWW-Authenticate` header of a refusal, which must be there.
pub fn challenge(reply: &Reply) -> &str {
    reply
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("no WWW-Authenticate in {reply:?}"))
}

/// `took`: how long a connection took to close with a 1 s limit (`None`: still open after
/// the 6 s the tests wait).
pub fn closed_after_one_second(what: &str, took: Option<Duration>) {
    let took = took.unwrap_or_else(|| panic!("{what}: still open after 6 s"));
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "{what}: closed after {took:?}, the limit is 1 s"
    );
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
