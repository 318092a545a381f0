//! Routes: which requests go to which upstream, under which policy. Matched in config order;
//! the first route whose host, path prefix and methods all match wins.

use crate::config::{AuthMode, RouteConfig};
use crate::policy::{ClaimHeaders, RouteAccess, ScopePolicy};
use http::Method;
use std::sync::Arc;

/// One compiled `[[route]]`.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
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
    /// Issuers, claim rules and rate limit (shared by every worker's copy of the route).
    pub access: Arc<RouteAccess>,
}

impl Route {
    /// `upstream` is the index of the route's upstream (the config check made sure it exists).
    pub fn new(cfg: &RouteConfig, upstream: usize) -> Self {
        Self {
            name: cfg.name.clone().unwrap_or_else(|| cfg.path_prefix.clone()),
            host: cfg.host.as_ref().map(|h| h.to_ascii_lowercase()),
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
            access: Arc::new(RouteAccess::from_config(cfg)),
        }
    }

    /// `host` is lower-case without port; `path` is normalised.
    pub fn matches(&self, host: Option<&str>, path: &str, method: &Method) -> bool {
        if let Some(want) = &self.host {
            if host != Some(want.as_str()) {
                return false;
            }
        }
        path.starts_with(&self.prefix) && self.methods.as_ref().is_none_or(|ms| ms.contains(method))
    }
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
}
