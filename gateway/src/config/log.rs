//! `[log]`: where the access log goes, whether it keeps query strings, and the format of the
//! operational log (stderr).

use super::Issue;
use serde::Deserialize;
use std::path::PathBuf;

/// Where access log lines go (`access`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessTarget {
    /// One JSON line per request on stdout (the default: journald or the container runtime
    /// collects it).
    #[default]
    Stdout,
    /// No access log, and no `X-Request-Id` handling.
    Off,
    /// Appended to this file, reopened on SIGUSR1 (logrotate).
    File(PathBuf),
}

impl<'de> Deserialize<'de> for AccessTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "stdout" => AccessTarget::Stdout,
            "off" => AccessTarget::Off,
            _ => AccessTarget::File(PathBuf::from(s)),
        })
    }
}

/// The operational log's format (`format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `TIME LEVEL TARGET: message key=value ...`, for people.
    #[default]
    Text,
    /// One JSON object per line (`time`, `level`, `target`, `message`, the event's fields).
    Json,
}

/// The `[log]` section as written.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `"stdout"`, `"off"` or an absolute file path.
    pub access: AccessTarget,
    /// Keep the query string in the access log's `path` (off by default: queries often carry
    /// personal data or credentials).
    pub query: bool,
    /// The operational log on stderr: `"text"` or `"json"`.
    pub format: LogFormat,
}

impl LogConfig {
    /// A file must be named by an absolute path (the service's working directory is not
    /// something to rely on) that is not a directory.
    pub fn validate(&self) -> Result<(), Issue> {
        if let AccessTarget::File(path) = &self.access {
            if !path.is_absolute() {
                return Err(Issue::new(
                    "access",
                    format!(
                        "`{}`: \"stdout\", \"off\" or an absolute file path",
                        path.display()
                    ),
                ));
            }
            if path.is_dir() {
                return Err(Issue::new(
                    "access",
                    format!("`{}` is a directory", path.display()),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    const BASE: &str = "[ebpf]\ninterface = \"lo\"\n\n";

    fn parse(log: &str) -> Result<super::LogConfig, String> {
        Config::parse(Path::new("gw.toml"), &format!("{BASE}{log}"))
            .map(|p| p.log)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_stdout_no_query_text() {
        let log = parse("").expect("no [log]");
        assert_eq!(log, super::LogConfig::default());
        assert_eq!(log.access, super::AccessTarget::Stdout);
        let log = parse("[log]\n").expect("empty [log]");
        assert_eq!(log, super::LogConfig::default());
    }

    #[test]
    fn every_key_is_read() {
        let log = parse(
            "[log]\naccess = \"/var/log/gateway/access.log\"\nquery = true\nformat = \"json\"\n",
        )
        .expect("valid");
        assert_eq!(
            log.access,
            super::AccessTarget::File("/var/log/gateway/access.log".into())
        );
        assert!(log.query);
        assert_eq!(log.format, super::LogFormat::Json);
        assert_eq!(
            parse("[log]\naccess = \"off\"\n").expect("off").access,
            super::AccessTarget::Off
        );
    }

    #[test]
    fn bad_values_name_file_line_and_key() {
        let e = parse("[log]\nquery = true\nacess = \"off\"\n").expect_err("typo");
        assert!(
            e.starts_with("gw.toml:6: log.acess: unknown field `acess`"),
            "{e}"
        );
        let e = parse("[log]\nformat = \"xml\"\n").expect_err("format");
        assert!(e.starts_with("gw.toml:5: log.format: "), "{e}");
        let e = parse("[log]\n\naccess = \"access.log\"\n").expect_err("relative");
        assert!(
            e.starts_with(
                "gw.toml:6: log.access: `access.log`: \"stdout\", \"off\" or an absolute file path"
            ),
            "{e}"
        );
        let e = parse("[log]\naccess = \"/tmp\"\n").expect_err("directory");
        assert!(
            e.starts_with("gw.toml:5: log.access: `/tmp` is a directory"),
            "{e}"
        );
        let e = parse("[log]\naccess = 1\n").expect_err("type");
        assert!(e.starts_with("gw.toml:5: log.access: "), "{e}");
    }
}
