//! Packet parsing for the data plane: Ethernet (up to two VLAN tags), IPv4 (with options),
//! IPv6 (skipping the common extension headers), TCP and UDP.
//!
//! Every read is bounds-checked against `data_end` right before it happens, in the shape the
//! verifier understands (`data + off + N > data_end`), and every offset is bounded by a
//! constant so variable-offset packet access stays provably in range.

use gateway_common::{limits, SourceKey};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

/// Beyond this offset we stop looking for a transport header (the packet still passes).
const MAX_L4_OFFSET: usize = 512;

/// What the data plane needs to know about an IP packet.
pub struct Packet {
    /// The source address as a [`SourceKey`], held as two words (the key's bytes in memory
    /// order) and read from the packet with word loads: built byte by byte, the compiler kept
    /// the key as sixteen separately spilled bytes along every parse path, and the stack
    /// traffic cost more than the parse itself. [`Packet::source_key`] gives the key.
    pub src: [u64; 2],
    pub ipv4: bool,
    /// IPv4 MF flag or fragment offset set, or an IPv6 fragment header.
    pub fragment: bool,
    /// The transport header was expected but cut short or invalid.
    pub l4_truncated: bool,
    /// TCP SYN without ACK: a new connection attempt.
    pub syn: bool,
    /// TCP/UDP destination port, 0 when unknown.
    pub dst_port: u16,
}

impl Packet {
    #[inline(always)]
    pub fn source_key(&self) -> SourceKey {
        // SAFETY: two u64 and sixteen bytes have the same size, and any bits are valid bytes.
        unsafe { core::mem::transmute::<[u64; 2], SourceKey>(self.src) }
    }
}

/// The second word of an IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`), given the address
/// as loaded from the packet (network order in memory): bytes `0 0 ff ff a b c d`.
#[inline(always)]
fn mapped_v4(addr: u32) -> u64 {
    let marker = u64::from_ne_bytes([0, 0, 0xff, 0xff, 0, 0, 0, 0]);
    let addr = u64::from(addr);
    if cfg!(target_endian = "little") {
        marker | addr << 32
    } else {
        marker | addr
    }
}

pub enum Parsed {
    /// Not IPv4 or IPv6 (ARP, LLDP, a third VLAN tag, ...).
    NonIp,
    /// Truncated or invalid link or network header.
    Malformed,
    Ip(Packet),
}

/// Reads an integer (`u32`, `u64`) at `off` as it lies in memory, or `None` when the packet
/// is shorter.
#[inline(always)]
fn load_word<T: Copy>(data: usize, data_end: usize, off: usize) -> Option<T> {
    if data + off + core::mem::size_of::<T>() > data_end {
        return None;
    }
    // SAFETY: the range [data + off, data + off + size_of::<T>()) was just checked to lie in
    // the packet; callers only use plain integer types, for which any bits are valid.
    Some(unsafe { core::ptr::read_unaligned((data + off) as *const T) })
}

/// Reads `N` bytes at `off`, or `None` when the packet is shorter.
#[inline(always)]
fn load<const N: usize>(data: usize, data_end: usize, off: usize) -> Option<[u8; N]> {
    if data + off + N > data_end {
        return None;
    }
    // SAFETY: the range [data + off, data + off + N) was just checked to lie in the packet.
    Some(unsafe { core::ptr::read_unaligned((data + off) as *const [u8; N]) })
}

#[inline(always)]
fn be16(hi: u8, lo: u8) -> u16 {
    (u16::from(hi) << 8) | u16::from(lo)
}

#[inline(always)]
fn is_vlan(proto: u16) -> bool {
    proto == ETH_P_8021Q || proto == ETH_P_8021AD
}

#[inline(always)]
pub fn parse(data: usize, data_end: usize) -> Parsed {
    let Some(eth) = load::<ETH_HLEN>(data, data_end, 0) else {
        return Parsed::Malformed;
    };
    let mut proto = be16(eth[12], eth[13]);
    let mut off = ETH_HLEN;
    // Up to two tags (802.1Q, or QinQ 802.1ad + 802.1Q).
    if is_vlan(proto) {
        let Some(tag) = load::<4>(data, data_end, off) else {
            return Parsed::Malformed;
        };
        proto = be16(tag[2], tag[3]);
        off += 4;
        if is_vlan(proto) {
            let Some(tag) = load::<4>(data, data_end, off) else {
                return Parsed::Malformed;
            };
            proto = be16(tag[2], tag[3]);
            off += 4;
        }
    }
    match proto {
        ETH_P_IP => ipv4(data, data_end, off),
        ETH_P_IPV6 => ipv6(data, data_end, off),
        _ => Parsed::NonIp,
    }
}

#[inline(always)]
fn ipv4(data: usize, data_end: usize, off: usize) -> Parsed {
    let Some(h) = load::<20>(data, data_end, off) else {
        return Parsed::Malformed;
    };
    let ihl = usize::from(h[0] & 0x0f);
    if h[0] >> 4 != 4 || ihl < 5 {
        return Parsed::Malformed;
    }
    let header_len = ihl * 4;
    if data + off + header_len > data_end {
        return Parsed::Malformed;
    }
    let Some(saddr) = load_word::<u32>(data, data_end, off + 12) else {
        return Parsed::Malformed;
    };
    let src = [0, mapped_v4(saddr)];
    let frag = be16(h[6], h[7]);
    let mut pkt = Packet {
        src,
        ipv4: true,
        fragment: frag & 0x3fff != 0,
        l4_truncated: false,
        syn: false,
        dst_port: 0,
    };
    // Only the first fragment carries the transport header.
    if frag & 0x1fff == 0 {
        transport(data, data_end, off + header_len, h[9], &mut pkt);
    }
    Parsed::Ip(pkt)
}

#[inline(always)]
fn ipv6(data: usize, data_end: usize, off: usize) -> Parsed {
    let Some(h) = load::<40>(data, data_end, off) else {
        return Parsed::Malformed;
    };
    if h[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let (Some(hi), Some(lo)) = (
        load_word::<u64>(data, data_end, off + 8),
        load_word::<u64>(data, data_end, off + 16),
    ) else {
        return Parsed::Malformed;
    };
    let src = [hi, lo];
    let mut pkt = Packet {
        src,
        ipv4: false,
        fragment: false,
        l4_truncated: false,
        syn: false,
        dst_port: 0,
    };
    let mut next = h[6];
    let mut l4 = off + 40;
    let mut found = false;
    for _ in 0..limits::MAX_IPV6_EXT_HEADERS {
        let step = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let Some(e) = load::<2>(data, data_end, l4) else {
                    pkt.l4_truncated = true;
                    return Parsed::Ip(pkt);
                };
                next = e[0];
                (usize::from(e[1]) + 1) * 8
            }
            IPPROTO_AH => {
                let Some(e) = load::<2>(data, data_end, l4) else {
                    pkt.l4_truncated = true;
                    return Parsed::Ip(pkt);
                };
                next = e[0];
                (usize::from(e[1]) + 2) * 4
            }
            IPPROTO_FRAGMENT => {
                let Some(e) = load::<8>(data, data_end, l4) else {
                    pkt.l4_truncated = true;
                    return Parsed::Ip(pkt);
                };
                pkt.fragment = true;
                if be16(e[2], e[3]) & 0xfff8 != 0 {
                    // Not the first fragment: no transport header here.
                    return Parsed::Ip(pkt);
                }
                next = e[0];
                8
            }
            _ => {
                found = true;
                break;
            }
        };
        l4 += step;
        if l4 > MAX_L4_OFFSET {
            return Parsed::Ip(pkt);
        }
    }
    // More extension headers than we skip: pass without transport information.
    if found {
        transport(data, data_end, l4, next, &mut pkt);
    }
    Parsed::Ip(pkt)
}

#[inline(always)]
fn transport(data: usize, data_end: usize, off: usize, proto: u8, pkt: &mut Packet) {
    if off > MAX_L4_OFFSET {
        return;
    }
    match proto {
        IPPROTO_TCP => match load::<20>(data, data_end, off) {
            Some(t) if t[12] >> 4 >= 5 => {
                pkt.dst_port = be16(t[2], t[3]);
                pkt.syn = t[13] & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
            }
            _ => pkt.l4_truncated = true,
        },
        IPPROTO_UDP => match load::<8>(data, data_end, off) {
            Some(u) => pkt.dst_port = be16(u[2], u[3]),
            None => pkt.l4_truncated = true,
        },
        _ => {}
    }
}
