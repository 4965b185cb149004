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

/// A stored, sealed credential.
#[derive(Debug, Clone)]
pub struct StoredCredential {
    /// The name a connection's config gives it (`stored:<connection>.<credential>`).
    pub secret_name: String,
    /// Its connection.
    pub connection_id: String,
    /// The sealed value (see `connectors::vault`).
    pub sealed: Vec<u8>,
}

/// A connect link.
#[derive(Debug, Clone)]
pub struct ConnectLink {
    /// The definition it connects.
    pub definition: String,
    /// The connection it makes.
    pub connection_id: String,
    /// When it expires (ms).
    pub expires_at: i64,
    /// When it was used (ms), if it was.
    pub used_at: Option<i64>,
}

impl Store {
    /// Stores sealed credentials (replacing ones of the same name).
    pub async fn put_credentials(&self, creds: &[StoredCredential]) -> Result<(), StoreError> {
        let now = now_ms();
        let mut stmts = Vec::new();
        for c in creds {
            stmts.push((
                "DELETE FROM connection_credentials WHERE secret_name = $1",
                vec![Arg::Text(Some(c.secret_name.clone()))],
            ));
            stmts.push((
                "INSERT INTO connection_credentials (secret_name, connection_id, sealed, updated_at) VALUES ($1, $2, $3, $4)",
                vec![
                    Arg::Text(Some(c.secret_name.clone())),
                    Arg::Text(Some(c.connection_id.clone())),
                    Arg::Blob(Some(c.sealed.clone())),
                    Arg::Int(Some(now)),
                ],
            ));
        }
        self.write_all(stmts).await?;
        Ok(())
    }

    /// Every stored credential.
    pub async fn credentials(&self) -> Result<Vec<StoredCredential>, StoreError> {
        let rows = sqlx::query(
            "SELECT secret_name, connection_id, sealed FROM connection_credentials ORDER BY secret_name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredCredential {
                    secret_name: r.try_get(0)?,
                    connection_id: r.try_get(1)?,
                    sealed: r.try_get(2)?,
                })
            })
            .collect()
    }

    /// Forgets a connection's stored credentials.
    pub async fn delete_credentials(&self, connection_id: &str) -> Result<(), StoreError> {
        self.write_all(vec![(
            "DELETE FROM connection_credentials WHERE connection_id = $1",
            vec![Arg::Text(Some(connection_id.to_string()))],
        )])
        .await?;
        Ok(())
    }

    /// Stores a connect link.
    pub async fn insert_connect_link(
        &self,
        id_hash: &str,
        definition: &str,
        connection_id: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.write_all(vec![(
            "INSERT INTO connect_links (id_hash, definition, connection_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
            vec![
                Arg::Text(Some(id_hash.to_string())),
                Arg::Text(Some(definition.to_string())),
                Arg::Text(Some(connection_id.to_string())),
                Arg::Int(Some(now_ms())),
                Arg::Int(Some(expires_at)),
            ],
        )])
        .await?;
        Ok(())
    }

    /// A connect link, used or not, expired or not.
    pub async fn connect_link(&self, id_hash: &str) -> Result<Option<ConnectLink>, StoreError> {
        let row = sqlx::query(
            "SELECT definition, connection_id, expires_at, used_at FROM connect_links WHERE id_hash = $1",
        )
        .bind(id_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(ConnectLink {
                definition: r.try_get(0)?,
                connection_id: r.try_get(1)?,
                expires_at: r.try_get(2)?,
                used_at: r.try_get(3)?,
            })
        })
        .transpose()
    }

    /// Marks a connect link used; false when it was used or expired meanwhile.
    pub async fn use_connect_link(&self, id_hash: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let counts = self
            .write_all(vec![(
                "UPDATE connect_links SET used_at = $2 WHERE id_hash = $1 AND used_at IS NULL AND expires_at > $2",
                vec![Arg::Text(Some(id_hash.to_string())), Arg::Int(Some(now))],
            )])
            .await?;
        Ok(counts.first().copied() == Some(1))
    }
}
