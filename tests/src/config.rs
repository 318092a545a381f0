//! Pieces of gateway configuration text that many end-to-end tests write the same way, so a
//! test's own `format!` holds only what is particular to it.

use crate::netns::{run, TestNet};
use anyhow::Result;
use std::path::Path;
use std::process::Command;

/// `[tls]` with one certificate: `tls.crt` and `tls.key` in `dir`.
pub fn tls_section(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"
[tls]
[[tls.certificates]]
cert = "{d}/tls.crt"
key = "{d}/tls.key"
"#
    )
}

/// `[jwt]` with one HS256 key read from `secret`.
pub fn hs256_jwt_section(secret: &Path) -> String {
    format!(
        r#"
[jwt]
[[jwt.keys]]
secret_file = "{}"
alg = "HS256"
"#,
        secret.display()
    )
}

/// Upstream `app` on `server`, and the routes of the tests of clients behind a proxy:
/// `/open/` needs no token, everything else does.
pub fn open_and_token_routes(server: &str) -> String {
    format!(
        r#"
[[upstream]]
name = "app"
servers = ["{server}"]

[[route]]
path_prefix = "/open/"
upstream = "app"
auth = "none"

[[route]]
path_prefix = "/"
upstream = "app"
"#
    )
}

/// `[ebpf]` in XDP mode on the server side of `net`'s veth, pinned in its bpffs, the deny
/// state in its directory; more `[ebpf]` keys may follow it.
pub fn xdp_section(net: &TestNet) -> String {
    format!(
        r#"
[ebpf]
interface = "{}"
mode = "xdp"
pin_path = "{}"
state_file = "{}/deny-state.json"
"#,
        net.pair.server_if,
        net.pin(),
        net.dir.display()
    )
}

/// A self-signed P-256 certificate for the address `ip` (as subject and SAN), written by
/// openssl to `tls.crt` and `tls.key` in `dir`: what [`tls_section`] reads.
pub fn self_signed_ip_cert(dir: &Path, ip: &str) -> Result<()> {
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec"])
        .args([
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args(["-subj", &format!("/CN={ip}")])
        .args(["-addext", &format!("subjectAltName=IP:{ip}")])
        .arg("-keyout")
        .arg(dir.join("tls.key"))
        .arg("-out")
        .arg(dir.join("tls.crt")))?;
    Ok(())
}
