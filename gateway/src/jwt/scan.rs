//! Borrowed reading of a token's header and claims: one pass over the decoded JSON that keeps
//! only what verification needs, without building a document tree.
//!
//! A small recursive-descent scanner, held to accept exactly what [`super::json`] accepts
//! (serde_json's grammar, duplicate member names refused at every depth after unescaping,
//! nesting bounded by [`MAX_DEPTH`], no trailing data); unit and property tests compare the
//! two. The rare forms whose exact meaning is serde_json's business are handed to it: strings
//! with escapes (decoded by serde_json, so escapes and surrogates follow it exactly) and
//! numbers with a fraction or exponent or beyond 64 bits (converted, or refused as out of
//! range, by serde_json). The input is `str` (the caller checks UTF-8: the verifier does so
//! once for header and payload together, [`utf8`] otherwise). Plain strings are borrowed
//! from the input; nothing else allocates for documents of ordinary shape: the names a
//! reader knows are checked for duplicates by one bit each, the others in a small inline
//! set, which spills to a sorted set only for objects with many members (so a hostile
//! object of thousands of members stays O(n log n)).

use super::json::{JsonError, MAX_DEPTH};
use std::borrow::Cow;
use std::collections::BTreeSet;

/// A member that should be a string: absent, a string, or some other JSON type.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Str<'a> {
    /// Not in the document.
    #[default]
    Absent,
    /// A string (borrowed unless it had escapes).
    Text(Cow<'a, str>),
    /// Present with another type.
    Other,
}

impl Str<'_> {
    /// The string, if the member is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Str::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// A member that should be a number, as serde_json's tokenizer reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Num {
    /// Not in the document.
    #[default]
    Absent,
    /// An integer in the i64 range.
    Int(i64),
    /// An integer above `i64::MAX`.
    BigInt,
    /// A number with a fraction or exponent, or an integer beyond u64.
    Float(f64),
    /// Present with another type.
    Other,
}

/// A few strings inline, more on the heap: `aud` arrays.
///
/// The inline part holds borrowed strings only (nothing to drop); from the first string
/// that is not borrowed (it had escapes) or does not fit, the rest go to the heap, so the
/// order stays the document's.
#[derive(Debug, Clone, Default)]
pub struct Strs<'a> {
    inline: [&'a str; 4],
    len: usize,
    spill: Vec<Cow<'a, str>>,
}

impl<'a> Strs<'a> {
    fn push(&mut self, s: Cow<'a, str>) {
        if let (Cow::Borrowed(b), true) = (&s, self.spill.is_empty()) {
            if let Some(slot) = self.inline.get_mut(self.len) {
                *slot = b;
                self.len += 1;
                return;
            }
        }
        self.spill.push(s);
    }

    /// Whether `f` holds for one of the strings (document order). A loop per part rather
    /// than [`Self::iter`]'s chained iterator, which did not inline.
    pub fn any(&self, mut f: impl FnMut(&str) -> bool) -> bool {
        let inline = self.inline.get(..self.len).unwrap_or_default();
        inline.iter().any(|s| f(s)) || self.spill.iter().any(|s| f(s))
    }

    /// The strings in document order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let inline = self.inline.get(..self.len).unwrap_or_default();
        inline
            .iter()
            .copied()
            .chain(self.spill.iter().map(|s| &**s))
    }
}

/// The `aud` claim: one string, an array of strings, or something else.
#[derive(Debug, Clone, Default)]
pub enum Aud<'a> {
    /// Not in the document.
    #[default]
    Absent,
    /// A single string.
    One(Cow<'a, str>),
    /// An array whose items are all strings.
    Many(Strs<'a>),
    /// Another type, or an array with a non-string item.
    BadType,
}

/// The `crit` header parameter, as far as a verifier that implements no extension needs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Crit<'a> {
    /// Not in the header.
    #[default]
    Absent,
    /// Not an array.
    NotArray,
    /// An empty array (forbidden by RFC 7515 §4.1.11).
    Empty,
    /// A non-empty array; its first item.
    First(Str<'a>),
}

/// The registered parameters of a protected header, unchecked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawHeader<'a> {
    /// `alg`.
    pub alg: Str<'a>,
    /// `kid`.
    pub kid: Str<'a>,
    /// `typ`.
    pub typ: Str<'a>,
    /// `cty`.
    pub cty: Str<'a>,
    /// `crit`.
    pub crit: Crit<'a>,
}

/// The registered claims a verifier checks, unchecked, and which required names are present.
#[derive(Debug, Clone, Default)]
pub struct RawClaims<'a> {
    /// `iss`.
    pub iss: Str<'a>,
    /// `aud`.
    pub aud: Aud<'a>,
    /// `exp`.
    pub exp: Num,
    /// `nbf`.
    pub nbf: Num,
    /// `iat`.
    pub iat: Num,
    /// Bit i: the i-th required name (i < 64) is a top-level member.
    present: u64,
    /// The same for required names from the 65th on (empty, so unallocated, below that).
    present_more: Vec<bool>,
}

impl RawClaims<'_> {
    /// Whether the `i`-th of the required names given to [`claims`] is a member.
    pub fn has_required(&self, i: usize) -> bool {
        match i.checked_sub(64) {
            None => self.present & (1 << i) != 0,
            Some(j) => self.present_more.get(j).copied().unwrap_or(false),
        }
    }

    fn mark_required(&mut self, i: usize, of: usize) {
        match i.checked_sub(64) {
            None => self.present |= 1 << i,
            Some(j) => {
                if self.present_more.is_empty() {
                    self.present_more = vec![false; of.saturating_sub(64)];
                }
                if let Some(p) = self.present_more.get_mut(j) {
                    *p = true;
                }
            }
        }
    }
}

/// A decoded document as `str`, refused as [`super::json`] refuses it when it is not UTF-8.
pub fn utf8(json: &[u8]) -> Result<&str, JsonError> {
    std::str::from_utf8(json)
        .map_err(|e| JsonError::Syntax(format!("invalid UTF-8 at byte {}", e.valid_up_to())))
}

/// Reads a protected header strictly (the tests' reader; [`Header`](super::token::Header)
/// reads into its own slot with [`header_into`]).
#[cfg(test)]
pub fn header(json: &str) -> Result<RawHeader<'_>, JsonError> {
    let mut h = RawHeader::default();
    header_into(json, &mut h)?;
    Ok(h)
}

/// Reads a protected header strictly into `h`, which should be fresh
/// (`RawHeader::default()`) and is meaningful only when this returns `Ok`. Written in place:
/// returned, the header's fields (about 130 bytes) were copied several times per token.
pub fn header_into<'a>(json: &'a str, h: &mut RawHeader<'a>) -> Result<(), JsonError> {
    if flat_header(json, h) {
        return Ok(());
    }
    // The flat reader may have filled fields before it gave up.
    *h = RawHeader::default();
    scanned_header(json, h)
}

/// [`header_into`] by the general scanner.
fn scanned_header<'a>(json: &'a str, h: &mut RawHeader<'a>) -> Result<(), JsonError> {
    let mut p = Scanner::new(json);
    let read = p.document::<HEADER_INLINE, _>(&mut |name, p| {
        let (slot, bit) = match name {
            b"alg" => (&mut h.alg, 1),
            b"kid" => (&mut h.kid, 1 << 1),
            b"typ" => (&mut h.typ, 1 << 2),
            b"cty" => (&mut h.cty, 1 << 3),
            b"crit" => {
                h.crit = p.crit(1)?;
                return Ok(Member::read(1 << 4));
            }
            _ => return Ok(Member::OTHER),
        };
        *slot = p.string_or_skip(1)?;
        Ok(Member::read(bit))
    });
    match read {
        Ok(()) => Ok(()),
        Err(r) => Err(p.reason(r)),
    }
}

/// `"` + a three-letter name + `":"`, the first seven bytes of a member of the flat header
/// form, as the low 56 bits of a little-endian word.
const fn member_head(name: &[u8; 3]) -> u64 {
    u64::from_le_bytes([b'"', name[0], name[1], name[2], b'"', b':', b'"', 0])
}

/// The header in the form encoders write: `{`, members `"alg"`, `"kid"`, `"typ"` or `"cty"`
/// (each at most once) with plain string values (no escape, no control character), separated
/// by `,`, then `}` and the end: no whitespace, nothing else. For such a header the general
/// reader ([`header`]) gives the same fields and no error, so this reads it with one word
/// compare per name instead of the scanner's per-document and per-member work (about a
/// third of the instructions of a header). Anything else, valid or not: `None`, and the
/// general reader decides.
///
/// Reads into `h` (fresh), and says whether it answered; if not, `h` may hold some fields.
fn flat_header<'a>(json: &'a str, h: &mut RawHeader<'a>) -> bool {
    flat_header_fields(json, h).is_some()
}

/// [`flat_header`], with `?` for "not this form".
#[inline(always)]
fn flat_header_fields<'a>(json: &'a str, h: &mut RawHeader<'a>) -> Option<()> {
    const MASK: u64 = (1 << 56) - 1;
    const ALG: u64 = member_head(b"alg");
    const KID: u64 = member_head(b"kid");
    const TYP: u64 = member_head(b"typ");
    const CTY: u64 = member_head(b"cty");
    let b = json.as_bytes();
    if b.first() != Some(&b'{') {
        return None;
    }
    let mut seen = 0u8;
    let mut i = 1;
    // Each member takes at least nine bytes, so this ends within `b.len() / 9` rounds.
    loop {
        // Eight bytes are there in any header of this form: the value's closing quote and
        // the `}` follow the seven.
        let word = u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?) & MASK;
        let (slot, bit) = match word {
            ALG => (&mut h.alg, 1),
            KID => (&mut h.kid, 2),
            TYP => (&mut h.typ, 4),
            CTY => (&mut h.cty, 8),
            _ => return None,
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        let start = i + 7;
        let end = start + plain_run(b.get(start..)?)?;
        if b.get(end) != Some(&b'"') {
            return None;
        }
        // Both ends are at ASCII quotes, so on character boundaries.
        *slot = Str::Text(Cow::Borrowed(json.get(start..end)?));
        match b.get(end + 1) {
            Some(b',') => i = end + 2,
            Some(b'}') if end + 2 == b.len() => return Some(()),
            _ => return None,
        }
    }
}

/// Reads a claims set strictly, noting which of `required` are top-level members (the tests'
/// reader; the verifier reads into its own slot with [`claims_into`]).
#[cfg(test)]
pub fn claims<'a>(json: &'a str, required: &[String]) -> Result<RawClaims<'a>, JsonError> {
    let mut c = RawClaims::default();
    claims_into(json, required, &mut c)?;
    Ok(c)
}

/// Reads a claims set strictly into `c`, noting which of `required` are top-level members.
/// `c` should be fresh (`RawClaims::default()`), and is meaningful only
/// when this returns `Ok`. The verifier reads into its own slot: returned, the claims (about
/// 200 bytes) were copied out twice per token.
pub fn claims_into<'a>(
    json: &'a str,
    required: &[String],
    c: &mut RawClaims<'a>,
) -> Result<(), JsonError> {
    let mut p = Scanner::new(json);
    let read = p.document::<TOP_INLINE, _>(&mut |name, p| {
        let (num, bit) = match name {
            b"iss" => {
                c.iss = p.string_or_skip(1)?;
                (None, 1)
            }
            b"aud" => {
                p.aud(1, &mut c.aud)?;
                (None, 1 << 1)
            }
            b"exp" => (Some(&mut c.exp), 1 << 2),
            b"nbf" => (Some(&mut c.nbf), 1 << 3),
            b"iat" => (Some(&mut c.iat), 1 << 4),
            _ => (None, 0),
        };
        if let Some(num) = num {
            p.number_or_skip(1, num)?;
        }
        // Lengths and first bytes first: most members are not required, and this keeps a
        // library compare off the path for them.
        let first = name.first();
        let is = |r: &String| {
            r.len() == name.len() && r.as_bytes().first() == first && r.as_bytes() == name
        };
        let required_at = required.iter().position(is);
        if let Some(i) = required_at {
            c.mark_required(i, required.len());
        }
        Ok(match (bit, required_at) {
            (0, Some(i)) if i < 59 => Member {
                read: false,
                bit: 1 << (5 + i),
            },
            (0, _) => Member::OTHER,
            (bit, _) => Member::read(bit),
        })
    });
    match read {
        Ok(()) => Ok(()),
        Err(r) => Err(p.reason(r)),
    }
}

/// What a reader did with a member it was offered: whether it read the value (else the
/// scanner skips it), and the member's bit among the names the reader knows, 0 for any
/// other name. Each known name has its own bit, decided by the (unescaped) name alone, so
/// a known name never equals an unknown one: duplicates of known names are found by their
/// bits, and only the others go through [`Seen`].
#[derive(Debug, Clone, Copy)]
struct Member {
    read: bool,
    bit: u64,
}

impl Member {
    /// Not a name the reader knows, value not read.
    const OTHER: Member = Member {
        read: false,
        bit: 0,
    };

    /// A known name whose value the reader read.
    const fn read(bit: u64) -> Member {
        Member { read: true, bit }
    }
}

/// Member names of one object, to refuse duplicates: `N` plain (borrowed) names inline,
/// each with a cheap key compared first, then a sorted set. A name with escapes (owned,
/// rare) moves the object to the set at once, so the inline part holds only borrowed
/// slices: nothing to drop, little to initialise. Names are compared as bytes (UTF-8, and
/// unescaped), which is what equality of JSON strings means.
struct Seen<'a, const N: usize> {
    /// One bit per inline name, chosen by its key: a name whose bit is clear is new, which
    /// settles most inserts without comparing anything.
    bloom: u64,
    /// Keys of the inline names; [`NO_KEY`] past `len`, so all `N` can be compared at once.
    keys: [u32; N],
    names: [&'a [u8]; N],
    len: usize,
    /// `None` until used: an empty set's drop is a call, paid by every object otherwise.
    spill: Option<BTreeSet<Cow<'a, [u8]>>>,
}

/// No name's key: its last byte would be 0xff, which UTF-8 never has.
const NO_KEY: u32 = u32::MAX;

/// Length, first, middle and last byte: tells most distinct names apart without a pass
/// over them.
fn name_key(b: &[u8]) -> u32 {
    let at = |i: usize| u32::from(b.get(i).copied().unwrap_or(0));
    (b.len() as u32 & 0xff)
        | (at(0) << 8)
        | (at(b.len() / 2) << 16)
        | (at(b.len().wrapping_sub(1)) << 24)
}

impl<'a, const N: usize> Seen<'a, N> {
    fn new() -> Self {
        Seen {
            bloom: 0,
            keys: [NO_KEY; N],
            names: [b""; N],
            len: 0,
            spill: None,
        }
    }

    /// Adds `name`; false if it was already there.
    #[inline(always)]
    fn insert(&mut self, name: Cow<'a, [u8]>) -> bool {
        if let Some(spill) = &mut self.spill {
            return spill.insert(name);
        }
        let Cow::Borrowed(s) = name else {
            return self.spill_with(name);
        };
        let k = name_key(s);
        let bit = 1u64 << (k.wrapping_mul(0x9e37_79b9) >> 26);
        // Keys only when the bloom bit is set; names only on a key match.
        if self.bloom & bit != 0 && self.keys.contains(&k) {
            let used = self.keys.iter().zip(&self.names).take(self.len);
            if used.into_iter().any(|(&key, &n)| key == k && n == s) {
                return false;
            }
        }
        match (self.names.get_mut(self.len), self.keys.get_mut(self.len)) {
            (Some(slot), Some(key)) => {
                *slot = s;
                *key = k;
                self.bloom |= bit;
                self.len += 1;
                true
            }
            _ => self.spill_with(name),
        }
    }

    /// Moves the inline names to the sorted set and adds `name` there.
    #[cold]
    #[inline(never)]
    fn spill_with(&mut self, name: Cow<'a, [u8]>) -> bool {
        let inline = self.names.iter().take(self.len);
        let mut spill: BTreeSet<Cow<'a, [u8]>> = inline.map(|&n| Cow::Borrowed(n)).collect();
        self.len = 0;
        self.keys = [NO_KEY; N];
        let new = spill.insert(name);
        self.spill = Some(spill);
        new
    }
}

/// The length of the plain run at the start of a string's body: the offset of the first
/// `"`, `\\` or control character, whichever comes first, or `None` if there is none.
///
/// Eight bytes at a time (SWAR, see [`special_bytes`]); the last, partial window is read as
/// the slice's last eight bytes, overlapping bytes already found clean. Tokens' strings are
/// short, so this beats a call into a vectorised search. (SSE2 would take sixteen at a time
/// but needs `unsafe` here: its intrinsics are safe only inside `#[target_feature]`
/// functions, which are unsafe to call from the rest of the crate.)
#[inline(always)]
fn plain_run(s: &[u8]) -> Option<usize> {
    let mut at = 0;
    while let Some(w) = s.get(at..at + 8) {
        let found = special_bytes(w);
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    if at == s.len() {
        return None;
    }
    let Some(from) = s.len().checked_sub(8) else {
        return s.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
    };
    // `at - from` is 1..=7 here: drop the flags of the bytes before `at` (clean, so they
    // cannot have caused a false flag above them either).
    let found = special_bytes(s.get(from..).unwrap_or_default()) >> (8 * (at - from));
    (found != 0).then(|| at + (found.trailing_zeros() / 8) as usize)
}

/// For eight bytes (little-endian), the top bit of each byte that is `"`, `\\` or below
/// 0x20, by the classic "has a zero byte" / "has a byte below n" tests. The lowest flag is
/// always a true one (a false flag only appears above a true one, through the borrow),
/// which is all [`plain_run`] reads. Not eight bytes: no flags.
#[inline(always)]
fn special_bytes(w: &[u8]) -> u64 {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let Ok(bytes) = <[u8; 8]>::try_from(w) else {
        return 0;
    };
    let x = u64::from_le_bytes(bytes);
    let quote = x ^ (LO * u64::from(b'"'));
    let backslash = x ^ (LO * u64::from(b'\\'));
    // Each test is `(v - LO) & !v & HI` ("v has a zero byte", and "x has a byte below
    // 0x20" for v = x); `"` and `\\` are below 0x80, so `!quote` and `!backslash` have the
    // top bits of `!x`, and one `& !x` serves all three.
    (quote.wrapping_sub(LO) | backslash.wrapping_sub(LO) | x.wrapping_sub(LO * 0x20)) & !x & HI
}

/// 10^n for n in 0..=8.
const POW10: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// How many of the eight bytes `w` starts with are ASCII digits, and their value (SWAR: a
/// NumericDate's ten digits in two steps instead of ten). Not eight bytes: none.
#[inline(always)]
fn leading_digits(w: &[u8]) -> (usize, u64) {
    const LO: u64 = 0x0101_0101_0101_0101;
    let Ok(bytes) = <[u8; 8]>::try_from(w) else {
        return (0, 0);
    };
    let x = u64::from_le_bytes(bytes);
    // A byte is a digit iff its high nibble is 3 and stays 3 when 6 is added (0x30..=0x39).
    // The add carries only out of a byte of 0xfa or more, which is not a digit, and only
    // upwards, so it cannot disturb the run of digits below the first non-digit.
    let high = x & (LO * 0xf0);
    let plus6 = x.wrapping_add(LO * 6) & (LO * 0xf0);
    let not_digit = (high ^ (LO * 0x30)) | (plus6 ^ (LO * 0x30));
    let n = (not_digit.trailing_zeros() / 8) as usize;
    if n == 0 {
        return (0, 0);
    }
    // The digits' values, the first (most significant) in the lowest byte; shifted up so
    // that the bytes after the run fall off and zeros (leading zero digits) come in below.
    // The subtraction borrows only from bytes at or above the first non-digit, which go.
    let v = x.wrapping_sub(LO * 0x30) << (8 * (8 - n));
    // Pairs, then quads, then all eight: each step multiplies the higher-order half by
    // 10^k and adds the lower-order one.
    let v = (v.wrapping_mul(10 * 256 + 1) >> 8) & 0x00ff_00ff_00ff_00ff;
    let v = (v.wrapping_mul(100 * 65_536 + 1) >> 16) & 0x0000_ffff_0000_ffff;
    let v = v.wrapping_mul(10_000 * (1 << 32) + 1) >> 32;
    (n, v)
}

/// A number that is not a plain integer of 64 bits, as serde_json reads it (which refuses
/// infinities); `start` is its offset, for the error. Rare, so kept out of the hot path.
#[cold]
#[inline(never)]
fn float(text: &[u8], start: usize) -> Result<Num, JsonError> {
    match serde_json::from_slice::<f64>(text) {
        Ok(f) => Ok(Num::Float(f)),
        Err(e) => Err(JsonError::Syntax(format!(
            "{e} in the number at byte {start}"
        ))),
    }
}

/// Objects up to this many members check names without allocating (top level).
const TOP_INLINE: usize = 16;
/// The same for a protected header, which has a handful of members: less to set up.
const HEADER_INLINE: usize = 8;
/// The same for nested objects, which are rarer and smaller; keeps deep nesting's stack small.
const NESTED_INLINE: usize = 8;

/// A refusal inside the scanner; its reason waits in [`Scanner::error`].
///
/// Zero-sized, so that a reader's result costs what its value does: with `JsonError` (a
/// `String` inside) as the error, results such as `Result<Member, JsonError>` were laid
/// out around a one-byte tag, and LLVM copied them in odd-sized pieces at odd offsets
/// whose reloads stalled store forwarding (the hottest instructions of the header reader in
/// the native profile).
#[derive(Debug, Clone, Copy)]
struct Refused;

type Res<T> = Result<T, Refused>;

/// The scanner's position in the document.
///
/// The document arrives checked as UTF-8 ([`utf8`]; the verifier checks a token's header
/// and payload in one pass). Strings are read as byte slices: member names and skipped
/// values never need to be `str`, which saves a char-boundary check per string; only the
/// few a reader keeps are sliced from `s` ([`Self::text`]).
struct Scanner<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
    /// Why the scanner refused the document, set wherever [`Refused`] is returned.
    error: Option<JsonError>,
}

impl<'a> Scanner<'a> {
    fn new(s: &'a str) -> Self {
        Scanner {
            s,
            b: s.as_bytes(),
            i: 0,
            error: None,
        }
    }

    #[cold]
    #[inline(never)]
    fn err<T>(&mut self, what: &str) -> Res<T> {
        self.fail(JsonError::Syntax(format!("{what} at byte {}", self.i)))
    }

    /// Refuses the document for `e`.
    #[cold]
    #[inline(never)]
    fn fail<T>(&mut self, e: JsonError) -> Res<T> {
        self.error = Some(e);
        Err(Refused)
    }

    /// The reason for a [`Refused`] from this scanner.
    #[cold]
    #[inline(never)]
    fn reason(&mut self, Refused: Refused) -> JsonError {
        // Every `Refused` is made by `fail`, so the fallback is never used.
        self.error
            .take()
            .unwrap_or_else(|| JsonError::Syntax("invalid JSON".into()))
    }

    /// The next byte that is not JSON whitespace, not consumed.
    ///
    /// Compact JSON, what tokens carry, has no whitespace: one compare settles it (every
    /// JSON whitespace byte is at most `' '`), and only then the loop, out of line. Inlined
    /// as a loop, each of the ~35 peeks of a token's claims paid for the loop's set-up.
    #[inline(always)]
    fn peek(&mut self) -> Option<u8> {
        match self.b.get(self.i) {
            Some(&c) if c > b' ' => Some(c),
            _ => self.peek_past_whitespace(),
        }
    }

    /// [`Self::peek`] where the next byte may be whitespace (or absent).
    #[inline(never)]
    fn peek_past_whitespace(&mut self) -> Option<u8> {
        while let Some(&c) = self.b.get(self.i) {
            if !matches!(c, b' ' | b'\n' | b'\t' | b'\r') {
                return Some(c);
            }
            self.i += 1;
        }
        None
    }

    fn eat(&mut self, c: u8) -> Res<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            self.err("unexpected character or end")
        }
    }

    /// A whole document: one object, then only whitespace.
    ///
    /// `take` is offered each top-level member name; it reads the value and says so if it
    /// wants it (generic rather than `dyn`, so that it inlines into the loop).
    fn document<const N: usize, F>(&mut self, take: &mut F) -> Res<()>
    where
        F: FnMut(&[u8], &mut Self) -> Res<Member>,
    {
        if self.peek() != Some(b'{') {
            return match self.peek() {
                Some(b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {
                    // Valid JSON or not, it is not an object.
                    self.fail(JsonError::NotObject)
                }
                _ => self.err("expected a JSON object"),
            };
        }
        self.object::<N, F>(1, take)?;
        if self.peek().is_some() {
            return self.err("trailing characters");
        }
        Ok(())
    }

    /// An object at nesting `depth` (1 for the top level), at its `{`.
    fn object<const N: usize, F>(&mut self, depth: usize, take: &mut F) -> Res<()>
    where
        F: FnMut(&[u8], &mut Self) -> Res<Member>,
    {
        if depth > MAX_DEPTH {
            return self.err("nesting too deep");
        }
        self.eat(b'{')?;
        let mut seen = Seen::<N>::new();
        // Bits of the known names seen so far (see [`Member`]).
        let mut known = 0u64;
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return self.err("expected a member name");
            }
            let name = self.string()?;
            self.eat(b':')?;
            let member = take(&name, self)?;
            if !member.read {
                // Most unwanted members are strings: skipped here, without a call.
                if self.peek() == Some(b'"') {
                    self.string()?;
                } else {
                    self.skip(depth)?;
                }
            }
            let new = if member.bit != 0 {
                let new = known & member.bit == 0;
                known |= member.bit;
                new
            } else {
                seen.insert(name)
            };
            if !new {
                return self.err("duplicate member name");
            }
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return self.err("expected `,` or `}`"),
            }
        }
    }

    /// An array inside a container at `depth`, at its `[`; `item` reads each element.
    fn array<F>(&mut self, depth: usize, item: &mut F) -> Res<()>
    where
        F: FnMut(&mut Self) -> Res<()>,
    {
        if depth + 1 > MAX_DEPTH {
            return self.err("nesting too deep");
        }
        self.eat(b'[')?;
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            item(self)?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return self.err("expected `,` or `]`"),
            }
        }
    }

    /// Any value inside a container at `depth`, checked and dropped.
    fn skip(&mut self, depth: usize) -> Res<()> {
        match self.peek() {
            Some(b'{') => self.object::<NESTED_INLINE, _>(depth + 1, &mut |_, _| Ok(Member::OTHER)),
            Some(b'[') => self.array(depth, &mut |p| p.skip(depth + 1)),
            Some(b'"') => self.string().map(drop),
            Some(b'-' | b'0'..=b'9') => self.number(&mut Num::Absent),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            _ => self.err("expected a value"),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Res<()> {
        let end = self.i + word.len();
        if self.b.get(self.i..end) == Some(word) {
            self.i = end;
            Ok(())
        } else {
            self.err("invalid literal")
        }
    }

    /// A string, at its opening quote, as UTF-8 bytes: borrowed when it has no escapes,
    /// else decoded by serde_json.
    ///
    /// The common case (a plain ASCII run up to the closing quote) is small enough to inline
    /// into the member loop; everything else takes [`Self::string_slow`].
    #[inline(always)]
    fn string(&mut self) -> Res<Cow<'a, [u8]>> {
        let start = self.i + 1;
        if let Some(len) = plain_run(self.b.get(start..).unwrap_or_default()) {
            let end = start + len;
            if self.b.get(end) == Some(&b'"') {
                if let Some(s) = self.b.get(start..end) {
                    self.i = end + 1;
                    return Ok(Cow::Borrowed(s));
                }
            }
        }
        self.string_slow()
    }

    /// A string kept by a reader, as `str`. A borrowed body starts right after the opening
    /// quote and ends at the closing one, both ASCII, so slicing the checked document there
    /// cannot fail; should it, the document is refused rather than anything trusted.
    #[inline(always)]
    fn text(&mut self) -> Res<Cow<'a, str>> {
        let start = self.i + 1;
        let s = match self.string()? {
            Cow::Borrowed(b) => self.s.get(start..start + b.len()).map(Cow::Borrowed),
            Cow::Owned(v) => String::from_utf8(v).ok().map(Cow::Owned),
        };
        match s {
            Some(s) => Ok(s),
            None => self.err("invalid UTF-8 in a string"),
        }
    }

    /// [`Self::string`] when the plain run ends at a backslash, a control character or the
    /// end.
    #[cold]
    #[inline(never)]
    fn string_slow(&mut self) -> Res<Cow<'a, [u8]>> {
        let open = self.i;
        let start = open + 1;
        let rest = self.b.get(start..).unwrap_or_default();
        let Some(len) = plain_run(rest) else {
            self.i = self.b.len();
            return self.err("unterminated string");
        };
        let end = start + len;
        match self.b.get(end) {
            Some(b'"') => {}
            Some(b'\\') => return self.escaped_string(open),
            _ => {
                self.i = end;
                return self.err("control character in a string");
            }
        }
        self.i = end + 1;
        Ok(Cow::Borrowed(rest.get(..len).unwrap_or_default()))
    }

    /// A string with escapes from its opening quote at `open`: the closing quote is the
    /// first `"` not escaped; serde_json decodes (and judges) what lies between.
    fn escaped_string(&mut self, open: usize) -> Res<Cow<'a, [u8]>> {
        let mut i = open + 1;
        loop {
            match self.b.get(i) {
                Some(b'"') => break,
                Some(b'\\') => i += 2,
                Some(_) => i += 1,
                None => {
                    self.i = i;
                    return self.err("unterminated string");
                }
            }
        }
        let quoted = self.b.get(open..=i).unwrap_or_default();
        let s: String = match serde_json::from_slice(quoted) {
            Ok(s) => s,
            Err(e) => {
                return self.fail(JsonError::Syntax(format!(
                    "{e} in the string at byte {open}"
                )))
            }
        };
        self.i = i + 1;
        Ok(Cow::Owned(s.into_bytes()))
    }

    /// A number, at its first character: JSON's grammar checked here, then plain integers
    /// converted here and every other form by serde_json (which refuses infinities).
    #[inline(always)]
    ///
    /// The value is written to `slot` rather than returned: returned, it was merged with the
    /// out-of-line float path in memory and copied out through unaligned loads that stalled
    /// store forwarding (the hottest instructions of the claims scan in the profile).
    fn number(&mut self, slot: &mut Num) -> Res<()> {
        let start = self.i;
        let mut i = start;
        let negative = self.b.get(i) == Some(&b'-');
        if negative {
            i += 1;
        }
        // The integer part's digits, accumulated as they are checked; up to 19 digits always
        // fit in a u64, longer runs are summed again with overflow checks (`None` past u64).
        let int_start = i;
        let mut m = 0u64;
        // Eight bytes at a time while eight remain ([`leading_digits`]), the rest one by one.
        while let Some(w) = self.b.get(i..i + 8) {
            let (n, value) = leading_digits(w);
            m = m.wrapping_mul(POW10[n]).wrapping_add(value);
            i += n;
            if n < 8 {
                break;
            }
        }
        while let Some(d) = self
            .b
            .get(i)
            .map(|c| c.wrapping_sub(b'0'))
            .filter(|&d| d < 10)
        {
            m = m.wrapping_mul(10).wrapping_add(u64::from(d));
            i += 1;
        }
        let int_len = i - int_start;
        let magnitude = if int_len <= 19 {
            Some(m)
        } else {
            let run = self.b.get(int_start..i).unwrap_or_default();
            run.iter().try_fold(0u64, |m, &d| {
                m.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
        };
        let digits = |i: &mut usize| {
            let from = *i;
            while self.b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i - from
        };
        if int_len == 0 || (int_len > 1 && self.b.get(int_start) == Some(&b'0')) {
            self.i = i;
            return self.err("invalid number");
        }
        let mut plain = true;
        if self.b.get(i) == Some(&b'.') {
            i += 1;
            plain = false;
            if digits(&mut i) == 0 {
                self.i = i;
                return self.err("invalid number");
            }
        }
        if matches!(self.b.get(i), Some(b'e' | b'E')) {
            i += 1;
            plain = false;
            if matches!(self.b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if digits(&mut i) == 0 {
                self.i = i;
                return self.err("invalid number");
            }
        }
        self.i = i;
        let text = self.b.get(start..i).unwrap_or_default();
        if plain {
            match (negative, magnitude) {
                (false, Some(m)) => {
                    *slot = i64::try_from(m).map_or(Num::BigInt, Num::Int);
                    return Ok(());
                }
                // -0 is a float to serde_json; so are magnitudes beyond i64's.
                (true, Some(m)) if m != 0 && m <= 1 << 63 => {
                    *slot = Num::Int((-i128::from(m)) as i64);
                    return Ok(());
                }
                _ => {}
            }
        }
        match float(text, start) {
            Ok(f) => {
                *slot = f;
                Ok(())
            }
            Err(e) => self.fail(e),
        }
    }

    /// A value that should be a string, inside a container at `depth`.
    #[inline(always)]
    fn string_or_skip(&mut self, depth: usize) -> Res<Str<'a>> {
        if self.peek() == Some(b'"') {
            return self.text().map(Str::Text);
        }
        self.skip(depth).map(|()| Str::Other)
    }

    /// A value that should be a number, inside a container at `depth`, into `slot`.
    #[inline(always)]
    fn number_or_skip(&mut self, depth: usize, slot: &mut Num) -> Res<()> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => self.number(slot),
            _ => {
                self.skip(depth)?;
                *slot = Num::Other;
                Ok(())
            }
        }
    }

    /// The `crit` value, inside the header (`depth` 1).
    fn crit(&mut self, depth: usize) -> Res<Crit<'a>> {
        if self.peek() != Some(b'[') {
            return self.skip(depth).map(|()| Crit::NotArray);
        }
        let mut first = None;
        self.array(depth, &mut |p| {
            if first.is_none() {
                first = Some(p.string_or_skip(depth + 1)?);
                Ok(())
            } else {
                p.skip(depth + 1)
            }
        })?;
        Ok(first.map_or(Crit::Empty, Crit::First))
    }

    /// The `aud` value, inside the claims (`depth` 1), into `slot` (built there rather than
    /// moved: it is about 100 bytes); meaningful only on `Ok`.
    fn aud(&mut self, depth: usize, slot: &mut Aud<'a>) -> Res<()> {
        match self.peek() {
            Some(b'"') => {
                *slot = Aud::One(self.text()?);
                return Ok(());
            }
            Some(b'[') => {}
            _ => {
                self.skip(depth)?;
                *slot = Aud::BadType;
                return Ok(());
            }
        }
        *slot = Aud::Many(Strs::default());
        let mut all_strings = true;
        self.array(depth, &mut |p| {
            match p.string_or_skip(depth + 1)? {
                Str::Text(s) if all_strings => {
                    if let Aud::Many(items) = &mut *slot {
                        items.push(s);
                    }
                }
                _ => all_strings = false,
            }
            Ok(())
        })?;
        if !all_strings {
            *slot = Aud::BadType;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::json;
    use super::*;

    /// [`super::header`] on bytes, as the verifier runs it: checked as UTF-8 first.
    fn header(doc: &[u8]) -> Result<RawHeader<'_>, JsonError> {
        super::header(utf8(doc)?)
    }

    /// [`super::claims`] on bytes, as the verifier runs it: checked as UTF-8 first.
    fn claims<'a>(doc: &'a [u8], required: &[String]) -> Result<RawClaims<'a>, JsonError> {
        super::claims(utf8(doc)?, required)
    }

    /// [`flat_header`] as an `Option`.
    fn flat(doc: &str) -> Option<RawHeader<'_>> {
        let mut h = RawHeader::default();
        flat_header(doc, &mut h).then_some(h)
    }

    /// [`scanned_header`] as a `Result`.
    fn scanned(doc: &str) -> Result<RawHeader<'_>, JsonError> {
        let mut h = RawHeader::default();
        scanned_header(doc, &mut h).map(|()| h)
    }

    /// Every document either both readers accept or both refuse.
    fn agree(doc: impl AsRef<[u8]>) -> bool {
        let doc = doc.as_ref();
        let strict = json::parse_object(doc).is_ok();
        let as_header = header(doc).is_ok();
        let as_claims = claims(doc, &[]).is_ok();
        let doc = String::from_utf8_lossy(doc);
        assert_eq!(strict, as_header, "header reader disagrees on {doc:?}");
        assert_eq!(strict, as_claims, "claims reader disagrees on {doc:?}");
        strict
    }

    /// The flat header reader answers for the form encoders write, with the general
    /// reader's fields, and leaves everything else (valid or not) to the general reader.
    #[test]
    fn flat_header_reads_the_common_form_only() {
        for doc in [
            r#"{"alg":"HS256"}"#,
            r#"{"alg":"HS256","kid":"k","typ":"at+jwt"}"#,
            r#"{"typ":"JWT","alg":"RS256","kid":"","cty":"JWT"}"#,
            "{\"alg\":\"é\",\"kid\":\"€😀\"}",
            r#"{"kid":"a/b:c,d}{e","alg":"ES256"}"#,
        ] {
            let flat = flat(doc);
            assert!(flat.is_some(), "{doc}");
            assert_eq!(flat.map(Ok), Some(scanned(doc)), "{doc}");
        }
        for doc in [
            "",
            "{",
            "{}",
            r#"{"alg":"HS256"} "#,
            r#"{"alg":"HS256"}}"#,
            r#"{"alg":"HS256",}"#,
            r#"{"alg":"HS256""#,
            r#"{"alg":"HS256"#,
            r#"{"alg":"HS"#,
            r#"{"alg""#,
            r#" {"alg":"HS256"}"#,
            r#"{ "alg":"HS256"}"#,
            r#"{"alg": "HS256"}"#,
            r#"{"alg":"HS256" ,"kid":"k"}"#,
            r#"{"alg":"HS256","alg":"HS256"}"#,
            r#"{"alg":"HS256","kid":"k","alg":"none"}"#,
            r#"{"alg":"HS\u0032"}"#,
            r#"{"al\u0067":"HS256"}"#,
            r#"{"alg":256}"#,
            r#"{"alg":["HS256"]}"#,
            r#"{"alg":"HS256","crit":["exp"]}"#,
            r#"{"alg":"HS256","x5t":"x"}"#,
            r#"{"ALG":"HS256"}"#,
            r#"{"algo":"HS256"}"#,
            "{\"alg\":\"a\tb\"}",
            "{\"alg\":\"a\nb\"}",
            r#"["alg","HS256"]"#,
        ] {
            assert_eq!(flat(doc), None, "{doc}");
            agree(doc);
        }
    }

    #[test]
    fn duplicates_refused_at_every_depth_and_through_escapes() {
        for doc in [
            r#"{"alg":"HS256","alg":"HS256"}"#,
            r#"{"alg":"none","alg":"HS256"}"#,
            r#"{"iss":"a","\u0069ss":"b"}"#,
            r#"{"x":1,"x":1}"#,
            r#"{"x":{"b":[{"c":1,"c":1}]}}"#,
            r#"{"crit":[{"a":1,"a":2}]}"#,
            r#"{"aud":["a",{"k":1,"k":1}]}"#,
            r#"{"jwk":{"kty":"oct","k":"AA","\u006b":"AB"}}"#,
            // Non-ASCII names, plain and escaped, compared as their UTF-8 bytes.
            "{\"é\":1,\"\\u00e9\":2}",
            "{\"\\u00e9\":1,\"é\":2}",
            "{\"été\":1,\"été\":2}",
            "{\"😀\":1,\"\\ud83d\\ude00\":2}",
        ] {
            assert!(!agree(doc), "{doc} accepted");
        }
        assert!(agree(r#"{"x":{"b":[{"c":1,"d":1}]},"y":{"c":1}}"#));
    }

    #[test]
    fn many_members_spill_and_still_catch_duplicates() {
        let members: Vec<String> = (0..300).map(|i| format!("\"m{i}\":{i}")).collect();
        let doc = format!("{{{}}}", members.join(","));
        assert!(agree(&doc));
        let doc = format!("{{{},\"m7\":0}}", members.join(","));
        assert!(!agree(&doc));
        // A duplicate of a name seen while still inline, found after the spill.
        let doc = format!("{{\"aud\":\"x\",{},\"aud\":\"y\"}}", members.join(","));
        assert!(!agree(&doc));
        let nested = format!("{{\"o\":{{{},\"m299\":1}}}}", members.join(","));
        assert!(!agree(&nested));
    }

    #[test]
    fn syntax_depth_and_numbers_as_strict_as_the_tree_parser() {
        for doc in [
            "",
            "[1]",
            "\"x\"",
            "{} x",
            "{",
            r#"{"a":"\ud800"}"#,
            r#"{"a":1e999}"#,
            r#"{"exp":1e999}"#,
            r#"{"a":01}"#,
            r#"{"a":"x\u0000"}"#,
            "{\"a\":\"\x01\"}",
            r#"{"a":NaN}"#,
            r#"{"a":[1,]}"#,
            r#"{"exp":-0}"#,
            r#"{"exp":123456789012345678901234567890}"#,
            r#"{"crit":"exp"}"#,
            r#"{"aud":[]}"#,
            // Escapes and encodings.
            r#"{"a":"\ud83d\ude00"}"#,
            r#"{"a":"\udc00"}"#,
            r#"{"a":"\ud800\u0041"}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12"}"#,
            r#"{"a":"\u00e9\n\t\b\f\r\/\\\""}"#,
            r#"{"a\"":1,"a\u0022":2}"#,
            r#"{"a":"\"}"#,
            r#"{"a":"\\"}"#,
            "{\"a\":\"\x7f\"}",
            "{\"a\":\"\u{e9}\"}",
            "{\"a\":\"\t\"}",
            // Numbers at the edges of the grammar and of each representation.
            r#"{"a":-}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":1e}"#,
            r#"{"a":1e+}"#,
            r#"{"a":-01}"#,
            r#"{"a":00}"#,
            r#"{"a":+1}"#,
            r#"{"a":1E5,"b":1e-5,"c":-0.0,"d":0}"#,
            r#"{"a":-9223372036854775808,"b":-9223372036854775809}"#,
            r#"{"a":18446744073709551615,"b":18446744073709551616}"#,
            r#"{"a":1e308,"b":2e-400}"#,
            r#"{"a":1.7976931348623159e308}"#,
            r#"{"a":1.7976931348623157e308}"#,
            // Literals and structure.
            r#"{"a":tru}"#,
            r#"{"a":truex}"#,
            r#"{"a":nulll}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":[,1]}"#,
            r#"{"a":1,}"#,
            r#"{,}"#,
            r#"{"a" 1}"#,
            r#"{1:1}"#,
            " \t\r\n{ \"a\" : [ 1 , { } ] } \n",
            "{\"a\":1}\u{c}",
        ] {
            agree(doc);
        }
        for bad in [
            &b"{\"a\":\"\xff\"}"[..],
            b"{\"a\":\"\xc3\x28\"}",
            b"{\"\xe9\":1}",
        ] {
            assert!(!agree(bad));
        }
        // Numbers mean what serde_json says they mean.
        let c = claims(br#"{"exp":-9223372036854775809,"nbf":-0,"iat":1e2}"#, &[]).unwrap();
        assert_eq!(c.exp, Num::Float(-9223372036854775809f64));
        assert_eq!(c.nbf, Num::Float(-0.0));
        assert_eq!(c.iat, Num::Float(100.0));
        let c = claims(
            br#"{"exp":-9223372036854775808,"nbf":9223372036854775808}"#,
            &[],
        )
        .unwrap();
        assert_eq!((c.exp, c.nbf), (Num::Int(i64::MIN), Num::BigInt));
        for depth in [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 10_000] {
            for (open, close) in [("[", "]"), ("{\"k\":", "}")] {
                let doc = format!("{{\"a\":{}1{}}}", open.repeat(depth), close.repeat(depth));
                agree(&doc);
                let doc = format!(
                    "{{\"crit\":{}1{}}}",
                    open.repeat(depth),
                    close.repeat(depth)
                );
                agree(&doc);
                let doc = format!("{{\"aud\":{}1{}}}", open.repeat(depth), close.repeat(depth));
                agree(&doc);
            }
        }
        let mut ok = "[".repeat(MAX_DEPTH - 1);
        ok.push_str(&"]".repeat(MAX_DEPTH - 1));
        assert!(agree(format!("{{\"a\":{ok}}}")));
    }

    #[test]
    fn header_members_typed_and_unescaped() {
        let h =
            header(br#"{"alg":"HS\u0032\u00356","kid":"k\"1","typ":7,"crit":["exp",1]}"#).unwrap();
        assert_eq!(h.alg, Str::Text(Cow::Owned("HS256".into())));
        assert_eq!(h.kid.as_str(), Some("k\"1"));
        assert_eq!(h.typ, Str::Other);
        assert_eq!(h.cty, Str::Absent);
        assert_eq!(h.crit, Crit::First(Str::Text("exp".into())));
        let h = header(br#"{"alg":"RS256","kid":"plain"}"#).unwrap();
        assert!(matches!(h.kid, Str::Text(Cow::Borrowed("plain"))));
        assert_eq!(header(br#"{"crit":[]}"#).unwrap().crit, Crit::Empty);
        assert_eq!(header(br#"{"crit":{}}"#).unwrap().crit, Crit::NotArray);
        assert_eq!(
            header(br#"{"crit":[{"x":[1]}]}"#).unwrap().crit,
            Crit::First(Str::Other)
        );
    }

    #[test]
    fn claims_members_typed() {
        let req: Vec<String> = ["sub", "jti", "exp"].map(String::from).into();
        let c = claims(
            br#"{"iss":"i","aud":["a","b\/c","d","e","f"],"exp":1.5,"nbf":18446744073709551615,"iat":-3,"sub":null}"#,
            &req,
        )
        .unwrap();
        assert_eq!(c.iss.as_str(), Some("i"));
        let Aud::Many(items) = &c.aud else {
            panic!("{:?}", c.aud)
        };
        assert_eq!(
            items.iter().collect::<Vec<_>>(),
            ["a", "b/c", "d", "e", "f"]
        );
        for (doc, want) in [
            (
                &br#"{"aud":["a","b","c","d","e","f\/"]}"#[..],
                &["a", "b", "c", "d", "e", "f/"][..],
            ),
            (br#"{"aud":["\u0061","b"]}"#, &["a", "b"]),
            (br#"{"aud":["a","b","c","d"]}"#, &["a", "b", "c", "d"]),
            (br#"{"aud":[]}"#, &[]),
        ] {
            let Aud::Many(items) = claims(doc, &[]).unwrap().aud else {
                panic!("{doc:?}")
            };
            assert_eq!(items.iter().collect::<Vec<_>>(), want);
        }
        assert_eq!(c.exp, Num::Float(1.5));
        assert_eq!(c.nbf, Num::BigInt);
        assert_eq!(c.iat, Num::Int(-3));
        assert!(c.has_required(0) && !c.has_required(1) && c.has_required(2));
        let c = claims(br#"{"aud":["a",1,"b"],"iss":["i"],"exp":"1"}"#, &[]).unwrap();
        assert!(matches!(c.aud, Aud::BadType));
        assert_eq!(c.iss, Str::Other);
        assert_eq!(c.exp, Num::Other);
        let c = claims(br#"{"aud":{"a":1},"exp":null}"#, &[]).unwrap();
        assert!(matches!(c.aud, Aud::BadType));
        assert_eq!(c.exp, Num::Other);
        // Nested members named like registered claims are not the claims.
        let c = claims(br#"{"x":{"iss":"i","exp":1,"sub":1}}"#, &req).unwrap();
        assert_eq!(c.iss, Str::Absent);
        assert_eq!(c.exp, Num::Absent);
        assert!(!c.has_required(0));
    }

    /// Known names (registered, and required ones, which get bits too) are checked for
    /// duplicates by their bits, the rest by name: every mix is refused, escaped or not.
    #[test]
    fn duplicates_of_known_and_required_names() {
        let mut req: Vec<String> = ["sub", "exp", "sub"].map(String::from).into();
        req.extend((0..70).map(|i| format!("c{i}")));
        for (doc, ok) in [
            (r#"{"sub":1,"x":2,"c3":3,"c65":4,"exp":5}"#, true),
            (r#"{"sub":1,"\u0073ub":2}"#, false),
            (r#"{"exp":1,"x":0,"exp":2}"#, false),
            (r#"{"c3":1,"c4":1,"c3":2}"#, false),
            (r#"{"c58":1,"c\u0035\u0038":2}"#, false),
            (r#"{"c65":1,"c65":2}"#, false),
            (r#"{"x":1,"sub":1,"x":2}"#, false),
            (r#"{"iss":"a","sub":1,"su":1,"subx":1,"Sub":1}"#, true),
        ] {
            assert_eq!(claims(doc.as_bytes(), &req).is_ok(), ok, "{doc}");
        }
        let h = r#"{"alg":"HS256","kid":"a","typ":"t","cty":"c","crit":["x"],"x":1}"#;
        assert!(header(h.as_bytes()).is_ok());
        for dup in ["kid", "typ", "cty", "crit", "x"] {
            let doc = format!(r#"{{"alg":"HS256","{dup}":null,"y":1,"{dup}":null}}"#);
            assert!(header(doc.as_bytes()).is_err(), "{doc}");
        }
    }

    #[test]
    fn required_names_beyond_64() {
        let req: Vec<String> = (0..70).map(|i| format!("c{i}")).collect();
        let c = claims(br#"{"c3":1,"c66":1}"#, &req).unwrap();
        let present: Vec<usize> = (0..70).filter(|&i| c.has_required(i)).collect();
        assert_eq!(present, [3, 66]);
        assert!(!c.has_required(200));
    }

    #[test]
    fn leading_digits_runs_and_values() {
        for (w, want) in [
            (&b"12345678"[..], (8, 12_345_678)),
            (b"00000000", (8, 0)),
            (b"99999999", (8, 99_999_999)),
            (b"1700003,", (7, 1_700_003)),
            (b"0,\"iat\":", (1, 0)),
            (b"42}     ", (2, 42)),
            (b"x1234567", (0, 0)),
            (b"123/4567", (3, 123)),
            (b"123:4567", (3, 123)),
            (b"12\xfa45678", (2, 12)),
            (b"12\xff\xff\xff\xff\xff\xff", (2, 12)),
            (b"1234567", (0, 0)),
        ] {
            assert_eq!(leading_digits(w), want, "{:?}", String::from_utf8_lossy(w));
        }
    }

    proptest::proptest! {
        /// The string scanner's run ends where a byte-by-byte search says, for any bytes at
        /// any length (the eight-byte windows and the overlapping last one).
        #[test]
        fn plain_run_finds_the_first_special_byte(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            plain in proptest::collection::vec(0x20u8..0x7f, 0..40),
        ) {
            let naive = |s: &[u8]| s.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
            proptest::prop_assert_eq!(plain_run(&bytes), naive(&bytes));
            // Mostly printable input, so that runs are long and the special byte is late.
            let mut mixed = plain.clone();
            mixed.extend(&bytes);
            proptest::prop_assert_eq!(plain_run(&mixed), naive(&mixed));
        }

        /// Integers of every length and sign read as serde_json reads them, wherever they
        /// sit (the eight-byte steps meet the document's end at every offset).
        #[test]
        fn integers_read_as_serde_json_does(
            n in proptest::prelude::any::<i128>(),
            digits in 0u32..40,
            pad in 0usize..10,
        ) {
            let n = if digits < 39 { n % 10i128.pow(digits) } else { n };
            let text = format!("{{\"exp\":{n}{}}}", " ".repeat(pad));
            let c = claims(text.as_bytes(), &[]).unwrap();
            let want = match serde_json::from_str::<serde_json::Value>(&n.to_string()).unwrap() {
                serde_json::Value::Number(x) if x.is_i64() => Num::Int(x.as_i64().unwrap()),
                serde_json::Value::Number(x) if x.is_u64() => Num::BigInt,
                serde_json::Value::Number(x) => Num::Float(x.as_f64().unwrap()),
                other => panic!("{other}"),
            };
            proptest::prop_assert_eq!(c.exp, want);
        }

        /// Documents made of JSON's own characters (so that many parse, and many almost do):
        /// the borrowed readers accept exactly what the tree parser accepts.
        #[test]
        fn agrees_with_the_tree_parser_on_json_like_input(
            body in r#"[{}\[\]":, abcikstu0-9eE.+\-\\/]{0,80}"#,
        ) {
            agree(format!("{{{body}}}"));
            agree(format!("{{\"aud\":{body}}}"));
            agree(format!("{{\"crit\":[{body}]}}"));
            agree(&body);
        }

        /// Header-like documents built from the flat form's pieces and its near misses
        /// (other names, escapes, whitespace, duplicates, other types, extra bytes): where
        /// the flat reader answers, the general one gives the same fields; the verdict is
        /// the tree parser's either way.
        #[test]
        fn flat_header_is_the_general_reader_where_it_answers(
            members in proptest::collection::vec((0usize..9, 0usize..9), 0..5),
            sep in 0usize..4,
            tail in 0usize..4,
        ) {
            const NAMES: [&str; 9] = [
                "alg", "kid", "typ", "cty", "crit", "x5t", "al\\u0067", "ALG", "alg ",
            ];
            const VALUES: [&str; 9] = [
                "\"HS256\"", "\"\"", "\"k\"", "\"a\\\"b\"", "\"\\u00e9\"", "\"é€😀\"",
                "1", "[\"x\"]", "\"tab\there\"",
            ];
            const SEPS: [&str; 4] = [",", ",", " ,", ", "];
            const TAILS: [&str; 4] = ["}", "}", "} ", "}}"];
            let body: Vec<String> = members
                .iter()
                .map(|&(n, v)| format!("\"{}\":{}", NAMES[n], VALUES[v]))
                .collect();
            let doc = format!("{{{}{}", body.join(SEPS[sep]), TAILS[tail]);
            agree(&doc);
            if let Some(flat) = flat(&doc) {
                proptest::prop_assert_eq!(Ok(flat), scanned(&doc), "{}", doc);
            }
        }

        /// Valid registered claims with one byte changed.
        #[test]
        fn agrees_on_mutated_claims(at in 0usize..120, byte in proptest::prelude::any::<u8>()) {
            let doc = r#"{"iss":"https:\/\/i","aud":["a","\u0062"],"exp":1.5e3,"sub":"u","x":{"y":[1,{"z":null}]}}"#;
            let mut b = doc.as_bytes().to_vec();
            let i = at % b.len();
            b[i] = byte;
            agree(&b);
        }
    }
}
