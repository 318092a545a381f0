//! The deny API on the admin endpoint: `GET /deny`, `POST /deny`, `DELETE /deny/{target}`.
//! `gateway deny` uses it while a gateway runs, so that the running gateway's view, maps and
//! state file change together.

use super::Peer;
use crate::deny::{DenyError, DenyStore};
use crate::ebpf::Target;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Largest request body: one entry.
const MAX_BODY: usize = 4096;
/// A request body must have arrived this long after its headers; a slow one holds only its
/// own connection (each is served on a task of its own), never `/metrics`.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// What a deny answers when nothing acts on it.
pub const NOT_ENFORCED: &str = "nothing enforces this deny: the data plane is off and no proxy \
     runs in this gateway; the entry is kept in the state file only";

const JSON: &str = "application/json";

/// `POST /deny` body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    pub target: String,
    /// `90s`, `10m`, ...; absent: until removed.
    pub ttl: Option<String>,
    pub reason: Option<String>,
    /// Deny even when the target covers a protected address (never a target that covers
    /// all of IPv4 or IPv6 or is shorter than /8 or /16).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// Who may use the API.
#[derive(Clone)]
pub enum Access {
    /// Clients on loopback only.
    Loopback,
    /// Any client with the bearer token whose HMAC (under a random key) is `tag`: comparing
    /// tags with ring's constant-time verify keeps the token out of timing side channels.
    Token(Box<(ring::hmac::Key, ring::hmac::Tag)>),
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::Loopback => "Access::Loopback",
            Access::Token(_) => "Access::Token(..)",
        })
    }
}

impl Access {
    /// Token access; `None` when the system random generator fails.
    pub fn token(token: &[u8]) -> Option<Self> {
        let rng = ring::rand::SystemRandom::new();
        let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng).ok()?;
        let tag = ring::hmac::sign(&key, token);
        Some(Access::Token(Box::new((key, tag))))
    }
}

/// The deny API of one gateway.
#[derive(Debug, Clone)]
pub struct DenyApi {
    pub store: Arc<DenyStore>,
    pub access: Access,
    /// Whether anything acts on a deny (the data plane, or the proxy's user-space check).
    pub enforced: bool,
}

impl Access {
    pub(crate) fn allows<B>(&self, req: &Request<B>, peer: Peer) -> bool {
        match self {
            // The socket's file permissions already chose who may connect.
            Access::Loopback => match peer {
                Peer::Tcp(a) => a.ip().is_loopback(),
                Peer::Unix => true,
            },
            Access::Token(kt) => req
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|got| {
                    ring::hmac::verify(&kt.0, got.trim().as_bytes(), kt.1.as_ref()).is_ok()
                }),
        }
    }
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    super::response(status, JSON, body + "\n")
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response<Full<Bytes>> {
    json(
        status,
        serde_json::json!({ "error": message.to_string() }).to_string(),
    )
}

impl DenyApi {
    /// Handles a request whose path starts with `/deny`.
    pub async fn handle(&self, req: Request<Incoming>, peer: Peer) -> Response<Full<Bytes>> {
        handle(req, peer, &self.store, &self.access, self.enforced).await
    }
}

async fn handle(
    req: Request<Incoming>,
    peer: Peer,
    store: &DenyStore,
    access: &Access,
    enforced: bool,
) -> Response<Full<Bytes>> {
    if !access.allows(&req, peer) {
        return error(
            StatusCode::FORBIDDEN,
            "the deny API needs a loopback client or the API token",
        );
    }
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/deny") => match store.list() {
            Ok(list) => json(
                StatusCode::OK,
                serde_json::to_string(&list).unwrap_or_else(|_| "[]".into()),
            ),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        },
        (Method::POST, "/deny") => add(req, store, enforced).await,
        (Method::DELETE, p) if p.starts_with("/deny/") => {
            let raw = &p["/deny/".len()..];
            let target = raw.replace("%2F", "/").replace("%2f", "/");
            match target.parse::<Target>() {
                Err(e) => error(StatusCode::BAD_REQUEST, e),
                Ok(t) => match store.remove(&t) {
                    Ok(true) => json(
                        StatusCode::OK,
                        serde_json::json!({ "removed": t.to_string() }).to_string(),
                    ),
                    Ok(false) => error(
                        StatusCode::NOT_FOUND,
                        format!("{t} is not on the deny list"),
                    ),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
                },
            }
        }
        (_, "/deny") => {
            let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST");
            r.headers_mut().insert(
                hyper::header::ALLOW,
                hyper::header::HeaderValue::from_static("GET, POST"),
            );
            r
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// `application/json`, with parameters or not: what a web page cannot send without a CORS
/// preflight (a `text/plain` body is a "simple" request a browser sends anywhere).
fn is_json(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(JSON))
}

async fn add(req: Request<Incoming>, store: &DenyStore, enforced: bool) -> Response<Full<Bytes>> {
    if !is_json(&req) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be sent as Content-Type: application/json",
        );
    }
    let collected = tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await;
    let body = match collected {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the body is too large or broken",
            )
        }
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {BODY_TIMEOUT:?}"),
            )
        }
    };
    let add: AddRequest = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
    };
    let target = match add.target.parse::<Target>() {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let ttl = match add
        .ttl
        .as_deref()
        .map(humantime::parse_duration)
        .transpose()
    {
        Ok(Some(d)) if d.is_zero() => {
            return error(StatusCode::BAD_REQUEST, "ttl must be longer than zero")
        }
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid ttl: {e}")),
    };
    let reason = add.reason.unwrap_or_else(|| "manual".into());
    if reason.len() > gateway_common::limits::REASON_LEN {
        return error(StatusCode::BAD_REQUEST, "reason is longer than 64 bytes");
    }
    match store.add_manual(target, ttl, &reason, add.force) {
        Ok(()) if enforced => json(
            StatusCode::OK,
            serde_json::json!({ "denied": target.to_string(), "enforced": true }).to_string(),
        ),
        Ok(()) => json(
            StatusCode::OK,
            serde_json::json!({
                "denied": target.to_string(),
                "enforced": false,
                "warning": NOT_ENFORCED,
            })
            .to_string(),
        ),
        Err(e @ (DenyError::Allowed(_) | DenyError::Protected { .. })) => {
            error(StatusCode::CONFLICT, e)
        }
        Err(e @ (DenyError::TooBroad(_) | DenyError::TtlTooLong(_))) => {
            error(StatusCode::BAD_REQUEST, e)
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}
