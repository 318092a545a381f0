//! What this binary is, for `gateway_build_info` and the dashboard. Only what the build
//! knows for certain: the crate version, the compiler (`gateway/build.rs` asks the `rustc`
//! cargo uses), the profile, and the commit when the builder says which one it is
//! (`GATEWAY_GIT_COMMIT` at build time). The build does not ask git itself: a build script
//! that reads `.git` reruns only when told which files to watch, and a stale commit label
//! would be worse than `unknown`.

use serde::Serialize;

/// The label value of what the build does not know.
pub const UNKNOWN: &str = "unknown";

/// The labels of `gateway_build_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BuildInfo {
    pub version: &'static str,
    /// The commit built, as `GATEWAY_GIT_COMMIT` gave it at build time; `unknown` without.
    pub commit: &'static str,
    /// `rustc --version` of the compiler that built this binary; `unknown` if it did not say.
    pub rustc: &'static str,
    /// `release` or `debug` (whether debug assertions are on).
    pub profile: &'static str,
}

/// This binary's.
pub const BUILD: BuildInfo = BuildInfo {
    version: env!("CARGO_PKG_VERSION"),
    commit: non_empty(option_env!("GATEWAY_GIT_COMMIT")),
    rustc: non_empty(option_env!("GATEWAY_RUSTC_VERSION")),
    profile: if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    },
};

const fn non_empty(v: Option<&'static str>) -> &'static str {
    match v {
        Some(s) if !s.is_empty() => s,
        _ => UNKNOWN,
    }
}
