//! A JWK Set fetched over HTTPS and refreshed in the background.
//!
//! - One task per source does all fetching, so fetches are single-flight by construction.
//! - Unknown-`kid` refetches are asked for with [`JwksSource::trigger`] and granted at most
//!   once per `refetch_interval`, so a flood of random `kid`s cannot hammer the issuer.
//! - A failed fetch (network, status, bad JSON, no usable key) keeps the last good set in
//!   use, marks the source stale and counts the failure.
//! - Symmetric (`oct`) keys in the fetched set are skipped ([`jwk::parse_remote_jwks`]).
//! - `Cache-Control: max-age` sets the next refresh, clamped to `[min_refresh, max_refresh]`.

use super::{jwk, pem, JwksConfig, KeyError, KeyStore, SlotId, StoreInner};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, CACHE_CONTROL, HOST, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Notify};

/// Counters of one JWKS source, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwksStats {
    /// Successful fetches.
    pub fetches_ok: u64,
    /// Failed fetches (the previous set stayed in use).
    pub fetches_failed: u64,
    /// Unknown-kid refetch requests refused by the rate limit.
    pub refetches_rate_limited: u64,
    /// Whether the last fetch failed (the keys in use may be outdated).
    pub stale: bool,
    /// Number of keys currently loaded from this source.
    pub keys: usize,
    /// Unix time of the last successful fetch.
    pub last_success_unix: Option<u64>,
}

pub(crate) struct Shared {
    cfg: JwksConfig,
    host: String,
    port: u16,
    path: String,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
    store: Weak<StoreInner>,
    slot: SlotId,
    notify: Notify,
    /// Start of the most recent fetch (any cause), for the refetch rate limit.
    last_fetch: Mutex<Option<Instant>>,
    fetch_lock: tokio::sync::Mutex<()>,
    done: watch::Sender<u64>,
    ok: AtomicU64,
    failed: AtomicU64,
    limited: AtomicU64,
    stale: AtomicBool,
    keys: AtomicUsize,
    last_success: AtomicU64,
}

/// A JWKS URL source bound to a [`KeyStore`].
#[derive(Clone)]
pub struct JwksSource {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksSource")
            .field("url", &self.shared.cfg.url)
            .finish()
    }
}

fn fetch_err(url: &str, detail: impl std::fmt::Display) -> KeyError {
    KeyError::Fetch {
        url: url.to_owned(),
        detail: detail.to_string(),
    }
}

fn load_roots(cfg: &JwksConfig) -> Result<rustls::RootCertStore, KeyError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = &cfg.ca_file {
        let text = std::fs::read(path).map_err(|source| KeyError::Io {
            path: path.clone(),
            source,
        })?;
        let origin = path.display().to_string();
        let blocks = pem::parse(&text).map_err(|e| KeyError::invalid(&origin, e))?;
        for b in blocks.into_iter().filter(|b| b.label == "CERTIFICATE") {
            roots
                .add(CertificateDer::from(b.der))
                .map_err(|e| KeyError::invalid(&origin, e))?;
        }
        if roots.is_empty() {
            return Err(KeyError::invalid(&origin, "no CA certificate found"));
        }
    } else {
        let found = rustls_native_certs::load_native_certs();
        for c in found.certs {
            // Individual unparsable system certificates are skipped, like every TLS client.
            let _ = roots.add(c);
        }
        if roots.is_empty() {
            return Err(KeyError::Config(
                "no system CA certificates found; set ca_file".into(),
            ));
        }
    }
    Ok(roots)
}

/// Parses `Cache-Control` for `max-age` (`no-store`/`no-cache` count as zero).
fn max_age(value: &str) -> Option<Duration> {
    let mut out = None;
    for part in value.split(',') {
        let part = part.trim();
        let lower = part.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            out = v
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    out
}

impl JwksSource {
    /// Checks that `url` is an absolute https URL with a host.
    pub fn check_url(url: &str) -> Result<(), KeyError> {
        Self::split_url(url).map(|_| ())
    }

    fn split_url(url: &str) -> Result<(String, u16, String), KeyError> {
        let uri: Uri = url.parse().map_err(|e| fetch_err(url, e))?;
        if uri.scheme_str() != Some("https") {
            return Err(KeyError::Config(format!("JWKS URL {url:?} must be https")));
        }
        let host = uri
            .host()
            .ok_or_else(|| KeyError::Config(format!("JWKS URL {url:?} has no host")))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        Ok((host, port, path))
    }

    /// Creates the source with an empty slot in `store` (fetch it with [`Self::refresh`]).
    pub fn new(store: &KeyStore, cfg: JwksConfig) -> Result<Self, KeyError> {
        let roots = load_roots(&cfg)?;
        Self::with_roots(store, cfg, roots)
    }

    /// Like [`Self::new`] with explicit trust roots (tests, embedded deployments).
    pub fn with_roots(
        store: &KeyStore,
        cfg: JwksConfig,
        roots: rustls::RootCertStore,
    ) -> Result<Self, KeyError> {
        let (host, port, path) = Self::split_url(&cfg.url)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| KeyError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| KeyError::Config(format!("JWKS URL host {host:?}: {e}")))?;
        let slot = store.add_source(&cfg.url, []);
        let (done, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            host,
            port,
            path,
            server_name,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            store: store.downgrade(),
            slot,
            notify: Notify::new(),
            last_fetch: Mutex::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
            done,
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            limited: AtomicU64::new(0),
            stale: AtomicBool::new(false),
            keys: AtomicUsize::new(0),
            last_success: AtomicU64::new(0),
            cfg,
        });
        store.register_refresher(&shared);
        Ok(JwksSource { shared })
    }

    /// The source's URL.
    pub fn url(&self) -> &str {
        &self.shared.cfg.url
    }

    /// Fetches now and, on success, replaces this source's keys. On failure the previous keys
    /// stay. Returns the delay until the next scheduled refresh.
    pub async fn refresh(&self) -> Result<Duration, KeyError> {
        self.shared.fetch_and_apply().await
    }

    /// Asks for an unknown-kid refetch (see [`Shared::trigger`]).
    pub fn trigger(&self) -> Option<watch::Receiver<u64>> {
        self.shared.trigger()
    }

    /// Runs the refresh loop on the current tokio runtime until the key store is dropped.
    /// `first_delay` is the wait before the first fetch (use the value [`Self::refresh`]
    /// returned, or zero to fetch at once).
    pub fn spawn(&self, first_delay: Duration) -> tokio::task::JoinHandle<()> {
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            let mut delay = first_delay;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shared.notify.notified() => {}
                }
                if shared.store.strong_count() == 0 {
                    break;
                }
                delay = match shared.fetch_and_apply().await {
                    Ok(d) => d,
                    Err(_) => shared.cfg.retry,
                };
            }
        })
    }

    /// Counters for metrics.
    pub fn stats(&self) -> JwksStats {
        let s = &self.shared;
        let last = s.last_success.load(Ordering::Relaxed);
        JwksStats {
            fetches_ok: s.ok.load(Ordering::Relaxed),
            fetches_failed: s.failed.load(Ordering::Relaxed),
            refetches_rate_limited: s.limited.load(Ordering::Relaxed),
            stale: s.stale.load(Ordering::Relaxed),
            keys: s.keys.load(Ordering::Relaxed),
            last_success_unix: (last != 0).then_some(last),
        }
    }
}

impl Shared {
    pub(crate) fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// Grants an on-demand refetch unless one started less than `refetch_interval` ago.
    /// The refresh task does the fetch; the receiver changes when it completes.
    pub(crate) fn trigger(&self) -> Option<watch::Receiver<u64>> {
        let mut last = self
            .last_fetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|t| t.elapsed() < self.cfg.refetch_interval) {
            self.limited.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(Instant::now());
        let rx = self.done.subscribe();
        self.notify.notify_one();
        tracing::debug!(url = %self.cfg.url, "JWKS refetch requested (unknown kid)");
        Some(rx)
    }

    async fn fetch_and_apply(&self) -> Result<Duration, KeyError> {
        let _one = self.fetch_lock.lock().await;
        *self
            .last_fetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        let result = match tokio::time::timeout(self.cfg.timeout, self.fetch()).await {
            Ok(r) => r,
            Err(_) => Err(fetch_err(&self.cfg.url, "timed out")),
        }
        .and_then(|(body, age)| {
            let keys = jwk::parse_remote_jwks(&body, &self.cfg.url, self.cfg.alg)?;
            Ok((keys, age))
        });
        let out = match result {
            Ok((keys, age)) => {
                let n = keys.len();
                if let Some(inner) = self.store.upgrade() {
                    KeyStore::from_inner(inner).replace(self.slot, keys);
                }
                self.keys.store(n, Ordering::Relaxed);
                self.ok.fetch_add(1, Ordering::Relaxed);
                self.stale.store(false, Ordering::Relaxed);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                self.last_success.store(now, Ordering::Relaxed);
                let next = age
                    .unwrap_or(self.cfg.refresh)
                    .clamp(self.cfg.min_refresh, self.cfg.max_refresh);
                tracing::info!(url = %self.cfg.url, keys = n, next_refresh = ?next, "JWKS fetched");
                Ok(next)
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.stale.store(true, Ordering::Relaxed);
                tracing::warn!(url = %self.cfg.url, error = %e, "JWKS fetch failed; keeping the last good key set (stale)");
                Err(e)
            }
        };
        self.done.send_modify(|n| *n = n.wrapping_add(1));
        out
    }

    async fn fetch(&self) -> Result<(Vec<u8>, Option<Duration>), KeyError> {
        let url = &self.cfg.url;
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| fetch_err(url, e))?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| fetch_err(url, e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fetch_err(url, e))?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let authority = if self.port == 443 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let req = Request::get(self.path.as_str())
            .header(HOST, authority)
            .header(ACCEPT, "application/jwk-set+json, application/json")
            .header(USER_AGENT, concat!("gateway/", env!("CARGO_PKG_VERSION")))
            .body(Empty::<Bytes>::new())
            .map_err(|e| fetch_err(url, e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| fetch_err(url, e))?;
        if resp.status() != StatusCode::OK {
            conn.abort();
            return Err(fetch_err(
                url,
                format_args!("HTTP status {}", resp.status()),
            ));
        }
        let age = resp
            .headers()
            .get_all(CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(max_age)
            .min();
        let body = Limited::new(resp.into_body(), self.cfg.max_bytes)
            .collect()
            .await
            .map_err(|e| fetch_err(url, e))?
            .to_bytes();
        conn.abort();
        Ok((body.to_vec(), age))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control() {
        assert_eq!(
            max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(max_age("Max-Age=5"), Some(Duration::from_secs(5)));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }

    #[test]
    fn urls() {
        assert!(JwksSource::check_url("https://a.example/jwks").is_ok());
        assert!(JwksSource::check_url("http://a.example/jwks").is_err());
        assert!(JwksSource::check_url("/jwks").is_err());
        assert_eq!(
            JwksSource::split_url("https://[::1]:8443/x?y=1").unwrap(),
            ("::1".to_owned(), 8443, "/x?y=1".to_owned())
        );
    }
}
