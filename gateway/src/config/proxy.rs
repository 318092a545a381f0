//! `[runtime]`, `[listen]`, `[tls]`, `[[upstream]]` and `[[route]]`: the proxy's sections.

use super::DurationSecs;
use super::Issue;
use crate::ebpf::Target;
use ipnet::IpNet;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

fn secs(s: u64) -> DurationSecs {
    DurationSecs(Duration::from_secs(s))
}

/// `[runtime]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Proxy worker threads, each a single-threaded runtime with its own listener sockets
    /// (SO_REUSEPORT) and upstream connections; 0 = one per CPU.
    pub worker_threads: usize,
}

/// `[listen]`: where clients connect, and the limits every connection lives under.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// TLS listeners (need `[tls]`).
    #[serde(deserialize_with = "super::addr::list")]
    pub https: Vec<SocketAddr>,
    /// Plain-HTTP listeners, for use behind another TLS terminator.
    #[serde(deserialize_with = "super::addr::list")]
    pub http: Vec<SocketAddr>,
    /// Open connections one source address may hold; more are closed at accept.
    pub max_connections_per_source: usize,
    /// Open connections in total; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Time for a TLS handshake.
    pub tls_handshake_timeout: DurationSecs,
    /// Time to receive a request's headers (slowloris), also the idle limit: how long a
    /// connection may go with no request in progress (see `proxy::idle`).
    pub header_read_timeout: DurationSecs,
    /// Largest request head (request line and headers) in bytes.
    pub max_header_bytes: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: u64,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    pub shutdown_grace: DurationSecs,
    /// Every connection starts with a PROXY protocol header (v1 or v2) from one of
    /// `trusted_proxies`, which names the real client.
    pub proxy_protocol: bool,
    /// Addresses or prefixes of the proxies in front of the gateway: only they may send a
    /// PROXY header, and their `X-Forwarded-For` is believed on plain-HTTP listeners.
    pub trusted_proxies: Vec<String>,
    /// How long a request body may stop arriving while the upstream waits for it: 408.
    pub body_timeout: DurationSecs,
    /// How long a connection's writes may stay blocked (the client reads nothing of its
    /// response) before the connection is closed.
    pub send_timeout: DurationSecs,
    /// Requests in progress in total (all connections, all workers); more get 503 with
    /// `Retry-After`.
    pub max_requests_in_flight: usize,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            https: Vec::new(),
            http: Vec::new(),
            max_connections_per_source: 256,
            max_connections: 10_000,
            tls_handshake_timeout: secs(10),
            header_read_timeout: secs(10),
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_body_bytes: 10 * 1024 * 1024,
            max_concurrent_streams: 128,
            shutdown_grace: secs(10),
            proxy_protocol: false,
            trusted_proxies: Vec::new(),
            body_timeout: secs(10),
            send_timeout: secs(30),
            max_requests_in_flight: 16_384,
        }
    }
}

impl ListenConfig {
    pub fn validate(&self) -> Result<(), Issue> {
        let addrs: Vec<(&'static str, SocketAddr)> = (self.https.iter().map(|a| ("https", *a)))
            .chain(self.http.iter().map(|a| ("http", *a)))
            .collect();
        for (i, &(key, addr)) in addrs.iter().enumerate() {
            if addr.port() != 0 && addrs[..i].iter().any(|&(_, a)| a == addr) {
                return Err(Issue::new(
                    key,
                    format!("{addr} is listed twice (each address is one listener)"),
                ));
            }
        }
        if self.max_connections_per_source == 0 {
            return Err(Issue::new(
                "max_connections_per_source",
                "must be at least 1",
            ));
        }
        if self.max_connections == 0 {
            return Err(Issue::new("max_connections", "must be at least 1"));
        }
        if self.max_header_bytes < 1024 {
            return Err(Issue::new("max_header_bytes", "must be at least 1024"));
        }
        if self.max_headers == 0 {
            return Err(Issue::new("max_headers", "must be at least 1"));
        }
        if self.max_concurrent_streams == 0 {
            return Err(Issue::new("max_concurrent_streams", "must be at least 1"));
        }
        if self.max_requests_in_flight == 0 {
            return Err(Issue::new("max_requests_in_flight", "must be at least 1"));
        }
        let trusted = self.trusted_proxy_nets()?;
        if self.proxy_protocol && trusted.is_empty() {
            return Err(Issue::new(
                "proxy_protocol",
                "needs trusted_proxies: the addresses allowed to send a PROXY header",
            ));
        }
        for (key, d) in [
            ("tls_handshake_timeout", self.tls_handshake_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("body_timeout", self.body_timeout),
            ("send_timeout", self.send_timeout),
        ] {
            if d.0.is_zero() {
                return Err(Issue::new(key, "must be longer than zero"));
            }
        }
        Ok(())
    }
}

impl ListenConfig {
    /// `trusted_proxies` as prefixes (an address is its /32 or /128). A prefix covering a
    /// whole address family is refused: it would let anyone name any client.
    pub fn trusted_proxy_nets(&self) -> Result<Vec<IpNet>, Issue> {
        let key = "trusted_proxies";
        self.trusted_proxies
            .iter()
            .map(|s| match s.parse::<Target>() {
                Err(e) => Err(Issue::new(key, format!("`{s}`: {e}"))),
                Ok(Target::Addr(a)) => Ok(IpNet::from(a)),
                Ok(Target::Net(n)) if n.prefix_len() == 0 => Err(Issue::new(
                    key,
                    format!("`{s}` trusts every address: anyone could name any client"),
                )),
                Ok(Target::Net(n)) => Ok(n),
            })
            .collect()
    }
}

/// `[tls]`: certificates chosen by SNI.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The first one is the default for clients that send no (or an unknown) server name.
    pub certificates: Vec<CertConfig>,
    /// Stateless session resumption (TLS 1.3 tickets, TLS 1.2 tickets).
    #[serde(default = "yes")]
    pub session_tickets: bool,
}

fn yes() -> bool {
    true
}

/// One certificate chain and its key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// SNI names this certificate serves; empty = the names in the certificate are not
    /// consulted, it serves as default only.
    #[serde(default)]
    pub server_names: Vec<String>,
}

impl TlsConfig {
    pub fn validate(&self) -> Result<(), Issue> {
        if self.certificates.is_empty() {
            return Err(Issue::new(
                "certificates",
                "at least one certificate is needed",
            ));
        }
        Ok(())
    }
}

/// `[[upstream]]`: a named pool of servers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    /// `ip:port` of each server (plain HTTP/1.1 with keep-alive); names are refused.
    #[serde(deserialize_with = "super::addr::list")]
    pub servers: Vec<SocketAddr>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: DurationSecs,
    /// Until the upstream's response headers arrive.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: DurationSecs,
    /// Idle keep-alive connections kept per server (per worker).
    #[serde(default = "default_max_idle")]
    pub max_idle_per_server: usize,
    /// Requests in progress per server (all workers): each holds one upstream connection.
    /// A request over it waits up to `connect_timeout` for one to finish, then gets 503 with
    /// `Retry-After`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Consecutive connection failures that take a server out of rotation (passive check).
    #[serde(default = "default_max_fails")]
    pub max_fails: u32,
    /// How long a failed server stays out before it is tried again.
    #[serde(default = "default_fail_timeout")]
    pub fail_timeout: DurationSecs,
    /// Active health check; absent = passive checks only.
    pub health_check: Option<HealthCheckConfig>,
}

fn default_connect_timeout() -> DurationSecs {
    secs(3)
}
fn default_request_timeout() -> DurationSecs {
    secs(30)
}
fn default_max_idle() -> usize {
    64
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_fails() -> u32 {
    3
}
fn default_fail_timeout() -> DurationSecs {
    secs(10)
}

/// Periodic `GET path`; a 2xx or 3xx answer within the timeout is healthy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub path: String,
    #[serde(default = "default_hc_interval")]
    pub interval: DurationSecs,
    #[serde(default = "default_hc_timeout")]
    pub timeout: DurationSecs,
}

fn default_hc_interval() -> DurationSecs {
    secs(5)
}
fn default_hc_timeout() -> DurationSecs {
    secs(2)
}

impl UpstreamConfig {
    pub fn validate(&self) -> Result<(), Issue> {
        if self.name.is_empty() {
            return Err(Issue::new("name", "must not be empty"));
        }
        if self.servers.is_empty() {
            return Err(Issue::new(
                "servers",
                format!("upstream `{}` has no servers", self.name),
            ));
        }
        if self.max_fails == 0 {
            return Err(Issue::new("max_fails", "must be at least 1"));
        }
        if self.max_connections == 0 {
            return Err(Issue::new("max_connections", "must be at least 1"));
        }
        if let Some(hc) = &self.health_check {
            if !hc.path.starts_with('/') {
                return Err(Issue::new("health_check", "path must start with `/`"));
            }
        }
        Ok(())
    }
}

/// Whether a route needs a token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// A valid token with the method's scopes, or 401/403.
    #[default]
    Required,
    /// Without a token the request passes anonymously; a token that is present must be valid
    /// (and its claims are forwarded).
    Optional,
    /// No token checks; forwarded claim headers are still stripped.
    None,
}

/// What a route does with a percent-encoded `/` or `\` (`%2F`, `%5C`) in the path, and with
/// a dot-segment carrying `;` parameters (`..;`, `.;`). Upstreams disagree on them (some
/// decode `%2F` into a separator, Tomcat reads `..;` as `..`), so a path the gateway routed
/// one way could be served as another (Envoy's `path_with_escaped_slashes_action`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodedSlashes {
    /// 400.
    #[default]
    Reject,
    /// Forwarded as they are, for upstreams that never decode them.
    Keep,
    /// `%2F` and `%5C` decoded to `/` before normalisation, and the route chosen again on the
    /// result; dot-segments with parameters are still 400.
    Decode,
}

/// `[[route]]`: which requests go where, under which policy.
///
/// Adding a route option: a field here (doc comment, serde default), a check in
/// [`RouteConfig::validate`] if some values are wrong, and the proxy reads it as
/// `route.config.<field>` (the compiled route keeps the route as written). Only an option
/// that must be parsed or resolved before use also gets a field in
/// [`super::plan::RoutePlan`], built in `plan::compile_route` (and carried over in
/// `RoutePlan::with_auth`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name used in metrics; defaults to the path prefix.
    pub name: Option<String>,
    /// Host (without port, case-insensitive); absent = any host.
    pub host: Option<String>,
    /// Path prefix, matched case-sensitively against the normalised path.
    pub path_prefix: String,
    /// Methods this route serves; absent = all.
    pub methods: Option<Vec<String>>,
    /// Name of an `[[upstream]]`.
    pub upstream: String,
    #[serde(default)]
    pub auth: AuthMode,
    /// Scopes each method needs, e.g. `{ GET = ["read"], POST = ["write"] }`. Absent: GET and
    /// HEAD need `read`; POST, PUT, PATCH and DELETE need `write`. A method not listed needs
    /// every scope listed for any method (the strictest).
    pub scopes: Option<BTreeMap<String, Vec<String>>>,
    /// Claims forwarded as request headers, e.g. `{ sub = "X-Auth-Sub" }`. Client-sent copies
    /// of these headers are always removed.
    #[serde(default)]
    pub claim_headers: BTreeMap<String, String>,
    /// Forward the client's `Authorization` header upstream.
    #[serde(default = "yes")]
    pub forward_authorization: bool,
    /// Accept a token in the `access_token` query parameter (RFC 6750 §2.3) when no header
    /// carries one. Off by default: query strings end up in logs.
    #[serde(default)]
    pub query_token: bool,
    /// Issuers (`[[jwt.issuer]]` names, `default` for the unnamed one) whose tokens this
    /// route accepts; absent = every issuer.
    pub issuers: Option<Vec<String>>,
    /// Claim rules, e.g. `{ tenant = "acme", roles = ["admin", "ops"] }` (see
    /// [`crate::policy::claims`]).
    #[serde(default)]
    pub require: BTreeMap<String, crate::policy::ClaimValues>,
    /// Further claim rules for some methods, e.g. `{ DELETE = { roles = "admin" } }`, on top
    /// of `require`.
    #[serde(default)]
    pub require_methods: BTreeMap<String, BTreeMap<String, crate::policy::ClaimValues>>,
    /// Token bucket per subject, claim or source.
    pub rate_limit: Option<crate::policy::RateLimitConfig>,
    /// Percent-encoded separators and dot-segments with parameters in the path.
    #[serde(default)]
    pub encoded_slashes: EncodedSlashes,
    /// On routes with token checks, remove the method- and URL-override headers
    /// (`X-HTTP-Method-Override`, `X-Original-URL`, ...) that would let an upstream serve
    /// another method or path than the one the scopes were checked for.
    #[serde(default = "yes")]
    pub strip_override_headers: bool,
}

impl RouteConfig {
    /// Checks on the route's own values as written. Methods, scopes, claim headers and the
    /// upstream are checked where they are parsed and resolved, in [`super::plan`].
    pub fn validate(&self) -> Result<(), Issue> {
        crate::policy::RouteAccess::validate(self)?;
        if !self.path_prefix.starts_with('/') {
            return Err(Issue::new("path_prefix", "must start with `/`"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod listen_tests {
    use super::*;

    fn listen(text: &str) -> ListenConfig {
        toml::from_str(text).expect("parses")
    }

    #[test]
    fn trusted_proxies_take_addresses_and_prefixes() {
        let l = listen("trusted_proxies = [\"10.0.0.1\", \"192.0.2.0/24\", \"2001:db8::/48\"]");
        let nets = l.trusted_proxy_nets().expect("valid");
        let shown: Vec<String> = nets.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.1/32", "192.0.2.0/24", "2001:db8::/48"]);
        assert!(l.validate().is_ok());
    }

    #[test]
    fn bad_or_all_covering_trusted_proxies_are_refused() {
        for bad in ["x", "10.0.0.0/33", "10.0.0.1/8", "0.0.0.0/0", "::/0"] {
            let l = listen(&format!("trusted_proxies = [\"{bad}\"]"));
            assert_eq!(l.validate().expect_err(bad).key, "trusted_proxies");
        }
    }

    #[test]
    fn proxy_protocol_needs_trusted_proxies() {
        let l = listen("proxy_protocol = true");
        assert_eq!(l.validate().expect_err("no list").key, "proxy_protocol");
        let l = listen("proxy_protocol = true\ntrusted_proxies = [\"10.0.0.1\"]");
        assert!(l.validate().is_ok());
    }
}
