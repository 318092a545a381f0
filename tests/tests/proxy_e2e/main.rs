//! The TLS reverse proxy end to end: the real `gateway run` with a config written by the test
//! (listeners on 127.0.0.1 port 0, read back from the log), a real echo upstream, real RS256
//! keys (openssl) and tokens (`gateway token mint`), a test CA and server certificates
//! (rcgen), and real clients: hyper over rustls with ALPN `http/1.1` and `h2`, and raw TCP
//! for what a well-behaved client cannot send. The running gateway and the assertions the
//! modules share are `gateway_tests::proxy`.
//!
//! Every test owns its gateway, upstream and temp dir; guards stop and remove them even
//! when an assertion fails. Waits poll with deadlines; nothing sleeps for a fixed time.
//! One test binary, one module per topic, so every test runs in parallel with the others.

mod access_log;
mod auth;
mod connections;
mod forwarding;
mod lifecycle;
mod reload;
mod request_limits;
mod tls;
mod upstream;
