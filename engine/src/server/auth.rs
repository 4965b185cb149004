//! API tokens: bearer tokens with a scope, stored hashed, compared in
//! constant time, revocable, each with its own rate limit (token bucket).
//!
//! A token reads `slc_<id>_<secret>`: the id finds the row, the secret is
//! checked against its stored sha256. Scopes nest: `admin` ⊃ `write` ⊃ `read`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::store::{Store, StoreError, TokenRow, now_ms};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, schemars::JsonSchema)]
#[schemars(rename_all = "lowercase")]
pub enum Scope {
    /// Read anything.
    Read,
    /// Read, start runs, upload flows and plugins, change connections and endpoints.
    Write,
    /// Everything, including tokens.
    Admin,
}

impl Scope {
    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            other => Err(format!("unknown scope `{other}`; use admin, write or read")),
        }
    }
}

/// A token just created: the only time its text exists.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// The stored row.
    pub row: TokenRow,
    /// `slc_<id>_<secret>`, to hand to the client.
    pub text: String,
}

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Creates and stores a token.
pub async fn create(
    store: &Store,
    name: &str,
    scope: Scope,
    rate_per_sec: Option<i64>,
) -> Result<NewToken, String> {
    if name.trim().is_empty() || name.len() > 100 {
        return Err("a token name must have 1 to 100 characters".into());
    }
    if let Some(r) = rate_per_sec
        && r < 1
    {
        return Err(format!(
            "a rate limit must be at least 1 request per second, not {r}"
        ));
    }
    let mut id_bytes = [0u8; 9];
    let mut secret_bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut id_bytes);
    rand::rng().fill_bytes(&mut secret_bytes);
    let id = hex::encode(id_bytes);
    let secret = URL_SAFE_NO_PAD.encode(secret_bytes);
    let row = TokenRow {
        id: id.clone(),
        name: name.to_string(),
        scope: scope.as_str().to_string(),
        secret_hash: hash_secret(&secret),
        rate_per_sec,
        created_at: now_ms(),
        revoked_at: None,
    };
    store.insert_token(&row).await.map_err(|e| e.to_string())?;
    Ok(NewToken {
        row,
        text: format!("slc_{id}_{secret}"),
    })
}

/// The caller a request was authenticated as.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token id.
    pub token_id: String,
    /// Its scope.
    pub scope: Scope,
}

/// How long a token row is trusted before it is read again, so a token
/// revoked by another process stops working within this time.
const CACHE_TTL: Duration = Duration::from_secs(1);

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Checks tokens and rate limits. One per server.
pub struct Authenticator {
    store: Store,
    default_rate: i64,
    cache: Mutex<HashMap<String, (Option<TokenRow>, Instant)>>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Authenticator {
    /// Tokens from `store`; tokens without their own limit get `default_rate` per second.
    pub fn new(store: Store, default_rate: i64) -> Authenticator {
        Authenticator {
            store,
            default_rate: default_rate.max(1),
            cache: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets a cached token (after a revocation through the API).
    pub fn forget(&self, id: &str) {
        self.cache.lock().expect("token cache lock").remove(id);
    }

    async fn row(&self, id: &str) -> Result<Option<TokenRow>, StoreError> {
        if let Some((row, at)) = self.cache.lock().expect("token cache lock").get(id)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(row.clone());
        }
        let row = self.store.token(id).await?;
        let mut cache = self.cache.lock().expect("token cache lock");
        if cache.len() > 10_000 {
            cache.clear(); // bounded: unknown ids must not grow it forever
        }
        cache.insert(id.to_string(), (row.clone(), Instant::now()));
        Ok(row)
    }

    /// Authenticates an `Authorization` header value, checks `needed` and
    /// takes one request from the token's rate limit.
    pub async fn check(&self, header: Option<&str>, needed: Scope) -> Result<Caller, ApiError> {
        let header = header.ok_or_else(|| {
            ApiError::unauthenticated(
                "missing `Authorization: Bearer <token>` header; create a token with `sluice token create`",
            )
        })?;
        let text = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                ApiError::unauthenticated("the `Authorization` header must be `Bearer <token>`")
            })?
            .trim();
        let malformed =
            || ApiError::unauthenticated("malformed token: expected `slc_<id>_<secret>`");
        let rest = text.strip_prefix("slc_").ok_or_else(malformed)?;
        let (id, secret) = rest.split_once('_').ok_or_else(malformed)?;
        if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(malformed());
        }
        let row = self
            .row(id)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::unauthenticated("unknown token"))?;
        let given = hash_secret(secret);
        if !bool::from(given.as_bytes().ct_eq(row.secret_hash.as_bytes())) {
            return Err(ApiError::unauthenticated("unknown token"));
        }
        self.admit(row, needed)
    }

    /// Checks the token with id `id` (a console session's, whose secret was
    /// checked at sign-in) as [`Authenticator::check`] does: not revoked,
    /// scope, rate limit.
    pub async fn check_id(&self, id: &str, needed: Scope) -> Result<Caller, ApiError> {
        let row = self
            .row(id)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::unauthenticated("the session's token no longer exists"))?;
        self.admit(row, needed)
    }

    fn admit(&self, row: TokenRow, needed: Scope) -> Result<Caller, ApiError> {
        if row.revoked_at.is_some() {
            return Err(ApiError::unauthenticated(format!(
                "token `{}` was revoked",
                row.name
            )));
        }
        let scope: Scope = row.scope.parse().map_err(ApiError::internal)?;
        if scope < needed {
            return Err(ApiError::forbidden(format!(
                "token `{}` has scope `{}`; this route needs `{}`",
                row.name,
                scope.as_str(),
                needed.as_str()
            )));
        }
        self.take(&row)?;
        Ok(Caller {
            token_id: row.id,
            scope,
        })
    }

    /// Takes one request from the token's bucket, or says when to retry.
    fn take(&self, row: &TokenRow) -> Result<(), ApiError> {
        let rate = row.rate_per_sec.unwrap_or(self.default_rate) as f64;
        let mut buckets = self.buckets.lock().expect("rate limit lock");
        let now = Instant::now();
        let b = buckets.entry(row.id.clone()).or_insert(Bucket {
            tokens: rate,
            last: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(rate);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - b.tokens) / rate).ceil().max(1.0) as u64;
        Err(ApiError::rate_limited(
            format!(
                "token `{}` is limited to {rate} requests per second; retry after {wait} s",
                row.name
            ),
            wait,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_are_checked_scoped_revoked_and_rate_limited() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}/t.db", dir.path().display()))
            .await
            .unwrap();
        let auth = Authenticator::new(store.clone(), 100);
        let read = create(&store, "reader", Scope::Read, Some(2))
            .await
            .unwrap();
        let bearer = format!("Bearer {}", read.text);
        assert!(auth.check(Some(&bearer), Scope::Read).await.is_ok());
        let e = auth.check(Some(&bearer), Scope::Write).await.unwrap_err();
        assert_eq!(e.code, "PERMISSION_DENIED");
        assert!(e.message.contains("scope `read`"), "{e}");
        // Two per second (a refused scope takes nothing): the third request in a row is refused.
        assert!(auth.check(Some(&bearer), Scope::Read).await.is_ok());
        let e = auth.check(Some(&bearer), Scope::Read).await.unwrap_err();
        assert_eq!((e.code, e.retry_after), ("RATE_LIMIT_EXCEEDED", Some(1)));

        let forged = format!("Bearer slc_{}_notthesecret", read.row.id);
        let e = auth.check(Some(&forged), Scope::Read).await.unwrap_err();
        assert_eq!(e.code, "AUTHENTICATION_FAILED");
        let e = auth
            .check(Some("Bearer nope"), Scope::Read)
            .await
            .unwrap_err();
        assert!(e.message.contains("malformed token"), "{e}");

        assert!(store.revoke_token(&read.row.id).await.unwrap());
        auth.forget(&read.row.id);
        let e = auth.check(Some(&bearer), Scope::Read).await.unwrap_err();
        assert!(e.message.contains("revoked"), "{e}");
        // Only the hash is stored.
        let row = store.token(&read.row.id).await.unwrap().unwrap();
        assert!(!read.text.contains(&row.secret_hash));
        assert_eq!(row.secret_hash.len(), 64);
    }
}
