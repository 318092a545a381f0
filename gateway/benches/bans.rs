//! What bans cost as the deny list grows (issue 12, item 4): an attacker with a /48 can make
//! the abuse engine ban 65 536 /64s, and no ban, sweep or connection check may cost more as
//! the list grows.
//!
//! - **Time per ban** while 50 000 random /64 bans are added through the [`DenyStore`] (real
//!   pinned maps, state file written by the background writer, as `gateway run` does),
//!   reported per 5 000 bans: the last 5 000 should cost what the first 5 000 did.
//! - **A control client's latency**: TCP connect, one byte there and back, against a local
//!   server that checks every accepted peer with `is_denied` (as the accept path does), p99
//!   without bans, with 50 000 bans in force, and while all 50 000 expire together and the
//!   sweep removes them (target: within 1.2x of the run without bans).
//! - `is_denied` itself (criterion), with no bans and with 50 000 prefixes.
//!
//! Needs root (it pins maps in a private bpffs). `cargo xtask bench --bench bans` or
//! `cargo bench -p gateway --bench bans`.

use criterion::{criterion_group, criterion_main, Criterion};
use gateway::deny::DenyStore;
use gateway::ebpf::{loader, PinnedMaps, Target};
use gateway_tests::bench::{assert_root, percentile};
use gateway_tests::netns::Bpffs;
use ipnet::{IpNet, Ipv6Net};
use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BANS: usize = 50_000;
const BUCKET: usize = 5_000;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// 50 000 distinct random /64s (xorshift, fixed seed: every run bans the same ones).
fn random_prefixes() -> Vec<Target> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(BANS);
    while out.len() < BANS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Global unicast 2000::/3, host bits zero.
        let hi = (x & 0x1fff_ffff_ffff_ffff) | 0x2000_0000_0000_0000;
        if seen.insert(hi) {
            let addr = Ipv6Addr::from(u128::from(hi) << 64);
            if let Ok(n) = Ipv6Net::new(addr, 64) {
                out.push(Target::Net(IpNet::V6(n)));
            }
        }
    }
    out
}

/// A server that refuses denied peers at accept and echoes one byte to the others (a
/// blocking accept, as a worker waits for connections; a last connection after `stop` ends
/// it).
fn control_server(store: Arc<DenyStore>, stop: Arc<AtomicBool>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in listener.incoming() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let Ok(mut s) = s else { continue };
            let Ok(peer) = s.peer_addr() else { continue };
            if store.is_denied(peer.ip()) {
                continue;
            }
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(&b);
            }
        }
    });
    addr
}

/// Round trips (connect, one byte each way) until `until` says stop: when each started,
/// and how long it took.
fn control_client(
    addr: std::net::SocketAddr,
    mut until: impl FnMut() -> bool,
) -> Vec<(Instant, Duration)> {
    let mut samples = Vec::new();
    while !until() {
        let started = Instant::now();
        let ok = TcpStream::connect(addr).and_then(|mut s| {
            s.set_nodelay(true)?;
            s.write_all(b"x")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)
        });
        if ok.is_ok() {
            samples.push((started, started.elapsed()));
        }
    }
    samples
}

/// The latencies of the samples that started in `[from, to]`, sorted.
fn between(samples: &[(Instant, Duration)], from: Instant, to: Instant) -> Vec<Duration> {
    let mut out: Vec<Duration> = samples
        .iter()
        .filter(|(t, _)| *t >= from && *t <= to)
        .map(|(_, d)| *d)
        .collect();
    out.sort();
    out
}

fn all(samples: &[(Instant, Duration)]) -> Vec<Duration> {
    let mut out: Vec<Duration> = samples.iter().map(|(_, d)| *d).collect();
    out.sort();
    out
}

fn summary(name: &str, s: &[Duration]) -> Duration {
    let p99 = percentile(s, 0.99);
    println!(
        "bans/control {name}: {} round trips, median {:?}  p99 {:?}  max {:?}",
        s.len(),
        percentile(s, 0.5),
        p99,
        s.last().copied().unwrap_or_default()
    );
    p99
}

fn bench(c: &mut Criterion) {
    assert_root("the bans benchmark pins BPF maps");
    let fs = Bpffs::new(&format!("bbench-{}", std::process::id())).expect("bpffs");
    let ebpf = loader::load_object(&fs.pin_path()).expect("load");
    let store = Arc::new(DenyStore::new(
        Some(PinnedMaps::open(&fs.pin_path()).expect("maps")),
        Some(fs.root().join("deny-state.json")),
        Vec::new(),
    ));
    store.persist_in_background();
    let stop = Arc::new(AtomicBool::new(false));
    let addr = control_server(store.clone(), stop.clone());

    let window = |d: Duration| {
        let end = Instant::now() + d;
        move || Instant::now() >= end
    };
    let base = control_client(addr, window(Duration::from_secs(2)));
    let p99_base = summary("without bans", &all(&base));

    let mut g = c.benchmark_group("bans");
    let probe: IpAddr = "2001:db8::1".parse().unwrap_or(IpAddr::from([0u8; 16]));
    g.bench_function("is_denied_empty", |b| {
        b.iter(|| black_box(store.is_denied(black_box(probe))))
    });

    // All bans expire at the same second, `expire_at`.
    let targets = random_prefixes();
    let expire_at = unix_now() + 25;
    let mut per_ban = Vec::with_capacity(BANS);
    for t in &targets {
        let ttl = Duration::from_secs(expire_at.saturating_sub(unix_now()).max(1));
        let started = Instant::now();
        store
            .add(*t, Some(ttl), "auth_failures", "bench", 1)
            .expect("ban");
        per_ban.push(started.elapsed());
    }
    assert!(
        unix_now() + 5 < expire_at,
        "adding took too long to measure the expiry"
    );
    let means: Vec<Duration> = per_ban
        .chunks(BUCKET)
        .map(|c| c.iter().sum::<Duration>() / c.len() as u32)
        .collect();
    println!(
        "bans/add: mean per ban by {BUCKET}: {}",
        means
            .iter()
            .map(|d| format!("{:.1}µs", d.as_secs_f64() * 1e6))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "bans/add: last {BUCKET} / first {BUCKET} = {:.2}",
        means[means.len() - 1].as_secs_f64() / means[0].as_secs_f64()
    );
    g.bench_function("is_denied_50k_prefixes", |b| {
        b.iter(|| black_box(store.is_denied(black_box(probe))))
    });
    g.finish();

    let loaded = control_client(addr, window(Duration::from_secs(2)));
    let p99_loaded = summary("with 50 000 bans", &all(&loaded));

    // Start measuring a second before they expire; sweep as soon as they have; go on for
    // half a second after the sweep.
    while unix_now() + 1 < expire_at {
        std::thread::sleep(Duration::from_millis(50));
    }
    let sweep_done = Arc::new(AtomicBool::new(false));
    let sweeper = {
        let (store, done) = (store.clone(), sweep_done.clone());
        std::thread::spawn(move || {
            while unix_now() < expire_at + 1 {
                std::thread::sleep(Duration::from_millis(5));
            }
            let started = Instant::now();
            store.sweep().expect("sweep");
            let ended = Instant::now();
            done.store(true, Ordering::Release);
            (started, ended)
        })
    };
    let mut after: Option<Instant> = None;
    let during = control_client(addr, || {
        if sweep_done.load(Ordering::Acquire) {
            let a = *after.get_or_insert_with(Instant::now);
            return a.elapsed() >= Duration::from_millis(500);
        }
        false
    });
    let (swept_from, swept_to) = sweeper.join().expect("sweeper");
    store.flush();
    println!(
        "bans/sweep: 50 000 expired entries removed in {:?}",
        swept_to - swept_from
    );
    assert_eq!(store.len(), 0, "every ban swept");
    summary("around the expiry (1.5 s)", &all(&during));
    let p99_during = summary(
        "started while the sweep ran",
        &between(&during, swept_from, swept_to),
    );
    println!(
        "bans/control p99 ratio: with bans {:.2}x, during the sweep {:.2}x (target <= 1.2x)",
        p99_loaded.as_secs_f64() / p99_base.as_secs_f64(),
        p99_during.as_secs_f64() / p99_base.as_secs_f64()
    );
    stop.store(true, Ordering::Relaxed);
    let _ = TcpStream::connect(addr);
    drop(ebpf);
    drop(fs);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
