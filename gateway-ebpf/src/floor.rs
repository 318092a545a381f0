//! Reference programs for the data-plane benchmarks, not loaded by the gateway.
//!
//! Through the test-run harness: `floor_pass` only returns XDP_PASS (the harness's own
//! cost), `floor_lookup` does nothing but one hash-map lookup keyed by 16 packet bytes (the
//! cost of any per-source state). On the live-frames path: `floor_drop` only returns
//! XDP_DROP (the least a receiving program can cost), `floor_read_drop` reads the 16 bytes
//! a lookup would be keyed by and drops (what touching the frame costs, before any map),
//! `floor_lookup_drop` does the one lookup and drops (the least a per-source drop can
//! cost), and `live_gen` is the traffic
//! generator, run with `BPF_F_TEST_XDP_LIVE_FRAMES`, redirecting every frame out of the
//! interface whose index the loader writes into `LIVE_GEN_IFINDEX`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_redirect,
    macros::{map, xdp},
    maps::HashMap,
    programs::XdpContext,
};

#[map]
static FLOOR_MAP: HashMap<[u8; 16], u64> = HashMap::with_max_entries(1024, 0);

#[xdp]
pub fn floor_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn floor_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// The interface `live_gen` sends to; set at load time (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static LIVE_GEN_IFINDEX: u32 = 0;

#[xdp]
pub fn live_gen(_ctx: XdpContext) -> u32 {
    // SAFETY: a read of a global the loader initialised; volatile so that the compiler does
    // not fold in the 0 it was declared with.
    let ifindex = unsafe { core::ptr::read_volatile(&LIVE_GEN_IFINDEX) };
    // SAFETY: the helper only queues the frame for the interface; flags must be 0.
    unsafe { bpf_redirect(ifindex, 0) as u32 }
}

#[xdp]
pub fn floor_lookup(ctx: XdpContext) -> u32 {
    lookup(&ctx);
    xdp_action::XDP_PASS
}

/// Reads the lookup's 16 key bytes, then XDP_DROP: on the live-frames path, what a drop
/// that looks at the frame at all costs beyond `floor_drop`, with no map involved.
#[xdp]
pub fn floor_read_drop(ctx: XdpContext) -> u32 {
    let _ = core::hint::black_box(key(&ctx));
    xdp_action::XDP_DROP
}

/// The same lookup, then XDP_DROP: on the live-frames path, the least a drop decided per
/// source can cost (it has to read the packet, which `floor_drop` never touches, and look
/// something up by it).
#[xdp]
pub fn floor_lookup_drop(ctx: XdpContext) -> u32 {
    lookup(&ctx);
    xdp_action::XDP_DROP
}

/// The 16 packet bytes at offset 30, if the frame is that long.
#[inline(always)]
fn key(ctx: &XdpContext) -> Option<[u8; 16]> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + 30 + 16 > end {
        return None;
    }
    // SAFETY: the 16 bytes at offset 30 were just checked to lie in the packet.
    Some(unsafe { core::ptr::read_unaligned((data + 30) as *const [u8; 16]) })
}

/// One hash-map lookup keyed by the 16 packet bytes at offset 30, counting a hit.
#[inline(always)]
fn lookup(ctx: &XdpContext) {
    let Some(key) = key(ctx) else {
        return;
    };
    if let Some(v) = FLOOR_MAP.get_ptr_mut(key) {
        // SAFETY: a value pointer from a successful lookup, valid for this program run.
        unsafe { *v += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
