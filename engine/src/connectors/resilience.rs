//! Per-connection resilience: a token-bucket rate limit, retry timing with
//! exponential backoff and full jitter, and a circuit breaker whose state is
//! the connection status.
//!
//! Status rules: a success → `online` (or `degraded` when it needed retries
//! or was throttled); a transient failure → `degraded`; `failure_threshold`
//! consecutive failures → `offline` (circuit open: calls fail fast with
//! `CONNECTION_UNAVAILABLE` for `cooldown`, then one probe is let through —
//! half-open — whose result closes or reopens the circuit); refused
//! credentials → `auth_required`. Every change is reported to a
//! [`StatusSink`] with its time and reason.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::ConnectionStatus;
use super::definition::RateLimit;

/// Retry, breaker and timeout settings of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// First backoff delay (ms); doubles per attempt, full jitter.
    pub base_delay_ms: u64,
    /// Largest backoff delay (ms).
    pub max_delay_ms: u64,
    /// A `429` asking to wait longer than this (ms) fails at once with `RATE_LIMIT_EXCEEDED`
    /// (and its `Retry-After`) instead of holding the step.
    pub max_retry_after_ms: u64,
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long an open circuit stays open before a probe (ms).
    pub cooldown_ms: u64,
    /// Deadline of one request (ms).
    pub timeout_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_attempts: 4,
            base_delay_ms: 200,
            max_delay_ms: 10_000,
            max_retry_after_ms: 60_000,
            failure_threshold: 5,
            cooldown_ms: 30_000,
            timeout_ms: 30_000,
        }
    }
}

impl Policy {
    /// Backoff before attempt `attempt + 1` (attempt counts from 1): full jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
            .min(self.max_delay_ms);
        Duration::from_millis(rand::rng().random_range(0..=exp))
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(limit: RateLimit) -> TokenBucket {
        let rate = limit.requests_per_second.max(0.001);
        let burst = f64::from(limit.burst.unwrap_or_else(|| rate.ceil() as u32).max(1));
        TokenBucket {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut s = self.state.lock().expect("bucket lock");
                let now = Instant::now();
                s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(self.burst);
                s.1 = now;
                if s.0 >= 1.0 {
                    s.0 -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - s.0) / self.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// A status change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusChange {
    /// The connection.
    pub connection_id: String,
    /// Status before.
    pub from: ConnectionStatus,
    /// Status after.
    pub to: ConnectionStatus,
    /// Why.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// Receives status changes (the store records them and emits events).
pub trait StatusSink: Send + Sync {
    /// Called once per change, in order.
    fn changed(&self, change: StatusChange);
}

#[derive(Debug)]
struct State {
    status: ConnectionStatus,
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

/// The circuit breaker and status of one connection.
pub struct Health {
    connection: String,
    policy: Policy,
    state: Mutex<State>,
    sink: Option<Arc<dyn StatusSink>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("connection", &self.connection)
            .field("state", &self.state)
            .finish()
    }
}

/// Whether a call may go ahead.
pub enum Admit {
    /// Go ahead.
    Yes,
    /// The circuit is open for this much longer.
    Open(Duration),
}

impl Health {
    /// Health starting at `status`.
    pub fn new(
        connection: &str,
        policy: Policy,
        status: ConnectionStatus,
        sink: Option<Arc<dyn StatusSink>>,
    ) -> Health {
        let open = status == ConnectionStatus::Offline;
        Health {
            connection: connection.to_string(),
            policy,
            state: Mutex::new(State {
                status,
                consecutive_failures: 0,
                // A connection that was offline when the process stopped gets a probe at once.
                open_until: open.then(Instant::now),
                probing: false,
            }),
            sink,
        }
    }

    /// The current status.
    pub fn status(&self) -> ConnectionStatus {
        self.state.lock().expect("health lock").status
    }

    /// Asks the breaker whether a request may be sent.
    pub fn admit(&self) -> Admit {
        let mut s = self.state.lock().expect("health lock");
        match s.open_until {
            None => Admit::Yes,
            Some(until) => {
                let now = Instant::now();
                if now < until {
                    Admit::Open(until - now)
                } else if !s.probing {
                    s.probing = true; // half-open: this request is the probe
                    Admit::Yes
                } else {
                    Admit::Open(Duration::from_millis(100))
                }
            }
        }
    }

    fn set(&self, s: &mut State, to: ConnectionStatus, reason: &str) {
        if s.status == to {
            return;
        }
        let change = StatusChange {
            connection_id: self.connection.clone(),
            from: s.status,
            to,
            reason: reason.to_string(),
            at: Utc::now(),
        };
        s.status = to;
        tracing::info!(connection = %self.connection, from = ?change.from, to = ?to, reason, "connection status changed");
        if let Some(sink) = &self.sink {
            sink.changed(change);
        }
    }

    /// A request succeeded; `troubled` when it needed retries or was throttled.
    pub fn success(&self, troubled: bool, reason: &str) {
        let mut s = self.state.lock().expect("health lock");
        s.consecutive_failures = 0;
        s.open_until = None;
        s.probing = false;
        let (to, why) = if troubled {
            (ConnectionStatus::Degraded, reason)
        } else {
            (ConnectionStatus::Online, "request succeeded")
        };
        self.set(&mut s, to, why);
    }

    /// A transient failure (5xx, network, timeout).
    pub fn failure(&self, reason: &str) {
        let mut s = self.state.lock().expect("health lock");
        s.consecutive_failures += 1;
        let was_probe = std::mem::take(&mut s.probing);
        if was_probe || s.consecutive_failures >= self.policy.failure_threshold {
            s.open_until = Some(Instant::now() + Duration::from_millis(self.policy.cooldown_ms));
            let why = format!(
                "circuit open after {} consecutive failures: {reason}",
                s.consecutive_failures
            );
            self.set(&mut s, ConnectionStatus::Offline, &why);
        } else {
            self.set(&mut s, ConnectionStatus::Degraded, reason);
        }
    }

    /// The system answered but refused the credentials.
    pub fn auth_failure(&self, reason: &str) {
        let mut s = self.state.lock().expect("health lock");
        s.consecutive_failures = 0;
        s.open_until = None;
        s.probing = false;
        self.set(&mut s, ConnectionStatus::AuthRequired, reason);
    }

    /// The system answered (a 4xx other than auth): it is up.
    pub fn answered(&self) {
        let mut s = self.state.lock().expect("health lock");
        s.consecutive_failures = 0;
        s.open_until = None;
        s.probing = false;
        if s.status == ConnectionStatus::Offline {
            self.set(
                &mut s,
                ConnectionStatus::Degraded,
                "the system answers again",
            );
        }
    }

    /// The system throttled a request.
    pub fn throttled(&self, reason: &str) {
        let mut s = self.state.lock().expect("health lock");
        if s.status == ConnectionStatus::Online {
            self.set(&mut s, ConnectionStatus::Degraded, reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Collect(Mutex<Vec<StatusChange>>);
    impl StatusSink for Collect {
        fn changed(&self, change: StatusChange) {
            self.0.lock().unwrap().push(change);
        }
    }

    #[test]
    fn the_circuit_opens_after_the_threshold_and_a_probe_closes_it() {
        let sink = Arc::new(Collect(Mutex::new(Vec::new())));
        let policy = Policy {
            failure_threshold: 3,
            cooldown_ms: 0,
            ..Policy::default()
        };
        let h = Health::new("erp", policy, ConnectionStatus::Online, Some(sink.clone()));
        h.failure("503");
        h.failure("503");
        assert_eq!(h.status(), ConnectionStatus::Degraded);
        h.failure("503");
        assert_eq!(h.status(), ConnectionStatus::Offline);
        assert!(matches!(h.admit(), Admit::Yes), "cooldown 0: probe allowed");
        assert!(matches!(h.admit(), Admit::Open(_)), "one probe at a time");
        h.success(false, "");
        assert_eq!(h.status(), ConnectionStatus::Online);
        let seen: Vec<_> = sink.0.lock().unwrap().iter().map(|c| c.to).collect();
        assert_eq!(
            seen,
            vec![
                ConnectionStatus::Degraded,
                ConnectionStatus::Offline,
                ConnectionStatus::Online
            ]
        );
    }

    #[tokio::test]
    async fn the_bucket_spaces_requests_at_its_rate() {
        let b = TokenBucket::new(RateLimit {
            requests_per_second: 20.0,
            burst: Some(1),
        });
        let t = Instant::now();
        for _ in 0..5 {
            b.acquire().await;
        }
        // 1 from the burst, then 4 at 50 ms each.
        assert!(
            t.elapsed() >= Duration::from_millis(190),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let p = Policy {
            base_delay_ms: 100,
            max_delay_ms: 400,
            ..Policy::default()
        };
        for attempt in 1..10 {
            let cap = (100u64 << (attempt - 1)).min(400);
            assert!(p.backoff(attempt) <= Duration::from_millis(cap));
        }
    }
}
