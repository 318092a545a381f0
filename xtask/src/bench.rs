//! `cargo xtask bench`: the side-by-side benchmark of issue 6, bounded in time. In order:
//! JWT micro benchmarks (criterion, with the raw ring verify as the floor), the data plane per
//! packet (criterion over BPF_PROG_TEST_RUN, with a trivial program as the floor; root), bans
//! as the deny list grows to 50 000 entries (real pinned maps; root), end
//! to end against HAProxy with the shared peer harness (interleaved runs), the kernel drop
//! rate on a veth pair (XDP vs nftables; root), and memory (idle TLS connections, growth
//! between two load runs). Prints a summary and writes `bench/results/<UTC timestamp>.md`.
//!
//! `cargo xtask bench --quick` is a ~3-minute pass; `--duration`, `--rounds`, `--only`
//! tune it. `cargo xtask bench --bench jwt [-- CRITERION_ARGS]` (or any trailing criterion
//! argument) runs only criterion, as before.

mod e2e;
mod load;
mod memory;
mod micro;
mod peer;
mod util;
mod xdp;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::build_cmd;
use crate::cmd::{self, Cmd};

/// Criterion options added unless the user gives their own: keep a full run short.
const DEFAULTS: &[(&str, &str)] = &[("--warm-up-time", "1"), ("--measurement-time", "3")];

/// A section of the report: fills in target verdicts, returns its markdown.
type SectionFn<'a> = dyn FnMut(&mut Vec<(String, bool)>) -> Result<String> + 'a;

const SECTIONS: &[&str] = &["jwt", "dataplane", "bans", "e2e", "drop", "memory"];

#[derive(Args)]
pub struct BenchArgs {
    /// A ~3-minute pass: 1 round of 3 s per run, 1 000 idle connections, 10 s load runs.
    #[arg(long)]
    pub quick: bool,
    /// Seconds per load run of the end-to-end scenarios (default 8; --quick 3).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u32>,
    /// Rounds of interleaved runs (ours, HAProxy) per scenario (default 2; --quick 1).
    #[arg(long, value_name = "N")]
    pub rounds: Option<u32>,
    /// Concurrent connections of the load generator (default 50, as the peer harness).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub conns: u32,
    /// Idle keep-alive TLS connections for the memory section (default 10000; --quick 1000).
    #[arg(long, value_name = "N")]
    pub idle_conns: Option<u32>,
    /// Seconds of each of the two memory load runs (default 60; --quick 10).
    #[arg(long, value_name = "SECS")]
    pub load_secs: Option<u32>,
    /// Distinct tokens in the rotating pool (default 16384; --quick 4096), minted once per 12 h.
    #[arg(long, value_name = "N")]
    pub token_pool: Option<usize>,
    /// Run only these sections (comma-separated): jwt, dataplane, bans, e2e, drop, memory.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub only: Vec<String>,
    /// Criterion only: run this bench target (repeatable), as before the side-by-side bench.
    #[arg(long = "bench", value_name = "NAME")]
    pub benches: Vec<String>,
    /// Criterion only: arguments for criterion (a name filter, `--save-baseline NAME`, ...).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CRITERION_ARGS"
    )]
    pub args: Vec<OsString>,
}

/// What every section needs.
pub struct Ctx {
    pub root: PathBuf,
    /// Kept between runs: keys, token pool, wrk shim (`target/bench-work`).
    pub work: PathBuf,
    /// This run's logs, configs and raw tool output (`target/bench-work/runs/<ts>`).
    pub run_dir: PathBuf,
    pub peer: PathBuf,
    pub gateway_bin: PathBuf,
    pub ebpf_object: PathBuf,
    pub quick: bool,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if !args.benches.is_empty() || !args.args.is_empty() {
        return criterion_only(args);
    }
    for s in &args.only {
        if !SECTIONS.contains(&s.as_str()) {
            bail!("unknown section `{s}` (sections: {})", SECTIONS.join(", "));
        }
    }
    let want = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let quick = args.quick;
    let secs = args
        .duration
        .unwrap_or(if quick { 3 } else { 8 })
        .clamp(1, 120);
    let rounds = args
        .rounds
        .unwrap_or(if quick { 1 } else { 2 })
        .clamp(1, 10);
    let idle_conns = args
        .idle_conns
        .unwrap_or(if quick { 1000 } else { 10_000 })
        .clamp(1, 30_000);
    let load_secs = args
        .load_secs
        .unwrap_or(if quick { 10 } else { 60 })
        .clamp(1, 300);
    let pool_size = args
        .token_pool
        .unwrap_or(if quick { 4096 } else { 16_384 })
        .clamp(64, 200_000);
    let started = Instant::now();

    let root = cmd::workspace_root();
    let stamp = Cmd::new("date")
        .args(["-u", "+%Y%m%dT%H%M%SZ"])
        .probe()
        .context("date")?;
    let work = cmd::host_target_dir(&root).join("bench-work");
    let run_dir = work.join("runs").join(&stamp);
    std::fs::create_dir_all(run_dir.join("raw"))?;
    let load_start = util::loadavg();

    let artifacts = build_cmd::all(true)?;
    let ctx = Ctx {
        peer: if want("e2e") || want("memory") {
            peer::peer_dir(&root)?
        } else {
            PathBuf::new()
        },
        root: root.clone(),
        work,
        run_dir,
        gateway_bin: artifacts.gateway_bin,
        ebpf_object: artifacts.ebpf_object,
        quick,
    };

    let mut sections: Vec<(String, String)> = Vec::new();
    let mut verdicts: Vec<(String, bool)> = Vec::new();
    let mut timings: Vec<String> = Vec::new();
    let mut section = |name: &str, f: &mut SectionFn| {
        println!("\n==> [bench: {name}]");
        let t = Instant::now();
        let md = match f(&mut verdicts) {
            Ok(md) => md,
            Err(err) => {
                eprintln!("error: bench section `{name}` failed: {err:#}");
                format!("### {name}\n\nFailed: {err:#}\n")
            }
        };
        timings.push(format!("{name} {:.0} s", t.elapsed().as_secs_f64()));
        sections.push((name.to_owned(), md));
    };

    if want("jwt") {
        section("jwt", &mut |_| micro::jwt(&ctx));
    }
    if want("dataplane") {
        section("dataplane", &mut |_| micro::dataplane(&ctx));
    }
    if want("bans") {
        section("bans", &mut |_| micro::bans(&ctx));
    }
    let material = if want("e2e") || want("memory") {
        util::require_tools(&["haproxy", "wrk", "h2load", "curl", "openssl", "python3"])?;
        Some(peer::material(&ctx, pool_size)?)
    } else {
        None
    };
    if let (true, Some(m)) = (want("e2e"), &material) {
        let opts = e2e::Opts {
            secs,
            rounds,
            conns: args.conns,
            probe_secs: secs.min(5),
        };
        section("e2e", &mut |v| e2e::run(&ctx, m, &opts, v));
    }
    if want("drop") {
        section("drop", &mut |v| {
            xdp::run(&ctx, u64::from(secs.min(5)), rounds, v)
        });
    }
    if let (true, Some(m)) = (want("memory"), &material) {
        section("memory", &mut |v| {
            memory::run(&ctx, m, idle_conns, load_secs, v)
        });
    }

    let total = started.elapsed().as_secs_f64();
    let report = render(
        &ctx,
        &stamp,
        args,
        &load_start,
        total,
        &timings,
        &sections,
        &verdicts,
    );
    println!("\n{report}");
    let out_dir = root.join("bench/results");
    std::fs::create_dir_all(&out_dir)?;
    let out = out_dir.join(format!("{stamp}.md"));
    std::fs::write(&out, &report).with_context(|| format!("write {}", out.display()))?;
    println!(
        "==> results written to {} ({total:.0} s)",
        cmd::show_path(&out)
    );
    println!(
        "==> logs and raw tool output: {}",
        cmd::show_path(&ctx.run_dir)
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn render(
    ctx: &Ctx,
    stamp: &str,
    args: &BenchArgs,
    load_start: &str,
    total: f64,
    timings: &[String],
    sections: &[(String, String)],
    verdicts: &[(String, bool)],
) -> String {
    let git = Cmd::new("git")
        .cwd(&ctx.root)
        .args(["describe", "--always", "--dirty"])
        .probe()
        .unwrap_or_else(|| "unknown".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let mut md = format!("# gateway benchmark {stamp}\n\n");
    md += &format!(
        "- command: `cargo xtask bench{}`\n- gateway: `{git}` (release build)\n\
         - machine: {}, {} CPUs ({cpu}), {}\n\
         - load average at start {load_start}, at end {} (the machine is shared: other work ran meanwhile)\n\
         - peer: {}; {}; {}\n- duration: {total:.0} s ({})\n\n",
        std::env::args()
            .skip_while(|a| a != "bench")
            .skip(1)
            .map(|a| format!(" {a}"))
            .collect::<String>(),
        util::version_line("uname", &["-srm"]),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| s.lines().next().map(|l| l.split_whitespace().skip(1).take(2).collect::<Vec<_>>().join(" ")))
            .map_or(String::new(), |m| format!("{m} RAM")),
        util::loadavg(),
        util::version_line("haproxy", &["-v"]),
        util::version_line("wrk", &["--version"]),
        util::version_line("h2load", &["--version"]),
        timings.join(", "),
    );
    let _ = args;
    if !verdicts.is_empty() {
        md += "## Targets (issue 6 §2)\n\n";
        for (what, ok) in verdicts {
            md += &format!(
                "- {} {what}\n",
                if *ok { "✓ met:" } else { "✗ **not met:**" }
            );
        }
        md += "\n";
    }
    md += "## Results\n\n";
    for (_, s) in sections {
        md += s;
        md += "\n";
    }
    md
}

/// `cargo xtask bench --bench NAME -- ARGS`: criterion only.
fn criterion_only(args: &BenchArgs) -> Result<()> {
    let root = cmd::workspace_root();
    let ebpf_object = build_cmd::ebpf()?;

    let mut bench = Cmd::new("cargo")
        .cwd(&root)
        .without_cargo_run_env()
        .env("GATEWAY_EBPF_OBJECT", &ebpf_object)
        .args(["bench", "--locked", "-p", "gateway"]);
    // Bench targets only: the lib and bin test harnesses would reject criterion's options.
    if args.benches.is_empty() {
        bench = bench.args(["--bench", "*"]);
    } else {
        for name in &args.benches {
            bench = bench.args(["--bench", name]);
        }
    }
    bench = bench.arg("--").args(criterion_args(&args.args));
    bench.run().context(
        "benchmarks failed (bench targets live in gateway/benches/, declared with harness = false)",
    )
}

fn criterion_args(user: &[OsString]) -> Vec<OsString> {
    let mut out = user.to_vec();
    for (flag, value) in DEFAULTS {
        let given = user.iter().any(|a| {
            a.to_str()
                .is_some_and(|a| a == *flag || a.starts_with(&format!("{flag}=")))
        });
        if !given {
            out.push(flag.into());
            out.push(value.into());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[OsString]) -> Vec<&str> {
        args.iter().map(|a| a.to_str().unwrap()).collect()
    }

    #[test]
    fn defaults_are_added() {
        let out = criterion_args(&["jwt".into()]);
        assert_eq!(
            strings(&out),
            ["jwt", "--warm-up-time", "1", "--measurement-time", "3"]
        );
    }

    #[test]
    fn user_values_win() {
        let out = criterion_args(&["--measurement-time=10".into()]);
        assert_eq!(
            strings(&out),
            ["--measurement-time=10", "--warm-up-time", "1"]
        );
        let out = criterion_args(&["--warm-up-time".into(), "2".into()]);
        assert_eq!(
            strings(&out),
            ["--warm-up-time", "2", "--measurement-time", "3"]
        );
    }
}
