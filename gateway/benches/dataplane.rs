//! Data plane cost per packet, measured in the kernel by `BPF_PROG_TEST_RUN` with many
//! repeats (the kernel reports the mean time per run, so syscall overhead is excluded), next
//! to two reference programs loaded and run the same way: one that only returns XDP_PASS
//! (the floor) and one that does a single hash lookup (the cost of any per-source state).
//!
//! Needs root (it loads programs). Run with `cargo xtask bench` or
//! `cargo bench -p gateway --bench dataplane`.
//!
//! With `GATEWAY_BASELINE_OBJECT` (another build's object) and `GATEWAY_AB_ROUNDS=<n>`, it
//! first runs an interleaved A/B: n rounds, each 20 test-run calls of 10 000 repeats per
//! program and packet in turn, and prints min / median / max ns per packet (to a fraction of
//! a nanosecond, see `mean_ns_per_run`). Criterion runs
//! one benchmark after the other, so on a shared machine load drift between them shows up as
//! a difference; interleaving spreads it over both.

use aya::programs::{TestRun, TestRunOptions, Xdp};
use aya::Ebpf;
use criterion::{criterion_group, criterion_main, Criterion};
use gateway::config::EbpfConfig;
use gateway::ebpf::kernel_log::KernelLevel;
use gateway::ebpf::maps::new_deny_entry;
use gateway::ebpf::{loader, PinnedMaps, Target};
use gateway_common::{origin, program_name};
use gateway_tests::bench::assert_root;
use gateway_tests::netns::Bpffs;
use gateway_tests::packet::{self, ACK, SYN};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

/// Runs per test-run syscall; the kernel averages over them.
const REPEAT: u32 = 10_000;

fn per_packet(prog: &Xdp, pkt: &[u8], expect: u32, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(u64::from(REPEAT)) as u32;
        let opts = TestRunOptions {
            data_in: Some(pkt),
            repeat: n,
            ..TestRunOptions::default()
        };
        let r = prog.test_run(opts).expect("test run");
        assert_eq!(r.return_value, expect, "unexpected verdict");
        total += r.duration * n;
        left -= u64::from(n);
    }
    total
}

/// Runs per program and packet in each round of the interleaved A/B: 20 test-run calls of
/// `REPEAT`.
const AB_REPEAT: u32 = 200_000;

/// Mean ns per run over `AB_REPEAT` runs, from the kernel's timings. The kernel reports each
/// call's mean in whole nanoseconds (truncated), too coarse for programs of 25-30 ns; the
/// average over 20 calls keeps the fraction, since the run-to-run noise (several ns) spreads
/// the truncation. (The wall clock around the call is no better: a test run with repeats
/// swaps the XDP dispatcher's program, which costs milliseconds.)
fn mean_ns_per_run(prog: &Xdp, pkt: &[u8], expect: u32) -> f64 {
    let d = per_packet(prog, pkt, expect, u64::from(AB_REPEAT));
    d.as_secs_f64() * 1e9 / f64::from(AB_REPEAT)
}

/// The interleaved A/B (see the module doc): `rounds` rounds over every program and packet.
/// A reference program (`true`) only passes, so it only gets the first packet.
fn interleaved(rounds: usize, progs: &[(&str, &Xdp, bool)], packets: &[(&str, &[u8], u32)]) {
    let mut ns: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); progs.len() * packets.len()];
    for _ in 0..rounds {
        for (pi, (_, prog, reference)) in progs.iter().enumerate() {
            let take = if *reference { 1 } else { packets.len() };
            for (ki, (_, pkt, expect)) in packets.iter().enumerate().take(take) {
                let expect = if *reference { 2 } else { *expect };
                ns[pi * packets.len() + ki].push(mean_ns_per_run(prog, pkt, expect));
            }
        }
    }
    // Ratios within a round, where both sides saw the same load: to the reference lookup
    // (the second program, which only gets the first packet), and of each program to the
    // first non-reference one (this build) on the same packet.
    let p = packets.len();
    let this = progs.iter().position(|(_, _, reference)| !reference);
    let ratios = |i: usize, j: usize| -> Vec<f64> {
        let mut r: Vec<f64> = ns[i].iter().zip(&ns[j]).map(|(a, b)| a / b).collect();
        r.sort_unstable_by(f64::total_cmp);
        r
    };
    let median = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
    let mut lines = Vec::new();
    for (pi, (pname, _, reference)) in progs.iter().enumerate() {
        for (ki, (kname, _, _)) in packets.iter().enumerate() {
            let i = pi * p + ki;
            if ns[i].is_empty() {
                continue;
            }
            let to_lookup = median(&ratios(i, p));
            let to_this = match this {
                Some(t) if !reference && t != pi => {
                    format!("{:>5.3}", median(&ratios(i, t * p + ki)))
                }
                _ => "     ".to_string(),
            };
            let mut v = ns[i].clone();
            v.sort_unstable_by(f64::total_cmp);
            lines.push(format!(
                "  {pname:>10} {kname:<18} {:>6.2} / {:>6.2} / {:>6.2}   {to_lookup:>5.3}   {to_this}",
                v[0],
                median(&v),
                v[v.len() - 1]
            ));
        }
    }
    println!(
        "interleaved A/B, {rounds} rounds, ns/packet min / median / max, then the median over \
         rounds of the ratio to the lookup and to this build in the same round:"
    );
    for line in lines {
        println!("{line}");
    }
}

fn load_xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut Xdp {
    let prog: &mut Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
    prog.load().expect("verifier accepts");
    prog
}

fn bench(c: &mut Criterion) {
    assert_root("the data plane benchmark loads BPF programs");
    let fs = Bpffs::new(&format!("bench-{}", std::process::id())).expect("bpffs");
    let mut ebpf = loader::load_object(&fs.pin_path()).expect("load");
    load_xdp(&mut ebpf, program_name::XDP);
    let floor_path = Path::new(env!("GATEWAY_EBPF_OBJECT")).with_file_name("floor");
    let mut floor = Ebpf::load_file(&floor_path).expect("load the floor programs");
    // The same object with its kernel log lines on (info: first deny drops), sharing the
    // pinned maps; and, when given, an object built without logging (main's), for the side
    // by side that shows what logging compiled in costs with its level off.
    let mut logging = loader::load_object_with_log(&fs.pin_path(), KernelLevel::INFO)
        .expect("load with the log level on");
    load_xdp(&mut logging, program_name::XDP);
    let mut baseline = std::env::var_os("GATEWAY_BASELINE_OBJECT").map(|path| {
        let mut b = aya::EbpfLoader::new()
            .default_map_pin_directory(fs.pin_path())
            .load_file(&path)
            .expect("load the baseline object");
        load_xdp(&mut b, program_name::XDP);
        b
    });
    load_xdp(&mut floor, "floor_pass");
    load_xdp(&mut floor, "floor_lookup");

    let mut maps = PinnedMaps::open(&fs.pin_path()).unwrap();
    let cfg = EbpfConfig {
        interface: Some("lo".into()),
        protected_ports: vec![443],
        syn_rate: 1_000_000_000,
        syn_burst: 1_000_000,
        ..EbpfConfig::default()
    };
    maps.write_config(&cfg.to_kernel().unwrap()).unwrap();
    let denied: Target = "10.1.1.1".parse().unwrap();
    let net: Target = "10.2.0.0/16".parse().unwrap();
    maps.deny(&denied, &new_deny_entry(0, origin::MANUAL, "bench"))
        .unwrap();
    maps.deny(&net, &new_deny_entry(0, origin::MANUAL, "bench"))
        .unwrap();
    // Realistic map sizes: a few thousand tracked sources and deny entries.
    for i in 0..4096u32 {
        let a = Ipv4Addr::from(0x0a64_0000 + i);
        maps.deny(
            &Target::Addr(a.into()),
            &new_deny_entry(0, origin::MANUAL, "fill"),
        )
        .unwrap();
    }

    let known = packet::tcp4(Ipv4Addr::new(10, 9, 9, 9), 80, ACK);
    let deny_hit = packet::tcp4(Ipv4Addr::new(10, 1, 1, 1), 80, ACK);
    let cidr_hit = packet::tcp4(Ipv4Addr::new(10, 2, 3, 4), 80, ACK);
    let syn = packet::tcp4(Ipv4Addr::new(10, 9, 9, 10), 443, SYN);

    let prog: &Xdp = ebpf.program(program_name::XDP).unwrap().try_into().unwrap();
    let floor_prog: &Xdp = floor.program("floor_pass").unwrap().try_into().unwrap();
    let lookup_prog: &Xdp = floor.program("floor_lookup").unwrap().try_into().unwrap();
    // Make the "known source" known before measuring.
    per_packet(prog, &known, 2, 1);

    let rounds = std::env::var("GATEWAY_AB_ROUNDS")
        .ok()
        .and_then(|r| r.parse::<usize>().ok());
    if let (Some(rounds), Some(b)) = (rounds, baseline.as_ref()) {
        let base: &Xdp = b.program(program_name::XDP).unwrap().try_into().unwrap();
        interleaved(
            rounds,
            &[
                ("floor", floor_prog, true),
                ("lookup", lookup_prog, true),
                ("this", prog, false),
                ("baseline", base, false),
            ],
            &[
                ("pass_known_source", &known, 2),
                ("drop_deny_hit", &deny_hit, 1),
                ("drop_cidr", &cidr_hit, 1),
            ],
        );
    }

    let mut g = c.benchmark_group("xdp_per_packet");
    g.bench_function("floor_xdp_pass", |b| {
        b.iter_custom(|n| per_packet(floor_prog, &known, 2, n))
    });
    g.bench_function("floor_one_hash_lookup", |b| {
        b.iter_custom(|n| per_packet(lookup_prog, &known, 2, n))
    });
    g.bench_function("pass_known_source", |b| {
        b.iter_custom(|n| per_packet(prog, &known, 2, n))
    });
    g.bench_function("drop_deny_hit", |b| {
        b.iter_custom(|n| per_packet(prog, &deny_hit, 1, n))
    });
    g.bench_function("drop_cidr", |b| {
        b.iter_custom(|n| per_packet(prog, &cidr_hit, 1, n))
    });
    g.bench_function("syn_token_taken", |b| {
        b.iter_custom(|n| per_packet(prog, &syn, 2, n))
    });
    g.finish();

    let log_prog: &Xdp = logging
        .program(program_name::XDP)
        .unwrap()
        .try_into()
        .unwrap();
    let mut g = c.benchmark_group("xdp_kernel_log");
    let mut variants = vec![("log_off", prog), ("log_info", log_prog)];
    if let Some(b) = baseline.as_mut() {
        variants.push((
            "no_logging",
            b.program(program_name::XDP).unwrap().try_into().unwrap(),
        ));
    }
    for (name, p) in variants {
        g.bench_function(format!("pass_known_source/{name}"), |b| {
            b.iter_custom(|n| per_packet(p, &known, 2, n))
        });
        g.bench_function(format!("drop_deny_hit/{name}"), |b| {
            b.iter_custom(|n| per_packet(p, &deny_hit, 1, n))
        });
    }
    g.finish();
    drop(baseline);
    drop(logging);
    drop(maps);
    drop(ebpf);
    drop(fs);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = bench
}
criterion_main!(benches);
