//! `gateway config check`.

use super::common::{fail, EXIT_USAGE};
use crate::config::Config;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file and the certificate and key files it names; prints every
    /// problem with file, line and key, and warns about what is valid but has no effect.
    Check {
        #[arg(long, short, value_name = "FILE", default_value = super::run::DEFAULT_CONFIG)]
        config: PathBuf,
        /// Check the file alone, without reading the certificate and key files it names
        /// (e.g. on a build machine, before they are deployed).
        #[arg(long)]
        skip_files: bool,
    },
}

pub fn run(cmd: ConfigCommand) -> ExitCode {
    match cmd {
        ConfigCommand::Check { config, skip_files } => {
            let loaded = match skip_files {
                true => Config::load(&config),
                false => Config::check(&config),
            };
            match loaded {
                Ok(plan) => {
                    for warning in plan.warnings() {
                        eprintln!("warning: {warning}");
                    }
                    println!("{}: ok", config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(EXIT_USAGE, e),
            }
        }
    }
}
