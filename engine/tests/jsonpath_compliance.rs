//! The JSONPath Compliance Test Suite (RFC 9535), all 703 cases, against
//! `sluice::expr::jsonpath`, which the `select` step uses.

use serde_json::Value;
use sluice::expr::jsonpath::Query;

#[test]
fn jsonpath_compliance_suite_passes_every_case() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/jsonpath-cts.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let suite: Value = serde_json::from_str(&text).expect("suite is JSON");
    let tests = suite["tests"].as_array().expect("tests array");
    assert_eq!(tests.len(), 703, "the suite has 703 cases");
    let mut failures = Vec::new();
    for case in tests {
        let name = case["name"].as_str().unwrap_or("?");
        let selector = case["selector"].as_str().expect("selector");
        let parsed = Query::parse(selector);
        if case["invalid_selector"].as_bool() == Some(true) {
            if parsed.is_ok() {
                failures.push(format!("{name}: `{selector}` should be rejected"));
            }
            continue;
        }
        let query = match parsed {
            Ok(q) => q,
            Err(e) => {
                failures.push(format!("{name}: `{selector}` rejected: {e}"));
                continue;
            }
        };
        let got = Value::Array(query.select(&case["document"]));
        let ok = match (&case.get("result"), &case.get("results")) {
            (Some(expected), _) => got == **expected,
            (None, Some(Value::Array(options))) => options.contains(&got),
            _ => false,
        };
        if !ok {
            failures.push(format!("{name}: `{selector}` gave {got}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 703 cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
