//! Typed flows (issue 15): a typo in a field is an error before the run
//! starts, at the line and column inside the expression; what validation
//! cannot know fails the run with the path and its keys, never `null`.

mod common;

use std::path::Path;
use std::process::Command;

use common::{compile, engine, run, sqlite_store};
use serde_json::json;
use sluice::flow::{self, Catalog, Diagnostic};
use sluice::store::{RunFilter, RunStatus};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn problems(yaml: &str) -> Vec<Diagnostic> {
    match flow::compile("t.yaml", yaml, &Catalog::default()) {
        Ok(_) => vec![],
        Err(e) => e.diagnostics,
    }
}

/// The text at a diagnostic's line and column.
fn text_at<'a>(yaml: &'a str, d: &Diagnostic) -> &'a str {
    let line = yaml.lines().nth(d.line.expect("located") - 1).unwrap();
    let start = line
        .char_indices()
        .nth(d.column.unwrap() - 1)
        .map_or(line.len(), |(b, _)| b);
    &line[start..]
}

/// The typos of the issue, one per step; each must be found at its place.
const TYPOS: &str = r#"apiVersion: sluice/v1
id: typos
steps:
  - id: approved
    read: { connection: sandbox, entity: purchase_order, filter: { status: approved } }
  - id: alert
    needs: [approved]
    for_each: "${{ steps.approved.output.records }}"
    set: { po: "${{ item.number }}", total: "${{ item.totl }}" }
  - id: tag
    needs: [approved]
    for_each: "${{ steps.approved.output.records }}"
    write:
      connection: sandbox
      entity: purchase_order
      op: update
      id: "${{ item.remote_id }}"
      data: { buyer: "${{ item.byer }}" }
  - id: sel
    needs: [approved]
    select:
      from: "${{ steps.approved.output.record }}"
  - id: sel2
    needs: [approved]
    select:
      from: "${{ steps.approved.output.records }}"
      where: "$[?@.totl > 10000]"
  - id: count
    needs: [approved]
    set: "${{ steps.approved.output.records | lenght }}"
"#;

#[test]
fn every_typo_is_reported_inside_the_expression_at_its_line_and_column() {
    let d = problems(TYPOS);
    let expect = [
        (9, "unknown-field", "totl }}", "did you mean `total`?"),
        (18, "unknown-field", "byer }}", "did you mean `buyer`?"),
        (22, "unknown-field", "record }}", "did you mean `records`?"),
        (
            27,
            "unknown-field",
            "totl > 10000",
            "did you mean `@.total`?",
        ),
        (30, "unknown-filter", "lenght }}", "did you mean `length`?"),
    ];
    assert_eq!(d.len(), expect.len(), "{d:#?}");
    for (diag, (line, code, text, hint)) in d.iter().zip(expect) {
        assert_eq!(diag.line, Some(line), "{diag:?}");
        assert_eq!(diag.code, code, "{diag:?}");
        assert!(
            text_at(TYPOS, diag).starts_with(text),
            "{diag:?} at `{}`",
            text_at(TYPOS, diag)
        );
        assert!(
            diag.hint.as_deref().unwrap_or("").contains(hint),
            "{diag:?}"
        );
    }
}

#[test]
fn nested_values_are_reported_on_their_own_line() {
    let yaml = "apiVersion: sluice/v1\nid: n\nsteps:\n  - id: s\n    set:\n      a: 1\n      b:\n        d: \"${{ nope }}\"\n";
    let d = problems(yaml);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].code, "unknown-variable");
    assert_eq!(d[0].line, Some(8), "{d:?}");
    assert!(text_at(yaml, &d[0]).starts_with("\"${{ nope }}\""));
}

#[test]
fn type_errors_are_caught_before_the_run() {
    let yaml = r#"apiVersion: sluice/v1
id: types
inputs:
  limit: { type: integer, default: 3 }
steps:
  - id: approved
    read: { connection: sandbox, entity: purchase_order }
  - id: a
    needs: [approved]
    for_each: "${{ steps.approved.output.count }}"
    set: 1
  - id: b
    needs: [approved]
    set: "${{ steps.approved.output.records[0].number * inputs.limit }}"
  - id: c
    needs: [approved]
    if: "${{ steps.approved.output.records[0].vendor_id > 5 }}"
    set: 1
  - id: d
    needs: [approved]
    write:
      connection: sandbox
      entity: purchase_order
      op: update
      id: x
      data: { total: "${{ steps.approved.output.records[0].number }}" }
  - id: e
    needs: [approved]
    set: "${{ steps.approved.output.records.total }}"
"#;
    let d = problems(yaml);
    let codes: Vec<(usize, &str)> = d.iter().map(|d| (d.line.unwrap(), d.code)).collect();
    assert_eq!(
        codes,
        vec![
            (10, "wrong-type"),
            (14, "wrong-type"),
            (17, "wrong-type"),
            (26, "wrong-type"),
            (29, "wrong-type"),
        ],
        "{d:#?}"
    );
    assert!(
        d[0].message
            .contains("`for_each` needs a list, but this gives an integer")
    );
    assert!(
        d[1].message.contains(
            "`*` needs numbers, but `steps.approved.output.records[0].number` is a string"
        ),
        "{}",
        d[1].message
    );
    assert!(d[2].message.contains("compares a string with a number"));
    assert!(
        d[3].message
            .contains("`total` of purchase_order is a number, but this gives a string")
    );
    assert!(
        d[4].hint
            .as_deref()
            .unwrap()
            .contains("map(attribute='total')")
    );
}

#[test]
fn unknown_tests_and_functions_are_errors_and_optional_reads_are_not() {
    let d = problems(
        r#"apiVersion: sluice/v1
id: f
steps:
  - id: r
    read: { connection: sandbox, entity: vendor }
  - id: s
    needs: [r]
    for_each: "${{ steps.r.output.records }}"
    set:
      a: "${{ item.name is strng }}"
      b: "${{ uuidd() }}"
      c: "${{ item.nickname | default(item.name) }}"
      d: "${{ item.nickname if item.nickname is defined else 'none' }}"
      e: "${{ now() | add_duration('1d') }}"
"#,
    );
    let codes: Vec<&str> = d.iter().map(|d| d.code).collect();
    assert_eq!(codes, vec!["unknown-test", "unknown-variable"], "{d:#?}");
    assert_eq!(d[1].message, "unknown variable or function `uuidd`");
    assert_eq!(
        d[1].hint.as_deref(),
        Some("did you mean the function `uuid()`?")
    );
}

#[test]
fn a_flow_of_500_steps_with_deep_expressions_validates() {
    let mut yaml = String::from(
        "apiVersion: sluice/v1\nid: big\ninputs:\n  n: { type: number, default: 1 }\nsteps:\n  - id: s0\n    set: { v: 1 }\n",
    );
    let deep = format!("{}inputs.n{}", "(".repeat(40), " + 1)".repeat(40));
    for i in 1..500 {
        yaml.push_str(&format!(
            "  - id: s{i}\n    needs: [s{}]\n    set: {{ v: \"${{{{ steps.s{}.output.v + {deep} }}}}\" }}\n",
            i - 1,
            i - 1
        ));
    }
    let t = std::time::Instant::now();
    let compiled = flow::compile("big.yaml", &yaml, &Catalog::default());
    assert!(compiled.is_ok(), "{}", compiled.err().unwrap());
    eprintln!("500 steps validated in {:?}", t.elapsed());
}

#[tokio::test]
async fn what_validation_cannot_know_fails_the_run_naming_the_path() {
    let (store, _dir) = sqlite_store().await;
    let e = engine(store, vec![], vec![("TOKEN", "t0ken-value")]);
    // `object` inputs have no declared fields: the typo surfaces at run time,
    // in embedded text, in `if`, and in `for_each`, never as `null`.
    for (expr_yaml, needle) in [
        (
            r#"set: "PO ${{ inputs.po.numbr }}""#,
            "`inputs.po.numbr` is not there",
        ),
        (
            r#"{ if: "${{ inputs.po.totl > 1 }}", set: 1 }"#,
            "did you mean `total`?",
        ),
        (
            r#"{ for_each: "${{ inputs.po.line }}", set: 1 }"#,
            "did you mean `lines`?",
        ),
        (
            r#"set: "${{ inputs.po.lines[5].qty }}""#,
            "index 5 is out of range",
        ),
    ] {
        let step = if expr_yaml.starts_with('{') {
            format!("  - {{ id: a, {} }}", &expr_yaml[1..expr_yaml.len() - 1])
        } else {
            format!("  - {{ id: a, {expr_yaml} }}")
        };
        let yaml = format!(
            "apiVersion: sluice/v1\nid: strict\ninputs:\n  po: {{ type: object }}\nsteps:\n{step}\n"
        );
        let out = run(
            &e,
            &yaml,
            json!({"po": {"number": "PO-1", "total": 5, "lines": [{"qty": 1}]}}),
        )
        .await;
        assert_eq!(out.status, RunStatus::Failed, "{yaml}");
        let msg = out.error.unwrap()["message"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{needle}: {msg}");
    }
    // A secret this process does not hold is known before the run: the
    // engine's catalog carries its secrets.
    let err = flow::compile(
        "s.yaml",
        "apiVersion: sluice/v1\nid: s\nsteps:\n  - { id: a, plugin: { name: p, config: { key: \"${{ secrets.API_KEY }}\" } } }\n",
        &e.catalog(),
    )
    .unwrap_err();
    assert_eq!(err.diagnostics[0].code, "unknown-secret");
    assert_eq!(err.diagnostics[0].message, "secret `API_KEY` is not set");
    assert!(
        err.diagnostics[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("SLUICE_SECRET_API_KEY")
    );
    // Optional reads are explicit and work.
    let out = run(
        &e,
        r#"apiVersion: sluice/v1
id: optional
inputs:
  po: { type: object }
steps:
  - id: a
    set:
      discount: "${{ inputs.po.discount | default(0) }}"
      has: "${{ inputs.po.discount is defined }}"
"#,
        json!({"po": {"number": "PO-1"}}),
    )
    .await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    assert_eq!(out.output.unwrap(), json!({"discount": 0, "has": false}));
}

#[tokio::test]
async fn now_is_fixed_for_the_whole_run() {
    let (store, _dir) = sqlite_store().await;
    let e = engine(store, vec![], vec![]);
    let flow = compile(
        &e,
        r#"apiVersion: sluice/v1
id: clock
steps:
  - { id: a, set: "${{ now() }}" }
  - { id: w, needs: [a], wait: { duration: 20ms } }
  - { id: b, needs: [w], set: "${{ now() }}" }
output: { a: "${{ steps.a.output }}", b: "${{ steps.b.output }}" }
"#,
    );
    let out = e
        .run(flow, &Default::default(), json!({"type": "test"}), None)
        .await
        .unwrap();
    let o = out.output.unwrap();
    assert_eq!(o["a"], o["b"]);
    assert!(o["a"].as_str().unwrap().ends_with('Z'), "{o}");
}

#[test]
fn the_typo_flow_is_refused_by_validate_and_run_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typos.yaml");
    std::fs::write(&file, TYPOS).unwrap();
    let db = format!("sqlite://{}", dir.path().join("s.db").display());
    let sluice = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("SLUICE_DB", &db)
            .env("NO_COLOR", "1")
            .env_remove("SLUICE_LOG")
            .output()
            .unwrap()
    };
    let o = sluice(&["validate", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        err.contains(
            "typos.yaml:9:55: error[unknown-field]: `item` (purchase_order) has no field `totl`"
        ),
        "{err}"
    );
    // Each problem is said once, and no colour codes reach a pipe.
    assert_eq!(
        err.matches("`item` (purchase_order) has no field `totl`")
            .count(),
        1,
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "{err}");

    let o = sluice(&["run", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let runs = rt.block_on(async {
        let store = sluice::store::Store::connect(&db).await.unwrap();
        store.list_runs(&RunFilter::default()).await.unwrap()
    });
    assert!(runs.is_empty(), "no run starts: {runs:?}");
}

#[test]
fn shipped_flows_validate_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    for dir in [
        "flows",
        "examples/crash-resume",
        "examples/webhook-receiver",
    ] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = entry.unwrap().path();
            if flow::is_flow_file(&p) {
                flow::compile_file(&p, &Catalog::default()).unwrap_or_else(|e| panic!("{e}"));
                checked += 1;
            }
        }
    }
    // The README's flow example too.
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for block in readme.split("```yaml\n").skip(1) {
        let yaml = block.split("```").next().unwrap();
        if yaml.contains("apiVersion: sluice/v1") && yaml.contains("steps:") {
            let mut catalog = Catalog::default();
            catalog.connections.push("sap-prod".into());
            if let Err(e) = flow::compile("README.md", yaml, &catalog) {
                panic!("{e}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 6, "checked {checked}");
}

#[test]
fn diagnostics_use_the_authors_words_and_come_in_one_pass() {
    let d = problems("apiVersion: sluice/v1\nid: a\nid: b\nsteps:\n  - { id: a, set: 1 }\n");
    assert_eq!(
        d[0].message,
        "invalid YAML: duplicate key `id`: each key may appear once in a mapping"
    );
    assert_eq!((d[0].line, d[0].column), (Some(3), Some(1)));

    let d = problems("apiVersion: sluice/v1\nid: a\nsteps:\n\t- { id: a, set: 1 }\n");
    assert!(
        d[0].message.contains("a tab is used for indentation"),
        "{d:?}"
    );
    assert_eq!((d[0].line, d[0].column), (Some(4), Some(1)));

    let d = problems(
        "apiVersion: sluice/v1\nid: a\ntriggers:\n  - schedule: \"* * *\"\n  - schedule: \"99 * * * *\"\nsteps:\n  - { id: a, set: 1 }\n",
    );
    let messages: Vec<&str> = d.iter().map(|d| d.message.as_str()).collect();
    assert!(
        messages[0].ends_with(
            "it has 3 field(s); write 5 (minute hour day month weekday) or 6 (seconds first)"
        ),
        "{messages:?}"
    );
    assert!(
        messages[1].ends_with("minute `99` is out of range 0-59"),
        "{messages:?}"
    );
    for m in &messages {
        assert!(
            !m.contains("Component error") && !m.contains("Pattern must"),
            "{m}"
        );
    }

    // A wrong type, an unknown value and an unknown key no longer hide the
    // problems of meaning: all come at once.
    let d = problems(
        r#"apiVersion: sluice/v1
id: multi
steps:
  - id: a
    set: { x: "${{ inputs.nope }}" }
    retry: { max_attempts: "three" }
  - id: b
    needs: [a, ghost]
    set: 1
  - id: c
    on_error: ignore
    set: 2
"#,
    );
    let codes: Vec<&str> = d.iter().map(|d| d.code).collect();
    assert_eq!(
        codes,
        vec![
            "unknown-input",
            "wrong-type",
            "unknown-step",
            "unknown-value"
        ],
        "{d:#?}"
    );
}

#[test]
fn webhook_trigger_secrets_are_checked_for_form() {
    let yaml = |secret: &str| {
        format!(
            "apiVersion: sluice/v1\nid: h\ntriggers:\n  - webhook: {{ path: po, secret: \"{secret}\" }}\nsteps:\n  - {{ id: a, set: 1 }}\n"
        )
    };
    let d = problems(&yaml("hunter2"));
    assert_eq!(d[0].code, "invalid-webhook-secret", "{d:?}");
    assert!(d[0].message.contains("must start with `whsec_`"), "{d:?}");
    assert_eq!((d[0].line, d[0].column), (Some(4), Some(34)));
    let d = problems(&yaml("whsec_c2hvcnQ="));
    assert!(
        d[0].message.contains("the key is 5 bytes; use 24 to 64"),
        "{d:?}"
    );
    assert!(problems(&yaml("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).is_empty());
    // A secret named by reference is checked where this process holds it.
    let catalog = Catalog {
        secrets: Some(sluice::expr::secrets::Secrets::from_pairs([(
            "HOOK".to_string(),
            "not-a-secret".to_string(),
        )])),
        ..Catalog::default()
    };
    let err = flow::compile("h.yaml", &yaml("${{ secrets.HOOK }}"), &catalog).unwrap_err();
    assert!(
        err.diagnostics[0]
            .message
            .starts_with("the secret `HOOK` is not a Standard Webhooks secret"),
        "{:?}",
        err.diagnostics
    );
    // `sluice validate` does not know the secrets of the server: no error.
    assert!(problems(&yaml("${{ secrets.HOOK }}")).is_empty());
}

const SCORED: &str = r#"apiVersion: sluice/v1
id: scored
steps:
  - id: score
    plugin:
      name: po-risk
      output_schema:
        type: object
        required: [risk]
        properties: { risk: { type: number }, reasons: { type: array, items: { type: string } } }
        additionalProperties: false
    with: { po: PO-1 }
  - { id: use, needs: [score], set: "${{ steps.score.output.risk * 100 }}" }
"#;

#[test]
fn a_plugin_output_schema_types_what_downstream_steps_read() {
    let d = problems(&SCORED.replace("output.risk * 100", "output.risc * 100"));
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].code, "unknown-field");
    assert!(
        d[0].hint
            .as_deref()
            .unwrap()
            .contains("did you mean `risk`?"),
        "{d:?}"
    );
    let d = problems(&SCORED.replace("output.risk * 100", "output.reasons * 100"));
    assert_eq!(d[0].code, "wrong-type", "{d:?}");
    assert!(problems(SCORED).is_empty());
}

#[tokio::test]
async fn a_plugin_output_that_breaks_its_schema_fails_the_step() {
    use sluice::testing::{Expect, PinnedPlugin, TestCase, run_case};
    let case = |output: serde_json::Value, expect: Expect| TestCase {
        name: "t".into(),
        inputs: Default::default(),
        trigger: None,
        secrets: Default::default(),
        connections: Default::default(),
        plugins: [(
            "po-risk".to_string(),
            PinnedPlugin {
                output: Some(output),
                error: None,
            },
        )]
        .into(),
        expect,
    };
    let failures = run_case(
        "scored.yaml",
        SCORED,
        &case(
            json!({"risk": "high"}),
            Expect {
                status: Some("failed".into()),
                error: Some("plugin `po-risk` returned an output that does not match its `output_schema`: `output.risk` should be a number, but it is a string".into()),
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    let failures = run_case(
        "scored.yaml",
        SCORED,
        &case(
            json!({"risk": 0.25}),
            Expect {
                output: Some(json!(25.0)),
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn event_triggers_type_the_data_of_each_engine_event() {
    let flow = |event: &str, entity: &str, expr: &str| {
        format!(
            "apiVersion: sluice/v1\nid: e\ntriggers:\n  - event: {event}\n    entity: {entity}\nsteps:\n  - {{ id: a, set: \"${{{{ {expr} }}}}\" }}\n"
        )
    };
    let d = problems(&flow(
        "sync.completed",
        "purchase_order",
        "trigger.event.data.addded",
    ));
    assert_eq!(d[0].code, "unknown-field", "{d:?}");
    assert!(
        d[0].hint
            .as_deref()
            .unwrap()
            .contains("did you mean `added`?"),
        "{d:?}"
    );
    // A record event with an entity filter carries that entity's record.
    let d = problems(&flow(
        "record.created",
        "purchase_order",
        "trigger.event.data.record.totl",
    ));
    assert!(d[0].message.contains("purchase_order"), "{d:?}");
    assert!(
        d[0].hint
            .as_deref()
            .unwrap()
            .contains("did you mean `total`?"),
        "{d:?}"
    );
    assert!(
        problems(&flow(
            "record.created",
            "purchase_order",
            "trigger.event.data.record.total * 2"
        ))
        .is_empty()
    );
    assert!(
        problems(&flow(
            "sync.completed",
            "vendor",
            "trigger.event.data.added + trigger.event.data.updated"
        ))
        .is_empty()
    );
}

#[test]
fn every_diagnostic_points_inside_the_offending_text() {
    let corpus = [
        TYPOS.to_string(),
        "apiVersion: sluice/v1\nid: x\nsteps:\n  - id: a\n    sett: 1\n".to_string(),
        "apiVersion: sluice/v1\nid: x\nsteps:\n  - { id: a, needs: [b], set: 1 }\n  - { id: b, needs: [a], set: 2 }\n".to_string(),
        "apiVersion: sluice/v1\nid: x\nsteps:\n  - id: a\n    set: \"${{ inputs.nope + }}\"\n".to_string(),
        "apiVersion: sluice/v1\nid: x\ntriggers:\n  - schedule: \"61 * * * *\"\n    timezone: Mars/Base\nsteps:\n  - { id: a, set: 1 }\n".to_string(),
        "apiVersion: sluice/v1\nid: x\nsteps:\n  - id: a\n    read: { connection: nowhere, entity: purchase_ordr }\n".to_string(),
        "apiVersion: sluice/v1\nid: x\nsteps:\n  - id: a\n    select: { from: [1, 2], where: \"$[?@.x >\" }\n    timeout: soon\n".to_string(),
        "apiVersion: sluice/v1\nid: x\nsteps:\n  - id: a\n    set:\n      deep:\n        deeper:\n          - \"${{ item.x }}\"\n          - \"text ${{ steps.zz.output }} and ${{ lenght(1) }}\"\n".to_string(),
        "apiVersion: sluice/v1\nid: x\ninputs:\n  n: { type: integer, default: \"three\" }\nsteps:\n  - id: a\n    set: '${{ inputs.n ~ \"x\" | upperr }}'\n".to_string(),
        "apiVersion: sluice/v1\nid: x\nsteps:\n  - id: r\n    read: { connection: sandbox, entity: vendor }\n  - id: w\n    needs: [r]\n    for_each: \"${{ steps.r.output.records }}\"\n    if: \"${{ item.name > 3 }}\"\n    write: { connection: sandbox, entity: vendor, op: update, id: \"${{ item.remote_id }}\", data: { name: \"${{ item.nam }}\", email: \"${{ index }}\" } }\n".to_string(),
    ];
    let mut checked = 0;
    for yaml in &corpus {
        let d = problems(yaml);
        assert!(!d.is_empty(), "expected problems in:\n{yaml}");
        let lines: Vec<&str> = yaml.lines().collect();
        for diag in &d {
            let (Some(line), Some(col)) = (diag.line, diag.column) else {
                panic!("unlocated: {diag:?}");
            };
            let text = lines
                .get(line - 1)
                .unwrap_or_else(|| panic!("line out of range: {diag:?}"));
            let at: Vec<char> = text.chars().skip(col - 1).collect();
            assert!(
                at.first().is_some_and(|c| !c.is_whitespace()),
                "{diag:?} points at blank or past the end of `{text}`"
            );
            if let Some(len) = diag.length {
                assert!(
                    at.len() >= len,
                    "{diag:?}: the span runs past the line `{text}`"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "checked {checked}");
}

#[test]
fn hostile_flows_are_refused_quickly_with_the_limit_named() {
    let t = std::time::Instant::now();
    // ~940 nested parentheses in a JSONPath filter (a 2 kB upload).
    let deep = format!("$[?{}@.a{}]", "(".repeat(940), ")".repeat(940));
    let d = problems(&format!(
        "apiVersion: sluice/v1\nid: x\nsteps:\n  - id: a\n    select: {{ from: [1], where: \"{deep}\" }}\n"
    ));
    assert!(d[0].message.contains("nested more than 32 deep"), "{d:?}");
    // Nested filters, which the parser handles in exponential time.
    let filters = format!("$[?@{}]", "[?@".repeat(40)) + &"]".repeat(40);
    let d = problems(&format!(
        "apiVersion: sluice/v1\nid: x\nsteps:\n  - id: a\n    select: {{ from: [1], where: \"{filters}\" }}\n"
    ));
    assert!(d[0].message.contains("the limit is 4"), "{d:?}");
    // 400 nested expression parentheses: minijinja's parser limit, an error.
    let nested = format!("{}1{}", "(".repeat(400), ")".repeat(400));
    let d = problems(&format!(
        "apiVersion: sluice/v1\nid: x\nsteps:\n  - {{ id: a, set: \"${{{{ {nested} }}}}\" }}\n"
    ));
    assert_eq!(d[0].code, "invalid-expression", "{d:?}");
    // A `needs` chain far past the step limit.
    let mut chain = String::from("apiVersion: sluice/v1\nid: x\nsteps:\n  - { id: s0, set: 1 }\n");
    for i in 1..21_500 {
        chain.push_str(&format!(
            "  - {{ id: s{i}, needs: [s{}], set: 1 }}\n",
            i - 1
        ));
    }
    let d = problems(&chain);
    assert_eq!(d[0].code, "too-many-steps", "{d:?}");
    assert_eq!(d[0].message, "the flow has 21500 steps; the limit is 1000");
    // A chain at the limit validates.
    let at_limit: String = chain
        .lines()
        .take(3 + 1000)
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(problems(&at_limit).is_empty());
    let huge = format!("{chain}{}", "# padding\n".repeat(200_000));
    assert_eq!(problems(&huge)[0].code, "too-large");
    assert!(t.elapsed().as_secs() < 20, "took {:?}", t.elapsed());
}

#[test]
fn a_step_output_over_the_limit_fails_the_step_and_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.yaml");
    std::fs::write(
        &file,
        "apiVersion: sluice/v1\nid: big\nsteps:\n  - { id: small, set: \"${{ range(10) | join(',') }}\" }\n  - { id: huge, needs: [small], set: \"${{ range(2000) | join(',') }}\" }\n",
    )
    .unwrap();
    let o = Command::new(BIN)
        .args(["run", file.to_str().unwrap(), "--json"])
        .env(
            "SLUICE_DB",
            format!("sqlite://{}", dir.path().join("s.db").display()),
        )
        .env("SLUICE_MAX_STEP_OUTPUT", "1KiB")
        .env_remove("SLUICE_LOG")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let msg = out["error"]["message"].as_str().unwrap();
    assert!(msg.contains("step `huge`"), "{msg}");
    assert!(
        msg.contains("more than 1024 bytes (the limit, set by SLUICE_MAX_STEP_OUTPUT)"),
        "{msg}"
    );
}

#[test]
fn no_recipe_moves_a_secret_into_data() {
    // Each way of deriving a value from a secret, in each place data goes.
    let recipes = [
        "secrets.X | reverse",
        "secrets.X | upper",
        "secrets.X[1:]",
        "secrets.X | list",
        "secrets.X | replace('a', 'b')",
        "'prefix ' ~ secrets.X",
        "secrets | tojson",
        "secrets['X']",
        "secrets.X | length",
        "secrets.X | b64encode",
    ];
    let places = [
        ("set", "  - { id: a, set: { v: \"${{ EXPR }}\" } }"),
        (
            "write.data",
            "  - { id: a, write: { connection: sandbox, entity: vendor, op: update, id: \"1\", data: { name: \"${{ EXPR }}\" } } }",
        ),
        (
            "webhook.payload",
            "  - { id: a, webhook: { event: x.y, payload: { v: \"${{ EXPR }}\" } } }",
        ),
        ("if", "  - { id: a, if: \"${{ EXPR }}\", set: 1 }"),
        (
            "with",
            "  - { id: a, plugin: { name: p }, with: \"${{ EXPR }}\" }",
        ),
        (
            "read.filter",
            "  - { id: a, read: { connection: sandbox, entity: vendor, filter: { name: \"${{ EXPR }}\" } } }",
        ),
    ];
    for (place, step) in places {
        for recipe in recipes {
            let yaml = format!(
                "apiVersion: sluice/v1\nid: leak\nsteps:\n{}\n",
                step.replace("EXPR", recipe)
            );
            let d = problems(&yaml);
            let leak = d.iter().find(|d| d.code == "secret-leak");
            let leak =
                leak.unwrap_or_else(|| panic!("`{recipe}` in {place} was not refused: {d:?}"));
            assert!(
                leak.message.contains(&format!("steps.0.{place}")),
                "{place}: {}",
                leak.message
            );
        }
    }
    // The flow's output is a place too.
    let d = problems(
        "apiVersion: sluice/v1\nid: o\nsteps:\n  - { id: a, set: 1 }\noutput: { t: \"${{ secrets.X }}\" }\n",
    );
    assert!(
        d.iter()
            .any(|d| d.code == "secret-leak" && d.message.contains("`output.t`")),
        "{d:?}"
    );
    // Where credentials are needed, secrets are fine.
    assert!(problems("apiVersion: sluice/v1\nid: ok\ntriggers:\n  - webhook: { path: p, secret: \"${{ secrets.HOOK }}\" }\nsteps:\n  - { id: a, plugin: { name: p, config: { api_key: \"${{ secrets.X }}\" } } }\n").is_empty());
}

#[tokio::test]
async fn a_plugin_given_a_secret_cannot_hand_it_back() {
    use sluice::testing::{Expect, PinnedPlugin, TestCase, run_case};
    let flow = "apiVersion: sluice/v1\nid: p\nsteps:\n  - { id: call, plugin: { name: echo, config: { key: \"${{ secrets.KEY }}\" } } }\n";
    let case = TestCase {
        name: "echo".into(),
        inputs: Default::default(),
        trigger: None,
        secrets: [("KEY".to_string(), "k-77f1e2-private".to_string())].into(),
        connections: Default::default(),
        plugins: [(
            "echo".to_string(),
            PinnedPlugin {
                output: Some(json!({"said": "the key is k-77f1e2-private"})),
                error: None,
            },
        )]
        .into(),
        expect: Expect {
            output: Some(json!({"said": "the key is [REDACTED]"})),
            ..Default::default()
        },
    };
    let failures = run_case("p.yaml", flow, &case).await.unwrap();
    assert!(failures.is_empty(), "{failures:?}");
}

/// A value put into a `select` filter cannot rewrite it. RFC 9535 §2.3.5.1:
/// a comparable is a `literal` (string, number, true, false, null) or a
/// query; §2.3.1.1: inside a string literal the quote and `\` are escaped.
/// Each `${{ }}` of a `where` goes in as one literal, escaped for the quote
/// it stands in, so the input below is compared as text, not run as `||`.
#[tokio::test]
async fn inputs_in_a_select_filter_are_values_not_query_text() {
    let (store, _dir) = sqlite_store().await;
    let e = engine(store, vec![], vec![]);
    let yaml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../flows/overdue-work-orders.yaml"),
    )
    .unwrap();
    let count = |out: &sluice::run::RunOutcome| out.output.as_ref().unwrap()["count"].clone();
    let honest = run(&e, &yaml, json!({"as_of": "2026-03-01"})).await;
    assert_eq!(honest.status, RunStatus::Succeeded, "{:?}", honest.error);
    let overdue = count(&honest).as_u64().unwrap();
    assert!(overdue > 0, "the sandbox has overdue work orders");
    // Written into the query text, this input turned the filter into
    // `@.due_date < '0000' || @.priority == 'low'`: every low-priority order.
    for hostile in [
        "0000' || @.priority == 'low",
        r"0000\' || @.priority == \'low",
        "0000\" || true || \"",
    ] {
        let out = run(&e, &yaml, json!({ "as_of": hostile })).await;
        assert_eq!(
            out.status,
            RunStatus::Succeeded,
            "{hostile}: {:?}",
            out.error
        );
        assert_eq!(
            count(&out),
            json!(0),
            "{hostile}: every due date sorts after `0000`"
        );
    }
    // A value standing alone: a string goes in as a string literal, a number
    // as a number, so `status == ${{ }}` compares and cannot add a clause.
    let bare = r#"apiVersion: sluice/v1
id: bare
inputs:
  status: { type: string }
  min: { type: number, default: 0 }
steps:
  - id: all
    set: [{ s: open, n: 5 }, { s: closed, n: 50 }, { s: "a'b\\c\n", n: 500 }]
  - id: pick
    needs: [all]
    select:
      from: "${{ steps.all.output }}"
      where: "$[?@.s == ${{ inputs.status }} && @.n >= ${{ inputs.min }}]"
output: "${{ steps.pick.output | map(attribute='n') | list }}"
"#;
    for (status, min, want) in [
        (json!("open"), json!(0), json!([5])),
        (json!("closed"), json!(10), json!([50])),
        (json!("closed"), json!(51), json!([])),
        (json!("a'b\\c\n"), json!(0), json!([500])),
        (json!("open || true"), json!(0), json!([])),
    ] {
        let out = run(&e, bare, json!({"status": status, "min": min})).await;
        assert_eq!(
            out.status,
            RunStatus::Succeeded,
            "{status}: {:?}",
            out.error
        );
        assert_eq!(out.output.unwrap(), want, "status {status}, min {min}");
    }
    // `${{- x -}}` only trims whitespace: the dashes are not a minus sign.
    let trimmed = bare.replace("${{ inputs.min }}", "${{- inputs.min -}}");
    let out = run(&e, &trimmed, json!({"status": "closed", "min": 10})).await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    assert_eq!(out.output.unwrap(), json!([50]));
    // A list has no literal form: the step fails saying so.
    let list = bare.replace("${{ inputs.status }}", "${{ [inputs.status] }}");
    let out = run(&e, &list, json!({"status": "open"})).await;
    assert_eq!(out.status, RunStatus::Failed);
    let msg = out.error.unwrap()["message"].as_str().unwrap().to_string();
    assert!(msg.contains("gives a list"), "{msg}");
    // A filter broken around its expressions is caught before any run.
    let broken = bare.replace("&& @.n >=", "&& @.n >= >");
    let d = problems(&broken);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].code, "invalid-jsonpath");
    assert!(
        d[0].message.contains("standing for a value"),
        "{}",
        d[0].message
    );
}
