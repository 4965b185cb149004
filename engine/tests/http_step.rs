//! The `http` step against a real HTTP server on 127.0.0.1 (axum), through the
//! SSRF guard with 127.0.0.1 allow-listed (`SLUICE_WEBHOOK_ALLOW`).

mod common;

use std::sync::{Arc, Mutex, Once};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use sluice::flow;
use sluice::store::RunStatus;

/// What the receiver got: method, path and query, headers, body.
#[derive(Debug, Clone)]
struct Got {
    method: String,
    uri: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

type Log = Arc<Mutex<Vec<Got>>>;

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: set before any step runs (the guard and the size cap are
        // read once per process), with the same values for every test.
        unsafe {
            std::env::set_var("SLUICE_WEBHOOK_ALLOW", "127.0.0.1");
            std::env::set_var("SLUICE_HTTP_MAX_RESPONSE", "4096");
            std::env::set_var("SLUICE_HTTP_TIMEOUT", "400ms");
        }
    });
}

/// A receiver: `/echo` answers the request as JSON, `/status/N` answers N
/// (with `Retry-After: 0` on 503), `/big` answers 10 kB, `/text` plain text.
async fn receiver() -> (String, Log) {
    let log: Log = Arc::default();
    async fn handle(
        State(log): State<Log>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> axum::response::Response {
        log.lock().unwrap().push(Got {
            method: method.to_string(),
            uri: uri.to_string(),
            headers: headers.clone(),
            body: body.to_vec(),
        });
        let path = uri.path();
        if let Some(code) = path.strip_prefix("/status/") {
            let code = StatusCode::from_u16(code.parse().unwrap()).unwrap();
            let mut resp = (
                code,
                axum::Json(json!({"error": "refused", "code": code.as_u16()})),
            )
                .into_response();
            if code == StatusCode::SERVICE_UNAVAILABLE {
                resp.headers_mut()
                    .insert("retry-after", "0".parse().unwrap());
            }
            return resp;
        }
        match path {
            "/big" => "x".repeat(10_000).into_response(),
            "/redirect" => (StatusCode::FOUND, [("location", "/echo")], "").into_response(),
            "/text" => ([("x-request-id", "r-42")], "plain words").into_response(),
            _ => axum::Json(json!({
                "method": method.to_string(),
                "query": uri.query(),
                "content_type": headers.get("content-type").and_then(|v| v.to_str().ok()),
                "body": String::from_utf8_lossy(&body),
            }))
            .into_response(),
        }
    }
    let app = Router::new().fallback(handle).with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), log)
}

async fn engine() -> (sluice::run::Engine, tempfile::TempDir) {
    setup();
    let (store, dir) = common::sqlite_store().await;
    (
        common::engine(store, vec![], vec![("PARTNER_TOKEN", "tok-3xq")]),
        dir,
    )
}

fn flow(step: &str) -> String {
    format!(
        r#"
apiVersion: sluice/v1
id: call
inputs:
  po: {{ type: string, default: "PO 1/2 & #3 ü" }}
steps:
  - id: call
{step}
output: "${{{{ steps.call.output }}}}"
"#
    )
}

#[tokio::test]
async fn a_post_sends_query_headers_and_json_and_reads_the_json_answer() {
    let (base, log) = receiver().await;
    let (engine, _dir) = engine().await;
    let out = common::run(
        &engine,
        &flow(&format!(
            r#"    http:
      method: post
      url: "{base}/echo"
      query: {{ po: "${{{{ inputs.po }}}}", tag: [a, b] }}
      headers: {{ Authorization: "Bearer ${{{{ secrets.PARTNER_TOKEN }}}}", X-Sig: "${{{{ secrets.PARTNER_TOKEN | reverse }}}}" }}
      json: {{ po: "${{{{ inputs.po }}}}", total: 12.5 }}"#
        )),
        json!({}),
    )
    .await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    let o = out.output.unwrap();
    assert_eq!(o["status"], 200);
    assert_eq!(o["headers"]["content-type"], "application/json");
    assert_eq!(o["body"]["method"], "POST");
    assert_eq!(o["body"]["content_type"], "application/json");
    let sent: Value = serde_json::from_str(o["body"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent, json!({"po": "PO 1/2 & #3 ü", "total": 12.5}));
    let got = log.lock().unwrap()[0].clone();
    assert_eq!(got.method, "POST");
    // Query values are percent-encoded (form style), so `&`, `#` and `/` stay values.
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(got.uri.split_once('?').unwrap().1.as_bytes())
            .into_owned()
            .collect();
    assert_eq!(
        query,
        vec![
            ("po".into(), "PO 1/2 & #3 ü".into()),
            ("tag".into(), "a".into()),
            ("tag".into(), "b".into())
        ]
    );
    assert_eq!(got.headers["authorization"], "Bearer tok-3xq");
    // The credential is in no stored output.
    let steps = engine.store().steps(&out.run_id).await.unwrap();
    let stored = serde_json::to_string(&steps).unwrap();
    assert!(!stored.contains("tok-3xq"), "{stored}");
    // The step's input is what went out, with the credential header kept
    // only by name.
    let input = steps[0]
        .input
        .clone()
        .expect("the http step records its input");
    assert_eq!(input["method"], "POST");
    assert_eq!(input["url"], format!("{base}/echo"));
    assert_eq!(
        input["query"],
        json!([["po", "PO 1/2 & #3 ü"], ["tag", "a"], ["tag", "b"]])
    );
    assert_eq!(input["headers"]["authorization"], "[redacted]");
    // A header made from a secret is not kept, whatever it became.
    assert_eq!(input["headers"]["x-sig"], "[redacted]");
    assert!(!stored.contains("qx3-kot"), "{stored}");
    assert_eq!(input["headers"]["content-type"], "application/json");
    assert_eq!(
        input["body"],
        json!({"json": {"po": "PO 1/2 & #3 ü", "total": 12.5}})
    );
}

#[tokio::test]
async fn form_text_and_bytes_bodies_go_out_with_their_content_types() {
    let (base, log) = receiver().await;
    let (engine, _dir) = engine().await;
    for (body, ct, raw) in [
        (
            "form: { a: \"x y\", b: \"1&2\" }",
            "application/x-www-form-urlencoded",
            "a=x+y&b=1%262",
        ),
        (
            "text: \"hello ${{ inputs.po }}\"",
            "text/plain; charset=utf-8",
            "hello PO 1/2 & #3 ü",
        ),
        (
            "bytes: \"AAEC/w==\"",
            "application/octet-stream",
            "\u{0}\u{1}\u{2}\u{fffd}",
        ),
    ] {
        let out = common::run(
            &engine,
            &flow(&format!(
                "    http:\n      method: PUT\n      url: \"{base}/echo\"\n      {body}"
            )),
            json!({}),
        )
        .await;
        assert_eq!(out.status, RunStatus::Succeeded, "{body}: {:?}", out.error);
        let got = log.lock().unwrap().pop().unwrap();
        assert_eq!(got.headers["content-type"], ct, "{body}");
        assert_eq!(String::from_utf8_lossy(&got.body), raw, "{body}");
    }
    assert_eq!(log.lock().unwrap().len(), 0);
}

#[tokio::test]
async fn a_text_answer_keeps_its_headers_and_text() {
    let (base, _log) = receiver().await;
    let (engine, _dir) = engine().await;
    let out = common::run(
        &engine,
        &flow(&format!("    http: {{ url: \"{base}/text\" }}")),
        json!({}),
    )
    .await;
    let o = out.output.expect("output");
    assert_eq!(o["body"], "plain words");
    assert_eq!(o["headers"]["x-request-id"], "r-42");
}

#[tokio::test]
async fn statuses_outside_2xx_fail_continue_or_retry_as_on_status_says() {
    let (base, log) = receiver().await;
    let (engine, _dir) = engine().await;

    // Default: a 4xx fails at once, naming the call and the answer.
    let out = common::run(
        &engine,
        &flow(&format!("    http: {{ url: \"{base}/status/404\" }}")),
        json!({}),
    )
    .await;
    assert_eq!(out.status, RunStatus::Failed);
    let msg = out.error.unwrap()["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains(&format!("GET {base}/status/404 answered 404")),
        "{msg}"
    );
    assert!(msg.contains("refused"), "the body is in the message: {msg}");

    // `continue`: the response is the output.
    let out = common::run(
        &engine,
        &flow(&format!(
            "    http:\n      url: \"{base}/status/404\"\n      on_status: {{ \"404\": continue, 4xx: fail }}"
        )),
        json!({}),
    )
    .await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    assert_eq!(out.output.unwrap()["body"]["code"], 404);

    // 503 is retried by default, per the step's retry policy.
    log.lock().unwrap().clear();
    let out = common::run(
        &engine,
        &flow(&format!(
            "    retry: {{ max_attempts: 3, initial: 5ms }}\n    http: {{ url: \"{base}/status/503\" }}"
        )),
        json!({}),
    )
    .await;
    assert_eq!(out.status, RunStatus::Failed);
    assert_eq!(log.lock().unwrap().len(), 3, "three attempts");

    // `retry` on a 409 retries; `fail` on a 503 does not.
    log.lock().unwrap().clear();
    let out = common::run(
        &engine,
        &flow(&format!(
            "    retry: {{ max_attempts: 2, initial: 5ms }}\n    http:\n      url: \"{base}/status/409\"\n      on_status: {{ \"409\": retry }}"
        )),
        json!({}),
    )
    .await;
    assert_eq!(out.status, RunStatus::Failed);
    assert_eq!(log.lock().unwrap().len(), 2);
    log.lock().unwrap().clear();
    common::run(
        &engine,
        &flow(&format!(
            "    retry: {{ max_attempts: 3, initial: 5ms }}\n    http:\n      url: \"{base}/status/503\"\n      on_status: {{ 5xx: fail }}"
        )),
        json!({}),
    )
    .await;
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn internal_addresses_redirects_and_oversized_answers_are_refused() {
    let (base, log) = receiver().await;
    let (engine, _dir) = engine().await;
    let fail = |url: String| {
        let engine = &engine;
        async move {
            let out = common::run(
                engine,
                &flow(&format!("    http: {{ url: \"{url}\" }}")),
                json!({}),
            )
            .await;
            assert_eq!(out.status, RunStatus::Failed, "{url}");
            out.error.unwrap()["message"].as_str().unwrap().to_string()
        }
    };
    // The cloud metadata address is refused by the SSRF guard before any connection.
    let m = fail("https://169.254.169.254/latest/meta-data".into()).await;
    assert!(
        m.contains("169.254.169.254") && m.contains("blocked"),
        "{m}"
    );
    let m = fail("http://example.com/".into()).await;
    assert!(m.contains("must use https"), "{m}");
    let m = fail(format!("{base}/big")).await;
    assert!(m.contains("larger than 4096 bytes"), "{m}");
    // A redirect is not followed (it could lead past the guard): it is a non-2xx answer.
    log.lock().unwrap().clear();
    let m = fail(format!("{base}/redirect")).await;
    assert!(m.contains("answered 302"), "{m}");
    assert_eq!(log.lock().unwrap().len(), 1, "/echo was not requested");
}

/// A server that accepts the connection and never answers: the attempt
/// fails after `SLUICE_HTTP_TIMEOUT` (400 ms here; 60 s by default), or
/// after the step's own `timeout`, and the run ends instead of hanging.
#[tokio::test]
async fn a_server_that_never_answers_fails_the_step_at_its_deadline() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket); // read nothing, answer nothing
        }
    });
    let (engine, _dir) = engine().await;
    for (step, expected) in [
        (
            format!("    http: {{ url: \"http://{addr}/slow\" }}"),
            "no answer within 400ms (SLUICE_HTTP_TIMEOUT",
        ),
        (
            format!("    timeout: 300ms\n    http: {{ url: \"http://{addr}/slow\" }}"),
            "timed out after 300ms",
        ),
        // A POST that may have reached the server is not sent again, even
        // with retries allowed (RFC 9110 §9.2.2: POST is not idempotent).
        (
            format!(
                "    retry: {{ max_attempts: 3, initial: 10ms }}\n    http: {{ method: post, url: \"http://{addr}/slow\", json: {{ po: 1 }} }}"
            ),
            "(not sent again: the server may have acted on it)",
        ),
    ] {
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(50),
            common::run(&engine, &flow(&step), json!({})),
        )
        .await
        .expect("the run ends");
        assert_eq!(out.status, RunStatus::Failed);
        let m = out.error.unwrap()["message"].as_str().unwrap().to_string();
        assert!(m.contains(expected), "{m}");
        assert!(!m.contains("gave up after"), "tried once: {m}");
    }
}

#[test]
fn validation_names_bad_methods_bodies_statuses_and_secret_leaks() {
    let catalog = flow::Catalog::default();
    let errors = |step: &str| -> String {
        match flow::compile("f.yaml", &flow(step), &catalog) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    let e = errors("    http: { method: FETCH, url: \"https://x.example\" }");
    assert!(e.contains("`FETCH` is not an HTTP method"), "{e}");
    let e = errors("    http: { url: \"https://x.example\", json: {}, text: hi }");
    assert!(e.contains("sends one body, not json and text"), "{e}");
    let e = errors("    http: { url: \"https://x.example\", on_status: { \"4yy\": fail } }");
    assert!(e.contains("`4yy` is not a status"), "{e}");
    // A secret may go in a header, nowhere else.
    let e = errors("    http: { url: \"https://x.example\", json: { t: \"${{ secrets.A }}\" } }");
    assert!(e.contains("secret-leak"), "{e}");
    let e = errors("    http: { url: \"https://x.example/${{ secrets.A | reverse }}\" }");
    assert!(e.contains("secret-leak"), "{e}");
    let ok = errors(
        "    http: { url: \"https://x.example\", headers: { X-Key: \"${{ secrets.A }}\" } }",
    );
    assert_eq!(ok, "", "a secret in a header is allowed");
    // The output is typed: status is an integer, body anything.
    let e = errors(
        "    http: { url: \"https://x.example\" }\n  - id: b\n    needs: [call]\n    set: \"${{ steps.call.output.statuss }}\"",
    );
    assert!(e.contains("did you mean `status`"), "{e}");
}

/// `connection:` makes the step a passthrough: `url` must be a path, the
/// connection must exist, and a connection without an HTTP API (the
/// built-in sandbox) says so. (The passthrough itself is tested against
/// CAP in `cap_odata.rs`.)
#[tokio::test]
async fn a_passthrough_takes_a_path_of_a_known_connection_with_an_http_api() {
    let catalog = flow::Catalog::default();
    let errors = |step: &str| -> String {
        match flow::compile("f.yaml", &flow(step), &catalog) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    let e = errors("    http: { connection: sandbox, url: \"https://x.example/api\" }");
    assert!(
        e.contains("`url` is a path under the connection's base URL"),
        "{e}"
    );
    let e = errors("    http: { connection: sandbx, url: /api }");
    assert!(e.contains("sandbx"), "{e}");
    let (engine, _dir) = engine().await;
    let out = common::run(
        &engine,
        &flow("    http: { connection: sandbox, url: /api/items }"),
        json!({}),
    )
    .await;
    assert_eq!(out.status, RunStatus::Failed);
    let m = out.error.unwrap()["message"].as_str().unwrap().to_string();
    assert!(m.contains("no HTTP API to pass requests through to"), "{m}");
}
