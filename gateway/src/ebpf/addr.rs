//! Source addresses and prefixes as the maps key them: 16 bytes, IPv4 mapped as
//! `::ffff:a.b.c.d`, so one map serves both families.

use gateway_common::SourceKey;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// Offset of an IPv4 prefix length inside the mapped IPv6 space.
const V4_MAPPED_BITS: u8 = 96;

/// The map key of an address.
pub fn key_of(addr: IpAddr) -> SourceKey {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address a map key stands for (IPv4-mapped keys come back as IPv4).
pub fn addr_of(key: &SourceKey) -> IpAddr {
    let v6 = Ipv6Addr::from(*key);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// What `deny add`/`del` and the config's `allow`/`deny` lists accept: one address, or a
/// prefix. A full-length prefix (`/32`, `/128`) is an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Addr(IpAddr),
    Net(IpNet),
}

/// Why an address or prefix was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TargetError {
    #[error("`{0}` is not an IP address or CIDR prefix")]
    NotAnAddress(String),
    #[error("prefix length {len} is longer than {max} in `{input}`")]
    PrefixTooLong { input: String, len: u32, max: u8 },
    #[error("`{input}` has host bits set; did you mean {network}?")]
    HostBitsSet { input: String, network: IpNet },
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let Some((addr, len)) = s.split_once('/') else {
            return IpAddr::from_str(s)
                .map(|a| Target::Addr(canonical(a)))
                .map_err(|_| TargetError::NotAnAddress(s.to_string()));
        };
        let addr = IpAddr::from_str(addr).map_err(|_| TargetError::NotAnAddress(s.to_string()))?;
        let addr = canonical(addr);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u32 = len
            .parse()
            .map_err(|_| TargetError::NotAnAddress(s.to_string()))?;
        if len > u32::from(max) {
            return Err(TargetError::PrefixTooLong {
                input: s.to_string(),
                len,
                max,
            });
        }
        let len = len as u8; // <= 128 checked above
        if len == max {
            return Ok(Target::Addr(addr));
        }
        let net = IpNet::new(addr, len).map_err(|_| TargetError::NotAnAddress(s.to_string()))?;
        if net.trunc() != net {
            return Err(TargetError::HostBitsSet {
                input: s.to_string(),
                network: net.trunc(),
            });
        }
        Ok(Target::Net(net))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Addr(a) => write!(f, "{a}"),
            Target::Net(n) => write!(f, "{n}"),
        }
    }
}

/// IPv4-mapped IPv6 addresses are IPv4 addresses: the kernel keys them the same way.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// An address as a number in the kernel's key space (IPv4 mapped).
pub fn key_u128(addr: IpAddr) -> u128 {
    u128::from_be_bytes(key_of(addr))
}

/// The first and last key a target covers, and its prefix length, in the kernel's 128-bit
/// key space (where `::/64` covers every IPv4 address, as the maps match).
pub fn key_range(t: &Target) -> (u128, u128, u8) {
    let (net, len) = match t {
        Target::Addr(a) => {
            let k = key_u128(*a);
            return (k, k, 128);
        }
        Target::Net(IpNet::V4(n)) => (key_u128(IpAddr::V4(n.network())), 96 + n.prefix_len()),
        Target::Net(IpNet::V6(n)) => (u128::from(n.network()), n.prefix_len()),
    };
    let host = if len == 0 {
        u128::MAX
    } else {
        u128::MAX >> len
    };
    (net & !host, net | host, len)
}

/// The LPM-trie key (prefix length in the 128-bit space, key bytes) of a prefix.
pub fn lpm_of(net: &IpNet) -> (u32, SourceKey) {
    match net {
        IpNet::V4(n) => (
            u32::from(V4_MAPPED_BITS + n.prefix_len()),
            key_of(IpAddr::V4(n.network())),
        ),
        IpNet::V6(n) => (u32::from(n.prefix_len()), key_of(IpAddr::V6(n.network()))),
    }
}

/// The prefix an LPM-trie key stands for; `None` for keys no one of ours would write.
pub fn net_of(prefix_len: u32, key: &SourceKey) -> Option<IpNet> {
    match addr_of(key) {
        IpAddr::V4(v4) if prefix_len >= u32::from(V4_MAPPED_BITS) => {
            let len = u8::try_from(prefix_len - u32::from(V4_MAPPED_BITS)).ok()?;
            IpNet::new(IpAddr::V4(v4), len).ok()
        }
        _ => {
            let len = u8::try_from(prefix_len).ok()?;
            IpNet::new(IpAddr::V6(Ipv6Addr::from(*key)), len).ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_is_mapped() {
        let k = key_of("192.0.2.7".parse().unwrap());
        assert_eq!(&k[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(&k[12..], &[192, 0, 2, 7]);
        assert_eq!(addr_of(&k), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn targets_parse_and_refuse() {
        assert_eq!(
            "10.1.2.3".parse::<Target>(),
            Ok(Target::Addr("10.1.2.3".parse().unwrap()))
        );
        assert_eq!(
            "10.1.2.3/32".parse::<Target>(),
            Ok(Target::Addr("10.1.2.3".parse().unwrap()))
        );
        assert_eq!(
            "::ffff:10.1.2.3".parse::<Target>(),
            Ok(Target::Addr("10.1.2.3".parse().unwrap()))
        );
        assert!(matches!("10.0.0.0/8".parse::<Target>(), Ok(Target::Net(_))));
        assert!(matches!(
            "2001:db8::/32".parse::<Target>(),
            Ok(Target::Net(_))
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<Target>(),
            Err(TargetError::PrefixTooLong { .. })
        ));
        assert!(matches!(
            "2001:db8::/129".parse::<Target>(),
            Err(TargetError::PrefixTooLong { .. })
        ));
        assert!(matches!(
            "10.0.0.1/8".parse::<Target>(),
            Err(TargetError::HostBitsSet { .. })
        ));
        for bad in [
            "",
            "foo",
            "10.0.0",
            "10.0.0.0/x",
            "10.0.0.0/-1",
            "1.2.3.4/ 8",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }

    #[test]
    fn lpm_round_trip() {
        for s in [
            "10.0.0.0/8",
            "192.0.2.0/24",
            "2001:db8::/32",
            "0.0.0.0/0",
            "::/0",
        ] {
            let Target::Net(net) = s.parse::<Target>().unwrap() else {
                panic!("{s}")
            };
            let (len, key) = lpm_of(&net);
            assert_eq!(net_of(len, &key), Some(net), "{s}");
        }
        let (len, _) = lpm_of(&"10.0.0.0/8".parse().unwrap());
        assert_eq!(len, 104);
    }
}
