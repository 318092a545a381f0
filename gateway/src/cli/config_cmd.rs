//! `gateway config check`.

use super::common::{fail, EXIT_USAGE};
use crate::config::Config;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Parse and validate a config file; prints every problem with file, line and key.
    Check {
        #[arg(long, short, value_name = "FILE", default_value = super::run::DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

pub fn run(cmd: ConfigCommand) -> ExitCode {
    match cmd {
        ConfigCommand::Check { config } => match Config::load(&config) {
            Ok(c) => {
                for w in warnings(&c) {
                    eprintln!("warning: {}: {w}", config.display());
                }
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_USAGE, e),
        },
    }
}

/// What is valid but probably not meant: authenticated routes that accept an issuer whose
/// tokens are checked for neither `iss` nor an audience (a token the same identity provider
/// minted for another client would pass).
pub fn warnings(config: &Config) -> Vec<String> {
    let Some(jwt) = &config.jwt else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, route) in config.route.iter().enumerate() {
        for issuer in jwt.unchecked_route_issuers(route) {
            let name = route.name.as_deref().unwrap_or(&route.path_prefix);
            out.push(format!(
                "route[{i}] ({name}) accepts issuer `{issuer}`, which checks neither iss nor aud: set [jwt] issuers or audiences"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn warned(jwt: &str) -> Vec<String> {
        let text = format!(
            "[listen]\nhttp = [\"127.0.0.1:0\"]\n[jwt]\n{jwt}\n[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\n\
             [[route]]\nname = \"open\"\npath_prefix = \"/o/\"\nupstream = \"a\"\nauth = \"none\"\n\
             [[route]]\nname = \"api\"\npath_prefix = \"/api/\"\nupstream = \"a\"\n"
        );
        warnings(&Config::parse(Path::new("gw.toml"), &text).expect("valid"))
    }

    #[test]
    fn unchecked_issuers_are_warned_about_on_authenticated_routes_only() {
        let w = warned("");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("route[1] (api) accepts issuer `default`"),
            "{w:?}"
        );
        assert!(warned("issuers = [\"https://i/\"]").is_empty());
        assert!(warned("audiences = [\"api\"]").is_empty());
    }
}
