//! Registered-claim checks (RFC 7519 §4.1): exp, nbf, iat with leeway; iss; aud; required names.

use super::error::ClaimsError;
use super::scan::{Aud, Num, RawClaims, Str};

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

fn numeric_date(n: Num, name: &'static str, round_up: bool) -> Result<Option<i64>, ClaimsError> {
    let f = match n {
        Num::Absent => return Ok(None),
        Num::Int(i) => return Ok(Some(i)),
        // Above i64::MAX, or not a number.
        Num::BigInt | Num::Other => return Err(ClaimsError::BadNumericDate(name)),
        Num::Float(f) => f,
    };
    let r = if round_up { f.ceil() } else { f.floor() };
    if !r.is_finite() || !(-I64_END..I64_END).contains(&r) {
        return Err(ClaimsError::BadNumericDate(name));
    }
    // In range and integral, so the conversion is exact.
    Ok(Some(r as i64))
}

/// Reads and type-checks `exp`, `nbf` and `iat`.
pub fn times(claims: &RawClaims<'_>) -> Result<Times, ClaimsError> {
    Ok(Times {
        exp: numeric_date(claims.exp, "exp", false)?,
        nbf: numeric_date(claims.nbf, "nbf", true)?,
        iat: numeric_date(claims.iat, "iat", true)?,
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
    /// NumericDate types, exp presence, times, iss, aud, required claims. `claims` must have
    /// been read with this policy's `required` names ([`super::scan::claims_into`]).
    pub fn check(&self, claims: &RawClaims<'_>, now: i64) -> Result<Times, ClaimsError> {
        let t = times(claims)?;
        if self.require_exp && t.exp.is_none() {
            return Err(ClaimsError::Missing("exp".into()));
        }
        check_times(&t, now, self.leeway)?;
        if !self.issuers.is_empty() {
            match &claims.iss {
                Str::Absent => return Err(ClaimsError::Missing("iss".into())),
                Str::Text(iss) => {
                    if !self.issuers.iter().any(|i| i == iss) {
                        return Err(ClaimsError::BadIssuer);
                    }
                }
                Str::Other => return Err(ClaimsError::BadType("iss")),
            }
        }
        if !self.audiences.is_empty() {
            let accepted = |a: &str| self.audiences.iter().any(|x| x == a);
            let ok = match &claims.aud {
                Aud::Absent => return Err(ClaimsError::Missing("aud".into())),
                Aud::One(a) => accepted(a),
                Aud::Many(items) => items.any(accepted),
                Aud::BadType => return Err(ClaimsError::BadType("aud")),
            };
            if !ok {
                return Err(ClaimsError::BadAudience);
            }
        }
        for (i, name) in self.required.iter().enumerate() {
            if !claims.has_required(i) {
                return Err(ClaimsError::Missing(name.clone()));
            }
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::super::scan;
    use super::*;
    use serde_json::{json, Value};

    /// Reads `v` as the verifier does, then runs `f` on it.
    fn with<R>(v: &Value, required: &[String], f: impl FnOnce(&RawClaims<'_>) -> R) -> R {
        let text = v.to_string();
        f(&scan::claims(&text, required).unwrap())
    }

    #[test]
    fn numeric_dates() {
        let t = with(&json!({"exp": 10.9, "nbf": 1.1, "iat": -5}), &[], times).unwrap();
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
            assert!(with(&bad, &[], times).is_err(), "{bad}");
        }
        let extreme = json!({"exp": i64::MAX, "nbf": i64::MIN});
        assert!(with(&extreme, &[], times).is_ok());
        // Integers beyond u64 and exponents arrive as floats: in range they round, strictly.
        let t = with(
            &serde_json::from_str(r#"{"exp":1e3,"nbf":0.5e1,"iat":-0.5}"#).unwrap(),
            &[],
            times,
        );
        assert_eq!(
            t,
            Ok(Times {
                exp: Some(1000),
                nbf: Some(5),
                iat: Some(0)
            })
        );
        let huge = r#"{"exp":123456789012345678901234567890}"#;
        let c = scan::claims(huge, &[]).unwrap();
        assert_eq!(times(&c), Err(ClaimsError::BadNumericDate("exp")));
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
        let req = &p.required;
        let check = |v: Value| with(&v, req, |c| p.check(c, 5));
        let ok = json!({"iss":"https://i","aud":["x","api"],"exp":10,"sub":"u"});
        assert!(check(ok.clone()).is_ok());
        let set = |name: &str, v: Option<Value>| {
            let mut m = ok.clone();
            if let Some(obj) = m.as_object_mut() {
                match v {
                    Some(v) => obj.insert(name.into(), v),
                    None => obj.remove(name),
                };
            }
            m
        };
        let bad_aud = Err(ClaimsError::BadAudience);
        assert_eq!(check(set("aud", Some(json!("x")))), bad_aud);
        assert_eq!(check(set("aud", Some(json!([])))), bad_aud);
        assert!(check(set("aud", Some(json!("api")))).is_ok());
        assert!(check(set("aud", Some(json!(["a", "b", "c", "d", "e", "api"])))).is_ok());
        let bad_type = Err(ClaimsError::BadType("aud"));
        assert_eq!(check(set("aud", Some(json!(["api", 1])))), bad_type);
        assert_eq!(check(set("aud", Some(json!({"api": 1})))), bad_type);
        assert_eq!(check(set("aud", Some(json!(null)))), bad_type);
        let missing_aud = Err(ClaimsError::Missing("aud".into()));
        assert_eq!(check(set("aud", None)), missing_aud);
        assert_eq!(
            check(set("iss", Some(json!("https://I")))),
            Err(ClaimsError::BadIssuer)
        );
        assert_eq!(
            check(set("iss", Some(json!(["https://i"])))),
            Err(ClaimsError::BadType("iss"))
        );
        assert_eq!(
            check(set("iss", None)),
            Err(ClaimsError::Missing("iss".into()))
        );
        assert_eq!(
            check(set("sub", None)),
            Err(ClaimsError::Missing("sub".into()))
        );
        assert!(check(set("sub", Some(json!(null)))).is_ok());
        assert_eq!(
            check(set("exp", None)),
            Err(ClaimsError::Missing("exp".into()))
        );
        // Escaped strings compare by their value.
        let escaped = r#"{"iss":"https:\/\/i","aud":"\u0061pi","exp":10,"sub":"u"}"#;
        let c = scan::claims(escaped, req).unwrap();
        assert!(p.check(&c, 5).is_ok());
    }
}
