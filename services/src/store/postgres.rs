//! The distributed event store: PostgreSQL through a pool of tokio-postgres connections.
//!
//! Positions come from a single-row head counter that every append locks `FOR UPDATE` before
//! it reads anything. A position is therefore only ever taken by the transaction that holds the
//! lock, and the next appender can only take the following position once that transaction has
//! committed (or rolled back, giving the position back). Readers never see a later position
//! before an earlier one: there is no sequence whose numbers are handed out ahead of commit.
//! `docs/decisions/0001-gap-free-positions.md` records why and what it costs.
//!
//! Under the same lock the append reads the head event's stored hash and computes each new
//! event's link of the hash chain from it.
//!
//! Appends that arrive while another holds the lock are committed together, as one group under
//! one hold of it, each decided as if alone (see `group.rs` and
//! `docs/decisions/0008-group-commit.md`).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use onbehalf_events::{Metadata, StoredEvent};
use tokio::sync::oneshot;
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};
use uuid::Uuid;

use super::heads;
use super::{
    AppendBatch, Appended, EventAppender, EventReader, RequestLog, RequestOutcome,
    ReservationLookup, StoreError, StoreResult,
};

mod group;
mod lease;
mod tails;

/// The notification channel every append's commit notifies, with the new head position as its
/// payload, so that readers of the log in other processes (the relay, API replicas reading the
/// log) learn of it without polling.
pub const APPENDED_CHANNEL: &str = "onbehalf_appended";

/// Drives a connection of its own on a task, passing on each notification it receives; the
/// channel closes when the connection ends. Abort the task to close the connection.
pub(crate) fn notifications<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
    tokio::task::JoinHandle<()>,
)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (notes_tx, notes) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(note))) => {
                    if notes_tx.send(note).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    });
    (notes, driver)
}

/// The key of the advisory lock that serialises migrations of one database across replicas.
const MIGRATION_LOCK_KEY: i64 = 0x6f6e_6265_6861_6c66; // "onbehalf" in ASCII

/// The schema, one step per entry; step `n` brings the database to version `n + 1`.
///
/// Steps are never edited once released: a change is a new step. JSON is stored as `json`, not
/// `jsonb`, so every value serde_json can produce (a `\u0000` in a string included) is accepted
/// and read back as written, exactly as the SQLite backend does.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE event_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    position  bigint  NOT NULL
);
INSERT INTO event_head (singleton, position) VALUES (true, 0);
CREATE TABLE events (
    position      bigint      PRIMARY KEY,
    event_id      uuid        NOT NULL UNIQUE,
    stream_id     text        NOT NULL,
    stream_type   text        NOT NULL,
    version       bigint      NOT NULL,
    occurred_at   timestamptz NOT NULL,
    event_type    text        NOT NULL,
    event_version text        NOT NULL,
    payload       json        NOT NULL,
    metadata      json        NOT NULL,
    key_id        text,
    hash          text,
    UNIQUE (stream_id, version)
);
CREATE TABLE reservations (
    scope     text NOT NULL,
    key       text NOT NULL,
    stream_id text NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE TABLE requests (
    actor        text   NOT NULL,
    request_id   text   NOT NULL,
    request_hash text   NOT NULL,
    outcome      json   NOT NULL,
    position     bigint NOT NULL,
    PRIMARY KEY (actor, request_id)
);
"#,
    super::keys::postgres::MIGRATION,
    lease::MIGRATION,
];

/// Server-side limit on how long a session may sit idle inside an open transaction.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "-c idle_in_transaction_session_timeout=30000";

const EVENT_COLUMNS: &str = "position, event_id, stream_id, stream_type, version, occurred_at, \
     event_type, event_version, payload, metadata, key_id, hash";

/// How the pool behind a [`PostgresStore`] connects and how long a call may wait.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// The most connections the pool opens.
    pub max_connections: usize,
    /// How long opening one connection may take before the call fails as unavailable.
    pub connect_timeout: Duration,
    /// How long a call waits for a free connection before failing as unavailable.
    pub wait_timeout: Duration,
    /// The longest one store call (a read, or an append with its transaction) may take before
    /// it fails as unavailable, for a server that accepts connections and data but never
    /// answers (a stopped process, a wedged host).
    pub call_timeout: Duration,
    /// Whether the store takes the writer lease when it is the only process appending, and then
    /// answers "has this stream moved?" from memory (`docs/decisions/0011-writer-lease.md`).
    pub writer_lease: bool,
}

impl Default for PostgresOptions {
    /// 16 connections; 5 s to connect or to wait for a connection, so that a call against a
    /// server that is down fails quickly instead of hanging; 10 s for a whole call; the writer
    /// lease on.
    fn default() -> Self {
        Self {
            max_connections: 16,
            connect_timeout: Duration::from_secs(5),
            wait_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(10),
            writer_lease: true,
        }
    }
}

/// An event store in a PostgreSQL database.
///
/// Cloning is cheap and shares the pool. A call made while the server is down fails with
/// [`StoreError::Unavailable`]; broken connections are replaced, so calls succeed again once
/// the server is back, without restarting the process.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// How to open a connection of its own, for listening.
    config: tokio_postgres::Config,
    call_timeout: Duration,
    committer: Arc<group::Committer>,
    tails: Arc<tails::Tails>,
    lease: Arc<lease::WriterLease>,
}

impl std::fmt::Debug for PostgresStore {
    // The URL may hold a password, so only the pool's size is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PostgresStore")
            .field("max_connections", &status.max_size)
            .field("open_connections", &status.size)
            .finish()
    }
}

/// A pause between taking positions and committing them, for tests of the ordering guarantee.
///
/// See [`PostgresStore::append_with_commit_gate`].
#[derive(Debug)]
pub struct CommitGate {
    /// Receives the positions the append has taken, once it holds them and before it commits.
    pub taken: oneshot::Sender<Appended>,
    /// The append commits when this fires or its sender is dropped.
    pub release: oneshot::Receiver<()>,
}

impl PostgresStore {
    /// Connects to `url` with [`PostgresOptions::default`]; see [`PostgresStore::connect_with`].
    pub async fn connect(url: &str) -> StoreResult<PostgresStore> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Builds the pool for `url` (a `postgres://` URL or a key=value string) and brings the
    /// database's schema up to date.
    ///
    /// Migrations run under a transaction-scoped advisory lock, so replicas starting at the same
    /// time apply each step once. An unreachable server gives [`StoreError::Unavailable`] within
    /// the connect timeout; a malformed URL gives [`StoreError::Backend`].
    pub async fn connect_with(url: &str, options: PostgresOptions) -> StoreResult<PostgresStore> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError::Backend(Box::new(e)))?;
        config.connect_timeout(options.connect_timeout);
        // An append holds the head lock for its whole transaction; a session that stalls inside
        // one must not stall every writer for longer than this.
        let session_options = match config.get_options() {
            Some(existing) => format!("{existing} {IDLE_IN_TRANSACTION_TIMEOUT}"),
            None => IDLE_IN_TRANSACTION_TIMEOUT.to_owned(),
        };
        config.options(session_options);
        // Keepalives and the user timeout let a connection whose server vanished without
        // closing it (a network partition) fail instead of waiting forever.
        // A server whose host still acknowledges TCP but whose process never answers (stopped,
        // wedged) defeats both; the per-call deadline (`call_timeout`) covers that case.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(30));

        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            // `Fast` replaces connections whose socket has closed; a server restart closes them
            // all, so that is enough to recover without a query per checkout.
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.max_connections)
            .wait_timeout(Some(options.wait_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Backend(Box::new(e)))?;

        let store = PostgresStore {
            pool,
            config,
            call_timeout: options.call_timeout,
            committer: Arc::default(),
            tails: Arc::default(),
            lease: Arc::new(lease::WriterLease::new()),
        };
        store.migrate().await?;
        if options.writer_lease {
            tokio::spawn(lease::keep(
                Arc::downgrade(&store.lease),
                store.pool.clone(),
            ));
        }
        Ok(store)
    }

    /// Whether this store holds the writer lease and trusts it now: reads of streams whose head
    /// it knows are then answered from memory.
    pub fn holds_writer_lease(&self) -> bool {
        self.lease.heads.is_held()
    }

    /// The schema version the database is at.
    pub async fn schema_version(&self) -> StoreResult<u32> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
            .await
            .map_err(map_err)?;
        let version: i32 = row.try_get(0).map_err(corrupt)?;
        u32::try_from(version).map_err(|_| StoreError::Corrupt(format!("schema version {version}")))
    }

    /// Listens on a connection of its own for the commits of appends made by any process on
    /// this database, and sends the log's head position on `head` when it starts listening and
    /// after each commit. Returns an error when the connection cannot be opened or ends; the
    /// caller decides when to listen again, and keeps polling meanwhile.
    ///
    /// A notification can be lost only with its connection, so a follower that polls slowly
    /// while listening sees every append at once, and every append within its poll interval
    /// when the listening connection is down.
    pub async fn follow_appends(&self, head: &tokio::sync::watch::Sender<u64>) -> StoreResult<()> {
        let (client, connection) = self.config.connect(NoTls).await.map_err(map_err)?;
        let (mut notes, driver) = notifications(connection);
        let listened = async {
            client
                .batch_execute(&format!("LISTEN {APPENDED_CHANNEL}"))
                .await
                .map_err(map_err)?;
            // Appends committed before LISTEN took effect are found by reading the head.
            let row = client
                .query_one("SELECT position FROM event_head WHERE singleton", &[])
                .await
                .map_err(map_err)?;
            let position: i64 = row.try_get(0).map_err(corrupt)?;
            head.send_replace(to_u64(position, "head position")?);
            while let Some(note) = notes.recv().await {
                match note.payload().parse::<u64>() {
                    Ok(position) => {
                        head.send_replace(position);
                    }
                    Err(_) => tracing::warn!(
                        channel = APPENDED_CHANNEL,
                        "ignoring a notification that names no position"
                    ),
                }
            }
            Err(StoreError::Unavailable(
                "the connection listening for appends ended".into(),
            ))
        }
        .await;
        driver.abort();
        listened
    }

    /// Keeps `head` at the log's head as commits announce it, for as long as anyone holds a
    /// receiver of it: follows appends like [`Self::follow_appends`], and listens again a
    /// second after the listening connection fails. Meanwhile the receivers are not woken, so
    /// they must keep polling.
    pub async fn keep_following_appends(self, head: tokio::sync::watch::Sender<u64>) {
        loop {
            let listened = tokio::select! {
                result = self.follow_appends(&head) => result,
                () = head.closed() => return,
            };
            if let Err(err) = listened {
                tracing::warn!(error = %err, "not notified of appends; polling the log until listening again");
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = head.closed() => return,
            }
        }
    }

    /// Appends like [`EventAppender::append`], but after taking its positions and writing its
    /// rows it reports them on `gate.taken` and waits for `gate.release` before committing.
    ///
    /// This exists for tests of the ordering guarantee: while the append waits it holds the head
    /// lock, so it shows that later appenders block and that readers see nothing of it until it
    /// commits. Production code has no reason to call it.
    pub async fn append_with_commit_gate(
        &self,
        batch: AppendBatch,
        gate: CommitGate,
    ) -> StoreResult<Appended> {
        super::check_batch(&batch)?;
        let mut results = group::commit(&self.pool, &self.lease, vec![batch], Some(gate)).await?;
        results
            .pop()
            .unwrap_or_else(|| Err(StoreError::Backend("the group answered nothing".into())))
    }

    /// Runs one store call under the per-call deadline; past it the call fails as
    /// [`StoreError::Unavailable`]. An append cut off there may still commit, exactly as when
    /// its connection drops: the caller's request id makes its retry safe.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        // The call, and the connection it held, are dropped at the end of this statement.
        let outcome = tokio::time::timeout(self.call_timeout, call).await;
        match outcome {
            Ok(result) => result,
            Err(_) => {
                // A connection given up on mid-call may be left inside a transaction or behind
                // an unanswered query; the idle ones are closed so that none is handed out again.
                self.pool.retain(|_, _| false);
                Err(StoreError::Unavailable(
                    format!(
                        "PostgreSQL did not answer within {} ms",
                        self.call_timeout.as_millis()
                    )
                    .into(),
                ))
            }
        }
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(map_pool_err)
    }

    async fn migrate(&self) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await
            .map_err(map_err)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_version (
                version    integer     PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(map_err)?;
        let row = tx
            .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
            .await
            .map_err(map_err)?;
        let current: i32 = row.try_get(0).map_err(corrupt)?;
        let current = usize::try_from(current)
            .map_err(|_| StoreError::Corrupt(format!("schema version {current}")))?;
        if current > MIGRATIONS.len() {
            return Err(StoreError::Corrupt(format!(
                "database schema version {current} is newer than this build knows ({})",
                MIGRATIONS.len()
            )));
        }
        for (step, sql) in MIGRATIONS.iter().enumerate().skip(current) {
            tx.batch_execute(sql).await.map_err(map_err)?;
            let version = i32::try_from(step + 1)
                .map_err(|_| StoreError::Backend("too many migrations".into()))?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&version],
            )
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }
}

/// Maps a pool checkout failure: every way of not getting a connection means the store cannot
/// be reached right now.
fn map_pool_err(err: PoolError) -> StoreError {
    match err {
        PoolError::NoRuntimeSpecified => StoreError::Backend(Box::new(err)),
        // The pool recycles broken connections itself; a backend error here comes from
        // opening a new one, so whatever the server said (refused, not accepting connections,
        // authentication), the store cannot be reached now.
        PoolError::Backend(e) => StoreError::Unavailable(Box::new(e)),
        PoolError::Timeout(_) | PoolError::Closed | PoolError::PostCreateHook(_) => {
            StoreError::Unavailable(Box::new(err))
        }
    }
}

/// Maps a query failure by its kind: a closed connection, a socket failure (refused, reset,
/// connect timeout: tokio-postgres reports all of them with an `io::Error` source) or a server
/// that is shutting down or refusing connections is [`StoreError::Unavailable`]; anything else
/// is a backend failure.
pub(crate) fn map_err(err: tokio_postgres::Error) -> StoreError {
    if err.is_closed() || is_io_error(&err) {
        return StoreError::Unavailable(Box::new(Described(err)));
    }
    if err.code().is_some_and(is_unavailable_state) {
        StoreError::Unavailable(Box::new(Described(err)))
    } else {
        StoreError::Backend(Box::new(Described(err)))
    }
}

/// A driver error that says what the server said: the driver's own message for a server error
/// is only "db error", with the server's words in its source.
#[derive(Debug)]
struct Described(tokio_postgres::Error);

impl std::fmt::Display for Described {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_db_error() {
            Some(db) => write!(f, "{} ({})", db.message(), db.code().code()),
            None => self.0.fmt(f),
        }
    }
}

impl std::error::Error for Described {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

fn is_io_error(err: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
        source = e.source();
    }
    false
}

fn is_unavailable_state(code: &SqlState) -> bool {
    [
        SqlState::CONNECTION_EXCEPTION,
        SqlState::CONNECTION_DOES_NOT_EXIST,
        SqlState::CONNECTION_FAILURE,
        SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
        SqlState::SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::TOO_MANY_CONNECTIONS,
        // A standby reached after a failover refuses writes until a primary is back.
        SqlState::READ_ONLY_SQL_TRANSACTION,
    ]
    .contains(code)
}

/// A column that does not decode into its Rust type means the row is not what this build
/// wrote.
fn corrupt(err: tokio_postgres::Error) -> StoreError {
    StoreError::Corrupt(err.to_string())
}

/// Converts a caller's `u64` bound to PostgreSQL's `bigint`; anything beyond `i64::MAX` selects
/// nothing more than `i64::MAX` does, so clamping keeps the meaning.
fn to_sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64, what: &str) -> StoreResult<u64> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative {what}: {value}")))
}

fn decode_event(row: &Row) -> StoreResult<StoredEvent> {
    let position: i64 = row.try_get(0).map_err(corrupt)?;
    let position = to_u64(position, "position")?;
    let event_id: Uuid = row.try_get(1).map_err(corrupt)?;
    let version: i64 = row.try_get(4).map_err(corrupt)?;
    let occurred_at: DateTime<Utc> = row.try_get(5).map_err(corrupt)?;
    let metadata: serde_json::Value = row.try_get(9).map_err(corrupt)?;
    let metadata: Metadata = serde_json::from_value(metadata)
        .map_err(|e| StoreError::Corrupt(format!("event at position {position}: metadata: {e}")))?;
    Ok(StoredEvent {
        event_id,
        position,
        stream_id: row.try_get(2).map_err(corrupt)?,
        stream_type: row.try_get(3).map_err(corrupt)?,
        version: to_u64(version, "version")?,
        occurred_at,
        event_type: row.try_get(6).map_err(corrupt)?,
        event_version: row.try_get(7).map_err(corrupt)?,
        payload: row.try_get(8).map_err(corrupt)?,
        metadata,
        key_id: row.try_get(10).map_err(corrupt)?,
        hash: row.try_get(11).map_err(corrupt)?,
    })
}

async fn find_request_in(
    client: &impl deadpool_postgres::GenericClient,
    actor: &str,
    request_id: &str,
) -> StoreResult<Option<RequestOutcome>> {
    let stmt = client
        .prepare_cached(
            "SELECT request_hash, outcome, position FROM requests \
             WHERE actor = $1 AND request_id = $2",
        )
        .await
        .map_err(map_err)?;
    let row = client
        .query_opt(&stmt, &[&actor, &request_id])
        .await
        .map_err(map_err)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let position: i64 = row.try_get(2).map_err(corrupt)?;
    let mut outcome: serde_json::Value = row.try_get(1).map_err(corrupt)?;
    super::keys::postgres::open_request(client, actor, request_id, &mut outcome).await?;
    Ok(Some(RequestOutcome {
        request_hash: row.try_get(0).map_err(corrupt)?,
        outcome,
        position: to_u64(position, "request position")?,
    }))
}

#[async_trait::async_trait]
impl EventReader for PostgresStore {
    async fn read_stream(
        &self,
        stream_id: &str,
        after_version: u64,
    ) -> StoreResult<Vec<StoredEvent>> {
        // Nothing can have been appended that this process does not know of while it holds the
        // writer lease (see `lease.rs`).
        let token = match self.lease.heads.begin_read(stream_id, after_version) {
            heads::ReadStart::Unmoved => return Ok(Vec::new()),
            heads::ReadStart::Send(token) => token,
        };
        // Reads asked for together are answered by one statement (see `tails.rs`).
        let events = self
            .bounded(
                self.tails
                    .read(&self.pool, self.call_timeout, stream_id, after_version),
            )
            .await?;
        let head = events.last().map_or(after_version, |e| e.version);
        self.lease.heads.read_found(token, stream_id, head);
        Ok(events)
    }

    async fn read_all(&self, after_position: u64, limit: usize) -> StoreResult<Vec<StoredEvent>> {
        self.bounded(async move {
            let mut events = self.read_all_sealed(after_position, limit).await?;
            let client = self.client().await?;
            super::keys::postgres::open(&client, &mut events).await?;
            Ok(events)
        })
        .await
    }

    async fn read_all_sealed(
        &self,
        after_position: u64,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        self.bounded(async move {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let client = self.client().await?;
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
                ))
                .await
                .map_err(map_err)?;
            let rows = client
                .query(&stmt, &[&to_sql_int(after_position), &limit])
                .await
                .map_err(map_err)?;
            rows.iter().map(decode_event).collect()
        })
        .await
    }

    async fn head_position(&self) -> StoreResult<u64> {
        self.bounded(async move {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached("SELECT position FROM event_head WHERE singleton")
                .await
                .map_err(map_err)?;
            let head: i64 = client
                .query_one(&stmt, &[])
                .await
                .map_err(map_err)?
                .try_get(0)
                .map_err(corrupt)?;
            to_u64(head, "head position")
        })
        .await
    }
}

#[async_trait::async_trait]
impl EventAppender for PostgresStore {
    async fn append(&self, batch: AppendBatch) -> StoreResult<Appended> {
        super::check_batch(&batch)?;
        self.bounded(self.committer.append(&self.pool, &self.lease, batch))
            .await
    }
}

#[async_trait::async_trait]
impl RequestLog for PostgresStore {
    async fn find_request(
        &self,
        actor: &str,
        request_id: &str,
    ) -> StoreResult<Option<RequestOutcome>> {
        self.bounded(async move {
            let client = self.client().await?;
            find_request_in(&client, actor, request_id).await
        })
        .await
    }
}

#[async_trait::async_trait]
impl ReservationLookup for PostgresStore {
    async fn find_reservation(&self, scope: &str, key: &str) -> StoreResult<Option<String>> {
        self.bounded(async move {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached("SELECT stream_id FROM reservations WHERE scope = $1 AND key = $2")
                .await
                .map_err(map_err)?;
            let row = client
                .query_opt(&stmt, &[&scope, &key])
                .await
                .map_err(map_err)?;
            row.map(|row| row.try_get(0).map_err(corrupt)).transpose()
        })
        .await
    }
}
