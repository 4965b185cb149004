//! Hardening of `sluice serve` against hostile clients (issue 17): a real
//! server process on 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

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
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}/sluice.db", dir.path().display());
        let flows_dir = dir.path().join("flows");
        std::fs::create_dir(&flows_dir).unwrap();
        for (name, yaml) in flows {
            std::fs::write(flows_dir.join(name), yaml).unwrap();
        }
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--flows"])
            .arg(&flows_dir)
            .args(extra)
            .env("SLUICE_DB", &db)
            .env("SLUICE_LOG", "sluice=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let a = addr.split_whitespace().next().unwrap_or("");
                    let _ = tx.send(a.trim_start_matches("http://").to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("server did not start");
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

#[tokio::test]
async fn half_sent_and_idle_connections_are_closed_after_the_header_timeout() {
    let s = Server::start(&[], &["--header-timeout", "1s"]);
    let mut half = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A kept-alive connection that answered one request, then says nothing.
    let mut idle = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // Generous bounds: closed well after 1 s, never held for long.
    assert!(
        closed_within(&mut half, Duration::from_secs(15)).await,
        "half-sent request still held"
    );
    assert!(
        closed_within(&mut idle, Duration::from_secs(15)).await,
        "idle connection still held"
    );
}

#[tokio::test]
async fn more_hostile_connections_than_the_cap_do_not_keep_healthz_out() {
    let s = Server::start(&[], &["--max-connections", "50", "--header-timeout", "1s"]);
    // 80 half-sent requests: 50 take every slot, 30 wait in the backlog.
    let mut held = Vec::new();
    for _ in 0..80 {
        let mut c = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
        let _ = c
            .write_all(b"POST /v1/hooks/x HTTP/1.1\r\nHost: x\r\n")
            .await;
        held.push(c);
    }
    // /healthz is answered once the header timeout frees the slots, however
    // many more half-sent requests keep coming.
    let started = std::time::Instant::now();
    let answered = tokio::time::timeout(
        Duration::from_secs(30),
        raw_status(
            &s.addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(answered.ok(), Some(200), "after {:?}", started.elapsed());
    drop(held);
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
