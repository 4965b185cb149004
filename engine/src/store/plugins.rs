//! Plugin registry rows: `plugins` (name, version → sha256) and
//! `plugin_blobs` (sha256 → bytes).

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError, now_ms};

/// A registered plugin version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct PluginRecord {
    /// Plugin name.
    pub name: String,
    /// Semver version.
    pub version: String,
    /// sha256 of the component bytes (hex).
    pub sha256: String,
    /// Size in bytes.
    pub size: i64,
    /// What it does.
    pub description: Option<String>,
    /// Registered (ms).
    pub created_at: i64,
}

const COLUMNS: &str = "SELECT p.name, p.version, p.sha256, b.size, p.description, p.created_at FROM plugins p JOIN plugin_blobs b ON b.sha256 = p.sha256";

fn record(r: &sqlx::any::AnyRow) -> Result<PluginRecord, StoreError> {
    Ok(PluginRecord {
        name: r.try_get(0)?,
        version: r.try_get(1)?,
        sha256: r.try_get(2)?,
        size: r.try_get(3)?,
        description: r.try_get(4)?,
        created_at: r.try_get(5)?,
    })
}

impl Store {
    /// Stores bytes under their hash (once) and registers `name@version`.
    /// Returns false when that version already exists (nothing changed).
    pub async fn insert_plugin(
        &self,
        name: &str,
        version: &semver::Version,
        sha256: &str,
        bytes: &[u8],
        description: Option<&str>,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO plugin_blobs (sha256, size, bytes, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (sha256) DO NOTHING")
            .bind(sha256)
            .bind(bytes.len() as i64)
            .bind(bytes.to_vec())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("INSERT INTO plugins (name, version, major, minor, patch, sha256, description, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (name, version) DO NOTHING")
            .bind(name)
            .bind(version.to_string())
            .bind(version.major as i64)
            .bind(version.minor as i64)
            .bind(version.patch as i64)
            .bind(sha256)
            .bind(description.map(str::to_string))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// One version.
    pub async fn plugin(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<PluginRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{COLUMNS} WHERE p.name = $1 AND p.version = $2"
        )))
        .bind(name)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| record(&r)).transpose()
    }

    /// All versions of all plugins (or of one), newest version first.
    pub async fn plugins(&self, name: Option<&str>) -> Result<Vec<PluginRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{COLUMNS} WHERE ($1 = '' OR p.name = $1) ORDER BY p.name, p.major DESC, p.minor DESC, p.patch DESC, p.version DESC"
        )))
        .bind(name.unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record).collect()
    }

    /// The bytes stored under a hash.
    pub async fn plugin_bytes(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query("SELECT bytes FROM plugin_blobs WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Removes a version (the bytes go when no version uses them).
    pub async fn remove_plugin(&self, name: &str, version: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM plugins WHERE name = $1 AND version = $2")
            .bind(name)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM plugin_blobs WHERE sha256 NOT IN (SELECT sha256 FROM plugins)")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }
}
