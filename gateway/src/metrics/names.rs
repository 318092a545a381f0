//! Every series name, once: [`name`] as registered (the registry adds the `gateway_` prefix
//! and the `_total`/unit suffixes) and [`exposed`] as the exposition shows it, which is what
//! `gateway stats` reads. A renamed metric changes both, and the test that renders every
//! series checks that they agree.

macro_rules! series {
    ($($(#[$doc:meta])* $id:ident = $name:literal => [$($eid:ident = $suffix:literal),+],)+) => {
        /// Metric names as registered.
        pub mod name {
            $($(#[$doc])* pub const $id: &str = $name;)+
        }
        /// Sample names as exposed (`gateway_<name><suffix>`).
        pub mod exposed {
            $($(pub const $eid: &str = concat!("gateway_", $name, $suffix);)+)+
            /// Every exposed name, for tests.
            #[cfg(test)]
            pub const ALL: &[&str] = &[$($($eid,)+)+];
            /// What every fleet series starts with.
            pub const FLEET_PREFIX: &str = "gateway_fleet_";
        }
    };
}

series! {
    /// Finished requests by route and status.
    REQUESTS = "requests" => [REQUESTS = "_total"],
    /// Auth refusals by reason.
    DENIALS = "denials" => [DENIALS = "_total"],
    /// Token verification latency (seconds).
    VERIFY_DURATION = "verify_duration" => [
        VERIFY_DURATION_BUCKET = "_seconds_bucket",
        VERIFY_DURATION_SUM = "_seconds_sum",
        VERIFY_DURATION_COUNT = "_seconds_count"
    ],
    /// Time until the response head, per route (seconds).
    REQUEST_DURATION = "request_duration" => [
        REQUEST_DURATION_BUCKET = "_seconds_bucket",
        REQUEST_DURATION_SUM = "_seconds_sum",
        REQUEST_DURATION_COUNT = "_seconds_count"
    ],
    /// Time from sending to an upstream server until its response head, per upstream and
    /// server (seconds).
    UPSTREAM_DURATION = "upstream_duration" => [
        UPSTREAM_DURATION_BUCKET = "_seconds_bucket",
        UPSTREAM_DURATION_SUM = "_seconds_sum",
        UPSTREAM_DURATION_COUNT = "_seconds_count"
    ],
    /// Failed TLS handshakes by reason ([`crate::tls::HandshakeFailure`]).
    TLS_HANDSHAKE_FAILURES = "tls_handshake_failures" => [TLS_HANDSHAKE_FAILURES = "_total"],
    /// Access log lines dropped because the writer fell behind.
    ACCESS_LOG_DROPPED = "access_log_dropped" => [ACCESS_LOG_DROPPED = "_total"],
    TLS_HANDSHAKES = "tls_handshakes" => [TLS_HANDSHAKES = "_total"],
    UPSTREAM_ERRORS = "upstream_errors" => [UPSTREAM_ERRORS = "_total"],
    CONNECTIONS_REFUSED = "connections_refused" => [CONNECTIONS_REFUSED = "_total"],
    CONNECTIONS_OPEN = "connections_open" => [CONNECTIONS_OPEN = ""],
    TOKEN_CACHE_HITS = "token_cache_hits" => [TOKEN_CACHE_HITS = "_total"],
    TOKEN_CACHE_MISSES = "token_cache_misses" => [TOKEN_CACHE_MISSES = "_total"],
    TOKEN_CACHE_EVICTIONS = "token_cache_evictions" => [TOKEN_CACHE_EVICTIONS = "_total"],
    TOKEN_CACHE_ENTRIES = "token_cache_entries" => [TOKEN_CACHE_ENTRIES = ""],
    KEYSET_KEYS = "keyset_keys" => [KEYSET_KEYS = ""],
    KEYSET_STALE = "keyset_stale" => [KEYSET_STALE = ""],
    /// Tokens by the issuer their `iss` selected and result (`verified`, `rejected`).
    ISSUER_TOKENS = "issuer_tokens" => [ISSUER_TOKENS = "_total"],
    /// Verification keys loaded per issuer.
    ISSUER_KEYS = "issuer_keys" => [ISSUER_KEYS = ""],
    /// Seconds since each JWKS source's last good fetch.
    KEYSET_AGE = "keyset_age" => [KEYSET_AGE = "_seconds"],
    KEY_REFRESH_FAILURES = "key_refresh_failures" => [KEY_REFRESH_FAILURES = "_total"],
    KEY_REFRESHES = "key_refreshes" => [KEY_REFRESHES = "_total"],
    KEY_REFETCHES_RATE_LIMITED = "key_refetches_rate_limited" => [KEY_REFETCHES_RATE_LIMITED = "_total"],
    ABUSE_BANS = "abuse_bans" => [ABUSE_BANS = "_total"],
    ABUSE_WOULD_BAN = "abuse_would_ban" => [ABUSE_WOULD_BAN = "_total"],
    /// Limits crossed by protected addresses, which are never banned.
    ABUSE_PROTECTED_SKIPPED = "abuse_protected_skipped" => [ABUSE_PROTECTED_SKIPPED = "_total"],
    /// Automatic bans evicted because a kernel deny map was full.
    DENY_EVICTIONS = "deny_evictions" => [DENY_EVICTIONS = "_total"],
    /// The fleet link (`[fleet]`): every series starts with [`exposed::FLEET_PREFIX`].
    FLEET_CONNECTED = "fleet_connected" => [FLEET_CONNECTED = ""],
    FLEET_QUEUE_LENGTH = "fleet_queue_length" => [FLEET_QUEUE_LENGTH = ""],
    FLEET_EVENTS_SENT = "fleet_events_sent" => [FLEET_EVENTS_SENT = "_total"],
    FLEET_EVENTS_RECEIVED = "fleet_events_received" => [FLEET_EVENTS_RECEIVED = "_total"],
    FLEET_EVENTS_DROPPED = "fleet_events_dropped" => [FLEET_EVENTS_DROPPED = "_total"],
    FLEET_BANS_REFUSED = "fleet_bans_refused" => [FLEET_BANS_REFUSED = "_total"],
    FLEET_COUNTS_LOST = "fleet_counts_lost" => [FLEET_COUNTS_LOST = "_total"],
    FLEET_EVENTS_REJECTED = "fleet_events_rejected" => [FLEET_EVENTS_REJECTED = "_total"],
    FLEET_PROPAGATION_LAG = "fleet_propagation_lag" => [
        FLEET_PROPAGATION_LAG_BUCKET = "_seconds_bucket",
        FLEET_PROPAGATION_LAG_SUM = "_seconds_sum",
        FLEET_PROPAGATION_LAG_COUNT = "_seconds_count"
    ],
    /// 1 while an upstream server is in rotation, 0 while out (labels `upstream`, `server`).
    UPSTREAM_SERVER_UP = "upstream_server_up" => [UPSTREAM_SERVER_UP = ""],
    /// Always 1; the labels say what runs (`version`, `commit`, `rustc`, `profile`).
    BUILD_INFO = "build_info" => [BUILD_INFO = ""],
}
