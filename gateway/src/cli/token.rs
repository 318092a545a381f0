//! `gateway token verify | inspect | mint`.
//!
//! Exit statuses of `verify`: 0 valid, 1 rejected, 2 usage, key or configuration error
//! (including no key source, unreadable or invalid key files). `--json` prints
//! `{"valid":bool,"reason":CODE|null,"header":{...},"claims":{...}}` on 0 and 1.

use crate::jwt::{
    self, decode_unverified, now_unix, Algorithm, Rejection, SigningKey, Verifier, VerifierConfig,
};
use crate::keys::{JwksSource, KeySourceConfig, KeyStore};
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const EXIT_VALID: u8 = 0;
const EXIT_REJECTED: u8 = 1;
const EXIT_USAGE: u8 = 2;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Verify a token's signature and claims (exit 0 valid, 1 rejected, 2 usage/key error).
    Verify(VerifyArgs),
    /// Decode a token's header and claims WITHOUT verifying anything.
    Inspect(InspectArgs),
    /// Sign a token (for tests and local development).
    Mint(MintArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The token; absent or "-" reads it from stdin (surrounding whitespace is trimmed).
    pub token: Option<String>,
    /// Gateway config file: its [jwt] table gives the policy and key sources.
    #[arg(long, value_name = "FILE")]
    pub config: Vec<PathBuf>,
    /// JWK Set file, or an https URL to fetch one from.
    #[arg(long, value_name = "FILE")]
    pub jwks: Vec<String>,
    /// JWK file.
    #[arg(long, value_name = "FILE")]
    pub jwk: Vec<PathBuf>,
    /// PEM public key (SPKI or PKCS#1) or X.509 certificate.
    #[arg(long, value_name = "FILE")]
    pub key: Vec<PathBuf>,
    /// HMAC secret file (raw bytes, not trimmed).
    #[arg(long, value_name = "FILE")]
    pub secret_file: Vec<PathBuf>,
    /// Accept only these algorithms (repeatable; default: any the keys are bound to).
    #[arg(long, value_name = "ALG", value_parser = parse_alg)]
    pub alg: Vec<Algorithm>,
    /// Required issuer (repeatable: any of them); without it `iss` is not checked.
    #[arg(long, value_name = "ISS")]
    pub iss: Vec<String>,
    /// Accepted audience (repeatable); without it `aud` is not checked.
    #[arg(long, value_name = "AUD")]
    pub aud: Vec<String>,
    /// Clock-skew allowance in seconds (default 30, or the config's).
    #[arg(long, value_name = "SECS")]
    pub leeway: Option<u64>,
    /// Verify as if the time were this (Unix seconds).
    #[arg(long, value_name = "UNIX_SECS", allow_hyphen_values = true)]
    pub now: Option<i64>,
    /// Accept tokens without `exp`.
    #[arg(long)]
    pub allow_missing_exp: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// CA certificates (PEM) to trust for https JWKS URLs instead of the system roots.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The token; absent or "-" reads it from stdin.
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct MintArgs {
    /// Private key PEM (PKCS#8; PKCS#1 for RSA), or for HS* a secret file (raw bytes).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Signing algorithm.
    #[arg(long, value_name = "ALG", value_parser = parse_alg)]
    pub alg: Algorithm,
    /// Key id to put in the header.
    #[arg(long, value_name = "KID")]
    pub kid: Option<String>,
    /// Extra claims as a JSON object (they override the generated ones).
    #[arg(long, value_name = "JSON")]
    pub claims: Option<String>,
    /// Issuer.
    #[arg(long, value_name = "ISS")]
    pub iss: Option<String>,
    /// Audience (repeatable; several become an array).
    #[arg(long, value_name = "AUD")]
    pub aud: Vec<String>,
    /// Lifetime: exp = now + ttl (humantime, e.g. 1h, 90s).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Leave out `exp`.
    #[arg(long)]
    pub no_exp: bool,
    /// Issue as if the time were this (Unix seconds).
    #[arg(long, value_name = "UNIX_SECS", allow_hyphen_values = true)]
    pub now: Option<i64>,
    /// Header `typ` (default JWT).
    #[arg(long, value_name = "TYP", default_value = "JWT")]
    pub typ: String,
}

fn parse_alg(s: &str) -> Result<Algorithm, String> {
    s.parse::<Algorithm>().map_err(|e| e.to_string())
}

pub fn run(cmd: TokenCommand) -> ExitCode {
    init_logs();
    let code = match cmd {
        TokenCommand::Verify(a) => verify(a),
        TokenCommand::Inspect(a) => inspect(a),
        TokenCommand::Mint(a) => mint(a),
    };
    ExitCode::from(code)
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn usage(msg: impl std::fmt::Display) -> u8 {
    eprintln!("gateway: {msg}");
    EXIT_USAGE
}

/// The token from the argument, or stdin when absent or `-`; whitespace trimmed.
fn read_token(arg: Option<String>) -> Result<String, String> {
    match arg.as_deref() {
        Some(t) if t != "-" => Ok(t.trim().to_owned()),
        _ => {
            let mut s = String::new();
            std::io::stdin()
                .take(1 << 20)
                .read_to_string(&mut s)
                .map_err(|e| format!("cannot read the token from stdin: {e}"))?;
            Ok(s.trim().to_owned())
        }
    }
}

/// The `[jwt]` table of a gateway config file.
fn load_jwt_config(path: &Path) -> Result<VerifierConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
    let Some(jwt) = table.get("jwt") else {
        return Err(format!("{}: no [jwt] table", path.display()));
    };
    let cfg: VerifierConfig = jwt
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| format!("{}: jwt: {}", path.display(), e.message()))?;
    cfg.validate()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(cfg)
}

fn build_verifier(a: &VerifyArgs) -> Result<Verifier, String> {
    let mut cfg = VerifierConfig::default();
    let mut sources: Vec<KeySourceConfig> = Vec::new();
    for (i, path) in a.config.iter().enumerate() {
        let mut c = load_jwt_config(path)?;
        sources.append(&mut c.keys);
        if i == 0 {
            cfg = c;
        }
    }
    for s in &a.jwks {
        if s.starts_with("https://") || s.starts_with("http://") {
            sources.push(KeySourceConfig {
                jwks_url: Some(s.clone()),
                ca_file: a.ca_file.clone(),
                ..Default::default()
            });
        } else {
            sources.push(KeySourceConfig {
                jwks: Some(PathBuf::from(s)),
                ..Default::default()
            });
        }
    }
    for p in &a.jwk {
        sources.push(KeySourceConfig {
            jwk: Some(p.clone()),
            ..Default::default()
        });
    }
    for p in &a.key {
        sources.push(KeySourceConfig {
            pem: Some(p.clone()),
            ..Default::default()
        });
    }
    for p in &a.secret_file {
        sources.push(KeySourceConfig {
            secret_file: Some(p.clone()),
            ..Default::default()
        });
    }
    if sources.is_empty() && cfg.issuer.is_empty() {
        return Err(
            "no key source given (use --key, --jwk, --jwks, --secret-file or --config)".into(),
        );
    }
    if !a.alg.is_empty() {
        cfg.algorithms = a.alg.clone();
    }
    if !a.iss.is_empty() {
        cfg.issuers = a.iss.clone();
    }
    if !a.aud.is_empty() {
        cfg.audiences = a.aud.clone();
    }
    if let Some(l) = a.leeway {
        cfg.leeway = l;
    }
    if a.allow_missing_exp {
        cfg.require_exp = false;
    }
    cfg.cache.enabled = false;
    let (store, urls) = KeyStore::from_config(&sources).map_err(|e| e.to_string())?;
    cfg.keys = sources;
    let (verifier, named) = Verifier::load(cfg, store).map_err(|e| e.to_string())?;
    let urls: Vec<JwksSource> = urls
        .into_iter()
        .chain(named.into_iter().map(|(_, s)| s))
        .collect();
    if !urls.is_empty() {
        fetch_all(&urls)?;
    }
    Ok(verifier)
}

/// Fetches JWKS URL sources once (the CLI verifies one token; no background refresh).
fn fetch_all(urls: &[JwksSource]) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async {
        for u in urls {
            u.refresh().await.map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

fn unverified_parts(token: &str) -> (Value, Value) {
    match decode_unverified(token, jwt::DEFAULT_MAX_TOKEN_BYTES) {
        Ok(u) => (
            Value::Object(u.header),
            Value::Object(u.claims.unwrap_or_default()),
        ),
        Err(_) => (Value::Object(Map::new()), Value::Object(Map::new())),
    }
}

fn verify(a: VerifyArgs) -> u8 {
    let verifier = match build_verifier(&a) {
        Ok(v) => v,
        Err(e) => return usage(e),
    };
    let token = match read_token(a.token.clone()) {
        Ok(t) => t,
        Err(e) => return usage(e),
    };
    let now = a.now.unwrap_or_else(now_unix);
    let result = verifier.verify_uncached(&token, now);
    let (valid, reason, header, claims) = match &result {
        Ok(t) => (
            true,
            None,
            Value::Object(t.header().clone()),
            Value::Object(t.claims().clone()),
        ),
        Err(r) => {
            let (h, c) = unverified_parts(&token);
            (false, Some(r), h, c)
        }
    };
    if a.json {
        let out = json!({
            "valid": valid,
            "reason": reason.map(Rejection::reason),
            "header": header,
            "claims": claims,
        });
        println!("{out}");
    } else if let Some(r) = reason {
        println!("invalid: {}: {r}", r.reason());
    } else {
        println!("valid");
        println!("header: {header}");
        println!("claims: {claims}");
    }
    if valid {
        EXIT_VALID
    } else {
        EXIT_REJECTED
    }
}

fn inspect(a: InspectArgs) -> u8 {
    let token = match read_token(a.token) {
        Ok(t) => t,
        Err(e) => return usage(e),
    };
    eprintln!("WARNING: NOT VERIFIED. This token was decoded without checking its signature or claims; do not trust its contents.");
    match decode_unverified(&token, jwt::DEFAULT_MAX_TOKEN_BYTES) {
        Ok(u) => {
            let (claims, claims_error) = match u.claims {
                Ok(c) => (Value::Object(c), Value::Null),
                Err(e) => (Value::Null, Value::String(e.to_string())),
            };
            let out = json!({
                "verified": false,
                "warning": "NOT VERIFIED: decoded without checking the signature or claims",
                "header": Value::Object(u.header),
                "claims": claims,
                "claims_error": claims_error,
                "signature_bytes": u.signature_len.ok(),
            });
            match serde_json::to_string_pretty(&out) {
                Ok(s) => println!("{s}"),
                Err(e) => return usage(e),
            }
            EXIT_VALID
        }
        Err(e) => {
            let r = Rejection::from(e);
            println!("malformed token: {}: {r}", r.reason());
            EXIT_REJECTED
        }
    }
}

fn mint(a: MintArgs) -> u8 {
    match mint_token(&a) {
        Ok(t) => {
            println!("{t}");
            EXIT_VALID
        }
        Err(e) => usage(e),
    }
}

fn mint_token(a: &MintArgs) -> Result<String, String> {
    let bytes =
        std::fs::read(&a.key).map_err(|e| format!("cannot read {}: {e}", a.key.display()))?;
    let key = if a.alg.family() == jwt::KeyFamily::Hmac {
        SigningKey::hmac(&bytes, a.alg)
    } else {
        SigningKey::from_pem(&bytes, a.alg)
    }
    .map_err(|e| format!("{}: {e}", a.key.display()))?;
    let now = a.now.unwrap_or_else(now_unix);
    let mut claims = Map::new();
    claims.insert("iat".into(), now.into());
    if !a.no_exp {
        let ttl = i64::try_from(a.ttl.as_secs()).map_err(|_| "ttl too large".to_owned())?;
        claims.insert("exp".into(), now.saturating_add(ttl).into());
    }
    if let Some(iss) = &a.iss {
        claims.insert("iss".into(), iss.clone().into());
    }
    match a.aud.as_slice() {
        [] => {}
        [one] => {
            claims.insert("aud".into(), one.clone().into());
        }
        many => {
            claims.insert("aud".into(), many.to_vec().into());
        }
    }
    if let Some(extra) = &a.claims {
        let extra = jwt::json::parse_object(extra.as_bytes())
            .map_err(|e| format!("--claims must be a JSON object: {e}"))?;
        claims.extend(extra);
    }
    let mut header = Map::new();
    header.insert("typ".into(), a.typ.clone().into());
    if let Some(kid) = &a.kid {
        header.insert("kid".into(), kid.clone().into());
    }
    key.sign(header, &claims).map_err(|e| e.to_string())
}
