//! A real `sluice serve` child process on 127.0.0.1 for tests that drive the
//! server over HTTP (as `tests/server.rs` starts it), with the helpers they
//! share. Included with `#[path = "common/serve.rs"] mod serve;`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A `sluice serve` child process; killed on drop.
pub struct Server {
    child: Child,
    pub base: String,
    log: Arc<Mutex<String>>,
    /// Its database URL.
    pub db: String,
    /// Its flows directory.
    pub flows: std::path::PathBuf,
    /// The admin token.
    pub admin: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the `sluice` binary on `db`; returns (exit code, stdout, stderr).
pub fn sluice(db: &str, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(BIN)
        .args(args)
        .env("SLUICE_DB", db)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Spawns `serve` (a `sluice serve --listen 127.0.0.1:0 ...` command; logs at
/// `sluice=info` unless it sets `SLUICE_LOG`) and waits for its "listening on"
/// line: (the child, its base URL `http://127.0.0.1:PORT`, its log, kept
/// growing). ERROR lines are echoed to the test's stderr.
pub fn spawn(mut serve: Command) -> (Child, String, Arc<Mutex<String>>) {
    if !serve.get_envs().any(|(k, _)| k == "SLUICE_LOG") {
        serve.env("SLUICE_LOG", "sluice=info");
    }
    let mut child = serve
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listening on ").nth(1) {
                let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_string());
            } else if line.contains(" ERROR ") {
                eprintln!("server: {line}");
            }
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("server did not start: {}", log.lock().unwrap()));
    (child, base, log)
}

impl Server {
    /// A fresh database and flows directory with `flows` (file name, YAML).
    pub fn start(flows: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}/sluice.db", dir.path().display());
        let flows_dir = dir.path().join("flows");
        std::fs::create_dir(&flows_dir).unwrap();
        for (name, yaml) in flows {
            std::fs::write(flows_dir.join(name), yaml).unwrap();
        }
        let (code, admin, err) = sluice(
            &db,
            &["token", "create", "--name", "admin", "--scope", "admin"],
        );
        assert_eq!(code, 0, "{err}");
        let mut serve = Command::new(BIN);
        serve
            .args(["serve", "--listen", "127.0.0.1:0", "--flows"])
            .arg(&flows_dir)
            .env("SLUICE_DB", &db);
        let (child, base, log) = spawn(serve);
        Server {
            child,
            base,
            log,
            db,
            flows: flows_dir,
            admin: admin.trim().to_string(),
            _dir: dir,
        }
    }

    /// Kills the server and starts a new one on the same database and
    /// flows (as a crash and a restart would).
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut serve = Command::new(BIN);
        serve
            .args(["serve", "--listen", "127.0.0.1:0", "--flows"])
            .arg(&self.flows)
            .env("SLUICE_DB", &self.db);
        let (child, base, log) = spawn(serve);
        self.child = child;
        self.base = base;
        self.log = log;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends `req` with the admin token: (status, JSON body or its text as a JSON string).
    pub async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let (status, v, _) = json_of(req.bearer_auth(&self.admin).send().await.unwrap()).await;
        (status.as_u16(), v)
    }

    /// `POST /v1/flows` with `yaml`: (status, body).
    pub async fn post_flow(&self, yaml: &str) -> (u16, Value) {
        let req = client()
            .post(self.url("/v1/flows"))
            .header("content-type", "application/yaml")
            .body(yaml.to_string());
        self.send(req).await
    }

    /// `POST /v1/runs` of `flow` with `wait: true`: (status, the run).
    pub async fn run_and_wait(&self, flow: &str) -> (u16, Value) {
        let req = client()
            .post(self.url("/v1/runs"))
            .json(&serde_json::json!({"flow": flow, "wait": true}));
        self.send(req).await
    }

    /// `GET path` with the admin token, which must answer 200.
    pub async fn get(&self, path: &str) -> Value {
        let (status, v) = self.send(client().get(self.url(path))).await;
        assert_eq!(status, 200, "{v}");
        v
    }

    /// `GET /v1/runs/{id}`.
    pub async fn run(&self, id: &str) -> Value {
        let (status, run, _) = json_of(
            client()
                .get(self.url(&format!("/v1/runs/{id}")))
                .bearer_auth(&self.admin)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{run}");
        run
    }

    /// Polls a run until it is final.
    pub async fn wait_run(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let run = self.run(id).await;
            if matches!(
                run["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                return run;
            }
            assert!(Instant::now() < deadline, "run {id} did not finish: {run}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The runs of a flow, newest first.
    pub async fn runs_of(&self, flow: &str) -> Vec<Value> {
        let (_, v, _) = json_of(
            client()
                .get(self.url(&format!("/v1/runs?flow={flow}")))
                .bearer_auth(&self.admin)
                .send()
                .await
                .unwrap(),
        )
        .await;
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// Uploads a flow (a new revision when it changed); returns its revision.
    pub async fn upload(&self, yaml: &str) -> i64 {
        let (status, v, _) = json_of(
            client()
                .post(self.url("/v1/flows"))
                .bearer_auth(&self.admin)
                .header("content-type", "application/yaml")
                .body(yaml.to_string())
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert!(status.is_success(), "upload refused: {v}");
        v["revision"]
            .as_i64()
            .unwrap_or_else(|| panic!("no revision in {v}"))
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Status, JSON body (or the text as a JSON string) and headers.
pub async fn json_of(res: reqwest::Response) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let status = res.status();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v, headers)
}
