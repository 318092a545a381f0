//! Reference programs for the data-plane benchmark, run through the same test-run harness:
//! `floor_pass` only returns XDP_PASS (the harness's own cost), `floor_lookup` does nothing
//! but one hash-map lookup keyed by 16 packet bytes (the cost of any per-source state).
//! Not loaded by the gateway.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
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
pub fn floor_lookup(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + 30 + 16 > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the 16 bytes at offset 30 were just checked to lie in the packet.
    let key = unsafe { core::ptr::read_unaligned((data + 30) as *const [u8; 16]) };
    if let Some(v) = FLOOR_MAP.get_ptr_mut(key) {
        // SAFETY: a value pointer from a successful lookup, valid for this program run.
        unsafe { *v += 1 };
    }
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
