//! The fleet's two costs, against a real `redis-server` (started here on a free loopback
//! port):
//!
//! - **Propagation**: from a ban made on node A (`DenyStore::add`, as the abuse engine makes
//!   it) to the first packet from that source dropped by node B's XDP program (B's real
//!   pinned maps, the program run through `BPF_PROG_TEST_RUN` until it returns XDP_DROP).
//!   200 bans, one at a time; printed as median / p99 / max (goal: p99 under 100 ms).
//! - **Counting per request**: `record()` of a refused token on a rule with a `fleet_limit`,
//!   with the fleet's in-memory count attached and without (criterion), 4096 rotating sources.
//!
//! Needs root (it loads the programs). `cargo xtask bench -- --bench fleet` or
//! `cargo bench -p gateway --bench fleet`.

use aya::programs::{TestRun, TestRunOptions, Xdp};
use criterion::{criterion_group, criterion_main, Criterion};
use gateway::abuse::{AbuseEngine, Signal};
use gateway::config::abuse::{AbuseConfig, Rule};
use gateway::config::fleet::FleetConfig;
use gateway::config::DurationSecs;
use gateway::deny::DenyStore;
use gateway::ebpf::{loader, PinnedMaps, Target};
use gateway::fleet::{Counts, Fleet};
use gateway_common::program_name;
use gateway_tests::netns::Bpffs;
use gateway_tests::packet::{self, ACK};
use gateway_tests::redis::RedisServer;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

const XDP_DROP: u32 = 1;
const BANS: u32 = 200;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn fleet_config(redis: &RedisServer, node: &str) -> FleetConfig {
    FleetConfig {
        redis_url: redis.url(),
        redis_password_file: None,
        node: Some(node.to_owned()),
        share: vec!["auth_failures".to_owned(), "manual".to_owned()],
        key_prefix: "bench:".to_owned(),
        hmac_key_file: None,
        max_ttl: DurationSecs(Duration::from_secs(3600)),
        queue: 10_000,
    }
}

fn propagation() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _in_rt = rt.enter();
    let redis = RedisServer::start();
    let fs = Bpffs::new(&format!("fbench-{}", std::process::id())).expect("bpffs");
    let mut ebpf = loader::load_object(&fs.pin_path()).expect("load");
    let prog: &mut Xdp = ebpf
        .program_mut(program_name::XDP)
        .unwrap()
        .try_into()
        .unwrap();
    prog.load().expect("verifier accepts");
    let prog: &Xdp = ebpf.program(program_name::XDP).unwrap().try_into().unwrap();

    let a = Arc::new(DenyStore::new(None, None, Vec::new()));
    let b = Arc::new(DenyStore::new(
        Some(PinnedMaps::open(&fs.pin_path()).unwrap()),
        None,
        Vec::new(),
    ));
    let fa = Fleet::start(&fleet_config(&redis, "bench-a"), a.clone(), None).expect("fleet A");
    let fb = Fleet::start(&fleet_config(&redis, "bench-b"), b, None).expect("fleet B");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(fa.stats().connected() && fb.stats().connected()) {
        assert!(Instant::now() < deadline, "fleet did not connect");
        std::thread::sleep(Duration::from_millis(10));
    }

    let mut samples = Vec::with_capacity(BANS as usize);
    for i in 0..BANS {
        let ip = Ipv4Addr::from(0x0a65_0000 + i);
        let pkt = packet::tcp4(ip, 443, ACK);
        let started = Instant::now();
        a.add(
            Target::Addr(IpAddr::V4(ip)),
            Some(Duration::from_secs(600)),
            "auth_failures",
            "bench",
            1,
        )
        .expect("ban on A");
        loop {
            let verdict = prog
                .test_run(TestRunOptions {
                    data_in: Some(&pkt),
                    ..TestRunOptions::default()
                })
                .expect("test run")
                .return_value;
            if verdict == XDP_DROP {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "ban {i} not dropping on B within 5 s"
            );
            std::thread::yield_now();
        }
        samples.push(started.elapsed());
    }
    samples.sort();
    println!(
        "fleet/propagation (ban on A to first packet dropped on B) over {BANS} bans: median {:?}  p99 {:?}  max {:?}",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples[samples.len() - 1]
    );
    drop((fa, fb));
    drop(ebpf);
    drop(fs);
}

fn bench(c: &mut Criterion) {
    assert!(
        std::fs::read_to_string("/proc/self/status")
            .map(|s| s
                .lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")))
            .unwrap_or(false),
        "the fleet benchmark loads BPF programs: run it as root"
    );
    propagation();

    let cfg = AbuseConfig {
        auth_failures: Some(Rule {
            limit: u32::MAX,
            window: DurationSecs(Duration::from_secs(60)),
            ban: DurationSecs(Duration::from_secs(60)),
            fleet_limit: Some(u32::MAX),
        }),
        ..AbuseConfig::default()
    };
    let counted = AbuseEngine::new(&cfg, Arc::new(DenyStore::new(None, None, Vec::new())));
    counted.count_for_fleet(Arc::new(Counts::new(65_536)));
    let alone = AbuseEngine::new(&cfg, Arc::new(DenyStore::new(None, None, Vec::new())));
    let sources: Vec<IpAddr> = (0..4096u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0xc633_6400 + i)))
        .collect();
    let mut g = c.benchmark_group("fleet");
    for (name, engine) in [
        ("record_auth_failure_counted", &counted),
        ("record_auth_failure_local", &alone),
    ] {
        let mut next = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                next = (next + 1) % sources.len();
                black_box(engine.record(black_box(sources[next]), Signal::AuthFailure))
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
