//! Why a TLS handshake failed, in a small fixed set: the `reason` label of
//! `gateway_tls_handshake_failures_total` and the access log's line for the failure. Both
//! classify with [`HandshakeFailure::of`], so the two always agree.

/// Why a TLS handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// Not finished within `tls_handshake_timeout`.
    Timeout,
    /// The client closed or reset the connection before the handshake ended (port scans,
    /// health checkers that only connect).
    Closed,
    /// Bytes that are not a TLS handshake (plain HTTP to a TLS port, garbage, a TLS
    /// record that does not parse).
    NotTls,
    /// No protocol version, cipher suite or signature scheme in common.
    Incompatible,
    /// No certificate for the name the client asked for (SNI).
    NoCertificate,
    /// The client ended the handshake with an alert (it did not accept our certificate, or
    /// gave up for a reason of its own).
    ClientAlert,
    /// Anything else.
    Other,
}

impl HandshakeFailure {
    /// Every reason, in [`HandshakeFailure::index`] order.
    pub const ALL: [HandshakeFailure; 7] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::Closed,
        HandshakeFailure::NotTls,
        HandshakeFailure::Incompatible,
        HandshakeFailure::NoCertificate,
        HandshakeFailure::ClientAlert,
        HandshakeFailure::Other,
    ];

    /// Position in [`HandshakeFailure::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The metric label and the access log's `reason`.
    pub const fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::NotTls => "not_tls",
            HandshakeFailure::Incompatible => "incompatible",
            HandshakeFailure::NoCertificate => "no_certificate",
            HandshakeFailure::ClientAlert => "client_alert",
            HandshakeFailure::Other => "other",
        }
    }

    /// The reason of a handshake that failed with `e` (tokio-rustls reports rustls' errors
    /// as `io::Error`s that carry them).
    pub fn of(e: &std::io::Error) -> Self {
        use std::io::ErrorKind;
        if let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Self::of_rustls(tls);
        }
        match e.kind() {
            ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe => HandshakeFailure::Closed,
            ErrorKind::TimedOut => HandshakeFailure::Timeout,
            _ => HandshakeFailure::Other,
        }
    }

    fn of_rustls(e: &rustls::Error) -> Self {
        use rustls::Error;
        match e {
            Error::InvalidMessage(_)
            | Error::InappropriateMessage { .. }
            | Error::InappropriateHandshakeMessage { .. } => HandshakeFailure::NotTls,
            Error::PeerIncompatible(_) => HandshakeFailure::Incompatible,
            Error::AlertReceived(_) => HandshakeFailure::ClientAlert,
            // rustls' words when the certificate resolver found nothing for the SNI.
            Error::General(m) if m.contains("no server certificate") => {
                HandshakeFailure::NoCertificate
            }
            _ => HandshakeFailure::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HandshakeFailure;
    use std::io;

    #[test]
    fn all_is_in_index_order_with_distinct_labels() {
        for (i, r) in HandshakeFailure::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let mut labels: Vec<&str> = HandshakeFailure::ALL.map(HandshakeFailure::as_str).into();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), HandshakeFailure::ALL.len());
    }

    #[test]
    fn errors_are_classified() {
        let tls = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let cases = [
            (
                tls(rustls::Error::InvalidMessage(
                    rustls::InvalidMessage::InvalidContentType,
                )),
                "not_tls",
            ),
            (
                tls(rustls::Error::PeerIncompatible(
                    rustls::PeerIncompatible::NoCipherSuitesInCommon,
                )),
                "incompatible",
            ),
            (
                tls(rustls::Error::AlertReceived(
                    rustls::AlertDescription::UnknownCA,
                )),
                "client_alert",
            ),
            (
                tls(rustls::Error::General(
                    "no server certificate chain resolved".into(),
                )),
                "no_certificate",
            ),
            (tls(rustls::Error::HandshakeNotComplete), "other"),
            (io::Error::from(io::ErrorKind::UnexpectedEof), "closed"),
            (io::Error::from(io::ErrorKind::ConnectionReset), "closed"),
            (io::Error::from(io::ErrorKind::TimedOut), "timeout"),
            (io::Error::other("something"), "other"),
        ];
        for (e, want) in cases {
            assert_eq!(HandshakeFailure::of(&e).as_str(), want, "{e:?}");
        }
    }
}
