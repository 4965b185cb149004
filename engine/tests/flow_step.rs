//! The `flow` step and flow-level `on_failure`, as a user meets them: the
//! `sluice` binary on flow files beside each other (`run`, `validate`,
//! `runs show`, `runs resume`), and a real `sluice serve` over HTTP.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "common/serve.rs"]
mod serve;
use serve::Server;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

const CHILD: &str = r#"apiVersion: sluice/v1
id: child
inputs:
  n: { type: integer, required: true }
  label: { type: string, default: none }
steps:
  - id: double
    set: "${{ inputs.n * 2 }}"
  - id: caller
    set: "${{ trigger.parent_flow_id | default('none') }}"
output: { doubled: "${{ steps.double.output }}", label: "${{ inputs.label }}" }
"#;

const PARENT: &str = r#"apiVersion: sluice/v1
id: parent
inputs:
  n: { type: integer, default: 1 }
steps:
  - id: call
    flow:
      id: child
      inputs: { n: "${{ inputs.n }}", label: "from parent" }
  - id: after
    needs: [call]
    set: { got: "${{ steps.call.output }}" }
"#;

/// A directory of flow files and a database (SQLite beside them, unless
/// another is given).
struct Workspace {
    dir: tempfile::TempDir,
    db: Option<String>,
}

impl Workspace {
    fn new(flows: &[(&str, &str)]) -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("flows")).unwrap();
        for (name, yaml) in flows {
            std::fs::write(dir.path().join("flows").join(name), yaml).unwrap();
        }
        Workspace { dir, db: None }
    }

    fn flow(&self, name: &str) -> PathBuf {
        self.dir.path().join("flows").join(name)
    }

    fn db(&self) -> String {
        match &self.db {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.dir.path().join("sluice.db").display()),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("SLUICE_DB", self.db())
            .env("SLUICE_LOG", "error")
            .current_dir(self.dir.path());
        c
    }

    fn sluice(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// `sluice run FILE --json`: the exit code and the run's result.
    fn run(&self, file: &str, inputs: &[&str]) -> (i32, Value) {
        let path = self.flow(file);
        let mut args = vec!["run", path.to_str().unwrap(), "--json"];
        for i in inputs {
            args.extend(["-i", i]);
        }
        let o = self.sluice(&args);
        let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
            panic!(
                "not JSON: {}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        });
        (o.status.code().unwrap(), v)
    }

    /// The runs of a flow, newest first.
    fn runs_of(&self, flow: &str) -> Vec<Value> {
        let o = self.sluice(&["runs", "list", "--flow", flow, "--limit", "100", "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<Value>(&o.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    fn show(&self, id: &str) -> String {
        let o = self.sluice(&["runs", "show", id]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }

    fn show_json(&self, id: &str) -> Value {
        let o = self.sluice(&["runs", "show", id, "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// `sluice validate DIR`: exit code and stderr.
    fn validate(&self) -> (i32, String) {
        let dir = self.dir.path().join("flows");
        let o = self.sluice(&["validate", dir.to_str().unwrap()]);
        (
            o.status.code().unwrap(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }
}

fn error_message(run: &Value) -> String {
    run["error"]["message"].as_str().unwrap_or("").to_string()
}

#[test]
fn a_parent_calls_a_child_with_inputs_and_outputs_its_output() {
    let ws = Workspace::new(&[("parent.yaml", PARENT), ("child.yaml", CHILD)]);
    let (code, out) = ws.run("parent.yaml", &["n=21"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["status"], "succeeded");
    assert_eq!(
        out["output"],
        json!({"got": {"doubled": 42, "label": "from parent"}}),
        "the step's output is the child's output"
    );
    let children = ws.runs_of("child");
    assert_eq!(children.len(), 1, "one child run");
    assert_eq!(
        children[0]["inputs"],
        json!({"n": 21, "label": "from parent"})
    );
    assert_eq!(children[0]["status"], "succeeded");
    // The child reads who called it from `trigger`.
    let child = ws.show_json(children[0]["id"].as_str().unwrap());
    let caller = child["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step_id"] == "caller")
        .unwrap();
    assert_eq!(caller["output"], "parent");
}

#[test]
fn a_parent_and_its_child_link_on_postgres() {
    let Some(url) = std::env::var("SLUICE_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!(
            "skipped: SLUICE_TEST_POSTGRES_URL is not set, so the PostgreSQL case did not run"
        );
        return;
    };
    // Flow ids of their own: the database is shared with other tests.
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let child = CHILD.replace("id: child", &format!("id: child-{tag}"));
    let parent = PARENT
        .replace("id: parent", &format!("id: parent-{tag}"))
        .replace("id: child\n", &format!("id: child-{tag}\n"));
    let mut ws = Workspace::new(&[("parent.yaml", &parent), ("child.yaml", &child)]);
    ws.db = Some(url);
    let (code, out) = ws.run("parent.yaml", &["n=4"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["output"]["got"]["doubled"], 8);
    let children = ws.runs_of(&format!("child-{tag}"));
    assert_eq!(children.len(), 1);
    assert_eq!(children[0]["parent_run_id"], out["run_id"]);
    let parent = ws.show_json(out["run_id"].as_str().unwrap());
    assert_eq!(parent["children"][0]["id"], children[0]["id"]);
}

#[test]
fn runs_show_links_parent_and_child_both_ways() {
    let ws = Workspace::new(&[("parent.yaml", PARENT), ("child.yaml", CHILD)]);
    let (code, out) = ws.run("parent.yaml", &["n=2"]);
    assert_eq!(code, 0, "{out}");
    let parent_id = out["run_id"].as_str().unwrap();
    let child_id = ws.runs_of("child")[0]["id"].as_str().unwrap().to_string();

    let parent = ws.show(parent_id);
    let child_line = parent
        .lines()
        .skip_while(|l| *l != "children:")
        .nth(1)
        .unwrap_or_else(|| panic!("no children listed:\n{parent}"));
    assert!(
        child_line.contains("call") && child_line.contains(&child_id),
        "{parent}"
    );
    let child = ws.show(&child_id);
    assert!(
        child.contains(&format!("parent: run {parent_id} (step call)")),
        "{child}"
    );

    let parent = ws.show_json(parent_id);
    assert_eq!(parent["children"][0]["id"], child_id);
    assert_eq!(parent["children"][0]["parent_step"], "call");
    let child = ws.show_json(&child_id);
    assert_eq!(child["run"]["parent_run_id"], parent_id);
    assert_eq!(child["run"]["parent_step"], "call");
    assert_eq!(child["run"]["trigger"]["type"], "flow");
}

#[test]
fn a_wrong_typed_input_fails_validation_naming_the_step_and_field() {
    let parent = r#"apiVersion: sluice/v1
id: parent
steps:
  - id: call
    flow:
      id: child
      inputs: { n: "five", lable: x }
"#;
    let ws = Workspace::new(&[("parent.yaml", parent), ("child.yaml", CHILD)]);
    let (code, stderr) = ws.validate();
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("parent.yaml:7:20: error[wrong-type]: step `call`: input `n` of flow `child` is an integer, but this gives a string"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error[unknown-input]: flow `child` has no input `lable`")
            && stderr.contains("did you mean `label`?"),
        "{stderr}"
    );
    // `sluice run` refuses it too, before anything runs.
    let o = ws.sluice(&["run", ws.flow("parent.yaml").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(ws.runs_of("child").is_empty());
}

#[test]
fn a_missing_required_input_or_unknown_child_fails_validation() {
    let parent = r#"apiVersion: sluice/v1
id: parent
steps:
  - id: call
    flow: { id: child }
  - id: other
    flow: { id: chlid, inputs: { n: 1 } }
"#;
    let ws = Workspace::new(&[("parent.yaml", parent), ("child.yaml", CHILD)]);
    let (code, stderr) = ws.validate();
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("flow `child` requires input `n` (integer), which is not given"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error[unknown-flow]: unknown flow `chlid`")
            && stderr.contains("did you mean `child`?"),
        "{stderr}"
    );
}

#[test]
fn an_input_of_the_wrong_type_known_only_at_run_time_fails_the_step_naming_the_field() {
    // `inputs.data.n` has no static type: the child's declaration refuses it
    // when the run starts it.
    let parent = r#"apiVersion: sluice/v1
id: parent
inputs:
  data: { type: object, default: { n: "five" } }
steps:
  - id: call
    flow: { id: child, inputs: { n: "${{ inputs.data.n }}" } }
"#;
    let ws = Workspace::new(&[("parent.yaml", parent), ("child.yaml", CHILD)]);
    let (code, out) = ws.run("parent.yaml", &[]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(out["error"]["step"], "call");
    assert_eq!(
        error_message(&out),
        r#"step `call`: flow `child`: invalid inputs: input `n` must be integer, got "five""#
    );
    assert!(ws.runs_of("child").is_empty(), "no child run was stored");
}

#[test]
fn a_failing_child_fails_the_parent_step_naming_the_child_run_and_its_failing_step() {
    let child = r#"apiVersion: sluice/v1
id: child
steps:
  - { id: fine, set: 1 }
  - { id: divide, needs: [fine], set: "${{ 1 // 0 }}" }
"#;
    let parent = r#"apiVersion: sluice/v1
id: parent
steps:
  - id: call
    flow: { id: child }
  - { id: never, needs: [call], set: 1 }
"#;
    let ws = Workspace::new(&[("parent.yaml", parent), ("child.yaml", child)]);
    let (code, out) = ws.run("parent.yaml", &[]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(out["status"], "failed");
    assert_eq!(out["error"]["step"], "call");
    let child_run = &ws.runs_of("child")[0];
    assert_eq!(child_run["status"], "failed");
    let child_id = child_run["id"].as_str().unwrap();
    let message = error_message(&out);
    assert!(
        message.starts_with(&format!(
            "step `call`: child run `{child_id}` of flow `child` failed at step `divide`: step `divide`:"
        )),
        "{message}"
    );
    assert_eq!(out["error"]["details"]["child_run_id"], child_id);
    assert_eq!(out["error"]["details"]["child_step"], "divide");
}

#[test]
fn a_flow_that_calls_itself_stops_at_the_depth_limit_naming_the_chain() {
    let looping = r#"apiVersion: sluice/v1
id: loop
steps:
  - id: again
    flow: { id: loop }
"#;
    let ws = Workspace::new(&[("loop.yaml", looping)]);
    let (code, out) = ws.run("loop.yaml", &[]);
    assert_eq!(code, 1, "{out}");
    let message = error_message(&out);
    let chain = ["loop"; 10].join(" → ");
    assert!(
        message.ends_with(&format!(
            "flow `loop` not started: flow calls would nest 9 deep, more than the limit of 8 (SLUICE_MAX_FLOW_DEPTH): {chain}"
        )),
        "{message}"
    );
    let runs = ws.runs_of("loop");
    assert_eq!(runs.len(), 9, "the outer run and 8 nested ones");
    assert!(runs.iter().all(|r| r["status"] == "failed"));
    // The cause is told once, not nested in every level's message.
    assert_eq!(message.matches("SLUICE_MAX_FLOW_DEPTH").count(), 1);
}

#[test]
fn on_failure_runs_the_named_flow_with_the_failed_runs_data() {
    let failing = r#"apiVersion: sluice/v1
id: fragile
on_failure: { flow: alert }
steps:
  - { id: divide, set: "${{ 1 // 0 }}" }
"#;
    let alert = r#"apiVersion: sluice/v1
id: alert
inputs:
  flow_id: { type: string }
  run_id: { type: string }
  step: { type: string }
  error: { type: string }
steps:
  - id: note
    set: "${{ inputs.flow_id }}/${{ inputs.run_id }} failed at ${{ inputs.step }}"
"#;
    let ws = Workspace::new(&[("fragile.yaml", failing), ("alert.yaml", alert)]);
    let (code, out) = ws.run("fragile.yaml", &[]);
    assert_eq!(code, 1, "{out}");
    let failed_id = out["run_id"].as_str().unwrap();
    let handlers = ws.runs_of("alert");
    assert_eq!(handlers.len(), 1, "one handler run");
    let h = &handlers[0];
    assert_eq!(h["status"], "succeeded");
    assert_eq!(h["inputs"]["flow_id"], "fragile");
    assert_eq!(h["inputs"]["run_id"], failed_id);
    assert_eq!(h["inputs"]["step"], "divide");
    assert_eq!(h["inputs"]["error"], error_message(&out));
    assert_eq!(
        h["output"],
        json!(format!("fragile/{failed_id} failed at divide"))
    );
    assert_eq!(h["trigger"]["type"], "on_failure");
    // A run that succeeds starts no handler.
    let ok = failing.replace("1 // 0", "1");
    std::fs::write(ws.flow("fragile.yaml"), ok).unwrap();
    assert_eq!(ws.run("fragile.yaml", &[]).0, 0);
    assert_eq!(ws.runs_of("alert").len(), 1);
}

#[test]
fn a_failing_on_failure_flow_does_not_start_handlers_again() {
    // The handler fails and names itself as its own handler.
    let handler = r#"apiVersion: sluice/v1
id: handler
on_failure: handler
inputs:
  run_id: { type: string }
steps:
  - { id: boom, set: "${{ 1 // 0 }}" }
"#;
    let failing = r#"apiVersion: sluice/v1
id: fragile
on_failure: handler
steps:
  - { id: divide, set: "${{ 1 // 0 }}" }
"#;
    let ws = Workspace::new(&[("fragile.yaml", failing), ("handler.yaml", handler)]);
    assert_eq!(ws.run("fragile.yaml", &[]).0, 1);
    let runs = ws.runs_of("handler");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["status"], "failed");
}

#[test]
fn on_failure_naming_an_unknown_flow_fails_validation() {
    let failing = r#"apiVersion: sluice/v1
id: fragile
on_failure: { flow: alret }
steps:
  - { id: one, set: 1 }
"#;
    let alert = r#"apiVersion: sluice/v1
id: alert
inputs:
  ticket: { type: string, required: true }
steps:
  - { id: one, set: 1 }
"#;
    let ws = Workspace::new(&[("fragile.yaml", failing), ("alert.yaml", alert)]);
    let (code, stderr) = ws.validate();
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(
            "fragile.yaml:3:21: error[unknown-flow]: `on_failure` names unknown flow `alret`"
        ) && stderr.contains("did you mean `alert`?"),
        "{stderr}"
    );
    // A handler whose required input a failure cannot give is refused too.
    std::fs::write(ws.flow("fragile.yaml"), failing.replace("alret", "alert")).unwrap();
    let (code, stderr) = ws.validate();
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("flow `alert` requires input `ticket`, which a failure does not give"),
        "{stderr}"
    );
}

#[test]
fn a_resumed_parent_waits_for_the_child_it_started_instead_of_starting_another() {
    let child = r#"apiVersion: sluice/v1
id: child
steps:
  - { id: slow, wait: { duration: 2s } }
  - { id: done, needs: [slow], set: finished }
"#;
    let parent = r#"apiVersion: sluice/v1
id: parent
steps:
  - id: call
    flow: { id: child }
"#;
    let ws = Workspace::new(&[("parent.yaml", parent), ("child.yaml", child)]);
    let path = ws.flow("parent.yaml");
    let mut process: Child = ws
        .command(&["run", path.to_str().unwrap(), "--json"])
        .env("SLUICE_RUN_LEASE", "1s")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill the process while the child runs.
    let deadline = Instant::now() + Duration::from_secs(20);
    while ws.runs_of("child").is_empty() {
        assert!(Instant::now() < deadline, "the child never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    process.kill().unwrap();
    process.wait().unwrap();
    let parent_id = ws.runs_of("parent")[0]["id"].as_str().unwrap().to_string();
    assert_eq!(ws.runs_of("parent")[0]["status"], "running");
    std::thread::sleep(Duration::from_millis(1500)); // the lease expires

    let o = ws
        .command(&["runs", "resume", &parent_id, "--json"])
        .env("SLUICE_RUN_LEASE", "1s")
        .output()
        .unwrap();
    let out: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)));
    assert_eq!(out["status"], "succeeded", "{out}");
    assert_eq!(out["output"], json!("finished"));
    let children = ws.runs_of("child");
    assert_eq!(children.len(), 1, "no second child: {children:?}");
    assert_eq!(children[0]["status"], "succeeded");
    assert_eq!(children[0]["parent_run_id"], parent_id.as_str());
}

#[test]
fn cancelling_the_parent_cancels_the_child_it_waits_for() {
    let child = r#"apiVersion: sluice/v1
id: child
steps:
  - { id: slow, wait: { duration: 60s } }
"#;
    let parent = r#"apiVersion: sluice/v1
id: parent
steps:
  - id: call
    flow: { id: child }
"#;
    let ws = Workspace::new(&[("parent.yaml", parent), ("child.yaml", child)]);
    let path = ws.flow("parent.yaml");
    let process = ws
        .command(&["run", path.to_str().unwrap(), "--json"])
        .env("SLUICE_RUN_LEASE", "1s")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ws.runs_of("child").is_empty() {
        assert!(Instant::now() < deadline, "the child never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let parent_id = ws.runs_of("parent")[0]["id"].as_str().unwrap().to_string();
    let o = ws.sluice(&["runs", "cancel", &parent_id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let started = Instant::now();
    let o = process.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the run did not stop"
    );
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["status"], "cancelled", "{out}");
    let child = &ws.runs_of("child")[0];
    assert_eq!(child["status"], "cancelled", "{child}");
}

/// A receiver on 127.0.0.1 that answers `500` to its first request and
/// `200 {"ok": true}` after; returns its URL and the request count.
fn flaky_receiver() -> (String, Arc<Mutex<u32>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/check", listener.local_addr().unwrap());
    let count = Arc::new(Mutex::new(0u32));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let n = {
                let mut c = seen.lock().unwrap();
                *c += 1;
                *c
            };
            let (status, body) = if n == 1 {
                ("500 Internal Server Error", r#"{"ok":false}"#)
            } else {
                ("200 OK", r#"{"ok":true}"#)
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, count)
}

#[test]
fn resuming_a_failed_parent_re_runs_its_failed_child_instead_of_starting_another() {
    let (url, count) = flaky_receiver();
    let child = format!(
        r#"apiVersion: sluice/v1
id: child
steps:
  - {{ id: check, http: {{ url: "{url}", on_status: {{ "5xx": fail }} }} }}
output: "${{{{ steps.check.output.body.ok }}}}"
"#
    );
    let parent = r#"apiVersion: sluice/v1
id: parent
steps:
  - id: call
    flow: { id: child }
"#;
    let ws = Workspace::new(&[("parent.yaml", parent), ("child.yaml", &child)]);
    let path = ws.flow("parent.yaml");
    let o = ws
        .command(&["run", path.to_str().unwrap(), "--json"])
        .env("SLUICE_WEBHOOK_ALLOW", "127.0.0.1")
        .output()
        .unwrap();
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["status"], "failed", "{out}");
    let child_id = ws.runs_of("child")[0]["id"].as_str().unwrap().to_string();
    assert!(error_message(&out).contains(&format!("child run `{child_id}`")));

    let parent_id = out["run_id"].as_str().unwrap();
    let o = ws
        .command(&["runs", "resume", parent_id, "--json"])
        .env("SLUICE_WEBHOOK_ALLOW", "127.0.0.1")
        .output()
        .unwrap();
    let out: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)));
    assert_eq!(out["status"], "succeeded", "{out}");
    assert_eq!(out["output"], json!(true));
    let children = ws.runs_of("child");
    assert_eq!(children.len(), 1, "the same child, re-run: {children:?}");
    assert_eq!(children[0]["id"], child_id.as_str());
    assert_eq!(children[0]["status"], "succeeded");
    assert_eq!(*count.lock().unwrap(), 2);
}

// ---- over the API ----

#[tokio::test]
async fn the_api_links_parent_and_child_runs_both_ways() {
    let parent = r#"apiVersion: sluice/v1
id: parent
steps:
  - id: call
    for_each: [1, 2]
    flow: { id: child, inputs: { n: "${{ item }}" } }
"#;
    // The parent's file comes first: it is checked against the child's
    // declaration before the child is loaded.
    let s = Server::start(&[("a-parent.yaml", parent), ("z-child.yaml", CHILD)]);
    let (status, run) = s.run_and_wait("parent").await;
    assert_eq!(status, 201, "{run}\n{}", s.log());
    assert_eq!(run["status"], "succeeded", "{run}");
    let parent_id = run["id"].as_str().unwrap();
    let parent = s.get(&format!("/v1/runs/{parent_id}")).await;
    assert_eq!(parent["parent_run_id"], Value::Null);
    let children = parent["children"].as_array().unwrap();
    assert_eq!(children.len(), 2, "{parent}");
    let steps: Vec<&str> = children
        .iter()
        .map(|c| c["parent_step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["call[0]", "call[1]"]);
    for c in children {
        assert_eq!(c["flow_id"], "child");
        assert_eq!(c["status"], "succeeded");
        let child = s
            .get(&format!("/v1/runs/{}", c["id"].as_str().unwrap()))
            .await;
        assert_eq!(child["parent_run_id"], parent_id);
        assert_eq!(child["parent_step"], c["parent_step"]);
    }
    assert_eq!(
        parent["steps"][0]["output"],
        json!([{"doubled": 2, "label": "none"}, {"doubled": 4, "label": "none"}])
    );
}

#[tokio::test]
async fn an_upload_naming_an_unknown_flow_is_refused_and_a_known_one_runs() {
    let s = Server::start(&[("child.yaml", CHILD)]);
    let (status, err) = s.post_flow("apiVersion: sluice/v1\nid: fragile\non_failure: nowhere\nsteps:\n  - { id: one, set: 1 }\n").await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(
        err["error"]["details"]["diagnostics"][0]["message"],
        "`on_failure` names unknown flow `nowhere`"
    );
    let (status, err) = s.post_flow("apiVersion: sluice/v1\nid: caller\nsteps:\n  - id: call\n    flow: { id: child, inputs: { n: five } }\n").await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(
        err["error"]["details"]["diagnostics"][0]["message"],
        "step `call`: input `n` of flow `child` is an integer, but this gives a string"
    );
    let (status, v) = s.post_flow("apiVersion: sluice/v1\nid: caller\nsteps:\n  - id: call\n    flow: { id: child, inputs: { n: 5 } }\n").await;
    assert_eq!(status, 201, "{v}");
    let (status, run) = s.run_and_wait("caller").await;
    assert_eq!(status, 201, "{run}");
    assert_eq!(run["output"]["doubled"], 10, "{run}");
}

#[tokio::test]
async fn on_failure_runs_the_handler_on_the_server() {
    let alert = r#"apiVersion: sluice/v1
id: alert
inputs:
  run_id: { type: string }
  step: { type: string }
steps:
  - { id: note, set: "${{ inputs.run_id }} failed at ${{ inputs.step }}" }
"#;
    let fragile = r#"apiVersion: sluice/v1
id: fragile
on_failure: alert
steps:
  - { id: divide, set: "${{ 1 // 0 }}" }
"#;
    let s = Server::start(&[("alert.yaml", alert), ("fragile.yaml", fragile)]);
    let (status, run) = s.run_and_wait("fragile").await;
    assert_eq!(status, 201, "{run}");
    assert_eq!(run["status"], "failed", "{run}");
    let failed_id = run["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let handler = loop {
        let page = s.get("/v1/runs?flow=alert").await;
        if let Some(h) = page["items"]
            .as_array()
            .and_then(|i| i.first())
            .filter(|h| h["status"] == "succeeded")
        {
            break h.clone();
        }
        assert!(Instant::now() < deadline, "no handler run: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        handler["inputs"],
        json!({"run_id": failed_id, "step": "divide"})
    );
    assert_eq!(
        handler["output"],
        json!(format!("{failed_id} failed at divide"))
    );
}
