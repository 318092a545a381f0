//! The TOML configuration: loading, and errors that name the file, the line and the key.
//!
//! Each section has its own module and validation; this module owns the file as a whole.
//! Unknown keys are errors everywhere (`deny_unknown_fields`), so a typo never silently
//! falls back to a default.

pub mod abuse;
pub mod admin;
pub mod ebpf;
pub mod env;
pub mod proxy;

use serde::Deserialize;
use std::path::{Path, PathBuf};

pub use abuse::AbuseConfig;
pub use admin::AdminConfig;
pub use ebpf::{DataPlaneMode, EbpfConfig};
pub use proxy::{
    AuthMode, CertConfig, EncodedSlashes, HealthCheckConfig, ListenConfig, RouteConfig,
    RuntimeConfig, TlsConfig, UpstreamConfig,
};

use crate::jwt::VerifierConfig;

/// The whole configuration file.
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
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates configuration text; `path` is only used in errors. `${VAR}`
    /// references are expanded from the process environment first.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
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
        let mut errors: Vec<ConfigError> = config
            .validate()
            .into_iter()
            .map(|(at, issue)| issue.locate(path, text, at))
            .collect();
        match errors.len() {
            0 => Ok(config),
            1 => Err(errors.remove(0)),
            _ => Err(ConfigError::Several(errors)),
        }
    }

    /// Checks each section, then how the sections refer to each other; every problem found
    /// (the first of each section or array entry), in file order of sections.
    fn validate(&self) -> Vec<(Section, Issue)> {
        let one = |name: &'static str| Section { name, index: None };
        let nth = |name: &'static str, i: usize| Section {
            name,
            index: Some(i),
        };
        let mut found = Vec::new();
        let mut check = |at: Section, r: Result<(), Issue>| {
            if let Err(i) = r {
                found.push((at, i));
            }
        };
        if let Some(ebpf) = &self.ebpf {
            check(one("ebpf"), ebpf.validate());
        }
        if let Some(admin) = &self.admin {
            check(one("admin"), admin.validate());
        }
        if let Some(abuse) = &self.abuse {
            check(one("abuse"), abuse.validate());
        }
        if let Some(tls) = &self.tls {
            check(one("tls"), tls.validate());
        }
        if let Some(jwt) = &self.jwt {
            check(
                one("jwt"),
                jwt.validate()
                    .map_err(|e| Issue::new("keys", e.to_string())),
            );
        }
        for (i, u) in self.upstream.iter().enumerate() {
            let twice = self.upstream[..i].iter().any(|o| o.name == u.name);
            check(
                nth("upstream", i),
                u.validate().and_then(|()| match twice {
                    true => Err(Issue::new(
                        "name",
                        format!("upstream `{}` is defined twice", u.name),
                    )),
                    false => Ok(()),
                }),
            );
        }
        for (i, r) in self.route.iter().enumerate() {
            let refs = if !self.upstream.iter().any(|u| u.name == r.upstream) {
                Err(Issue::new(
                    "upstream",
                    format!("no [[upstream]] is named `{}`", r.upstream),
                ))
            } else if r.auth != AuthMode::None && self.jwt.is_none() {
                Err(Issue::new(
                    "auth",
                    "routes that check tokens need a [jwt] section",
                ))
            } else {
                Ok(())
            };
            check(nth("route", i), r.validate().and(refs));
        }
        if let Some(listen) = &self.listen {
            let shape = if listen.https.is_empty() && listen.http.is_empty() {
                Err(Issue::new("https", "no listener: set https or http"))
            } else if !listen.https.is_empty() && self.tls.is_none() {
                Err(Issue::new("https", "HTTPS listeners need a [tls] section"))
            } else if self.route.is_empty() {
                Err(Issue::new("https", "listeners need at least one [[route]]"))
            } else {
                Ok(())
            };
            check(one("listen"), listen.validate().and(shape));
        } else if !self.route.is_empty() {
            check(
                nth("route", 0),
                Err(Issue::new("path_prefix", "routes need a [listen] section")),
            );
        }
        found
    }

    /// Whether the config runs a proxy (listeners and routes).
    pub fn has_proxy(&self) -> bool {
        self.listen.is_some()
    }
}

/// Where an issue was found: a section, and for `[[array]]` sections which one (0-based).
#[derive(Debug, Clone, Copy)]
struct Section {
    name: &'static str,
    index: Option<usize>,
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

    /// Turns the issue into an error pointing at the key's line in `section`.
    fn locate(self, path: &Path, text: &str, section: Section) -> ConfigError {
        let key = match section.index {
            Some(i) => format!("{}[{i}].{}", section.name, self.key),
            None => format!("{}.{}", section.name, self.key),
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
