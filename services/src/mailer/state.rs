//! Delivery state of routed notifications: which are sent, failed for good, waiting for a retry,
//! or claimed by a mailer right now.
//!
//! A mailer sends a notification only after winning its claim: one statement that inserts the
//! row, or takes over a row waiting for a retry or whose earlier claim expired. Two mailers on
//! the same database never hold the same claim at once, so they never both send it.
//! The table holds ids, counters, times and error texts; never an email address or a body.

use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Where a notification's delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// A mailer holds the claim and is sending it.
    Sending,
    /// The relay accepted it.
    Sent,
    /// The last attempt failed temporarily; another follows after `next_attempt_at`.
    Retry,
    /// It will never be sent: the relay refused it for good, or every attempt failed.
    Failed,
}

impl DeliveryStatus {
    fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Sending => "sending",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Retry => "retry",
            DeliveryStatus::Failed => "failed",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "sending" => DeliveryStatus::Sending,
            "sent" => DeliveryStatus::Sent,
            "retry" => DeliveryStatus::Retry,
            "failed" => DeliveryStatus::Failed,
            _ => return None,
        })
    }

    /// Whether nothing more will be attempted.
    pub fn is_final(self) -> bool {
        matches!(self, DeliveryStatus::Sent | DeliveryStatus::Failed)
    }
}

/// One notification's delivery record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The notification.
    pub notification_id: Uuid,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// How many attempts were started.
    pub attempts: u32,
    /// The relay's answer to the last failed attempt.
    pub last_error: Option<String>,
    /// When the relay accepted it.
    pub sent_at: Option<DateTime<Utc>>,
}

/// What went wrong with the delivery state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The database failed.
    #[error("delivery state: {0}")]
    Database(String),
}

type StateResult<T> = Result<T, StateError>;

/// The delivery state table behind a mailer.
#[async_trait::async_trait]
pub trait DeliveryState: Send + Sync + std::fmt::Debug {
    /// Takes the claim on a notification for `mailer` until `claim_until`, when it has no row
    /// yet, waits for a retry due by `now`, or its earlier claim expired by `now`. Returns the
    /// attempt number on success, `None` when it is sent, failed, claimed or not yet due.
    async fn claim(
        &self,
        notification_id: Uuid,
        mailer: &str,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
    ) -> StateResult<Option<u32>>;

    /// Records the outcome of `mailer`'s attempt; nothing changes if its claim was lost.
    async fn finish(
        &self,
        notification_id: Uuid,
        mailer: &str,
        status: DeliveryStatus,
        at: DateTime<Utc>,
        next_attempt_at: Option<DateTime<Utc>>,
        error: Option<&str>,
    ) -> StateResult<()>;

    /// The ids of every notification that needs no more attempts.
    async fn finished(&self) -> StateResult<Vec<Uuid>>;

    /// One notification's record.
    async fn delivery(&self, notification_id: Uuid) -> StateResult<Option<Delivery>>;
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn from_micros(raw: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(raw)
}

const SQLITE_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS notification_deliveries (
    notification_id TEXT    PRIMARY KEY,
    status          TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL, -- microseconds since the Unix epoch, UTC
    claimed_by      TEXT,
    claim_until     INTEGER,
    last_error      TEXT,
    sent_at         INTEGER
);
"#;

const CLAIM_SQLITE: &str = "INSERT INTO notification_deliveries \
     (notification_id, status, attempts, next_attempt_at, claimed_by, claim_until) \
     VALUES (?1, 'sending', 1, ?2, ?3, ?4) \
     ON CONFLICT (notification_id) DO UPDATE SET status = 'sending', \
     attempts = notification_deliveries.attempts + 1, claimed_by = excluded.claimed_by, \
     claim_until = excluded.claim_until \
     WHERE (notification_deliveries.status = 'retry' AND notification_deliveries.next_attempt_at <= ?2) \
     OR (notification_deliveries.status = 'sending' AND notification_deliveries.claim_until <= ?2) \
     RETURNING attempts";

/// Delivery state in an SQLite file beside the embedded log (`mailer.db` in the data
/// directory), shared by the mailers of one host.
#[derive(Clone)]
pub struct SqliteDeliveryState {
    conn: Arc<Mutex<rusqlite::Connection>>,
}

impl std::fmt::Debug for SqliteDeliveryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteDeliveryState")
            .finish_non_exhaustive()
    }
}

/// The file name of the delivery state in a data directory.
pub const SQLITE_FILE: &str = "mailer.db";

fn sqlite_err(e: rusqlite::Error) -> StateError {
    StateError::Database(e.to_string())
}

impl SqliteDeliveryState {
    /// Opens (creating) `mailer.db` in `data_dir`.
    pub async fn open(data_dir: &Path) -> StateResult<Self> {
        let path = data_dir.join(SQLITE_FILE);
        let conn = tokio::task::spawn_blocking(move || -> StateResult<rusqlite::Connection> {
            let conn = rusqlite::Connection::open(&path).map_err(sqlite_err)?;
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .map_err(sqlite_err)?;
            conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
                .map_err(sqlite_err)?;
            conn.execute_batch(SQLITE_SCHEMA).map_err(sqlite_err)?;
            Ok(conn)
        })
        .await
        .map_err(|e| StateError::Database(e.to_string()))??;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> StateResult<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn).map_err(sqlite_err)
        })
        .await
        .map_err(|e| StateError::Database(e.to_string()))?
    }
}

#[async_trait::async_trait]
impl DeliveryState for SqliteDeliveryState {
    async fn claim(
        &self,
        notification_id: Uuid,
        mailer: &str,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
    ) -> StateResult<Option<u32>> {
        let mailer = mailer.to_owned();
        self.with(move |conn| {
            use rusqlite::OptionalExtension;
            conn.query_row(
                CLAIM_SQLITE,
                rusqlite::params![
                    notification_id.to_string(),
                    micros(now),
                    mailer,
                    micros(claim_until)
                ],
                |row| row.get::<_, u32>(0),
            )
            .optional()
        })
        .await
    }

    async fn finish(
        &self,
        notification_id: Uuid,
        mailer: &str,
        status: DeliveryStatus,
        at: DateTime<Utc>,
        next_attempt_at: Option<DateTime<Utc>>,
        error: Option<&str>,
    ) -> StateResult<()> {
        let mailer = mailer.to_owned();
        let error = error.map(str::to_owned);
        self.with(move |conn| {
            conn.execute(
                "UPDATE notification_deliveries SET status = ?1, claimed_by = NULL, \
                 claim_until = NULL, next_attempt_at = ?2, last_error = COALESCE(?3, last_error), \
                 sent_at = CASE WHEN ?1 = 'sent' THEN ?4 ELSE sent_at END \
                 WHERE notification_id = ?5 AND claimed_by = ?6",
                rusqlite::params![
                    status.as_str(),
                    micros(next_attempt_at.unwrap_or(at)),
                    error,
                    micros(at),
                    notification_id.to_string(),
                    mailer
                ],
            )
            .map(|_| ())
        })
        .await
    }

    async fn finished(&self) -> StateResult<Vec<Uuid>> {
        let ids: Vec<String> = self
            .with(|conn| {
                let mut statement = conn.prepare(
                    "SELECT notification_id FROM notification_deliveries \
                     WHERE status IN ('sent', 'failed')",
                )?;
                let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
                rows.collect()
            })
            .await?;
        Ok(ids
            .iter()
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect())
    }

    async fn delivery(&self, notification_id: Uuid) -> StateResult<Option<Delivery>> {
        let row = self
            .with(move |conn| {
                use rusqlite::OptionalExtension;
                conn.query_row(
                    "SELECT status, attempts, last_error, sent_at FROM notification_deliveries \
                     WHERE notification_id = ?1",
                    [notification_id.to_string()],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, u32>(1)?,
                            row.get::<_, Option<String>>(2)?,
                            row.get::<_, Option<i64>>(3)?,
                        ))
                    },
                )
                .optional()
            })
            .await?;
        row.map(|(status, attempts, last_error, sent_at)| {
            Ok(Delivery {
                notification_id,
                status: DeliveryStatus::parse(&status)
                    .ok_or_else(|| StateError::Database(format!("unknown status `{status}`")))?,
                attempts,
                last_error,
                sent_at: sent_at.and_then(from_micros),
            })
        })
        .transpose()
    }
}

const POSTGRES_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS notification_deliveries (
    notification_id UUID        PRIMARY KEY,
    status          TEXT        NOT NULL,
    attempts        INTEGER     NOT NULL,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    claimed_by      TEXT,
    claim_until     TIMESTAMPTZ,
    last_error      TEXT,
    sent_at         TIMESTAMPTZ
);
"#;

const CLAIM_POSTGRES: &str = "INSERT INTO notification_deliveries \
     (notification_id, status, attempts, next_attempt_at, claimed_by, claim_until) \
     VALUES ($1, 'sending', 1, $2, $3, $4) \
     ON CONFLICT (notification_id) DO UPDATE SET status = 'sending', \
     attempts = notification_deliveries.attempts + 1, claimed_by = excluded.claimed_by, \
     claim_until = excluded.claim_until \
     WHERE (notification_deliveries.status = 'retry' AND notification_deliveries.next_attempt_at <= $2) \
     OR (notification_deliveries.status = 'sending' AND notification_deliveries.claim_until <= $2) \
     RETURNING attempts";

/// Delivery state in the PostgreSQL database of the log, shared by every mailer.
#[derive(Clone)]
pub struct PostgresDeliveryState {
    pool: deadpool_postgres::Pool,
}

impl std::fmt::Debug for PostgresDeliveryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresDeliveryState")
            .finish_non_exhaustive()
    }
}

fn pg_err(e: impl std::fmt::Display) -> StateError {
    StateError::Database(e.to_string())
}

impl PostgresDeliveryState {
    /// Connects to `url` and creates the table if it is missing.
    pub async fn connect(url: &str) -> StateResult<Self> {
        let config: tokio_postgres::Config = url.parse().map_err(pg_err)?;
        let manager = deadpool_postgres::Manager::from_config(
            config,
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(4)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(pg_err)?;
        let client = pool.get().await.map_err(pg_err)?;
        // Mailers starting together create the table once.
        client
            .batch_execute(&format!(
                "SELECT pg_advisory_xact_lock(7346512); {POSTGRES_SCHEMA}"
            ))
            .await
            .map_err(pg_err)?;
        drop(client);
        Ok(Self { pool })
    }
}

#[async_trait::async_trait]
impl DeliveryState for PostgresDeliveryState {
    async fn claim(
        &self,
        notification_id: Uuid,
        mailer: &str,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
    ) -> StateResult<Option<u32>> {
        let client = self.pool.get().await.map_err(pg_err)?;
        let row = client
            .query_opt(
                CLAIM_POSTGRES,
                &[&notification_id, &now, &mailer, &claim_until],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.map(|r| u32::try_from(r.get::<_, i32>(0)).unwrap_or(u32::MAX)))
    }

    async fn finish(
        &self,
        notification_id: Uuid,
        mailer: &str,
        status: DeliveryStatus,
        at: DateTime<Utc>,
        next_attempt_at: Option<DateTime<Utc>>,
        error: Option<&str>,
    ) -> StateResult<()> {
        let client = self.pool.get().await.map_err(pg_err)?;
        client
            .execute(
                "UPDATE notification_deliveries SET status = $1, claimed_by = NULL, \
                 claim_until = NULL, next_attempt_at = $2, last_error = COALESCE($3, last_error), \
                 sent_at = CASE WHEN $1 = 'sent' THEN $4 ELSE sent_at END \
                 WHERE notification_id = $5 AND claimed_by = $6",
                &[
                    &status.as_str(),
                    &next_attempt_at.unwrap_or(at),
                    &error,
                    &at,
                    &notification_id,
                    &mailer,
                ],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn finished(&self) -> StateResult<Vec<Uuid>> {
        let client = self.pool.get().await.map_err(pg_err)?;
        let rows = client
            .query(
                "SELECT notification_id FROM notification_deliveries \
                 WHERE status IN ('sent', 'failed')",
                &[],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows.iter().map(|r| r.get::<_, Uuid>(0)).collect())
    }

    async fn delivery(&self, notification_id: Uuid) -> StateResult<Option<Delivery>> {
        let client = self.pool.get().await.map_err(pg_err)?;
        let row = client
            .query_opt(
                "SELECT status, attempts, last_error, sent_at FROM notification_deliveries \
                 WHERE notification_id = $1",
                &[&notification_id],
            )
            .await
            .map_err(pg_err)?;
        row.map(|r| {
            let status: String = r.get(0);
            Ok(Delivery {
                notification_id,
                status: DeliveryStatus::parse(&status)
                    .ok_or_else(|| StateError::Database(format!("unknown status `{status}`")))?,
                attempts: u32::try_from(r.get::<_, i32>(1)).unwrap_or(0),
                last_error: r.get(2),
                sent_at: r.get(3),
            })
        })
        .transpose()
    }
}
