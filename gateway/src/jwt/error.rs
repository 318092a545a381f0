//! Why a token was rejected, one error type per concern, each mapping to a stable reason code.
//!
//! The reason codes are part of the CLI and log contract (operators alert on them); the
//! messages are for people and may change.

use super::alg::Algorithm;
use super::b64::B64Error;
use super::json::JsonError;
use thiserror::Error;

/// Which part of a compact JWS something was wrong with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Segment {
    /// The protected header.
    Header,
    /// The payload (claims set).
    Payload,
    /// The signature.
    Signature,
}

impl std::fmt::Display for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Segment::Header => "header",
            Segment::Payload => "payload",
            Segment::Signature => "signature",
        })
    }
}

/// Structural problems with the token (before any key is involved).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// Longer than the configured limit; nothing was decoded.
    #[error("token is {len} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Token length in bytes.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Not exactly three dot-separated segments.
    #[error("token is not three dot-separated segments")]
    Segments,
    /// A segment is not canonical unpadded base64url.
    #[error("{0} is not canonical base64url: {1}")]
    Base64(Segment, B64Error),
    /// A segment is not a strict JSON object.
    #[error("{0} is not a valid JSON object: {1}")]
    Json(Segment, JsonError),
    /// The header has no `alg`.
    #[error("header has no alg")]
    MissingAlg,
    /// A registered header parameter has the wrong JSON type.
    #[error("header parameter {0} has the wrong type")]
    HeaderType(&'static str),
    /// `crit` names an extension we do not implement (we implement none).
    #[error("unsupported critical header parameter {0:?}")]
    UnsupportedCrit(String),
    /// `typ` does not match the required media type.
    #[error("typ {found:?} is not the required {required:?}")]
    Typ {
        /// What the token said (absent = empty).
        found: String,
        /// What the configuration requires.
        required: String,
    },
}

/// Claim checks that failed after the signature was verified.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimsError {
    /// `exp` has passed (beyond the leeway).
    #[error("token expired at {exp} (now {now}, leeway {leeway}s)")]
    Expired {
        /// The token's exp.
        exp: i64,
        /// The time used.
        now: i64,
        /// The leeway in seconds.
        leeway: i64,
    },
    /// `nbf` or `iat` lies in the future (beyond the leeway).
    #[error("{claim} {at} is in the future (now {now}, leeway {leeway}s)")]
    NotYetValid {
        /// `nbf` or `iat`.
        claim: &'static str,
        /// Its value.
        at: i64,
        /// The time used.
        now: i64,
        /// The leeway in seconds.
        leeway: i64,
    },
    /// A required claim is absent.
    #[error("required claim {0:?} is missing")]
    Missing(String),
    /// `iss` is not one of the accepted issuers.
    #[error("issuer is not accepted")]
    BadIssuer,
    /// `aud` names none of the accepted audiences.
    #[error("audience is not accepted")]
    BadAudience,
    /// A NumericDate claim is not a finite JSON number within the signed 64-bit range.
    #[error("{0} is not a valid NumericDate")]
    BadNumericDate(&'static str),
    /// A registered claim has the wrong JSON type.
    #[error("claim {0} has the wrong type")]
    BadType(&'static str),
}

/// Why a token was rejected. [`Rejection::reason`] is the stable code.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// Structural problem (malformed, too large, unsupported crit).
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The header's alg is unknown, `none`, not allowed by configuration, or not bound to any
    /// key that the token's `kid` selects.
    #[error("algorithm {0:?} is not allowed")]
    AlgNotAllowed(String),
    /// No key matches the token's `kid` (or, without kid, no key at all is loaded).
    #[error("no key with kid {0:?}")]
    KeyNotFound(Option<String>),
    /// No candidate key verified the signature.
    #[error("signature does not verify")]
    BadSignature,
    /// The claims failed a check.
    #[error(transparent)]
    Claims(#[from] ClaimsError),
    /// The source's budget of signature checks is spent; the signature was not checked.
    #[error("too many signature checks from this source; retry after {retry_after:?}")]
    Throttled {
        /// When the budget has a check again.
        retry_after: std::time::Duration,
    },
}

impl Rejection {
    /// The stable reason code: one of `malformed`, `alg_not_allowed`, `key_not_found`,
    /// `bad_signature`, `expired`, `not_yet_valid`, `missing_claim`, `bad_issuer`,
    /// `bad_audience`, `unsupported_crit`, `too_large`, `verify_budget`.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Parse(ParseError::TooLarge { .. }) => "too_large",
            Rejection::Parse(ParseError::UnsupportedCrit(_)) => "unsupported_crit",
            Rejection::Parse(_) => "malformed",
            Rejection::AlgNotAllowed(_) => "alg_not_allowed",
            Rejection::KeyNotFound(_) => "key_not_found",
            Rejection::BadSignature => "bad_signature",
            Rejection::Throttled { .. } => "verify_budget",
            Rejection::Claims(c) => match c {
                ClaimsError::Expired { .. } => "expired",
                ClaimsError::NotYetValid { .. } => "not_yet_valid",
                ClaimsError::Missing(_) => "missing_claim",
                ClaimsError::BadIssuer => "bad_issuer",
                ClaimsError::BadAudience => "bad_audience",
                ClaimsError::BadNumericDate(_) | ClaimsError::BadType(_) => "malformed",
            },
        }
    }

    pub(crate) fn alg(a: Algorithm) -> Self {
        Rejection::AlgNotAllowed(a.as_str().to_owned())
    }
}

/// Every reason code, for metrics labels and tests.
pub const REASONS: [&str; 12] = [
    "malformed",
    "alg_not_allowed",
    "key_not_found",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "missing_claim",
    "bad_issuer",
    "bad_audience",
    "unsupported_crit",
    "too_large",
    "verify_budget",
];
