//! The delivery worker: claims due messages from the outbox with a lease,
//! POSTs them signed, logs every attempt, and schedules retries.
//!
//! Each attempt has one deadline (10 s) for connecting, headers and body. A
//! 2xx is success; anything else, a timeout or a network error is retried
//! on the schedule (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, each ±20 %),
//! no sooner than a `Retry-After` asks (bounded). `410 Gone` disables the
//! endpoint. A message whose attempts are exhausted is kept as `failed` and
//! can be resent. A worker that dies mid-delivery leaves its messages
//! leased; another claims them when the lease expires, so nothing is lost
//! (delivery is at least once; receivers deduplicate by `webhook-id`).
//!
//! One receiver is never flooded: at most `per_endpoint` requests to an
//! endpoint are in flight (default 8, `SLUICE_WEBHOOK_PER_ENDPOINT`), and
//! at most three rounds of them are claimed per endpoint, so a backlog waits
//! in the outbox rather than in a lease. When connecting to an endpoint
//! fails or times out (after three quarters of the attempt timeout), the
//! endpoint backs off (1 s, doubling to 5 min): its other claimed
//! messages are given back without an attempt, due when the back-off ends, so
//! an unreachable receiver does not burn every queued message's attempts.
//! A message that waited for its endpoint so long that its attempt could
//! outlast half the lease goes back too (due at once): once a lease runs out
//! another worker may claim the message, and both would deliver it.
//! (A lease shorter than an attempt can still run out mid-attempt; that is
//! the configuration's doing, and delivery stays at least once.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::Rng;
use reqwest::StatusCode;

use super::endpoints::Endpoint;
use super::signing::signature_header;
use super::ssrf::{GuardError, GuardPolicy, GuardedResolver};
use crate::store::{AttemptEnd, AttemptLog, ClaimedMessage, Store, StoreError, now_ms};

/// The production retry schedule: delays after attempts 1, 2, ...
pub const DEFAULT_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// How deliveries behave.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Delay after each failed attempt; its length + 1 is the number of attempts.
    pub schedule: Vec<Duration>,
    /// Relative jitter on each delay (0.2 = ±20 %).
    pub jitter: f64,
    /// Total deadline of one attempt: connect, headers and body.
    pub attempt_timeout: Duration,
    /// How much of a response body is kept in the attempt log.
    pub max_response_bytes: usize,
    /// How long a claimed message stays with this worker. When it is over
    /// two attempt timeouts (the default: 60 s and 10 s), a message that had
    /// to wait for its endpoint starts an attempt only if the attempt can end
    /// within half of it.
    pub lease: Duration,
    /// Messages claimed at once.
    pub batch: i64,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Longest `Retry-After` honoured.
    pub max_retry_after: Duration,
    /// The SSRF guard's allow-list.
    pub policy: GuardPolicy,
    /// Requests in flight to one endpoint at once.
    pub per_endpoint: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            schedule: DEFAULT_SCHEDULE.to_vec(),
            jitter: 0.2,
            attempt_timeout: Duration::from_secs(10),
            max_response_bytes: 20 * 1024,
            lease: Duration::from_secs(60),
            batch: 256,
            concurrency: 128,
            max_retry_after: Duration::from_secs(24 * 3600),
            policy: GuardPolicy::default(),
            per_endpoint: 8,
        }
    }
}

impl DeliveryConfig {
    /// Defaults, with `SLUICE_WEBHOOK_ALLOW` (allow-list),
    /// `SLUICE_WEBHOOK_SCHEDULE` (comma-separated delays, e.g. `1s,10s,1m`),
    /// `SLUICE_WEBHOOK_LEASE` and `SLUICE_WEBHOOK_TIMEOUT` (durations).
    pub fn from_env() -> Result<DeliveryConfig, String> {
        let mut c = DeliveryConfig {
            policy: GuardPolicy::from_env().map_err(|e| format!("SLUICE_WEBHOOK_ALLOW: {e}"))?,
            ..DeliveryConfig::default()
        };
        for (var, slot) in [
            ("SLUICE_WEBHOOK_LEASE", &mut c.lease),
            ("SLUICE_WEBHOOK_TIMEOUT", &mut c.attempt_timeout),
        ] {
            if let Ok(text) = std::env::var(var)
                && !text.trim().is_empty()
            {
                *slot = humantime::parse_duration(text.trim())
                    .map_err(|e| format!("{var}: `{text}`: {e}"))?;
            }
        }
        if let Ok(text) = std::env::var("SLUICE_WEBHOOK_PER_ENDPOINT")
            && !text.trim().is_empty()
        {
            c.per_endpoint = text
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    format!("SLUICE_WEBHOOK_PER_ENDPOINT: `{text}` is not a positive number")
                })?;
        }
        if let Ok(text) = std::env::var("SLUICE_WEBHOOK_SCHEDULE")
            && !text.trim().is_empty()
        {
            c.schedule = text
                .split(',')
                .map(|d| {
                    humantime::parse_duration(d.trim())
                        .map_err(|e| format!("SLUICE_WEBHOOK_SCHEDULE: `{d}`: {e}"))
                })
                .collect::<Result<_, _>>()?;
        }
        Ok(c)
    }

    /// Delay before the attempt after attempt `n` (1-based), with jitter, or
    /// `None` when the attempts are exhausted.
    pub fn retry_delay(&self, n: i64, retry_after: Option<Duration>) -> Option<Duration> {
        let base = *self.schedule.get(usize::try_from(n - 1).ok()?)?;
        let factor = if self.jitter > 0.0 {
            1.0 + rand::rng().random_range(-self.jitter..=self.jitter)
        } else {
            1.0
        };
        let d = base.mul_f64(factor.max(0.0));
        Some(match retry_after {
            Some(r) => d.max(r.min(self.max_retry_after)),
            None => d,
        })
    }
}

/// Delivers outbox messages.
pub struct DeliveryWorker {
    store: Store,
    config: Arc<DeliveryConfig>,
    client: reqwest::Client,
    owner: String,
    /// Per endpoint: its in-flight permits.
    slots: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// Per endpoint that could not be connected to: until when it backs off,
    /// and the consecutive connect failures.
    backoff: std::sync::Mutex<HashMap<String, (Instant, u32)>>,
}

/// What [`DeliveryWorker::drain`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Attempts made.
    pub attempts: usize,
    /// Messages still waiting (for a later retry).
    pub waiting: i64,
}

enum Outcome {
    Success(u16),
    Gone,
    Retryable {
        status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
    },
    Refused(String),
}

/// Awaits `fut` while still driving the deliveries in `in_flight`, keeping
/// the ones that end in `ended`. A delivery parked there may be queued for
/// one of the store's few pool connections (SQLite has four); the pool hands
/// a freed connection to the first waiter, so while the loop awaited a claim
/// without polling them, every connection went to deliveries nobody polled
/// and the claim waited out the pool's 30 s acquire timeout: a stall of the
/// whole server that the API fuzz found.
async fn polling<T, D>(
    fut: impl std::future::Future<Output = T>,
    in_flight: &mut futures::stream::FuturesUnordered<D>,
    ended: &mut Vec<D::Output>,
) -> T
where
    D: std::future::Future,
{
    tokio::pin!(fut);
    loop {
        tokio::select! {
            r = &mut fut => return r,
            Some(done) = in_flight.next() => ended.push(done),
        }
    }
}

/// Books a delivery's end: its endpoint has one claimed message less.
/// True when that leaves the endpoint `round` claimed messages (one round
/// of its cap), so it may be claimed for again.
fn delivery_ended(
    claimed: &mut HashMap<String, usize>,
    endpoint: &str,
    result: Result<(), StoreError>,
    round: usize,
) -> bool {
    if let Err(e) = result {
        tracing::error!(error = %e, "webhook delivery could not record an attempt");
    }
    let Some(n) = claimed.get_mut(endpoint) else {
        return false;
    };
    *n -= 1;
    let left = *n;
    if left == 0 {
        claimed.remove(endpoint);
    }
    left == round
}

impl DeliveryWorker {
    /// A worker on `store`.
    pub fn new(store: Store, config: DeliveryConfig) -> Result<DeliveryWorker, String> {
        let config = Arc::new(config);
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver::new(Arc::new(
                config.policy.clone(),
            ))))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            // Shorter than the attempt, so an endpoint that cannot be
            // reached fails as a connect error and backs off.
            .connect_timeout(config.attempt_timeout.mul_f64(0.75))
            .pool_max_idle_per_host(config.per_endpoint.max(1))
            .user_agent(concat!("Sluice-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the webhook HTTP client: {e}"))?;
        Ok(DeliveryWorker {
            store,
            config,
            client,
            owner: format!("delivery-{}", uuid::Uuid::now_v7()),
            slots: Default::default(),
            backoff: Default::default(),
        })
    }

    fn slot(&self, endpoint: &str) -> Arc<tokio::sync::Semaphore> {
        self.slots
            .lock()
            .expect("slots lock")
            .entry(endpoint.to_string())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Semaphore::new(self.config.per_endpoint.max(1)))
            })
            .clone()
    }

    /// Until when `endpoint` backs off, if it does.
    fn backing_off(&self, endpoint: &str) -> Option<Instant> {
        let b = self.backoff.lock().expect("backoff lock");
        b.get(endpoint)
            .map(|(t, _)| *t)
            .filter(|t| *t > Instant::now())
    }

    /// Records a connect failure (backing off longer each time) or a
    /// connection that worked (forgetting the failures).
    fn connected(&self, endpoint: &str, ok: bool) {
        let mut b = self.backoff.lock().expect("backoff lock");
        if ok {
            b.remove(endpoint);
            return;
        }
        let failures = b.get(endpoint).map(|(_, n)| n + 1).unwrap_or(1);
        let delay = Duration::from_secs(1)
            .saturating_mul(1u32 << failures.saturating_sub(1).min(9))
            .min(Duration::from_secs(300));
        b.insert(endpoint.to_string(), (Instant::now() + delay, failures));
    }

    /// Claims one batch of due messages and delivers it. Returns the number of attempts.
    pub async fn run_once(&self) -> Result<usize, StoreError> {
        let per_endpoint = i64::try_from(self.config.per_endpoint.max(1) * 4).unwrap_or(i64::MAX);
        // Taken before the claim, so it is no later than the lease's start.
        let claimed_at = Instant::now();
        let claimed = self
            .store
            .claim_messages_per_endpoint(
                &self.owner,
                self.config.lease,
                self.config.batch,
                per_endpoint,
            )
            .await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        let endpoints: HashMap<String, Endpoint> = self
            .store
            .endpoints()
            .await?
            .into_iter()
            .map(|e| (e.id.clone(), e))
            .collect();
        let n = claimed.len();
        let results: Vec<Result<(), StoreError>> = futures::stream::iter(claimed)
            .map(|m| self.deliver(m, &endpoints, claimed_at))
            .buffer_unordered(self.config.concurrency)
            .collect()
            .await;
        for r in results {
            r?;
        }
        Ok(n)
    }

    /// Raises `system.error` for a store that failed the worker from
    /// `since` (ms) for `failures` claims and works again.
    async fn store_recovered(&self, since: i64, failures: u32, last: &str) {
        let secs = (now_ms() - since).max(0) as f64 / 1000.0;
        super::system_error(
            &self.store,
            &format!("store:delivery:recovered:{since}"),
            "store",
            &format!(
                "webhook delivery could not use the store for {secs:.1} s ({failures} failed claims; last error: {last}); it works again"
            ),
            serde_json::json!({"failed_claims": failures, "last_error": last, "since_ms": since}),
        )
        .await;
    }

    /// Delivers until `stop` resolves, waking as soon as messages arrive.
    ///
    /// Unlike [`DeliveryWorker::run_once`], deliveries run as a pipeline:
    /// messages are claimed as deliveries finish, so an endpoint that times
    /// out holds back its own messages only. An endpoint never has more than
    /// three rounds of its cap claimed (see
    /// [`DeliveryWorker::claim_for_pipeline`]).
    pub async fn run_until(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut in_flight = futures::stream::FuturesUnordered::new();
        // Per endpoint: messages claimed and not finished.
        let mut claimed: HashMap<String, usize> = HashMap::new();
        // After a store error, claims pause for a second.
        let mut claim_after = Instant::now();
        // Whether a claim may find something: set when the outbox changed,
        // when the poll interval passed, when an endpoint got room for a
        // round again, and after a claim that took all it could. Claiming
        // after every delivery instead took one message a claim from a busy
        // endpoint, and each claim is a write: one receiver got ~140
        // messages/s under load.
        let mut claim_due = true;
        // While the store fails: since when (ms), how many claims failed,
        // the last error. The alert raised at the failure is written to the
        // failing store and may be lost with it; the one raised when the
        // store works again is not.
        let mut store_down: Option<(i64, u32, String)> = None;
        // Deliveries that ended while the loop awaited something else.
        let mut ended: Vec<(String, Result<(), StoreError>)> = Vec::new();
        loop {
            if !ended.is_empty() {
                // A pipeline that was full has room again.
                claim_due |= in_flight.len() + ended.len() >= self.config.concurrency;
                let round = self.config.per_endpoint.max(1);
                for (endpoint, result) in ended.drain(..) {
                    claim_due |= delivery_ended(&mut claimed, &endpoint, result, round);
                }
            }
            let room = self.config.concurrency.saturating_sub(in_flight.len());
            if room > 0 && claim_due && Instant::now() >= claim_after {
                let claimed_at = Instant::now();
                let claim = self.claim_for_pipeline(room, &claimed);
                let next = match polling(claim, &mut in_flight, &mut ended).await {
                    Ok(next) => {
                        claim_due = next.len()
                            >= room.min(usize::try_from(self.config.batch).unwrap_or(usize::MAX));
                        if let Some((since, failures, last)) = store_down.take() {
                            let alert = self.store_recovered(since, failures, &last);
                            polling(alert, &mut in_flight, &mut ended).await;
                        }
                        next
                    }
                    Err(e) => {
                        let down = store_down.get_or_insert_with(|| (now_ms(), 0, String::new()));
                        down.1 += 1;
                        down.2 = e.to_string();
                        tracing::error!(error = %e, "webhook delivery worker failed; retrying in 1 s");
                        // Once a minute at most (the key dedupes within it).
                        let key = format!("store:delivery:{}", now_ms() / 60_000);
                        let text = format!("webhook delivery cannot read or write the store: {e}");
                        let alert = super::system_error(
                            &self.store,
                            &key,
                            "store",
                            &text,
                            serde_json::Value::Null,
                        );
                        polling(alert, &mut in_flight, &mut ended).await;
                        claim_after = Instant::now() + Duration::from_secs(1);
                        Vec::new()
                    }
                };
                for (m, endpoints) in next {
                    *claimed.entry(m.endpoint_id.clone()).or_default() += 1;
                    in_flight.push(async move {
                        let endpoint = m.endpoint_id.clone();
                        (endpoint, self.deliver(m, &endpoints, claimed_at).await)
                    });
                }
            }
            if !ended.is_empty() {
                // Deliveries ended during the claim: book them first.
                continue;
            }
            tokio::select! {
                () = &mut stop => return,
                Some(done) = in_flight.next() => ended.push(done),
                () = self.store.outbox_changed(Duration::from_millis(250)) => claim_due = true,
            }
        }
    }

    /// Claims up to `room` due messages for [`DeliveryWorker::run_until`],
    /// each with the endpoints it may be sent to. An endpoint gets at most
    /// two rounds of its cap per claim, and none while it has more than one
    /// round claimed (so never more than three rounds waiting, well within
    /// the lease): it is topped up a round or two at a time, not a message
    /// at a time.
    async fn claim_for_pipeline(
        &self,
        room: usize,
        claimed: &HashMap<String, usize>,
    ) -> Result<Vec<(ClaimedMessage, Arc<HashMap<String, Endpoint>>)>, StoreError> {
        let rounds = self.config.per_endpoint.max(1) * 2;
        let limit = i64::try_from(room)
            .unwrap_or(i64::MAX)
            .min(self.config.batch);
        let full: Vec<String> = claimed
            .iter()
            .filter(|(_, n)| **n > self.config.per_endpoint.max(1))
            .map(|(e, _)| e.clone())
            .collect();
        let batch = self
            .store
            .claim_messages_except(
                &self.owner,
                self.config.lease,
                limit,
                i64::try_from(rounds).unwrap_or(i64::MAX),
                &full,
            )
            .await?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let endpoints: Arc<HashMap<String, Endpoint>> = Arc::new(
            self.store
                .endpoints()
                .await?
                .into_iter()
                .map(|e| (e.id.clone(), e))
                .collect(),
        );
        Ok(batch.into_iter().map(|m| (m, endpoints.clone())).collect())
    }

    /// Delivers everything due now, until nothing is due or `max` passes.
    /// Retries scheduled later are left for a running worker.
    pub async fn drain(&self, max: Duration) -> Result<DrainReport, StoreError> {
        let until = Instant::now() + max;
        let mut report = DrainReport::default();
        while Instant::now() < until {
            let n = self.run_once().await?;
            report.attempts += n;
            if n == 0 {
                match self.store.next_due().await? {
                    Some(t) if t <= now_ms() => tokio::time::sleep(Duration::from_millis(20)).await,
                    _ => break,
                }
            }
        }
        report.waiting = self.store.undelivered_count().await?;
        Ok(report)
    }

    /// Delivers `m`, claimed at `claimed_at`, once its endpoint has a free
    /// slot.
    async fn deliver(
        &self,
        m: ClaimedMessage,
        endpoints: &HashMap<String, Endpoint>,
        claimed_at: Instant,
    ) -> Result<(), StoreError> {
        let attempt = m.attempts + 1;
        // One endpoint's share of the in-flight requests.
        let slot = self.slot(&m.endpoint_id);
        let (permit, waited) = match slot.try_acquire() {
            Ok(permit) => (permit, false),
            Err(_) => (slot.acquire().await.expect("slots are never closed"), true),
        };
        if let Some(until) = self.backing_off(&m.endpoint_id) {
            return self.defer(&m, until).await;
        }
        // After waiting for the endpoint, an attempt that could outlast half
        // the lease is not started: once the lease runs out another worker
        // may claim the message, and both would deliver it. It goes back to
        // the outbox, due now. (With a lease under two attempt timeouts no
        // waiting message could ever start; then this is not checked.)
        let half_lease = self.config.lease / 2;
        if waited
            && self.config.attempt_timeout < half_lease
            && claimed_at.elapsed() + self.config.attempt_timeout > half_lease
        {
            return self.defer(&m, Instant::now()).await;
        }
        let started_at = now_ms();
        let t0 = Instant::now();
        let (outcome, body) = match endpoints.get(&m.endpoint_id) {
            None => (
                Outcome::Refused(format!("endpoint `{}` no longer exists", m.endpoint_id)),
                None,
            ),
            Some(e) if !e.enabled => (
                Outcome::Refused(format!(
                    "endpoint `{}` is disabled: {}",
                    e.id,
                    e.disabled_reason.as_deref().unwrap_or("no reason given")
                )),
                None,
            ),
            Some(e) => self.attempt(e, &m).await,
        };
        // The cap is on requests in flight: the next one to this endpoint
        // need not wait for this one's attempt to be recorded.
        drop(permit);
        let latency_ms = i64::try_from(t0.elapsed().as_millis()).unwrap_or(i64::MAX);
        let (status_code, error, end) = match outcome {
            Outcome::Success(code) => (Some(code), None, AttemptEnd::Delivered),
            Outcome::Gone => {
                let reason = format!(
                    "the receiver answered 410 Gone at {}",
                    chrono::Utc::now().to_rfc3339()
                );
                self.store
                    .set_endpoint_enabled(&m.endpoint_id, false, Some(&reason))
                    .await?;
                tracing::warn!(endpoint_id = %m.endpoint_id, "webhook endpoint disabled: 410 Gone");
                super::system_error(
                    &self.store,
                    &format!("endpoint:{}:gone:{}", m.endpoint_id, now_ms()),
                    "webhooks",
                    &format!(
                        "webhook endpoint {} was disabled: its receiver answered 410 Gone",
                        m.endpoint_id
                    ),
                    serde_json::json!({"endpoint_id": m.endpoint_id}),
                )
                .await;
                (
                    Some(410),
                    Some("410 Gone: endpoint disabled".to_string()),
                    AttemptEnd::Failed,
                )
            }
            Outcome::Refused(error) => (None, Some(error), AttemptEnd::Failed),
            Outcome::Retryable {
                status,
                error,
                retry_after,
            } => {
                let end = match self.config.retry_delay(attempt, retry_after) {
                    Some(d) => AttemptEnd::Retry(
                        now_ms() + i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2),
                    ),
                    None => AttemptEnd::Failed,
                };
                let error = if matches!(end, AttemptEnd::Failed) {
                    format!("{error}; gave up after {attempt} attempts")
                } else {
                    error
                };
                (status, Some(error), end)
            }
        };
        let log = AttemptLog {
            message_id: m.id.clone(),
            attempt,
            started_at,
            status_code: status_code.map(i64::from),
            latency_ms,
            error,
            response_body: body,
        };
        self.store.finish_attempt(&log, &end).await
    }

    /// Gives a message back without an attempt, due when its endpoint's
    /// back-off ends.
    async fn defer(&self, m: &ClaimedMessage, until: Instant) -> Result<(), StoreError> {
        let wait = i64::try_from(until.saturating_duration_since(Instant::now()).as_millis())
            .unwrap_or(i64::MAX / 2);
        self.store
            .release_messages(&self.owner, std::slice::from_ref(&m.id), now_ms() + wait)
            .await
    }

    async fn attempt(&self, e: &Endpoint, m: &ClaimedMessage) -> (Outcome, Option<String>) {
        if let Err(err) = self.config.policy.check_url(&e.url) {
            return (Outcome::Refused(err.to_string()), None);
        }
        let ts = chrono::Utc::now().timestamp();
        let signature = signature_header(
            &e.signing_secrets(now_ms()),
            &m.event_id,
            ts,
            m.body.as_bytes(),
        );
        let cap = self.config.max_response_bytes;
        let request = self
            .client
            .post(&e.url)
            .header("content-type", "application/json")
            .header("webhook-id", &m.event_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(m.body.clone());
        let exchange = async move {
            let mut resp = request.send().await?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let mut body = Vec::new();
            while body.len() < cap {
                match resp.chunk().await? {
                    Some(chunk) => {
                        body.extend_from_slice(&chunk[..chunk.len().min(cap - body.len())])
                    }
                    None => break,
                }
            }
            Ok::<_, reqwest::Error>((status, retry_after, body))
        };
        let result = tokio::time::timeout(self.config.attempt_timeout, exchange).await;
        match &result {
            Ok(Err(err)) if err.is_connect() => self.connected(&e.id, false),
            Ok(_) => self.connected(&e.id, true),
            Err(_) => {}
        }
        match result {
            Err(_) => (
                Outcome::Retryable {
                    status: None,
                    error: format!(
                        "timed out after {} (connect, headers and body)",
                        humantime::format_duration(self.config.attempt_timeout)
                    ),
                    retry_after: None,
                },
                None,
            ),
            Ok(Err(err)) => {
                if let Some(g) = guard_error(&err) {
                    return (Outcome::Refused(g.to_string()), None);
                }
                (
                    Outcome::Retryable {
                        status: None,
                        error: format!("request failed: {}", error_chain(&err)),
                        retry_after: None,
                    },
                    None,
                )
            }
            Ok(Ok((status, retry_after, body))) => {
                let text = Some(String::from_utf8_lossy(&body).into_owned());
                let outcome = if status.is_success() {
                    Outcome::Success(status.as_u16())
                } else if status == StatusCode::GONE {
                    Outcome::Gone
                } else {
                    let what = if status.is_redirection() {
                        " (redirects are not followed)"
                    } else {
                        ""
                    };
                    Outcome::Retryable {
                        status: Some(status.as_u16()),
                        error: format!("receiver answered {status}{what}"),
                        retry_after,
                    }
                };
                (outcome, text)
            }
        }
    }
}

fn guard_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a GuardError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(g) = e.downcast_ref::<GuardError>() {
            return Some(g);
        }
        cur = e.source();
    }
    None
}

/// An error and its sources, joined by `: ` (repeated parts once).
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !parts.contains(&s) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_follow_the_schedule_with_jitter_and_end() {
        let c = DeliveryConfig::default();
        for _ in 0..50 {
            let d = c.retry_delay(1, None).unwrap();
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(6),
                "{d:?}"
            );
        }
        let d = c.retry_delay(2, None).unwrap();
        assert!(d >= Duration::from_secs(240) && d <= Duration::from_secs(360));
        assert!(c.retry_delay(7, None).is_some());
        assert_eq!(
            c.retry_delay(8, None),
            None,
            "seven retries, eight attempts"
        );
        let d = c.retry_delay(1, Some(Duration::from_secs(120))).unwrap();
        assert_eq!(d, Duration::from_secs(120));
        let d = c
            .retry_delay(1, Some(Duration::from_secs(10 * 24 * 3600)))
            .unwrap();
        assert_eq!(d, Duration::from_secs(24 * 3600), "Retry-After is bounded");
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(90)).to_rfc2822();
        let d = parse_retry_after(&later).unwrap();
        assert!(d > Duration::from_secs(80) && d <= Duration::from_secs(90));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
