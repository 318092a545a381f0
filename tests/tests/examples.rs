//! Every configuration in `examples/` passes `gateway config check`.
//!
//! `${VAR}` references without a default are set to a scratch directory (the examples use
//! them for paths: `WORK`, ...); variables with a default are removed from the environment,
//! so the defaults the examples document are what gets checked. The examples name
//! certificate and key files that do not exist here, so the check is `--skip-files` (the
//! file checks have tests of their own in `gateway::config::files` and `cli.rs`).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use gateway_tests::gateway;

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("gateway-examples-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// The `${NAME}` and `${NAME:-default}` references outside comment lines: (with default,
/// without default).
fn references(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut with, mut without) = (BTreeSet::new(), BTreeSet::new());
    for line in text.lines() {
        let line = line.split_once('#').map_or(line, |(code, _)| code);
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            if start > 0 && rest.as_bytes()[start - 1] == b'$' {
                rest = &rest[start + 2..];
                continue;
            }
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else { break };
            let inner = &after[..end];
            match inner.split_once(":-") {
                Some((name, _)) => with.insert(name.to_string()),
                None => without.insert(inner.to_string()),
            };
            rest = &after[end + 1..];
        }
    }
    (with, without)
}

#[test]
fn references_are_found() {
    let (with, without) = references(
        "a = \"${WORK}/x\" # ${IGNORED}\nb = [${PORT:-1}, \"$${LITERAL}\"]\n# ${ALSO}\n",
    );
    assert_eq!(with.into_iter().collect::<Vec<_>>(), ["PORT"]);
    assert_eq!(without.into_iter().collect::<Vec<_>>(), ["WORK"]);
}

#[test]
fn every_example_passes_config_check() {
    let scratch = Scratch::new();
    let mut files: Vec<PathBuf> = fs::read_dir(examples_dir())
        .expect("read examples/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for want in ["gateway.toml", "demo.toml", "peer-haproxy.toml"] {
        assert!(
            names.iter().any(|n| n == want),
            "examples/{want} is missing (have {names:?})"
        );
    }

    let mut failures = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).expect("read example");
        let (with_default, without_default) = references(&text);
        let mut cmd = Command::new(gateway::bin());
        cmd.args(["config", "check", "--skip-files", "--config"])
            .arg(file)
            .stdin(Stdio::null());
        for name in &with_default {
            cmd.env_remove(name);
        }
        for name in &without_default {
            cmd.env(name, &scratch.0);
        }
        let out = cmd.output().expect("run gateway config check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || !stdout.trim_end().ends_with(": ok") {
            failures.push(format!(
                "{} ({}; vars set: {without_default:?}, left to defaults: {with_default:?}):\n{stdout}{stderr}",
                file.display(),
                out.status
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_required_variable_that_is_unset_is_named() {
    // The contract the examples rely on: a missing variable is an error naming it, not an
    // empty path.
    let example = examples_dir().join("peer-haproxy.toml");
    let out = Command::new(gateway::bin())
        .args(["config", "check", "--config"])
        .arg(&example)
        .env_remove("WORK")
        .stdin(Stdio::null())
        .output()
        .expect("run gateway config check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("peer-haproxy.toml:") && stderr.contains("`WORK` is not set"),
        "{stderr}"
    );
}
