//! The `gateway` command line (clap). Each subcommand lives in its own module and returns the
//! process exit status; this module only dispatches.

mod common;
mod config_cmd;
mod deny;
mod docs;
mod logging;
mod notify;
mod reload;
mod run;
pub mod stats;
mod token;

use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    about = "eBPF-assisted edge gateway for HTTP APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (data plane, and the proxy when configured). SIGINT/SIGTERM stop it.
    Run(run::RunArgs),
    /// Kernel counters from the pinned maps: totals by verdict and the top sources.
    Stats(stats::StatsArgs),
    /// Manage the deny list (exact addresses and CIDR prefixes) in the pinned maps.
    #[command(subcommand)]
    Deny(deny::DenyCommand),
    /// Verify, inspect and mint JWTs.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Validate a configuration file.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Print the shell completion script (the package installs them).
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages into DIR (the package installs them).
    #[command(hide = true)]
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Deny(cmd) => deny::run(cmd),
        Command::Token(cmd) => token::run(cmd),
        Command::Config(cmd) => config_cmd::run(cmd),
        Command::Completions { shell } => docs::completions(Cli::command(), shell),
        Command::Man { dir } => docs::man(Cli::command(), &dir),
    }
}
