//! `cargo xtask test`: setup, build, the Debian package, rustfmt, clippy (host crates and the
//! eBPF crate), then every test of the workspace, privileged ones included. This is what CI
//! runs (`.ci/run`).
//!
//! Setup and build failures stop the run; lint and test failures do not stop the steps after
//! them, so one run shows everything that is wrong. A summary closes the output.

use std::env;
use std::ffi::OsString;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;

use crate::build_cmd;
use crate::cmd::{self, Cmd};
use crate::dist;
use crate::setup;

#[derive(Args)]
pub struct TestArgs {
    /// Skip `setup` (for developers iterating on a provisioned machine; CI does not use it).
    #[arg(long)]
    pub no_setup: bool,
    /// Skip rustfmt and clippy (for developers iterating; CI does not use it).
    #[arg(long)]
    pub no_lint: bool,
    /// Skip the release build and the package (`dist`); the package test then installs
    /// `$GATEWAY_DEB` or the package an earlier `cargo xtask dist` left in target/dist.
    #[arg(long)]
    pub no_dist: bool,
    /// Passed to the test binaries: a name filter, `--nocapture`, `--test-threads 1`, ...
    /// (`cargo xtask test -- <filter> --nocapture`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "TEST_ARGS"
    )]
    pub args: Vec<OsString>,
}

enum Outcome {
    Ok,
    Failed(String),
    Skipped(&'static str),
}

struct Step {
    name: &'static str,
    outcome: Outcome,
    secs: f64,
}

#[derive(Default)]
struct Steps(Vec<Step>);

impl Steps {
    /// Runs a step, records how it went and how long it took; returns whether it passed.
    fn run(&mut self, name: &'static str, f: impl FnOnce() -> Result<()>) -> bool {
        println!();
        println!("==> [{name}]");
        let started = Instant::now();
        let result = f();
        let secs = started.elapsed().as_secs_f64();
        let passed = result.is_ok();
        let outcome = match result {
            Ok(()) => Outcome::Ok,
            Err(err) => {
                eprintln!("error: step `{name}` failed: {err:#}");
                Outcome::Failed(format!("{err:#}"))
            }
        };
        self.0.push(Step {
            name,
            outcome,
            secs,
        });
        passed
    }

    fn skip(&mut self, name: &'static str, why: &'static str) {
        self.0.push(Step {
            name,
            outcome: Outcome::Skipped(why),
            secs: 0.0,
        });
    }

    fn summary(&self) -> Result<()> {
        println!();
        println!("==> summary");
        let mut failed = 0;
        for step in &self.0 {
            let (word, detail) = match &step.outcome {
                Outcome::Ok => ("ok", String::new()),
                Outcome::Failed(why) => {
                    failed += 1;
                    // The first line is enough here; the full error was printed above.
                    let first = why.lines().next().unwrap_or_default();
                    ("FAILED", format!("  {first}"))
                }
                Outcome::Skipped(why) => ("skipped", format!("  ({why})")),
            };
            println!(
                "    {word:<8} {:<12} {:>7.1} s{detail}",
                step.name, step.secs
            );
        }
        if failed > 0 {
            bail!("{failed} step(s) failed");
        }
        println!("==> all steps passed");
        Ok(())
    }
}

pub fn run(args: &TestArgs) -> Result<()> {
    let root = cmd::workspace_root();
    let mut steps = Steps::default();

    if args.no_setup {
        steps.skip("setup", "--no-setup");
    } else if !steps.run("setup", setup::run) {
        for name in ["build", "dist", "fmt", "clippy", "clippy-ebpf", "test"] {
            steps.skip(name, "setup failed");
        }
        return steps.summary();
    }

    let mut artifacts = None;
    if !steps.run("build", || {
        artifacts = Some(build_cmd::all(false)?);
        Ok(())
    }) {
        for name in ["dist", "fmt", "clippy", "clippy-ebpf", "test"] {
            steps.skip(name, "build failed");
        }
        return steps.summary();
    }
    let artifacts = artifacts.expect("set by a successful build step");

    // The package test (tests/tests/package.rs) installs it; the release build reuses the
    // eBPF object of the build step.
    let mut deb = None;
    if args.no_dist {
        steps.skip("dist", "--no-dist");
    } else {
        steps.run("dist", || {
            let release_bin = build_cmd::userspace(&artifacts.ebpf_object, true)?;
            deb = Some(dist::package(&release_bin)?);
            Ok(())
        });
    }

    if args.no_lint {
        for name in ["fmt", "clippy", "clippy-ebpf"] {
            steps.skip(name, "--no-lint");
        }
    } else {
        steps.run("fmt", || {
            Cmd::new("cargo")
                .cwd(&root)
                .without_cargo_run_env()
                .args(["fmt", "--all", "--", "--check"])
                .run()
        });
        steps.run("clippy", || clippy_host(&root, &artifacts.ebpf_object));
        steps.run("clippy-ebpf", || clippy_ebpf(&root));
    }

    steps.run("test", || {
        warn_if_unprivileged();
        let mut test = Cmd::new("cargo")
            .cwd(&root)
            .without_cargo_run_env()
            .env("GATEWAY_EBPF_OBJECT", &artifacts.ebpf_object)
            .env("GATEWAY_BIN", &artifacts.gateway_bin)
            .args([
                "test",
                "--locked",
                "--workspace",
                "--exclude",
                "gateway-ebpf",
            ]);
        if let Some(deb) = &deb {
            test = test.env("GATEWAY_DEB", deb);
        }
        if !args.args.is_empty() {
            test = test.arg("--").args(&args.args);
        }
        test.run()
    });

    steps.summary()
}

fn clippy_host(root: &Path, ebpf_object: &Path) -> Result<()> {
    Cmd::new("cargo")
        .cwd(root)
        .without_cargo_run_env()
        .env("GATEWAY_EBPF_OBJECT", ebpf_object)
        .args([
            "clippy",
            "--locked",
            "--workspace",
            "--exclude",
            "gateway-ebpf",
        ])
        .args(["--all-targets", "--", "-D", "warnings"])
        .run()
}

/// The eBPF crate is `no_std`/`no_main` with its own panic handler: on the host it only
/// type-checks with `-C panic=abort` (and `-Zpanic_abort_tests`, hence RUSTC_BOOTSTRAP=1).
/// Its own target dir keeps these flags from invalidating the main build cache.
fn clippy_ebpf(root: &Path) -> Result<()> {
    Cmd::new("cargo")
        .cwd(root)
        .without_cargo_run_env()
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", "-C panic=abort -Zpanic_abort_tests")
        .args(["clippy", "--locked", "-p", "gateway-ebpf"])
        .args(["--target-dir", "target/clippy-ebpf"])
        .args(["--", "-D", "warnings"])
        .run()
}

fn warn_if_unprivileged() {
    if cmd::is_root() {
        return;
    }
    let skip = env::var_os("GATEWAY_SKIP_PRIVILEGED").is_some_and(|v| v == "1");
    println!(
        "==> note: not root (uid {}): privileged tests (eBPF load/attach, namespaces) need root.",
        cmd::euid()
    );
    if skip {
        println!(
            "==> GATEWAY_SKIP_PRIVILEGED=1 is set: the privileged tests will skip themselves."
        );
    } else {
        println!(
            "==> They will FAIL unless run as root, or skipped with GATEWAY_SKIP_PRIVILEGED=1."
        );
    }
}
