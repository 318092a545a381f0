//! The head the upstream gets: the client's, rewritten for the next hop.

use super::{ConnInfo, Proxy};
use crate::jwt::VerifiedToken;
use crate::policy;
use crate::proxy::client_addr::ForwardedClient;
use crate::proxy::client_headers;
use crate::proxy::forwarding::Forwarding;
use crate::proxy::refusal::Refusal;
use crate::proxy::route::{Auth, Route};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::Version;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus the proxy
/// credentials meant for us. Transfer-Encoding is hop-by-hop too: hyper frames the body for
/// the next hop itself.
pub(super) static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::TRANSFER_ENCODING,
];

impl Proxy {
    /// Hop-by-hop headers out; identity headers (claims, Authorization) as the route says;
    /// the client's forwarding headers out, ours returned as head lines (see
    /// [`Forwarding::apply`]); Host from the target's authority; the target in origin form;
    /// HTTP/1.1.
    pub(super) fn rewrite_head(
        &self,
        parts: &mut Parts,
        conn: &ConnInfo,
        route: &Route,
        normalized: Option<String>,
        host: Option<&str>,
        token: Option<&VerifiedToken>,
    ) -> Result<Bytes, Refusal> {
        let headers = &mut parts.headers;
        strip_hop_by_hop(headers);
        // Override headers go on routes with token checks, unless the route opted out.
        let overrides = !matches!(route.auth, Auth::None) && route.config.strip_override_headers;
        client_headers::remove_spoofable(headers, &self.claim_header_names, overrides);
        if !route.config.forward_authorization {
            headers.remove(header::AUTHORIZATION);
        }
        if let Some(t) = token {
            route.claim_headers.apply(t, headers);
        }
        let forwarding = match parts.extensions.get::<ForwardedClient>() {
            // Named by a trusted proxy's X-Forwarded-For: its own values, per request.
            Some(c) => Forwarding::new(c.ip, false).apply(headers, host),
            None => conn.forwarding.apply(headers, host),
        };
        host_from_authority(parts);
        origin_form(parts, normalized, !route.config.forward_authorization)?;
        parts.version = Version::HTTP_11;
        Ok(forwarding)
    }
}

/// A target with an authority (absolute form, HTTP/2) names the host: the upstream gets
/// that, never a Host header the client added that says otherwise.
fn host_from_authority(parts: &mut Parts) {
    if let Some(auth) = parts.uri.authority() {
        let same = parts
            .headers
            .get(header::HOST)
            .is_some_and(|h| h.as_bytes() == auth.as_str().as_bytes());
        if !same {
            if let Ok(v) = HeaderValue::from_str(auth.as_str()) {
                parts.headers.insert(header::HOST, v);
            }
        }
    }
}

/// Origin form for the upstream: the normalised path, or the request's own when it was
/// normal already (absolute-form targets lose scheme and authority). `strip_query_token`:
/// an upstream that must not see credentials does not get a query token either.
fn origin_form(
    parts: &mut Parts,
    normalized: Option<String>,
    strip_query_token: bool,
) -> Result<(), Refusal> {
    let query = match parts.uri.query() {
        Some(q) if strip_query_token => policy::without_query_token(q),
        _ => None,
    };
    if normalized.is_some() || parts.uri.scheme().is_some() || query.is_some() {
        let path = normalized.as_deref().unwrap_or(parts.uri.path());
        let target = match query.as_deref().or(parts.uri.query()) {
            Some("") => path.to_string(),
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        parts.uri = target.parse().map_err(|_| Refusal::InvalidTarget)?;
    }
    Ok(())
}

/// Whether `name` is one of [`HOP_BY_HOP`]: one `match` on the name's text (by length,
/// then bytes), where comparing it with each of the nine names was a tenth of the
/// request's header work.
pub(super) fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "upgrade"
            | "transfer-encoding"
    )
}

/// Removes hop-by-hop headers, including those the Connection header names.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names, without hashing, tells,
    // and spares the common case nine lookups. Connection is in the list, so a message
    // naming more headers in it always takes the full path.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        // The upstream needs the Host: `Connection: host` must not remove it.
        .filter(|n| n != header::HOST)
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}
