//! Hardening of `sluice serve` against hostile clients (issue 17): a real
//! server process on 127.0.0.1.

use std::process::{Child, Command};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "common/serve.rs"]
mod serve;
use serve::BIN;

/// A `sluice serve` child process; killed on drop.
struct Server {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(flows: &[(&str, &str)], extra: &[&str]) -> Server {
        Self::start_with(flows, extra, |_| {})
    }

    /// Like [`Server::start`]; `before` gets the database URL first.
    fn start_with(flows: &[(&str, &str)], extra: &[&str], before: impl FnOnce(&str)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}/sluice.db", dir.path().display());
        before(&db);
        let flows_dir = dir.path().join("flows");
        std::fs::create_dir(&flows_dir).unwrap();
        for (name, yaml) in flows {
            std::fs::write(flows_dir.join(name), yaml).unwrap();
        }
        let mut serve = Command::new(BIN);
        serve
            .args(["serve", "--listen", "127.0.0.1:0", "--flows"])
            .arg(&flows_dir)
            .args(extra)
            .env("SLUICE_DB", &db);
        let (child, base, _) = serve::spawn(serve);
        let addr = base.trim_start_matches("http://").to_string();
        Server {
            child,
            addr,
            _dir: dir,
        }
    }
}

/// Sends raw bytes as one request and returns the status code.
async fn raw_status(addr: &str, request: &[u8]) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap_or(0);
            buf.extend_from_slice(&chunk[..n]);
            if n == 0 || buf.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await
    .expect("no answer");
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text}"))
}

const OPEN_HOOK: &str = r#"apiVersion: sluice/v1
id: open-hook
triggers:
  - webhook: { path: open }
steps:
  - id: a
    set: { x: 1 }
"#;

#[tokio::test]
async fn a_webhook_id_that_is_not_utf8_is_refused_not_treated_as_absent() {
    let s = Server::start(&[("open.yaml", OPEN_HOOK)], &[]);
    let req = |id: &[u8]| {
        let mut r = format!("POST /v1/hooks/open HTTP/1.1\r\nHost: {}\r\n", s.addr).into_bytes();
        r.extend_from_slice(b"content-type: application/json\r\nwebhook-id: ");
        r.extend_from_slice(id);
        r.extend_from_slice(b"\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}");
        r
    };
    // Latin-1 bytes (obs-text) are legal on the wire but not UTF-8: 400, and
    // a replay is refused the same way instead of starting a second run.
    for _ in 0..2 {
        assert_eq!(raw_status(&s.addr, &req(b"msg_\xe9\xff")).await, 400);
    }
    // A plain id still starts a run, and its replay does not start another.
    assert_eq!(raw_status(&s.addr, &req(b"msg_ok")).await, 202);
    assert_eq!(raw_status(&s.addr, &req(b"msg_ok")).await, 200);
}

#[tokio::test]
async fn sigterm_finishes_within_grace_while_a_half_sent_request_is_held() {
    let mut s = Server::start(&[], &["--grace", "2s"]);
    // Half a request, held open.
    let mut held = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    held.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = s.child.id().to_string();
    let started = std::time::Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        // Connections drain within grace; runs get up to grace more (none here).
        assert!(
            started.elapsed() < Duration::from_secs(2 + 3),
            "still running {:?} after SIGTERM",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
}

/// Whether the server closed `s` (EOF or reset) within `within`.
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    matches!(
        tokio::time::timeout(within, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await,
        Ok(())
    )
}

/// Sends one request on `s` and reads its answer's status line.
async fn one_request(s: &mut tokio::net::TcpStream) -> String {
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    // The body of /healthz is small: headers and body come in one read or two.
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("no answer")
            .unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&chunk[..n]);
    }
    // Let the rest of the body arrive, so the next read sees only what follows.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = tokio::time::timeout(Duration::from_millis(50), s.read(&mut chunk)).await;
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn a_half_sent_request_is_closed_after_the_header_timeout_but_an_idle_connection_is_kept() {
    let s = Server::start(&[], &["--header-timeout", "1s", "--idle-timeout", "60s"]);
    // Connected, sent nothing: owes its first request's headers.
    let mut silent = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A kept-alive connection: one request answered, then half of the next.
    let mut second_half = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    assert_eq!(one_request(&mut second_half).await, "HTTP/1.1 200 OK");
    second_half
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    // A kept-alive connection that answered one request, then says nothing.
    let mut idle = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    assert_eq!(one_request(&mut idle).await, "HTTP/1.1 200 OK");
    // Generous bounds: closed well after 1 s, never held for long.
    for (name, c) in [
        ("silent", &mut silent),
        ("half-sent", &mut half),
        ("second half-sent", &mut second_half),
    ] {
        assert!(
            closed_within(c, Duration::from_secs(15)).await,
            "{name} connection still held"
        );
    }
    // Idle for several header timeouts, far within the idle timeout: kept,
    // and it still serves.
    assert!(!closed_within(&mut idle, Duration::from_secs(2)).await);
    assert_eq!(one_request(&mut idle).await, "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let s = Server::start(&[], &["--header-timeout", "60s", "--idle-timeout", "1s"]);
    let mut idle = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    assert_eq!(one_request(&mut idle).await, "HTTP/1.1 200 OK");
    assert!(
        closed_within(&mut idle, Duration::from_secs(15)).await,
        "idle connection still held"
    );
}

#[tokio::test]
async fn at_the_connection_cap_idle_connections_are_closed_to_make_room() {
    let s = Server::start(
        &[],
        &[
            "--max-connections",
            "2",
            "--idle-timeout",
            "300s",
            "--header-timeout",
            "300s",
        ],
    );
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut c = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
        assert_eq!(one_request(&mut c).await, "HTTP/1.1 200 OK");
        idle.push(c);
    }
    // Both slots hold idle connections; a third client is served anyway,
    // long before either times out.
    let status = tokio::time::timeout(
        Duration::from_secs(30),
        raw_status(
            &s.addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n",
        ),
    )
    .await
    .expect("a third connection waited behind two idle ones");
    assert_eq!(status, 200);
    // Both were idle when the third came: both were closed for it.
    for c in &mut idle {
        assert!(closed_within(c, Duration::from_secs(15)).await);
    }
}

#[tokio::test]
async fn eleven_hundred_half_sent_requests_do_not_keep_healthz_out() {
    // The default cap (1000 connections), a short header timeout (opening
    // 1,100 connections takes a debug build a few seconds).
    let s = Server::start(&[], &["--header-timeout", "5s"]);
    // The attack of issue 17: 1,100 half-sent requests, held. 1,000 take
    // every slot, the rest wait in the listen backlog.
    let mut held = Vec::new();
    for _ in 0..1100 {
        let mut c = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
        let _ = c
            .write_all(b"POST /v1/hooks/x HTTP/1.1\r\nHost: x\r\n")
            .await;
        held.push(c);
    }
    // /healthz is answered once the header timeout frees the slots.
    let started = std::time::Instant::now();
    let answered = tokio::time::timeout(
        Duration::from_secs(60),
        raw_status(
            &s.addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(answered.ok(), Some(200), "after {:?}", started.elapsed());
    eprintln!(
        "/healthz behind 1,100 half-sent requests answered after {:?}",
        started.elapsed()
    );
    // And every held request was closed, none kept for ever.
    for c in &mut held {
        assert!(closed_within(c, Duration::from_secs(60)).await);
    }
}

#[tokio::test]
async fn at_the_connection_cap_new_connections_wait_until_one_closes() {
    let s = Server::start(&[], &["--max-connections", "2", "--header-timeout", "60s"]);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addr = s.addr.clone();
    let third = tokio::spawn(async move {
        raw_status(
            &addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n",
        )
        .await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served past the cap of 2"
    );
    drop(held);
    let status = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("served once a slot freed")
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn http2_clients_are_served_and_their_idle_connections_closed() {
    let s = Server::start(&[], &["--header-timeout", "30s", "--idle-timeout", "1s"]);
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let url = format!("http://{}/healthz", s.addr);
    for _ in 0..3 {
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), r#"{"status":"ok"}"#);
    }
    // A raw HTTP/2 connection: preface and settings, then no stream. Pings
    // come every 30 s (the header timeout), so only the idle limit closes it.
    let mut raw = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    assert!(
        closed_within(&mut raw, Duration::from_secs(15)).await,
        "idle HTTP/2 connection still held"
    );
}

const SLOW_FLOW: &str = r#"apiVersion: sluice/v1
id: slow
triggers:
  - manual: {}
steps:
  - id: pause
    wait: { duration: 2s }
"#;

#[tokio::test]
async fn sigterm_lets_a_request_in_flight_finish_then_exits() {
    let mut admin = String::new();
    let mut s = Server::start_with(&[("slow.yaml", SLOW_FLOW)], &["--grace", "20s"], |db| {
        let o = Command::new(BIN)
            .args(["token", "create", "--name", "admin", "--scope", "admin"])
            .env("SLUICE_DB", db)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        admin = String::from_utf8(o.stdout).unwrap().trim().to_string();
    });
    let client = reqwest::Client::new();
    let request = client
        .post(format!("http://{}/v1/runs", s.addr))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"flow": "slow", "wait": true}))
        .send();
    let answer = tokio::spawn(request);
    // SIGTERM while the request waits for its 2 s run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = s.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let answer = tokio::time::timeout(Duration::from_secs(30), answer)
        .await
        .expect("no answer")
        .unwrap()
        .expect("the request in flight was cut");
    assert_eq!(answer.status(), 201);
    let run: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(run["status"], "succeeded", "{run}");
    // Then the process ends, long before the grace period.
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "still running {:?} after the last answer",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_request_body_that_stalls_is_cut_but_a_slow_steady_one_is_not() {
    let s = Server::start(&[("open.yaml", OPEN_HOOK)], &["--header-timeout", "1s"]);
    let head = "POST /v1/hooks/open HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n";
    // Steady: the body in three pieces, each well within the limit.
    let mut steady = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    steady.write_all(head.as_bytes()).await.unwrap();
    for piece in [&b"{\"a\""[..], b": 12", b"345}"] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        steady.write_all(piece).await.unwrap();
    }
    let mut answer = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), steady.read_exact(&mut answer))
        .await
        .expect("no answer")
        .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 202");
    // Stalled: two bytes of the body, then nothing.
    let mut stalled = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(b"{\"").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), stalled.read_to_end(&mut answer))
        .await
        .expect("a stalled body still holds its connection")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    // 400: the body could not be read.
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}
