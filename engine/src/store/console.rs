//! Console sessions (see `server::console`): one row per signed-in browser,
//! found by the sha256 of its cookie.

use sqlx::Row;

use super::{Arg, Store, StoreError, now_ms};

/// A console session.
#[derive(Debug, Clone)]
pub struct SessionRow {
    /// The API token it was opened with.
    pub token_id: String,
    /// The token its forms carry.
    pub csrf: String,
    /// When it ends (ms).
    pub expires_at: i64,
}

impl Store {
    /// Stores a session (and forgets expired ones).
    pub async fn insert_session(
        &self,
        id_hash: &str,
        token_id: &str,
        csrf: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        self.write_all(vec![
            (
                "DELETE FROM console_sessions WHERE expires_at < $1",
                vec![Arg::Int(Some(now))],
            ),
            (
                "INSERT INTO console_sessions (id_hash, token_id, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
                vec![
                    Arg::Text(Some(id_hash.to_string())),
                    Arg::Text(Some(token_id.to_string())),
                    Arg::Text(Some(csrf.to_string())),
                    Arg::Int(Some(now)),
                    Arg::Int(Some(expires_at)),
                ],
            ),
        ])
        .await?;
        Ok(())
    }

    /// A session that has not expired.
    pub async fn session(&self, id_hash: &str) -> Result<Option<SessionRow>, StoreError> {
        let row = sqlx::query(
            "SELECT token_id, csrf, expires_at FROM console_sessions WHERE id_hash = $1 AND expires_at > $2",
        )
        .bind(id_hash)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(SessionRow {
                token_id: r.try_get(0)?,
                csrf: r.try_get(1)?,
                expires_at: r.try_get(2)?,
            })
        })
        .transpose()
    }

    /// Ends a session.
    pub async fn delete_session(&self, id_hash: &str) -> Result<(), StoreError> {
        self.write_all(vec![(
            "DELETE FROM console_sessions WHERE id_hash = $1",
            vec![Arg::Text(Some(id_hash.to_string()))],
        )])
        .await?;
        Ok(())
    }
}
