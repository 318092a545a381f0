//! `X-Request-Id`: the client's, when it is a short token of safe characters, else one we
//! make. The upstream and the client see the same id as the access log line.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client id taken as is.
pub const MAX_LEN: usize = 128;

/// Whether a client's id can be kept: 1 to [`MAX_LEN`] bytes of letters, digits and
/// `-_.:/+=@`. Nothing that could break a log line, a header or a shell.
pub fn is_valid(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b))
}

/// Makes ids: 16 hex digits, unique within the process (a counter through a bijective
/// mix) and, with a random start, across restarts with overwhelming likelihood.
#[derive(Debug)]
pub struct IdGen {
    seed: u64,
    next: AtomicU64,
}

impl IdGen {
    pub fn new() -> Self {
        let mut seed = [0u8; 8];
        // Without randomness ids are still unique within the process; only restarts may
        // repeat them.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
        Self {
            seed: u64::from_le_bytes(seed),
            next: AtomicU64::new(0),
        }
    }

    /// A fresh id.
    pub fn generate(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let x = splitmix64(self.seed.wrapping_add(n));
        // A byte's two digits at a time, from a table.
        let mut out = [0u8; 16];
        for (pair, byte) in out.chunks_exact_mut(2).zip(x.to_be_bytes()) {
            pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
        }
        // Hex digits are always a valid header value.
        header_value(&out).unwrap_or_else(|| HeaderValue::from_static("0"))
    }

    /// The request's id: its one valid `X-Request-Id`, else a new one; `true` when the new
    /// one must replace whatever the client sent (so the upstream sees exactly the id that
    /// is logged).
    pub fn take_or_make(&self, headers: &HeaderMap) -> (HeaderValue, bool) {
        let mut values = headers.get_all(&X_REQUEST_ID).iter();
        if let (Some(v), None) = (values.next(), values.next()) {
            if is_valid(v.as_bytes()) {
                // A copy: a clone would share (and pin) the connection's read buffer.
                if let Some(copy) = header_value(v.as_bytes()) {
                    return (copy, false);
                }
            }
        }
        (self.generate(), true)
    }
}

impl Default for IdGen {
    fn default() -> Self {
        Self::new()
    }
}

/// Every byte's two lower-case hex digits.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
        i += 1;
    }
    t
};

/// How many bytes of ids one allocation holds (a few hundred ids).
const ARENA_BYTES: usize = 4096;

thread_local! {
    /// Each worker's block of id bytes: an id is a slice of it, so making one costs no
    /// allocation of its own, and its clones (for the upstream, the client and the log
    /// line) only count references. A block is freed with the last id in it.
    static ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// `id` copied into this thread's arena, as a header value; `None` if it is not one.
fn header_value(id: &[u8]) -> Option<HeaderValue> {
    let bytes = ARENA
        .try_with(|arena| {
            let mut arena = arena.try_borrow_mut().ok()?;
            if arena.capacity() < id.len() {
                arena.reserve(ARENA_BYTES.max(id.len()));
            }
            arena.extend_from_slice(id);
            Some(arena.split().freeze())
        })
        .ok()
        .flatten()
        // Only while the thread ends (or re-entered): a copy of its own.
        .unwrap_or_else(|| Bytes::copy_from_slice(id));
    HeaderValue::from_maybe_shared(bytes).ok()
}

/// A bijection on u64 with good mixing (SplitMix64's finaliser): distinct inputs, distinct
/// ids.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                X_REQUEST_ID.clone(),
                HeaderValue::from_bytes(v).expect("header value"),
            );
        }
        h
    }

    fn is_generated(v: &HeaderValue) -> bool {
        v.len() == 16 && v.as_bytes().iter().all(u8::is_ascii_hexdigit)
    }

    #[test]
    fn a_valid_client_id_is_kept_as_is() {
        let ids = IdGen::new();
        for id in [
            &b"abc-123"[..],
            b"0f3c2a9e-7c1d-4f8e-9d7a-2b6f1e0c4a5d",
            b"req:2026/12/05+x=y@z_1.2",
            &[b'a'; MAX_LEN],
        ] {
            let (got, replace) = ids.take_or_make(&headers(&[id]));
            assert_eq!(got.as_bytes(), id);
            assert!(!replace);
        }
    }

    #[test]
    fn bad_client_ids_are_replaced_by_a_generated_one() {
        let ids = IdGen::new();
        let long = [b'a'; MAX_LEN + 1];
        let cases: [&[&[u8]]; 9] = [
            &[],
            &[b""],
            &[&long],
            &[b"abc\tdef"],
            &[b"abc def"],
            &[b"\"quoted\""],
            &[b"caf\xc3\xa9"],
            &[b"{\"json\":1}"],
            // Two ids: which one is meant is unclear, the upstream gets ours alone.
            &[b"one", b"two"],
        ];
        for values in cases {
            let (id, replace) = ids.take_or_make(&headers(values));
            assert!(is_generated(&id), "{values:?} -> {id:?}");
            assert!(replace, "{values:?}");
        }
        // Control characters are refused by the validator itself (hyper refuses most of
        // them as header values before we ever see them).
        for b in (0u8..0x20).chain([0x7f]) {
            assert!(!is_valid(&[b'a', b, b'b']), "{b:#x}");
        }
    }

    #[test]
    fn ids_sharing_an_arena_block_stay_intact() {
        let ids = IdGen::new();
        // Ids over several blocks, client ids among them, kept alive while many more are
        // made (and some dropped, so a block may be reclaimed): none may change.
        let mut live = Vec::new();
        for i in 0..3 * ARENA_BYTES / 16 {
            let v = if i % 50 == 0 {
                let id = format!("client-{i}");
                ids.take_or_make(&headers(&[id.as_bytes()])).0
            } else {
                ids.generate()
            };
            live.push((v.as_bytes().to_vec(), v));
            if i % 3 == 0 {
                // Dropped at once: its bytes may be reused only when the whole block is free.
                drop(ids.generate());
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (copy, v) in &live {
            assert_eq!(v.as_bytes(), &copy[..]);
            assert!(seen.insert(copy.clone()), "an id repeated");
        }
    }

    #[test]
    fn generated_ids_differ() {
        let ids = IdGen::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = ids.generate();
            assert!(is_generated(&id), "{id:?}");
            assert!(seen.insert(id), "an id repeated");
        }
        // The counter's mix, in lower-case hex with leading zeros.
        let fresh = IdGen::new();
        for n in 0..64 {
            let want = format!("{:016x}", splitmix64(fresh.seed.wrapping_add(n)));
            assert_eq!(fresh.generate().to_str().ok(), Some(want.as_str()));
        }
        // Another process (another seed) starts elsewhere.
        assert_ne!(IdGen::new().generate(), IdGen::new().generate());
    }
}
