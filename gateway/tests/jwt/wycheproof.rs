//! The converted Wycheproof JWS vectors (`shared/testdata/wycheproof-jws/`), every case run
//! through the real binary: none is accepted, none crashes, exit codes as the README says.

use super::support::gateway;
use serde_json::Value;
use std::path::PathBuf;

fn vectors_dir() -> Option<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // shared/ lives beside the repository clone (workspace root = manifest/..).
    let d = manifest.join("../../shared/testdata/wycheproof-jws");
    d.join("cases.jsonl").is_file().then_some(d)
}

#[test]
fn wycheproof_cases_are_all_rejected() {
    let Some(dir) = vectors_dir() else {
        panic!(
            "the Wycheproof vectors are not beside the repository \
             (../shared/testdata/wycheproof-jws/cases.jsonl): check out shared/ next to the clone"
        );
    };
    let text = std::fs::read_to_string(dir.join("cases.jsonl")).unwrap();
    let mut count = 0;
    let mut failures = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let case: Value = serde_json::from_str(line).unwrap();
        let name = case["name"].as_str().unwrap();
        let token = case["token"].as_str().unwrap();
        let mut args: Vec<String> = vec!["token".into(), "verify".into(), "--json".into()];
        let extra: Vec<&str> = case["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let mut i = 0;
        while i < extra.len() {
            let a = extra[i];
            args.push(a.into());
            if matches!(a, "--jwk" | "--jwks" | "--key" | "--secret-file") {
                i += 1;
                args.push(dir.join(extra[i]).display().to_string());
            }
            i += 1;
        }
        args.push(token.into());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = gateway(&argv, None);
        count += 1;
        let expect = case["expect"].as_str().unwrap();
        let ok_code = match expect {
            "invalid" => code == 1,
            _ => code == 1 || code == 2,
        };
        if !ok_code {
            failures.push(format!(
                "{name}: exit {code} (expected {expect}): {out} {err}"
            ));
            continue;
        }
        if code == 1 {
            let v: Value = match serde_json::from_str(out.trim()) {
                Ok(v) => v,
                Err(e) => {
                    failures.push(format!("{name}: bad JSON output {e}: {out}"));
                    continue;
                }
            };
            if v["valid"] != false {
                failures.push(format!("{name}: reported valid"));
            }
            if let Some(want) = case.get("reason").and_then(Value::as_str) {
                if v["reason"].as_str() != Some(want) {
                    failures.push(format!("{name}: reason {} != {want}", v["reason"]));
                }
            }
        }
    }
    assert!(count >= 400, "only {count} cases");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
