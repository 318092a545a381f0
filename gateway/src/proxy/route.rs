//! Routes: which requests go to which upstream, under which policy. Matched in config order;
//! the first route whose host, path prefix and methods all match wins.

use crate::config::{Plan, RouteAuth, RoutePlan};
use crate::jwt::{Verifier, VerifierConfig};
use http::Method;
use std::sync::Arc;

/// One compiled `[[route]]` as the proxy runs it: tokens are checked by the running verifier.
pub type Route = RoutePlan<Auth>;

/// How a running route treats bearer tokens.
#[derive(Debug, Clone)]
pub enum Auth {
    /// No token checks; forwarded claim headers are still stripped.
    None,
    /// Tokens are verified with `verifier`; `optional`: a request without one passes
    /// anonymously (a token that is present must still be valid).
    Token {
        verifier: Arc<Verifier>,
        optional: bool,
    },
}

/// The routes of `plan`, in order, with the verifier that checks their tokens. `verifier`
/// builds it from the plan's `[jwt]`: called once, at the first route that checks tokens, and
/// never when none does; every such route shares what it returns.
pub fn build<E>(
    plan: &Plan,
    mut verifier: impl FnMut(&Arc<VerifierConfig>) -> Result<Arc<Verifier>, E>,
) -> Result<Vec<Route>, E> {
    let mut built: Option<Arc<Verifier>> = None;
    let mut routes = Vec::with_capacity(plan.routes().len());
    for r in plan.routes() {
        let (jwt, optional) = match &r.auth {
            RouteAuth::None => {
                routes.push(r.with_auth(Auth::None));
                continue;
            }
            RouteAuth::Required(jwt) => (jwt, false),
            RouteAuth::Optional(jwt) => (jwt, true),
        };
        let verifier = match &built {
            Some(v) => Arc::clone(v),
            None => Arc::clone(built.insert(verifier(jwt)?)),
        };
        routes.push(r.with_auth(Auth::Token { verifier, optional }));
    }
    Ok(routes)
}

/// Whether `route` serves the request. `host` is lower-case without port; `path` is
/// normalised.
fn matches(route: &Route, host: Option<&str>, path: &str, method: &Method) -> bool {
    if let Some(want) = &route.host {
        if host != Some(want.as_str()) {
            return false;
        }
    }
    path.starts_with(&route.config.path_prefix)
        && route.methods.as_ref().is_none_or(|ms| ms.contains(method))
}

/// The first matching route.
pub fn find<'a>(
    routes: &'a [Route],
    host: Option<&str>,
    path: &str,
    method: &Method,
) -> Option<(usize, &'a Route)> {
    routes
        .iter()
        .enumerate()
        .find(|(_, r)| matches(r, host, path, method))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::keys::KeyStore;
    use std::convert::Infallible;
    use std::path::Path;

    const BASE: &str = "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\n";

    fn plan(routes: &str) -> Plan {
        Config::parse(Path::new("gw.toml"), &format!("{BASE}{routes}")).expect("valid")
    }

    fn no_verifier(_: &Arc<VerifierConfig>) -> Result<Arc<Verifier>, Infallible> {
        panic!("no route checks tokens")
    }

    #[test]
    fn prefix_host_and_method() {
        let plan = plan(
            "[[route]]\npath_prefix = \"/api/\"\nupstream = \"a\"\nhost = \"API.example.com\"\nmethods = [\"GET\"]\nauth = \"none\"\n\
             [[route]]\npath_prefix = \"/api/\"\nupstream = \"a\"\nname = \"any\"\nauth = \"none\"\n",
        );
        let routes = build(&plan, no_verifier).expect("routes");
        let get = Method::GET;
        assert_eq!(
            find(&routes, Some("api.example.com"), "/api/x", &get).map(|r| r.0),
            Some(0)
        );
        assert_eq!(
            find(&routes, Some("other"), "/api/x", &get).map(|r| r.0),
            Some(1)
        );
        assert_eq!(
            find(&routes, Some("api.example.com"), "/api/x", &Method::POST).map(|r| r.0),
            Some(1)
        );
        assert!(
            find(&routes, None, "/API/x", &get).is_none(),
            "case-sensitive"
        );
        assert!(find(&routes, None, "/apix", &get).is_none());
        assert_eq!(routes[1].name, "any");
        assert_eq!(routes[0].name, "/api/");
    }

    #[test]
    fn one_verifier_built_once_for_the_routes_that_check_tokens() {
        let plan = plan(
            "[jwt]\nissuers = [\"https://issuer.example\"]\n[[jwt.keys]]\npem = \"/k.pem\"\n\n\
             [[route]]\npath_prefix = \"/open/\"\nupstream = \"a\"\nauth = \"none\"\n\
             [[route]]\npath_prefix = \"/api/\"\nupstream = \"a\"\n\
             [[route]]\npath_prefix = \"/maybe/\"\nupstream = \"a\"\nauth = \"optional\"\n",
        );
        let mut calls = 0;
        let routes = build(&plan, |jwt| {
            calls += 1;
            assert_eq!(jwt.issuers, ["https://issuer.example"]);
            Verifier::new((**jwt).clone(), KeyStore::new()).map(Arc::new)
        })
        .expect("routes");
        assert_eq!(calls, 1);
        assert!(matches!(routes[0].auth, Auth::None));
        let (
            Auth::Token {
                verifier: a,
                optional: false,
            },
            Auth::Token {
                verifier: b,
                optional: true,
            },
        ) = (&routes[1].auth, &routes[2].auth)
        else {
            panic!("{:?}", routes.iter().map(|r| &r.auth).collect::<Vec<_>>());
        };
        assert!(Arc::ptr_eq(a, b));
    }

    #[test]
    fn a_verifier_that_cannot_be_built_fails_the_build() {
        let plan = plan(
            "[[jwt.keys]]\npem = \"/k.pem\"\n\n[[route]]\npath_prefix = \"/\"\nupstream = \"a\"\n",
        );
        let e = build(&plan, |_| Err("no keys")).expect_err("must fail");
        assert_eq!(e, "no keys");
    }
}
