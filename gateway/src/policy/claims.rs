//! Claim rules: `[[route]] require = { tenant = "acme", roles = ["admin", "ops"] }`.
//!
//! Every rule must hold. A rule's value is one string or a list (any of them). A string
//! claim must equal a value; an array claim must contain one as an element; any other
//! claim (missing, a number, an object, an array of non-strings) fails. Exact,
//! case-sensitive comparisons, never substrings: `admin` does not match `"administrators"`
//! nor a space-separated `"admin ops"` string.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A rule's accepted value(s).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ClaimValues {
    /// Exactly this value.
    One(String),
    /// Any of these.
    Any(Vec<String>),
}

impl ClaimValues {
    fn accepts(&self, v: &str) -> bool {
        match self {
            ClaimValues::One(s) => s == v,
            ClaimValues::Any(list) => list.iter().any(|s| s == v),
        }
    }
}

/// A route's compiled rules.
#[derive(Debug, Clone, Default)]
pub struct ClaimRules {
    rules: Vec<(String, ClaimValues)>,
}

impl ClaimRules {
    /// From the route's `require` table.
    pub fn new(require: &BTreeMap<String, ClaimValues>) -> Self {
        Self {
            rules: require
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `claims` satisfy every rule.
    pub fn satisfied(&self, claims: &Map<String, Value>) -> bool {
        self.rules
            .iter()
            .all(|(name, want)| match claims.get(name) {
                Some(Value::String(s)) => want.accepts(s),
                Some(Value::Array(items)) => items
                    .iter()
                    .any(|i| i.as_str().is_some_and(|s| want.accepts(s))),
                _ => false,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(toml_text: &str) -> ClaimRules {
        #[derive(Deserialize)]
        struct R {
            require: BTreeMap<String, ClaimValues>,
        }
        let r: R = toml::from_str(toml_text).unwrap();
        ClaimRules::new(&r.require)
    }

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn string_array_and_list_rules() {
        let r = rules("require = { tenant = \"acme\", roles = [\"admin\", \"ops\"] }");
        assert!(r.satisfied(&claims(json!({"tenant": "acme", "roles": "admin"}))));
        assert!(r.satisfied(&claims(json!({"tenant": "acme", "roles": ["dev", "ops"]}))));
        for bad in [
            json!({"roles": "admin"}),
            json!({"tenant": "ACME", "roles": "admin"}),
            json!({"tenant": "acme-evil", "roles": "admin"}),
            json!({"tenant": ["acme"], "roles": "administrator"}),
            json!({"tenant": "acme", "roles": "admin ops"}),
            json!({"tenant": "acme", "roles": ["dev"]}),
            json!({"tenant": "acme", "roles": [["admin"]]}),
            json!({"tenant": "acme", "roles": {"admin": true}}),
            json!({"tenant": "acme", "roles": null}),
            json!({"tenant": "acme"}),
        ] {
            assert!(!r.satisfied(&claims(bad.clone())), "{bad}");
        }
        // An array claim containing the required string passes a single-value rule.
        assert!(r.satisfied(&claims(json!({"tenant": ["x", "acme"], "roles": "ops"}))));
        assert!(ClaimRules::default().satisfied(&Map::new()));
    }

    #[test]
    fn only_strings_are_rule_values() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct R {
            require: BTreeMap<String, ClaimValues>,
        }
        assert!(toml::from_str::<R>("require = { n = 1 }").is_err());
        assert!(toml::from_str::<R>("require = { n = [1] }").is_err());
    }
}
