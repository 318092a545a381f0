//! A full kernel deny map (issue 12, item 4): the automatic ban closest to expiry makes room,
//! never a manual one. Real pinned maps in a private bpffs, filled to their capacity.

use gateway::deny::DenyStore;
use gateway::ebpf::{loader, PinnedMaps, Target};
use gateway_common::limits;
use gateway_tests::netns::Bpffs;
use gateway_tests::privileged;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

fn addr(i: u32) -> Target {
    Target::Addr(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
}

#[test]
fn a_full_deny_map_evicts_the_automatic_ban_closest_to_expiry() {
    let name = "a_full_deny_map_evicts";
    if !privileged::require(name) {
        return;
    }
    let fs = Bpffs::new(&format!("evict-{}", std::process::id())).expect("bpffs");
    let _ebpf = loader::load_object(&fs.pin_path()).expect("load");
    let store = DenyStore::new(
        Some(PinnedMaps::open(&fs.pin_path()).expect("maps")),
        None,
        Vec::new(),
    );
    let cap = limits::MAX_DENY;
    let manual = 16;
    // Manual entries expire first of all, yet must never be evicted.
    for i in 0..manual {
        store
            .add_manual(addr(i), Some(Duration::from_secs(60)), "m", false)
            .expect("manual");
    }
    // The automatic ones: the one at `closest` expires first.
    let closest = manual + 777;
    for i in manual..cap {
        let ttl = if i == closest {
            120
        } else {
            3600 + u64::from(i)
        };
        store
            .add(
                addr(i),
                Some(Duration::from_secs(ttl)),
                "auth_failures",
                "a",
                1,
            )
            .expect("automatic");
    }
    assert_eq!(store.evictions(), 0);
    // The map is full: one more automatic ban evicts `closest`.
    store
        .add(addr(cap), Some(Duration::from_secs(600)), "rate", "r", 1)
        .expect("a ban into a full map");
    assert_eq!(store.evictions(), 1);
    let list = PinnedMaps::open(&fs.pin_path()).expect("maps");
    assert!(list.find_deny(&addr(closest)).unwrap().is_none(), "evicted");
    assert!(
        list.find_deny(&addr(cap)).unwrap().is_some(),
        "the new ban is in"
    );
    assert!(!store.is_denied(match addr(closest) {
        Target::Addr(a) => a,
        Target::Net(n) => n.addr(),
    }));
    store
        .add_manual(addr(cap + 1), None, "m", false)
        .expect("a manual entry into a full map");
    assert_eq!(store.evictions(), 2);
    // The next closest to expiry was the 10-minute ban just added.
    assert!(
        list.find_deny(&addr(cap)).unwrap().is_none(),
        "next closest evicted"
    );
    assert!(list.find_deny(&addr(manual)).unwrap().is_some());
    for i in 0..manual {
        assert!(
            list.find_deny(&addr(i)).unwrap().is_some(),
            "manual {i} kept"
        );
    }
    assert_eq!(store.len(), cap as usize);
}
