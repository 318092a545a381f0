//! Strict JSON for token headers, payloads and JWK documents.
//!
//! serde_json silently keeps the last of duplicate member names; two parsers that disagree on
//! which duplicate wins is a classic signature-bypass, so we reject duplicates at every depth.
//! Nesting is bounded here (and serde_json's own recursion limit stays on), so hostile input
//! cannot exhaust the stack.

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

/// Deepest nesting of arrays/objects we accept. Real claims sets nest two or three levels.
pub const MAX_DEPTH: usize = 32;

/// Why a JSON document was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JsonError {
    /// Not JSON at all, or JSON followed by trailing data.
    #[error("invalid JSON: {0}")]
    Syntax(String),
    /// Valid JSON, but not an object at the top level.
    #[error("not a JSON object")]
    NotObject,
}

struct Strict {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(A::Error::custom("nesting too deep"));
        }
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict { depth })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(A::Error::custom("nesting too deep"));
        }
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(A::Error::custom(format_args!(
                    "duplicate member name {k:?}"
                )));
            }
            let v = map.next_value_seed(Strict { depth })?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// Parses any JSON value strictly (no duplicates, bounded depth, no trailing data).
pub fn parse_value(bytes: &[u8]) -> Result<Value, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = Strict { depth: 0 }
        .deserialize(&mut de)
        .map_err(|e| JsonError::Syntax(e.to_string()))?;
    de.end().map_err(|e| JsonError::Syntax(e.to_string()))?;
    Ok(v)
}

/// Parses a JSON object strictly.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, JsonError> {
    match parse_value(bytes)? {
        Value::Object(m) => Ok(m),
        _ => Err(JsonError::NotObject),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_rejected_at_any_depth() {
        assert!(parse_object(br#"{"a":1,"a":2}"#).is_err());
        assert!(parse_object(br#"{"a":1,"\u0061":2}"#).is_err());
        assert!(parse_object(br#"{"x":{"b":[{"c":1,"c":1}]}}"#).is_err());
        assert!(parse_object(br#"{"x":{"b":[{"c":1,"d":1}]}}"#).is_ok());
    }

    #[test]
    fn non_objects_and_trailing_data() {
        assert_eq!(parse_object(b"[1]"), Err(JsonError::NotObject));
        assert_eq!(parse_object(b"\"foo\""), Err(JsonError::NotObject));
        assert!(parse_object(b"{} x").is_err());
        assert!(parse_object(b"foo").is_err());
        assert!(parse_object(b"{\"a\":\"\\ud800\"}").is_err());
        assert!(parse_object(b"{\"a\":1e999}").is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000);
        assert!(parse_value(deep.as_bytes()).is_err());
        let mut ok = "[".repeat(MAX_DEPTH - 1);
        ok.push_str(&"]".repeat(MAX_DEPTH - 1));
        let doc = format!("{{\"a\":{ok}}}");
        assert!(parse_object(doc.as_bytes()).is_ok());
        let mut bad = "[".repeat(MAX_DEPTH);
        bad.push_str(&"]".repeat(MAX_DEPTH));
        let doc = format!("{{\"a\":{bad}}}");
        assert!(parse_object(doc.as_bytes()).is_err());
    }
}
