//! The embedded event store: one SQLite database file in a data directory.
//!
//! Appends run in `BEGIN IMMEDIATE` transactions on one writer connection, so a position is
//! taken only by the one transaction that holds SQLite's write lock and it is visible before the
//! next append can take the following one. Reads use a second connection; in WAL mode they see
//! the last committed append and never wait for a writer.
//!
//! The head position is kept in a one-row table `event_head`, advanced by every append in its
//! transaction, so that a row removed from or added to the end of `events` by hand shows against
//! it. Each event's link of the hash chain is computed in the same transaction, from the head
//! event's stored hash.
//!
//! While no other process appends to the file, the store holds the embedded writer lease
//! (`sqlite/lease.rs`) and answers a read of a stream it knows has not moved from memory.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use chrono::{DateTime, Utc};
use onbehalf_events::{Metadata, StoredEvent};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior};

mod lease;

use super::heads::ReadStart;
use super::{
    AppendBatch, Appended, EventAppender, EventReader, RequestLog, RequestOutcome,
    ReservationLookup, StoreError, StoreResult,
};

/// The file name of the database inside the data directory.
pub const DATABASE_FILE: &str = "events.db";

/// How long a connection waits for another process's write lock before giving up.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The schema, one step per entry; step `n` brings the database to version `n + 1`.
///
/// Steps are never edited once released: a change is a new step.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE events (
    position      INTEGER PRIMARY KEY,
    event_id      TEXT    NOT NULL UNIQUE,
    stream_id     TEXT    NOT NULL,
    stream_type   TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    occurred_at   INTEGER NOT NULL, -- microseconds since the Unix epoch, UTC
    event_type    TEXT    NOT NULL,
    event_version TEXT    NOT NULL,
    payload       TEXT    NOT NULL, -- JSON
    metadata      TEXT    NOT NULL, -- JSON
    key_id        TEXT,
    hash          TEXT,
    UNIQUE (stream_id, version)
);
CREATE TABLE reservations (
    scope     TEXT NOT NULL,
    key       TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE TABLE requests (
    actor        TEXT    NOT NULL,
    request_id   TEXT    NOT NULL,
    request_hash TEXT    NOT NULL,
    outcome      TEXT    NOT NULL, -- JSON
    position     INTEGER NOT NULL,
    PRIMARY KEY (actor, request_id)
);
"#,
    r#"
CREATE TABLE event_head (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    position  INTEGER NOT NULL
);
INSERT INTO event_head (singleton, position) SELECT 1, COALESCE(MAX(position), 0) FROM events;
"#,
    super::keys::sqlite::MIGRATION,
    lease::MIGRATION,
];

const EVENT_COLUMNS: &str = "position, event_id, stream_id, stream_type, version, occurred_at, \
     event_type, event_version, payload, metadata, key_id, hash";

/// An event store in an SQLite database file.
///
/// Cloning is cheap and shares the connections. Calls run on tokio's blocking pool, so they
/// never stall the async workers, except a read of a stream's latest events when the reader is
/// free, which is short and made by its caller.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Every append, and every lock of the writer lease's file, is made holding it.
    writer: Mutex<Connection>,
    // LIMITATION: all reads share one connection, so concurrent reads queue behind each other.
    reader: Mutex<Connection>,
    /// Stream reads waiting for the reader; see [`SqliteStore::read_stream`].
    tails: Mutex<Tails>,
    /// The embedded writer lease, honoured by every store and taken only by those opened with
    /// it.
    lease: lease::FileLease,
}

/// How an [`SqliteStore`] is opened.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// Whether the store takes the embedded writer lease when it is the only process appending,
    /// and then answers "has this stream moved?" from memory
    /// (`docs/decisions/0012-embedded-writer-lease.md`). A store without it still honours
    /// another store's lease: its appends wait until the holder gives it up.
    pub writer_lease: bool,
    /// Whether the lease is taken, kept and given up only by
    /// [`SqliteStore::tick_writer_lease`], for tests that step it themselves.
    #[doc(hidden)]
    pub manual_lease_ticks: bool,
}

impl Default for SqliteOptions {
    /// The writer lease on, kept by a task of the store's own.
    fn default() -> Self {
        Self {
            writer_lease: true,
            manual_lease_ticks: false,
        }
    }
}

impl SqliteOptions {
    /// These options with the writer lease on or off.
    pub fn writer_lease(mut self, on: bool) -> Self {
        self.writer_lease = on;
        self
    }
}

/// Stream reads queued while the reader is busy with others, answered together.
#[derive(Default)]
struct Tails {
    pending: Vec<TailRead>,
    running: bool,
}

struct TailRead {
    stream_id: String,
    after_version: u64,
    answer: tokio::sync::oneshot::Sender<StoreResult<Vec<StoredEvent>>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database `events.db` in `data_dir`, creating the directory
    /// too, and brings its schema up to date.
    ///
    /// The database runs in WAL mode with `synchronous=FULL`: an append that returned is on disk.
    /// Opening an up-to-date database changes nothing, so several opens are harmless.
    pub async fn open(data_dir: &Path) -> StoreResult<SqliteStore> {
        Self::open_with(data_dir, SqliteOptions::default()).await
    }

    /// [`SqliteStore::open`] with `options`.
    pub async fn open_with(data_dir: &Path, options: SqliteOptions) -> StoreResult<SqliteStore> {
        let data_dir = data_dir.to_path_buf();
        let store = run_blocking(move || Self::open_blocking(&data_dir, options)).await?;
        if options.writer_lease && !options.manual_lease_ticks {
            tokio::spawn(lease::keep(Arc::downgrade(&store.inner)));
        }
        Ok(store)
    }

    fn open_blocking(data_dir: &Path, options: SqliteOptions) -> StoreResult<SqliteStore> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        let path = data_dir.join(DATABASE_FILE);

        let mut writer = connect(&path)?;
        migrate(&mut writer)?;
        let reader = connect(&path)?;
        // Every store honours the lease's locks; only one opened with the lease takes it.
        let lease = lease::FileLease::open(&path, options.writer_lease);

        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
                tails: Mutex::default(),
                lease,
            }),
        })
    }

    /// Whether this store holds the embedded writer lease: reads of streams whose head it
    /// knows are answered from memory.
    pub fn holds_writer_lease(&self) -> bool {
        self.inner.lease.heads.is_held()
    }

    /// One step of the writer lease's keeper (take, keep or give up), for a store opened with
    /// [`SqliteOptions::manual_lease_ticks`].
    #[doc(hidden)]
    pub async fn tick_writer_lease(&self) -> StoreResult<()> {
        let inner = Arc::clone(&self.inner);
        run_blocking(move || inner.lease.tick(&lock(&inner.writer))).await
    }

    /// The path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The schema version the database is at after [`SqliteStore::open`].
    pub async fn schema_version(&self) -> StoreResult<u32> {
        self.with_reader(current_schema_version).await
    }

    /// Whether no stream read waits or is being answered by a blocking task.
    fn reader_is_idle(&self) -> bool {
        let tails = lock(&self.inner.tails);
        !tails.running && tails.pending.is_empty()
    }

    async fn with_reader<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        run_blocking(move || f(&lock(&inner.reader))).await
    }

    /// Reads the stream's events after `after_version` from the database.
    async fn send_stream_read(
        &self,
        stream_id: &str,
        after_version: u64,
    ) -> StoreResult<Vec<StoredEvent>> {
        // A read after a state this process has folded usually finds nothing, or the few
        // events its own appends just wrote: when no read waits and the reader is free, the
        // caller makes it at once, since handing it to a blocking thread and back costs more
        // than the read. A read from the stream's start may be long and always goes to the
        // blocking pool.
        // LIMITATION: a read that meets SQLITE_BUSY (a WAL file being recovered by another process) waits out the busy timeout on an async worker.
        if after_version > 0 && self.reader_is_idle() {
            let conn = match self.inner.reader.try_lock() {
                Ok(conn) => Some(conn),
                Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            };
            if let Some(conn) = conn {
                return read_tail(&conn, stream_id, after_version);
            }
        }

        // One blocking task answers every read queued while it runs, under one hold of the
        // reader, instead of a task and a lock per read.
        let (answer, answered) = tokio::sync::oneshot::channel();
        let start = {
            let mut tails = lock(&self.inner.tails);
            tails.pending.push(TailRead {
                stream_id: stream_id.to_owned(),
                after_version,
                answer,
            });
            !std::mem::replace(&mut tails.running, true)
        };
        if start {
            let inner = Arc::clone(&self.inner);
            tokio::task::spawn_blocking(move || answer_tails(&inner));
        }
        answered.await.map_err(|_| {
            StoreError::Unavailable("the read was dropped before it was answered".into())
        })?
    }
}

/// Locks a connection (or the queue of stream reads), recovering it if a previous holder
/// panicked.
///
/// Recovering is sound because a panic inside a call drops its `rusqlite::Transaction`, which
/// rolls back, so the connection is never left inside a half-done transaction; the queue is
/// changed only by whole pushes and takes.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn run_blocking<T, F>(f: F) -> StoreResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> StoreResult<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Backend(Box::new(e)))?
}

/// Answers queued stream reads until none is left, each read sent after it was queued, so it
/// sees every append committed before its caller asked.
fn answer_tails(inner: &Inner) {
    /// Lets a later read start a new task if this one panics.
    struct Running<'a>(&'a Inner);
    impl Drop for Running<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                lock(&self.0.tails).running = false;
            }
        }
    }
    let _running = Running(inner);
    loop {
        let batch = {
            let mut tails = lock(&inner.tails);
            if tails.pending.is_empty() {
                tails.running = false;
                return;
            }
            std::mem::take(&mut tails.pending)
        };
        let conn = lock(&inner.reader);
        for read in batch {
            let events = read_tail(&conn, &read.stream_id, read.after_version);
            // A caller that stopped waiting has no one to tell.
            let _ = read.answer.send(events);
        }
    }
}

/// The events of `stream_id` after `after_version`, personal fields opened.
fn read_tail(
    conn: &Connection,
    stream_id: &str,
    after_version: u64,
) -> StoreResult<Vec<StoredEvent>> {
    let mut events = query_events(
        conn,
        &format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ?1 AND version > ?2 \
             ORDER BY version"
        ),
        params![stream_id, to_sql_int(after_version)],
    )?;
    super::keys::sqlite::open(conn, &mut events)?;
    Ok(events)
}

fn connect(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path).map_err(map_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(map_err)?;
    // `journal_mode` answers with the mode in force; anything but `wal` means the file system
    // cannot give readers their own snapshot, which the store's design relies on.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(map_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(
            format!(
                "SQLite refused WAL journal mode for {} (got {mode})",
                path.display()
            )
            .into(),
        ));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(map_err)?;
    // A deleted data key or released email is overwritten in the file, not left in a free page.
    conn.pragma_update(None, "secure_delete", "ON")
        .map_err(map_err)?;
    Ok(conn)
}

fn current_schema_version(conn: &Connection) -> StoreResult<u32> {
    let version: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |row| row.get(0),
        )
        .map_err(map_err)?;
    u32::try_from(version).map_err(|_| StoreError::Corrupt(format!("schema version {version}")))
}

/// Applies the migrations the database has not seen yet, all in one write transaction so that
/// two processes opening the same new database cannot both apply a step.
fn migrate(conn: &mut Connection) -> StoreResult<()> {
    // LIMITATION: the check runs in a write transaction even when the schema is up to date, so a log in a directory or file this process cannot write cannot be opened, not even to be read.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_err)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version    INTEGER PRIMARY KEY,
            applied_at INTEGER NOT NULL
        )",
    )
    .map_err(map_err)?;
    let current = current_schema_version(&tx)? as usize;
    if current > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "database schema version {current} is newer than this build knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.execute_batch(sql).map_err(map_err)?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)",
            params![step as i64 + 1, Utc::now().timestamp_micros()],
        )
        .map_err(map_err)?;
    }
    tx.commit().map_err(map_err)
}

/// Maps SQLite failures to the store's errors by SQLite's own result codes.
fn map_err(err: rusqlite::Error) -> StoreError {
    match &err {
        rusqlite::Error::SqliteFailure(code, _) => match code.code {
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::CannotOpen
            | ErrorCode::DiskFull
            | ErrorCode::FileLockingProtocolFailed => StoreError::Unavailable(Box::new(err)),
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => {
                StoreError::Corrupt(err.to_string())
            }
            _ => StoreError::Backend(Box::new(err)),
        },
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::InvalidColumnType(..) => StoreError::Corrupt(err.to_string()),
        _ => StoreError::Backend(Box::new(err)),
    }
}

fn is_constraint_violation(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(ErrorCode::ConstraintViolation)
    )
}

/// Converts a caller's `u64` bound to SQLite's signed integers; anything beyond `i64::MAX`
/// selects nothing more than `i64::MAX` does, so clamping keeps the meaning.
fn to_sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64, what: &str) -> StoreResult<u64> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative {what}: {value}")))
}

/// A row as stored, before its JSON and ids are decoded.
struct RawEvent {
    position: i64,
    event_id: String,
    stream_id: String,
    stream_type: String,
    version: i64,
    occurred_at: i64,
    event_type: String,
    event_version: String,
    payload: String,
    metadata: String,
    key_id: Option<String>,
    hash: Option<String>,
}

impl RawEvent {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<RawEvent> {
        Ok(RawEvent {
            position: row.get(0)?,
            event_id: row.get(1)?,
            stream_id: row.get(2)?,
            stream_type: row.get(3)?,
            version: row.get(4)?,
            occurred_at: row.get(5)?,
            event_type: row.get(6)?,
            event_version: row.get(7)?,
            payload: row.get(8)?,
            metadata: row.get(9)?,
            key_id: row.get(10)?,
            hash: row.get(11)?,
        })
    }

    fn decode(self) -> StoreResult<StoredEvent> {
        let position = to_u64(self.position, "position")?;
        let corrupt = |what: &str, detail: String| {
            StoreError::Corrupt(format!("event at position {position}: {what}: {detail}"))
        };
        let event_id = uuid::Uuid::parse_str(&self.event_id)
            .map_err(|e| corrupt("event_id", e.to_string()))?;
        let occurred_at = DateTime::<Utc>::from_timestamp_micros(self.occurred_at)
            .ok_or_else(|| corrupt("occurred_at", self.occurred_at.to_string()))?;
        let payload: serde_json::Value =
            serde_json::from_str(&self.payload).map_err(|e| corrupt("payload", e.to_string()))?;
        let metadata: Metadata =
            serde_json::from_str(&self.metadata).map_err(|e| corrupt("metadata", e.to_string()))?;
        Ok(StoredEvent {
            event_id,
            position,
            stream_id: self.stream_id,
            stream_type: self.stream_type,
            version: to_u64(self.version, "version")?,
            occurred_at,
            event_type: self.event_type,
            event_version: self.event_version,
            payload,
            metadata,
            key_id: self.key_id,
            hash: self.hash,
        })
    }
}

fn query_events(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> StoreResult<Vec<StoredEvent>> {
    let mut stmt = conn.prepare_cached(sql).map_err(map_err)?;
    let raw = stmt
        .query_map(params, RawEvent::from_row)
        .map_err(map_err)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(map_err)?;
    raw.into_iter().map(RawEvent::decode).collect()
}

fn find_request_in(
    conn: &Connection,
    actor: &str,
    request_id: &str,
) -> StoreResult<Option<RequestOutcome>> {
    let row: Option<(String, String, i64)> = conn
        .prepare_cached(
            "SELECT request_hash, outcome, position FROM requests \
             WHERE actor = ?1 AND request_id = ?2",
        )
        .map_err(map_err)?
        .query_row(params![actor, request_id], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()
        .map_err(map_err)?;
    row.map(|(request_hash, outcome, position)| {
        let mut outcome = serde_json::from_str(&outcome).map_err(|e| {
            StoreError::Corrupt(format!("outcome of request {actor}/{request_id}: {e}"))
        })?;
        super::keys::sqlite::open_request(conn, actor, request_id, &mut outcome)?;
        Ok(RequestOutcome {
            request_hash,
            outcome,
            position: to_u64(position, "request position")?,
        })
    })
    .transpose()
}

fn to_json(value: &impl serde::Serialize) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(Box::new(e)))
}

/// The head position the appends recorded.
fn read_head(conn: &Connection) -> StoreResult<u64> {
    let head: i64 = conn
        .prepare_cached("SELECT position FROM event_head WHERE singleton = 1")
        .map_err(map_err)?
        .query_row([], |row| row.get(0))
        .map_err(map_err)?;
    to_u64(head, "head position")
}

/// The stored hash of the event at `head`: `None` when there is no such row.
fn head_hash(conn: &Connection, head: u64) -> StoreResult<Option<Option<String>>> {
    conn.prepare_cached("SELECT hash FROM events WHERE position = ?1")
        .map_err(map_err)?
        .query_row(params![to_sql_int(head)], |row| row.get(0))
        .optional()
        .map_err(map_err)
}

fn append_blocking(conn: &mut Connection, mut batch: AppendBatch) -> StoreResult<Appended> {
    super::check_batch(&batch)?;

    // IMMEDIATE takes the write lock before the first read, so the head and the stream version
    // read below cannot change before this transaction commits.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_err)?;

    if let Some(request) = &batch.request {
        if let Some(outcome) = find_request_in(&tx, &request.actor, &request.request_id)? {
            return Err(StoreError::DuplicateRequest(outcome));
        }
    }

    let actual: i64 = tx
        .prepare_cached("SELECT COALESCE(MAX(version), 0) FROM events WHERE stream_id = ?1")
        .map_err(map_err)?
        .query_row(params![batch.stream_id], |row| row.get(0))
        .map_err(map_err)?;
    let actual = to_u64(actual, "version")?;
    if actual != batch.expected_version {
        return Err(StoreError::Conflict {
            stream_id: batch.stream_id,
            expected: batch.expected_version,
            actual,
        });
    }

    for release in &batch.releases {
        tx.prepare_cached(
            "DELETE FROM reservations WHERE scope = ?1 AND key = ?2 AND stream_id = ?3",
        )
        .map_err(map_err)?
        .execute(params![release.scope, release.key, batch.stream_id])
        .map_err(map_err)?;
    }
    for reservation in &batch.reservations {
        let inserted = tx
            .prepare_cached("INSERT INTO reservations (scope, key, stream_id) VALUES (?1, ?2, ?3)")
            .map_err(map_err)?
            .execute(params![reservation.scope, reservation.key, batch.stream_id]);
        match inserted {
            Ok(_) => {}
            Err(e) if is_constraint_violation(&e) => {
                return Err(StoreError::Reserved {
                    scope: reservation.scope.clone(),
                    key: reservation.key.clone(),
                })
            }
            Err(e) => return Err(map_err(e)),
        }
    }

    // Sealing comes before hashing: the chain covers the event as stored.
    super::keys::sqlite::prepare(&tx, &mut batch)?;

    let head = read_head(&tx)?;
    let previous = super::head_link(head, head_hash(&tx, head)?)?;
    let stored_at = super::stored_time(batch.occurred_at)?;
    let links = super::batch_hashes(&batch, stored_at, head, actual, previous)?;
    let occurred_at = stored_at.timestamp_micros();
    let mut position = head;
    let mut version = actual;
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO events (position, event_id, stream_id, stream_type, version, \
                 occurred_at, event_type, event_version, payload, metadata, key_id, hash) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .map_err(map_err)?;
        for (event, link) in batch.events.iter().zip(&links) {
            position += 1;
            version += 1;
            insert
                .execute(params![
                    to_sql_int(position),
                    event.event_id.to_string(),
                    batch.stream_id,
                    batch.stream_type,
                    to_sql_int(version),
                    occurred_at,
                    event.event_type,
                    event.event_version,
                    to_json(&event.payload)?,
                    to_json(&event.metadata)?,
                    event.key_id,
                    link.to_string(),
                ])
                .map_err(|e| {
                    // The stream version was checked under the write lock, so the only
                    // constraint an insert can still break is a reused event id.
                    if is_constraint_violation(&e) {
                        StoreError::Backend(
                            format!("event id {} is already stored", event.event_id).into(),
                        )
                    } else {
                        map_err(e)
                    }
                })?;
        }
    }

    if let Some(request) = &batch.request {
        tx.prepare_cached(
            "INSERT INTO requests (actor, request_id, request_hash, outcome, position) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(map_err)?
        .execute(params![
            request.actor,
            request.request_id,
            request.request_hash,
            to_json(&request.outcome)?,
            to_sql_int(position),
        ])
        .map_err(map_err)?;
    }

    tx.prepare_cached(lease::ADVANCE_HEAD)
        .map_err(map_err)?
        .execute(params![to_sql_int(position)])
        .map_err(map_err)?;

    tx.commit().map_err(map_err)?;
    Ok(Appended {
        first_position: head + 1,
        last_position: position,
        stream_version: version,
    })
}

fn read_all_in(
    conn: &Connection,
    after_position: u64,
    limit: i64,
) -> StoreResult<Vec<StoredEvent>> {
    query_events(
        conn,
        &format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"
        ),
        params![to_sql_int(after_position), limit],
    )
}

#[async_trait::async_trait]
impl EventReader for SqliteStore {
    async fn read_stream(
        &self,
        stream_id: &str,
        after_version: u64,
    ) -> StoreResult<Vec<StoredEvent>> {
        // Nothing can have been appended that this process does not know of while it holds the
        // writer lease (see `sqlite/lease.rs`).
        let heads = &self.inner.lease.heads;
        let token = match heads.begin_read(stream_id, after_version) {
            ReadStart::Unmoved if self.inner.lease.may_answer() => return Ok(Vec::new()),
            ReadStart::Unmoved => None,
            ReadStart::Send(token) => token,
        };
        let events = self.send_stream_read(stream_id, after_version).await?;
        let head = events.last().map_or(after_version, |e| e.version);
        heads.read_found(token, stream_id, head);
        Ok(events)
    }

    async fn read_all(&self, after_position: u64, limit: usize) -> StoreResult<Vec<StoredEvent>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_reader(move |conn| {
            let mut events = read_all_in(conn, after_position, limit)?;
            super::keys::sqlite::open(conn, &mut events)?;
            Ok(events)
        })
        .await
    }

    async fn read_all_sealed(
        &self,
        after_position: u64,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_reader(move |conn| read_all_in(conn, after_position, limit))
            .await
    }

    async fn head_position(&self) -> StoreResult<u64> {
        self.with_reader(read_head).await
    }
}

#[async_trait::async_trait]
impl EventAppender for SqliteStore {
    async fn append(&self, batch: AppendBatch) -> StoreResult<Appended> {
        let inner = Arc::clone(&self.inner);
        run_blocking(move || {
            let mut writer = lock(&inner.writer);
            let lease = &inner.lease;
            let hold = lease.before_append()?;
            let stream_id = batch.stream_id.clone();
            lease.heads.writing(std::iter::once(stream_id.as_str()));
            let appended = append_blocking(&mut writer, batch);
            let head = appended.as_ref().map_or(0, |a| a.stream_version);
            lease.heads.written(
                std::iter::once((stream_id.as_str(), head)),
                appended.is_ok(),
                hold.epoch(),
            );
            if let Err(err) = lease.after_append(hold) {
                // Held on, the shared lock only keeps a holder from taking the lease.
                tracing::warn!(error = %err, "embedded writer lease's shared lock not let go");
            }
            appended
        })
        .await
    }
}

#[async_trait::async_trait]
impl RequestLog for SqliteStore {
    async fn find_request(
        &self,
        actor: &str,
        request_id: &str,
    ) -> StoreResult<Option<RequestOutcome>> {
        let (actor, request_id) = (actor.to_owned(), request_id.to_owned());
        self.with_reader(move |conn| find_request_in(conn, &actor, &request_id))
            .await
    }
}

#[async_trait::async_trait]
impl ReservationLookup for SqliteStore {
    async fn find_reservation(&self, scope: &str, key: &str) -> StoreResult<Option<String>> {
        let (scope, key) = (scope.to_owned(), key.to_owned());
        self.with_reader(move |conn| {
            conn.prepare_cached("SELECT stream_id FROM reservations WHERE scope = ?1 AND key = ?2")
                .map_err(map_err)?
                .query_row(params![scope, key], |row| row.get(0))
                .optional()
                .map_err(map_err)
        })
        .await
    }
}
