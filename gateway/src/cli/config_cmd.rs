//! `gateway config check`.

use super::common::{fail, EXIT_USAGE};
use crate::config::Config;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Parse and validate a config file; prints every problem with file, line and key, and
    /// warns about what is valid but has no effect.
    Check {
        #[arg(long, short, value_name = "FILE", default_value = super::run::DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

pub fn run(cmd: ConfigCommand) -> ExitCode {
    match cmd {
        ConfigCommand::Check { config } => match Config::load(&config) {
            Ok(plan) => {
                for warning in plan.warnings() {
                    eprintln!("warning: {warning}");
                }
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_USAGE, e),
        },
    }
}
