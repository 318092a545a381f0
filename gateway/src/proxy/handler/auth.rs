//! Bearer token → verify → scopes, per the route's auth mode (RFC 6750).

use super::Proxy;
use crate::jwt::{now_unix, VerifiedToken};
use crate::policy::{self, TokenProblem};
use crate::proxy::refusal::{Refusal, ScopeName};
use crate::proxy::route::{Auth, Route};
use http::Request;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a request with an unknown `kid` waits for the JWKS refetch it triggered.
const KID_REFETCH_WAIT: Duration = Duration::from_secs(2);

impl Proxy {
    /// The verified token (if any) or the refusal.
    pub(super) async fn authorize<B>(
        &self,
        route: &Route,
        req: &Request<B>,
    ) -> Result<Option<Arc<VerifiedToken>>, Refusal> {
        let (verifier, optional) = match &route.auth {
            Auth::None => return Ok(None),
            Auth::Token { verifier, optional } => (verifier, *optional),
        };
        let mut found = policy::bearer_token(req.headers());
        if found == Err(TokenProblem::Missing) && route.config.query_token {
            found = policy::query_token(req.uri().query());
        }
        let raw = match found {
            Ok(t) => t,
            Err(TokenProblem::Missing) if optional => return Ok(None),
            Err(TokenProblem::Missing) => return Err(Refusal::MissingToken),
            Err(TokenProblem::Invalid(why)) => return Err(Refusal::InvalidRequest(why)),
        };
        let started = Instant::now();
        // An unknown `kid` may mean the issuer rotated keys: a JWKS source refetches (rate
        // limited, single flight) and the token gets one more try.
        let verified = verifier
            .verify_async(raw, now_unix(), KID_REFETCH_WAIT)
            .await;
        self.metrics.verify_latency(started.elapsed());
        let token = match verified {
            Ok(t) => t,
            // Not even the syntax of a bearer token (RFC 6750 §2.1).
            Err(_) if !policy::is_b64token(raw) => {
                return Err(Refusal::InvalidRequest(
                    "the bearer token has invalid characters",
                ))
            }
            Err(rejection) => return Err(Refusal::InvalidToken(rejection.code())),
        };
        if let Some(scope) = route.scopes.missing(req.method(), &token) {
            return Err(Refusal::InsufficientScope(ScopeName::new(scope)));
        }
        Ok(Some(token))
    }
}
