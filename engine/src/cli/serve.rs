//! `sluice serve`, `sluice token ...` and `sluice run --server URL`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use serde_json::{Map, Value, json};

use super::{CliError, DbArgs, EXIT_FAILED, EXIT_OK, print_json};
use crate::server::auth::{self, Scope};
use crate::server::{ServeConfig, serve};
use crate::store::Store;

#[derive(clap::Args, Debug)]
pub(super) struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "SLUICE_LISTEN", default_value = crate::server::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Flow files to load at start.
    #[arg(long = "flows", env = "SLUICE_FLOWS_DIR", default_value = "flows")]
    flows_dir: PathBuf,
    /// Requests per second per API token (for tokens without their own limit).
    #[arg(long, default_value_t = 100)]
    token_rate: i64,
    /// Runs executing at once in this process.
    #[arg(long, default_value_t = 512)]
    max_runs: usize,
    /// How long shutdown waits for in-flight runs and open connections (e.g. 30s).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Connections served at once; more wait in the listen backlog, and idle
    /// kept-alive connections are closed to make room.
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS", default_value_t = 1000)]
    max_connections: usize,
    /// Time a client has to send a request's headers, from connecting or
    /// from the first byte of its next request; also the longest pause
    /// inside a request body (e.g. 10s).
    #[arg(long, env = "SLUICE_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    header_timeout: Duration,
    /// Time a kept-alive connection may sit idle between requests; keep it
    /// above a load balancer's idle timeout (e.g. 75s).
    #[arg(long, env = "SLUICE_IDLE_TIMEOUT", default_value = "75s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    #[command(flatten)]
    db: DbArgs,
}

pub(super) async fn serve_command(args: ServeArgs) -> Result<i32, CliError> {
    // A zero limit would close every connection before its first request.
    for (flag, limit) in [
        ("--header-timeout", args.header_timeout),
        ("--idle-timeout", args.idle_timeout),
    ] {
        if limit.is_zero() {
            return Err(CliError::invalid(format!(
                "{flag} must be longer than 0 (e.g. 10s)"
            )));
        }
    }
    let config = ServeConfig {
        listen: args.listen,
        db: args.db.db.clone(),
        flows_dir: args.flows_dir,
        token_rate: args.token_rate,
        max_runs: args.max_runs.max(1),
        lease: args.db.lease,
        grace: args.grace,
        plugin_cache: Some(super::plugin::cache_dir()),
        connectors_dir: Some(super::connection::definitions_dir()),
        max_connections: args.max_connections.max(1),
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
    };
    let db = crate::store::redact_password(&config.db);
    serve(config, shutdown_signal(), move |addr| {
        eprintln!("sluice listening on http://{addr} (database {db})");
    })
    .await
    .map_err(CliError::failed)?;
    eprintln!("sluice stopped");
    Ok(EXIT_OK)
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    eprintln!("shutting down: no new runs; waiting for in-flight runs");
}

#[derive(Subcommand, Debug)]
pub(super) enum TokenCommand {
    /// Create an API token; it is printed once and stored only as a hash.
    Create {
        /// Who or what the token is for.
        #[arg(long)]
        name: String,
        /// admin, write or read.
        #[arg(long)]
        scope: String,
        /// Requests per second (burst the same); default: the server's `--token-rate`.
        #[arg(long)]
        rate: Option<i64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List tokens (never their secrets).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revoke a token by id.
    Revoke {
        /// Token id (the part after `slc_`).
        id: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

pub(super) async fn token_command(cmd: TokenCommand) -> Result<i32, CliError> {
    match cmd {
        TokenCommand::Create {
            name,
            scope,
            rate,
            json: as_json,
            db,
        } => {
            let scope: Scope = scope.parse().map_err(CliError::invalid)?;
            let store = Store::connect(&db.db).await?;
            let t = auth::create(&store, &name, scope, rate)
                .await
                .map_err(CliError::invalid)?;
            if as_json {
                let mut v = serde_json::to_value(&t.row).expect("token rows serialize");
                v["token"] = Value::String(t.text);
                print_json(&v);
            } else {
                eprintln!(
                    "token `{}` ({}) created; it is shown only now:",
                    name,
                    scope.as_str()
                );
                outln!("{}", t.text);
            }
            Ok(EXIT_OK)
        }
        TokenCommand::List { json: as_json, db } => {
            let store = Store::connect(&db.db).await?;
            let tokens = store.tokens().await?;
            if as_json {
                print_json(&tokens);
            } else {
                outln!(
                    "{:<20}  {:<24}  {:<6}  {:<8}  STATE",
                    "ID",
                    "NAME",
                    "SCOPE",
                    "RATE/S"
                );
                for t in tokens {
                    outln!(
                        "{:<20}  {:<24}  {:<6}  {:<8}  {}",
                        t.id,
                        t.name,
                        t.scope,
                        t.rate_per_sec
                            .map(|r| r.to_string())
                            .unwrap_or_else(|| "default".into()),
                        if t.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "active"
                        }
                    );
                }
            }
            Ok(EXIT_OK)
        }
        TokenCommand::Revoke { id, db } => {
            let store = Store::connect(&db.db).await?;
            if store.revoke_token(&id).await? {
                eprintln!("token {id} revoked");
                Ok(EXIT_OK)
            } else {
                Err(CliError::invalid(format!("no active token `{id}`")))
            }
        }
    }
}

/// The message of an API error body, or the body itself.
fn api_message(status: reqwest::StatusCode, body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    match parsed.as_ref().and_then(|v| v.get("error")) {
        Some(e) => {
            let mut m = format!(
                "{} {}: {}",
                status.as_u16(),
                e["code"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            );
            if let Some(diags) = e["details"]["diagnostics"].as_array() {
                for d in diags {
                    m.push_str(&format!(
                        "\n  line {}:{}: {}",
                        d["line"],
                        d["column"],
                        d["message"].as_str().unwrap_or("")
                    ));
                }
            }
            m
        }
        None => format!("{}: {body}", status.as_u16()),
    }
}

/// `sluice run FILE --server URL`: uploads the flow, starts a run and waits for it.
pub(super) async fn run_on_server(
    file: &Path,
    inputs: Map<String, Value>,
    server: &str,
    token: Option<&str>,
    json_out: bool,
) -> Result<i32, CliError> {
    let token = token
        .ok_or_else(|| CliError::invalid("--server needs an API token: --token or SLUICE_TOKEN"))?;
    let source = std::fs::read_to_string(file)
        .map_err(|e| CliError::invalid(format!("{}: {e}", file.display())))?;
    let base = server.trim_end_matches('/');
    let http = reqwest::Client::new();
    let fail = |e: reqwest::Error| CliError::failed(format!("{base}: {e}"));
    let res = http
        .post(format!("{base}/v1/flows"))
        .bearer_auth(token)
        .header("content-type", "application/yaml")
        .body(source)
        .send()
        .await
        .map_err(fail)?;
    let status = res.status();
    let text = res.text().await.map_err(fail)?;
    if !status.is_success() {
        return Err(CliError::invalid(format!(
            "{}: upload refused: {}",
            file.display(),
            api_message(status, &text)
        )));
    }
    let flow: Value = serde_json::from_str(&text).map_err(|e| CliError::failed(e.to_string()))?;
    let flow_id = flow["id"].as_str().unwrap_or_default().to_string();
    let res = http
        .post(format!("{base}/v1/runs"))
        .bearer_auth(token)
        .json(&json!({"flow": flow_id, "inputs": inputs, "wait": true, "timeout_s": 600}))
        .send()
        .await
        .map_err(fail)?;
    let status = res.status();
    let text = res.text().await.map_err(fail)?;
    if !status.is_success() {
        return Err(CliError::failed(format!(
            "run refused: {}",
            api_message(status, &text)
        )));
    }
    let mut run: Value =
        serde_json::from_str(&text).map_err(|e| CliError::failed(e.to_string()))?;
    let run_id = run["id"].as_str().unwrap_or_default().to_string();
    while matches!(run["status"].as_str(), Some("queued" | "running")) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        run = http
            .get(format!("{base}/v1/runs/{run_id}"))
            .bearer_auth(token)
            .send()
            .await
            .map_err(fail)?
            .json()
            .await
            .map_err(fail)?;
    }
    let ok = run["status"] == "succeeded";
    if json_out {
        print_json(&json!({
            "run_id": run_id, "flow_id": flow_id, "status": run["status"],
            "output": run["output"], "error": run["error"],
        }));
    } else if ok {
        eprintln!("run {run_id} succeeded on {base}");
        print_json(&run["output"]);
    } else {
        eprintln!(
            "run {run_id} {} on {base}: {}",
            run["status"].as_str().unwrap_or("?"),
            run["error"]["message"]
                .as_str()
                .unwrap_or("no error recorded")
        );
    }
    Ok(if ok { EXIT_OK } else { EXIT_FAILED })
}
