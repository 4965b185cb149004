//! What an inbound webhook answers (`respond:` on a `webhook` trigger).
//!
//! - `respond: accepted` (the default): `202` with the run id as soon as the
//!   run is stored.
//! - `respond: output`: the server waits for the run (up to
//!   `respond_timeout`, default 30 s, at most 5 min) and answers with the
//!   flow's `output:`, read as an HTTP response, like n8n's "Respond to
//!   Webhook" node:
//!
//!   ```yaml
//!   output:
//!     status: "${{ 422 if steps.check.output.reasons else 200 }}"  # 100 to 599, default 200
//!     body: "${{ steps.check.output }}"                       # any JSON; a string is sent as text
//!     headers: { x-partner-ref: "${{ trigger.body.ref }}" }   # optional
//!   ```
//!
//!   A run that fails (or is cancelled) answers `failure_status` (default
//!   500) with the API's error body naming the run and its failing step,
//!   never the step's error text (it may quote a system's answer). A run
//!   still going at the timeout answers `202` with its id, as `accepted`
//!   does; it goes on durably.
//!
//! This module holds the config's validation and the mapping from a run's
//! result to the answer; the server only waits and writes it out.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::model::{Flow, WebhookTrigger};
use crate::path;
use crate::store::RunStatus;
use crate::yaml::diagnostic::Diagnostic;
use crate::yaml::source::{Loc, Node, Seg};

/// How long a `respond: output` hook waits by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest `respond_timeout` allowed (a caller's HTTP client rarely waits longer).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// The keys of a `respond: output` flow's `output:`.
const OUTPUT_KEYS: &[&str] = &["status", "body", "headers"];

/// Headers a flow may not set on its answer: the server owns the framing.
const RESERVED_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "x-request-id",
];

/// What an inbound webhook answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Respond {
    /// `202` + run id once the run is stored.
    #[default]
    Accepted,
    /// Wait for the run and answer with the flow's `output:` (`status`,
    /// `body`, `headers`); `202` + run id if it is not done in `respond_timeout`.
    Output,
}

/// A webhook trigger's answer settings, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseSpec {
    /// `accepted` or `output`.
    pub respond: Respond,
    /// How long to wait for the run (`output` only).
    pub timeout: Duration,
    /// Status of the answer when the run fails or is cancelled.
    pub failure_status: u16,
}

impl ResponseSpec {
    /// The settings of a validated trigger (invalid values fall back to defaults).
    pub fn of(w: &WebhookTrigger) -> ResponseSpec {
        ResponseSpec {
            respond: w.respond.unwrap_or_default(),
            timeout: w
                .respond_timeout
                .as_deref()
                .and_then(|t| humantime::parse_duration(t).ok())
                .unwrap_or(DEFAULT_TIMEOUT)
                .min(MAX_TIMEOUT),
            failure_status: w.failure_status.unwrap_or(500),
        }
    }
}

/// Checks a webhook trigger's `respond`, `respond_timeout` and
/// `failure_status`, and with `respond: output` the shape of the flow's
/// `output:`. `at` locates a key under the trigger's `webhook`.
pub fn check(
    flow: &Flow,
    w: &WebhookTrigger,
    root: &Node,
    at: impl Fn(&[Seg]) -> Loc,
    diags: &mut Vec<Diagnostic>,
) {
    let output = w.respond == Some(Respond::Output);
    for (key, present) in [
        ("respond_timeout", w.respond_timeout.is_some()),
        ("failure_status", w.failure_status.is_some()),
    ] {
        if present && !output {
            diags.push(
                Diagnostic::at(
                    "misplaced-key",
                    at(&path![key]),
                    format!("`{key}` applies only to `respond: output`"),
                )
                .with_hint("add `respond: output`, or remove the key"),
            );
        }
    }
    if let Some(t) = &w.respond_timeout {
        match humantime::parse_duration(t) {
            Err(e) => diags.push(
                Diagnostic::at(
                    "invalid-duration",
                    at(&path!["respond_timeout"]),
                    format!("invalid duration `{t}`: {e}"),
                )
                .with_hint("write e.g. `10s`, `2m`, `500ms`"),
            ),
            Ok(d) if d.is_zero() || d > MAX_TIMEOUT => diags.push(
                Diagnostic::at(
                    "invalid-duration",
                    at(&path!["respond_timeout"]),
                    format!("`respond_timeout` must be more than 0 and at most 5m, not `{t}`"),
                )
                .with_hint("a run that takes longer answers 202 with its id and goes on"),
            ),
            Ok(_) => {}
        }
    }
    if let Some(s) = w.failure_status
        && !(400..=599).contains(&s)
    {
        diags.push(Diagnostic::at(
            "invalid-status",
            at(&path!["failure_status"]),
            format!("`failure_status` must be 400 to 599, not {s}"),
        ));
    }
    if output {
        check_output(flow, root, at(&path!["respond"]), diags);
    }
}

/// A `respond: output` flow's `output:` must be a response: a mapping of
/// `status`, `body` and `headers`.
fn check_output(flow: &Flow, root: &Node, respond_at: Loc, diags: &mut Vec<Diagnostic>) {
    let example = "output: { status: 200, body: \"${{ steps.<id>.output }}\" }";
    let Some(output) = &flow.output else {
        diags.push(
            Diagnostic::at(
                "missing-response",
                respond_at,
                "`respond: output` answers with the flow's `output:`, and this flow has none",
            )
            .with_hint(format!("add e.g. `{example}`")),
        );
        return;
    };
    let Value::Object(fields) = output else {
        diags.push(
            Diagnostic::at(
                "invalid-response",
                root.locate(&path!["output"]),
                "with `respond: output`, `output:` must be a mapping of `status`, `body` and `headers`",
            )
            .with_hint(format!("write e.g. `{example}`")),
        );
        return;
    };
    for key in fields.keys().filter(|k| !OUTPUT_KEYS.contains(&k.as_str())) {
        diags.push(
            Diagnostic::at(
                "invalid-response",
                root.locate(&path!["output", key.as_str()]),
                format!("unknown key `{key}` in a webhook response"),
            )
            .with_hint(
                "`respond: output` reads `status`, `body` and `headers`; put data under `body`",
            ),
        );
    }
    match fields.get("status") {
        Some(Value::String(s)) if s.contains("${{") => {}
        Some(v) if status_of(v).is_none() => diags.push(Diagnostic::at(
            "invalid-status",
            root.locate(&path!["output", "status"]),
            format!("a response `status` must be an integer 100 to 599, not {v}"),
        )),
        _ => {}
    }
    match fields.get("headers") {
        None | Some(Value::Object(_)) => {}
        Some(Value::String(s)) if s.contains("${{") => {}
        Some(_) => diags.push(Diagnostic::at(
            "invalid-response",
            root.locate(&path!["output", "headers"]),
            "response `headers` must be a mapping of header names to strings",
        )),
    }
}

fn status_of(v: &Value) -> Option<u16> {
    v.as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| (100..=599).contains(n))
}

/// The answer of a `respond: output` hook whose run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum HookReply {
    /// The run succeeded: its output as a response.
    Output {
        /// HTTP status.
        status: u16,
        /// Headers the flow set (lowercase names, validated).
        headers: Vec<(String, String)>,
        /// The body: JSON, or text when the flow's body is a string.
        body: ReplyBody,
    },
    /// The run failed, was cancelled, or its output is not a response.
    Failed {
        /// HTTP status (`failure_status`).
        status: u16,
        /// Stable code: `RUN_FAILED`, `RUN_CANCELLED` or `INVALID_RESPONSE`.
        code: &'static str,
        /// For a person: the run and its failing step.
        message: String,
        /// `{run_id, run_status, step, kind}`.
        details: Value,
    },
}

/// The body of a [`HookReply::Output`].
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyBody {
    /// No `body` in the output.
    Empty,
    /// A string body, sent as `text/plain` (unless the flow set a content type).
    Text(String),
    /// Any other JSON, sent as `application/json`.
    Json(Value),
}

/// The answer for a run that ended with `status`, `output` and `error`
/// (`{step, kind, message}`, of which only the step and kind are shown).
pub fn reply(
    spec: &ResponseSpec,
    run_id: &str,
    status: RunStatus,
    output: Option<&Value>,
    error: Option<&Value>,
) -> HookReply {
    let step = error
        .and_then(|e| e.get("step"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let kind = error.and_then(|e| e.get("kind")).cloned();
    let failed = |code, message: String| HookReply::Failed {
        status: spec.failure_status,
        code,
        message,
        details: serde_json::json!({
            "run_id": run_id,
            "run_status": status.as_str(),
            "step": step,
            "kind": kind,
        }),
    };
    match status {
        RunStatus::Succeeded => match response_of(output) {
            Ok(r) => r,
            Err(why) => HookReply::Failed {
                status: 500,
                code: "INVALID_RESPONSE",
                message: format!("run {run_id} succeeded, but its output is not a response: {why}"),
                details: serde_json::json!({"run_id": run_id, "run_status": status.as_str()}),
            },
        },
        RunStatus::Cancelled => failed("RUN_CANCELLED", format!("run {run_id} was cancelled")),
        _ => {
            let at = step
                .as_deref()
                .map(|s| format!(" at step `{s}`"))
                .unwrap_or_default();
            failed("RUN_FAILED", format!("run {run_id} failed{at}"))
        }
    }
}

/// A succeeded run's output as a response.
fn response_of(output: Option<&Value>) -> Result<HookReply, String> {
    let empty = Map::new();
    let fields = match output {
        Some(Value::Object(o)) => o,
        None | Some(Value::Null) => &empty,
        Some(other) => {
            return Err(format!(
                "it is {other}; `output:` must be a mapping of `status`, `body` and `headers`"
            ));
        }
    };
    let status = match fields.get("status") {
        None | Some(Value::Null) => 200,
        Some(v) => status_of(v)
            .ok_or_else(|| format!("`status` must be an integer 100 to 599, got {v}"))?,
    };
    let mut headers = Vec::new();
    match fields.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => {
            for (name, value) in h {
                let name = name.to_ascii_lowercase();
                let value = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(_) | Value::Bool(_) => value.to_string(),
                    other => return Err(format!("header `{name}` must be a string, got {other}")),
                };
                if RESERVED_HEADERS.contains(&name.as_str()) {
                    return Err(format!("header `{name}` is set by the server"));
                }
                if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err()
                    || axum::http::HeaderValue::from_str(&value).is_err()
                {
                    return Err(format!("header `{name}` is not a valid HTTP header"));
                }
                headers.push((name, value));
            }
        }
        Some(other) => return Err(format!("`headers` must be a mapping, got {other}")),
    }
    let body = match fields.get("body") {
        None => ReplyBody::Empty,
        Some(Value::String(s)) => ReplyBody::Text(s.clone()),
        Some(v) => ReplyBody::Json(v.clone()),
    };
    Ok(HookReply::Output {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SPEC: ResponseSpec = ResponseSpec {
        respond: Respond::Output,
        timeout: DEFAULT_TIMEOUT,
        failure_status: 502,
    };

    #[test]
    fn output_status_body_and_headers_make_the_answer() {
        let out =
            json!({"status": 422, "body": {"reasons": ["no lines"]}, "headers": {"X-Ref": "po-1"}});
        assert_eq!(
            reply(&SPEC, "r1", RunStatus::Succeeded, Some(&out), None),
            HookReply::Output {
                status: 422,
                headers: vec![("x-ref".into(), "po-1".into())],
                body: ReplyBody::Json(json!({"reasons": ["no lines"]})),
            }
        );
    }

    #[test]
    fn failed_run_names_run_and_step_but_not_the_error_text() {
        let err =
            json!({"step": "post", "kind": "connector", "message": "password=hunter2 refused"});
        let HookReply::Failed {
            status,
            message,
            details,
            ..
        } = reply(&SPEC, "r1", RunStatus::Failed, None, Some(&err))
        else {
            panic!("a failed run is a failure answer");
        };
        assert_eq!(status, 502);
        assert_eq!(message, "run r1 failed at step `post`");
        assert!(!details.to_string().contains("hunter2"));
    }

    #[test]
    fn status_out_of_range_is_an_invalid_response() {
        let out = json!({"status": 42});
        assert!(matches!(
            reply(&SPEC, "r1", RunStatus::Succeeded, Some(&out), None),
            HookReply::Failed {
                status: 500,
                code: "INVALID_RESPONSE",
                ..
            }
        ));
    }
}
