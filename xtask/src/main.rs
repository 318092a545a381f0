//! `cargo xtask <command>`: the one entry point for setting up a machine, building the eBPF
//! object and the gateway, running the demo, and running every test and benchmark.
//!
//! The alias lives in `.cargo/config.toml` (`run --quiet --package xtask --`).

mod bench;
mod build_cmd;
mod cmd;
mod demo;
mod dist;
mod run;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Setup, build, run, test and bench for the gateway workspace."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check this machine (Debian 12, root) and install what it lacks: apt packages, the Debian
    /// Rust toolchain linked into rustup as `deb-web`, bpf-linker for LLVM 22, bpffs.
    /// Idempotent. Set GATEWAY_SKIP_SETUP=1 to skip it on a machine provisioned by hand.
    Setup,
    /// Build the eBPF object once, then the gateway binary that embeds it.
    Build(build_cmd::BuildArgs),
    /// Setup, build, then run the gateway in the foreground on a demo configuration.
    Run(run::RunArgs),
    /// Setup, build, the package (dist), rustfmt, clippy, then every test (privileged ones
    /// included).
    Test(test::TestArgs),
    /// Build the Debian package target/dist/gateway_<version>_<arch>.deb with dpkg-deb: the
    /// release binary (built as `build --release` does), the systemd unit, a commented
    /// /etc/gateway/gateway.toml (conffile), maintainer scripts that create the user and group
    /// `gateway`, manual pages and bash/zsh/fish completions.
    Dist,
    /// Every benchmark: JWT and data-plane micro benchmarks, the side-by-side comparison with
    /// HAProxy, XDP vs nftables drop rate, memory; writes bench/results/<timestamp>.md.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // rustup, cargo and bpf-linker live in ~/.cargo/bin, which is not always on PATH (for
    // example when xtask runs under Debian's /usr/bin/cargo): put it there for every child.
    // Single-threaded at this point, so changing the environment is sound.
    if let Some(path) = cmd::path_with_cargo_bin() {
        std::env::set_var("PATH", path);
    }
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Build(args) => build_cmd::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Test(args) => test::run(&args),
        Command::Dist => dist::run(),
        Command::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
