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
    /// The stable reason code.
    pub fn code(&self) -> Reason {
        match self {
            Rejection::Parse(ParseError::TooLarge { .. }) => Reason::TooLarge,
            Rejection::Parse(ParseError::UnsupportedCrit(_)) => Reason::UnsupportedCrit,
            Rejection::Parse(_) => Reason::Malformed,
            Rejection::AlgNotAllowed(_) => Reason::AlgNotAllowed,
            Rejection::KeyNotFound(_) => Reason::KeyNotFound,
            Rejection::BadSignature => Reason::BadSignature,
            Rejection::Throttled { .. } => Reason::VerifyBudget,
            Rejection::Claims(c) => match c {
                ClaimsError::Expired { .. } => Reason::Expired,
                ClaimsError::NotYetValid { .. } => Reason::NotYetValid,
                ClaimsError::Missing(_) => Reason::MissingClaim,
                ClaimsError::BadIssuer => Reason::BadIssuer,
                ClaimsError::BadAudience => Reason::BadAudience,
                ClaimsError::BadNumericDate(_) | ClaimsError::BadType(_) => Reason::Malformed,
            },
        }
    }

    /// The stable reason code as text (see [`Reason::as_str`]).
    pub fn reason(&self) -> &'static str {
        self.code().as_str()
    }

    pub(crate) fn alg(a: Algorithm) -> Self {
        Rejection::AlgNotAllowed(a.as_str().to_owned())
    }
}

/// The stable reason codes of [`Rejection`]: metrics labels, CLI output, logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    Malformed,
    AlgNotAllowed,
    KeyNotFound,
    BadSignature,
    Expired,
    NotYetValid,
    MissingClaim,
    BadIssuer,
    BadAudience,
    UnsupportedCrit,
    TooLarge,
    /// The source's budget of signature checks was spent; the signature was not checked.
    VerifyBudget,
}

impl Reason {
    /// Every code, in declaration order (`ALL[r as usize] == r`).
    pub const ALL: [Reason; 12] = [
        Reason::Malformed,
        Reason::AlgNotAllowed,
        Reason::KeyNotFound,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::MissingClaim,
        Reason::BadIssuer,
        Reason::BadAudience,
        Reason::UnsupportedCrit,
        Reason::TooLarge,
        Reason::VerifyBudget,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::AlgNotAllowed => "alg_not_allowed",
            Reason::KeyNotFound => "key_not_found",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::MissingClaim => "missing_claim",
            Reason::BadIssuer => "bad_issuer",
            Reason::BadAudience => "bad_audience",
            Reason::UnsupportedCrit => "unsupported_crit",
            Reason::TooLarge => "too_large",
            Reason::VerifyBudget => "verify_budget",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every reason code as text, for callers that compare strings (CLI output checks).
pub const REASONS: [&str; Reason::ALL.len()] = {
    let mut out = [""; Reason::ALL.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = Reason::ALL[i].as_str();
        i += 1;
    }
    out
};

#[cfg(test)]
mod tests {
    use super::Reason;

    #[test]
    fn all_is_in_declaration_order_and_codes_are_distinct() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r}");
        }
        let mut codes: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Reason::ALL.len());
    }
}
