//! `cargo xtask run`: setup, build, then the whole gateway on loopback with a built-in demo.
//!
//! Into the state folder `target/demo/` (kept between runs; what exists and is valid is
//! reused) go a self-signed CA and a server certificate for `localhost`, an ES256 issuer key
//! and its JWKS, and `gateway.toml`, written from `examples/demo.toml`. Then an echo upstream
//! starts on a free loopback port, the gateway starts with the data plane on `lo` (generic
//! XDP), falling back to `mode = "off"` when the kernel refuses, and the ready-to-paste
//! commands are printed with freshly minted tokens. Ctrl-C stops the gateway (forwarded as
//! SIGINT), then the upstream; the gateway's exit status becomes ours.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::build_cmd;
use crate::cmd::{self, Cmd};
use crate::demo::{self, echo::Echo, pki, Gateway, Start};
use crate::setup;

const DEMO_PIN_PATH: &str = "/sys/fs/bpf/gateway-demo";
/// Must match `[jwt] issuers` and `audiences` in `examples/demo.toml`.
const ISSUER: &str = "https://issuer.demo.localhost/";
const AUDIENCE: &str = "gateway-demo";
/// Lifetime of the tokens minted for the printed commands.
const TOKEN_TTL: &str = "12h";

#[derive(Args)]
pub struct RunArgs {
    /// Interface the demo attaches the data plane to.
    #[arg(long, default_value = "lo")]
    pub interface: String,
    /// Attach mode of the data plane. The default is `xdp-generic` because loopback has no
    /// native XDP support (`xdp` on `lo` fails to attach). When the kernel refuses (not
    /// root, no BPF), the demo falls back to `off` and says why.
    #[arg(long, value_enum, default_value_t = Mode::XdpGeneric)]
    pub mode: Mode,
    /// Loopback port of the HTTPS listener.
    #[arg(long, default_value_t = 8443)]
    pub https_port: u16,
    /// Loopback port of the admin endpoint (metrics, health).
    #[arg(long, default_value_t = 9901)]
    pub admin_port: u16,
    /// Skip `setup`.
    #[arg(long)]
    pub no_setup: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Xdp,
    XdpGeneric,
    Tc,
    Off,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Xdp => "xdp",
            Mode::XdpGeneric => "xdp-generic",
            Mode::Tc => "tc",
            Mode::Off => "off",
        }
    }
}

pub fn run(args: &RunArgs) -> Result<()> {
    if !args.no_setup {
        setup::run()?;
    }
    let artifacts = build_cmd::all(false)?;
    let root = cmd::workspace_root();
    let gateway = artifacts.gateway_bin.clone();

    let https = loopback(args.https_port);
    let admin = loopback(args.admin_port);
    for (addr, flag) in [(https, "--https-port"), (admin, "--admin-port")] {
        if let Err(e) = TcpListener::bind(addr) {
            bail!(
                "cannot use {addr} ({e}): is another gateway or demo running? \
                 Stop it, or pick another port with {flag}"
            );
        }
    }

    let dir = cmd::host_target_dir(&root).join("demo");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    println!("==> demo state in {}", cmd::show_path(&dir));
    let pki = pki::ensure(&dir)?;

    let echo = Echo::start(loopback(0))?;
    println!("==> echo upstream listening on http://{}", echo.addr());

    let config = dir.join("gateway.toml");
    let upstream = echo.addr();
    let vars = |mode: Mode| template_vars(&dir, upstream, args, mode);
    write_config(&config, &vars(args.mode))?;
    Cmd::new(&gateway)
        .args(["config", "check", "--config"])
        .arg(&config)
        .run()?;

    let read_token = dir.join("read.jwt");
    let write_token = dir.join("write.jwt");
    mint(
        &gateway,
        &pki,
        r#"{"sub":"alice","scope":"read"}"#,
        &read_token,
    )?;
    mint(
        &gateway,
        &pki,
        r#"{"sub":"bob","scope":"read write"}"#,
        &write_token,
    )?;

    // From here on Ctrl-C is forwarded to the gateway instead of ending xtask.
    demo::catch_signals();
    let mut mode = args.mode;
    let mut fallback: Option<String> = None;
    let mut gw = loop {
        let mut gw = Gateway::spawn(&gateway, &config)?;
        match gw.wait_ready(admin, Duration::from_secs(60))? {
            Start::Ready => break gw,
            Start::Interrupted => return finish(gw, echo, mode),
            Start::Exited {
                data_plane_started: false,
                last_error,
                ..
            } if mode != Mode::Off => {
                let why = last_error.unwrap_or_else(|| "no reason given".into());
                println!();
                println!(
                    "==> the data plane did not start (mode {} on {}): {why}",
                    mode.as_str(),
                    args.interface
                );
                if !cmd::is_root() {
                    println!(
                        "    not root (euid {}): loading eBPF programs and pinning maps needs root \
                         (or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON)",
                        cmd::euid()
                    );
                }
                println!(
                    "==> falling back to mode = \"off\": the proxy runs without the kernel plane \
                     (no kernel counters, XDP drops or SYN limit; denied sources are refused at \
                     accept instead)"
                );
                fallback = Some(why);
                mode = Mode::Off;
                write_config(&config, &vars(mode))?;
            }
            Start::Exited { status, .. } => {
                echo.stop();
                bail!(
                    "the gateway exited during start-up ({status}); its messages are above. \
                     Config: {}",
                    cmd::show_path(&config)
                );
            }
        }
    };

    print_banner(&Banner {
        gateway: &gateway,
        config: &config,
        dir: &dir,
        ca: &pki.ca_cert,
        read_token: &read_token,
        write_token: &write_token,
        https_port: args.https_port,
        admin,
        upstream,
        interface: &args.interface,
        mode,
        fallback: fallback.as_deref(),
    });
    let status = gw.wait();
    drop(gw);
    exit_after(status, echo, mode)
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// The values of the `${DEMO_*}` references in `examples/demo.toml`.
pub fn template_vars(
    dir: &Path,
    upstream: SocketAddr,
    args: &RunArgs,
    mode: Mode,
) -> Vec<(&'static str, String)> {
    vec![
        ("DEMO_DIR", dir.display().to_string()),
        ("DEMO_UPSTREAM", upstream.to_string()),
        ("DEMO_HTTPS_PORT", args.https_port.to_string()),
        ("DEMO_ADMIN_PORT", args.admin_port.to_string()),
        ("DEMO_INTERFACE", args.interface.clone()),
        ("DEMO_EBPF_MODE", mode.as_str().to_string()),
    ]
}

fn write_config(path: &Path, vars: &[(&str, String)]) -> Result<()> {
    let body = demo::fill_template(demo::TEMPLATE, vars)?;
    let text = format!(
        "# Written by `cargo xtask run` from examples/demo.toml (overwritten on every run).\n\n{body}"
    );
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("==> wrote {}", cmd::show_path(path));
    Ok(())
}

/// Mints a token with the issuer key into `out`.
fn mint(gateway: &Path, pki: &pki::Pki, claims: &str, out: &Path) -> Result<()> {
    let mut args: Vec<std::ffi::OsString> = vec!["token".into(), "mint".into(), "--key".into()];
    args.push(pki.issuer_key.clone().into());
    for a in [
        "--alg",
        pki::ISSUER_ALG,
        "--kid",
        pki::ISSUER_KID,
        "--iss",
        ISSUER,
        "--aud",
        AUDIENCE,
        "--ttl",
        TOKEN_TTL,
        "--claims",
        claims,
    ] {
        args.push(a.into());
    }
    let token = demo::output(gateway, &args)?;
    fs::write(out, format!("{token}\n")).with_context(|| format!("writing {}", out.display()))
}

/// After an interrupted start-up: wait for the gateway, then stop like a normal run.
fn finish(mut gw: Gateway, echo: Echo, mode: Mode) -> Result<()> {
    let status = gw.wait();
    drop(gw);
    exit_after(status, echo, mode)
}

/// Stops the upstream and ends xtask with the gateway's exit status.
fn exit_after(status: std::process::ExitStatus, echo: Echo, mode: Mode) -> Result<()> {
    println!("==> gateway exited ({status}); stopping the echo upstream");
    echo.stop();
    if mode != Mode::Off {
        println!(
            "==> the maps stay pinned at {DEMO_PIN_PATH} (a restart reuses them); remove with `rm -r {DEMO_PIN_PATH}`"
        );
    }
    match demo::exit_code(status) {
        0 => Ok(()),
        code => std::process::exit(code),
    }
}

struct Banner<'a> {
    gateway: &'a Path,
    config: &'a Path,
    dir: &'a Path,
    ca: &'a Path,
    read_token: &'a Path,
    write_token: &'a Path,
    https_port: u16,
    admin: SocketAddr,
    upstream: SocketAddr,
    interface: &'a str,
    mode: Mode,
    fallback: Option<&'a str>,
}

fn print_banner(b: &Banner) {
    let bin = cmd::show_path(b.gateway);
    let cfg = cmd::show_path(b.config);
    let ca = cmd::show_path(b.ca);
    let url = format!("https://localhost:{}", b.https_port);
    let curl = format!("curl -sS --cacert {ca}");
    let bearer = |p: &Path| format!("-H \"Authorization: Bearer $(cat {})\"", cmd::show_path(p));
    let read = bearer(b.read_token);
    let write = bearer(b.write_token);

    println!();
    println!("==> demo ready");
    println!("    gateway:    {url} (TLS, certificate signed by {ca})");
    println!(
        "    admin:      http://{}/metrics, /healthz, /readyz",
        b.admin
    );
    println!(
        "    upstream:   echo on http://{} (method, path, X-* headers as JSON)",
        b.upstream
    );
    match b.fallback {
        None if b.mode != Mode::Off => println!(
            "    data plane: {} on {}, maps pinned at {DEMO_PIN_PATH}; SYNs to port {} limited to 20/s per source (burst 40)",
            b.mode.as_str(),
            b.interface,
            b.https_port
        ),
        None => println!("    data plane: off (--mode off)"),
        Some(why) => println!("    data plane: OFF, it did not start: {why}"),
    }
    println!(
        "    abuse:      monitor mode: would-be bans are logged (\"abuse: would ban\"), none made"
    );
    println!("    config:     {cfg} (from examples/demo.toml)");
    println!(
        "    state:      {} (CA, server certificate, issuer key, JWKS; reused by the next run)",
        cmd::show_path(b.dir)
    );
    println!(
        "    tokens:     {} (sub alice, scope \"read\") and {} (sub bob, scope \"read write\"), ES256, valid {TOKEN_TTL}",
        cmd::show_path(b.read_token),
        cmd::show_path(b.write_token)
    );
    println!();
    println!("    Try in another terminal (from this directory):");
    println!();
    println!("    # read token, GET: 200; the upstream echoes X-Auth-Sub and X-Auth-Scope");
    println!("    {curl} {read} {url}/api/hello");
    println!("    # write token, POST: 200");
    println!("    {curl} {write} -d '{{\"n\":1}}' {url}/api/items");
    println!("    # read token, POST: 403 insufficient_scope");
    println!("    {curl} -i {read} -d '{{\"n\":1}}' {url}/api/items");
    println!("    # no token: 401 with WWW-Authenticate: Bearer");
    println!("    {curl} -i {url}/api/hello");
    println!("    # a spoofed claim header is replaced by the token's claim");
    println!("    {curl} {read} -H 'X-Auth-Sub: mallory' {url}/api/hello");
    println!("    # no token needed on /public/");
    println!("    {curl} {url}/public/hello");
    println!();
    println!(
        "    {bin} token verify --config {cfg} $(cat {})",
        cmd::show_path(b.read_token)
    );
    if b.mode != Mode::Off {
        println!("    {bin} stats --config {cfg}");
    } else {
        println!(
            "    curl -s http://{}/metrics   # `gateway stats` needs the data plane's pinned maps",
            b.admin
        );
    }
    let dropped = if b.mode != Mode::Off {
        "times out: dropped in XDP"
    } else {
        "fails: refused at accept (no data plane)"
    };
    println!("    # deny a source (127.0.0.2 is loopback too), try from it, look, undo");
    println!("    {bin} deny add 127.0.0.2 --ttl 1m --reason demo --config {cfg}");
    println!("    {curl} --interface 127.0.0.2 --max-time 3 {url}/public/hello   # {dropped}");
    println!("    {bin} deny list --config {cfg}");
    println!("    {bin} deny del 127.0.0.2 --config {cfg}");
    println!();
    println!("==> the gateway runs in the foreground; stop it (and the upstream) with Ctrl-C");
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_matches_the_constants() {
        assert!(demo::TEMPLATE.contains(&format!("issuers = [\"{ISSUER}\"]")));
        assert!(demo::TEMPLATE.contains(&format!("audiences = [\"{AUDIENCE}\"]")));
        assert!(demo::TEMPLATE.contains(&format!("algorithms = [\"{}\"]", pki::ISSUER_ALG)));
        assert!(demo::TEMPLATE.contains(&format!("pin_path = \"{DEMO_PIN_PATH}\"")));
    }
}
