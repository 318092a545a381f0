//! Who may use the data plane besides the gateway: the pins' group, and which capability a
//! refusal from the kernel means is missing.
//!
//! The kernel creates pins mode 0600 for the user that pinned them, so without help only
//! that user (and root) can run `gateway stats` or `gateway deny`. The pins are therefore
//! handed to a group (`[ebpf] pin_group`, by default `gateway` when it exists): the
//! directory 0750 and each pin 0660 (opening a pinned map asks for read and write access).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why the pins could not be handed to their group.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    #[error("[ebpf] pin_group: no group named `{0}` (create it with `groupadd {0}`, or leave pin_group out)")]
    NoSuchGroup(String),
    #[error("cannot give {} to group `{group}`: {source}", .path.display())]
    Share {
        path: PathBuf,
        group: String,
        #[source]
        source: std::io::Error,
    },
}

/// The group given by the config: `Some(name)`, or `None` for the default (`gateway` when
/// that group exists). An empty name leaves the pins to their owner.
pub fn share_pins(dir: &Path, configured: Option<&str>) -> Result<(), AccessError> {
    let (name, gid) = match configured {
        Some("") => return Ok(()),
        Some(name) => match group_id(name) {
            Some(gid) => (name, gid),
            None => return Err(AccessError::NoSuchGroup(name.to_string())),
        },
        None => match group_id(DEFAULT_GROUP) {
            Some(gid) => (DEFAULT_GROUP, gid),
            None => return Ok(()),
        },
    };
    let share = |path: &Path, mode: u32| {
        std::os::unix::fs::chown(path, None, Some(gid))
            .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)))
            .map_err(|source| AccessError::Share {
                path: path.to_path_buf(),
                group: name.to_string(),
                source,
            })
    };
    share(dir, 0o750)?;
    let entries = std::fs::read_dir(dir).map_err(|source| AccessError::Share {
        path: dir.to_path_buf(),
        group: name.to_string(),
        source,
    })?;
    for entry in entries.flatten() {
        share(&entry.path(), 0o660)?;
    }
    Ok(())
}

/// The group `pin_group` defaults to, and the one the package and the unit create.
pub const DEFAULT_GROUP: &str = "gateway";

/// The id of group `name` (through NSS, so LDAP or sssd groups count too).
pub fn group_id(name: &str) -> Option<u32> {
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

/// A capability the data plane needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Create maps, load programs.
    Bpf,
    /// Let the verifier accept pointer arithmetic on packet data.
    Perfmon,
    /// Load networking programs, attach them to an interface.
    NetAdmin,
}

impl Capability {
    fn bit(self) -> u32 {
        match self {
            Capability::Bpf => 39,
            Capability::Perfmon => 38,
            Capability::NetAdmin => 12,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Capability::Bpf => "CAP_BPF",
            Capability::Perfmon => "CAP_PERFMON",
            Capability::NetAdmin => "CAP_NET_ADMIN",
        }
    }

    /// What the data plane needs it for.
    pub fn needed_for(self) -> &'static str {
        match self {
            Capability::Bpf => "creating the maps and loading the programs",
            Capability::Perfmon => {
                "the verifier accepts the programs' pointer arithmetic on packet data only with it"
            }
            Capability::NetAdmin => {
                "loading networking programs (XDP, TC) and attaching them to the interface"
            }
        }
    }

    /// Whether this process lacks it (CAP_SYS_ADMIN stands in for CAP_BPF and
    /// CAP_PERFMON). `None` when the effective set cannot be read.
    pub fn missing(self) -> Option<bool> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())?;
        Some(lacks(eff, self))
    }
}

/// Whether the effective set `eff` lacks `cap`.
fn lacks(eff: u64, cap: Capability) -> bool {
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    const SYS_ADMIN: u32 = 21;
    match cap {
        Capability::NetAdmin => !has(cap.bit()),
        _ => !has(cap.bit()) && !has(SYS_ADMIN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_sets_are_read_bit_by_bit() {
        let all = u64::MAX;
        for cap in [Capability::Bpf, Capability::Perfmon, Capability::NetAdmin] {
            assert!(!lacks(all, cap));
            assert!(lacks(0, cap));
            assert!(!lacks(1 << cap.bit(), cap), "{cap:?}");
        }
        // CAP_SYS_ADMIN covers BPF and PERFMON (pre-5.8 semantics), not NET_ADMIN.
        assert!(!lacks(1 << 21, Capability::Bpf));
        assert!(!lacks(1 << 21, Capability::Perfmon));
        assert!(lacks(1 << 21, Capability::NetAdmin));
        // CAP_BPF alone is not CAP_PERFMON.
        assert!(lacks(1 << 39, Capability::Perfmon));
        // This process (tests run as root, or opt out of privileged tests) can read its set.
        assert!(Capability::Bpf.missing().is_some());
    }

    #[test]
    fn groups_resolve_through_nss() {
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("no-such-group-gateway-test"), None);
        assert_eq!(group_id("nul\0inside"), None);
    }

    #[test]
    fn an_unknown_configured_group_is_an_error_and_empty_means_owner_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = share_pins(dir.path(), Some("no-such-group-gateway-test")).expect_err("no group");
        assert!(
            e.to_string()
                .contains("no group named `no-such-group-gateway-test`"),
            "{e}"
        );
        share_pins(dir.path(), Some("")).expect("empty: nothing to do");
    }

    #[test]
    fn pins_get_the_group_and_group_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pin = dir.path().join("DENY");
        std::fs::write(&pin, b"").unwrap();
        std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Handing a file to group 0 needs root (as tests run; CI is root).
        if std::env::var_os("GATEWAY_SKIP_PRIVILEGED").is_some_and(|v| v == "1") {
            eprintln!("SKIPPED: pins_get_the_group_and_group_modes needs root");
            return;
        }
        share_pins(dir.path(), Some("root")).expect("share (needs root)");
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&pin).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, 0));
        let meta = std::fs::metadata(dir.path()).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o750);
    }
}
