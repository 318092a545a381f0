//! `[ebpf]`: where and how the kernel data plane runs, and its limits.

use super::Issue;
use crate::ebpf::addr::Target;
use gateway_common::{config_flag, DataPlaneConfig};
use ipnet::IpNet;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Where the maps are pinned unless the config says otherwise.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/gateway";

/// Where the deny list is kept across reboots unless the config says otherwise.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/gateway/deny-state.json";

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

/// How the programs are attached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataPlaneMode {
    /// Native (driver) XDP. Fails, with advice, when the driver lacks it; never silently
    /// falls back.
    #[default]
    Xdp,
    /// Generic (skb) XDP: works on every interface, slower than native.
    XdpGeneric,
    /// TC ingress (tcx on kernels ≥ 6.6, clsact otherwise).
    Tc,
    /// No data plane: nothing is loaded.
    Off,
}

impl DataPlaneMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DataPlaneMode::Xdp => "xdp",
            DataPlaneMode::XdpGeneric => "xdp-generic",
            DataPlaneMode::Tc => "tc",
            DataPlaneMode::Off => "off",
        }
    }
}

impl std::fmt::Display for DataPlaneMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_pin_path() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_PATH)
}
fn default_state_file() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_FILE)
}
fn default_syn_rate() -> u32 {
    100
}
fn default_syn_burst() -> u32 {
    200
}
fn default_true() -> bool {
    true
}
fn default_event_interval() -> String {
    "1s".to_string()
}

/// The `[ebpf]` section as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EbpfConfig {
    /// Interface to attach to; required unless `mode = "off"`.
    pub interface: Option<String>,
    #[serde(default)]
    pub mode: DataPlaneMode,
    #[serde(default = "default_pin_path")]
    pub pin_path: PathBuf,
    /// Group the pins are given to (directory 0750, pins 0660), so its members can run
    /// `gateway stats` and `gateway deny` without root. Absent: `gateway` when that group
    /// exists; `""`: the pins stay the owner's (0600).
    #[serde(default)]
    pub pin_group: Option<String>,
    /// The deny list's durable copy (pinned maps do not survive a reboot; this file does).
    #[serde(default = "default_state_file")]
    pub state_file: PathBuf,
    /// TCP destination ports whose new connections are rate limited per source. Empty: none.
    #[serde(default)]
    pub protected_ports: Vec<u16>,
    /// New connections per second per source to protected ports.
    #[serde(default = "default_syn_rate")]
    pub syn_rate: u32,
    /// Connections a source may open at once before the rate applies.
    #[serde(default = "default_syn_burst")]
    pub syn_burst: u32,
    /// `false`: monitor mode, over-rate SYNs are counted and passed.
    #[serde(default = "default_true")]
    pub enforce: bool,
    /// Sources that are never dropped or limited (addresses or CIDR prefixes).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Prefixes (or addresses) always dropped.
    #[serde(default)]
    pub deny: Vec<String>,
    /// At most one rate-limit event per source per this interval ("1s", "500ms").
    #[serde(default = "default_event_interval")]
    pub event_interval: String,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        Self {
            interface: None,
            mode: DataPlaneMode::default(),
            pin_path: default_pin_path(),
            pin_group: None,
            state_file: default_state_file(),
            protected_ports: Vec::new(),
            syn_rate: default_syn_rate(),
            syn_burst: default_syn_burst(),
            enforce: true,
            allow: Vec::new(),
            deny: Vec::new(),
            event_interval: default_event_interval(),
        }
    }
}

impl EbpfConfig {
    /// Checks everything serde cannot: names, ranges, addresses.
    pub fn validate(&self) -> Result<(), Issue> {
        if self.mode != DataPlaneMode::Off {
            match self.interface.as_deref() {
                None => {
                    return Err(Issue::new(
                        "interface",
                        format!("required when mode = \"{}\"", self.mode),
                    ))
                }
                Some(name) => validate_ifname(name)?,
            }
        }
        if !self.pin_path.is_absolute() {
            return Err(Issue::new(
                "pin_path",
                "must be an absolute path under a bpffs mount",
            ));
        }
        if self.syn_rate > 1_000_000_000 {
            return Err(Issue::new(
                "syn_rate",
                "must be at most 1000000000 per second",
            ));
        }
        if self.syn_rate > 0 && self.syn_burst == 0 {
            return Err(Issue::new(
                "syn_burst",
                "must be at least 1 when syn_rate is set",
            ));
        }
        if self.protected_ports.contains(&0) {
            return Err(Issue::new("protected_ports", "port 0 is not a port"));
        }
        self.allow_nets()?;
        self.deny_targets()?;
        self.event_interval()?;
        Ok(())
    }

    /// The allow list as prefixes (an address is its /32 or /128).
    pub fn allow_nets(&self) -> Result<Vec<IpNet>, Issue> {
        parse_targets("allow", &self.allow).map(|ts| {
            ts.into_iter()
                .map(|t| match t {
                    Target::Addr(a) => IpNet::from(a),
                    Target::Net(n) => n,
                })
                .collect()
        })
    }

    /// The static deny list; an entry covering all of IPv4 or IPv6, or shorter than /8 or
    /// /16, is refused as it is from `gateway deny add`.
    pub fn deny_targets(&self) -> Result<Vec<Target>, Issue> {
        let targets = parse_targets("deny", &self.deny)?;
        for t in &targets {
            crate::deny::check_scope(t).map_err(|e| Issue::new("deny", e.to_string()))?;
        }
        Ok(targets)
    }

    pub fn event_interval(&self) -> Result<Duration, Issue> {
        humantime::parse_duration(&self.event_interval)
            .map_err(|e| Issue::new("event_interval", format!("`{}`: {e}", self.event_interval)))
    }

    /// The kernel's view of this section.
    pub fn to_kernel(&self) -> Result<DataPlaneConfig, Issue> {
        let mut cfg = DataPlaneConfig {
            // `[abuse] ipv6_prefix`'s default; `gateway run` writes the configured one.
            ipv6_prefix: u32::from(super::abuse::AbuseConfig::default().ipv6_prefix),
            ..DataPlaneConfig::default()
        };
        if self.syn_rate > 0 && !self.protected_ports.is_empty() {
            cfg.flags |= config_flag::SYN_LIMIT;
            cfg.syn_cost_ns = 1_000_000_000 / u64::from(self.syn_rate);
            cfg.syn_burst_ns = cfg.syn_cost_ns.saturating_mul(u64::from(self.syn_burst));
            for &p in &self.protected_ports {
                cfg.protect_port(p);
            }
        }
        if self.enforce {
            cfg.flags |= config_flag::ENFORCE;
        }
        cfg.event_interval_ns =
            u64::try_from(self.event_interval()?.as_nanos()).unwrap_or(u64::MAX);
        Ok(cfg)
    }
}

fn parse_targets(key: &'static str, items: &[String]) -> Result<Vec<Target>, Issue> {
    items
        .iter()
        .map(|s| {
            s.parse::<Target>()
                .map_err(|e| Issue::new(key, e.to_string()))
        })
        .collect()
}

fn validate_ifname(name: &str) -> Result<(), Issue> {
    if name.is_empty() || name.len() > MAX_IFNAME {
        return Err(Issue::new(
            "interface",
            format!("`{name}` must be 1 to {MAX_IFNAME} bytes long"),
        ));
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace() || b == b':')
    {
        return Err(Issue::new(
            "interface",
            format!("`{name}` is not a valid interface name"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_config_precomputes_costs() {
        let c = EbpfConfig {
            interface: Some("eth0".into()),
            protected_ports: vec![443, 8080],
            syn_rate: 50,
            syn_burst: 10,
            enforce: false,
            ..EbpfConfig::default()
        };
        let k = c.to_kernel().unwrap();
        assert_eq!(k.syn_cost_ns, 20_000_000);
        assert_eq!(k.syn_burst_ns, 200_000_000);
        assert_eq!(k.flags, config_flag::SYN_LIMIT);
        assert!(k.is_protected(443) && k.is_protected(8080) && !k.is_protected(80));
        assert_eq!(k.event_interval_ns, 1_000_000_000);
    }

    #[test]
    fn no_ports_means_no_limit() {
        let k = EbpfConfig::default().to_kernel().unwrap();
        assert_eq!(k.flags & config_flag::SYN_LIMIT, 0);
        assert_eq!(k.flags & config_flag::ENFORCE, config_flag::ENFORCE);
    }

    #[test]
    fn refuses_bad_values() {
        let base = || EbpfConfig {
            interface: Some("eth0".into()),
            ..EbpfConfig::default()
        };
        let cases = [
            (
                EbpfConfig {
                    interface: None,
                    ..base()
                },
                "interface",
            ),
            (
                EbpfConfig {
                    interface: Some("a-very-long-name0".into()),
                    ..base()
                },
                "interface",
            ),
            (
                EbpfConfig {
                    interface: Some("a/b".into()),
                    ..base()
                },
                "interface",
            ),
            (
                EbpfConfig {
                    pin_path: "rel".into(),
                    ..base()
                },
                "pin_path",
            ),
            (
                EbpfConfig {
                    syn_burst: 0,
                    ..base()
                },
                "syn_burst",
            ),
            (
                EbpfConfig {
                    deny: vec!["::/64".into()],
                    ..base()
                },
                "deny",
            ),
            (
                EbpfConfig {
                    deny: vec!["0.0.0.0/0".into()],
                    ..base()
                },
                "deny",
            ),
            (
                EbpfConfig {
                    protected_ports: vec![0],
                    ..base()
                },
                "protected_ports",
            ),
            (
                EbpfConfig {
                    allow: vec!["x".into()],
                    ..base()
                },
                "allow",
            ),
            (
                EbpfConfig {
                    deny: vec!["1.2.3.4/33".into()],
                    ..base()
                },
                "deny",
            ),
            (
                EbpfConfig {
                    event_interval: "soon".into(),
                    ..base()
                },
                "event_interval",
            ),
        ];
        for (c, key) in cases {
            assert_eq!(c.validate().map_err(|i| i.key), Err(key));
        }
        assert_eq!(base().validate(), Ok(()));
        let off = EbpfConfig {
            interface: None,
            mode: DataPlaneMode::Off,
            ..base()
        };
        assert_eq!(off.validate(), Ok(()));
    }
}
