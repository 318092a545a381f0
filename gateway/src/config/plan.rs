//! The compiled configuration: what `gateway run` starts from.
//!
//! [`Config`] is the file as written; a [`Plan`] is what it means once every cross-reference
//! is resolved: routes hold their upstream as an [`UpstreamId`] and their methods, scopes and
//! claim headers parsed, and a route that checks tokens holds the `[jwt]` policy it checks
//! them with, so a verifier is built exactly when some route needs one. Nothing in a plan is
//! looked up by name or parsed again later. A plan is immutable and self-contained (`Send +
//! Sync`, no handles to running things), so a reload can build a new one beside the running
//! one and swap an `Arc<Plan>`. The one state it holds is each route's rate-limit buckets
//! ([`RoutePlan::access`]): they start empty with every plan, so a reload resets the limits.

use super::{
    AbuseConfig, AdminConfig, AuthMode, Config, EbpfConfig, Issue, ListenConfig, RouteConfig,
    RuntimeConfig, TlsConfig, UpstreamConfig,
};
use crate::jwt::VerifierConfig;
use crate::policy::{ClaimHeaders, RouteAccess, ScopePolicy};
use http::{HeaderName, Method};
use std::sync::Arc;

/// An `[[upstream]]` of one plan: its position in [`Plan::upstreams`]. Only compiling a plan
/// makes one, so it always names an upstream of that plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpstreamId(usize);

impl UpstreamId {
    /// The position in [`Plan::upstreams`] (and in anything built from it in that order).
    pub fn index(self) -> usize {
        self.0
    }
}

/// How a route treats bearer tokens. A route that checks them carries the `[jwt]` policy
/// (one `Arc` shared by every such route), so no route can need a verifier the plan lacks.
#[derive(Debug, Clone)]
pub enum RouteAuth {
    /// No token checks; forwarded claim headers are still stripped.
    None,
    /// A valid token with the method's scopes, or 401/403.
    Required(Arc<VerifierConfig>),
    /// Without a token the request passes anonymously; a token that is present must be valid.
    Optional(Arc<VerifierConfig>),
}

impl RouteAuth {
    /// The policy tokens are checked with; `None` when the route checks none.
    pub fn jwt(&self) -> Option<&Arc<VerifierConfig>> {
        match self {
            RouteAuth::None => None,
            RouteAuth::Required(j) | RouteAuth::Optional(j) => Some(j),
        }
    }
}

/// One compiled `[[route]]`. What needs parsing or resolving is here in its parsed form;
/// every other option is read from [`RoutePlan::config`] as written (see [`RouteConfig`]).
/// `A` is how tokens are checked: the policy in a plan, the running verifier in the proxy's
/// routes ([`RoutePlan::with_auth`]).
#[derive(Debug, Clone)]
pub struct RoutePlan<A = RouteAuth> {
    /// Name used in metrics: `name`, else the path prefix.
    pub name: String,
    /// Lower-case host without a trailing dot; `None` = any host.
    pub host: Option<String>,
    /// Methods served; `None` = all.
    pub methods: Option<Vec<Method>>,
    pub upstream: UpstreamId,
    pub auth: A,
    pub scopes: ScopePolicy,
    pub claim_headers: ClaimHeaders,
    /// Issuers accepted, claim rules (`require`, `require_methods`) and the rate limit with
    /// its buckets. Shared by every copy of the route; a new plan starts with empty buckets.
    pub access: Arc<RouteAccess>,
    /// The route as written.
    pub config: RouteConfig,
}

impl<A> RoutePlan<A> {
    /// The same route checking tokens with `auth`.
    pub fn with_auth<B>(&self, auth: B) -> RoutePlan<B> {
        RoutePlan {
            name: self.name.clone(),
            host: self.host.clone(),
            methods: self.methods.clone(),
            upstream: self.upstream,
            auth,
            scopes: self.scopes.clone(),
            claim_headers: self.claim_headers.clone(),
            access: Arc::clone(&self.access),
            config: self.config.clone(),
        }
    }
}

/// A validated configuration with its references resolved. Built by [`Config::load`] and
/// [`Config::parse`] only.
#[derive(Debug, Clone)]
pub struct Plan {
    pub runtime: RuntimeConfig,
    /// Client-facing listeners and connection limits. Absent: no proxy.
    pub listen: Option<ListenConfig>,
    pub tls: Option<TlsConfig>,
    upstreams: Vec<UpstreamConfig>,
    routes: Vec<RoutePlan>,
    /// The kernel data plane. Absent: no data plane.
    pub ebpf: Option<EbpfConfig>,
    /// Metrics and health on loopback. Absent: no admin endpoint.
    pub admin: Option<AdminConfig>,
    /// Bans for abusive sources. Absent: no automatic bans.
    pub abuse: Option<AbuseConfig>,
    /// Bans and abuse counts shared with other nodes through Redis. Absent: this node alone.
    pub fleet: Option<super::FleetConfig>,
    /// `[log]` (defaults when absent).
    pub log: super::LogConfig,
    /// What is allowed but has no effect or is probably not meant, one `file:line: key:
    /// message` line each; the caller decides how to tell.
    pub(super) warnings: Vec<String>,
}

impl Plan {
    /// The `[[upstream]]` sections in file order; [`UpstreamId::index`] indexes this.
    pub fn upstreams(&self) -> &[UpstreamConfig] {
        &self.upstreams
    }

    /// The routes in file order (the first match wins).
    pub fn routes(&self) -> &[RoutePlan] {
        &self.routes
    }

    /// The token policy: present exactly when some route checks tokens.
    pub fn jwt(&self) -> Option<&Arc<VerifierConfig>> {
        self.routes.iter().find_map(|r| r.auth.jwt())
    }

    /// Whether the config runs a proxy (listeners and routes).
    pub fn has_proxy(&self) -> bool {
        self.listen.is_some()
    }

    /// Whether an `[ebpf]` section asks for a data plane (a mode other than `off`).
    pub fn has_data_plane(&self) -> bool {
        self.ebpf
            .as_ref()
            .is_some_and(|e| e.mode != super::DataPlaneMode::Off)
    }

    /// What is allowed but has no effect or is probably not meant, e.g. a `[jwt]` section no
    /// route uses, or a route accepting an issuer that checks neither `iss` nor an audience;
    /// one `file:line: key: message` line each.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// Where an issue was found: a section, and for `[[array]]` sections which one (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Section {
    pub name: &'static str,
    pub index: Option<usize>,
}

impl Section {
    fn one(name: &'static str) -> Self {
        Section { name, index: None }
    }
    pub(super) fn nth(name: &'static str, i: usize) -> Self {
        Section {
            name,
            index: Some(i),
        }
    }
}

/// Everything wrong with a config, in file order of sections (the first problem of each
/// section or array entry).
pub(super) type Issues = Vec<(Section, Issue)>;

/// Checks each section, then how the sections refer to each other, and builds the plan when
/// nothing is wrong; with the plan, what is allowed but has no effect or is probably not
/// meant.
pub(super) fn compile(config: Config) -> Result<(Plan, Issues), Issues> {
    let mut found = Vec::new();
    let mut check = |at: Section, r: Result<(), Issue>| {
        if let Err(i) = r {
            found.push((at, i));
        }
    };
    if let Some(ebpf) = &config.ebpf {
        check(Section::one("ebpf"), ebpf.validate());
    }
    if let Some(admin) = &config.admin {
        check(Section::one("admin"), admin.validate());
    }
    if let Some(abuse) = &config.abuse {
        let fleet = match abuse.has_fleet_limits() && config.fleet.is_none() {
            true => Err(Issue::new(
                match abuse.auth_failures.is_some_and(|r| r.fleet_limit.is_some()) {
                    true => "auth_failures",
                    false => "client_errors",
                },
                "fleet_limit needs a [fleet] section",
            )),
            false => Ok(()),
        };
        check(Section::one("abuse"), abuse.validate().and(fleet));
    }
    if let Some(fleet) = &config.fleet {
        check(Section::one("fleet"), fleet.validate());
    }
    check(Section::one("log"), config.log.validate());
    if let Some(tls) = &config.tls {
        check(Section::one("tls"), tls.validate());
    }
    if let Some(jwt) = &config.jwt {
        let checks_tokens = config.route.iter().any(|r| r.auth != AuthMode::None);
        match jwt.validate() {
            // A problem inside a `[[jwt.issuer]]` names that entry.
            Err(e) => check(
                e.issuer_index()
                    .map_or(Section::one("jwt"), |i| Section::nth("jwt.issuer", i)),
                Err(Issue::new(e.key(), e.message())),
            ),
            Ok(()) if checks_tokens && jwt.keys.is_empty() && jwt.issuer.is_empty() => check(
                Section::one("jwt"),
                Err(Issue::new(
                    "keys",
                    "routes check tokens but no [[jwt.keys]] source or [[jwt.issuer]] is given: every token would be refused",
                )),
            ),
            Ok(()) => {}
        }
    }
    for (i, u) in config.upstream.iter().enumerate() {
        let twice = config.upstream[..i].iter().any(|o| o.name == u.name);
        check(
            Section::nth("upstream", i),
            u.validate().and_then(|()| match twice {
                true => Err(Issue::new(
                    "name",
                    format!("upstream `{}` is defined twice", u.name),
                )),
                false => Ok(()),
            }),
        );
    }
    let jwt = config.jwt.clone().map(Arc::new);
    let mut routes = Vec::with_capacity(config.route.len());
    for (i, r) in config.route.iter().enumerate() {
        match compile_route(r, &config.upstream, jwt.as_ref()) {
            Ok(route) => routes.push(route),
            Err(issue) => check(Section::nth("route", i), Err(issue)),
        }
    }
    if let Some(listen) = &config.listen {
        let shape = if listen.https.is_empty() && listen.http.is_empty() {
            Err(Issue::new("https", "no listener: set https or http"))
        } else if !listen.https.is_empty() && config.tls.is_none() {
            Err(Issue::new("https", "HTTPS listeners need a [tls] section"))
        } else if config.route.is_empty() {
            Err(Issue::new("https", "listeners need at least one [[route]]"))
        } else {
            Ok(())
        };
        check(Section::one("listen"), listen.validate().and(shape));
    } else if !config.route.is_empty() {
        check(
            Section::nth("route", 0),
            Err(Issue::new("path_prefix", "routes need a [listen] section")),
        );
    }
    if let (Some(admin), Some(listen)) = (&config.admin, &config.listen) {
        check(Section::one("admin"), admin_apart(admin, listen));
    }
    if !found.is_empty() {
        return Err(found);
    }
    let mut unused = Vec::new();
    if config.jwt.is_some() && routes.iter().all(|r| r.auth.jwt().is_none()) {
        unused.push((
            Section::one("jwt"),
            Issue::new(
                "",
                "no [[route]] checks tokens, so no keys are loaded and nothing is verified",
            ),
        ));
    }
    // Valid but probably not meant: a token the same identity provider minted for another
    // client would pass.
    if let Some(jwt) = &config.jwt {
        for (i, r) in config.route.iter().enumerate() {
            for issuer in jwt.unchecked_route_issuers(r) {
                unused.push((
                    Section::nth("route", i),
                    Issue::new(
                        "auth",
                        format!("accepts issuer `{issuer}`, which checks neither iss nor aud: set [jwt] issuers or audiences"),
                    ),
                ));
            }
        }
    }
    let plan = Plan {
        runtime: config.runtime,
        listen: config.listen,
        tls: config.tls,
        upstreams: config.upstream,
        routes,
        ebpf: config.ebpf,
        admin: config.admin,
        abuse: config.abuse,
        fleet: config.fleet,
        log: config.log,
        warnings: Vec::new(),
    };
    Ok((plan, unused))
}

/// The admin endpoint cannot share an address with a listener: one of the two binds would
/// fail at start-up. An unspecified address takes its port on more than itself ([`covers`]).
fn admin_apart(admin: &AdminConfig, listen: &ListenConfig) -> Result<(), Issue> {
    let a = admin.listen;
    let listeners =
        (listen.https.iter().map(|l| ("https", l))).chain(listen.http.iter().map(|l| ("http", l)));
    for (key, l) in listeners {
        let same_ip = a.ip() == l.ip() || covers(a.ip(), l.ip()) || covers(l.ip(), a.ip());
        if a.port() != 0 && a.port() == l.port() && same_ip {
            return Err(Issue::new(
                "listen",
                format!(
                    "{a} collides with the listener {l} (listen.{key}): the admin endpoint \
                     needs an address of its own"
                ),
            ));
        }
    }
    Ok(())
}

/// Whether a socket bound to `wild` takes the port on `other` too: `0.0.0.0` on every IPv4
/// address, `[::]` (dual-stack, Linux's default) on every address.
fn covers(wild: std::net::IpAddr, other: std::net::IpAddr) -> bool {
    wild.is_unspecified() && (wild.is_ipv6() || other.is_ipv4())
}

/// One route: its own checks ([`RouteConfig::validate`]), then its methods, scopes and claim
/// headers parsed, then its references resolved.
fn compile_route(
    r: &RouteConfig,
    upstreams: &[UpstreamConfig],
    jwt: Option<&Arc<VerifierConfig>>,
) -> Result<RoutePlan, Issue> {
    r.validate()?;
    let mut claim_headers = Vec::with_capacity(r.claim_headers.len());
    for (claim, header) in &r.claim_headers {
        let name = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
            Issue::new(
                "claim_headers",
                format!("`{header}` (for claim `{claim}`) is not a valid header name"),
            )
        })?;
        claim_headers.push((claim.clone(), name));
    }
    let method = |m: &String| {
        Method::from_bytes(m.as_bytes())
            .map_err(|_| Issue::new("methods", format!("`{m}` is not an HTTP method")))
    };
    let methods = match &r.methods {
        None => None,
        Some(ms) => Some(ms.iter().map(method).collect::<Result<Vec<_>, _>>()?),
    };
    let scopes = match &r.scopes {
        None => ScopePolicy::read_write(),
        Some(map) => ScopePolicy::from_pairs(
            map.iter()
                .map(|(m, s)| Ok((method(m)?, s.clone())))
                .collect::<Result<Vec<_>, Issue>>()?,
        ),
    };
    let upstream = upstreams
        .iter()
        .position(|u| u.name == r.upstream)
        .map(UpstreamId)
        .ok_or_else(|| {
            Issue::new(
                "upstream",
                format!("no [[upstream]] is named `{}`", r.upstream),
            )
        })?;
    if let Some(unknown) = jwt.and_then(|j| j.unknown_issuer(r)) {
        return Err(Issue::new(
            "issuers",
            format!("no issuer is named `{unknown}` (names: [[jwt.issuer]] name, or `default` for [jwt] issuers and [[jwt.keys]])"),
        ));
    }
    let auth = match (r.auth, jwt) {
        (AuthMode::None, _) => RouteAuth::None,
        (AuthMode::Required, Some(j)) => RouteAuth::Required(Arc::clone(j)),
        (AuthMode::Optional, Some(j)) => RouteAuth::Optional(Arc::clone(j)),
        (_, None) => {
            return Err(Issue::new(
                "auth",
                "routes that check tokens need a [jwt] section",
            ))
        }
    };
    Ok(RoutePlan {
        name: r.name.clone().unwrap_or_else(|| r.path_prefix.clone()),
        // A trailing dot names the same host (as [`crate::proxy::host`] reads the request's).
        host: r.host.as_ref().map(|h| {
            let h = h.to_ascii_lowercase();
            match h.strip_suffix('.') {
                Some(name) => name.to_string(),
                None => h,
            }
        }),
        methods,
        upstream,
        auth,
        scopes,
        claim_headers: ClaimHeaders::new(claim_headers),
        access: Arc::new(RouteAccess::from_config(r)),
        config: r.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const LISTEN: &str = "[listen]\nhttp = [\"127.0.0.1:0\"]\n";
    const UPSTREAMS: &str = "[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\n\n\
                             [[upstream]]\nname = \"b\"\nservers = [\"127.0.0.1:2\"]\n";
    const JWT: &str = "[jwt]\nissuers = [\"https://issuer.example\"]\n\n\
                       [[jwt.keys]]\npem = \"/etc/gateway/issuer.pem\"\n";

    fn parse(text: &str) -> Result<Plan, String> {
        Config::parse(Path::new("gw.toml"), text).map_err(|e| e.to_string())
    }

    fn err(text: &str) -> String {
        parse(text).expect_err("must be refused")
    }

    /// The 1-based line of the `nth` (0-based) line of `text` that starts with `start`.
    fn line_of(text: &str, start: &str, nth: usize) -> usize {
        text.lines()
            .enumerate()
            .filter(|(_, l)| l.starts_with(start))
            .nth(nth)
            .map(|(i, _)| i + 1)
            .expect("line is there")
    }

    /// A reload builds a plan on one thread and swaps it in for all.
    #[test]
    fn a_plan_can_be_shared_and_swapped() {
        fn shared<T: Send + Sync + 'static>() {}
        shared::<Plan>();
        shared::<arc_swap::ArcSwap<Plan>>();
    }

    #[test]
    fn routes_hold_resolved_upstreams_and_parsed_methods() {
        let plan = parse(&format!(
            "{LISTEN}{UPSTREAMS}{JWT}\
             [[route]]\npath_prefix = \"/b/\"\nupstream = \"b\"\nhost = \"API.Example.COM\"\n\
             methods = [\"GET\", \"PURGE\"]\nscopes = {{ PURGE = [\"admin\"] }}\n\
             claim_headers = {{ sub = \"X-Auth-Sub\" }}\n\n\
             [[route]]\nname = \"first\"\npath_prefix = \"/\"\nupstream = \"a\"\nauth = \"none\"\n"
        ))
        .expect("valid");
        let [b, a] = plan.routes() else {
            panic!("two routes")
        };
        assert_eq!(b.upstream.index(), 1);
        assert_eq!(plan.upstreams()[b.upstream.index()].name, "b");
        assert_eq!(a.upstream.index(), 0);
        assert_eq!(
            b.methods.as_deref(),
            Some(&[Method::GET, Method::from_bytes(b"PURGE").unwrap()][..])
        );
        assert_eq!(a.methods, None);
        assert_eq!(b.host.as_deref(), Some("api.example.com"));
        assert_eq!((b.name.as_str(), a.name.as_str()), ("/b/", "first"));
        assert_eq!(
            b.scopes.required(&Method::from_bytes(b"PURGE").unwrap()),
            ["admin"]
        );
        assert_eq!(
            b.claim_headers
                .names()
                .map(|h| h.as_str())
                .collect::<Vec<_>>(),
            ["x-auth-sub"]
        );
        assert!(matches!(b.auth, RouteAuth::Required(_)));
        assert!(matches!(a.auth, RouteAuth::None));
    }

    #[test]
    fn an_unknown_upstream_names_the_route_line_and_key() {
        let text = format!(
            "{LISTEN}{UPSTREAMS}\n[[route]]\npath_prefix = \"/\"\nauth = \"none\"\nupstream = \"c\"\n"
        );
        let line = text.lines().count();
        assert_eq!(
            err(&text),
            format!("gw.toml:{line}: route[0].upstream: no [[upstream]] is named `c`")
        );
        // Names match exactly: no case folding, no trimming, no empty name.
        for name in ["A", " a", "a ", ""] {
            let e = err(&format!(
                "{LISTEN}{UPSTREAMS}\n[[route]]\npath_prefix = \"/\"\nauth = \"none\"\nupstream = \"{name}\"\n"
            ));
            assert!(
                e.ends_with(&format!(
                    "route[0].upstream: no [[upstream]] is named `{name}`"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn a_route_that_checks_tokens_needs_jwt_with_keys() {
        let route = "\n[[route]]\npath_prefix = \"/\"\nupstream = \"a\"\nauth = \"optional\"\n";
        let e = err(&format!("{LISTEN}{UPSTREAMS}{route}"));
        assert!(
            e.ends_with("route[0].auth: routes that check tokens need a [jwt] section"),
            "{e}"
        );
        // `auth` left out means `required`: the error then points at the route's header.
        let text =
            format!("{LISTEN}{UPSTREAMS}\n[[route]]\npath_prefix = \"/\"\nupstream = \"a\"\n");
        let e = err(&text);
        let at = line_of(&text, "[[route]]", 0);
        assert!(
            e.starts_with(&format!("gw.toml:{at}: route[0].auth: ")),
            "{e}"
        );
        // A [jwt] section without key sources would refuse every token.
        let text = format!("{LISTEN}{UPSTREAMS}\n[jwt]\nissuers = [\"x\"]\n{route}");
        assert_eq!(
            err(&text),
            format!(
                "gw.toml:{}: jwt.keys: routes check tokens but no [[jwt.keys]] source or [[jwt.issuer]] is given: \
                 every token would be refused",
                line_of(&text, "[jwt]", 0)
            )
        );
    }

    #[test]
    fn methods_scopes_and_claim_headers_are_parsed_or_refused() {
        for (line, expect) in [
            (
                "methods = [\"GET\", \"GE T\"]",
                "route[0].methods: `GE T` is not an HTTP method",
            ),
            (
                "methods = [\"\"]",
                "route[0].methods: `` is not an HTTP method",
            ),
            (
                "scopes = { \"GET\\n\" = [\"read\"] }",
                "route[0].methods: `GET\n` is not an HTTP method",
            ),
            (
                "claim_headers = { sub = \"X Sub\" }",
                "route[0].claim_headers: `X Sub` (for claim `sub`) is not a valid header name",
            ),
        ] {
            let e = err(&format!(
                "{LISTEN}{UPSTREAMS}\n[[route]]\npath_prefix = \"/\"\nupstream = \"a\"\nauth = \"none\"\n{line}\n"
            ));
            assert!(e.contains(expect), "{line}: {e}");
        }
    }

    #[test]
    fn every_route_problem_is_reported_with_its_index() {
        let text = format!(
            "{LISTEN}{UPSTREAMS}\n\
             [[route]]\npath_prefix = \"/\"\nupstream = \"nope\"\nauth = \"none\"\n\n\
             [[route]]\npath_prefix = \"/ok/\"\nupstream = \"a\"\nauth = \"none\"\n\n\
             [[route]]\npath_prefix = \"x\"\nupstream = \"a\"\nauth = \"none\"\n"
        );
        let e = err(&text);
        assert_eq!(
            e,
            format!(
                "gw.toml:{}: route[0].upstream: no [[upstream]] is named `nope`\n\
                 gw.toml:{}: route[2].path_prefix: must start with `/`",
                line_of(&text, "upstream = \"nope\"", 0),
                line_of(&text, "path_prefix = \"x\"", 0),
            )
        );
    }

    #[test]
    fn a_verifier_exists_exactly_when_a_route_checks_tokens() {
        let none = "\n[[route]]\npath_prefix = \"/\"\nupstream = \"a\"\nauth = \"none\"\n";
        let plan = parse(&format!("{LISTEN}{UPSTREAMS}{none}")).expect("valid");
        assert!(plan.jwt().is_none());
        assert!(plan.warnings().is_empty());

        // [jwt] that no route uses: valid, not loaded, and said.
        let text = format!("{LISTEN}{UPSTREAMS}\n{JWT}{none}");
        let plan = parse(&text).expect("valid");
        assert!(plan.jwt().is_none());
        assert_eq!(
            plan.warnings(),
            [format!(
                "gw.toml:{}: jwt: no [[route]] checks tokens, so no keys are loaded and nothing is verified",
                line_of(&text, "[jwt]", 0)
            )]
        );

        let plan = parse(&format!(
            "{LISTEN}{UPSTREAMS}\n{JWT}{none}\n[[route]]\npath_prefix = \"/api/\"\nupstream = \"b\"\n"
        ))
        .expect("valid");
        let jwt = plan.jwt().expect("a route checks tokens");
        assert_eq!(jwt.issuers, ["https://issuer.example"]);
        assert!(plan.warnings().is_empty());
        match &plan.routes()[1].auth {
            RouteAuth::Required(j) => assert!(Arc::ptr_eq(j, jwt)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unchecked_issuers_are_warned_about_on_authenticated_routes_only() {
        let warned = |jwt: &str| {
            let text = format!(
                "{LISTEN}{UPSTREAMS}\n[jwt]\n{jwt}\n[[jwt.keys]]\npem = \"/k.pem\"\n\n\
                 [[route]]\nname = \"open\"\npath_prefix = \"/o/\"\nupstream = \"a\"\nauth = \"none\"\n\n\
                 [[route]]\nname = \"api\"\npath_prefix = \"/api/\"\nupstream = \"a\"\n"
            );
            let plan = parse(&text).expect("valid");
            (plan.warnings().to_vec(), line_of(&text, "[[route]]", 1))
        };
        let (w, line) = warned("");
        assert_eq!(
            w,
            [format!(
                "gw.toml:{line}: route[1].auth: accepts issuer `default`, which checks neither \
                 iss nor aud: set [jwt] issuers or audiences"
            )]
        );
        assert!(warned("issuers = [\"https://i/\"]").0.is_empty());
        assert!(warned("audiences = [\"api\"]").0.is_empty());
    }

    #[test]
    fn routes_carry_their_issuers_claim_rules_and_limits() {
        let text = format!(
            "{LISTEN}{UPSTREAMS}\n[jwt]\naudiences = [\"api\"]\n\n\
             [[jwt.issuer]]\nname = \"corp\"\niss = \"https://corp/\"\nkeys = [{{ pem = \"/c.pem\" }}]\n\n\
             [[route]]\npath_prefix = \"/\"\nupstream = \"a\"\nissuers = [\"corp\"]\n\
             rate_limit = {{ key = \"source\", rate = \"1/h\", burst = 1 }}\n"
        );
        let plan = parse(&text).expect("valid");
        let route = &plan.routes()[0];
        // Named issuers only: the policy the route checks tokens with carries them.
        let jwt = route.auth.jwt().expect("checks tokens");
        assert_eq!(jwt.issuer.len(), 1);
        assert!(jwt.keys.is_empty());
        // The limiter is the route's, shared by its copies.
        let ip = std::net::IpAddr::from([192, 0, 2, 9]);
        let copy = route.with_auth(());
        assert!(route.access.rate_limit(None, ip).is_ok());
        assert!(copy.access.rate_limit(None, ip).is_err());
        // An issuer name the [jwt] section does not define is refused with its route.
        let e = err(&text.replace("issuers = [\"corp\"]", "issuers = [\"corp\", \"default\"]"));
        assert!(
            e.contains("route[0].issuers: no issuer is named `default`"),
            "{e}"
        );
    }

    #[test]
    fn routes_without_listen_are_still_refused_and_nothing_compiles_half() {
        let e = err(&format!(
            "{UPSTREAMS}\n[[route]]\npath_prefix = \"/\"\nupstream = \"a\"\nauth = \"none\"\n"
        ));
        assert!(
            e.ends_with("route[0].path_prefix: routes need a [listen] section"),
            "{e}"
        );
    }
}
