//! Group commit: the appends waiting for the head lock are written together, in one transaction
//! under one hold of the lock, each decided as if it were alone.
//!
//! An append is queued and answered through a channel. Whenever appends are queued and no
//! commit is under way, a committer task is spawned on the caller's runtime; it takes every
//! append queued so far (up to [`MAX_GROUP_APPENDS`] appends or [`MAX_GROUP_EVENTS`] events),
//! commits them as one group, answers each caller, and goes on while appends keep arriving. Under
//! load a group collects the appends that queued while the previous one committed, so the cost of
//! a transaction (the lock, the round trips, the WAL flush at commit) is shared by all of them;
//! alone, an append is a group of one.
//!
//! Inside the group every append is checked in queue order against the log as the earlier
//! appends of the group leave it: its request id, the stream version it expects, the unique keys
//! it claims and releases, its event ids. One that fails a check is answered with that error and
//! leaves nothing in the group; the others go on. The checks read everything they need in a few
//! statements sent right behind the locking one, decide in memory, and the accepted appends are
//! written with one statement per table, all sent together with the commit behind them: a group
//! costs two round trips (begin, lock and reads; writes and commit) whatever its size. Under
//! load the committer keeps one connection and sends the next group's begin, lock and reads
//! right behind the commit of the group before, so that from its side each further group costs
//! one round trip; the server still runs the two groups one after the other. Positions and the
//! hash chain are assigned in queue order, so the group lands as if its appends had committed
//! one after another, and readers see all of it at once, at commit. A failure of the transaction
//! itself (the connection, the commit) fails every append of the group alike.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use deadpool_postgres::{Client, Pool};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::lease::{self, Seen, WriterLease};
use super::{corrupt, map_err, map_pool_err, to_sql_int, to_u64, CommitGate};
use crate::store::{AppendBatch, Appended, RequestOutcome, StoreError, StoreResult};

/// The most appends one group takes.
const MAX_GROUP_APPENDS: usize = 512;
/// The most events one group takes (a larger single append is taken alone).
const MAX_GROUP_EVENTS: usize = 8192;

/// One queued append and where its answer goes.
struct Pending {
    batch: AppendBatch,
    answer: oneshot::Sender<StoreResult<Appended>>,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    running: bool,
}

/// The appends waiting for the next group, shared by every clone of one store.
#[derive(Default)]
pub(super) struct Committer {
    queue: Mutex<Queue>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").finish_non_exhaustive()
    }
}

impl Committer {
    /// Queues `batch` for the next group and waits for its answer.
    pub(super) async fn append(
        self: &Arc<Self>,
        pool: &Pool,
        lease: &Arc<WriterLease>,
        batch: AppendBatch,
    ) -> StoreResult<Appended> {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.pending.push(Pending { batch, answer });
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            // The committer runs detached from this caller, so that a caller giving up does not
            // abandon the appends of others queued behind it.
            tokio::spawn(run(self.clone(), pool.clone(), lease.clone()));
        }
        answered.await.map_err(|_| {
            StoreError::Unavailable("the append was dropped before it was answered".into())
        })?
    }

    /// Takes the next group off the queue; `None` (and the committer stops) when it is empty.
    fn next_group(&self) -> Option<Vec<Pending>> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.pending.is_empty() {
            queue.running = false;
            return None;
        }
        Some(Self::take_group(&mut queue))
    }

    /// Takes the next group off the queue if it holds any; the committer goes on either way.
    fn queued_group(&self) -> Option<Vec<Pending>> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.pending.is_empty() {
            return None;
        }
        Some(Self::take_group(&mut queue))
    }

    fn take_group(queue: &mut Queue) -> Vec<Pending> {
        let mut events = 0;
        let mut take = 0;
        for pending in &queue.pending {
            events += pending.batch.events.len();
            if take > 0 && (take == MAX_GROUP_APPENDS || events > MAX_GROUP_EVENTS) {
                break;
            }
            take += 1;
        }
        queue.pending.drain(..take).collect()
    }
}

/// Marks the committer stopped if its task ends without doing so itself (its runtime shut down
/// while it waited), so that the next append starts a new one; the appends still queued are
/// answered with an error by dropping them.
///
/// A task that ends normally was marked stopped by [`Committer::next_group`], and by then an
/// append may already have started the next task: the guard must leave that one's queue alone.
struct StopGuard {
    committer: Arc<Committer>,
    finished: bool,
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut queue = self
            .committer
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if queue.running {
            queue.running = false;
            queue.pending.clear();
        }
    }
}

async fn run(committer: Arc<Committer>, pool: Pool, lease: Arc<WriterLease>) {
    let mut guard = StopGuard {
        committer: committer.clone(),
        finished: false,
    };
    let mut next = committer.next_group();
    while let Some(group) = next.take() {
        next = commit_in_turn(&committer, &pool, &lease, group).await;
    }
    guard.finished = true;
}

/// A failure of the whole group, once for each of its appends.
pub(super) fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(source) => StoreError::Unavailable(source.to_string().into()),
        StoreError::Corrupt(message) => StoreError::Corrupt(message.clone()),
        StoreError::Backend(source) => StoreError::Backend(source.to_string().into()),
        other => StoreError::Backend(other.to_string().into()),
    }
}

/// The rows of the accepted appends, one vector per column.
#[derive(Default)]
struct Rows {
    position: Vec<i64>,
    event_id: Vec<Uuid>,
    stream_id: Vec<String>,
    stream_type: Vec<String>,
    version: Vec<i64>,
    occurred_at: Vec<DateTime<Utc>>,
    event_type: Vec<String>,
    event_version: Vec<String>,
    payload: Vec<serde_json::Value>,
    metadata: Vec<serde_json::Value>,
    key_id: Vec<Option<String>>,
    hash: Vec<String>,
}

/// Who holds a unique key: `None` once released.
type Holders = HashMap<(String, String), Option<String>>;

/// Where each append of a group is answered, in queue order.
type Answers = Vec<oneshot::Sender<StoreResult<Appended>>>;

fn split(group: Vec<Pending>) -> (Vec<AppendBatch>, Answers) {
    group.into_iter().map(|p| (p.batch, p.answer)).unzip()
}

fn answer(answers: Answers, results: StoreResult<Vec<StoreResult<Appended>>>) {
    let results = match results {
        Ok(results) => results,
        Err(e) => answers.iter().map(|_| Err(same_error(&e))).collect(),
    };
    for (answer, result) in answers.into_iter().zip(results) {
        // A caller that stopped waiting has no one to tell; its append stands.
        let _ = answer.send(result);
    }
}

/// Commits `group`, then every group queued after it, on one connection: while a group's writes
/// and commit are on the wire, the appends queued meanwhile become the next group and its
/// begin, lock and reads are sent right behind that commit, so that under load a group costs
/// one round trip from the committer's side. Returns the next group when the connection has to
/// be given up (a transaction of unknown state is open on it), `None` once the queue is empty
/// and the committer has stopped.
async fn commit_in_turn(
    committer: &Committer,
    pool: &Pool,
    lease: &WriterLease,
    group: Vec<Pending>,
) -> Option<Vec<Pending>> {
    let (batches, answers) = split(group);
    let open = match pool.get().await {
        Ok(client) => OpenTransaction::new(client),
        Err(e) => {
            answer(answers, Err(map_pool_err(e)));
            return committer.next_group();
        }
    };
    let client = open.client();
    let statements = match Statements::prepare(client).await {
        Ok(statements) => statements,
        Err(e) => {
            answer(answers, Err(e));
            return committer.next_group();
        }
    };
    open.set_open(true);
    let mut reading = Reading::start(client, &statements, &batches).await;
    let mut current = (batches, answers);
    loop {
        let (batches, answers) = current;
        let (results, chained) = commit_read(
            client,
            &statements,
            &open,
            lease,
            batches,
            reading,
            None,
            Some(committer),
        )
        .await;
        answer(answers, results);
        match chained {
            Some(next) => {
                current = (next.batches, next.answers);
                reading = next.reading;
            }
            // The connection leaves the pool with the transaction it may still have open.
            None if open.is_open() => return committer.next_group(),
            None => {
                let (batches, answers) = split(committer.next_group()?);
                open.set_open(true);
                reading = Reading::start(client, &statements, &batches).await;
                current = (batches, answers);
            }
        }
    }
}

/// Commits `batches` as one group on a connection of its own; the outer error fails all of
/// them, the inner results are each append's own answer. With a `gate` (tests of the ordering
/// guarantee) the group waits for it after writing and before committing.
pub(super) async fn commit(
    pool: &Pool,
    lease: &WriterLease,
    batches: Vec<AppendBatch>,
    gate: Option<CommitGate>,
) -> StoreResult<Vec<StoreResult<Appended>>> {
    let open = OpenTransaction::new(pool.get().await.map_err(map_pool_err)?);
    let client = open.client();
    let statements = Statements::prepare(client).await?;
    open.set_open(true);
    let reading = Reading::start(client, &statements, &batches).await;
    let (results, _) = commit_read(
        client,
        &statements,
        &open,
        lease,
        batches,
        reading,
        gate,
        None,
    )
    .await;
    results
}

/// What a group's checks need, read under the lock.
struct Read {
    head: u64,
    lease: Seen,
    link: crate::store::ChainHash,
    state: State,
    keys: crate::store::keys::postgres::GroupKeys,
}

type ReadFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = StoreResult<Read>> + Send + 'a>>;

/// A group's begin, lock and reads, on the wire, and their answer once it arrives.
struct Reading<'a> {
    early: Option<StoreResult<Read>>,
    future: ReadFuture<'a>,
}

impl<'a> Reading<'a> {
    /// Sends the begin, the lock and the reads of the group `batches` make up: every statement
    /// is on the wire when this returns.
    async fn start(
        client: &'a Client,
        statements: &'a Statements,
        batches: &[AppendBatch],
    ) -> Reading<'a> {
        let mut future: ReadFuture<'a> = Box::pin(read(client, statements, Wanted::of(batches)));
        let early = poll_once(future.as_mut()).await;
        Reading { early, future }
    }

    async fn finish(mut self) -> StoreResult<Read> {
        finish(self.early, self.future.as_mut()).await
    }
}

/// A group taken off the queue while the previous one committed, its reads on the wire.
struct Chained<'a> {
    batches: Vec<AppendBatch>,
    answers: Answers,
    reading: Reading<'a>,
}

/// Begins a group's transaction, takes the lock and reads what its checks need.
async fn read(client: &Client, statements: &Statements, wanted: Wanted) -> StoreResult<Read> {
    // The transaction's start, then the locking statement, each polled once on its own, are on
    // the wire before any read below. The server runs one connection's statements in the order
    // they arrive, so every read runs after the lock is granted, with a snapshot that holds the
    // previous holder's commit, while all of them cost one round trip together.
    let mut begin = std::pin::pin!(client.batch_execute("BEGIN"));
    let begun_early = poll_once(begin.as_mut()).await;
    // Every append queues here first; everything below reads data committed by the previous
    // holder of the lock, and the positions taken are released only by this transaction's end.
    let mut lock = std::pin::pin!(client.query_one(&statements.head, &[]));
    let locked_early = poll_once(lock.as_mut()).await;
    let Wanted { state, subjects } = wanted;
    let (begun, locked, link_row, state, keys) = tokio::join!(
        finish(begun_early, begin),
        finish(locked_early, lock),
        // The head event's hash, by a statement of its own, so that it reads with a snapshot
        // taken after the lock was granted: a join in the locking statement would see the head
        // event as of before the wait.
        client.query_opt(&statements.link, &[]),
        read_state(client, statements, state),
        crate::store::keys::postgres::GroupKeys::read(client, &statements.lookup_keys, subjects)
    );
    begun.map_err(map_err)?;
    let locked = locked.map_err(map_err)?;
    let head: i64 = locked.try_get(0).map_err(corrupt)?;
    let head = to_u64(head, "head position")?;
    let lease = Seen {
        holder: locked.try_get(1).map_err(corrupt)?,
        epoch: locked.try_get(2).map_err(corrupt)?,
        live: locked.try_get(3).map_err(corrupt)?,
    };
    let stored = link_row
        .map_err(map_err)?
        .map(|row| row.try_get::<_, Option<String>>(0).map_err(corrupt))
        .transpose()?;
    Ok(Read {
        head,
        lease,
        link: crate::store::head_link(head, stored)?,
        state: state?,
        keys: keys?,
    })
}

/// What one group decided: each append's answer, and the rows of those accepted.
struct Decided {
    results: Vec<StoreResult<Appended>>,
    head: u64,
    position: u64,
    rows: Rows,
    request_rows: Vec<(String, String, String, serde_json::Value, i64)>,
    db_holders: Holders,
    holders: Holders,
    keys: crate::store::keys::postgres::GroupKeys,
}

/// Decides the group on what it read, then writes and commits what it accepted; with a
/// `committer`, the group queued meanwhile is begun right behind the commit and handed back.
#[allow(clippy::too_many_arguments)]
async fn commit_read<'a>(
    client: &'a Client,
    statements: &'a Statements,
    open: &OpenTransaction,
    lease: &WriterLease,
    batches: Vec<AppendBatch>,
    mut reading: Reading<'a>,
    gate: Option<CommitGate>,
    committer: Option<&Committer>,
) -> (StoreResult<Vec<StoreResult<Appended>>>, Option<Chained<'a>>) {
    let read = loop {
        match reading.finish().await {
            Ok(read) if read.lease.blocks(lease.me()) => {
                // Another process answers reads from memory until it gives its lease up: this
                // group writes nothing before it has, and then begins again.
                if let Err(e) = client.batch_execute("ROLLBACK").await {
                    return (Err(map_err(e)), None);
                }
                open.set_open(false);
                if let Err(e) = lease::wait_for_release(client, lease.me(), read.lease).await {
                    return (Err(e), None);
                }
                open.set_open(true);
                reading = Reading::start(client, statements, &batches).await;
            }
            other => break other,
        }
    };
    let held_epoch = read.as_ref().ok().and_then(|r| r.lease.held_by(lease.me()));
    let decided = match read {
        Ok(read) => decide_group(client, batches, read).await,
        Err(e) => Err(e),
    };
    let decided = match decided {
        Ok(decided) => decided,
        Err(e) => return (Err(e), None),
    };
    if decided.position == decided.head {
        // Nothing accepted: the transaction ends without writing, releasing the lock.
        if let Err(e) = client.batch_execute("ROLLBACK").await {
            return (Err(map_err(e)), None);
        }
        open.set_open(false);
        return (Ok(decided.results), None);
    }
    let head_position = to_sql_int(decided.position);
    let head_text = decided.position.to_string();
    // Each written stream's last version once this group lands; until then, none of them is
    // answered from memory.
    let mut heads: HashMap<&str, u64> = HashMap::new();
    for (stream_id, version) in decided.rows.stream_id.iter().zip(&decided.rows.version) {
        let version = u64::try_from(*version).unwrap_or_default();
        let head = heads.entry(stream_id.as_str()).or_default();
        *head = (*head).max(version);
    }
    lease.heads.writing(heads.keys().copied());
    let me = lease.me();
    // The writes touch different rows and tables, and each sends its statements when first
    // polled: all of them are on the wire after one poll, and cost one round trip together.
    // If one fails, the transaction is aborted and the statements after it fail too; the
    // events' insert, the likeliest to fail, is reported first.
    // The notification is delivered to listeners when (and only if) the transaction commits.
    let writes = async {
        tokio::join!(
            write_events(client, statements, &decided.rows),
            write_requests(client, statements, &decided.request_rows),
            async {
                client
                    .execute(&statements.advance, &[&head_position, &me])
                    .await
                    .map_err(map_err)
            },
            write_reservations(client, statements, &decided.db_holders, &decided.holders),
            decided
                .keys
                .write(client, &statements.erase_keys, &statements.store_keys),
            async {
                client
                    .execute(&statements.notify, &[&super::APPENDED_CHANNEL, &head_text])
                    .await
                    .map_err(map_err)
            },
        )
    };
    let mut chained = None;
    let (written, committed) = match gate {
        Some(gate) => {
            let written = writes.await;
            if let Some(Ok(appended)) = decided.results.first() {
                // The test side may have stopped listening; the append goes on regardless.
                let _ = gate.taken.send(*appended);
            }
            let _ = gate.release.await;
            (written, client.batch_execute("COMMIT").await)
        }
        None => {
            let mut writes = std::pin::pin!(writes);
            let written_early = poll_once(writes.as_mut()).await;
            // Every write is on the wire: the commit goes right behind them, so the lock is
            // held one round trip less. Should a write fail, the server answers the commit of
            // the aborted transaction by rolling it back, and the write's error is reported.
            let mut commit = std::pin::pin!(client.batch_execute("COMMIT"));
            let committed_early = poll_once(commit.as_mut()).await;
            // The next group's transaction begins after this one ends, however it ends, so its
            // reads see this group's writes if and only if they were committed.
            if let Some(group) = committer.and_then(Committer::queued_group) {
                let (batches, answers) = split(group);
                let reading = Reading::start(client, statements, &batches).await;
                chained = Some(Chained {
                    batches,
                    answers,
                    reading,
                });
            }
            tokio::join!(
                finish(written_early, writes),
                finish(committed_early, commit)
            )
        }
    };
    let landed = (|| {
        let (events, requests, advanced, reservations, keys, notified) = written;
        events?;
        requests?;
        advanced?;
        reservations?;
        keys?;
        notified?;
        committed.map_err(map_err)
    })();
    lease
        .heads
        .written(heads.into_iter(), landed.is_ok(), held_epoch);
    match landed {
        Ok(()) => {
            if chained.is_none() {
                open.set_open(false);
            }
            (Ok(decided.results), chained)
        }
        Err(e) => (Err(e), chained),
    }
}

/// Checks each append of the group in queue order against what was read and the appends
/// before it, and lays out the rows of those accepted.
async fn decide_group(
    client: &Client,
    batches: Vec<AppendBatch>,
    read: Read,
) -> StoreResult<Decided> {
    let Read {
        head,
        lease: _,
        mut link,
        state,
        mut keys,
    } = read;
    let (mut requests, mut versions, db_holders, stored_ids) = state;
    let mut holders: Holders = db_holders.clone();
    let mut seen_ids: HashSet<Uuid> = HashSet::new();
    let mut rows = Rows::default();
    let mut request_rows: Vec<(String, String, String, serde_json::Value, i64)> = Vec::new();
    let mut position = head;
    let mut results = Vec::with_capacity(batches.len());
    for mut batch in batches {
        let decided = decide(
            &batch,
            &requests,
            &versions,
            &holders,
            &stored_ids,
            &seen_ids,
        )
        .and_then(|(actual, staged)| {
            let stored_at = crate::store::stored_time(batch.occurred_at)?;
            Ok((actual, staged, stored_at))
        });
        let (actual, staged, stored_at) = match decided {
            Ok(decided) => decided,
            Err(StoreError::DuplicateRequest(_)) if batch.request.is_some() => {
                results.push(Err(duplicate(client, &batch, &requests).await?));
                continue;
            }
            Err(e) => {
                results.push(Err(e));
                continue;
            }
        };
        // What a retry within this group is given back: the outcome as the caller wrote it.
        let plain_outcome = batch.request.as_ref().map(|r| r.outcome.clone());
        // Sealing comes before hashing: the chain covers the event as stored.
        let created = keys.seal(&mut batch)?;
        let links = match crate::store::batch_hashes(&batch, stored_at, position, actual, link) {
            Ok(links) => links,
            Err(e) => {
                keys.forget(created);
                results.push(Err(e));
                continue;
            }
        };
        let mut metadata = Vec::with_capacity(batch.events.len());
        for event in &batch.events {
            match serde_json::to_value(&event.metadata) {
                Ok(value) => metadata.push(value),
                Err(e) => {
                    results.push(Err(StoreError::Backend(Box::new(e))));
                    break;
                }
            }
        }
        if metadata.len() != batch.events.len() {
            keys.forget(created);
            continue;
        }
        keys.accept(&batch, created);

        let first = position + 1;
        let mut version = actual;
        for ((event, chained), metadata) in batch.events.iter().zip(&links).zip(metadata) {
            position += 1;
            version += 1;
            rows.position.push(to_sql_int(position));
            rows.event_id.push(event.event_id);
            rows.stream_id.push(batch.stream_id.clone());
            rows.stream_type.push(batch.stream_type.clone());
            rows.version.push(to_sql_int(version));
            rows.occurred_at.push(stored_at);
            rows.event_type.push(event.event_type.clone());
            rows.event_version.push(event.event_version.clone());
            rows.payload.push(event.payload.clone());
            rows.metadata.push(metadata);
            rows.key_id.push(event.key_id.clone());
            rows.hash.push(chained.to_string());
            seen_ids.insert(event.event_id);
        }
        if let Some(last) = links.last() {
            link = *last;
        }
        versions.insert(batch.stream_id.clone(), version);
        holders.extend(staged);
        if let Some(request) = &batch.request {
            requests.insert(
                (request.actor.clone(), request.request_id.clone()),
                RequestOutcome {
                    request_hash: request.request_hash.clone(),
                    outcome: plain_outcome.unwrap_or_else(|| request.outcome.clone()),
                    position,
                },
            );
            request_rows.push((
                request.actor.clone(),
                request.request_id.clone(),
                request.request_hash.clone(),
                request.outcome.clone(),
                to_sql_int(position),
            ));
        }
        results.push(Ok(Appended {
            first_position: first,
            last_position: position,
            stream_version: version,
        }));
    }

    Ok(Decided {
        results,
        head,
        position,
        rows,
        request_rows,
        db_holders,
        holders,
        keys,
    })
}

/// The statements of a group whose place on the wire matters, prepared before it begins.
struct Statements {
    head: tokio_postgres::Statement,
    link: tokio_postgres::Statement,
    events: tokio_postgres::Statement,
    requests: tokio_postgres::Statement,
    advance: tokio_postgres::Statement,
    notify: tokio_postgres::Statement,
    release: tokio_postgres::Statement,
    reserve: tokio_postgres::Statement,
    erase_keys: tokio_postgres::Statement,
    store_keys: tokio_postgres::Statement,
    lookup_requests: tokio_postgres::Statement,
    lookup_versions: tokio_postgres::Statement,
    lookup_holders: tokio_postgres::Statement,
    lookup_ids: tokio_postgres::Statement,
    lookup_keys: tokio_postgres::Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> StoreResult<Self> {
        let prepare =
            |sql: &'static str| async move { client.prepare_cached(sql).await.map_err(map_err) };
        Ok(Self {
            head: prepare(lease::LOCK_HEAD).await?,
            link: prepare(
                // A lookup by primary key whatever the table's statistics say: a join here can
                // be planned as a scan of the whole log while the statistics are young.
                "SELECT hash FROM events \
                 WHERE position = (SELECT position FROM event_head WHERE singleton)",
            )
            .await?,
            events: prepare(
                "INSERT INTO events (position, event_id, stream_id, stream_type, version, \
                 occurred_at, event_type, event_version, payload, metadata, key_id, hash) \
                 SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::text[], \
                 $5::bigint[], $6::timestamptz[], $7::text[], $8::text[], $9::json[], \
                 $10::json[], $11::text[], $12::text[])",
            )
            .await?,
            requests: prepare(
                "INSERT INTO requests (actor, request_id, request_hash, outcome, position) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::json[], \
                 $5::bigint[])",
            )
            .await?,
            advance: prepare(lease::ADVANCE_HEAD).await?,
            notify: prepare("SELECT pg_notify($1, $2)").await?,
            release: prepare(
                "DELETE FROM reservations r USING unnest($1::text[], $2::text[]) AS k(scope, key) \
                 WHERE r.scope = k.scope AND r.key = k.key",
            )
            .await?,
            // A key released and claimed again in one group changes holder in place, so that
            // no write of the group depends on another having run first.
            reserve: prepare(
                "INSERT INTO reservations (scope, key, stream_id) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) \
                 ON CONFLICT (scope, key) DO UPDATE SET stream_id = EXCLUDED.stream_id",
            )
            .await?,
            erase_keys: prepare(crate::store::keys::postgres::ERASE_KEYS).await?,
            store_keys: prepare(crate::store::keys::postgres::STORE_KEYS).await?,
            lookup_requests: prepare(
                // One index probe per request id, whatever the plan: a join can become a scan
                // of the whole table. The `LIMIT` keeps the planner from flattening the
                // subquery.
                "SELECT r.* FROM unnest($1::text[], $2::text[]) AS k(actor, request_id) \
                 CROSS JOIN LATERAL (SELECT r.actor, r.request_id, r.request_hash, r.outcome, \
                 r.position FROM requests r \
                 WHERE r.actor = k.actor AND r.request_id = k.request_id LIMIT 1) r",
            )
            .await?,
            lookup_versions: prepare(
                // One index probe per stream for its last version: `= ANY` with `GROUP BY` gets
                // a generic plan that reads whole streams, or the whole table.
                "SELECT s.stream_id, \
                 (SELECT MAX(e.version) FROM events e WHERE e.stream_id = s.stream_id) \
                 FROM unnest($1::text[]) AS s(stream_id)",
            )
            .await?,
            lookup_holders: prepare(
                "SELECT r.* FROM unnest($1::text[], $2::text[]) AS k(scope, key) \
                 CROSS JOIN LATERAL (SELECT r.scope, r.key, r.stream_id FROM reservations r \
                 WHERE r.scope = k.scope AND r.key = k.key LIMIT 1) r",
            )
            .await?,
            lookup_ids: prepare(
                // One index probe per id, whatever the plan: with many ids `= ANY` can become a
                // scan of the whole table, and so can `EXISTS`, which the planner turns into a
                // join (with young statistics, a hash join over the whole log).
                "SELECT e.event_id FROM unnest($1::uuid[]) AS k(id) \
                 CROSS JOIN LATERAL (SELECT e.event_id FROM events e \
                 WHERE e.event_id = k.id LIMIT 1) e",
            )
            .await?,
            lookup_keys: prepare(crate::store::keys::postgres::LOOKUP_KEYS).await?,
        })
    }
}

/// A pooled connection and whether a transaction of the group's own making is open on it.
/// Dropped while one is (an error, or the committer's task dropped), the connection leaves the
/// pool instead of going to its next user mid-transaction; closing it rolls the transaction
/// back.
struct OpenTransaction {
    client: Option<Client>,
    open: std::sync::atomic::AtomicBool,
}

impl OpenTransaction {
    fn new(client: Client) -> Self {
        Self {
            client: Some(client),
            open: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn set_open(&self, open: bool) {
        self.open.store(open, std::sync::atomic::Ordering::Relaxed);
    }

    fn is_open(&self) -> bool {
        self.open.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn client(&self) -> &Client {
        match &self.client {
            Some(client) => client,
            // Taken only by `drop`.
            None => unreachable!("the group's connection is gone"),
        }
    }
}

impl Drop for OpenTransaction {
    fn drop(&mut self) {
        if self.is_open() {
            if let Some(client) = self.client.take() {
                drop(deadpool_postgres::Object::take(client));
            }
        }
    }
}

/// Polls `future` once, so that the statement it sends is on the wire before anything polled
/// after it; its output, if that one poll finished it.
async fn poll_once<F: std::future::Future + ?Sized>(
    mut future: std::pin::Pin<&mut F>,
) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match future.as_mut().poll(cx) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// The output of a future [`poll_once`] polled: the one it gave, or the rest of the wait.
async fn finish<F: std::future::Future + ?Sized>(
    early: Option<F::Output>,
    future: std::pin::Pin<&mut F>,
) -> F::Output {
    match early {
        Some(output) => output,
        None => future.await,
    }
}

/// The answer to an append whose request id is already used: the first outcome, as a lone
/// append's lookup gives it for one stored earlier, as written for one earlier in this group.
async fn duplicate(
    tx: &Client,
    batch: &AppendBatch,
    requests: &HashMap<(String, String), RequestOutcome>,
) -> StoreResult<StoreError> {
    let Some(request) = &batch.request else {
        return Err(StoreError::Backend("a duplicate without a request".into()));
    };
    let key = (request.actor.clone(), request.request_id.clone());
    let stored = super::find_request_in(tx, &request.actor, &request.request_id).await?;
    let first = stored
        .or_else(|| requests.get(&key).cloned())
        .ok_or_else(|| StoreError::Backend("a duplicate request vanished".into()))?;
    Ok(StoreError::DuplicateRequest(first))
}

type State = (
    HashMap<(String, String), RequestOutcome>,
    HashMap<String, u64>,
    Holders,
    HashSet<Uuid>,
);

/// The keys a group's checks look up, taken from its appends before it begins, so that the
/// reads can go out while the previous group is still finishing.
struct Wanted {
    state: WantedState,
    subjects: Vec<String>,
}

struct WantedState {
    actors: Vec<String>,
    request_ids: Vec<String>,
    streams: Vec<String>,
    scopes: Vec<String>,
    keys: Vec<String>,
    event_ids: Vec<Uuid>,
}

impl Wanted {
    fn of(batches: &[AppendBatch]) -> Wanted {
        let (actors, request_ids) = batches
            .iter()
            .filter_map(|b| b.request.as_ref())
            .map(|r| (r.actor.clone(), r.request_id.clone()))
            .unzip();
        let mut streams: Vec<String> = batches.iter().map(|b| b.stream_id.clone()).collect();
        streams.sort_unstable();
        streams.dedup();
        let (scopes, keys) = batches
            .iter()
            .flat_map(|b| b.reservations.iter().chain(&b.releases))
            .map(|r| (r.scope.clone(), r.key.clone()))
            .unzip();
        let event_ids = batches
            .iter()
            .flat_map(|b| b.events.iter().map(|e| e.event_id))
            .collect();
        Wanted {
            state: WantedState {
                actors,
                request_ids,
                streams,
                scopes,
                keys,
                event_ids,
            },
            subjects: crate::store::keys::postgres::GroupKeys::subjects(batches),
        }
    }
}

/// Reads what the group's checks need, under the lock: the stored outcomes of its request ids,
/// its streams' versions, the holders of the keys it claims or releases, and which of its event
/// ids are already stored.
async fn read_state(
    tx: &Client,
    statements: &Statements,
    wanted: WantedState,
) -> StoreResult<State> {
    let WantedState {
        actors,
        request_ids,
        streams,
        scopes,
        keys,
        event_ids,
    } = wanted;
    // The four reads are independent: sent together (and with the lock and the other reads of
    // the group), they cost one round trip.
    let (request_rows, version_rows, holder_rows, id_rows) = tokio::join!(
        async {
            if actors.is_empty() {
                Ok(Vec::new())
            } else {
                tx.query(&statements.lookup_requests, &[&actors, &request_ids])
                    .await
            }
        },
        async { tx.query(&statements.lookup_versions, &[&streams]).await },
        async {
            if scopes.is_empty() {
                Ok(Vec::new())
            } else {
                tx.query(&statements.lookup_holders, &[&scopes, &keys])
                    .await
            }
        },
        async { tx.query(&statements.lookup_ids, &[&event_ids]).await },
    );

    let mut requests = HashMap::new();
    for row in request_rows.map_err(map_err)? {
        let position: i64 = row.try_get(4).map_err(corrupt)?;
        requests.insert(
            (
                row.try_get(0).map_err(corrupt)?,
                row.try_get(1).map_err(corrupt)?,
            ),
            RequestOutcome {
                request_hash: row.try_get(2).map_err(corrupt)?,
                outcome: row.try_get(3).map_err(corrupt)?,
                position: to_u64(position, "request position")?,
            },
        );
    }
    let mut versions = HashMap::new();
    for row in version_rows.map_err(map_err)? {
        let version: Option<i64> = row.try_get(1).map_err(corrupt)?;
        if let Some(version) = version {
            versions.insert(
                row.try_get(0).map_err(corrupt)?,
                to_u64(version, "version")?,
            );
        }
    }
    let mut holders = Holders::new();
    for row in holder_rows.map_err(map_err)? {
        holders.insert(
            (
                row.try_get(0).map_err(corrupt)?,
                row.try_get(1).map_err(corrupt)?,
            ),
            Some(row.try_get(2).map_err(corrupt)?),
        );
    }
    let mut ids = HashSet::new();
    for row in id_rows.map_err(map_err)? {
        ids.insert(row.try_get(0).map_err(corrupt)?);
    }
    Ok((requests, versions, holders, ids))
}

/// Checks one append against the log as the group's earlier appends leave it, in the order a
/// lone append is checked: request id, stream version, releases and claims, event ids. Returns
/// the stream's version and the key holders the append changes.
fn decide(
    batch: &AppendBatch,
    requests: &HashMap<(String, String), RequestOutcome>,
    versions: &HashMap<String, u64>,
    holders: &Holders,
    stored_ids: &HashSet<Uuid>,
    seen_ids: &HashSet<Uuid>,
) -> StoreResult<(u64, Holders)> {
    if let Some(request) = &batch.request {
        let key = (request.actor.clone(), request.request_id.clone());
        if let Some(outcome) = requests.get(&key) {
            return Err(StoreError::DuplicateRequest(outcome.clone()));
        }
    }

    let actual = versions.get(&batch.stream_id).copied().unwrap_or(0);
    if actual != batch.expected_version {
        return Err(StoreError::Conflict {
            stream_id: batch.stream_id.clone(),
            expected: batch.expected_version,
            actual,
        });
    }

    let mut staged = Holders::new();
    let holder = |staged: &Holders, key: &(String, String)| -> Option<String> {
        staged
            .get(key)
            .or_else(|| holders.get(key))
            .cloned()
            .flatten()
    };
    for release in &batch.releases {
        let key = (release.scope.clone(), release.key.clone());
        // A key another stream holds is left alone.
        if holder(&staged, &key).as_deref() == Some(batch.stream_id.as_str()) {
            staged.insert(key, None);
        }
    }
    for reservation in &batch.reservations {
        let key = (reservation.scope.clone(), reservation.key.clone());
        if holder(&staged, &key).is_some() {
            return Err(StoreError::Reserved {
                scope: reservation.scope.clone(),
                key: reservation.key.clone(),
            });
        }
        staged.insert(key, Some(batch.stream_id.clone()));
    }

    let mut own = HashSet::new();
    for event in &batch.events {
        if stored_ids.contains(&event.event_id)
            || seen_ids.contains(&event.event_id)
            || !own.insert(event.event_id)
        {
            return Err(StoreError::Backend(
                format!("event id {} is already stored", event.event_id).into(),
            ));
        }
    }
    Ok((actual, staged))
}

/// Brings the reservations table from `before` (as read) to `after` (as the group leaves it):
/// the keys released for good are deleted, the keys claimed are written with their holder. The
/// two touch different keys, and both are sent when first polled.
async fn write_reservations(
    client: &Client,
    statements: &Statements,
    before: &Holders,
    after: &Holders,
) -> StoreResult<()> {
    let mut gone: (Vec<&str>, Vec<&str>) = (Vec::new(), Vec::new());
    let mut held: (Vec<&str>, Vec<&str>, Vec<&str>) = (Vec::new(), Vec::new(), Vec::new());
    for ((scope, key), holder) in after {
        let was = before.get(&(scope.clone(), key.clone())).cloned().flatten();
        if was == *holder {
            continue;
        }
        match holder {
            Some(stream) => {
                held.0.push(scope);
                held.1.push(key);
                held.2.push(stream);
            }
            None => {
                gone.0.push(scope);
                gone.1.push(key);
            }
        }
    }
    let (released, reserved) = tokio::join!(
        async {
            if gone.0.is_empty() {
                return Ok(0);
            }
            client
                .execute(&statements.release, &[&gone.0, &gone.1])
                .await
        },
        async {
            if held.0.is_empty() {
                return Ok(0);
            }
            client
                .execute(&statements.reserve, &[&held.0, &held.1, &held.2])
                .await
        },
    );
    released.map_err(map_err)?;
    reserved.map_err(map_err)?;
    Ok(())
}

async fn write_events(client: &Client, statements: &Statements, rows: &Rows) -> StoreResult<()> {
    client
        .execute(
            &statements.events,
            &[
                &rows.position,
                &rows.event_id,
                &rows.stream_id,
                &rows.stream_type,
                &rows.version,
                &rows.occurred_at,
                &rows.event_type,
                &rows.event_version,
                &rows.payload,
                &rows.metadata,
                &rows.key_id,
                &rows.hash,
            ],
        )
        .await
        .map_err(map_err)?;
    Ok(())
}

async fn write_requests(
    client: &Client,
    statements: &Statements,
    rows: &[(String, String, String, serde_json::Value, i64)],
) -> StoreResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let actors: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let request_ids: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    let hashes: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    let outcomes: Vec<&serde_json::Value> = rows.iter().map(|r| &r.3).collect();
    let positions: Vec<i64> = rows.iter().map(|r| r.4).collect();
    client
        .execute(
            &statements.requests,
            &[&actors, &request_ids, &hashes, &outcomes, &positions],
        )
        .await
        .map_err(map_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(committer: &Arc<Committer>) -> oneshot::Receiver<StoreResult<Appended>> {
        let (answer, answered) = oneshot::channel();
        let batch = AppendBatch {
            stream_id: "account-a".into(),
            stream_type: "client_account".into(),
            expected_version: 0,
            occurred_at: DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap(),
            events: Vec::new(),
            reservations: Vec::new(),
            releases: Vec::new(),
            request: None,
        };
        let mut queue = committer.queue.lock().unwrap();
        queue.pending.push(Pending { batch, answer });
        queue.running = true;
        answered
    }

    #[test]
    fn a_committer_that_stopped_leaves_the_next_ones_queue_alone() {
        let committer = Arc::new(Committer::default());
        // The task found the queue empty and marked itself stopped...
        assert!(committer.next_group().is_none());
        // ...then, before its guard dropped, an append queued and started the next task.
        let mut answered = queued(&committer);
        drop(StopGuard {
            committer: committer.clone(),
            finished: true,
        });
        let queue = committer.queue.lock().unwrap();
        assert!(queue.running);
        assert_eq!(queue.pending.len(), 1);
        drop(queue);
        assert!(answered
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
    }

    #[test]
    fn a_committer_cut_off_marks_itself_stopped_and_drops_what_waits() {
        let committer = Arc::new(Committer::default());
        let mut answered = queued(&committer);
        drop(StopGuard {
            committer: committer.clone(),
            finished: false,
        });
        let queue = committer.queue.lock().unwrap();
        assert!(!queue.running);
        assert!(queue.pending.is_empty());
        drop(queue);
        assert!(answered
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Closed));
    }
}
