//! Routes: which requests go to which upstream, under which policy. Matched in config order;
//! the first route whose host, path prefix and methods all match wins.
//!
//! A prefix matches whole segments: `/api` matches `/api` and `/api/x`, never `/apix`; a
//! prefix ending in `/` (`/api/`) matches what is below it (`/api/`, `/api/x`), not `/api`.

use super::path::{self, PathError};
use crate::config::{EncodedSlashes, Plan, RouteAuth, RoutePlan};
use crate::jwt::{Verifier, VerifierConfig};
use http::Method;
use std::borrow::Cow;
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

/// Whether `route` serves the request. `host` is lower-case without port or trailing dot;
/// `path` is normalised.
fn matches(route: &Route, host: Option<&str>, path: &str, method: &Method) -> bool {
    if let Some(want) = &route.host {
        if host != Some(want.as_str()) {
            return false;
        }
    }
    prefix_matches(&route.config.path_prefix, path)
        && route.methods.as_ref().is_none_or(|ms| ms.contains(method))
}

/// Segment-aware: the prefix ends at a segment boundary of the path.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/') || matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
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

/// A request's route, with the path the upstream is sent.
#[derive(Debug)]
pub struct Resolved<'a> {
    pub index: usize,
    pub route: &'a Route,
    /// The normalised path, `None` when it is the request's own.
    pub path: Option<String>,
}

/// Normalises `raw_path` and finds its route, which decides what an ambiguous path
/// (see [`path::Ambiguity`]) becomes: refused (`reject`), forwarded as it is (`keep`), or
/// decoded, in which case the route is chosen again for the decoded path, since that is
/// what the upstream serves. `Ok(None)`: no route (404).
pub fn resolve<'a>(
    routes: &'a [Route],
    host: Option<&str>,
    raw_path: &str,
    method: &Method,
) -> Result<Option<Resolved<'a>>, PathError> {
    let normalized = path::normalize(raw_path)?;
    let Some((index, route)) = find(routes, host, &normalized.path, method) else {
        return Ok(None);
    };
    let resolved = |index, route, path: Cow<'_, str>| Resolved {
        index,
        route,
        path: match path {
            Cow::Borrowed(_) => None,
            Cow::Owned(p) => Some(p),
        },
    };
    let Some(problem) = normalized.ambiguity.error() else {
        return Ok(Some(resolved(index, route, normalized.path)));
    };
    match route.config.encoded_slashes {
        EncodedSlashes::Keep => Ok(Some(resolved(index, route, normalized.path))),
        EncodedSlashes::Reject => Err(problem),
        EncodedSlashes::Decode => {
            let decoded = path::normalize_decoding_separators(raw_path)?;
            if let Some(problem) = decoded.ambiguity.error() {
                return Err(problem);
            }
            Ok(find(routes, host, &decoded.path, method)
                .map(|(index, route)| resolved(index, route, decoded.path)))
        }
    }
}

/// RFC 9110 §9.1: methods are case-sensitive tokens, and every registered one is upper-case
/// letters. Anything else is refused (400) rather than routed: an upstream that upper-cases
/// `delete` would run a method no route's policy was checked for.
pub fn is_acceptable_method(method: &Method) -> bool {
    let m = method.as_str();
    !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase())
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

    fn routes(text: &str) -> Vec<Route> {
        build(&plan(text), no_verifier).expect("routes")
    }

    #[test]
    fn prefixes_match_whole_segments() {
        for (prefix, path, want) in [
            ("/api", "/api", true),
            ("/api", "/api/", true),
            ("/api", "/api/x", true),
            ("/api", "/apix", false),
            ("/api", "/api-internal/x", false),
            ("/api", "/ap", false),
            ("/api/", "/api/", true),
            ("/api/", "/api/x", true),
            ("/api/", "/api", false),
            ("/api/", "/apix", false),
            ("/", "/", true),
            ("/", "/anything", true),
            ("/api/v1", "/api/v1/x", true),
            ("/api/v1", "/api/v10", false),
        ] {
            assert_eq!(prefix_matches(prefix, path), want, "{prefix} vs {path}");
        }
    }

    #[test]
    fn a_configured_host_with_a_trailing_dot_is_the_same_host() {
        let routes = routes(
            "[[route]]\npath_prefix = \"/\"\nupstream = \"a\"\nhost = \"Admin.Example.\"\nauth = \"none\"\n",
        );
        assert!(find(&routes, Some("admin.example"), "/", &Method::GET).is_some());
    }

    /// `/api/` (auth none here, the policy does not matter to routing) before `/`, on the
    /// same upstream: the setup.
    fn open_and_closed(mode: &str) -> Vec<Route> {
        routes(&format!(
            "[[route]]\npath_prefix = \"/api/\"\nupstream = \"a\"\nname = \"api\"\nauth = \"none\"\nencoded_slashes = \"{mode}\"\n\
             [[route]]\npath_prefix = \"/\"\nupstream = \"a\"\nauth = \"none\"\nname = \"open\"\nencoded_slashes = \"{mode}\"\n"
        ))
    }

    fn resolved(routes: &[Route], p: &str) -> Result<Option<(String, Option<String>)>, PathError> {
        resolve(routes, None, p, &Method::GET).map(|r| r.map(|r| (r.route.name.clone(), r.path)))
    }

    #[test]
    fn ambiguous_paths_are_refused_by_default() {
        let default = routes("[[route]]\npath_prefix = \"/\"\nupstream = \"a\"\nauth = \"none\"\n");
        assert_eq!(default[0].config.encoded_slashes, EncodedSlashes::Reject);
        let routes = open_and_closed("reject");
        for p in [
            "/public/..%2Fapi%2Fitems",
            "/public/..%5Capi%5Citems",
            "/public/..\\api\\items",
        ] {
            assert_eq!(
                resolved(&routes, p),
                Err(PathError::EscapedSeparator),
                "{p}"
            );
        }
        for p in ["/public/..;/api/items", "/public/.;/x"] {
            assert_eq!(
                resolved(&routes, p),
                Err(PathError::DotSegmentParameters),
                "{p}"
            );
        }
        assert_eq!(
            resolved(&routes, "/public/../api/items"),
            Ok(Some(("api".into(), Some("/api/items".into()))))
        );
        assert_eq!(
            resolved(&routes, "/api/items"),
            Ok(Some(("api".into(), None)))
        );
    }

    #[test]
    fn keep_forwards_them_as_they_are() {
        let routes = open_and_closed("keep");
        assert_eq!(
            resolved(&routes, "/public/..%2fapi%2Fitems"),
            Ok(Some((
                "open".into(),
                Some("/public/..%2Fapi%2Fitems".into())
            )))
        );
        assert_eq!(
            resolved(&routes, "/public/..;/api/items"),
            Ok(Some(("open".into(), Some("/public/..;/api/items".into()))))
        );
    }

    #[test]
    fn decode_routes_what_the_upstream_will_serve() {
        let routes_ = open_and_closed("decode");
        assert_eq!(
            resolved(&routes_, "/public/..%2Fapi%2Fitems"),
            Ok(Some(("api".into(), Some("/api/items".into()))))
        );
        assert_eq!(
            resolved(&routes_, "/public/..%5Capi\\items"),
            Ok(Some(("api".into(), Some("/api/items".into()))))
        );
        assert_eq!(
            resolved(&routes_, "/public/..;/api/items"),
            Err(PathError::DotSegmentParameters)
        );
        // A route that decodes sends the request to one that refuses: nothing ambiguous is
        // left after decoding, so the decoded path is routed there.
        let mixed = routes(
            "[[route]]\npath_prefix = \"/api/\"\nupstream = \"a\"\nname = \"api\"\nauth = \"none\"\n\
             [[route]]\npath_prefix = \"/\"\nupstream = \"a\"\nname = \"open\"\nauth = \"none\"\nencoded_slashes = \"decode\"\n",
        );
        assert_eq!(
            resolved(&mixed, "/x/..%2Fapi%2Fitems"),
            Ok(Some(("api".into(), Some("/api/items".into()))))
        );
        // Decoded into no route at all: 404.
        let only_api = routes(
            "[[route]]\npath_prefix = \"/api%2Fx\"\nupstream = \"a\"\nauth = \"none\"\nencoded_slashes = \"decode\"\n",
        );
        assert_eq!(resolved(&only_api, "/api%2Fx"), Ok(None));
    }

    #[test]
    fn methods_must_be_upper_case_letters() {
        for m in ["GET", "DELETE", "PROPFIND", "PURGE"] {
            assert!(
                is_acceptable_method(&Method::from_bytes(m.as_bytes()).unwrap()),
                "{m}"
            );
        }
        for m in ["delete", "Get", "GET2", "M-SEARCH", "X_Y", "pOST"] {
            assert!(
                !is_acceptable_method(&Method::from_bytes(m.as_bytes()).unwrap()),
                "{m}"
            );
        }
    }
}
