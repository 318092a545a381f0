//! `cargo xtask bench`: builds the eBPF object, then runs the criterion benchmarks of the
//! gateway crate (`jwt`, `dataplane`, ...) with bounded times unless told otherwise.

use std::ffi::OsString;

use anyhow::{Context, Result};
use clap::Args;

use crate::build_cmd;
use crate::cmd::{self, Cmd};

/// Criterion options added unless the user gives their own: keep a full run short.
const DEFAULTS: &[(&str, &str)] = &[("--warm-up-time", "1"), ("--measurement-time", "3")];

#[derive(Args)]
pub struct BenchArgs {
    /// Run only this bench target (repeatable); default: every bench target of `gateway`.
    #[arg(long = "bench", value_name = "NAME")]
    pub benches: Vec<String>,
    /// Passed to criterion: a name filter, `--save-baseline NAME`, `--measurement-time 10`, ...
    /// (`cargo xtask bench -- <filter> --measurement-time 10`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CRITERION_ARGS"
    )]
    pub args: Vec<OsString>,
}

pub fn run(args: &BenchArgs) -> Result<()> {
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
