//! Addresses a deny entry must not cover: the gateway's own interface addresses, its
//! upstream servers, the hosts its JWKS URLs resolve to, trusted proxies, and the allow list.
//! Banning one of them would let anyone who can forge a signal cut the gateway off from what
//! it depends on, so automatic bans skip them and a manual deny needs `--force`.
//!
//! Everything is compared in the kernel's key space (128 bits, IPv4 as `::ffff:a.b.c.d`), the
//! space the deny maps match in: there `::/64` covers every IPv4 address, and a check done on
//! `IpAddr`s would miss it.

use crate::ebpf::addr::{key_range, Target};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Why a target is refused whatever `--force` says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TooBroad {
    #[error("{0} covers all of IPv4 (the kernel keys IPv4 addresses as ::ffff:a.b.c.d); refused even with --force")]
    AllOfIpv4(Target),
    #[error("{0} covers all of IPv6; refused even with --force")]
    AllOfIpv6(Target),
    #[error("{target} is shorter than /{min}; refused even with --force")]
    Shorter { target: Target, min: u8 },
}

/// Shortest IPv4 prefix a deny entry may have.
pub const MIN_V4_PREFIX: u8 = 8;
/// Shortest IPv6 prefix a deny entry may have.
pub const MIN_V6_PREFIX: u16 = 16;

/// `::ffff:0:0/96`, where IPv4 lives among the keys.
const V4_MAPPED: u128 = 0xffff_0000_0000;

/// Refuses a target that covers all of IPv4 or IPv6, or that is shorter than /8 (IPv4) or
/// /16 (IPv6), including the IPv6 prefixes (`::/64`, `::ffff:0:0/96`, ...) that cover the
/// IPv4-mapped keys.
pub fn check_scope(t: &Target) -> Result<(), TooBroad> {
    let (first, last, len) = key_range(t);
    if first <= V4_MAPPED && last >= V4_MAPPED | 0xffff_ffff {
        return Err(TooBroad::AllOfIpv4(*t));
    }
    match t {
        Target::Addr(_) => Ok(()),
        Target::Net(IpNet::V6(_)) if len == 0 => Err(TooBroad::AllOfIpv6(*t)),
        Target::Net(IpNet::V6(_)) if u16::from(len) < MIN_V6_PREFIX => Err(TooBroad::Shorter {
            target: *t,
            min: MIN_V6_PREFIX as u8,
        }),
        // Inside the mapped range an IPv6 prefix is an IPv4 one, 96 bits longer.
        Target::Net(_) if (first >> 32) == (V4_MAPPED >> 32) && len < 96 + MIN_V4_PREFIX => {
            Err(TooBroad::Shorter {
                target: *t,
                min: MIN_V4_PREFIX,
            })
        }
        Target::Net(_) => Ok(()),
    }
}

/// One protected address and where it came from (for the refusal message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub addr: IpAddr,
    pub what: String,
}

impl std::fmt::Display for Hit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.addr, self.what)
    }
}

/// The protected addresses, from several sources. Each source is one call to
/// [`Protected::add`] (or [`Protected::add_net`] for the allow list), so another source is
/// one more line where the set is built.
#[derive(Debug, Clone, Default)]
pub struct Protected {
    /// Exact addresses by key, with what they are.
    addrs: BTreeMap<u128, (IpAddr, String)>,
    /// Prefixes (the allow list): few, set by the operator.
    nets: Vec<(Target, String)>,
}

impl Protected {
    pub fn new() -> Self {
        Self::default()
    }

    /// Protects each of `addrs`, described as `what` (e.g. `upstream api`).
    pub fn add(&mut self, what: &str, addrs: impl IntoIterator<Item = IpAddr>) -> &mut Self {
        for a in addrs {
            let Ok(t) = a.to_string().parse::<Target>() else {
                continue;
            };
            let (k, _, _) = key_range(&t);
            let a = match t {
                Target::Addr(a) => a,
                Target::Net(n) => n.addr(),
            };
            self.addrs.entry(k).or_insert_with(|| (a, what.to_string()));
        }
        self
    }

    /// Protects whole prefixes (the allow list: the operator said "never these").
    pub fn add_net(&mut self, what: &str, nets: impl IntoIterator<Item = IpNet>) -> &mut Self {
        for n in nets {
            let t = match n.prefix_len() == n.max_prefix_len() {
                true => Target::Addr(n.addr()),
                false => Target::Net(n.trunc()),
            };
            self.nets.push((t, what.to_string()));
        }
        self
    }

    /// Adds every address and prefix of `other`.
    pub fn merge(&mut self, other: &Protected) -> &mut Self {
        for (k, v) in &other.addrs {
            self.addrs.entry(*k).or_insert_with(|| v.clone());
        }
        self.nets.extend(other.nets.iter().cloned());
        self
    }

    /// Whether `target` lies entirely inside one of the prefixes (an entry there could
    /// never drop anything: the allow list wins in the kernel).
    pub fn inside_a_net(&self, target: &Target) -> bool {
        let (first, last, _) = key_range(target);
        self.nets.iter().any(|(n, _)| {
            let (f, l, _) = key_range(n);
            f <= first && last <= l
        })
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty() && self.nets.is_empty()
    }

    /// The first protected address (or allow-list prefix) that `target` covers or overlaps;
    /// one range query over the addresses, however many there are.
    pub fn covered_by(&self, target: &Target) -> Option<Hit> {
        let (first, last, _) = key_range(target);
        if let Some((_, (addr, what))) = self.addrs.range(first..=last).next() {
            return Some(Hit {
                addr: *addr,
                what: what.clone(),
            });
        }
        self.nets.iter().find_map(|(n, what)| {
            let (f, l, _) = key_range(n);
            (f <= last && first <= l).then(|| Hit {
                addr: match n {
                    Target::Addr(a) => *a,
                    Target::Net(n) => n.network(),
                },
                what: format!("{what} {n}"),
            })
        })
    }

    /// The addresses of this host's interfaces (every interface, at the time of the call).
    pub fn interface_addrs() -> std::io::Result<Vec<IpAddr>> {
        interfaces::addrs()
    }

    /// What a gateway with this config depends on: its interfaces' addresses, its upstream
    /// servers, and the addresses its JWKS URLs resolve to now (a name that does not
    /// resolve is logged and left out). The allow list comes in through
    /// [`super::DenyStore::new`]. Another source is one more `add` here.
    pub async fn from_config(config: &crate::config::Plan) -> Self {
        let mut p = Protected::new();
        match Self::interface_addrs() {
            Ok(addrs) => {
                p.add("an address of this host", addrs);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list interface addresses; they are not protected from bans")
            }
        }
        if let Some(listen) = &config.listen {
            match listen.trusted_proxy_nets() {
                Ok(nets) => {
                    p.add_net("a trusted proxy", nets);
                }
                // The config check refuses these; nothing to protect from a bad entry.
                Err(e) => tracing::warn!(error = %e.message, "trusted proxies not protected"),
            }
        }
        for u in config.upstreams() {
            p.add(
                &format!("upstream {}", u.name),
                u.servers.iter().map(|s| s.ip()),
            );
        }
        let urls = config
            .jwt()
            .into_iter()
            .flat_map(|j| &j.keys)
            .filter_map(|k| k.jwks_url.as_deref());
        for url in urls {
            let Some(authority) = url
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| Some(format!("{}:{}", u.host()?, u.port_u16().unwrap_or(443))))
            else {
                continue;
            };
            match tokio::net::lookup_host(authority).await {
                Ok(addrs) => {
                    p.add(&format!("JWKS {url}"), addrs.map(|a| a.ip()));
                }
                Err(e) => {
                    tracing::warn!(url, error = %e, "JWKS host does not resolve; its addresses are not protected from bans")
                }
            }
        }
        p
    }
}

/// `getifaddrs(3)`: the one way to list every interface address without netlink.
#[allow(unsafe_code)]
mod interfaces {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    pub fn addrs() -> std::io::Result<Vec<IpAddr>> {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs writes a list head we own and free below.
        if unsafe { libc::getifaddrs(&mut head) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut cur = head;
        while !cur.is_null() {
            // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
            let ifa = unsafe { &*cur };
            if !ifa.ifa_addr.is_null() {
                // SAFETY: a non-null ifa_addr points at a sockaddr whose family tells its type.
                let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
                if family == libc::AF_INET {
                    // SAFETY: AF_INET: the sockaddr is a sockaddr_in.
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))));
                } else if family == libc::AF_INET6 {
                    // SAFETY: AF_INET6: the sockaddr is a sockaddr_in6.
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                }
            }
            cur = ifa.ifa_next;
        }
        // SAFETY: the head getifaddrs gave us, freed once.
        unsafe { libc::freeifaddrs(head) };
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Target {
        s.parse().unwrap()
    }

    #[test]
    fn too_broad_targets_are_refused_in_every_spelling() {
        for s in [
            "0.0.0.0/0",
            "::/0",
            "::/64",
            "::/80",
            "::fff0:0:0/92",
            "::/16",
            "0.0.0.0/1",
        ] {
            assert!(check_scope(&t(s)).is_err(), "{s}");
        }
        assert!(matches!(
            check_scope(&t("::/0")),
            Err(TooBroad::AllOfIpv4(_))
        ));
        assert!(matches!(
            check_scope(&t("10.0.0.0/7")),
            Err(TooBroad::Shorter { min: 8, .. })
        ));
        assert!(matches!(
            check_scope(&t("2000::/15")),
            Err(TooBroad::Shorter { min: 16, .. })
        ));
        // `::ffff:0:0/96` is IPv4 0.0.0.0/0 written as IPv6: the parser refuses it.
        assert!("::ffff:0:0/96".parse::<Target>().is_err());
        // A mapped prefix built directly (not through the parser) is still judged as IPv4.
        let mapped: IpNet = "::ffff:10.0.0.0/100".parse().unwrap();
        assert!(matches!(
            check_scope(&Target::Net(mapped)),
            Err(TooBroad::Shorter { min: 8, .. })
        ));
        let mapped8: IpNet = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(check_scope(&Target::Net(mapped8)), Ok(()));
        for s in [
            "10.0.0.0/8",
            "2001::/16",
            "2001:db8::/64",
            "192.0.2.1",
            "::1",
            "1::/16",
        ] {
            assert_eq!(check_scope(&t(s)), Ok(()), "{s}");
        }
    }

    #[test]
    fn protected_addresses_are_found_under_any_covering_target() {
        let mut p = Protected::new();
        p.add("upstream api", ["10.1.2.3".parse().unwrap()])
            .add(
                "JWKS idp.example",
                [
                    "2001:db8:5::7".parse().unwrap(),
                    "::ffff:192.0.2.44".parse().unwrap(),
                ],
            )
            .add_net("allow list", ["198.51.100.0/24".parse().unwrap()]);
        let hit = |s: &str| p.covered_by(&t(s)).map(|h| h.to_string());
        assert_eq!(hit("10.1.2.3").as_deref(), Some("10.1.2.3 (upstream api)"));
        assert!(hit("10.1.0.0/16").is_some());
        assert!(hit("10.0.0.0/8").is_some());
        assert_eq!(hit("10.1.2.4"), None);
        assert_eq!(hit("10.1.3.0/24"), None);
        // IPv4-mapped spelling and the mapped key space.
        assert!(
            hit("192.0.2.44").is_some(),
            "mapped input protects the IPv4 address"
        );
        assert!(hit("::/64").is_some(), "::/64 covers every IPv4 key");
        assert!(hit("2001:db8:5::/48").is_some());
        assert_eq!(hit("2001:db8:6::/48"), None);
        // The allow list: overlapping in either direction.
        assert!(hit("198.51.100.7").is_some());
        assert!(hit("198.51.0.0/16").is_some());
        assert_eq!(hit("198.51.101.0/24"), None);
    }

    #[test]
    fn interface_addresses_include_loopback() {
        let addrs = Protected::interface_addrs().unwrap();
        assert!(addrs.contains(&IpAddr::from([127, 0, 0, 1])), "{addrs:?}");
    }
}
