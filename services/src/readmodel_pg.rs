//! The read models persisted in PostgreSQL, as documents per key, with their checkpoint.
//!
//! One projection, [`PROJECTION`], holds every read model: they share one position because
//! notifications and audit entries are folded from the account tree and the ledger as they are
//! right after each event. Its state is stored as the documents of
//! [`onbehalf_projections::AccountDocument`] and friends, one row per key, tagged with a
//! *generation*: the serving generation is named by the `projection` row, and a rebuild writes
//! a fresh generation beside it and swaps it in by updating that row in one transaction
//! (`docs/decisions/0009-persisted-projections.md`).
//!
//! Guarantees:
//!
//! - **Atomic progress.** A batch's documents and its checkpoint are written in one transaction,
//!   so the stored documents always describe exactly the events up to the stored checkpoint.
//! - **One writer per generation at a time.** A write names the checkpoint it started from and
//!   locks the checkpoint row; if another writer moved it, or a rebuild swapped the generation,
//!   the write is refused as [`Written::Stale`] and nothing changes.
//! - **Readers are told.** Every write sends `NOTIFY` on [`NOTIFY_CHANNEL`] inside its
//!   transaction, so listeners hear of it exactly when it becomes visible.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use onbehalf_events::Product;
use onbehalf_projections::{
    AccountDocument, AuditEntry, Changes, InvitationLinks, Notification, ReadModels, UserView,
};
use tokio_postgres::{IsolationLevel, NoTls, Transaction};
use uuid::Uuid;

/// The name of the projection that holds every read model.
pub const PROJECTION: &str = "read-models";

/// The channel every write of the read models notifies, with payload
/// `<projection> <generation> <position>`.
pub const NOTIFY_CHANNEL: &str = "onbehalf_read_models";

/// The key of the transaction-scoped advisory lock that serialises this module's migration.
const SCHEMA_LOCK_KEY: i64 = 0x6f62_7270_726f_6a31; // "obrprj1"

/// The read models' tables, created at start if missing.
///
/// JSON is stored as `json`, not `jsonb`, so every string serde_json can write is kept as is.
// LIMITATION: notification rows keep the invitation tokens their bodies link to, as the in-memory
// read models do, so these tables are as sensitive as the invitation secret.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS projection (
    name       text        PRIMARY KEY,
    generation bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS projection_checkpoint (
    name                text        NOT NULL,
    generation          bigint      NOT NULL,
    position            bigint      NOT NULL CHECK (position >= 0),
    last_invoice_number bigint      NOT NULL CHECK (last_invoice_number >= 0),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, generation)
);
ALTER TABLE projection_checkpoint
    ADD COLUMN IF NOT EXISTS history_stale boolean NOT NULL DEFAULT false;
CREATE TABLE IF NOT EXISTS rm_account (
    generation bigint NOT NULL,
    account_id uuid   NOT NULL,
    position   bigint NOT NULL,
    document   json   NOT NULL,
    PRIMARY KEY (generation, account_id)
);
CREATE INDEX IF NOT EXISTS rm_account_changed ON rm_account (generation, position);
CREATE TABLE IF NOT EXISTS rm_user (
    generation bigint NOT NULL,
    user_id    uuid   NOT NULL,
    position   bigint NOT NULL,
    document   json   NOT NULL,
    PRIMARY KEY (generation, user_id)
);
CREATE INDEX IF NOT EXISTS rm_user_changed ON rm_user (generation, position);
CREATE TABLE IF NOT EXISTS rm_invitation_email (
    generation bigint NOT NULL,
    email_key  text   NOT NULL,
    position   bigint NOT NULL,
    document   json   NOT NULL,
    PRIMARY KEY (generation, email_key)
);
CREATE INDEX IF NOT EXISTS rm_invitation_email_changed ON rm_invitation_email (generation, position);
CREATE TABLE IF NOT EXISTS rm_product (
    generation bigint NOT NULL,
    product_id uuid   NOT NULL,
    position   bigint NOT NULL,
    document   json   NOT NULL,
    PRIMARY KEY (generation, product_id)
);
CREATE INDEX IF NOT EXISTS rm_product_changed ON rm_product (generation, position);
CREATE TABLE IF NOT EXISTS rm_notification (
    generation bigint NOT NULL,
    position   bigint NOT NULL,
    seq        int    NOT NULL,
    document   json   NOT NULL,
    PRIMARY KEY (generation, position, seq)
);
CREATE TABLE IF NOT EXISTS rm_audit (
    generation bigint NOT NULL,
    position   bigint NOT NULL,
    document   json   NOT NULL,
    PRIMARY KEY (generation, position)
);
";

/// The document tables, each keyed by generation.
const DOCUMENT_TABLES: &[&str] = &[
    "rm_account",
    "rm_user",
    "rm_invitation_email",
    "rm_product",
    "rm_notification",
    "rm_audit",
];

/// What can go wrong with the persisted read models.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadModelError {
    /// PostgreSQL cannot be reached or a connection broke.
    #[error("read-model database unavailable: {0}")]
    Unavailable(String),
    /// Any other database failure.
    #[error("read-model database failure: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// A stored document does not decode, or a value does not fit its column.
    #[error("stored read model is corrupt: {0}")]
    Corrupt(String),
    /// The projection name is not one this release knows.
    #[error("unknown projection `{0}`; the projections are: {PROJECTION}")]
    UnknownProjection(String),
}

impl ReadModelError {
    /// Whether waiting and trying again may succeed: the database is away.
    pub fn is_unavailable(&self) -> bool {
        match self {
            ReadModelError::Unavailable(_) => true,
            ReadModelError::Database(e) => e.is_closed() || e.code().is_none(),
            _ => false,
        }
    }
}

impl From<deadpool_postgres::PoolError> for ReadModelError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        ReadModelError::Unavailable(e.to_string())
    }
}

impl From<serde_json::Error> for ReadModelError {
    fn from(e: serde_json::Error) -> Self {
        ReadModelError::Corrupt(e.to_string())
    }
}

/// Result alias of this module.
pub type ReadModelResult<T> = Result<T, ReadModelError>;

/// Where one generation of the projection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The generation.
    pub generation: u64,
    /// The position of the last event its documents include.
    pub position: u64,
    /// The ledger's last invoice number at that position.
    pub last_invoice_number: u64,
    /// Whether an event folded into it rewrote earlier history (an erasure), so that only a
    /// rebuild makes its notifications and audit entries right again.
    pub history_stale: bool,
}

/// The outcome of [`ReadModelStore::write`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// The documents and the checkpoint were committed.
    Committed,
    /// The checkpoint was not where the writer started, or the generation no longer serves (for
    /// a write that must serve): nothing was written; the writer must reload.
    Stale,
    /// A swap found the serving generation further ahead, at this position: nothing was
    /// written; the rebuild must fold that far first, so that reads never go back.
    Behind(u64),
}

/// One generation of a projection, as `onbehalf projections status` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerationStatus {
    /// The projection.
    pub name: String,
    /// The generation.
    pub generation: u64,
    /// Whether reads are answered from it.
    pub serving: bool,
    /// Its checkpoint.
    pub position: u64,
}

/// Everything stored after one position: enough to bring read models at that position to the
/// stored checkpoint.
#[derive(Debug, Default)]
pub struct Delta {
    /// The checkpoint the documents describe.
    pub checkpoint: Option<Checkpoint>,
    accounts: Vec<AccountDocument>,
    users: Vec<UserView>,
    invitation_emails: Vec<(String, Vec<(Uuid, Uuid)>)>,
    products: Vec<Product>,
    notifications: Vec<Notification>,
    audit: Vec<AuditEntry>,
}

impl Delta {
    /// Puts every document into `models` and sets their position to the checkpoint.
    pub fn apply_to(self, models: &mut ReadModels) {
        let Some(checkpoint) = self.checkpoint else {
            return;
        };
        for document in self.accounts {
            models.put_account(document);
        }
        for user in self.users {
            models.put_user(user);
        }
        for (key, sent) in self.invitation_emails {
            models.put_invitations_to(key, sent);
        }
        for product in self.products {
            models.put_product(product);
        }
        for notification in self.notifications {
            models.push_notification(notification);
        }
        for entry in self.audit {
            models.push_audit_entry(entry);
        }
        models.restore_position(checkpoint.position, checkpoint.last_invoice_number);
    }
}

/// The persisted read models in one PostgreSQL database.
///
/// Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct ReadModelStore {
    pool: Pool,
    config: tokio_postgres::Config,
}

impl std::fmt::Debug for ReadModelStore {
    // The configuration may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadModelStore").finish_non_exhaustive()
    }
}

fn int(value: u64) -> ReadModelResult<i64> {
    i64::try_from(value).map_err(|_| ReadModelError::Corrupt(format!("{value} overflows bigint")))
}

fn unsigned(value: i64) -> ReadModelResult<u64> {
    u64::try_from(value).map_err(|_| ReadModelError::Corrupt(format!("negative value {value}")))
}

impl ReadModelStore {
    /// Builds a pool for `url` and creates the tables and the projection's first generation
    /// when missing.
    pub async fn connect(url: &str) -> ReadModelResult<ReadModelStore> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| ReadModelError::Corrupt(e.to_string()))?;
        config.connect_timeout(Duration::from_secs(5));
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(8)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| ReadModelError::Unavailable(e.to_string()))?;
        let store = ReadModelStore { pool, config };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> ReadModelResult<()> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK_KEY])
            .await?;
        // `IF NOT EXISTS` would otherwise send a notice per existing table on every start.
        tx.batch_execute("SET LOCAL client_min_messages = warning")
            .await?;
        tx.batch_execute(SCHEMA).await?;
        tx.execute(
            "INSERT INTO projection (name, generation) VALUES ($1, 1) ON CONFLICT (name) DO NOTHING",
            &[&PROJECTION],
        )
        .await?;
        // The serving generation's checkpoint, on first start only: retired generations stay
        // deleted.
        tx.execute(
            "INSERT INTO projection_checkpoint (name, generation, position, last_invoice_number) \
             SELECT name, generation, 0, 0 FROM projection WHERE name = $1 \
             ON CONFLICT (name, generation) DO NOTHING",
            &[&PROJECTION],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The serving generation and its checkpoint.
    pub async fn serving(&self) -> ReadModelResult<Checkpoint> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT c.generation, c.position, c.last_invoice_number, c.history_stale \
                 FROM projection p JOIN projection_checkpoint c \
                   ON c.name = p.name AND c.generation = p.generation \
                 WHERE p.name = $1",
                &[&PROJECTION],
            )
            .await?;
        Ok(Checkpoint {
            generation: unsigned(row.try_get(0)?)?,
            position: unsigned(row.try_get(1)?)?,
            last_invoice_number: unsigned(row.try_get(2)?)?,
            history_stale: row.try_get(3)?,
        })
    }

    /// Read models as stored in the serving generation; with `history` false the notifications
    /// and audit entries are left out (a writer only appends to them). Returns the generation.
    pub async fn load(
        &self,
        links: Arc<dyn InvitationLinks>,
        history: bool,
    ) -> ReadModelResult<(ReadModels, u64)> {
        let delta = self.delta(None, 0, history).await?;
        let generation = delta.checkpoint.map_or(1, |c| c.generation);
        let mut models = ReadModels::new(links);
        delta.apply_to(&mut models);
        Ok((models, generation))
    }

    /// What the serving generation stores beyond `after`, read in one snapshot.
    ///
    /// With `generation` given and no longer serving, the delta is empty with the serving
    /// checkpoint: the caller must load afresh. Documents are read only when the checkpoint is
    /// past `after`.
    pub async fn delta(
        &self,
        generation: Option<u64>,
        after: u64,
        history: bool,
    ) -> ReadModelResult<Delta> {
        let mut client = self.pool.get().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let row = tx
            .query_one(
                "SELECT c.generation, c.position, c.last_invoice_number, c.history_stale \
                 FROM projection p JOIN projection_checkpoint c \
                   ON c.name = p.name AND c.generation = p.generation \
                 WHERE p.name = $1",
                &[&PROJECTION],
            )
            .await?;
        let checkpoint = Checkpoint {
            generation: unsigned(row.try_get(0)?)?,
            position: unsigned(row.try_get(1)?)?,
            last_invoice_number: unsigned(row.try_get(2)?)?,
            history_stale: row.try_get(3)?,
        };
        let mut delta = Delta {
            checkpoint: Some(checkpoint),
            ..Delta::default()
        };
        if generation.is_some_and(|g| g != checkpoint.generation) || checkpoint.position <= after {
            return Ok(delta);
        }
        let g = int(checkpoint.generation)?;
        let a = int(after)?;
        let documents = |table: &str| {
            format!("SELECT document FROM {table} WHERE generation = $1 AND position > $2")
        };
        for row in tx.query(&documents("rm_account"), &[&g, &a]).await? {
            delta
                .accounts
                .push(serde_json::from_value(row.try_get(0)?)?);
        }
        for row in tx.query(&documents("rm_user"), &[&g, &a]).await? {
            delta.users.push(serde_json::from_value(row.try_get(0)?)?);
        }
        for row in tx
            .query(
                "SELECT email_key, document FROM rm_invitation_email \
                 WHERE generation = $1 AND position > $2",
                &[&g, &a],
            )
            .await?
        {
            delta
                .invitation_emails
                .push((row.try_get(0)?, serde_json::from_value(row.try_get(1)?)?));
        }
        for row in tx.query(&documents("rm_product"), &[&g, &a]).await? {
            delta
                .products
                .push(serde_json::from_value(row.try_get(0)?)?);
        }
        if history {
            for row in tx
                .query(
                    "SELECT document FROM rm_notification WHERE generation = $1 AND position > $2 \
                     ORDER BY position, seq",
                    &[&g, &a],
                )
                .await?
            {
                delta
                    .notifications
                    .push(serde_json::from_value(row.try_get(0)?)?);
            }
            for row in tx
                .query(
                    "SELECT document FROM rm_audit WHERE generation = $1 AND position > $2 \
                     ORDER BY position",
                    &[&g, &a],
                )
                .await?
            {
                delta.audit.push(serde_json::from_value(row.try_get(0)?)?);
            }
        }
        tx.commit().await?;
        Ok(delta)
    }

    /// Writes the documents `changes` names, as `models` holds them, and moves the checkpoint of
    /// `generation` from `from` to the models' position, in one transaction that notifies
    /// [`NOTIFY_CHANNEL`].
    ///
    /// With `serving` true the write is refused unless `generation` serves; with `swap` true the
    /// same transaction makes `generation` the serving one. [`Written::Stale`] when the
    /// checkpoint is not at `from`.
    pub async fn write(
        &self,
        generation: u64,
        from: u64,
        models: &ReadModels,
        changes: &Changes,
        mode: WriteMode,
    ) -> ReadModelResult<Written> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let g = int(generation)?;
        // Locking both rows orders this write after any concurrent write or swap.
        let row = tx
            .query_opt(
                "SELECT p.generation, c.position FROM projection p \
                 JOIN projection_checkpoint c ON c.name = p.name AND c.generation = $2 \
                 WHERE p.name = $1 FOR UPDATE",
                &[&PROJECTION, &g],
            )
            .await?;
        let Some(row) = row else {
            return Ok(Written::Stale);
        };
        let serving: i64 = row.try_get(0)?;
        let at = unsigned(row.try_get(1)?)?;
        if at != from || (mode == WriteMode::Serving && serving != g) {
            return Ok(Written::Stale);
        }
        if mode == WriteMode::Swap && serving != g {
            let row = tx
                .query_one(
                    "SELECT position FROM projection_checkpoint WHERE name = $1 AND generation = $2",
                    &[&PROJECTION, &serving],
                )
                .await?;
            let ahead = unsigned(row.try_get(0)?)?;
            if ahead > models.position() {
                return Ok(Written::Behind(ahead));
            }
        }
        let to = models.position();
        write_documents(&tx, g, int(to)?, models, changes).await?;
        // A rebuild folds the log as it reads now, erasures included, so only a serving
        // generation's history goes stale.
        let stale = mode == WriteMode::Serving && changes.rewrites_history;
        tx.execute(
            "UPDATE projection_checkpoint SET position = $3, last_invoice_number = $4, \
             history_stale = history_stale OR $5, updated_at = now() \
             WHERE name = $1 AND generation = $2",
            &[
                &PROJECTION,
                &g,
                &int(to)?,
                &int(models.last_invoice_number())?,
                &stale,
            ],
        )
        .await?;
        if mode == WriteMode::Swap {
            tx.execute(
                "UPDATE projection SET generation = $2, updated_at = now() WHERE name = $1",
                &[&PROJECTION, &g],
            )
            .await?;
        }
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&NOTIFY_CHANNEL, &format!("{PROJECTION} {generation} {to}")],
        )
        .await?;
        tx.commit().await?;
        Ok(Written::Committed)
    }

    /// Every generation of every projection, by name and generation.
    pub async fn status(&self) -> ReadModelResult<Vec<GenerationStatus>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT c.name, c.generation, c.generation = p.generation, c.position \
                 FROM projection_checkpoint c JOIN projection p ON p.name = c.name \
                 ORDER BY c.name, c.generation",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(GenerationStatus {
                    name: row.try_get(0)?,
                    generation: unsigned(row.try_get(1)?)?,
                    serving: row.try_get(2)?,
                    position: unsigned(row.try_get(3)?)?,
                })
            })
            .collect()
    }

    /// Starts a new, empty generation at position 0 beside the serving one; returns it.
    pub async fn begin_generation(&self) -> ReadModelResult<u64> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK_KEY])
            .await?;
        let row = tx
            .query_one(
                "SELECT COALESCE(MAX(generation), 0) + 1 FROM projection_checkpoint WHERE name = $1",
                &[&PROJECTION],
            )
            .await?;
        let g: i64 = row.try_get(0)?;
        for table in DOCUMENT_TABLES {
            tx.execute(&format!("DELETE FROM {table} WHERE generation = $1"), &[&g])
                .await?;
        }
        tx.execute(
            "INSERT INTO projection_checkpoint (name, generation, position, last_invoice_number) \
             VALUES ($1, $2, 0, 0)",
            &[&PROJECTION, &g],
        )
        .await?;
        tx.commit().await?;
        unsigned(g)
    }

    /// Deletes every generation but the serving one.
    pub async fn drop_retired_generations(&self) -> ReadModelResult<()> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_one(
                "SELECT generation FROM projection WHERE name = $1",
                &[&PROJECTION],
            )
            .await?;
        let serving: i64 = row.try_get(0)?;
        for table in DOCUMENT_TABLES {
            tx.execute(
                &format!("DELETE FROM {table} WHERE generation <> $1"),
                &[&serving],
            )
            .await?;
        }
        tx.execute(
            "DELETE FROM projection_checkpoint WHERE name = $1 AND generation <> $2",
            &[&PROJECTION, &serving],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Opens a dedicated connection, runs `LISTEN` on [`NOTIFY_CHANNEL`], bumps `tx` once
    /// listening and once per notification, and returns an error when the connection ends.
    pub async fn listen(&self, tx: &tokio::sync::watch::Sender<u64>) -> ReadModelResult<()> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| ReadModelError::Unavailable(e.to_string()))?;
        let (mut notes, driver) = crate::store::postgres::notifications(connection);
        client
            .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
            .await?;
        // Wake the follower once: something may have been written before LISTEN took effect.
        tx.send_modify(|n| *n = n.wrapping_add(1));
        while notes.recv().await.is_some() {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
        driver.abort();
        Err(ReadModelError::Unavailable(
            "the notification connection ended".into(),
        ))
    }
}

/// How [`ReadModelStore::write`] treats the generation it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// A projection worker: the generation must be the serving one.
    Serving,
    /// A rebuild filling a generation that does not serve yet.
    Building,
    /// A rebuild's last write: the generation serves from this transaction on.
    Swap,
}

async fn write_documents(
    tx: &Transaction<'_>,
    generation: i64,
    position: i64,
    models: &ReadModels,
    changes: &Changes,
) -> ReadModelResult<()> {
    let accounts: Vec<Uuid> = changes.accounts.iter().copied().collect();
    let documents = accounts
        .iter()
        .map(|id| serde_json::to_value(models.account_document(*id)))
        .collect::<Result<Vec<_>, _>>()?;
    upsert(
        tx,
        "rm_account",
        "account_id",
        "uuid",
        generation,
        position,
        &accounts,
        documents,
    )
    .await?;

    let mut users = Vec::new();
    let mut documents = Vec::new();
    for id in &changes.users {
        if let Some(user) = models.accounts.user(*id) {
            users.push(*id);
            documents.push(serde_json::to_value(user)?);
        }
    }
    upsert(
        tx, "rm_user", "user_id", "uuid", generation, position, &users, documents,
    )
    .await?;

    let keys: Vec<String> = changes.invitation_emails.iter().cloned().collect();
    let documents = keys
        .iter()
        .map(|key| serde_json::to_value(models.invitations_to(key)))
        .collect::<Result<Vec<_>, _>>()?;
    upsert(
        tx,
        "rm_invitation_email",
        "email_key",
        "text",
        generation,
        position,
        &keys,
        documents,
    )
    .await?;

    let mut products = Vec::new();
    let mut documents = Vec::new();
    for id in &changes.products {
        if let Some(product) = models.catalog.product(*id) {
            products.push(*id);
            documents.push(serde_json::to_value(product)?);
        }
    }
    upsert(
        tx,
        "rm_product",
        "product_id",
        "uuid",
        generation,
        position,
        &products,
        documents,
    )
    .await?;

    if !changes.notifications.is_empty() {
        let mut positions = Vec::new();
        let mut seqs = Vec::new();
        let mut documents = Vec::new();
        let mut last = None;
        let mut seq = 0i32;
        for n in &changes.notifications {
            seq = if last == Some(n.position) { seq + 1 } else { 0 };
            last = Some(n.position);
            positions.push(int(n.position)?);
            seqs.push(seq);
            documents.push(serde_json::to_value(n)?);
        }
        tx.execute(
            "INSERT INTO rm_notification (generation, position, seq, document) \
             SELECT $1, * FROM unnest($2::bigint[], $3::int[], $4::json[])",
            &[&generation, &positions, &seqs, &documents],
        )
        .await?;
    }
    if !changes.audit.is_empty() {
        let positions = changes
            .audit
            .iter()
            .map(|e| int(e.position))
            .collect::<Result<Vec<_>, _>>()?;
        let documents = changes
            .audit
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()?;
        tx.execute(
            "INSERT INTO rm_audit (generation, position, document) \
             SELECT $1, * FROM unnest($2::bigint[], $3::json[])",
            &[&generation, &positions, &documents],
        )
        .await?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn upsert<K: tokio_postgres::types::ToSql + Sync>(
    tx: &Transaction<'_>,
    table: &str,
    key: &str,
    key_type: &str,
    generation: i64,
    position: i64,
    keys: &[K],
    documents: Vec<serde_json::Value>,
) -> ReadModelResult<()> {
    if keys.is_empty() {
        return Ok(());
    }
    tx.execute(
        &format!(
            "INSERT INTO {table} (generation, {key}, position, document) \
             SELECT $1, k, $2, d FROM unnest($3::{key_type}[], $4::json[]) AS u(k, d) \
             ON CONFLICT (generation, {key}) DO UPDATE \
             SET position = EXCLUDED.position, document = EXCLUDED.document"
        ),
        &[&generation, &position, &keys, &documents],
    )
    .await?;
    Ok(())
}
