//! The pieces of a line's JSON, written straight into the worker's line buffer: integers by
//! `itoa`, strings copied as they are unless something in them needs escaping, and the
//! time's date and clock part formatted once a second. Measured with callgrind, `fmt` and
//! `serde_json` for every field cost about 7 500 instructions a line, a quarter of a whole
//! proxied request; this way it is a small fraction of that.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `,"key":` for a key known when compiling: one copy of one literal. Every line starts
/// with its `time`, so a separator always comes first.
macro_rules! key {
    ($out:expr, $k:literal) => {
        $out.extend_from_slice(concat!(",\"", $k, "\":").as_bytes())
    };
}
pub(super) use key;

/// Bytes a JSON string holds as they are: all but `"`, `\` and control characters.
static PLAIN: [bool; 256] = {
    let mut t = [true; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = false;
        i += 1;
    }
    t[b'"' as usize] = false;
    t[b'\\' as usize] = false;
    t
};

/// Whether `b` is ASCII that a JSON string holds as it is, eight bytes at a time: most of
/// a line's bytes are paths, hosts and ids, and a byte-by-byte test was the largest part
/// of writing a line.
fn is_plain_ascii(b: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // Exact as a yes/no: whether any byte of `x` is zero, or below 0x20.
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH != 0;
    let has_below_space = |x: u64| x.wrapping_sub(ONES * 0x20) & !x & HIGH != 0;
    let mut chunks = b.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_ne_bytes(word);
        if x & HIGH != 0
            || has_below_space(x)
            || has_zero(x ^ (ONES * u64::from(b'"')))
            || has_zero(x ^ (ONES * u64::from(b'\\')))
        {
            return false;
        }
    }
    chunks
        .remainder()
        .iter()
        .all(|&c| c < 0x80 && PLAIN[usize::from(c)])
}

/// A JSON string. Most values (paths, names, ids) need no escaping and are copied; the
/// others go through `serde_json`'s escaper.
#[inline]
pub(super) fn string(out: &mut Vec<u8>, s: &str) {
    if is_plain_ascii(s.as_bytes()) || s.bytes().all(|b| PLAIN[usize::from(b)]) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// `,"key":"value"` rendered once, for values known before any request (route and
/// upstream names): a line copies it.
pub(super) fn field(k: &str, value: &str) -> Box<[u8]> {
    let mut out = Vec::with_capacity(k.len() + value.len() + 6);
    out.extend_from_slice(b",\"");
    out.extend_from_slice(k.as_bytes());
    out.extend_from_slice(b"\":");
    string(&mut out, value);
    out.into_boxed_slice()
}

/// Bytes from a header as a JSON string; what is not UTF-8 is replaced. Plain ASCII (a
/// request id, a host) is copied without a UTF-8 check.
pub(super) fn bytes_string(out: &mut Vec<u8>, b: &[u8]) {
    if is_plain_ascii(b) {
        out.reserve(b.len() + 2);
        out.push(b'"');
        out.extend_from_slice(b);
        out.push(b'"');
        return;
    }
    match std::str::from_utf8(b) {
        Ok(s) => string(out, s),
        Err(_) => string(out, &String::from_utf8_lossy(b)),
    }
}

#[inline]
pub(super) fn integer(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Milliseconds with three decimals (microseconds, rounded), as a JSON number.
pub(super) fn millis(out: &mut Vec<u8>, d: Duration) {
    // In u64 (a u128 division is a library call): exact up to 584 554 years.
    let micros = d
        .as_secs()
        .checked_mul(1_000_000)
        .and_then(|m| m.checked_add(u64::from((d.subsec_nanos() + 500) / 1000)))
        .unwrap_or(u64::MAX);
    let whole = micros / 1000;
    if whole < 10 {
        // Most durations: one digit before the point, no formatter.
        out.push(b'0' + whole as u8);
    } else {
        integer(out, whole);
    }
    let frac = micros % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// An address as a JSON string: `"192.0.2.7"`, `"2001:db8::7"`.
pub(super) fn ip(out: &mut Vec<u8>, ip: IpAddr) {
    out.push(b'"');
    ip_bare(out, ip);
    out.push(b'"');
}

/// An address and port as a JSON string: `"10.0.0.5:8080"`, `"[2001:db8::5]:8080"`.
pub(super) fn socket_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    out.push(b'"');
    match addr.ip() {
        v4 @ IpAddr::V4(_) => ip_bare(out, v4),
        v6 @ IpAddr::V6(_) => {
            out.push(b'[');
            ip_bare(out, v6);
            out.push(b']');
        }
    }
    out.push(b':');
    integer(out, addr.port());
    out.push(b'"');
}

fn ip_bare(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Each octet's digits from a table, into a stack buffer, then one copy: a
            // digit at a time (divisions, a short copy per octet) was the largest single
            // cost of a line.
            let mut text = [0u8; 16];
            let mut n = 0;
            for o in v4.octets() {
                let [a, b, c, len] = OCTETS[usize::from(o)];
                // Always four bytes written (at most 12 + 4), `len` + 1 of them kept.
                if let Some(to) = text.get_mut(n..n + 4) {
                    to.copy_from_slice(&[a, b, c, b'.']);
                    // Move the dot right after the digits.
                    to[usize::from(len)] = b'.';
                }
                n += usize::from(len) + 1;
            }
            out.extend_from_slice(&text[..n - 1]);
        }
        // IPv6 text form has rules (the longest run of zeros, embedded IPv4) that std
        // already follows; rarer than IPv4 on the request path.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Every byte's decimal digits, left-aligned without leading zeros, and how many there are.
static OCTETS: [[u8; 4]; 256] = {
    let mut t = [[0u8; 4]; 256];
    let mut i = 0;
    while i < 256 {
        let o = i as u8;
        t[i] = match o {
            100.. => [b'0' + o / 100, b'0' + o / 10 % 10, b'0' + o % 10, 3],
            10.. => [b'0' + o / 10, b'0' + o % 10, 0, 2],
            _ => [b'0' + o, 0, 0, 1],
        };
        i += 1;
    }
    t
};

/// Formats `"time":"...Z"` (RFC 3339, milliseconds, UTC), keeping the part up to the
/// seconds from the last call: lines come in bursts within one second.
#[derive(Debug, Default)]
pub(super) struct Clock {
    /// The whole second `prefix` is for.
    second: Option<u64>,
    /// `2025-12-05T07:08:03.`
    prefix: String,
}

impl Clock {
    /// Starts a line: `{"time":"2025-12-05T07:08:03.123Z"`.
    pub(super) fn open_line(&mut self, out: &mut Vec<u8>, t: SystemTime) {
        out.extend_from_slice(b"{\"time\":\"");
        match t.duration_since(UNIX_EPOCH) {
            Ok(since) => {
                let second = since.as_secs();
                if self.second != Some(second) {
                    self.prefix.clear();
                    let whole = UNIX_EPOCH + Duration::from_secs(second);
                    // `2025-12-05T07:08:03Z`: keep all but the `Z`.
                    let _ = write!(self.prefix, "{}", humantime::format_rfc3339_seconds(whole));
                    self.prefix.pop();
                    self.prefix.push('.');
                    self.second = Some(second);
                }
                out.extend_from_slice(self.prefix.as_bytes());
                let ms = since.subsec_millis();
                out.extend_from_slice(&[
                    b'0' + (ms / 100) as u8,
                    b'0' + (ms / 10 % 10) as u8,
                    b'0' + (ms % 10) as u8,
                    b'Z',
                ]);
            }
            // A clock set before 1970: formatted the slow way.
            Err(_) => {
                let _ = write!(out, "{}", humantime::format_rfc3339_millis(t));
            }
        }
        out.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn time_matches_humantime_across_seconds_and_dates() {
        let mut clock = Clock::default();
        // Same second twice (cached prefix), the next second, another day, a leap day,
        // the epoch itself, and a millisecond edge.
        for ms in [
            1_764_918_483_123u64,
            1_764_918_483_999,
            1_764_918_484_000,
            1_764_918_484_001,
            1_709_164_800_007,
            0,
            999,
            253_402_300_799_999,
        ] {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            let got = text(|o| clock.open_line(o, t));
            let want = format!("{{\"time\":\"{}\"", humantime::format_rfc3339_millis(t));
            assert_eq!(got, want, "{ms}");
        }
    }

    #[test]
    fn millis_round_to_the_microsecond() {
        for (d, want) in [
            (Duration::ZERO, "0.000"),
            (Duration::from_micros(1_500), "1.500"),
            (Duration::from_micros(900), "0.900"),
            (Duration::from_nanos(1_499), "0.001"),
            (Duration::from_nanos(1_500), "0.002"),
            (Duration::from_nanos(999_999_500), "1000.000"),
            (
                Duration::from_secs(3_600) + Duration::from_micros(7),
                "3600000.007",
            ),
        ] {
            assert_eq!(text(|o| millis(o, d)), want, "{d:?}");
        }
    }

    #[test]
    fn strings_are_escaped_only_when_needed_and_always_valid_json() {
        for s in [
            "/v1/items",
            "",
            "quote\"inside",
            "back\\slash",
            "new\nline",
            "tab\there",
            "\u{0}\u{1f}",
            "caf\u{e9} \u{2028}",
            "\u{7f}",
        ] {
            let got = text(|o| string(o, s));
            let back: String = serde_json::from_str(&got).unwrap_or_else(|e| panic!("{got}: {e}"));
            assert_eq!(back, s);
        }
        assert_eq!(
            text(|o| bytes_string(o, b"evil\"\xff")),
            "\"evil\\\"\u{fffd}\""
        );
        assert_eq!(text(|o| bytes_string(o, b"a1-b2")), "\"a1-b2\"");
        assert_eq!(text(|o| bytes_string(o, b"new\nline")), "\"new\\nline\"");
        assert_eq!(
            text(|o| bytes_string(o, "caf\u{e9}".as_bytes())),
            "\"caf\u{e9}\""
        );
    }

    #[test]
    fn fields_rendered_once_are_escaped_like_any_string() {
        for name in ["api", "odd \"name\"\n"] {
            let got = String::from_utf8(field("route", name).into_vec()).unwrap();
            let back: serde_json::Value = serde_json::from_str(&format!("{{\"a\":1{got}}}"))
                .unwrap_or_else(|e| panic!("{got}: {e}"));
            assert_eq!(back["route"], name);
        }
        let mut out = Vec::new();
        key!(out, "bytes_in");
        assert_eq!(out, b",\"bytes_in\":");
    }

    #[test]
    fn the_word_at_a_time_test_agrees_with_the_byte_table() {
        // Every byte value at every position of strings from 1 to 19 bytes (two words and
        // a remainder), in fillers at the edges of what is plain (borrows between bytes).
        for filler in [b'a', b' ', b'!', b'#', b'[', b']', b'~', 0x7f] {
            for len in 1..20 {
                for pos in 0..len {
                    for b in 0..=255u8 {
                        let mut s = vec![filler; len];
                        s[pos] = b;
                        let want = b < 0x80 && PLAIN[usize::from(b)];
                        assert_eq!(
                            is_plain_ascii(&s),
                            want,
                            "{b:#x} at {pos} of {len} in {filler:#x}"
                        );
                    }
                }
            }
        }
        assert!(is_plain_ascii(b""));
        assert!(is_plain_ascii(b" !#~/v1/items?x=1&y=[2]"));
    }

    #[test]
    fn every_octet_in_every_position_matches_std() {
        for o in 0..=255u8 {
            for v4 in [
                std::net::Ipv4Addr::new(o, 0, 255, 9),
                std::net::Ipv4Addr::new(1, o, 10, 100),
                std::net::Ipv4Addr::new(200, 99, o, 0),
                std::net::Ipv4Addr::new(255, 255, 255, o),
                std::net::Ipv4Addr::new(o, o, o, o),
            ] {
                assert_eq!(text(|out| ip(out, IpAddr::V4(v4))), format!("\"{v4}\""));
            }
        }
    }

    #[test]
    fn addresses_match_std() {
        for a in [
            "192.0.2.7:1",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "[2001:db8::5]:8080",
            "[::ffff:192.0.2.1]:443",
            "[::1]:9",
            "100.10.1.99:80",
            "9.99.200.0:65535",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            assert_eq!(text(|o| socket_addr(o, addr)), format!("\"{addr}\""));
            assert_eq!(text(|o| ip(o, addr.ip())), format!("\"{}\"", addr.ip()));
        }
    }
}
