//! A webhook receiver for Sluice's deliveries, done the way a receiver
//! should be: it verifies the Standard Webhooks signature in constant time,
//! rejects timestamps more than 5 minutes off, deduplicates by `webhook-id`,
//! hands the event to a queue and answers 200 at once.
//!
//! Run: `WEBHOOK_SECRET=whsec_... cargo run --example webhook-receiver`
//! (listens on `LISTEN`, default 127.0.0.1:9000, path `/webhooks`).
//!
//! It is self-contained on purpose (axum, hmac, sha2, base64): copy it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::sync::mpsc;

/// How far a `webhook-timestamp` may be from now.
const TOLERANCE: i64 = 5 * 60;
/// How long ids are remembered for deduplication (longer than the tolerance).
const DEDUP_WINDOW: Duration = Duration::from_secs(10 * 60);

/// An accepted event, as handed to the queue.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// `webhook-id`.
    pub id: String,
    /// The raw JSON body.
    pub body: String,
}

#[derive(Clone)]
struct Receiver {
    key: Arc<Vec<u8>>,
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    queue: mpsc::Sender<Accepted>,
}

/// Why a delivery was rejected.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    /// A required header is absent.
    MissingHeader(&'static str),
    /// The timestamp is not a number or too far from now.
    BadTimestamp(String),
    /// No signature matches.
    BadSignature,
}

/// Checks headers and body against the secret key.
pub fn verify(key: &[u8], headers: &HeaderMap, body: &[u8], now: i64) -> Result<String, Rejection> {
    let get = |name: &'static str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(Rejection::MissingHeader(name))
    };
    let id = get("webhook-id")?;
    let ts_text = get("webhook-timestamp")?;
    let signatures = get("webhook-signature")?;
    let ts: i64 = ts_text
        .parse()
        .map_err(|_| Rejection::BadTimestamp(format!("`{ts_text}` is not a number")))?;
    if (now - ts).abs() > TOLERANCE {
        return Err(Rejection::BadTimestamp(format!(
            "{}s away from now; the limit is {TOLERANCE}s",
            now - ts
        )));
    }
    for sig in signatures.split(' ') {
        let Some(b64) = sig.strip_prefix("v1,") else {
            continue;
        };
        let Ok(given) = STANDARD.decode(b64) else {
            continue;
        };
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        // verify_slice compares in constant time.
        if mac.verify_slice(&given).is_ok() {
            return Ok(id.to_string());
        }
    }
    Err(Rejection::BadSignature)
}

async fn receive(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let now = chrono::Utc::now().timestamp();
    let id = match verify(&r.key, &headers, &body, now) {
        Ok(id) => id,
        Err(Rejection::BadSignature) => {
            return (StatusCode::UNAUTHORIZED, "invalid signature".into());
        }
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e:?}")),
    };
    {
        let mut seen = r.seen.lock().expect("dedup lock");
        seen.retain(|_, at| at.elapsed() < DEDUP_WINDOW);
        if seen.insert(id.clone(), Instant::now()).is_some() {
            return (StatusCode::OK, "duplicate".into());
        }
    }
    let event = Accepted {
        id,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    if r.queue.try_send(event).is_err() {
        // Queue full: let the sender retry later rather than lose it.
        return (StatusCode::SERVICE_UNAVAILABLE, "busy".into());
    }
    (StatusCode::OK, "ok".into())
}

/// The receiver's routes, with the queue its events go to.
pub fn app(secret: &str, queue: mpsc::Sender<Accepted>) -> Result<Router, String> {
    let b64 = secret
        .strip_prefix("whsec_")
        .ok_or("the secret must start with whsec_")?;
    let key = STANDARD
        .decode(b64)
        .map_err(|e| format!("the secret is not base64: {e}"))?;
    let state = Receiver {
        key: Arc::new(key),
        seen: Arc::default(),
        queue,
    };
    Ok(Router::new()
        .route("/webhooks", post(receive))
        .with_state(state))
}

#[tokio::main]
async fn main() {
    let secret = std::env::var("WEBHOOK_SECRET").unwrap_or_else(|_| {
        eprintln!("set WEBHOOK_SECRET to the endpoint's whsec_... secret");
        std::process::exit(2);
    });
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:9000".into());
    let (tx, mut rx) = mpsc::channel::<Accepted>(10_000);
    let app = app(&secret, tx).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2);
    });
    // The queue's consumer: real receivers process here, after answering.
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            println!("{} {}", e.id, e.body);
        }
    });
    let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
    eprintln!("receiving on http://{listen}/webhooks");
    axum::serve(listener, app).await.expect("serve");
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn signed(body: &str, ts: i64, secret: &str) -> HeaderMap {
        let sig = standardwebhooks::Webhook::new(secret)
            .unwrap()
            .sign("msg_1", ts, body.as_bytes())
            .unwrap();
        let mut h = HeaderMap::new();
        h.insert("webhook-id", "msg_1".parse().unwrap());
        h.insert("webhook-timestamp", ts.to_string().parse().unwrap());
        h.insert("webhook-signature", sig.parse().unwrap());
        h
    }

    async fn serve() -> (String, mpsc::Receiver<Accepted>) {
        let (tx, rx) = mpsc::channel(10);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/webhooks", listener.local_addr().unwrap());
        let app = app(SECRET, tx).unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, rx)
    }

    async fn post(url: &str, headers: HeaderMap, body: &str) -> u16 {
        let mut req = reqwest::Client::new().post(url).body(body.to_string());
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.to_str().unwrap());
        }
        req.send().await.unwrap().status().as_u16()
    }

    #[tokio::test]
    async fn accepts_a_valid_delivery_once_and_queues_it() {
        let (url, mut rx) = serve().await;
        let now = chrono::Utc::now().timestamp();
        let body = r#"{"type":"po.high_value"}"#;
        assert_eq!(post(&url, signed(body, now, SECRET), body).await, 200);
        assert_eq!(
            post(&url, signed(body, now, SECRET), body).await,
            200,
            "duplicates are acknowledged"
        );
        assert_eq!(rx.recv().await.unwrap().body, body);
        assert!(rx.try_recv().is_err(), "the duplicate was not queued again");
    }

    #[tokio::test]
    async fn rejects_tampered_bodies_wrong_secrets_and_stale_timestamps() {
        let (url, mut rx) = serve().await;
        let now = chrono::Utc::now().timestamp();
        let body = r#"{"total":10}"#;
        assert_eq!(
            post(&url, signed(body, now, SECRET), r#"{"total":99}"#).await,
            401,
            "tampered body"
        );
        assert_eq!(
            post(
                &url,
                signed(body, now, "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
                body
            )
            .await,
            401,
            "wrong secret"
        );
        assert_eq!(
            post(&url, signed(body, now - 6 * 60, SECRET), body).await,
            400,
            "stale timestamp"
        );
        assert_eq!(post(&url, HeaderMap::new(), body).await, 400, "no headers");
        assert!(rx.try_recv().is_err(), "nothing was queued");
    }

    #[test]
    fn verify_names_what_is_wrong() {
        let key = STANDARD.decode(&SECRET[6..]).unwrap();
        let h = signed("{}", 1000, SECRET);
        assert_eq!(verify(&key, &h, b"{}", 1000), Ok("msg_1".to_string()));
        assert!(matches!(
            verify(&key, &h, b"{}", 1000 + 301),
            Err(Rejection::BadTimestamp(_))
        ));
        assert_eq!(
            verify(&key, &HeaderMap::new(), b"{}", 1000),
            Err(Rejection::MissingHeader("webhook-id"))
        );
    }
}
