//! Bearer token → verify → issuer, scopes and claim rules, per the route's auth mode (RFC
//! 6750); then the route's rate limit.

use super::Proxy;
use crate::jwt::{now_unix, Rejection, VerifiedToken};
use crate::policy::{self, TokenProblem};
use crate::proxy::refusal::{Refusal, ScopeName};
use crate::proxy::route::{Auth, Route};
use http::Request;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a request with an unknown `kid` waits for the JWKS refetch it triggered.
const KID_REFETCH_WAIT: Duration = Duration::from_secs(2);

impl Proxy {
    /// The verified token (if any) or the refusal. `peer` is the client address: the
    /// verification budget's and a `source` rate limit's key.
    pub(super) async fn authorize<B>(
        &self,
        route: &Route,
        req: &Request<B>,
        peer: IpAddr,
    ) -> Result<Option<Arc<VerifiedToken>>, Refusal> {
        let token = self.authenticate(route, req, peer).await?;
        // The subject (or claim) is taken from the verified token only.
        route
            .access
            .rate_limit(token.as_deref(), peer)
            .map_err(Refusal::RateLimited)?;
        Ok(token)
    }

    /// The verified token of an accepted issuer whose scopes and claims the route's rules
    /// allow; `None` on routes without token checks and for an anonymous request on an
    /// `optional` route.
    async fn authenticate<B>(
        &self,
        route: &Route,
        req: &Request<B>,
        peer: IpAddr,
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
            .verify_async_from(raw, now_unix(), KID_REFETCH_WAIT, Some(peer))
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
            // This source's budget of signature checks is spent: nothing was verified.
            Err(Rejection::Throttled { retry_after }) => {
                return Err(Refusal::VerifyBudget {
                    retry_after: crate::ratelimit::retry_after_secs(retry_after),
                })
            }
            Err(rejection) => return Err(Refusal::InvalidToken(rejection.code())),
        };
        if !route.access.accepts_issuer(&token) {
            return Err(Refusal::IssuerNotAccepted);
        }
        if let Some(scope) = route.scopes.missing(req.method(), &token) {
            return Err(Refusal::InsufficientScope(ScopeName::new(scope)));
        }
        if !route.access.claims_satisfied(req.method(), &token) {
            return Err(Refusal::ClaimRule);
        }
        Ok(Some(token))
    }
}
