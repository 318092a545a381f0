//! The demo's keys and certificates, made with the `openssl` CLI (setup installs it) into the
//! state folder and reused while they are complete and valid:
//!
//! - `ca.key`, `ca.crt`: a self-signed CA (P-256, 10 years); clients trust it with
//!   `curl --cacert`.
//! - `server.key`, `server.crt`: the gateway's certificate for `localhost`, 127.0.0.1 and
//!   ::1, signed by the CA (about 2 years; renewed when less than a day is left or when the
//!   CA changed).
//! - `issuer.key` (PKCS#8), `issuer.pub.pem`: the token issuer's ES256 key pair.
//! - `jwks.json`: the issuer's public key as a JWK Set (rewritten from the key on every run).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::cmd::Cmd;

/// Key id of the issuer key, in the JWKS and in minted tokens' headers.
pub const ISSUER_KID: &str = "demo-es256";
/// The algorithm of the issuer key.
pub const ISSUER_ALG: &str = "ES256";

/// Paths of everything [`ensure`] made or found.
pub struct Pki {
    pub ca_cert: PathBuf,
    pub issuer_key: PathBuf,
}

/// Makes what is missing in `dir`, reuses the rest.
pub fn ensure(dir: &Path) -> Result<Pki> {
    let p = |name: &str| dir.join(name);
    let (ca_key, ca_cert) = (p("ca.key"), p("ca.crt"));
    let (server_key, server_cert) = (p("server.key"), p("server.crt"));
    let (issuer_key, issuer_pub, jwks) = (p("issuer.key"), p("issuer.pub.pem"), p("jwks.json"));

    let ca_ok = ca_key.is_file() && ca_cert.is_file() && valid_for_a_day(&ca_cert);
    if !ca_ok {
        make_ca(dir, &ca_key, &ca_cert)?;
    } else {
        println!(
            "==> reusing the demo CA {}",
            crate::cmd::show_path(&ca_cert)
        );
    }
    let server_ok = ca_ok
        && server_key.is_file()
        && server_cert.is_file()
        && valid_for_a_day(&server_cert)
        && signed_by(&server_cert, &ca_cert);
    if !server_ok {
        make_server_cert(dir, &ca_key, &ca_cert, &server_key, &server_cert)?;
    } else {
        println!(
            "==> reusing the server certificate {}",
            crate::cmd::show_path(&server_cert)
        );
    }
    if !issuer_key.is_file() {
        Cmd::new("openssl")
            .args(["genpkey", "-algorithm", "EC", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-out"])
            .arg(&issuer_key)
            .run()?;
        private(&issuer_key)?;
    } else {
        println!(
            "==> reusing the issuer key {}",
            crate::cmd::show_path(&issuer_key)
        );
    }
    // The public half and the JWKS always follow the private key.
    Cmd::new("openssl")
        .args(["pkey", "-in"])
        .arg(&issuer_key)
        .args(["-pubout", "-out"])
        .arg(&issuer_pub)
        .run()?;
    let der = dir.join("issuer.pub.der");
    Cmd::new("openssl")
        .args(["pkey", "-pubin", "-in"])
        .arg(&issuer_pub)
        .args(["-outform", "DER", "-out"])
        .arg(&der)
        .run()?;
    let spki = fs::read(&der).with_context(|| format!("reading {}", der.display()))?;
    let _ = fs::remove_file(&der);
    let doc = jwks_for_p256(&spki).with_context(|| {
        format!(
            "{} is not a P-256 key; remove it to get a new one",
            issuer_key.display()
        )
    })?;
    fs::write(&jwks, doc).with_context(|| format!("writing {}", jwks.display()))?;
    println!("==> wrote {}", crate::cmd::show_path(&jwks));
    Ok(Pki {
        ca_cert,
        issuer_key,
    })
}

fn make_ca(dir: &Path, key: &Path, cert: &Path) -> Result<()> {
    let cnf = dir.join("ca.cnf");
    fs::write(
        &cnf,
        "[req]\n\
         distinguished_name = dn\n\
         prompt = no\n\
         x509_extensions = v3_ca\n\
         [dn]\n\
         CN = gateway demo CA\n\
         [v3_ca]\n\
         basicConstraints = critical, CA:TRUE, pathlen:0\n\
         keyUsage = critical, keyCertSign, cRLSign\n\
         subjectKeyIdentifier = hash\n",
    )
    .with_context(|| format!("writing {}", cnf.display()))?;
    new_ec_key(key)?;
    Cmd::new("openssl")
        .args([
            "req", "-x509", "-new", "-sha256", "-days", "3650", "-config",
        ])
        .arg(&cnf)
        .arg("-key")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .run()?;
    let _ = fs::remove_file(&cnf);
    Ok(())
}

/// A new P-256 private key at `key`, readable by its owner only.
fn new_ec_key(key: &Path) -> Result<()> {
    Cmd::new("openssl")
        .args(["genpkey", "-algorithm", "EC", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-out"])
        .arg(key)
        .run()?;
    private(key)
}

fn make_server_cert(
    dir: &Path,
    ca_key: &Path,
    ca_cert: &Path,
    key: &Path,
    cert: &Path,
) -> Result<()> {
    let (csr, ext) = (dir.join("server.csr"), dir.join("server.ext"));
    fs::write(
        &ext,
        "basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1\n\
         subjectKeyIdentifier = hash\n\
         authorityKeyIdentifier = keyid\n",
    )
    .with_context(|| format!("writing {}", ext.display()))?;
    new_ec_key(key)?;
    Cmd::new("openssl")
        .args(["req", "-new", "-sha256", "-subj", "/CN=localhost", "-key"])
        .arg(key)
        .arg("-out")
        .arg(&csr)
        .run()?;
    let serial = format!(
        "0x{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(1)
    );
    Cmd::new("openssl")
        .args(["x509", "-req", "-sha256", "-days", "825", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(ca_cert)
        .arg("-CAkey")
        .arg(ca_key)
        .args(["-set_serial", &serial, "-extfile"])
        .arg(&ext)
        .arg("-out")
        .arg(cert)
        .run()?;
    let _ = fs::remove_file(&csr);
    let _ = fs::remove_file(&ext);
    Ok(())
}

/// Whether the certificate parses and is still valid a day from now.
fn valid_for_a_day(cert: &Path) -> bool {
    Cmd::new("openssl")
        .args(["x509", "-noout", "-checkend", "86400", "-in"])
        .arg(cert)
        .probe()
        .is_some()
}

/// Whether `cert` verifies against `ca` (a regenerated CA invalidates the old leaf).
fn signed_by(cert: &Path, ca: &Path) -> bool {
    Cmd::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(ca)
        .arg(cert)
        .probe()
        .is_some()
}

fn private(path: &Path) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 600 {}", path.display()))
}

/// DER SubjectPublicKeyInfo of an EC P-256 key: this fixed prefix, then the 65-byte
/// uncompressed point (0x04 || X || Y).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The JWK Set (RFC 7517) for a P-256 public key given as DER SubjectPublicKeyInfo.
pub fn jwks_for_p256(spki: &[u8]) -> Result<String> {
    let Some(point) = spki.strip_prefix(&P256_SPKI_PREFIX[..]) else {
        bail!("not a DER P-256 SubjectPublicKeyInfo");
    };
    if point.len() != 65 || point[0] != 0x04 {
        bail!("not an uncompressed P-256 point");
    }
    let (x, y) = point[1..].split_at(32);
    Ok(format!(
        "{{\"keys\":[{{\"kty\":\"EC\",\"crv\":\"P-256\",\"use\":\"sig\",\"alg\":\"{ISSUER_ALG}\",\
         \"kid\":\"{ISSUER_KID}\",\"x\":\"{}\",\"y\":\"{}\"}}]}}\n",
        base64url(x),
        base64url(y)
    ))
}

/// Base64url without padding (RFC 7515 §2).
pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc4648_vectors_without_padding() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url(input.as_bytes()), want, "{input}");
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn jwks_takes_x_and_y_from_the_point() {
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.push(0x04);
        spki.extend([0u8; 32]);
        spki.extend([0xffu8; 32]);
        let doc = jwks_for_p256(&spki).unwrap();
        assert!(doc.contains(&format!("\"x\":\"{}\"", "A".repeat(43))));
        assert!(doc.contains("\"kid\":\"demo-es256\""));
        assert!(jwks_for_p256(&spki[1..]).is_err());
        assert!(jwks_for_p256(&spki[..spki.len() - 1]).is_err());
    }
}
