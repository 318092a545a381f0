//! The kernel programs' own log lines (aya-log), through `BPF_PROG_TEST_RUN` on the real
//! object with its maps pinned in a private bpffs: a denied source's first drop is logged
//! once, a flood of malformed packets yields a bounded number of samples, and with the level
//! off nothing is logged at all.

mod kernel;

use gateway::ebpf::kernel_log::{self, KernelLevel};
use gateway::ebpf::loader;
use gateway_tests::packet::{self, ETH_P_IP, SYN};
use kernel::{Loaded, XDP_DROP, XDP_PASS};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Keeps every record aya-log hands over.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<(log::Level, String)>>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0
            .lock()
            .unwrap()
            .push((record.level(), record.args().to_string()));
    }
    fn flush(&self) {}
}

struct Harness {
    k: Loaded,
    log: kernel_log::KernelLogger<Capture>,
    lines: Capture,
}

fn harness(name: &str, level: KernelLevel) -> Option<Harness> {
    let mut k = kernel::load("kl", name, |pin| loader::load_object_with_log(pin, level))?;
    let lines = Capture::default();
    let log = kernel_log::take(&mut k.ebpf, lines.clone()).expect("the object has AYA_LOGS");
    Some(Harness { k, log, lines })
}

impl Harness {
    fn xdp(&self, pkt: &[u8]) -> u32 {
        kernel::xdp(&self.k.ebpf, pkt)
    }

    fn deny(&mut self, target: &str) {
        kernel::deny(&mut self.k.maps, target, 0);
    }

    /// Reads the ring buffer; the lines logged so far containing `needle`.
    fn lines_with(&mut self, needle: &str) -> Vec<(log::Level, String)> {
        self.log.flush();
        self.lines
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.contains(needle))
            .cloned()
            .collect()
    }
}

/// An Ethernet frame announcing IPv4 with a two-byte IP header: malformed.
fn malformed() -> Vec<u8> {
    packet::ether(&[], ETH_P_IP, &[0x45, 0])
}

#[test]
fn a_denied_sources_first_drop_is_logged_once() {
    let Some(mut h) = harness("first_drop", KernelLevel::INFO) else {
        return;
    };
    h.deny("10.0.0.9");
    h.deny("fd00:9::/64");
    let v4 = packet::tcp4("10.0.0.9".parse().unwrap(), 443, SYN);
    let v6 = packet::tcp6("fd00:9::7".parse().unwrap(), 443, SYN);
    for _ in 0..5 {
        assert_eq!(h.xdp(&v4), XDP_DROP);
    }
    let v4_lines = h.lines_with("first drop of denied source 10.0.0.9;");
    assert_eq!(v4_lines.len(), 1, "{v4_lines:?}");
    assert_eq!(v4_lines[0].0, log::Level::Info);
    // First-drop lines are limited to one per CPU per 100 ms.
    std::thread::sleep(std::time::Duration::from_millis(150));
    for _ in 0..5 {
        assert_eq!(h.xdp(&v6), XDP_DROP);
    }
    let v6_lines = h.lines_with("first drop of denied source fd00:9::7;");
    assert_eq!(v6_lines.len(), 1, "{v6_lines:?}");
    // A passing source logs nothing; malformed samples are debug, below this level.
    assert_eq!(
        h.xdp(&packet::tcp4("10.0.0.10".parse().unwrap(), 443, SYN)),
        XDP_PASS
    );
    assert_eq!(h.xdp(&malformed()), XDP_PASS);
    assert_eq!(h.lines.0.lock().unwrap().len(), 2);
}

#[test]
fn a_malformed_flood_yields_a_bounded_number_of_samples() {
    let Some(mut h) = harness("malformed_flood", KernelLevel::DEBUG) else {
        return;
    };
    let pkt = malformed();
    let started = Instant::now();
    for _ in 0..2_000 {
        assert_eq!(h.xdp(&pkt), XDP_PASS);
    }
    let elapsed = started.elapsed().as_secs();
    let lines = h.lines_with("malformed packet sample: 16 bytes");
    // One sample per CPU per second at most.
    let cpus = std::thread::available_parallelism().map_or(64, |n| n.get()) as u64;
    let bound = cpus * (elapsed + 1);
    assert!(
        !lines.is_empty() && lines.len() as u64 <= bound,
        "{} samples for 2000 packets in {elapsed} s on {cpus} CPUs: {lines:?}",
        lines.len()
    );
    assert!(lines.iter().all(|(l, _)| *l == log::Level::Debug));
}

#[test]
fn with_the_level_off_nothing_is_logged() {
    let Some(mut h) = harness("level_off", KernelLevel::OFF) else {
        return;
    };
    h.deny("10.0.0.9");
    let v4 = packet::tcp4("10.0.0.9".parse().unwrap(), 443, SYN);
    assert_eq!(h.xdp(&v4), XDP_DROP);
    assert_eq!(h.xdp(&malformed()), XDP_PASS);
    assert_eq!(h.lines_with(""), vec![]);
}
