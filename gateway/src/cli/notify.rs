//! systemd's readiness protocol (`sd_notify(3)`), for `Type=notify` units: one datagram per
//! state change to the Unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` for an
//! abstract socket). Without the variable nothing is sent. A failed send is logged once and
//! never stops the gateway: systemd then times the start-up out, which names the cause.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};

/// Where state changes go; `None` inside when the gateway was not started by systemd.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    warned: AtomicBool,
}

impl Notifier {
    /// The socket `$NOTIFY_SOCKET` names.
    pub fn from_env() -> Self {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|name| {
            let opened = address(name.as_encoded_bytes())
                .and_then(|addr| Ok((UnixDatagram::unbound()?, addr)));
            match opened {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(socket = ?name, error = %e, "NOTIFY_SOCKET is not usable; systemd will not hear about readiness");
                    None
                }
            }
        });
        Notifier {
            target,
            warned: AtomicBool::new(false),
        }
    }

    /// Start-up is complete: every listener accepts.
    pub fn ready(&self) {
        self.send("READY=1\nSTATUS=running");
    }

    /// A SIGHUP reload begins; [`Notifier::ready`] ends it.
    pub fn reloading(&self) {
        let usec = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let usec = u64::try_from(usec.tv_sec).unwrap_or(0) * 1_000_000
            + u64::try_from(usec.tv_nsec).unwrap_or(0) / 1_000;
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the config"
        ));
    }

    /// Shutdown begins (draining).
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=draining");
    }

    fn send(&self, state: &str) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        if let Err(e) = socket.send_to_addr(state.as_bytes(), addr) {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "cannot notify systemd");
            }
        }
    }
}

/// `/path` or `@abstract`.
fn address(name: &[u8]) -> std::io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    match name {
        [b'@', rest @ ..] => SocketAddr::from_abstract_name(rest),
        [b'/', ..] => SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(name)),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "neither an absolute path nor an @abstract name",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                address(path.as_os_str().as_encoded_bytes()).unwrap(),
            )),
            warned: AtomicBool::new(false),
        };
        let mut buf = [0u8; 256];
        n.ready();
        let len = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=running");
        n.reloading();
        let len = receiver.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        let usec: u64 = text
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .and_then(|r| r.split('\n').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{text}"));
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        assert!(usec <= now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000);
        assert!(usec + 5_000_000 > now.tv_sec as u64 * 1_000_000, "{usec}");

        let name = format!("gateway-notify-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let abs = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap())
            .expect("bind abstract");
        let n = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                address(format!("@{name}").as_bytes()).unwrap(),
            )),
            warned: AtomicBool::new(false),
        };
        n.stopping();
        let len = abs.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1\nSTATUS=draining");
    }

    #[test]
    fn relative_names_are_refused_and_a_gone_socket_does_not_fail() {
        assert!(address(b"notify").is_err());
        assert!(address(b"").is_err());
        let n = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                address(b"/nonexistent/notify").unwrap(),
            )),
            warned: AtomicBool::new(false),
        };
        n.ready();
        n.ready();
        assert!(n.warned.load(Ordering::Relaxed));
    }
}
