//! The JWT verifier and the `gateway token` commands with real keys, one test binary with a
//! module per concern (as rustls' `tests/api.rs`); `support` holds the fixtures they share.

mod support;

mod cache;
mod cli;
mod differential;
mod issuers;
mod jwks;
mod props;
mod verify;
mod wycheproof;
