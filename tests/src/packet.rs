//! Builders for the frames the data-plane tests feed to the kernel program: Ethernet with
//! VLAN tags, IPv4 with options and fragments, IPv6 with extension headers, TCP, UDP.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

/// The destination every crafted packet is addressed to.
pub const DST4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const DST6: Ipv6Addr = Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 1);

/// An Ethernet frame with the given VLAN tags (TPID, VLAN id), outermost first.
pub fn ether(vlans: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 4 * vlans.len() + payload.len());
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // destination MAC
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // source MAC
    for (tpid, vid) in vlans {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&1u32.to_be_bytes());
    t[12] = 5 << 4; // data offset: 5 words
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// IPv4 header (with `options`, padded to 4 bytes, and the raw flags/fragment-offset field)
/// followed by `payload`.
pub fn ipv4_with(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    options: &[u8],
    frag: u16,
    payload: &[u8],
) -> Vec<u8> {
    let opt_len = options.len().div_ceil(4) * 4;
    let hlen = 20 + opt_len;
    let mut h = vec![0u8; hlen];
    h[0] = 0x40 | (hlen / 4) as u8;
    h[2..4].copy_from_slice(&((hlen + payload.len()) as u16).to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    h[20..20 + options.len()].copy_from_slice(options);
    let sum = checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    ipv4_with(src, dst, proto, &[], 0, payload)
}

/// An IPv6 extension header.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    HopByHop,
    Routing,
    DestOpts,
    /// Fragment header; `offset` in 8-byte units.
    Fragment {
        offset: u16,
        more: bool,
    },
}

impl Ext {
    fn proto(self) -> u8 {
        match self {
            Ext::HopByHop => 0,
            Ext::Routing => 43,
            Ext::DestOpts => 60,
            Ext::Fragment { .. } => 44,
        }
    }

    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            // 16 bytes (hdr ext len 1) of PadN options.
            Ext::HopByHop | Ext::DestOpts => {
                let mut e = vec![0u8; 16];
                e[0] = next;
                e[1] = 1;
                e[2] = 1; // PadN
                e[3] = 12;
                e
            }
            Ext::Routing => {
                let mut e = vec![0u8; 8];
                e[0] = next;
                e[2] = 4; // routing type (segment routing), no segments left
                e
            }
            Ext::Fragment { offset, more } => {
                let mut e = vec![0u8; 8];
                e[0] = next;
                let field = (offset << 3) | u16::from(more);
                e[2..4].copy_from_slice(&field.to_be_bytes());
                e[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
                e
            }
        }
    }
}

pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, exts: &[Ext], proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut chain = Vec::new();
    for (i, ext) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map(|e| e.proto()).unwrap_or(proto);
        chain.extend(ext.bytes(next));
    }
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&((chain.len() + payload.len()) as u16).to_be_bytes());
    h[6] = exts.first().map(|e| e.proto()).unwrap_or(proto);
    h[7] = 64;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    h.extend(chain);
    h.extend_from_slice(payload);
    h
}

/// A TCP segment from `src` to [`DST4`]:`dport` in an untagged frame.
pub fn tcp4(src: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    ether(
        &[],
        ETH_P_IP,
        &ipv4(src, DST4, PROTO_TCP, &tcp(40000, dport, flags)),
    )
}

/// A TCP segment from `src` to [`DST6`]:`dport` in an untagged frame.
pub fn tcp6(src: Ipv6Addr, dport: u16, flags: u8) -> Vec<u8> {
    ether(
        &[],
        ETH_P_IPV6,
        &ipv6(src, DST6, &[], PROTO_TCP, &tcp(40000, dport, flags)),
    )
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
