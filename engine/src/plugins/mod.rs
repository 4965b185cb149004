//! WASM plugins: the registry of uploaded components and the host that runs
//! them (see [`host`]).
//!
//! A plugin has a name and immutable semver versions; the bytes are stored
//! once per sha256. Upload is refused, with the reason, when the bytes are
//! not a component, do not export the `sluice:plugin` world, import an
//! interface plugins are not granted (`wasi:sockets`, `wasi:http`...), are
//! too large, or reuse an existing version with other bytes. A `plugin`
//! step names a version requirement (`^1.2`) that resolves to the highest
//! matching version.

pub mod host;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

pub use host::{CallError, CallOutput, InvalidPlugin, Limits, LoadedPlugin, PluginHost};

use crate::store::{PluginRecord, Store, StoreError};

/// Largest component accepted at upload.
pub const MAX_PLUGIN_BYTES: usize = 16 << 20;

/// How long a resolved version requirement is reused before asking the store again.
const RESOLVE_TTL: Duration = Duration::from_secs(5);

/// Why an upload or lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The bytes are not an acceptable plugin.
    #[error("plugin {name}@{version} refused: {reason}")]
    Refused {
        /// Name.
        name: String,
        /// Version.
        version: String,
        /// Why.
        reason: String,
    },
    /// Bad name or version text.
    #[error("{0}")]
    BadInput(String),
    /// The version exists with other bytes.
    #[error(
        "plugin {name}@{version} already exists with other content (sha256 {existing}); versions are immutable, publish a new version"
    )]
    Conflict {
        /// Name.
        name: String,
        /// Version.
        version: String,
        /// The stored hash.
        existing: String,
    },
    /// Nothing matches.
    #[error("{0}")]
    NotFound(String),
    /// The host could not start.
    #[error("plugin host unavailable: {0}")]
    Host(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The registry: stored plugins plus the host that runs them.
pub struct PluginRegistry {
    store: Store,
    cache_dir: Option<PathBuf>,
    host: OnceLock<Result<Arc<PluginHost>, String>>,
    resolved: Mutex<HashMap<(String, String), (PluginRecord, Instant)>>,
    calls: std::sync::atomic::AtomicU64,
    failed_calls: std::sync::atomic::AtomicU64,
}

fn check_name(name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    if ok {
        Ok(())
    } else {
        Err(RegistryError::BadInput(format!(
            "invalid plugin name `{name}`: use lowercase letters, digits, `-` and `_`, starting with a letter"
        )))
    }
}

impl PluginRegistry {
    /// A registry on `store`, caching compiled plugins in `cache_dir`.
    pub fn new(store: Store, cache_dir: Option<PathBuf>) -> PluginRegistry {
        PluginRegistry {
            store,
            cache_dir,
            host: OnceLock::new(),
            resolved: Mutex::new(HashMap::new()),
            calls: Default::default(),
            failed_calls: Default::default(),
        }
    }

    /// The host, started on first use.
    pub fn host(&self) -> Result<&Arc<PluginHost>, RegistryError> {
        self.host
            .get_or_init(|| PluginHost::new(self.cache_dir.clone()).map(Arc::new))
            .as_ref()
            .map_err(|e| RegistryError::Host(e.clone()))
    }

    /// Validates and stores `name@version`. Pushing the same bytes again is a no-op.
    pub async fn push(
        &self,
        name: &str,
        version: &str,
        bytes: &[u8],
        description: Option<&str>,
    ) -> Result<PluginRecord, RegistryError> {
        check_name(name)?;
        let v = semver::Version::parse(version).map_err(|e| {
            RegistryError::BadInput(format!(
                "invalid version `{version}`: {e} (use semver, e.g. 1.2.0)"
            ))
        })?;
        let refused = |reason: String| RegistryError::Refused {
            name: name.to_string(),
            version: v.to_string(),
            reason,
        };
        if bytes.len() > MAX_PLUGIN_BYTES {
            return Err(refused(format!(
                "it is {} bytes; the limit is {MAX_PLUGIN_BYTES}",
                bytes.len()
            )));
        }
        let sha = hex::encode(Sha256::digest(bytes));
        if let Some(existing) = self.store.plugin(name, &v.to_string()).await? {
            return if existing.sha256 == sha {
                Ok(existing)
            } else {
                Err(RegistryError::Conflict {
                    name: name.to_string(),
                    version: v.to_string(),
                    existing: existing.sha256,
                })
            };
        }
        let host = self.host()?.clone();
        let owned = bytes.to_vec();
        tokio::task::spawn_blocking(move || host.validate(&owned).map(|_| ()))
            .await
            .map_err(|e| RegistryError::Host(e.to_string()))?
            .map_err(|e| refused(e.0))?;
        if !self
            .store
            .insert_plugin(name, &v, &sha, bytes, description)
            .await?
        {
            // Raced with another upload of the same version.
            return Box::pin(self.push(name, version, bytes, description)).await;
        }
        self.store
            .plugin(name, &v.to_string())
            .await?
            .ok_or_else(|| {
                RegistryError::NotFound(format!("plugin {name}@{v} vanished after upload"))
            })
    }

    /// The highest version of `name` matching `requirement` (`^1.2`, `=1.0.3`, `*`).
    pub async fn resolve(
        &self,
        name: &str,
        requirement: &str,
    ) -> Result<PluginRecord, RegistryError> {
        let key = (name.to_string(), requirement.to_string());
        if let Some((rec, at)) = self.resolved.lock().expect("resolve cache lock").get(&key)
            && at.elapsed() < RESOLVE_TTL
        {
            return Ok(rec.clone());
        }
        let req = semver::VersionReq::parse(requirement).map_err(|e| {
            RegistryError::BadInput(format!("invalid version requirement `{requirement}`: {e}"))
        })?;
        let all = self.store.plugins(Some(name)).await?;
        if all.is_empty() {
            return Err(RegistryError::NotFound(format!(
                "no plugin named `{name}`; upload it with `sluice plugin push`"
            )));
        }
        let found = all
            .iter()
            .filter_map(|r| semver::Version::parse(&r.version).ok().map(|v| (v, r)))
            .filter(|(v, _)| req.matches(v))
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, r)| r.clone())
            .ok_or_else(|| {
                let have: Vec<&str> = all.iter().map(|r| r.version.as_str()).collect();
                RegistryError::NotFound(format!(
                    "no version of `{name}` matches `{requirement}` (have {})",
                    have.join(", ")
                ))
            })?;
        self.resolved
            .lock()
            .expect("resolve cache lock")
            .insert(key, (found.clone(), Instant::now()));
        Ok(found)
    }

    /// Loads (compiling once) a registered version.
    pub async fn load(&self, rec: &PluginRecord) -> Result<LoadedPlugin, RegistryError> {
        let host = self.host()?.clone();
        let label = format!("{}@{}", rec.name, rec.version);
        if let Some(p) = host.loaded(&label, &rec.sha256) {
            return Ok(p);
        }
        let bytes = self.store.plugin_bytes(&rec.sha256).await?.ok_or_else(|| {
            RegistryError::NotFound(format!("the bytes of {label} are missing from the store"))
        })?;
        let sha = rec.sha256.clone();
        let l = label.clone();
        tokio::task::spawn_blocking(move || host.load(&l, &sha, &bytes))
            .await
            .map_err(|e| RegistryError::Host(e.to_string()))?
            .map_err(|e| RegistryError::Refused {
                name: rec.name.clone(),
                version: rec.version.clone(),
                reason: e.0,
            })
    }

    /// Resolves, loads and calls a plugin.
    pub async fn call(
        &self,
        name: &str,
        requirement: &str,
        input: &Value,
        config: &Value,
        limits: &Limits,
    ) -> Result<Result<CallOutput, CallError>, RegistryError> {
        use std::sync::atomic::Ordering::Relaxed;
        self.calls.fetch_add(1, Relaxed);
        let result = async {
            let rec = self.resolve(name, requirement).await?;
            let loaded = self.load(&rec).await?;
            Ok(self.host()?.call(&loaded, input, config, limits).await)
        }
        .await;
        if !matches!(result, Ok(Ok(_))) {
            self.failed_calls.fetch_add(1, Relaxed);
        }
        result
    }

    /// Plugin calls made through this registry, and how many of them failed.
    pub fn call_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.calls.load(Relaxed), self.failed_calls.load(Relaxed))
    }

    /// Registered plugins (all versions).
    pub async fn list(&self, name: Option<&str>) -> Result<Vec<PluginRecord>, RegistryError> {
        Ok(self.store.plugins(name).await?)
    }

    /// Removes a version.
    pub async fn remove(&self, name: &str, version: &str) -> Result<(), RegistryError> {
        if !self.store.remove_plugin(name, version).await? {
            return Err(RegistryError::NotFound(format!(
                "no plugin {name}@{version}"
            )));
        }
        self.resolved.lock().expect("resolve cache lock").clear();
        Ok(())
    }
}
