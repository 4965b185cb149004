//! What every emulator shares: the server, the fault switches, the request
//! log, and the record store with change stamps.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// A fault to inject into the next requests.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer this status (e.g. 503) with a small JSON error.
    Status(u16),
    /// Answer `429` with this `Retry-After` header value.
    Throttle(String),
    /// Answer `200` with an HTML body.
    NotJson,
    /// Serve this request normally (to place faults after some requests).
    Pass,
    /// Do what the request asks, then answer this status instead (e.g. a
    /// gateway timing out after the system created the record): the
    /// client cannot tell that the write was done.
    LostAnswer(u16),
}

/// A logged request.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Decoded query pairs (`%XX` only: a `+` stays a plus sign).
    pub query: Vec<(String, String)>,
    /// The query as sent, undecoded.
    pub raw_query: Option<String>,
    /// Headers (lowercase names).
    pub headers: BTreeMap<String, String>,
    /// Body text.
    pub body: String,
}

impl Logged {
    /// A query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// One stored record. Its JSON text is kept beside it, written when the
/// record is stored or changed, so that a page of records is served by
/// concatenating text: a real system's own serializing runs on its own
/// machine, and the benchmarks that read from an emulator over loopback
/// should spend the two cores here on Sluice, not on the emulator.
#[derive(Debug, Clone)]
pub struct Rec {
    /// When it last changed (ms).
    pub changed_ms: i64,
    value: Value,
    json: String,
}

impl Rec {
    /// A record changed at `changed_ms`.
    pub fn new(changed_ms: i64, value: Value) -> Rec {
        let json = value.to_string();
        Rec {
            changed_ms,
            value,
            json,
        }
    }

    /// The system's JSON.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The same, as JSON text.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// Changes the record at `ms` (`change` edits it, `stamp` marks it changed).
    pub fn change(&mut self, ms: i64, change: impl FnOnce(&mut Value)) {
        change(&mut self.value);
        self.changed_ms = ms;
        self.json = self.value.to_string();
    }
}

/// State shared by an emulator's handlers.
#[derive(Debug, Default)]
pub struct Shared {
    /// Collections of records, by name.
    pub data: Mutex<BTreeMap<String, Vec<Rec>>>,
    /// Faults for the next requests, in order.
    pub faults: Mutex<Vec<Fault>>,
    /// Delay added to every response.
    pub delay: Mutex<Duration>,
    /// Every request seen.
    pub log: Mutex<Vec<Logged>>,
    /// Next links point at another host.
    pub foreign_next_link: Mutex<bool>,
    /// Every page has a next link.
    pub endless: Mutex<bool>,
    /// Next links are relative to the page's context URL (OData v4), as
    /// CAP and other services write them.
    pub relative_next_link: Mutex<bool>,
    /// Pages lack their records key.
    pub no_records_key: Mutex<bool>,
    /// Server-side page size cap (server-driven paging), when set.
    pub page_cap: Mutex<Option<usize>>,
    /// Issued OAuth tokens and when they expire (ms).
    pub tokens: Mutex<BTreeMap<String, i64>>,
    /// Token requests seen.
    pub token_requests: Mutex<u32>,
    /// Token lifetime (s).
    pub token_ttl: Mutex<u64>,
    /// The credential the emulator accepts (password, client secret or API key).
    pub secret: Mutex<String>,
    /// Counter for created ids and tokens.
    pub seq: Mutex<u64>,
    /// Idempotency keys of writes already done, and the answer each got
    /// (the `Location` of the record), so a repeated write is not done twice.
    pub idempotency: Mutex<BTreeMap<String, String>>,
}

impl Shared {
    /// `n` capped by the page cap.
    pub fn cap(&self, n: usize) -> usize {
        lock(&self.page_cap).map_or(n, |c| n.min(c))
    }

    /// The next number of a sequence.
    pub fn next_seq(&self) -> u64 {
        let mut s = lock(&self.seq);
        *s += 1;
        *s
    }

    /// Fills `collection` with `n` fixture records made by `make`; record `i`
    /// changed at [`fixture_ms`]`(i)`.
    pub fn seed(&self, collection: &str, n: usize, make: impl Fn(usize) -> Value) {
        lock(&self.data).insert(
            collection.to_string(),
            (0..n).map(|i| Rec::new(fixture_ms(i), make(i))).collect(),
        );
    }

    /// Stores a record written through the API, changed at `ms`.
    pub fn push(&self, collection: &str, ms: i64, value: Value) {
        lock(&self.data)
            .entry(collection.to_string())
            .or_default()
            .push(Rec::new(ms, value));
    }

    /// Checks an OAuth 2.0 client-credentials token request (form body):
    /// grant type, client id, the accepted secret and, when `scope_suffix` is
    /// given, a scope ending with it. A refused request is counted here; an
    /// accepted one when its token is issued.
    pub fn client_credentials_ok(
        &self,
        body: &str,
        client_id: &str,
        scope_suffix: Option<&str>,
    ) -> bool {
        let form: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        let ok = param(&form, "grant_type") == Some("client_credentials")
            && param(&form, "client_id") == Some(client_id)
            && param(&form, "client_secret") == Some(lock(&self.secret).as_str())
            && scope_suffix
                .is_none_or(|sfx| param(&form, "scope").is_some_and(|s| s.ends_with(sfx)));
        if !ok {
            *lock(&self.token_requests) += 1;
        }
        ok
    }

    /// Issues an OAuth token.
    pub fn issue_token(&self) -> (String, u64) {
        *lock(&self.token_requests) += 1;
        let ttl = *lock(&self.token_ttl);
        let t = format!("tok-{}", self.next_seq());
        lock(&self.tokens).insert(t.clone(), now_ms() + ttl as i64 * 1000);
        (t, ttl)
    }

    /// Whether a bearer header carries a live token.
    pub fn bearer_ok(&self, headers: &HeaderMap) -> bool {
        let Some(t) = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        lock(&self.tokens).get(t).is_some_and(|exp| *exp > now_ms())
    }

    /// Calls `f` with one page of a collection's records changed after
    /// `after` (`take` records from `skip`) and how many match in all,
    /// without copying them.
    pub fn with_page<R>(
        &self,
        collection: &str,
        after: Option<i64>,
        skip: usize,
        take: usize,
        f: impl FnOnce(&[&Rec], usize) -> R,
    ) -> R {
        let data = lock(&self.data);
        let rs = data.get(collection).map(Vec::as_slice).unwrap_or_default();
        let matching = rs.iter().filter(|r| after.is_none_or(|a| r.changed_ms > a));
        let total = matching.clone().count();
        let page: Vec<&Rec> = matching.skip(skip).take(take).collect();
        f(&page, total)
    }

    /// A collection's records changed after `after` (all when `None`), in stored order.
    pub fn select(&self, collection: &str, after: Option<i64>) -> Vec<Value> {
        lock(&self.data)
            .get(collection)
            .map(|rs| {
                rs.iter()
                    .filter(|r| after.is_none_or(|a| r.changed_ms > a))
                    .map(|r| r.value.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Locks emulator state; a handler that panicked does not poison it for the
/// rest of the test.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A running emulator.
pub struct Emulator {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// Its address.
    pub addr: SocketAddr,
    /// Its state.
    pub shared: Arc<Shared>,
    /// How a system stamps a record as changed: (record, ms).
    stamp: fn(&mut Value, i64),
    /// JSON key of the remote id in a record.
    id_key: &'static str,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Emulator {
    /// Serves `router` (whose state is `shared`) on a free loopback port.
    pub async fn serve(
        router: Router<Arc<Shared>>,
        shared: Arc<Shared>,
        stamp: fn(&mut Value, i64),
        id_key: &'static str,
    ) -> Emulator {
        Self::serve_on(router, shared, stamp, id_key, 0).await
    }

    /// Serves on a given port (0: any).
    pub async fn serve_on(
        router: Router<Arc<Shared>>,
        shared: Arc<Shared>,
        stamp: fn(&mut Value, i64),
        id_key: &'static str,
        port: u16,
    ) -> Emulator {
        let app = router
            .layer(middleware::from_fn_with_state(shared.clone(), faults))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Emulator {
            base_url: format!("http://{addr}"),
            addr,
            shared,
            stamp,
            id_key,
            task,
        }
    }

    /// Queues faults for the next requests.
    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        lock(&self.shared.faults).extend(faults);
    }

    /// Delays every response.
    pub fn set_delay(&self, d: Duration) {
        *lock(&self.shared.delay) = d;
    }

    /// Next links point at another host.
    pub fn set_foreign_next_link(&self, on: bool) {
        *lock(&self.shared.foreign_next_link) = on;
    }

    /// Next links are relative to the page's context URL (OData v4).
    pub fn set_relative_next_link(&self, on: bool) {
        *lock(&self.shared.relative_next_link) = on;
    }

    /// Every page has a next link.
    pub fn set_endless(&self, on: bool) {
        *lock(&self.shared.endless) = on;
    }

    /// Pages lack their records key.
    pub fn set_no_records_key(&self, on: bool) {
        *lock(&self.shared.no_records_key) = on;
    }

    /// Caps every page at `n` records, whatever the client asks for.
    pub fn set_page_cap(&self, n: usize) {
        *lock(&self.shared.page_cap) = Some(n);
    }

    /// Changes the accepted credential.
    pub fn set_secret(&self, s: &str) {
        *lock(&self.shared.secret) = s.to_string();
    }

    /// Sets the lifetime of tokens issued from now on.
    pub fn set_token_ttl(&self, secs: u64) {
        *lock(&self.shared.token_ttl) = secs;
    }

    /// Token requests seen so far.
    pub fn token_requests(&self) -> u32 {
        *lock(&self.shared.token_requests)
    }

    /// Requests seen so far (token requests included).
    pub fn requests(&self) -> Vec<Logged> {
        lock(&self.shared.log).clone()
    }

    /// Requests whose path ends with `suffix`.
    pub fn requests_to(&self, suffix: &str) -> Vec<Logged> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.ends_with(suffix))
            .collect()
    }

    /// Forgets the request log.
    pub fn clear_log(&self) {
        lock(&self.shared.log).clear();
    }

    /// Number of records in a collection.
    pub fn count(&self, collection: &str) -> usize {
        lock(&self.shared.data).get(collection).map_or(0, Vec::len)
    }

    /// Merges `patch` into a record and stamps it changed now.
    pub fn update(&self, collection: &str, remote_id: &str, patch: Value) -> bool {
        let mut data = lock(&self.shared.data);
        let Some(r) = data.get_mut(collection).and_then(|rs| {
            rs.iter_mut()
                .find(|r| id_text(&r.value[self.id_key]) == remote_id)
        }) else {
            return false;
        };
        let now = now_ms();
        r.change(now, |v| {
            if let (Some(obj), Value::Object(p)) = (v.as_object_mut(), patch) {
                obj.extend(p);
            }
            (self.stamp)(v, now);
        });
        true
    }

    /// Deletes a record.
    pub fn delete(&self, collection: &str, remote_id: &str) -> bool {
        let mut data = lock(&self.shared.data);
        let Some(rs) = data.get_mut(collection) else {
            return false;
        };
        let before = rs.len();
        rs.retain(|r| id_text(&r.value[self.id_key]) != remote_id);
        rs.len() < before
    }

    /// A record by remote id.
    pub fn record(&self, collection: &str, remote_id: &str) -> Option<Value> {
        lock(&self.shared.data)
            .get(collection)?
            .iter()
            .find(|r| id_text(&r.value[self.id_key]) == remote_id)
            .map(|r| r.value.clone())
    }
}

/// An id value as text.
pub fn id_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

async fn faults(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = to_bytes(body, 16 * 1024 * 1024).await.unwrap_or_default();
    let query = pairs(parts.uri.query());
    lock(&shared.log).push(Logged {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query,
        raw_query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: String::from_utf8_lossy(&bytes).to_string(),
    });
    let delay = *lock(&shared.delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let fault = {
        let mut f = lock(&shared.faults);
        (!f.is_empty()).then(|| f.remove(0))
    };
    match fault {
        Some(Fault::Status(s)) => {
            let status = StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return (
                status,
                [("content-type", "application/json")],
                format!(r#"{{"error":"injected {s}"}}"#),
            )
                .into_response();
        }
        Some(Fault::Throttle(after)) => {
            let mut r = (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response();
            r.headers_mut().insert(
                "retry-after",
                HeaderValue::from_str(&after).expect("header value"),
            );
            return r;
        }
        Some(Fault::NotJson) => {
            return (
                StatusCode::OK,
                [("content-type", "text/html")],
                "<html><body>Maintenance in progress</body></html>",
            )
                .into_response();
        }
        Some(Fault::LostAnswer(s)) => {
            let _done = next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
            let status = StatusCode::from_u16(s).unwrap_or(StatusCode::GATEWAY_TIMEOUT);
            return (
                status,
                [("content-type", "application/json")],
                format!(r#"{{"error":"injected {s} after the request was done"}}"#),
            )
                .into_response();
        }
        Some(Fault::Pass) | None => {}
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// A JSON response.
pub fn json(status: StatusCode, v: Value) -> Response {
    json_text(status, v.to_string())
}

/// A JSON response from JSON text.
pub fn json_text(status: StatusCode, text: String) -> Response {
    (status, [("content-type", "application/json")], text).into_response()
}

/// The base of links for a request: its Host, or another host when asked.
pub fn link_base(shared: &Shared, headers: &HeaderMap) -> String {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    if *lock(&shared.foreign_next_link) {
        let port = host.rsplit(':').next().unwrap_or("80");
        format!("http://evil.example:{port}")
    } else {
        format!("http://{host}")
    }
}

/// A link to the same path with `set` replacing parameters of `query`.
pub fn link(base: &str, path: &str, query: &[(String, String)], set: &[(&str, String)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .filter(|(k, _)| !set.iter().any(|(s, _)| s == k))
        .cloned()
        .collect();
    pairs.extend(set.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let q = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    format!("{base}{path}?{q}")
}

/// Percent-encodes a query name or value as RFC 3986 and the OData URL
/// conventions want: a space is `%20` (`+` is a plus sign), `$` stays.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'$'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b','
                    | b':'
                    | b'/'
                    | b'@'
            )
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses the first RFC 3339 timestamp found in `text` (with or without offset).
pub fn timestamp_in(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    for i in 0..bytes.len().saturating_sub(18) {
        if bytes[i].is_ascii_digit() && bytes.get(i + 4) == Some(&b'-') {
            let rest = &text[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | ':' | '.' | '+')))
                .unwrap_or(rest.len());
            let t = &rest[..end];
            if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
                return Some(d.timestamp_millis());
            }
            if let Ok(d) = chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S") {
                return Some(d.and_utc().timestamp_millis());
            }
        }
    }
    None
}

/// Query pairs of a request.
/// The pairs of a raw query, read as an OData service reads a URL (RFC 3986):
/// only `%XX` is decoded, so a `+` stays a plus sign. A client that sends a
/// space as `+` (HTML form encoding) gets `lastModifiedDateTime+gt+...`, which
/// no filter understands, as from a real service.
pub fn pairs(q: Option<&str>) -> Vec<(String, String)> {
    q.map(|q| {
        q.split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect()
    })
    .unwrap_or_default()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A query parameter.
pub fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A fixed point in time fixtures count from: 2024-01-01T00:00:00Z.
pub const EPOCH_MS: i64 = 1_704_067_200_000;

/// Fixture timestamps: record `i` changed `i` minutes after [`EPOCH_MS`].
pub fn fixture_ms(i: usize) -> i64 {
    EPOCH_MS + i as i64 * 60_000
}

/// RFC 3339 text of a time.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("in range")
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `YYYY-MM-DD` of a time.
pub fn date(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("in range")
        .format("%Y-%m-%d")
        .to_string()
}

/// Vendor numbers fixtures use.
pub const VENDORS: &[(&str, &str)] = &[
    ("100001", "Acme Industrial Supply"),
    ("100002", "Nordic Bearings AB"),
    ("100003", "Rhein Hydraulik GmbH"),
    ("100004", "Great Lakes Valves Inc."),
    ("100005", "Pacific Fasteners Ltd"),
    ("100006", "Iberia Motores SL"),
];

/// Materials fixtures use: (id, text, unit, price).
pub const MATERIALS: &[(&str, &str, &str, &str)] = &[
    ("MAT-1001", "Ball bearing 6204-2RS", "EA", "4.85"),
    ("MAT-1002", "Hydraulic hose 1/2in", "M", "12.40"),
    ("MAT-1003", "Gear oil ISO VG 220", "L", "7.90"),
    ("MAT-1004", "V-belt SPA 1250", "EA", "18.75"),
    ("MAT-1005", "Pump seal kit", "EA", "142.00"),
    ("MAT-1006", "Stainless bolt M12x40", "EA", "0.62"),
];
