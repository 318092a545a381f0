//! Support for the gateway's tests: crafted packets, privilege checks, network namespaces
//! with veth pairs, bpffs mounts, and the gateway process. Everything a test creates is
//! removed by a `Drop` guard, so a failing test cleans up too.
#![forbid(unsafe_code)]

pub mod gateway;
pub mod netns;
pub mod packet;
pub mod privileged;
