//! The dashboard on the admin endpoint: `GET /` serves one page, `/app.js` and `/app.css` its
//! script and style (all embedded in the binary: no external resources, nothing to install),
//! and `/stats.json` ([`super::stats_json`]) the data it polls every second.
//!
//! The page and its assets are static and hold nothing secret, so they are served to anyone
//! who reaches the endpoint (the login field must load). `/stats.json` names sources and
//! bans, so it needs what the deny API needs: a loopback client, or the API token when
//! `[admin] api_token_file` is set. Every answer forbids framing, sniffing and caching, and
//! the page runs under a Content-Security-Policy that allows only its own script, style and
//! same-origin requests.

use super::deny_api::Access;
use super::response;
use super::stats_json::{self, GatewayInfo};
use crate::deny::DenyStore;
use crate::metrics::Metrics;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, ALLOW};
use hyper::{Method, Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const APP_CSS: &str = include_str!("page/app.css");

/// Only the page's own script and style, requests to this origin only; no frames, forms,
/// plugins or base-URI tricks. The favicon is an empty `data:` image.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src data:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The header the page sends with every request it makes: a cross-site page cannot send a
/// custom header without a CORS preflight, which this endpoint never grants, so its presence
/// shows the request comes from this page (or a tool), not from a form on another site.
pub const PAGE_HEADER: &str = "x-gateway-admin";

/// What `/stats.json` is built from, and who may read it.
pub struct Dashboard {
    info: GatewayInfo,
    metrics: Arc<Metrics>,
    deny: Option<Arc<DenyStore>>,
    access: Access,
    admin: SocketAddr,
}

impl Dashboard {
    pub fn new(
        info: GatewayInfo,
        metrics: Arc<Metrics>,
        deny: Option<Arc<DenyStore>>,
        access: Access,
        admin: SocketAddr,
    ) -> Self {
        Self {
            info,
            metrics,
            deny,
            access,
            admin,
        }
    }

    /// The answer for a dashboard path; `None` for any other path.
    pub fn handle<B>(&self, req: &Request<B>, peer: super::Peer) -> Option<Response<Full<Bytes>>> {
        let asset = match req.uri().path() {
            "/" => Some(("text/html; charset=utf-8", INDEX_HTML)),
            "/app.js" => Some(("text/javascript; charset=utf-8", APP_JS)),
            "/app.css" => Some(("text/css; charset=utf-8", APP_CSS)),
            "/stats.json" => None,
            _ => return None,
        };
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut resp = response(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "method not allowed\n",
            );
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return Some(harden(resp));
        }
        let resp = match asset {
            Some((content_type, body)) => response(StatusCode::OK, content_type, body),
            None => self.stats(req, peer),
        };
        Some(harden(resp))
    }

    fn stats<B>(&self, req: &Request<B>, peer: super::Peer) -> Response<Full<Bytes>> {
        const JSON: &str = "application/json";
        if !self.access.allows(req, peer) {
            let (message, token_required) = match self.access {
                Access::Loopback => ("the dashboard's data needs a loopback client", false),
                Access::Token(_) => ("the dashboard's data needs the admin API token", true),
            };
            let body = serde_json::json!({ "error": message, "token_required": token_required })
                .to_string()
                + "\n";
            return response(StatusCode::FORBIDDEN, JSON, body);
        }
        match stats_json::build(&self.info, &self.metrics, self.deny.as_deref(), self.admin) {
            Ok(doc) => response(StatusCode::OK, JSON, doc.to_string() + "\n"),
            Err(e) => {
                tracing::warn!(error = %e, "admin endpoint: /stats.json failed");
                let body = serde_json::json!({ "error": e.to_string() }).to_string() + "\n";
                response(StatusCode::INTERNAL_SERVER_ERROR, JSON, body)
            }
        }
    }
}

/// The headers every dashboard answer carries (`Cache-Control: no-store` is already set).
fn harden(mut resp: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let h = resp.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        h.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    resp
}
