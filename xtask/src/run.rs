//! `cargo xtask run`: setup, build, then the gateway in the foreground on a demo
//! configuration written to `target/demo/`. Until the proxy lands the demo is the data plane
//! alone (a config with only an `[ebpf]` section), attached to loopback.

use std::fs;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use crate::build_cmd;
use crate::cmd::{self, Cmd};
use crate::setup;

const DEMO_PIN_PATH: &str = "/sys/fs/bpf/gateway-demo";

#[derive(Args)]
pub struct RunArgs {
    /// Interface the demo attaches the data plane to.
    #[arg(long, default_value = "lo")]
    pub interface: String,
    /// Attach mode written into the demo config. The default is `xdp-generic` because
    /// loopback has no native XDP support (`xdp` on `lo` fails to attach).
    #[arg(long, value_enum, default_value_t = Mode::XdpGeneric)]
    pub mode: Mode,
    /// Skip `setup`.
    #[arg(long)]
    pub no_setup: bool,
}

#[derive(Clone, Copy, ValueEnum)]
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

    let demo_dir = cmd::host_target_dir(&root).join("demo");
    fs::create_dir_all(&demo_dir).with_context(|| format!("creating {}", demo_dir.display()))?;
    let config = demo_dir.join("gateway.toml");
    fs::write(&config, demo_config(&args.interface, args.mode))
        .with_context(|| format!("writing {}", config.display()))?;

    let bin = cmd::show_path(&artifacts.gateway_bin);
    let pin = DEMO_PIN_PATH;
    println!();
    println!(
        "==> demo: the data plane alone on `{}` (mode {})",
        args.interface,
        args.mode.as_str()
    );
    println!("    config:   {}", cmd::show_path(&config));
    println!("    pin path: {pin} (maps stay pinned there after exit; remove with `rm -r {pin}`)");
    println!("    policy:   SYNs to port 8080 limited to 20/s per source (burst 40), 192.0.2.0/24 denied");
    println!();
    println!("    Try in another terminal (as root, from this directory):");
    println!("      {bin} stats --pin-path {pin}");
    println!("      {bin} stats --pin-path {pin} --watch 1");
    println!("      {bin} deny add 127.0.0.2 --ttl 1m --pin-path {pin}");
    println!(
        "      ping -c 3 127.0.0.2          # replies come from 127.0.0.2: dropped while denied"
    );
    println!("      {bin} deny list --pin-path {pin}");
    println!("      {bin} deny del 127.0.0.2 --pin-path {pin}");
    println!(
        "      hping3 -S -p 8080 -c 200 -i u2000 127.0.0.1   # SYNs beyond the burst are dropped"
    );
    println!();
    if !cmd::is_root() {
        println!("==> note: not root: loading eBPF programs and pinning maps needs root (or CAP_BPF + CAP_NET_ADMIN).");
    }
    println!("==> starting the gateway in the foreground; stop it with Ctrl-C");
    // exec: the gateway gets the terminal and Ctrl-C directly, and its exit status is ours.
    Err(Cmd::new(&artifacts.gateway_bin)
        .without_cargo_run_env()
        .arg("run")
        .arg("--config")
        .arg(&config)
        .exec())
}

fn demo_config(interface: &str, mode: Mode) -> String {
    format!(
        r#"# Written by `cargo xtask run` (overwritten on every run): the data plane alone.
[ebpf]
interface = "{interface}"
mode = "{mode}"
pin_path = "{DEMO_PIN_PATH}"
protected_ports = [8080]
syn_rate = 20
syn_burst = 40
enforce = true
allow = []
deny = ["192.0.2.0/24"]
"#,
        mode = mode.as_str()
    )
}
