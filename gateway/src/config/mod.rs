//! The TOML configuration: loading, and errors that name the file, the line and the key.
//!
//! Each section has its own module and validation; this module owns the file as a whole,
//! and [`plan`] turns a file that passes into the [`Plan`] the gateway runs.
//! Unknown keys are errors everywhere (`deny_unknown_fields`), so a typo never silently
//! falls back to a default.

pub mod abuse;
pub mod admin;
mod duration;
pub mod ebpf;
pub mod env;
pub mod fleet;
pub mod plan;
pub mod proxy;

use serde::Deserialize;
use std::path::{Path, PathBuf};

pub use abuse::AbuseConfig;
pub use admin::AdminConfig;
pub use duration::DurationSecs;
pub use ebpf::{DataPlaneMode, EbpfConfig};
pub use fleet::FleetConfig;
pub use plan::{Plan, RouteAuth, RoutePlan, UpstreamId};
pub use proxy::{
    AuthMode, CertConfig, EncodedSlashes, HealthCheckConfig, ListenConfig, RouteConfig,
    RuntimeConfig, TlsConfig, UpstreamConfig,
};

use crate::jwt::VerifierConfig;

/// The whole configuration file as written; [`Config::load`] compiles it into a [`Plan`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Client-facing listeners and connection limits. Absent: no proxy.
    pub listen: Option<ListenConfig>,
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub upstream: Vec<UpstreamConfig>,
    /// Token verification (issuers, audiences, key sources, leeway, cache).
    pub jwt: Option<VerifierConfig>,
    #[serde(default)]
    pub route: Vec<RouteConfig>,
    /// The kernel data plane. Absent: no data plane.
    pub ebpf: Option<EbpfConfig>,
    /// Metrics and health on loopback. Absent: no admin endpoint.
    pub admin: Option<AdminConfig>,
    /// Bans for abusive sources. Absent: no automatic bans.
    pub abuse: Option<AbuseConfig>,
    /// Bans shared with other gateways through Redis. Absent: this node bans alone.
    pub fleet: Option<FleetConfig>,
}

/// A configuration that cannot be used, located as precisely as we can.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {key}: {message}", .path.display())]
    Invalid {
        path: PathBuf,
        /// 1-based; 0 when the problem is not on one line (a missing section, say).
        line: usize,
        /// Dotted key, e.g. `ebpf.syn_rate`.
        key: String,
        message: String,
    },
    /// More than one problem: one line each.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
}

impl Config {
    /// Reads, parses, validates and compiles a configuration file.
    pub fn load(path: &Path) -> Result<Plan, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses, validates and compiles configuration text; `path` is only used in errors.
    /// `${VAR}` references are expanded from the process environment first.
    pub fn parse(path: &Path, text: &str) -> Result<Plan, ConfigError> {
        let expanded = env::expand(text, |name| std::env::var(name).ok()).map_err(|e| {
            let (_, key) = locate_span(text, line_start(text, e.line));
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line: e.line,
                key,
                message: e.message,
            }
        })?;
        let text = expanded.as_str();
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, key) = match e.span() {
                Some(span) => locate_span(text, span.start),
                None => (0, String::new()),
            };
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                key,
                message: e.message().trim().to_string(),
            }
        })?;
        let locate = |issues: plan::Issues| {
            issues
                .into_iter()
                .map(|(at, issue)| issue.locate(path, text, at))
        };
        match plan::compile(config) {
            Ok((mut plan, unused)) => {
                plan.warnings = locate(unused).map(|e| e.to_string()).collect();
                Ok(plan)
            }
            Err(issues) => {
                let mut errors: Vec<ConfigError> = locate(issues).collect();
                match errors.len() {
                    1 => Err(errors.remove(0)),
                    _ => Err(ConfigError::Several(errors)),
                }
            }
        }
    }
}

fn line_start(text: &str, line: usize) -> usize {
    text.split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum()
}

/// A validation problem found after parsing: which key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub key: &'static str,
    pub message: String,
}

impl Issue {
    pub fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self {
            key,
            message: message.into(),
        }
    }

    /// Turns the issue into an error pointing at the key's line in `section` (the section's
    /// own line for an issue with the whole section, whose key is empty).
    fn locate(self, path: &Path, text: &str, section: plan::Section) -> ConfigError {
        let at = match section.index {
            Some(i) => format!("{}[{i}]", section.name),
            None => section.name.to_string(),
        };
        let key = match self.key {
            "" => at,
            k => format!("{at}.{k}"),
        };
        ConfigError::Invalid {
            path: path.to_path_buf(),
            line: find_key_line(text, section.name, section.index, self.key).unwrap_or(0),
            key,
            message: self.message,
        }
    }
}

/// The 1-based line of byte offset `pos`, and the dotted key written on that line (section
/// header plus the key before `=`), as best the text tells.
fn locate_span(text: &str, pos: usize) -> (usize, String) {
    let pos = pos.min(text.len());
    let before = text.get(..pos).unwrap_or("");
    let line_no = before.matches('\n').count() + 1;
    let mut section = String::new();
    let mut key = String::new();
    for (i, line) in text.lines().enumerate() {
        if i + 1 > line_no {
            break;
        }
        let trimmed = line.trim();
        if let Some(name) = section_header(trimmed) {
            section = name.to_string();
            key.clear();
        } else if let Some((k, _)) = trimmed.split_once('=') {
            if !trimmed.starts_with('#') {
                key = k.trim().trim_matches('"').to_string();
            }
        }
    }
    let dotted = match (section.is_empty(), key.is_empty()) {
        (true, _) => key,
        (false, true) => section,
        (false, false) => format!("{section}.{key}"),
    };
    (line_no, dotted)
}

fn section_header(line: &str) -> Option<&str> {
    let inner = line.strip_prefix('[')?;
    let inner = inner.strip_prefix('[').unwrap_or(inner);
    let end = inner.find(']')?;
    Some(inner[..end].trim())
}

/// The 1-based line where `key` is set inside `[section]` (or the `index`-th
/// `[[section]]`); the section header's line when the key is not written there.
///
/// Why not `toml::Spanned`: a span exists only for a value that is written, so every
/// validated field of every section would have to be wrapped (and unwrapped wherever it is
/// used), and a check on a defaulted key would still need its section's line. An [`Issue`]
/// names its section and key, which is all this needs.
fn find_key_line(text: &str, section: &str, index: Option<usize>, key: &str) -> Option<usize> {
    let mut seen = 0usize;
    let mut inside = false;
    let mut section_line = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(name) = section_header(trimmed) {
            inside = false;
            if name == section {
                let this = seen;
                seen += 1;
                if index.is_none_or(|want| want == this) {
                    inside = true;
                    section_line = Some(i + 1);
                }
            }
            continue;
        }
        if inside {
            if let Some((k, _)) = trimmed.split_once('=') {
                if k.trim().trim_matches('"') == key {
                    return Some(i + 1);
                }
            }
        }
    }
    section_line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(Path::new("gw.toml"), text)
            .expect_err("must be refused")
            .to_string()
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = err("[ebpf]\ninterface = \"lo\"\nsyn_rte = 5\n");
        assert!(
            e.starts_with("gw.toml:3: ebpf.syn_rte: unknown field `syn_rte`"),
            "{e}"
        );
    }

    #[test]
    fn unknown_section_is_refused() {
        let e = err("[epbf]\ninterface = \"lo\"\n");
        assert!(e.starts_with("gw.toml:1: "), "{e}");
        assert!(e.contains("unknown field `epbf`"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = err("[ebpf]\ninterface = \"lo\"\n\nsyn_rate = \"fast\"\n");
        assert!(
            e.starts_with("gw.toml:4: ebpf.syn_rate: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn validation_errors_name_the_line() {
        let e = err("[ebpf]\ninterface = \"lo\"\nmode = \"tc\"\ndeny = [\"10.0.0.0/40\"]\n");
        assert!(e.starts_with("gw.toml:4: ebpf.deny: "), "{e}");
        assert!(e.contains("prefix length 40"), "{e}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = err("[ebpf]\ninterface = lo\n");
        assert!(e.starts_with("gw.toml:2: "), "{e}");
    }

    #[test]
    fn every_problem_is_reported() {
        let e = err(
            "[ebpf]\ninterface = \"lo\"\ndeny = [\"x\"]\n\n[admin]\nlisten = \"0.0.0.0:9901\"\n",
        );
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 2, "{e}");
        assert!(lines[0].starts_with("gw.toml:3: ebpf.deny: "), "{e}");
        assert!(lines[1].starts_with("gw.toml:6: admin.listen: "), "{e}");
    }

    #[test]
    fn a_listen_address_listed_twice_is_refused() {
        let e = err("[listen]\nhttps = [\"127.0.0.1:8443\"]\nhttp = [\"127.0.0.1:8080\", \"127.0.0.1:8443\"]\n");
        assert!(
            e.contains("gw.toml:3: listen.http: 127.0.0.1:8443 is listed twice"),
            "{e}"
        );
        // Port 0 is a new port each time.
        let zero = "127.0.0.1:0".parse().expect("address");
        let listen = ListenConfig {
            http: vec![zero, zero],
            ..ListenConfig::default()
        };
        assert!(listen.validate().is_ok());
    }

    #[test]
    fn empty_config_is_valid() {
        let c = Config::parse(Path::new("gw.toml"), "").expect("empty is fine");
        assert!(c.ebpf.is_none());
    }
}
