//! Support for the gateway's tests: crafted packets, privilege checks, network namespaces
//! with veth pairs, bpffs mounts, the gateway process, and for the proxy a test CA, real
//! HTTP/1.1 and HTTP/2 clients over TLS, an echo upstream, and a running proxy gateway with
//! its keys and tokens. Everything a test creates is removed by a `Drop` guard, so a failing
//! test cleans up too.
#![forbid(unsafe_code)]

pub mod bench;
pub mod browser;
pub mod client;
pub mod config;
pub mod gateway;
pub mod haproxy;
pub mod http1;
pub mod netns;
pub mod packet;
pub mod privileged;
pub mod probe;
pub mod proxy;
pub mod redis;
pub mod tls;
pub mod upstream;
