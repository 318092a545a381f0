//! Running commands: every command that changes something is printed before it runs
//! (`==> ENV=val program args`), and a failure names the command line and its exit status.
//! Probes (`probe`) run quietly and only report what they found.

use std::env;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Variables that the outer `cargo xtask` invocation (cargo run, the rustup proxy, or a build
/// environment) puts into our environment and that must not reach a child cargo that builds
/// for another toolchain or target. `RUSTUP_TOOLCHAIN` would override `rustup run deb-web`,
/// `CARGO_ENCODED_RUSTFLAGS` would override `RUSTFLAGS`, and so on.
const TOOLCHAIN_VARS: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTDOC",
    "RUSTDOCFLAGS",
    "RUSTFLAGS",
    "RUSTC_BOOTSTRAP",
    "RUSTUP_TOOLCHAIN",
    "RUSTUP_TOOLCHAIN_SOURCE",
    "CARGO",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_RUSTC",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTDOC",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "CARGO_MAKEFLAGS",
    "CARGO_RUSTC_CURRENT_DIR",
];

/// Variables `cargo run` sets for the program it runs (describing the xtask package). They
/// mean nothing to a child cargo, but should not leak into tests or build scripts either.
const CARGO_RUN_VARS: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
];
const CARGO_RUN_PREFIXES: &[&str] = &["CARGO_PKG_", "CARGO_CFG_", "CARGO_FEATURE_", "__CARGO_"];

/// The root of the workspace (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The target directory of host builds: `CARGO_TARGET_DIR` when set, else `<root>/target`.
pub fn host_target_dir(root: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// `$CARGO_HOME/bin`, or `~/.cargo/bin`: where `cargo install` puts bpf-linker.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(home).join("bin"));
    }
    env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".cargo").join("bin"))
}

/// `PATH` with the cargo bin dir in front, or `None` when it is on `PATH` already.
pub fn path_with_cargo_bin() -> Option<OsString> {
    let current = env::var_os("PATH").unwrap_or_default();
    let bin = cargo_bin_dir()?;
    if env::split_paths(&current).any(|p| p == bin) {
        return None;
    }
    let mut dirs = vec![bin];
    dirs.extend(env::split_paths(&current));
    env::join_paths(dirs).ok()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn euid() -> u32 {
    // SAFETY: as above.
    unsafe { libc::geteuid() }
}

/// A command to run, with the environment changes we make recorded so they can be printed.
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    set: Vec<(String, OsString)>,
    removed: Vec<String>,
    cwd: Option<PathBuf>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            set: Vec::new(),
            removed: Vec::new(),
            cwd: None,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.removed.retain(|k| k != key);
        self.set.retain(|(k, _)| k != key);
        self.set.push((key.to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn env_remove(mut self, key: &str) -> Self {
        self.set.retain(|(k, _)| k != key);
        if !self.removed.iter().any(|k| k == key) {
            self.removed.push(key.to_owned());
        }
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Removes what `cargo run` set for xtask itself (package metadata and the like).
    pub fn without_cargo_run_env(mut self) -> Self {
        for key in CARGO_RUN_VARS {
            self = self.env_remove(key);
        }
        for (key, _) in env::vars_os() {
            let Some(key) = key.to_str() else { continue };
            if CARGO_RUN_PREFIXES.iter().any(|p| key.starts_with(p)) {
                self = self.env_remove(key);
            }
        }
        self
    }

    /// Removes everything that selects a toolchain, a target dir or compiler flags, on top of
    /// [`Cmd::without_cargo_run_env`]; for the eBPF build, which picks all of those itself.
    /// Also drops the rustup toolchain and target directories that `cargo run` prepends to
    /// `LD_LIBRARY_PATH` (they belong to the outer toolchain).
    pub fn without_toolchain_env(mut self) -> Self {
        self = self.without_cargo_run_env();
        for key in TOOLCHAIN_VARS {
            self = self.env_remove(key);
        }
        if let Some(value) = env::var_os("LD_LIBRARY_PATH") {
            let rustup_home = env::var_os("RUSTUP_HOME").map(PathBuf::from);
            let target = workspace_root().join("target");
            let kept: Vec<PathBuf> = env::split_paths(&value)
                .filter(|p| {
                    !p.starts_with(&target)
                        && !rustup_home.as_ref().is_some_and(|home| p.starts_with(home))
                        && !p.components().any(|c| c.as_os_str() == ".rustup")
                })
                .collect();
            if kept.is_empty() {
                self = self.env_remove("LD_LIBRARY_PATH");
            } else if let Ok(joined) = env::join_paths(kept) {
                if joined != value {
                    self = self.env("LD_LIBRARY_PATH", joined);
                }
            }
        }
        self
    }

    /// The command line as a shell would read it: the variables we set, then program and args.
    pub fn display(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        for (k, v) in &self.set {
            // PATH and LD_LIBRARY_PATH adjustments are noise in the log.
            if k == "PATH" || k == "LD_LIBRARY_PATH" {
                continue;
            }
            parts.push(format!("{k}={}", quote(v)));
        }
        parts.push(quote(&self.program));
        parts.extend(self.args.iter().map(|a| quote(a)));
        let line = parts.join(" ");
        match &self.cwd {
            Some(dir) => format!("(cd {} && {line})", quote(dir.as_os_str())),
            None => line,
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        for key in &self.removed {
            cmd.env_remove(key);
        }
        for (key, value) in &self.set {
            cmd.env(key, value);
        }
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// Prints the command, runs it with inherited stdio, and fails unless it exits with 0.
    pub fn run(&self) -> Result<()> {
        let line = self.display();
        println!("==> {line}");
        let status = self
            .command()
            .status()
            .with_context(|| format!("could not start `{line}`"))?;
        if !status.success() {
            bail!("command failed ({status}): {line}");
        }
        Ok(())
    }

    /// Prints the command, runs it with stderr inherited, and returns its stdout; fails unless
    /// it exits with 0.
    pub fn stdout(&self) -> Result<Vec<u8>> {
        let line = self.display();
        println!("==> {line}");
        let out = self
            .command()
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("could not start `{line}`"))?;
        if !out.status.success() {
            bail!("command failed ({}): {line}", out.status);
        }
        Ok(out.stdout)
    }

    /// Runs quietly and returns stdout (trimmed) when the command exits with 0.
    pub fn probe(&self) -> Option<String> {
        let out = self
            .command()
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// Quotes a word for display if a shell would need it.
pub fn quote(word: &OsStr) -> String {
    let s = word.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%^".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A path as the user should type it: relative to the current directory when it is below it.
pub fn show_path(path: &Path) -> String {
    if let Ok(cwd) = env::current_dir() {
        if let Ok(rel) = path.strip_prefix(&cwd) {
            if !rel.as_os_str().is_empty() {
                return rel.display().to_string();
            }
        }
    }
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_leaves_plain_words_alone() {
        assert_eq!(quote(OsStr::new("build-std=core")), "build-std=core");
        assert_eq!(quote(OsStr::new("/a/b.c")), "/a/b.c");
    }

    #[test]
    fn quote_quotes_spaces_globs_and_quotes() {
        assert_eq!(quote(OsStr::new("-C panic=abort")), "'-C panic=abort'");
        assert_eq!(quote(OsStr::new("*")), "'*'");
        assert_eq!(quote(OsStr::new("it's")), r"'it'\''s'");
        assert_eq!(quote(OsStr::new("")), "''");
    }

    #[test]
    fn display_shows_set_vars_and_cwd_but_not_removed_ones() {
        let cmd = Cmd::new("cargo")
            .cwd("/ws")
            .env("RUSTFLAGS", "-C a")
            .env_remove("CARGO_TARGET_DIR")
            .args(["build", "-p", "x"]);
        assert_eq!(
            cmd.display(),
            "(cd /ws && RUSTFLAGS='-C a' cargo build -p x)"
        );
    }

    #[test]
    fn env_after_remove_sets_and_remove_after_env_removes() {
        let cmd = Cmd::new("x").env_remove("A").env("A", "1");
        assert!(cmd.removed.is_empty());
        assert_eq!(cmd.set.len(), 1);
        let cmd = Cmd::new("x").env("A", "1").env_remove("A");
        assert!(cmd.set.is_empty());
        assert_eq!(cmd.removed, ["A"]);
    }

    #[test]
    fn toolchain_env_removes_rustup_toolchain_and_flags() {
        let cmd = Cmd::new("x").without_toolchain_env();
        for key in [
            "RUSTUP_TOOLCHAIN",
            "CARGO_ENCODED_RUSTFLAGS",
            "RUSTC",
            "CARGO_MANIFEST_DIR",
        ] {
            assert!(cmd.removed.iter().any(|k| k == key), "{key}");
        }
    }

    #[test]
    fn stdout_returns_the_output_and_fails_on_a_bad_status() {
        let out = Cmd::new("sh")
            .args(["-c", "printf 'a\\n\\n'"])
            .stdout()
            .unwrap();
        assert_eq!(out, b"a\n\n", "untrimmed");
        let err = Cmd::new("sh").args(["-c", "exit 4"]).stdout().unwrap_err();
        assert!(format!("{err:#}").contains("exit status: 4"), "{err:#}");
    }

    #[test]
    fn run_reports_the_command_and_status() {
        let err = Cmd::new("sh").args(["-c", "exit 3"]).run().unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.contains("sh -c 'exit 3'"), "{msg}");
    }
}
