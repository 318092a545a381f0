//! The gateway: an eBPF-assisted edge gateway for HTTP APIs.
//!
//! Module map (one concern each, each with its own error type):
//! - [`config`]: the TOML configuration and its validation.
//! - [`ebpf`]: loading, attaching and pinning the kernel programs; typed map access.
//! - [`jwt`]: JWS/JWT parsing, signature verification and claims checks.
//! - [`keys`]: the key store (PEM, JWK/JWKS files, JWKS URLs, HMAC secrets).
//! - [`policy`]: bearer tokens, scopes per method, claims forwarded as headers.
//! - [`tls`]: TLS termination (rustls), certificates by SNI, reload.
//! - [`proxy`]: listeners, the request path, routes and upstream pools.
//! - [`ratelimit`]: token buckets per key (route rate limits, the verification budget).
//! - [`metrics`], [`admin`]: counters and the loopback admin endpoint.
//! - [`access_log`]: one JSON line per request, written by its own thread; `X-Request-Id`.
//! - [`deny`]: the deny list (kernel maps + durable state file); [`abuse`]: automatic bans.
//! - [`cli`]: the `gateway` command line.
// `deny`, not `forbid`: two audited exceptions, each one call across a boundary: the event
// ring buffer's fd registered with tokio (`ebpf::events::consume`) and mimalloc's
// `mi_collect` after idle connections are parked (`proxy::park`); everything else is safe
// code.
#![deny(unsafe_code)]

pub mod abuse;
pub mod access_log;
pub mod admin;
pub mod cli;
pub mod config;
pub mod deny;
pub mod ebpf;
pub mod fleet;
pub mod jwt;
pub mod keys;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod tls;
