//! One `bench.sh` run of the peer harness (a load tool against one port, the gateway's CPU
//! per request from /proc) and its result row.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use super::util::Proc;
use super::Ctx;

/// One bench.sh result row.
#[derive(Clone, Debug, Default)]
pub struct Row {
    pub rps: f64,
    pub p99_ms: f64,
    pub total: u64,
    pub bad: u64,
    pub errors: u64,
    /// Gateway CPU µs per request (1e6 / req_per_gw_cpu_s).
    pub us_per_req: f64,
}

/// The first result row of a bench.sh TSV (header line, then one row), if there is one.
pub fn parse_row(tsv: &str) -> Option<Row> {
    let line = tsv.lines().nth(1)?;
    let f: Vec<&str> = line.split('\t').collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    let eff = num(11).unwrap_or(f64::NAN);
    Some(Row {
        rps: num(3).unwrap_or(f64::NAN),
        p99_ms: num(5).unwrap_or(f64::NAN),
        total: num(6).unwrap_or(0.0) as u64,
        bad: num(8).unwrap_or(0.0) as u64,
        errors: num(9).unwrap_or(0.0) as u64,
        us_per_req: if eff > 0.0 { 1e6 / eff } else { f64::NAN },
    })
}

/// One bench.sh run's parameters.
pub struct Load<'a> {
    pub label: String,
    pub tool: &'a str,
    pub scheme: &'a str,
    pub port: u16,
    pub path: &'a str,
    pub token: &'a str,
    pub expect: &'a str,
    pub conns: u32,
    pub threads: u32,
    pub secs: u32,
    pub gw_pid: Option<u32>,
    pub be_pid: Option<u32>,
    /// Rotate tokens from this file (wrk + `bench/wrk-rotate.lua`).
    pub rotate: Option<&'a Path>,
}

impl Load<'_> {
    fn command(&self, ctx: &Ctx, tokens: &Path, results: &Path) -> Result<Command> {
        let mut c = Command::new("bash");
        c.arg(ctx.peer.join("bench.sh"))
            .env("WORK", &ctx.work)
            .env("TOKENS", tokens)
            .env("LABEL", &self.label)
            .env("TOOL", self.tool)
            .env("SCHEME", self.scheme)
            .env("TARGET", format!("127.0.0.1:{}", self.port))
            .env("URLPATH", self.path)
            .env("TOKEN", self.token)
            .env("EXPECT", self.expect)
            .env("CONNS", self.conns.to_string())
            .env("THREADS", self.threads.to_string())
            .env("DURATION", self.secs.to_string())
            .env("RAW_DIR", ctx.run_dir.join("raw"))
            .env("RESULTS", results)
            .stdin(Stdio::null());
        if let Some(pid) = self.gw_pid {
            c.env("GW_PID", pid.to_string());
        }
        if let Some(pid) = self.be_pid {
            c.env("BE_PID", pid.to_string());
        }
        if let Some(pool) = self.rotate {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut dirs = vec![wrk_shim(ctx)?];
            dirs.extend(std::env::split_paths(&path));
            c.env("PATH", std::env::join_paths(dirs)?)
                .env("WRK_LUA", ctx.root.join("bench/wrk-rotate.lua"))
                .env("WRK_TOKENS", pool);
        }
        Ok(c)
    }

    fn results_file(&self, ctx: &Ctx) -> PathBuf {
        let safe: String = self
            .label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        ctx.run_dir.join("tsv").join(format!("{safe}.tsv"))
    }

    /// Runs bench.sh to completion (it bounds itself: the tool's duration, then `timeout`).
    pub fn run(&self, ctx: &Ctx, tokens: &Path) -> Result<Row> {
        let results = self.results_file(ctx);
        std::fs::create_dir_all(results.parent().expect("parent"))?;
        let _ = std::fs::remove_file(&results);
        let out = self
            .command(ctx, tokens, &results)?
            .output()
            .context("run bench.sh")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if let Some(line) = stdout.lines().find(|l| l.starts_with("RESULT ")) {
            println!("    {}", line.split(" raw=").next().unwrap_or(line));
        }
        let tsv = std::fs::read_to_string(&results).unwrap_or_default();
        parse_row(&tsv).with_context(|| {
            format!(
                "bench.sh ({}) wrote no result ({}): {}{}",
                self.label,
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Starts bench.sh in the background (for the flood beside the probe).
    pub fn spawn(&self, ctx: &Ctx, tokens: &Path) -> Result<(Proc, PathBuf)> {
        let results = self.results_file(ctx);
        std::fs::create_dir_all(results.parent().expect("parent"))?;
        let _ = std::fs::remove_file(&results);
        let log = ctx.run_dir.join("flood.log");
        let p = Proc::spawn(
            "bench.sh flood",
            &mut self.command(ctx, tokens, &results)?,
            &log,
        )?;
        Ok((p, results))
    }
}

/// A directory with a `wrk` that adds `-s $WRK_LUA` to the real one (bench.sh has no option
/// for a Lua script; this keeps its measurement unchanged for the rotating-token scenario).
fn wrk_shim(ctx: &Ctx) -> Result<PathBuf> {
    let dir = ctx.work.join("wrk-shim");
    std::fs::create_dir_all(&dir)?;
    let real = Command::new("sh")
        .args(["-c", "command -v wrk"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty() && !s.contains("wrk-shim"))
        .unwrap_or_else(|| "/usr/bin/wrk".into());
    let script = dir.join("wrk");
    std::fs::write(
        &script,
        format!("#!/bin/sh\n# bench: wrk with the token-rotating Lua script\nexec {real} -s \"$WRK_LUA\" \"$@\"\n"),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

#[cfg(test)]
mod tests;
