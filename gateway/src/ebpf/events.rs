//! Rate-limit trips reported by the kernel through the `EVENTS` ring buffer.

use super::addr;
use aya::maps::{MapData, RingBuf};
use gateway_common::RateLimitEvent;
use std::mem::size_of;
use tokio::io::unix::AsyncFd;

/// Decodes one ring-buffer record; `None` when it is too short to be ours.
pub fn decode(bytes: &[u8]) -> Option<RateLimitEvent> {
    if bytes.len() < size_of::<RateLimitEvent>() {
        return None;
    }
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_ne_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
    };
    Some(RateLimitEvent {
        addr: bytes.get(0..16)?.try_into().ok()?,
        ts_ns: u64_at(16)?,
        limited_total: u64_at(24)?,
        dst_port: u16::from_ne_bytes(bytes.get(32..34)?.try_into().ok()?),
        enforced: *bytes.get(34)?,
        _pad: [0; 5],
    })
}

/// Reads events until the ring buffer fails, handing each to `on_event`.
#[allow(unsafe_code)]
pub async fn consume(
    ring: RingBuf<MapData>,
    mut on_event: impl FnMut(RateLimitEvent),
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map fd (an `OwnedFd` inside `MapData`) for as long as
    // the `AsyncFd` owns the ring buffer, and nothing closes or replaces it meanwhile.
    let mut fd = unsafe { AsyncFd::register(ring)? };
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if let Some(ev) = decode(&item) {
                on_event(ev);
            }
        }
        guard.clear_ready();
    }
}

/// The default handler: one structured log line per trip.
pub fn log_event(ev: RateLimitEvent) {
    tracing::warn!(
        source = %addr::addr_of(&ev.addr),
        dst_port = ev.dst_port,
        limited_total = ev.limited_total,
        enforced = ev.enforced != 0,
        "SYN rate limit tripped"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_kernel_layout() {
        let mut b = vec![0u8; size_of::<RateLimitEvent>()];
        b[..16].copy_from_slice(&addr::key_of("10.0.0.9".parse().unwrap()));
        b[16..24].copy_from_slice(&7u64.to_ne_bytes());
        b[24..32].copy_from_slice(&3u64.to_ne_bytes());
        b[32..34].copy_from_slice(&443u16.to_ne_bytes());
        b[34] = 1;
        let ev = decode(&b).unwrap();
        assert_eq!(addr::addr_of(&ev.addr).to_string(), "10.0.0.9");
        assert_eq!(
            (ev.ts_ns, ev.limited_total, ev.dst_port, ev.enforced),
            (7, 3, 443, 1)
        );
        assert!(decode(&b[..20]).is_none());
    }
}
