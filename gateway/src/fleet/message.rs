//! One fleet event as it travels through Redis: JSON, optionally signed with HMAC-SHA256 over
//! a canonical encoding (length-prefixed fields, the key prefix included so that a message
//! cannot be replayed into another fleet that shares the key).
//!
//! Whatever comes out of Redis is input like any other: bounded in length, every field
//! checked, the signature verified in constant time before anything is applied.

use crate::config::fleet::{valid_node, SHAREABLE};
use crate::deny::check_scope;
use crate::ebpf::Target;
use ring::hmac;
use serde::{Deserialize, Serialize};

/// The longest message accepted (a ban is about 300 bytes).
pub const MAX_LEN: usize = 2048;
/// The longest reason carried.
pub const MAX_REASON: usize = 256;
const VERSION: u8 = 1;

/// What happened to a ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Add,
    Del,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Del => "del",
        }
    }
}

/// A ban made or lifted on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub v: u8,
    pub op: Op,
    pub target: String,
    pub origin: String,
    pub reason: String,
    pub node: String,
    /// When the node made the change, unix milliseconds (for the propagation lag).
    pub created_ms: u64,
    /// Unix seconds; 0 = until removed.
    pub expires_unix: u64,
    /// Hex HMAC-SHA256 of [`Message::canonical`], in signed mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

/// Why a message from Redis was not applied (a metric label each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    #[error("longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("not a fleet message")]
    Malformed,
    #[error("unknown version")]
    Version,
    #[error("not an address or prefix, or too broad")]
    Target,
    #[error("origin not shared here")]
    Origin,
    #[error("bad node name")]
    Node,
    #[error("reason too long or with control characters")]
    Reason,
    #[error("unsigned")]
    Unsigned,
    #[error("wrong signature")]
    Signature,
}

impl Invalid {
    pub const ALL: [Invalid; 9] = [
        Invalid::TooLong,
        Invalid::Malformed,
        Invalid::Version,
        Invalid::Target,
        Invalid::Origin,
        Invalid::Node,
        Invalid::Reason,
        Invalid::Unsigned,
        Invalid::Signature,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Invalid::TooLong => "too_long",
            Invalid::Malformed => "malformed",
            Invalid::Version => "version",
            Invalid::Target => "target",
            Invalid::Origin => "origin",
            Invalid::Node => "node",
            Invalid::Reason => "reason",
            Invalid::Unsigned => "unsigned",
            Invalid::Signature => "signature",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// An event: made here, or read from Redis and passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub op: Op,
    pub target: Target,
    pub origin: String,
    pub reason: String,
    pub node: String,
    pub created_ms: u64,
    pub expires_unix: u64,
}

/// How this node reads and writes messages.
#[derive(Debug)]
pub struct Codec {
    /// Signs outgoing and requires valid signatures on incoming messages when set.
    key: Option<hmac::Key>,
    prefix: String,
    share: Vec<String>,
}

fn put(buf: &mut Vec<u8>, field: &[u8]) {
    // Fields are bounded by MAX_LEN, far below u32::MAX.
    buf.extend_from_slice(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
    buf.extend_from_slice(field);
}

impl Message {
    /// The bytes the HMAC covers: a domain label, the fleet's key prefix, then every field
    /// but the signature, each preceded by its length.
    fn canonical(&self, prefix: &str) -> Vec<u8> {
        let mut b = Vec::with_capacity(128 + self.reason.len());
        put(&mut b, b"gateway-fleet-v1");
        put(&mut b, prefix.as_bytes());
        put(&mut b, &[self.v]);
        put(&mut b, self.op.name().as_bytes());
        put(&mut b, self.target.as_bytes());
        put(&mut b, self.origin.as_bytes());
        put(&mut b, self.reason.as_bytes());
        put(&mut b, self.node.as_bytes());
        put(&mut b, &self.created_ms.to_be_bytes());
        put(&mut b, &self.expires_unix.to_be_bytes());
        b
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary, control characters replaced.
fn clean_reason(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

impl Codec {
    pub fn new(key: Option<&[u8]>, prefix: &str, share: &[String]) -> Self {
        Self {
            key: key.map(|k| hmac::Key::new(hmac::HMAC_SHA256, k)),
            prefix: prefix.to_owned(),
            share: share.to_vec(),
        }
    }

    pub fn signed(&self) -> bool {
        self.key.is_some()
    }

    /// Whether bans of this origin travel (both ways).
    pub fn shares(&self, origin: &str) -> bool {
        self.share.iter().any(|s| s == origin)
    }

    /// The JSON for an event, signed in signed mode.
    pub fn encode(&self, e: &Event) -> String {
        let mut m = Message {
            v: VERSION,
            op: e.op,
            target: e.target.to_string(),
            origin: e.origin.clone(),
            reason: clean_reason(&e.reason, MAX_REASON),
            node: e.node.clone(),
            created_ms: e.created_ms,
            expires_unix: e.expires_unix,
            sig: None,
        };
        if let Some(key) = &self.key {
            let tag = hmac::sign(key, &m.canonical(&self.prefix));
            m.sig = Some(hex(tag.as_ref()));
        }
        // A struct of strings and integers always serialises.
        serde_json::to_string(&m).unwrap_or_default()
    }

    /// Checks a message read from Redis.
    pub fn decode(&self, raw: &[u8]) -> Result<Event, Invalid> {
        if raw.len() > MAX_LEN {
            return Err(Invalid::TooLong);
        }
        let m: Message = serde_json::from_slice(raw).map_err(|_| Invalid::Malformed)?;
        if m.v != VERSION {
            return Err(Invalid::Version);
        }
        if let Some(key) = &self.key {
            let sig = m.sig.as_deref().ok_or(Invalid::Unsigned)?;
            let sig = unhex(sig).ok_or(Invalid::Signature)?;
            hmac::verify(key, &m.canonical(&self.prefix), &sig).map_err(|_| Invalid::Signature)?;
        }
        let target: Target = m.target.parse().map_err(|_| Invalid::Target)?;
        if check_scope(&target).is_err() {
            return Err(Invalid::Target);
        }
        if !SHAREABLE.contains(&m.origin.as_str()) || !self.shares(&m.origin) {
            return Err(Invalid::Origin);
        }
        if !valid_node(&m.node) {
            return Err(Invalid::Node);
        }
        if m.reason.len() > MAX_REASON || m.reason.chars().any(char::is_control) {
            return Err(Invalid::Reason);
        }
        Ok(Event {
            op: m.op,
            target,
            origin: m.origin,
            reason: m.reason,
            node: m.node,
            created_ms: m.created_ms,
            expires_unix: m.expires_unix,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share() -> Vec<String> {
        ["manual", "auth_failures"].map(String::from).to_vec()
    }

    fn t(s: &str) -> Target {
        s.parse().unwrap()
    }

    fn ev(target: &str, reason: &str, created_ms: u64, expires_unix: u64) -> Event {
        Event {
            op: Op::Add,
            target: t(target),
            origin: "manual".into(),
            reason: reason.into(),
            node: "edge-a".into(),
            created_ms,
            expires_unix,
        }
    }

    #[test]
    fn round_trip_plain_and_signed() {
        for key in [None, Some(&[7u8; 32][..])] {
            let c = Codec::new(key, "g:", &share());
            let raw = c.encode(&ev("203.0.113.9", "r\nx", 5, 9));
            let v = c.decode(raw.as_bytes()).unwrap();
            assert_eq!(v.target, t("203.0.113.9"));
            assert_eq!(v.reason, "r x", "control characters never travel");
            assert_eq!((v.created_ms, v.expires_unix), (5, 9));
        }
    }

    #[test]
    fn forged_and_malformed_messages_are_refused() {
        let key = [7u8; 32];
        let signed = Codec::new(Some(&key), "g:", &share());
        let plain = Codec::new(None, "g:", &share());
        let other_key = Codec::new(Some(&[8u8; 32]), "g:", &share());
        let other_fleet = Codec::new(Some(&key), "h:", &share());
        let good = signed.encode(&ev("203.0.113.9", "r", 1, 0));
        // Unsigned into signed mode, wrong key, another fleet's prefix.
        let unsigned = plain.encode(&ev("203.0.113.9", "r", 1, 0));
        assert_eq!(signed.decode(unsigned.as_bytes()), Err(Invalid::Unsigned));
        assert_eq!(other_key.decode(good.as_bytes()), Err(Invalid::Signature));
        assert_eq!(other_fleet.decode(good.as_bytes()), Err(Invalid::Signature));
        // A signed message with any field changed.
        let mut m: Message = serde_json::from_str(&good).unwrap();
        m.target = "203.0.113.10".into();
        let tampered = serde_json::to_string(&m).unwrap();
        assert_eq!(signed.decode(tampered.as_bytes()), Err(Invalid::Signature));
        let mut m: Message = serde_json::from_str(&good).unwrap();
        m.expires_unix = 1;
        assert_eq!(
            signed.decode(serde_json::to_string(&m).unwrap().as_bytes()),
            Err(Invalid::Signature)
        );
        let mut m: Message = serde_json::from_str(&good).unwrap();
        m.sig = Some("zz".into());
        assert_eq!(
            signed.decode(serde_json::to_string(&m).unwrap().as_bytes()),
            Err(Invalid::Signature)
        );
        // What no key makes valid.
        let raw = |target: &str, origin: &str, node: &str, reason: &str| {
            format!(
                r#"{{"v":1,"op":"add","target":"{target}","origin":"{origin}","reason":"{reason}","node":"{node}","created_ms":1,"expires_unix":0}}"#
            )
        };
        for (body, want) in [
            (raw("0.0.0.0/0", "manual", "a", "r"), Invalid::Target),
            (raw("::/0", "manual", "a", "r"), Invalid::Target),
            (raw("::/64", "manual", "a", "r"), Invalid::Target),
            (raw("10.0.0.0/7", "manual", "a", "r"), Invalid::Target),
            (raw("not-an-ip", "manual", "a", "r"), Invalid::Target),
            (raw("10.0.0.1", "config", "a", "r"), Invalid::Origin),
            (raw("10.0.0.1", "kernel_rate", "a", "r"), Invalid::Origin),
            (raw("10.0.0.1", "client_errors", "a", "r"), Invalid::Origin),
            (raw("10.0.0.1", "manual", "a b", "r"), Invalid::Node),
            (raw("10.0.0.1", "manual", "", "r"), Invalid::Node),
            (raw("10.0.0.1", "manual", "a", "\\u0007"), Invalid::Reason),
            (
                raw("10.0.0.1", "manual", "a", &"x".repeat(300)),
                Invalid::Reason,
            ),
            (
                raw("10.0.0.1", "manual", "a", &"x".repeat(3000)),
                Invalid::TooLong,
            ),
            ("{".to_owned(), Invalid::Malformed),
            (r#"{"v":1}"#.to_owned(), Invalid::Malformed),
            (
                raw("10.0.0.1", "manual", "a", "r").replace("\"v\":1", "\"v\":2"),
                Invalid::Version,
            ),
            (
                raw("10.0.0.1", "manual", "a", "r").replace("\"op\":\"add\"", "\"op\":\"ban\""),
                Invalid::Malformed,
            ),
            (
                raw("10.0.0.1", "manual", "a", "r").replace("}", ",\"extra\":1}"),
                Invalid::Malformed,
            ),
        ] {
            assert_eq!(plain.decode(body.as_bytes()), Err(want), "{body}");
        }
        assert!(plain
            .decode(raw("10.0.0.1", "manual", "a", "r").as_bytes())
            .is_ok());
    }
}
