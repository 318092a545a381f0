//! Certificates: reloaded on SIGHUP without failing a request, chosen by SNI, and sessions
//! that resume.

use gateway_tests::client::{Proto, Req};
use gateway_tests::proxy::{echoed, runtime, wait_until, Gw, Setup};
use nix::sys::signal::Signal;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn sighup_reloads_the_certificate_without_failing_requests() {
    let gw = Gw::start(Setup::default());
    let t = gw.tokens();
    let cert_b = gw.ca.issue("gateway-test-b", 2).expect("second cert");
    assert_ne!(gw.cert.der, cert_b.der);
    let rt = runtime();
    rt.block_on(async {
        // Keep-alive connections opened before the reload.
        let mut old = Vec::new();
        for proto in Proto::BOTH {
            let mut conn = gw.https.connect(proto).await.expect("connect");
            assert_eq!(conn.peer_cert.as_deref(), Some(&gw.cert.der[..]));
            echoed(
                &conn
                    .send(Req::get("/api/before").bearer(&t.rw))
                    .await
                    .expect("before"),
            );
            old.push(conn);
        }

        // A bounded loop of requests on new connections across the reload.
        let stop = Arc::new(AtomicBool::new(false));
        // Per request: the certificate its handshake saw, or what failed.
        type Outcomes = Arc<Mutex<Vec<Result<Vec<u8>, String>>>>;
        let log: Outcomes = Arc::default();
        let looper = {
            let (stop, log, client, token) =
                (stop.clone(), log.clone(), gw.https.clone(), t.rw.clone());
            tokio::spawn(async move {
                for i in 0..2000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let proto = Proto::BOTH[i % 2];
                    let result = async {
                        let mut conn = client.connect(proto).await?;
                        let reply = conn.send(Req::get("/api/during").bearer(&token)).await?;
                        anyhow::ensure!(reply.status == 200, "status {}", reply.status);
                        Ok(conn.peer_cert.unwrap_or_default())
                    }
                    .await;
                    log.lock()
                        .unwrap()
                        .push(result.map_err(|e| format!("{e:#}")));
                }
            })
        };
        let count = || log.lock().unwrap().len();
        wait_until(
            "5 requests before the reload",
            Duration::from_secs(10),
            || count() >= 5,
        );

        cert_b
            .write(&gw.path("tls.crt"), &gw.path("tls.key"))
            .expect("replace the cert files");
        gw.proc.signal(Signal::SIGHUP).expect("SIGHUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let conn = gw.https.connect(Proto::H1).await.expect("connect");
            if conn.peer_cert.as_deref() == Some(&cert_b.der[..]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "new handshakes still see the old certificate 10 s after SIGHUP:\n{}",
                gw.proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let after = count();
        wait_until(
            "5 requests after the reload",
            Duration::from_secs(10),
            || count() >= after + 5,
        );
        stop.store(true, Ordering::Relaxed);
        looper.await.expect("request loop");

        let log = std::mem::take(&mut *log.lock().unwrap());
        let failures: Vec<&String> = log.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(
            failures.is_empty(),
            "requests failed during the reload: {failures:?}"
        );
        let certs: Vec<&Vec<u8>> = log.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert!(
            certs.iter().any(|c| **c == gw.cert.der),
            "loop never saw cert A"
        );
        assert!(
            certs.iter().any(|c| **c == cert_b.der),
            "loop never saw cert B"
        );
        // Once a handshake saw B, none saw A again.
        let first_b = certs.iter().position(|c| **c == cert_b.der).unwrap();
        assert!(
            certs[first_b..].iter().all(|c| **c == cert_b.der),
            "cert A served again after cert B"
        );

        // The connections from before the reload still work.
        for conn in &mut old {
            let what = format!("{:?} connection from before the reload", conn.proto());
            let reply = conn
                .send(Req::get("/api/after").bearer(&t.rw))
                .await
                .unwrap_or_else(|e| panic!("{what}: {e:#}"));
            assert_eq!(echoed(&reply)["path"], "/api/after", "{what}");
        }
    });
    assert!(gw.proc.log_text().contains("certificates reloaded"));
}

/// One TLS handshake with `server_name` (`None`: connect by IP, which sends no SNI), using
/// `config`; the certificate the server presented and whether the session was resumed.
async fn handshake(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: Option<&str>,
) -> (Vec<u8>, bool) {
    use rustls::pki_types::ServerName;
    let name = match server_name {
        Some(n) => ServerName::try_from(n.to_string()).expect("name"),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("handshake");
    let (_, session) = tls.get_ref();
    let cert = session.peer_certificates().expect("certificate")[0].to_vec();
    let resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    // TLS 1.3 tickets arrive after the handshake: read until the server's answer so the
    // client has stored them.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET /open/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut sink)).await;
    (cert, resumed)
}

#[test]
fn certificates_are_chosen_by_sni_and_sessions_resume() {
    let mut gw = Gw::start(Setup::default());
    // A second certificate for the name `localhost`; the first stays the default.
    let sni = gw.ca.issue("gateway-test-sni", 7).expect("second cert");
    sni.write(&gw.path("sni.crt"), &gw.path("sni.key"))
        .expect("write");
    let mut config = std::fs::OpenOptions::new()
        .append(true)
        .open(gw.path("gateway.toml"))
        .expect("config");
    writeln!(
        config,
        "\n[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\nserver_names = [\"localhost\"]",
        gw.path("sni.crt").display(),
        gw.path("sni.key").display()
    )
    .expect("append");
    gw.proc.signal(Signal::SIGHUP).expect("SIGHUP");
    gw.proc
        .wait_for("certificates reloaded", Duration::from_secs(10))
        .expect("reloaded");

    let addr = gw.https.addr();
    let rt = runtime();
    rt.block_on(async {
        let fresh = gw.ca.client_config(&[b"http/1.1"]).expect("client config");
        let (cert, _) = handshake(addr, fresh.clone(), Some("localhost")).await;
        assert_eq!(cert, sni.der, "SNI `localhost` selects its certificate");
        let (cert, _) = handshake(addr, fresh, None).await;
        assert_eq!(cert, gw.cert.der, "no SNI: the default certificate");

        // Session resumption: a client that keeps its sessions resumes the second time.
        let mut resuming = (*gw.ca.client_config(&[b"http/1.1"]).expect("config")).clone();
        resuming.resumption = rustls::client::Resumption::in_memory_sessions(16);
        let resuming = Arc::new(resuming);
        let (_, first) = handshake(addr, resuming.clone(), Some("localhost")).await;
        let (_, second) = handshake(addr, resuming, Some("localhost")).await;
        assert!(!first, "the first handshake is a full one");
        assert!(second, "the second handshake resumes the session");
    });
}
