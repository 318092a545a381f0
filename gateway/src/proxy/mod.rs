//! The reverse proxy: listeners and connections ([`server`], with [`send_timeout`], and
//! hyper's timer in [`coarse_timer`]), the request path ([`handler`],
//! with the request's host checked in [`host`], the request body held to its limit and
//! its failures told apart in [`request_body`], and every answer of its own in [`refusal`]),
//! routing ([`route`], [`path`]), forwarding headers ([`forwarding`]), client headers the
//! upstream must not trust ([`client_headers`]), the open-file budget ([`fd_limit`]),
//! the rest of a request body the response did not wait for ([`linger`]), closing
//! connections on shutdown and bans ([`closing`]) or when they go quiet ([`idle`]), the proxy a
//! reload replaces ([`live`]) and upstreams
//! ([`upstream`]: servers and their health; [`pool`]: each worker's connections;
//! [`upstream_h1`]: the HTTP/1.1 exchange on them), and the
//! caps on requests in progress ([`slots`]).

pub mod balance;
pub mod client_addr;
pub mod client_headers;
pub mod closing;
pub mod coarse_timer;
pub mod fd_limit;
pub mod forwarding;
pub mod framing;
pub mod handler;
pub mod host;
pub mod idle;
pub mod linger;
pub mod live;
pub mod park;
pub mod path;
pub mod pool;
pub mod proxy_protocol;
pub mod refusal;
pub mod request_body;
pub mod route;
pub mod send_timeout;
pub mod server;
pub mod slots;
pub mod upstream;
pub mod upstream_h1;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

pub use handler::{ConnInfo, Proxy};
pub use route::Route;

/// Errors a body may carry on its way through.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request sent upstream and every response sent to clients.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// An error and its causes on one line (`a: b: c`), for logs.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

pub fn empty_body() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

pub fn full_body(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}
