//! The shared HAProxy peer harness (`../shared/peers/haproxy/`) and our gateway configured
//! like it: ports, keys and tokens (`gen-keys.sh`, `mint.py`, a pool from `gateway token
//! mint`), the peer's upstream (`backend.cfg`), HAProxy (`haproxy.cfg`) and our gateway
//! (`examples/peer-haproxy.toml` with this run's ports). Used by the e2e and memory sections.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::util::{self, Proc};
use super::Ctx;

pub const ISS: &str = "https://issuer.example/";
pub const AUD: &str = "https://api.example.com";

/// Loopback ports of everything the bench starts (picked free at start).
#[derive(Clone, Copy)]
pub struct Ports {
    pub backend: u16,
    pub hp_jwt_http: u16,
    pub hp_jwt_tls: u16,
    pub hp_plain_http: u16,
    pub hp_plain_tls: u16,
    pub hp_unsafe_http: u16,
    pub hp_es256_http: u16,
    pub gw_http: u16,
    pub gw_tls: u16,
    pub gw_admin: u16,
    pub gw_es256_http: u16,
    /// The e2e section's second gateway, the same config with an access log.
    pub gw_log_http: u16,
    pub gw_log_tls: u16,
    pub gw_log_admin: u16,
}

impl Ports {
    pub fn pick() -> Result<Self> {
        let p = util::free_ports(14)?;
        Ok(Self {
            backend: p[0],
            hp_jwt_http: p[1],
            hp_jwt_tls: p[2],
            hp_plain_http: p[3],
            hp_plain_tls: p[4],
            hp_unsafe_http: p[5],
            hp_es256_http: p[6],
            gw_http: p[7],
            gw_tls: p[8],
            gw_admin: p[9],
            gw_es256_http: p[10],
            gw_log_http: p[11],
            gw_log_tls: p[12],
            gw_log_admin: p[13],
        })
    }
}

/// Keys, tokens and the token pool, made by the peer's scripts (and `gateway token mint`).
pub struct Material {
    pub keys: PathBuf,
    pub tokens: PathBuf,
    pub pool: PathBuf,
    pub pool_size: usize,
}

pub fn peer_dir(root: &Path) -> Result<PathBuf> {
    let dir = root.join("../shared/peers/haproxy");
    if !dir.join("bench.sh").is_file() {
        bail!(
            "the shared HAProxy peer harness is missing: expected {} (bench.sh, haproxy.cfg, \
             backend.cfg, gen-keys.sh, mint.py)",
            dir.display()
        );
    }
    Ok(dir.canonicalize()?)
}
/// of distinct RS256 tokens for the cache-miss scenario (kept for 12 h; valid for 24 h).
pub fn material(ctx: &Ctx, pool_size: usize) -> Result<Material> {
    let keys = ctx.work.join("keys");
    let tokens = ctx.work.join("tokens");
    let status = Command::new("bash")
        .arg(ctx.peer.join("gen-keys.sh"))
        .env("KEYS_DIR", &keys)
        .stdout(Stdio::null())
        .status()
        .context("run gen-keys.sh")?;
    if !status.success() {
        bail!("gen-keys.sh failed ({status})");
    }
    let out = Command::new("python3")
        .arg(ctx.peer.join("mint.py"))
        .arg("--keys")
        .arg(&keys)
        .arg("--out")
        .arg(&tokens)
        .args(["--iss", ISS, "--aud", AUD])
        .output()
        .context("run mint.py")?;
    if !out.status.success() {
        bail!("mint.py failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let pool = mint_pool(ctx, &keys, pool_size)?;
    Ok(Material {
        keys,
        tokens,
        pool,
        pool_size,
    })
}

/// `pool_size` distinct RS256 tokens (the peer's issuer key, iss, aud, scope "read write",
/// a unique `jti`), one per line, minted with `gateway token mint`, 4 at a time.
fn mint_pool(ctx: &Ctx, keys: &Path, pool_size: usize) -> Result<PathBuf> {
    let path = ctx.work.join(format!("pool-rs256-{pool_size}.txt"));
    let key = keys.join("rsa_private.pem");
    let fresh = |p: &Path| -> bool {
        let (Ok(m), Ok(k)) = (p.metadata(), key.metadata()) else {
            return false;
        };
        let (Ok(mt), Ok(kt)) = (m.modified(), k.modified()) else {
            return false;
        };
        mt > kt
            && mt
                .elapsed()
                .is_ok_and(|age| age < Duration::from_secs(12 * 3600))
    };
    if fresh(&path) {
        let n = std::fs::read_to_string(&path)?.lines().count();
        if n == pool_size {
            println!("==> token pool: reusing {} ({n} tokens)", path.display());
            return Ok(path);
        }
    }
    println!("==> minting {pool_size} distinct RS256 tokens (gateway token mint, once per 12 h)");
    let started = Instant::now();
    let tag = std::process::id();
    let mut out = Vec::with_capacity(pool_size);
    let mut i = 0;
    while i < pool_size {
        let batch: Vec<_> = (i..(i + 4).min(pool_size))
            .map(|n| {
                Command::new(&ctx.gateway_bin)
                    .args(["token", "mint", "--alg", "RS256", "--ttl", "24h"])
                    .arg("--key")
                    .arg(&key)
                    .args(["--iss", ISS, "--aud", AUD, "--claims"])
                    .arg(format!(
                        r#"{{"sub":"client-123","scope":"read write","jti":"bench-{tag}-{n}"}}"#
                    ))
                    .stdin(Stdio::null())
                    .stderr(Stdio::inherit())
                    .stdout(Stdio::piped())
                    .spawn()
            })
            .collect::<std::io::Result<_>>()
            .context("run gateway token mint")?;
        for child in batch {
            let o = child.wait_with_output()?;
            if !o.status.success() {
                bail!("gateway token mint failed ({})", o.status);
            }
            out.push(String::from_utf8_lossy(&o.stdout).trim().to_owned());
        }
        i += 4;
    }
    std::fs::write(&path, out.join("\n") + "\n")?;
    println!(
        "==> token pool ready: {} ({:.0} s)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(path)
}

/// `haproxy -f <cfg> -db` (in the foreground, logging to stderr).
fn haproxy(cfg: &Path) -> Command {
    let mut c = Command::new("haproxy");
    c.arg("-f").arg(cfg).arg("-db");
    c
}

/// The peer's upstream: `haproxy -f backend.cfg`, one thread.
pub fn start_backend(ctx: &Ctx, ports: &Ports) -> Result<Proc> {
    let log = ctx.run_dir.join("backend.log");
    let mut p = Proc::spawn(
        "upstream (haproxy backend.cfg)",
        haproxy(&ctx.peer.join("backend.cfg"))
            .env("BACKEND_ADDR", format!("127.0.0.1:{}", ports.backend))
            .env("BACKEND_THREADS", "1"),
        &log,
    )?;
    util::wait_port(&mut p, &log, ports.backend)?;
    Ok(p)
}

/// HAProxy as run.sh starts it: `haproxy.cfg` with its environment, nbthread 2.
pub fn start_haproxy(ctx: &Ctx, ports: &Ports, m: &Material) -> Result<Proc> {
    start_haproxy_with(ctx, ports, m, &ctx.peer.join("haproxy.cfg"))
}

/// [`start_haproxy`] with another config (a variant of the peer's `haproxy.cfg`).
pub fn start_haproxy_with(ctx: &Ctx, ports: &Ports, m: &Material, cfg: &Path) -> Result<Proc> {
    let log = ctx.run_dir.join("haproxy.log");
    let a = |p: u16| format!("127.0.0.1:{p}");
    let mut p = Proc::spawn(
        "haproxy (haproxy.cfg)",
        haproxy(cfg)
            .env("GW_THREADS", "2")
            .env("BACKEND_ADDR", a(ports.backend))
            .env("GW_JWT_HTTP", a(ports.hp_jwt_http))
            .env("GW_JWT_TLS", a(ports.hp_jwt_tls))
            .env("GW_PLAIN_HTTP", a(ports.hp_plain_http))
            .env("GW_PLAIN_TLS", a(ports.hp_plain_tls))
            .env("GW_UNSAFE_HTTP", a(ports.hp_unsafe_http))
            .env("GW_ES256_HTTP", a(ports.hp_es256_http))
            .env("JWT_ISS", ISS)
            .env("JWT_AUD", AUD)
            .env("JWT_RSA_PUBKEY", m.keys.join("rsa_public.pem"))
            .env("JWT_EC_PUBKEY", m.keys.join("ec_public.pem"))
            .env("TLS_PEM", m.keys.join("tls.pem"))
            .env("GW_SOCK", ctx.run_dir.join("haproxy.sock")),
        &log,
    )?;
    for port in [
        ports.hp_jwt_http,
        ports.hp_jwt_tls,
        ports.hp_plain_http,
        ports.hp_plain_tls,
        ports.hp_es256_http,
    ] {
        util::wait_port(&mut p, &log, port)?;
    }
    Ok(p)
}

/// `examples/peer-haproxy.toml` with this run's ports, plus: a `/plain/` route with
/// `auth = "none"` (the no-JWT baseline, like HAProxy's plain_proxy frontend), connection
/// limits and an idle timeout high enough for the memory section's idle connections, and a
/// verified-token cache smaller than the token pool (so rotating tokens miss), and the access
/// log off (its cost is measured on its own, by the e2e section's second gateway:
/// [`with_access_log`]).
pub fn our_config(ctx: &Ctx, ports: &Ports, cache_entries: usize) -> Result<String> {
    let example = ctx.root.join("examples/peer-haproxy.toml");
    let mut text =
        std::fs::read_to_string(&example).with_context(|| format!("read {}", example.display()))?;
    for (from, to) in [
        ("\"127.0.0.1:9443\"", ports.gw_tls),
        ("\"127.0.0.1:9080\"", ports.gw_http),
        ("\"127.0.0.1:9901\"", ports.gw_admin),
        ("\"127.0.0.1:8090\"", ports.backend),
    ] {
        if text.matches(from).count() != 1 {
            bail!(
                "{} should name {from} exactly once (the bench rewrites it)",
                example.display()
            );
        }
        text = text.replace(from, &format!("\"127.0.0.1:{to}\""));
    }
    if text.matches("[listen]\n").count() != 1 {
        bail!("{} should have one [listen] section", example.display());
    }
    text = text.replace(
        "[listen]\n",
        "[listen]\n# bench: room for the memory section's idle connections (one source)\n\
         max_connections_per_source = 30000\nmax_connections = 30000\nheader_read_timeout = \"300s\"\n",
    );
    text += &format!(
        "\n# bench: the no-JWT baseline (HAProxy: frontend plain_proxy)\n\
         [[route]]\nname = \"plain\"\npath_prefix = \"/plain/\"\nupstream = \"app\"\nauth = \"none\"\n\
         \n# bench: smaller than the rotating token pool, so that scenario misses\n\
         [jwt.cache]\nmax_entries = {cache_entries}\n\
         \n# bench: comparable with runs before the access log existed\n\
         [log]\n{ACCESS_OFF}\n"
    );
    Ok(text)
}

/// The peer's `haproxy.cfg` with room for the memory section's idle connections, like
/// [`our_config`] gives ours: `maxconn` `conns` + 100, `no strict-limits` (HAProxy asks for two
/// file descriptors per `maxconn`, one for each side, and by default refuses to start if it
/// cannot have them, while an idle client connection holds one), and the client, request and keep-alive
/// timeouts at 300 s (our `header_read_timeout`). Written to the run directory; the peer's
/// file is left alone.
pub fn haproxy_idle_config(ctx: &Ctx, conns: u32) -> Result<PathBuf> {
    let src = ctx.peer.join("haproxy.cfg");
    let mut text =
        std::fs::read_to_string(&src).with_context(|| format!("read {}", src.display()))?;
    let maxconn = format!("    maxconn {}\n    no strict-limits\n", conns + 100);
    for (from, to) in [
        ("    maxconn 4096\n", maxconn.as_str()),
        ("    timeout client  30s\n", "    timeout client  300s\n"),
        (
            "    timeout http-request 10s\n",
            "    timeout http-request 300s\n",
        ),
        (
            "    timeout http-keep-alive 30s\n",
            "    timeout http-keep-alive 300s\n",
        ),
    ] {
        if text.matches(from).count() != 1 {
            bail!(
                "{} should have `{}` exactly once (the memory section raises it)",
                src.display(),
                from.trim()
            );
        }
        text = text.replace(from, to);
    }
    let out = ctx.run_dir.join("haproxy-memory.cfg");
    std::fs::write(&out, text).with_context(|| format!("write {}", out.display()))?;
    Ok(out)
}

const ACCESS_OFF: &str = "access = \"off\"";

/// [`our_config`] text with the access log written to `file` instead of off.
pub fn with_access_log(config: &str, file: &Path) -> String {
    config.replace(ACCESS_OFF, &format!("access = \"{}\"", file.display()))
}

/// The ES256 twin of HAProxy's port 8083: plain HTTP, ES256 only, the peer's P-256 key.
pub fn our_es256_config(ports: &Ports, keys: &Path) -> String {
    format!(
        r#"# bench: ES256 twin of HAProxy's api_gateway_es256 frontend
[runtime]
worker_threads = 2

[listen]
http = ["127.0.0.1:{http}"]

[jwt]
issuers = ["{ISS}"]
audiences = ["{AUD}"]
algorithms = ["ES256"]

[[jwt.keys]]
pem = "{key}"
alg = "ES256"

[jwt.verify_budget]
enabled = false

[[upstream]]
name = "app"
servers = ["127.0.0.1:{backend}"]

[[route]]
name = "api"
path_prefix = "/api/"
upstream = "app"
auth = "required"
"#,
        http = ports.gw_es256_http,
        key = keys.join("ec_public.pem").display(),
        backend = ports.backend,
    )
}

/// `gateway run --config FILE` (RUST_LOG=warn: HAProxy logs nothing either).
pub fn start_ours(ctx: &Ctx, name: &str, config: &Path, wait: &[u16]) -> Result<Proc> {
    let log = ctx.run_dir.join(format!("{name}.log"));
    let mut p = Proc::spawn(
        name,
        Command::new(&ctx.gateway_bin)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("WORK", &ctx.work)
            .env("RUST_LOG", "warn"),
        &log,
    )?;
    for port in wait {
        util::wait_port(&mut p, &log, *port)?;
    }
    Ok(p)
}
