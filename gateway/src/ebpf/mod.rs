//! The user-space side of the kernel data plane: load and attach the programs, pin the maps,
//! and typed access to every map.
//!
//! - [`access`]: the pins' group, and the capability a kernel refusal means is missing.
//! - [`addr`]: source keys and prefixes as the maps store them.
//! - [`clock`]: the monotonic clock the kernel stamps with.
//! - [`loader`]: load, attach (XDP native/generic, TC), detach on drop.
//! - [`maps`]: typed wrappers over the pinned maps, for the gateway and the CLI alike.
//! - [`events`]: rate-limit trips from the ring buffer.
//! - [`kernel_log`]: the kernel programs' own log lines, forwarded into `tracing`.

pub mod access;
pub mod addr;
pub mod clock;
pub mod events;
pub mod kernel_log;
pub mod loader;
pub mod maps;

pub use addr::Target;
pub use loader::{DataPlane, LoadError};
pub use maps::{MapsError, PinnedMaps};
