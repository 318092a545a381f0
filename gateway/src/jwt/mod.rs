//! JWS/JWT verification (RFC 7515/7519) on ring: strict parsing, algorithms bound to keys,
//! claims checks, and a verified-token cache.
//!
//! ```no_run
//! use gateway::jwt::{Verifier, VerifierConfig, now_unix};
//! use gateway::keys::KeyStore;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = VerifierConfig { issuers: vec!["https://issuer.example/".into()], ..Default::default() };
//! let (keys, _jwks_urls) = KeyStore::from_config(&config.keys)?;
//! let verifier = Verifier::new(config, keys)?;
//! match verifier.verify("eyJ...", now_unix()) {
//!     Ok(token) => println!("sub = {:?}", token.subject()),
//!     Err(why) => println!("rejected: {}", why.reason()),
//! }
//! # Ok(()) }
//! ```
//!
//! Order of checks for a token (so the reason code is deterministic): size → three
//! segments → header (base64url, strict JSON, `alg` known and not `none`, `crit`) → `alg`
//! allowed by some issuer → `typ` → payload and signature encodings → payload JSON → issuer
//! by `iss` → `alg` allowed by that issuer → key selection among that issuer's keys by
//! `kid` (exact) and algorithm binding → the source's verification budget → signature →
//! claims.

mod alg;
pub mod b64;
mod cache;
mod claims;
mod config;
mod error;
pub mod json;
mod scan;
mod sign;
mod token;
mod verifier;

pub use alg::{AlgSet, Algorithm, KeyFamily, UnsupportedAlgorithm};
pub use cache::{CacheConfig, CacheStats, TokenCache};
pub use claims::{check_times, ClaimsPolicy, Times};
pub use config::{ConfigError, IssuerConfig, VerifierConfig, VerifyBudgetConfig, DEFAULT_ISSUER};
pub use error::{ClaimsError, ParseError, Reason, Rejection, Segment, REASONS};
pub use sign::{encode_with, SignError, SigningKey};
pub use token::{
    decode_header, decode_unverified, split, Header, Parts, Unverified, DEFAULT_MAX_TOKEN_BYTES,
};
pub use verifier::{now_unix, IssuerStats, VerifiedToken, Verifier, MAX_KIDLESS_KEYS};
