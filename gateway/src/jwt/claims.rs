//! Registered-claim checks (RFC 7519 §4.1): exp, nbf, iat with leeway; iss; aud; required names.

use super::error::ClaimsError;
use serde_json::{Map, Value};

/// The NumericDates of a verified token, normalised to whole seconds. Fractions round in the
/// strict direction: `exp` down, `nbf`/`iat` up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Times {
    /// Expiry.
    pub exp: Option<i64>,
    /// Not before.
    pub nbf: Option<i64>,
    /// Issued at.
    pub iat: Option<i64>,
}

/// 2^63 as f64; the first float outside the i64 range.
const I64_END: f64 = 9_223_372_036_854_775_808.0;

fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
    round_up: bool,
) -> Result<Option<i64>, ClaimsError> {
    let Some(v) = claims.get(name) else {
        return Ok(None);
    };
    let Value::Number(n) = v else {
        return Err(ClaimsError::BadNumericDate(name));
    };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    if n.is_u64() {
        // Above i64::MAX.
        return Err(ClaimsError::BadNumericDate(name));
    }
    let f = n.as_f64().ok_or(ClaimsError::BadNumericDate(name))?;
    let r = if round_up { f.ceil() } else { f.floor() };
    if !r.is_finite() || !(-I64_END..I64_END).contains(&r) {
        return Err(ClaimsError::BadNumericDate(name));
    }
    // In range and integral, so the conversion is exact.
    Ok(Some(r as i64))
}

/// Reads and type-checks `exp`, `nbf` and `iat`.
pub fn times(claims: &Map<String, Value>) -> Result<Times, ClaimsError> {
    Ok(Times {
        exp: numeric_date(claims, "exp", false)?,
        nbf: numeric_date(claims, "nbf", true)?,
        iat: numeric_date(claims, "iat", true)?,
    })
}

/// Checks the time claims against `now` (Unix seconds). Also run on every cache hit.
pub fn check_times(t: &Times, now: i64, leeway: i64) -> Result<(), ClaimsError> {
    let (now_w, lee) = (i128::from(now), i128::from(leeway));
    if let Some(exp) = t.exp {
        // RFC 7519 §4.1.4: now must be before exp.
        if now_w >= i128::from(exp) + lee {
            return Err(ClaimsError::Expired { exp, now, leeway });
        }
    }
    for (claim, at) in [("nbf", t.nbf), ("iat", t.iat)] {
        if let Some(at) = at {
            if i128::from(at) > now_w + lee {
                return Err(ClaimsError::NotYetValid {
                    claim,
                    at,
                    now,
                    leeway,
                });
            }
        }
    }
    Ok(())
}

/// The claim policy of a verifier, compiled from its configuration.
#[derive(Debug, Clone, Default)]
pub struct ClaimsPolicy {
    /// Accepted issuers; empty means `iss` is not checked.
    pub issuers: Vec<String>,
    /// Accepted audiences; empty means `aud` is not checked.
    pub audiences: Vec<String>,
    /// Whether `exp` must be present.
    pub require_exp: bool,
    /// Leeway in seconds for exp, nbf and iat.
    pub leeway: i64,
    /// Claim names that must be present.
    pub required: Vec<String>,
}

impl ClaimsPolicy {
    /// Runs every claim check in a fixed order (so the reason code is deterministic):
    /// NumericDate types, exp presence, times, iss, aud, required claims.
    pub fn check(&self, claims: &Map<String, Value>, now: i64) -> Result<Times, ClaimsError> {
        let t = times(claims)?;
        if self.require_exp && t.exp.is_none() {
            return Err(ClaimsError::Missing("exp".into()));
        }
        check_times(&t, now, self.leeway)?;
        if !self.issuers.is_empty() {
            match claims.get("iss") {
                None => return Err(ClaimsError::Missing("iss".into())),
                Some(Value::String(iss)) => {
                    if !self.issuers.iter().any(|i| i == iss) {
                        return Err(ClaimsError::BadIssuer);
                    }
                }
                Some(_) => return Err(ClaimsError::BadType("iss")),
            }
        }
        if !self.audiences.is_empty() {
            let ok = match claims.get("aud") {
                None => return Err(ClaimsError::Missing("aud".into())),
                Some(Value::String(a)) => self.audiences.iter().any(|x| x == a),
                Some(Value::Array(items)) => {
                    let mut found = false;
                    for item in items {
                        let Value::String(a) = item else {
                            return Err(ClaimsError::BadType("aud"));
                        };
                        found |= self.audiences.iter().any(|x| x == a);
                    }
                    found
                }
                Some(_) => return Err(ClaimsError::BadType("aud")),
            };
            if !ok {
                return Err(ClaimsError::BadAudience);
            }
        }
        for name in &self.required {
            if !claims.contains_key(name) {
                return Err(ClaimsError::Missing(name.clone()));
            }
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn numeric_dates() {
        let t = times(&obj(json!({"exp": 10.9, "nbf": 1.1, "iat": -5}))).unwrap();
        assert_eq!(t.exp, Some(10));
        assert_eq!(t.nbf, Some(2));
        assert_eq!(t.iat, Some(-5));
        for bad in [
            json!({"exp": "10"}),
            json!({"exp": 9_223_372_036_854_775_808u64}),
            json!({"exp": 1e19}),
            json!({"nbf": -1e19}),
            json!({"iat": null}),
            json!({"exp": true}),
        ] {
            assert!(times(&obj(bad)).is_err());
        }
        assert!(times(&obj(json!({"exp": i64::MAX, "nbf": i64::MIN}))).is_ok());
    }

    #[test]
    fn time_boundaries() {
        let t = Times {
            exp: Some(100),
            nbf: Some(50),
            iat: None,
        };
        assert!(check_times(&t, 99, 0).is_ok());
        assert!(check_times(&t, 100, 0).is_err());
        assert!(check_times(&t, 129, 30).is_ok());
        assert!(check_times(&t, 49, 0).is_err());
        assert!(check_times(&t, 20, 30).is_ok());
        assert!(check_times(&t, 19, 30).is_err());
        let extreme = Times {
            exp: Some(i64::MAX),
            nbf: Some(i64::MIN),
            iat: Some(i64::MIN),
        };
        assert!(check_times(&extreme, i64::MAX, 0).is_err());
        assert!(check_times(&extreme, 0, i64::MAX).is_ok());
    }

    #[test]
    fn policy() {
        let p = ClaimsPolicy {
            issuers: vec!["https://i".into()],
            audiences: vec!["api".into()],
            require_exp: true,
            leeway: 0,
            required: vec!["sub".into()],
        };
        let ok = obj(json!({"iss":"https://i","aud":["x","api"],"exp":10,"sub":"u"}));
        assert!(p.check(&ok, 5).is_ok());
        let mut m = ok.clone();
        m.insert("aud".into(), json!("x"));
        assert_eq!(p.check(&m, 5), Err(ClaimsError::BadAudience));
        m.insert("aud".into(), json!([]));
        assert_eq!(p.check(&m, 5), Err(ClaimsError::BadAudience));
        let mut m = ok.clone();
        m.insert("iss".into(), json!("https://I"));
        assert_eq!(p.check(&m, 5), Err(ClaimsError::BadIssuer));
        let mut m = ok.clone();
        m.remove("sub");
        assert_eq!(p.check(&m, 5), Err(ClaimsError::Missing("sub".into())));
        let mut m = ok;
        m.remove("exp");
        assert_eq!(p.check(&m, 5), Err(ClaimsError::Missing("exp".into())));
    }
}
