//! The files a config names, checked the way `gateway run` reads them: certificate chains
//! and their keys (through the TLS loader), and the key files of `[[jwt.keys]]` (through the
//! key store's loaders). Only `gateway config check` reads them here; `run` reads them once,
//! where it uses them.

use super::plan::{Issues, Section};
use super::{Issue, Plan};
use crate::keys::KeySourceConfig;
use crate::tls::{self, TlsError};

/// Every certificate and key file problem, one per `[[tls.certificates]]` or `[[jwt.keys]]`
/// entry. Key sources are read only when some route checks tokens (else `run` loads none),
/// and a `jwks_url` source is not fetched.
pub(super) fn check(plan: &Plan) -> Issues {
    let mut found = Vec::new();
    if let Some(tls) = plan
        .tls
        .as_ref()
        .filter(|_| plan.listen.as_ref().is_some_and(|l| !l.https.is_empty()))
    {
        for (i, cert) in tls.certificates.iter().enumerate() {
            if let Err(e) = tls::check_certificate(cert) {
                let key = match e {
                    TlsError::Key { .. } | TlsError::Mismatch { .. } => "key",
                    _ => "cert",
                };
                found.push((
                    Section::nth("tls.certificates", i),
                    Issue::new(key, e.to_string()),
                ));
            }
        }
    }
    if let Some(jwt) = plan.jwt() {
        for (i, source) in jwt.keys.iter().enumerate() {
            if let Err(e) = source.load() {
                found.push((
                    Section::nth("jwt.keys", i),
                    Issue::new(file_key(source), e.to_string()),
                ));
            }
        }
        // A named issuer's keys are an inline array: the entry names the issuer's line.
        for (i, issuer) in jwt.issuer.iter().enumerate() {
            for source in &issuer.keys {
                if let Err(e) = source.load() {
                    found.push((
                        Section::nth("jwt.issuer", i),
                        Issue::new("keys", format!("{}: {e}", file_key(source))),
                    ));
                }
            }
        }
    }
    found
}

/// The key that names the source's file (`jwks_url` for a URL source).
fn file_key(source: &KeySourceConfig) -> &'static str {
    [
        ("pem", source.pem.is_some()),
        ("jwk", source.jwk.is_some()),
        ("jwks", source.jwks.is_some()),
        ("secret_file", source.secret_file.is_some()),
    ]
    .into_iter()
    .find_map(|(k, set)| set.then_some(k))
    .unwrap_or("jwks_url")
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    /// A directory with a certificate and key for `localhost` (`a.crt`, `a.key`), another
    /// pair (`b.crt`, `b.key`), its public key (`a.pub.pem`) and a few bad files.
    fn files() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["a", "b"] {
            let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
            std::fs::write(dir.path().join(format!("{name}.crt")), ck.cert.pem()).unwrap();
            std::fs::write(
                dir.path().join(format!("{name}.key")),
                ck.key_pair.serialize_pem(),
            )
            .unwrap();
            std::fs::write(
                dir.path().join(format!("{name}.pub.pem")),
                ck.key_pair.public_key_pem(),
            )
            .unwrap();
        }
        std::fs::write(dir.path().join("garbage"), "not PEM, not JSON\n").unwrap();
        std::fs::write(dir.path().join("secret"), [7u8; 32]).unwrap();
        std::fs::write(
            dir.path().join("empty.jwks"),
            "{\"keys\": [{\"kty\": \"EC\"}]}",
        )
        .unwrap();
        dir
    }

    fn config(dir: &Path, tls: &str, jwt: &str) -> String {
        let d = dir.display();
        format!(
            "[listen]\nhttps = [\"127.0.0.1:0\"]\n\n[tls]\n{}\n\n[[upstream]]\nname = \"a\"\n\
             servers = [\"127.0.0.1:1\"]\n\n[[route]]\npath_prefix = \"/\"\nupstream = \"a\"\n\n\
             [jwt]\nissuers = [\"x\"]\n{}\n",
            tls.replace("$D", &d.to_string()),
            jwt.replace("$D", &d.to_string())
        )
    }

    /// `config check` on `text` (written into `dir`): the error lines, or "ok".
    fn check(dir: &Path, text: &str) -> String {
        let path = dir.join("gw.toml");
        std::fs::write(&path, text).unwrap();
        match Config::check(&path) {
            Ok(_) => "ok".into(),
            Err(e) => e.to_string().replace(&format!("{}/", dir.display()), ""),
        }
    }

    fn line_of(text: &str, needle: &str) -> usize {
        text.lines().position(|l| l.contains(needle)).expect("line") + 1
    }

    const CERT_A: &str = "[[tls.certificates]]\ncert = \"$D/a.crt\"\nkey = \"$D/a.key\"\n";
    const KEY_A: &str = "[[jwt.keys]]\npem = \"$D/a.pub.pem\"\n";

    #[test]
    fn readable_matching_files_pass() {
        let dir = files();
        let text = config(dir.path(), CERT_A, KEY_A);
        assert_eq!(check(dir.path(), &text), "ok");
        // Parsing alone does not read them.
        let gone = config(
            dir.path(),
            "[[tls.certificates]]\ncert = \"/nonexistent/x.crt\"\nkey = \"/nonexistent/x.key\"\n",
            "[[jwt.keys]]\npem = \"/nonexistent/k.pem\"\n",
        );
        assert!(Config::parse(Path::new("gw.toml"), &gone).is_ok());
    }

    #[test]
    fn certificate_problems_name_the_entry_line_and_key() {
        let dir = files();
        let tls = format!(
            "{CERT_A}\n[[tls.certificates]]\ncert = \"$D/missing.crt\"\nkey = \"$D/a.key\"\n\n\
             [[tls.certificates]]\ncert = \"$D/a.crt\"\nkey = \"$D/b.key\"\n\n\
             [[tls.certificates]]\ncert = \"$D/a.crt\"\nkey = \"$D/garbage\"\n\n\
             [[tls.certificates]]\ncert = \"$D/garbage\"\nkey = \"$D/a.key\"\n"
        );
        let text = config(dir.path(), &tls, KEY_A);
        let out = check(dir.path(), &text);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        let at = |n: &str| line_of(&text, n);
        assert!(
            lines[0].starts_with(&format!(
                "gw.toml:{}: tls.certificates[1].cert: cannot read certificates from missing.crt: ",
                at("missing.crt")
            )),
            "{out}"
        );
        assert!(
            lines[1].starts_with(&format!(
                "gw.toml:{}: tls.certificates[2].key: the key b.key does not match the certificate a.crt",
                at("b.key")
            )),
            "{out}"
        );
        assert!(
            lines[2].starts_with(&format!(
                "gw.toml:{}: tls.certificates[3].key: cannot read the private key from garbage",
                at("/garbage\"")
            )),
            "{out}"
        );
        assert!(
            lines[3].contains("tls.certificates[4].cert: cannot read certificates from garbage: no CERTIFICATE block"),
            "{out}"
        );
    }

    #[test]
    fn inline_certificates_point_at_their_key() {
        let dir = files();
        let text = config(
            dir.path(),
            "certificates = [{ cert = \"$D/a.crt\", key = \"$D/b.key\" }]\n",
            KEY_A,
        );
        let out = check(dir.path(), &text);
        assert!(
            out.starts_with(&format!(
                "gw.toml:{}: tls.certificates[0].key: the key b.key does not match",
                line_of(&text, "certificates =")
            )),
            "{out}"
        );
    }

    #[test]
    fn key_files_must_load() {
        let dir = files();
        let keys = "[[jwt.keys]]\npem = \"$D/missing.pem\"\n\n\
                    [[jwt.keys]]\npem = \"$D/a.key\"\n\n\
                    [[jwt.keys]]\njwks = \"$D/garbage\"\n\n\
                    [[jwt.keys]]\njwk = \"$D/empty.jwks\"\n\n\
                    [[jwt.keys]]\nsecret_file = \"$D/nope\"\nalg = \"HS256\"\n\n\
                    [[jwt.keys]]\nsecret_file = \"$D/secret\"\nalg = \"HS256\"\n\n\
                    [[jwt.keys]]\njwks_url = \"https://issuer.invalid/jwks.json\"\n";
        let text = config(dir.path(), CERT_A, keys);
        let out = check(dir.path(), &text);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5, "{out}");
        assert!(
            lines[0].starts_with(&format!(
                "gw.toml:{}: jwt.keys[0].pem: cannot read missing.pem",
                line_of(&text, "missing.pem")
            )),
            "{out}"
        );
        assert!(
            lines[1].contains("jwt.keys[1].pem: ") && lines[1].contains("private key"),
            "{out}"
        );
        assert!(lines[2].contains("jwt.keys[2].jwks: "), "{out}");
        assert!(lines[3].contains("jwt.keys[3].jwk: "), "{out}");
        assert!(
            lines[4].starts_with(&format!(
                "gw.toml:{}: jwt.keys[4].secret_file: cannot read nope",
                line_of(&text, "/nope")
            )),
            "{out}"
        );
    }

    #[test]
    fn unused_sources_are_not_read() {
        let dir = files();
        // No route checks tokens, so `run` loads no key; neither does the check. Without an
        // HTTPS listener no certificate is loaded either.
        let text = "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[tls]\n[[tls.certificates]]\ncert = \"/nonexistent.crt\"\n\
             key = \"/nonexistent.key\"\n\n[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\n\n\
             [[route]]\npath_prefix = \"/\"\nupstream = \"a\"\nauth = \"none\"\n\n\
             [jwt]\n[[jwt.keys]]\npem = \"/nonexistent.pem\"\n";
        assert_eq!(check(dir.path(), text), "ok");
    }
}
