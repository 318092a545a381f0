//! Routes: which requests go to which upstream, under which policy. Matched in config order;
//! the first route whose host, path prefix and methods all match wins.
//!
//! A prefix matches whole segments: `/api` matches `/api` and `/api/x`, never `/apix`; a
//! prefix ending in `/` (`/api/`) matches what is below it (`/api/`, `/api/x`), not `/api`.

use super::path::{self, PathError};
use crate::config::{AuthMode, EncodedSlashes, RouteConfig};
use crate::policy::{ClaimHeaders, ScopePolicy};
use http::Method;
use std::borrow::Cow;

/// One compiled `[[route]]`.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// Lower case, without a trailing dot (as [`super::host`] gives the request's).
    host: Option<String>,
    prefix: String,
    methods: Option<Vec<Method>>,
    /// Index into the proxy's upstreams.
    pub upstream: usize,
    pub auth: AuthMode,
    pub scopes: ScopePolicy,
    pub claim_headers: ClaimHeaders,
    pub forward_authorization: bool,
    pub query_token: bool,
    pub encoded_slashes: EncodedSlashes,
    /// Remove method- and URL-override headers: on routes with token checks, unless the
    /// route opted out.
    pub strip_override_headers: bool,
}

impl Route {
    /// `upstream` is the index of the route's upstream (the config check made sure it exists).
    pub fn new(cfg: &RouteConfig, upstream: usize) -> Self {
        Self {
            name: cfg.name.clone().unwrap_or_else(|| cfg.path_prefix.clone()),
            host: cfg.host.as_ref().map(|h| {
                let h = h.to_ascii_lowercase();
                match h.strip_suffix('.') {
                    Some(name) => name.to_string(),
                    None => h,
                }
            }),
            prefix: cfg.path_prefix.clone(),
            methods: cfg.methods.as_ref().map(|ms| {
                ms.iter()
                    .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                    .collect()
            }),
            upstream,
            auth: cfg.auth,
            scopes: ScopePolicy::from_config(cfg.scopes.as_ref()),
            claim_headers: ClaimHeaders::from_route(cfg),
            forward_authorization: cfg.forward_authorization,
            query_token: cfg.query_token,
            encoded_slashes: cfg.encoded_slashes,
            strip_override_headers: cfg.auth != AuthMode::None && cfg.strip_override_headers,
        }
    }

    /// `host` is lower-case without port or trailing dot; `path` is normalised.
    pub fn matches(&self, host: Option<&str>, path: &str, method: &Method) -> bool {
        if let Some(want) = &self.host {
            if host != Some(want.as_str()) {
                return false;
            }
        }
        prefix_matches(&self.prefix, path)
            && self.methods.as_ref().is_none_or(|ms| ms.contains(method))
    }
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
        .find(|(_, r)| r.matches(host, path, method))
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
    match route.encoded_slashes {
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

    fn route(toml_text: &str) -> Route {
        let cfg: RouteConfig = toml::from_str(toml_text).unwrap();
        Route::new(&cfg, 0)
    }

    #[test]
    fn prefix_host_and_method() {
        let routes = vec![
            route("path_prefix = \"/api/\"\nupstream = \"a\"\nhost = \"API.example.com\"\nmethods = [\"GET\"]"),
            route("path_prefix = \"/api/\"\nupstream = \"a\"\nname = \"any\""),
        ];
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
        let r = route("path_prefix = \"/\"\nupstream = \"a\"\nhost = \"Admin.Example.\"");
        assert!(r.matches(Some("admin.example"), "/", &Method::GET));
    }

    /// `/api/` needs a token, `/` is open, on the same upstream: the setup.
    fn open_and_closed(mode: &str) -> Vec<Route> {
        vec![
            route(&format!(
                "path_prefix = \"/api/\"\nupstream = \"a\"\nname = \"api\"\nencoded_slashes = \"{mode}\""
            )),
            route(&format!(
                "path_prefix = \"/\"\nupstream = \"a\"\nauth = \"none\"\nname = \"open\"\nencoded_slashes = \"{mode}\""
            )),
        ]
    }

    fn resolved(routes: &[Route], p: &str) -> Result<Option<(String, Option<String>)>, PathError> {
        resolve(routes, None, p, &Method::GET).map(|r| r.map(|r| (r.route.name.clone(), r.path)))
    }

    #[test]
    fn ambiguous_paths_are_refused_by_default() {
        let cfg: RouteConfig = toml::from_str("path_prefix = \"/\"\nupstream = \"a\"").unwrap();
        assert_eq!(cfg.encoded_slashes, EncodedSlashes::Reject);
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
        let routes = open_and_closed("decode");
        assert_eq!(
            resolved(&routes, "/public/..%2Fapi%2Fitems"),
            Ok(Some(("api".into(), Some("/api/items".into()))))
        );
        assert_eq!(
            resolved(&routes, "/public/..%5Capi\\items"),
            Ok(Some(("api".into(), Some("/api/items".into()))))
        );
        assert_eq!(
            resolved(&routes, "/public/..;/api/items"),
            Err(PathError::DotSegmentParameters)
        );
        // A route that decodes sends the request to one that refuses: nothing ambiguous is
        // left after decoding, so the decoded path is routed there.
        let mixed = vec![
            route("path_prefix = \"/api/\"\nupstream = \"a\"\nname = \"api\""),
            route("path_prefix = \"/\"\nupstream = \"a\"\nname = \"open\"\nencoded_slashes = \"decode\""),
        ];
        assert_eq!(
            resolved(&mixed, "/x/..%2Fapi%2Fitems"),
            Ok(Some(("api".into(), Some("/api/items".into()))))
        );
        // Decoded into no route at all: 404.
        let only_api = vec![route(
            "path_prefix = \"/api%2Fx\"\nupstream = \"a\"\nencoded_slashes = \"decode\"",
        )];
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
