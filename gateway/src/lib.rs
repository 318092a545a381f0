//! The gateway: an eBPF-assisted edge gateway for HTTP APIs.
//!
//! Module map (one concern each, each with its own error type):
//! - [`config`]: the TOML configuration and its validation.
//! - [`ebpf`]: loading, attaching and pinning the kernel programs; typed map access.
//! - [`jwt`]: JWS/JWT parsing, signature verification and claims checks.
//! - [`keys`]: the key store (PEM, JWK/JWKS files, JWKS URLs, HMAC secrets).
//! - [`cli`]: the `gateway` command line.
// `deny`, not `forbid`: one audited exception registers the event ring buffer's fd with tokio
// (see `ebpf::events::consume`); everything else is safe code.
#![deny(unsafe_code)]

pub mod cli;
pub mod config;
pub mod ebpf;
pub mod jwt;
pub mod keys;
