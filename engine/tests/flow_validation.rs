//! Validation: every problem is reported at once, each at its line and
//! column with a hint, before anything runs.

use sluice::flow::{self, Catalog, Diagnostic};

fn problems(yaml: &str) -> Vec<Diagnostic> {
    match flow::compile("test.yaml", yaml, &Catalog::default()) {
        Ok(_) => panic!("flow was accepted:\n{yaml}"),
        Err(e) => e.diagnostics,
    }
}

fn find<'a>(diags: &'a [Diagnostic], code: &str) -> &'a Diagnostic {
    diags
        .iter()
        .find(|d| d.code == code)
        .unwrap_or_else(|| panic!("no `{code}` diagnostic in {diags:#?}"))
}

#[test]
fn valid_flow_compiles_into_a_dag() {
    let f = flow::compile(
        "ok.yaml",
        r#"
apiVersion: sluice/v1
id: ok
inputs:
  n: { type: integer, default: 2 }
steps:
  - id: a
    set: { x: "${{ inputs.n }}" }
  - id: b
    needs: [a]
    set: "${{ steps.a.output.x * 2 }}"
"#,
        &Catalog::default(),
    )
    .unwrap();
    assert_eq!(f.steps.len(), 2);
    assert_eq!(f.steps[1].needs, vec![0]);
    assert_eq!(f.topo_order, vec![0, 1]);
    assert_eq!(f.sinks, vec![1]);
}

#[test]
fn malformed_yaml_reports_line_and_column() {
    let d = problems("apiVersion: sluice/v1\nid: x\nsteps:\n  - id: a\n    set: [1, 2\n");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].code, "yaml-syntax");
    assert!(d[0].line.is_some_and(|l| l >= 5), "{:?}", d[0]);
}

#[test]
fn unknown_keys_are_all_reported_with_did_you_mean() {
    let d = problems(
        r#"apiVersion: sluice/v1
id: x
stpes: []
steps:
  - id: a
    neds: [b]
    set: 1
  - id: b
    set: 2
    retry: { max_atempts: 3 }
"#,
    );
    let unknown: Vec<&Diagnostic> = d.iter().filter(|d| d.code == "unknown-key").collect();
    assert_eq!(unknown.len(), 3, "{d:#?}");
    assert_eq!((unknown[0].line, unknown[0].column), (Some(3), Some(1)));
    assert_eq!(unknown[0].hint.as_deref(), Some("did you mean `steps`?"));
    assert_eq!((unknown[1].line, unknown[1].column), (Some(6), Some(5)));
    assert_eq!(unknown[1].hint.as_deref(), Some("did you mean `needs`?"));
    assert_eq!(
        unknown[2].hint.as_deref(),
        Some("did you mean `max_attempts`?")
    );
}

#[test]
fn wrong_types_and_bad_enum_values_are_reported_together() {
    let d = problems(
        r#"apiVersion: sluice/v2
id: x
inputs:
  n: { type: integr }
steps:
  - id: a
    needs: b
    on_error: ignore
    set: 1
"#,
    );
    let api = d
        .iter()
        .find(|x| x.line == Some(1))
        .expect("apiVersion problem");
    assert_eq!(api.code, "unknown-value");
    let input = d
        .iter()
        .find(|x| x.line == Some(4))
        .expect("input type problem");
    assert_eq!(input.hint.as_deref(), Some("did you mean `integer`?"));
    let needs = d.iter().find(|x| x.line == Some(7)).expect("needs problem");
    assert_eq!(needs.code, "wrong-type");
    assert!(
        needs.message.contains("expected array, found string `b`"),
        "{}",
        needs.message
    );
    assert!(
        d.iter()
            .any(|x| x.line == Some(8) && x.code == "unknown-value")
    );
}

#[test]
fn missing_required_key_is_reported() {
    let d = problems("apiVersion: sluice/v1\nid: x\n");
    let m = find(&d, "missing-key");
    assert_eq!(m.message, "missing required key `steps`");
}

#[test]
fn duplicate_ids_missing_needs_and_missing_kind() {
    let d = problems(
        r#"apiVersion: sluice/v1
id: x
steps:
  - id: a
    set: 1
  - id: a
    set: 2
  - id: c
    needs: [aa, zzz]
  - id: d
    set: 1
    select: { from: [] }
"#,
    );
    let dup = find(&d, "duplicate-step");
    assert_eq!((dup.line, dup.column), (Some(6), Some(9)));
    let unknown: Vec<&Diagnostic> = d.iter().filter(|x| x.code == "unknown-step").collect();
    assert_eq!(unknown.len(), 2);
    assert_eq!(unknown[0].hint.as_deref(), Some("did you mean `a`?"));
    assert!(
        find(&d, "missing-kind")
            .message
            .contains("`c` does nothing")
    );
    assert!(
        find(&d, "several-kinds").message.contains("set, select")
            || find(&d, "several-kinds").message.contains("select, set")
    );
}

#[test]
fn cycles_name_the_steps_on_the_cycle() {
    let d = problems(
        r#"apiVersion: sluice/v1
id: x
steps:
  - id: a
    needs: [c]
    set: 1
  - id: b
    needs: [a]
    set: 1
  - id: c
    needs: [b]
    set: 1
  - id: free
    set: 1
"#,
    );
    let c = find(&d, "cycle");
    assert_eq!(c.message, "steps form a cycle: a → b → c → a");
    assert_eq!(c.line, Some(5));
}

#[test]
fn expressions_that_do_not_parse_are_located() {
    let d = problems(
        r#"apiVersion: sluice/v1
id: x
steps:
  - id: a
    set: { total: "${{ 1 + }}" }
"#,
    );
    let e = find(&d, "invalid-expression");
    assert_eq!(e.line, Some(5));
    assert!(e.message.contains("syntax error"), "{}", e.message);
}

#[test]
fn references_to_steps_that_are_not_upstream_are_errors() {
    let d = problems(
        r#"apiVersion: sluice/v1
id: x
inputs:
  limit: { type: integer }
steps:
  - id: a
    set: 1
  - id: b
    set: "${{ steps.a.output }}"
  - id: c
    needs: [a]
    set: "${{ steps.a.output + inputs.limt + steps.zz.output }}"
  - id: d
    set: "${{ item }}"
"#,
    );
    let up = find(&d, "not-upstream");
    assert_eq!(up.line, Some(9));
    assert_eq!(up.hint.as_deref(), Some("add `a` to `needs:` of `b`"));
    assert_eq!(
        find(&d, "unknown-input").hint.as_deref(),
        Some("did you mean `inputs.limit`?")
    );
    assert!(find(&d, "unknown-step").message.contains("steps.zz"));
    assert_eq!(find(&d, "item-outside-for-each").line, Some(14));
}

#[test]
fn unknown_connection_entity_and_field_are_reported() {
    let d = problems(
        r#"apiVersion: sluice/v1
id: x
steps:
  - id: a
    read:
      connection: sap-prod
      entity: purchase_ordr
  - id: b
    read:
      connection: sandbox
      entity: vendor
      filter: { stauts: active }
  - id: c
    write:
      connection: sandbox
      entity: work_order
      op: update
      id: WO-5001
      data: { priorty: high }
"#,
    );
    assert_eq!(
        find(&d, "unknown-connection").message,
        "unknown connection `sap-prod`"
    );
    assert_eq!(
        find(&d, "unknown-entity").hint.as_deref(),
        Some("did you mean `purchase_order`?")
    );
    let fields: Vec<&Diagnostic> = d.iter().filter(|x| x.code == "unknown-field").collect();
    assert_eq!(fields.len(), 2);
    assert_eq!((fields[0].line, fields[0].column), (Some(12), Some(17)));
    assert_eq!(fields[0].hint.as_deref(), Some("did you mean `status`?"));
    assert_eq!(fields[1].hint.as_deref(), Some("did you mean `priority`?"));
}

#[test]
fn invalid_triggers_are_reported() {
    let d = problems(
        r#"apiVersion: sluice/v1
id: x
triggers:
  - schedule: "61 * * * *"
    timezone: Mars/Olympus
  - event: sync.complete
  - webhook: { path: "bad path" }
  - {}
steps:
  - id: a
    set: 1
"#,
    );
    assert_eq!(find(&d, "invalid-cron").line, Some(4));
    assert_eq!(find(&d, "invalid-timezone").line, Some(5));
    assert_eq!(
        find(&d, "unknown-event").hint.as_deref(),
        Some("did you mean `sync.completed`?")
    );
    assert_eq!(find(&d, "invalid-path").line, Some(7));
    assert_eq!(find(&d, "missing-kind").line, Some(8));
}

#[test]
fn bad_durations_and_write_shapes_are_reported() {
    let d = problems(
        r#"apiVersion: sluice/v1
id: x
steps:
  - id: a
    timeout: soon
    retry: { initial: 10s, max: 1s }
    write: { connection: sandbox, entity: vendor, op: update, data: {} }
  - id: b
    concurrency: 4
    select: { from: [], where: "$[?@.x >" }
"#,
    );
    assert!(find(&d, "invalid-duration").message.contains("`soon`"));
    assert_eq!(find(&d, "invalid-retry").line, Some(6));
    assert_eq!(find(&d, "invalid-write").message, "`update` needs `id`");
    assert_eq!(find(&d, "concurrency-without-for-each").line, Some(9));
    assert_eq!(find(&d, "invalid-jsonpath").line, Some(10));
}

#[test]
fn rendered_diagnostics_show_file_line_column_source_and_hint() {
    let err = flow::compile(
        "flows/bad.yaml",
        "apiVersion: sluice/v1\nid: x\nsteps:\n  - id: a\n    sett: 1\n",
        &Catalog::default(),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("flows/bad.yaml:5:5: error[unknown-key]: unknown key `sett`"),
        "{text}"
    );
    assert!(text.contains("    sett: 1"), "{text}");
    assert!(text.contains("did you mean `set`?"), "{text}");
}
