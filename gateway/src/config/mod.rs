//! The TOML configuration: loading, and errors that name the file, the line and the key.
//!
//! Each section has its own module and validation; this module owns the file as a whole,
//! and [`plan`] turns a file that passes into the [`Plan`] the gateway runs.
//! Unknown keys are errors everywhere (`deny_unknown_fields`), so a typo never silently
//! falls back to a default.

pub mod abuse;
pub mod addr;
pub mod admin;
pub mod diff;
mod duration;
pub mod ebpf;
pub mod env;
mod files;
pub mod fleet;
pub mod log;
pub mod plan;
pub mod proxy;

use serde::Deserialize;
use std::path::{Path, PathBuf};

pub use abuse::AbuseConfig;
pub use admin::AdminConfig;
pub use duration::DurationSecs;
pub use ebpf::{DataPlaneMode, EbpfConfig};
pub use fleet::FleetConfig;
pub use log::{AccessTarget, LogConfig, LogFormat};
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
    /// The access log and the operational log's format.
    #[serde(default)]
    pub log: LogConfig,
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
    /// Nothing but comments and blank lines: most likely the wrong file.
    #[error("{}: the file is empty (only comments and blank lines): nothing to run", .path.display())]
    Empty { path: PathBuf },
    /// Valid, but neither a proxy nor a data plane: `run` would start nothing.
    #[error(
        "{}: nothing to run: no [listen] section and no [ebpf] section with a mode other than \"off\"",
        .path.display()
    )]
    NothingToRun { path: PathBuf },
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

    /// [`Config::load`], then what `gateway run` will read: certificate chains with their
    /// keys (readable, parsable, matching) and the `[[jwt.keys]]` files, each problem named
    /// by file, line and key like the others.
    pub fn check(path: &Path) -> Result<Plan, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_with(path, &text, files::check)
    }

    /// Parses, validates and compiles configuration text; `path` is only used in errors.
    /// `${VAR}` references are expanded from the process environment first.
    pub fn parse(path: &Path, text: &str) -> Result<Plan, ConfigError> {
        Self::parse_with(path, text, |_| Vec::new())
    }

    /// [`Config::parse`], with `more` checks on the compiled plan, reported like the rest.
    fn parse_with(
        path: &Path,
        text: &str,
        more: impl FnOnce(&Plan) -> plan::Issues,
    ) -> Result<Plan, ConfigError> {
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
        if text
            .lines()
            .map(str::trim)
            .all(|l| l.is_empty() || l.starts_with('#'))
        {
            return Err(ConfigError::Empty {
                path: path.to_path_buf(),
            });
        }
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
        match plan::compile(config).and_then(|(plan, unused)| {
            let problems = more(&plan);
            match problems.is_empty() {
                true => Ok((plan, unused)),
                false => Err(problems),
            }
        }) {
            Ok((plan, _)) if !plan.has_proxy() && !plan.has_data_plane() => {
                Err(ConfigError::NothingToRun {
                    path: path.to_path_buf(),
                })
            }
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
        // A nested array written inline (`certificates = [{ .. }]`) has no header of its
        // own: its parent's key line is the nearest.
        let line = find_key_line(text, section.name, section.index, self.key).or_else(|| {
            let (parent, child) = section.name.rsplit_once('.')?;
            find_key_line(text, parent, None, child)
        });
        ConfigError::Invalid {
            path: path.to_path_buf(),
            line: line.unwrap_or(0),
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
    fn an_empty_file_is_refused() {
        for text in ["", "\n  \n", "# only\n   # comments\n\n"] {
            assert_eq!(
                err(text),
                "gw.toml: the file is empty (only comments and blank lines): nothing to run"
            );
        }
        // Expansion first: a file that is only a comment after it is still empty.
        assert!(err("${GW_TEST_UNSET_EMPTY:-#} x\n").contains("the file is empty"));
    }

    #[test]
    fn a_file_that_starts_nothing_is_refused() {
        for text in [
            "[admin]\n",
            "[ebpf]\nmode = \"off\"\n",
            "[runtime]\nworker_threads = 2\n[abuse]\n",
        ] {
            assert!(
                err(text).starts_with("gw.toml: nothing to run: no [listen] section"),
                "{text}"
            );
        }
        assert!(Config::parse(Path::new("gw.toml"), "[ebpf]\ninterface = \"lo\"\n").is_ok());
    }

    #[test]
    fn an_admin_address_that_is_a_listener_is_refused() {
        let text = |admin: &str, http: &str| {
            format!(
                "[listen]\nhttp = [\"{http}\"]\n\n[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\n\n\
                 [[route]]\npath_prefix = \"/\"\nupstream = \"a\"\nauth = \"none\"\n\n\
                 [admin]\nlisten = \"{admin}\"\nallow_non_loopback = true\n"
            )
        };
        for (admin, http) in [
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("127.0.0.1:8080", "0.0.0.0:8080"),
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("[::1]:8080", "[::]:8080"),
            ("0.0.0.0:8080", "[::]:8080"),
            ("127.0.0.1:8080", "[::]:8080"),
        ] {
            let e = err(&text(admin, http));
            assert!(
                e.starts_with(&format!(
                    "gw.toml:14: admin.listen: {} collides with the listener {} (listen.http)",
                    admin.parse::<std::net::SocketAddr>().unwrap(),
                    http.parse::<std::net::SocketAddr>().unwrap()
                )),
                "{admin} {http}: {e}"
            );
        }
        for (admin, http) in [
            ("127.0.0.1:9901", "127.0.0.1:8080"),
            ("127.0.0.2:8080", "127.0.0.1:8080"),
            ("127.0.0.1:0", "127.0.0.1:0"),
            // IPv4's wildcard leaves IPv6 addresses alone.
            ("[::1]:8080", "0.0.0.0:8080"),
        ] {
            assert!(
                Config::parse(Path::new("gw.toml"), &text(admin, http)).is_ok(),
                "{admin} {http}"
            );
        }
    }

    #[test]
    fn host_names_are_refused_as_names_with_file_line_and_key() {
        let e = err(
            "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[[upstream]]\nname = \"a\"\n\
             servers = [\"10.0.0.1:80\", \"backend.internal:8080\"]\n",
        );
        assert!(
            e.starts_with("gw.toml:6: upstream.servers: `backend.internal:8080`: `backend.internal` is a host name; only IP addresses are accepted"),
            "{e}"
        );
        let e = err("[listen]\nhttps = [\"localhost:443\"]\n");
        assert!(
            e.starts_with("gw.toml:2: listen.https: `localhost:443`: `localhost` is a host name"),
            "{e}"
        );
        let e = err("[admin]\nlisten = \"localhost:9901\"\n");
        assert!(
            e.starts_with("gw.toml:2: admin.listen: `localhost:9901`: `localhost` is a host name"),
            "{e}"
        );
    }
}
