//! A local HTTPS JWKS server for the JWT tests that fetch keys (`jwks`, `issuers`).

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the server answers, and how often it was asked; tests change it as they go.
pub struct ServerState {
    pub body: Mutex<String>,
    pub status: Mutex<u16>,
    pub cache_control: Mutex<Option<String>>,
    pub down: AtomicBool,
    pub hits: AtomicU64,
}

/// A JWK Set served over HTTPS on loopback: a test CA (rcgen) and a leaf for `localhost`.
pub struct JwksServer {
    pub state: Arc<ServerState>,
    /// The document's URL.
    pub url: String,
    /// The CA that signed the server's certificate, PEM.
    pub ca_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    /// Starts the server, answering 200 with an empty body until told otherwise.
    pub async fn start() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gateway test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let srv_key = rcgen::KeyPair::generate().unwrap();
        let srv = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&srv_key, &ca, &ca_key)
            .unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![srv.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(srv_key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ServerState {
            body: Mutex::new(String::new()),
            status: Mutex::new(200),
            cache_control: Mutex::new(None),
            down: AtomicBool::new(false),
            hits: AtomicU64::new(0),
        });
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                if st.down.load(Ordering::SeqCst) {
                    drop(tcp); // connection reset: the issuer is "down"
                    continue;
                }
                let (acceptor, st) = (acceptor.clone(), Arc::clone(&st));
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |_req| {
                        let st = Arc::clone(&st);
                        async move {
                            st.hits.fetch_add(1, Ordering::SeqCst);
                            let mut r = hyper::Response::builder()
                                .status(*st.status.lock().unwrap())
                                .header("content-type", "application/json");
                            if let Some(cc) = st.cache_control.lock().unwrap().clone() {
                                r = r.header("cache-control", cc);
                            }
                            let body = st.body.lock().unwrap().clone();
                            Ok::<_, std::convert::Infallible>(
                                r.body(Full::new(Bytes::from(body))).unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        JwksServer {
            state,
            url: format!("https://localhost:{port}/.well-known/jwks.json"),
            ca_pem: ca.pem(),
            task,
        }
    }

    /// Serves `{"keys": keys}` from now on.
    pub fn serve(&self, keys: Value) {
        *self.state.body.lock().unwrap() = json!({ "keys": keys }).to_string();
    }

    /// How many requests the server has answered.
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::SeqCst)
    }
}
