//! The abuse engine's two costs:
//!
//! - **Time to drop**: from the start of the event that crosses a rule's limit to the first
//!   packet from that source dropped by the kernel program. Measured over 200 bans: the
//!   crossing `record()` (which writes the deny entry into the real pinned map), then the XDP
//!   program run through `BPF_PROG_TEST_RUN` on a packet from the banned source, which must
//!   return XDP_DROP. Printed as median / p90 / p99 / max.
//! - **Bookkeeping per request**: `record()` for a request that bans nothing (criterion),
//!   with the request-rate rule on, over 4096 rotating sources.
//! - **What the proxy does per answered request**, side by side: `request()` (one lock:
//!   the per-source request and refusal counts the dashboard shows, and the rules'
//!   windows) against the separate `record()` calls it replaced, for a 200 and a 401, with
//!   the default rules (no request-rate rule: before, a 200 took no lock at all).
//!
//! Needs root (it loads the programs). Run with `cargo xtask bench -- --bench abuse` or
//! `cargo bench -p gateway --bench abuse`.

use aya::programs::{TestRun, TestRunOptions, Xdp};
use criterion::{criterion_group, criterion_main, Criterion};
use gateway::abuse::{AbuseEngine, Signal};
use gateway::config::abuse::{AbuseConfig, Rule};
use gateway::config::DurationSecs;
use gateway::deny::DenyStore;
use gateway::ebpf::{loader, PinnedMaps};
use gateway_common::program_name;
use gateway_tests::bench::{assert_root, percentile};
use gateway_tests::netns::Bpffs;
use gateway_tests::packet::{self, ACK};
use http::StatusCode;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

const XDP_DROP: u32 = 1;
const BANS: u32 = 200;

fn rule(limit: u32) -> Option<Rule> {
    Some(Rule {
        limit,
        window: DurationSecs(Duration::from_secs(60)),
        ban: DurationSecs(Duration::from_secs(600)),
        fleet_limit: None,
    })
}

fn bench(c: &mut Criterion) {
    assert_root("the abuse benchmark loads BPF programs");
    let fs = Bpffs::new(&format!("abench-{}", std::process::id())).expect("bpffs");
    let mut ebpf = loader::load_object(&fs.pin_path()).expect("load");
    let prog: &mut Xdp = ebpf
        .program_mut(program_name::XDP)
        .unwrap()
        .try_into()
        .unwrap();
    prog.load().expect("verifier accepts");
    let prog: &Xdp = ebpf.program(program_name::XDP).unwrap().try_into().unwrap();

    let store = Arc::new(DenyStore::new(
        Some(PinnedMaps::open(&fs.pin_path()).unwrap()),
        None,
        Vec::new(),
    ));
    let engine = AbuseEngine::new(
        &AbuseConfig {
            auth_failures: rule(1),
            requests: rule(u32::MAX),
            tls_failures: None,
            ..AbuseConfig::default()
        },
        store,
    );

    // Time to drop, over BANS distinct sources.
    let mut samples = Vec::with_capacity(BANS as usize);
    for i in 0..BANS {
        let ip = Ipv4Addr::from(0x0a64_0000 + i);
        let pkt = packet::tcp4(ip, 443, ACK);
        assert!(engine.record(IpAddr::V4(ip), Signal::AuthFailure).is_none());
        let started = Instant::now();
        let decision = engine.record(IpAddr::V4(ip), Signal::AuthFailure);
        let verdict = prog
            .test_run(TestRunOptions {
                data_in: Some(&pkt),
                ..TestRunOptions::default()
            })
            .expect("test run")
            .return_value;
        let elapsed = started.elapsed();
        assert!(decision.is_some(), "the second failure bans");
        assert_eq!(
            verdict, XDP_DROP,
            "the first packet after the ban is dropped"
        );
        samples.push(elapsed);
    }
    samples.sort();
    println!(
        "abuse/time_to_drop over {BANS} bans: median {:?}  p90 {:?}  p99 {:?}  max {:?}",
        percentile(&samples, 0.5),
        percentile(&samples, 0.9),
        percentile(&samples, 0.99),
        samples[samples.len() - 1]
    );

    // Bookkeeping on the request path: one record() per request, nothing banned.
    let sources: Vec<IpAddr> = (0..4096u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0xc633_6400 + i)))
        .collect();
    let mut next = 0usize;
    let mut g = c.benchmark_group("abuse");
    g.bench_function("record_request", |b| {
        b.iter(|| {
            next = (next + 1) % sources.len();
            black_box(engine.record(black_box(sources[next]), Signal::Request))
        })
    });
    g.bench_function("record_rule_off", |b| {
        b.iter(|| black_box(engine.record(black_box(sources[7]), Signal::TlsFailure)))
    });
    g.finish();

    // Per answered request, default rules (the auth-failure limit raised so that nothing
    // is banned while measuring): the old separate calls and the one call that replaced them.
    let defaults = AbuseEngine::new(
        &AbuseConfig {
            auth_failures: rule(u32::MAX),
            ..AbuseConfig::default()
        },
        Arc::new(DenyStore::new(None, None, Vec::new())),
    );
    let mut g = c.benchmark_group("abuse_per_request");
    for (name, status) in [("200", StatusCode::OK), ("401", StatusCode::UNAUTHORIZED)] {
        g.bench_function(format!("separate_records_{name}"), |b| {
            b.iter(|| {
                next = (next + 1) % sources.len();
                let ip = black_box(sources[next]);
                black_box(defaults.record(ip, Signal::Request));
                if status == StatusCode::UNAUTHORIZED {
                    black_box(defaults.record(ip, Signal::AuthFailure));
                }
            })
        });
        g.bench_function(format!("request_{name}"), |b| {
            b.iter(|| {
                next = (next + 1) % sources.len();
                black_box(defaults.request(black_box(sources[next]), status))
            })
        });
    }
    g.finish();
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
