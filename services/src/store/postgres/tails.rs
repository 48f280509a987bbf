//! Batched stream reads: the reads of streams' events that callers ask for while earlier ones
//! are in flight are answered by one statement together.
//!
//! Every decision and every authorising read loads its stream's events after the state the
//! process holds (usually none: the stream has not moved). Under load those reads are many
//! small statements; here each waits in a queue, and a reader task (at most [`MAX_RUNNING`])
//! takes everything queued (up to [`MAX_BATCH`] reads) and answers it with one statement that
//! probes the `(stream_id, version)` index once per read. A read is sent after it was queued,
//! so it sees every append committed before its caller asked, exactly as a lone read does.
//! A read that finds no other queued or in flight is made at once by its caller, as a plain
//! statement: a batch of one would cost a task and a wake-up more.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use onbehalf_events::StoredEvent;
use tokio::sync::oneshot;

use super::group::same_error;
use super::{corrupt, decode_event, map_err, map_pool_err, to_sql_int, to_u64, EVENT_COLUMNS};
use crate::store::{StoreError, StoreResult};

/// How many reader tasks may have a statement in flight at once.
///
/// One: a statement costs PostgreSQL and the client about the same whatever number of reads it
/// answers, so the fewer in flight, the larger and cheaper each batch. Under 64 concurrent
/// permission checks one reader answered 20% to 40% more checks in the same time than four did,
/// and their p99 fell by a fifth to a third (`onbehalf-bench latency`, docs/BENCHMARKS.md).
// LIMITATION: with one batch in flight, a batch that reads long streams (folded afresh after a start) delays every read queued behind it.
const MAX_RUNNING: usize = 1;
/// The most reads one statement answers.
const MAX_BATCH: usize = 256;

struct Pending {
    stream_id: String,
    after_version: u64,
    answer: oneshot::Sender<StoreResult<Vec<StoredEvent>>>,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    running: usize,
}

/// The stream reads waiting for a reader task, shared by every clone of one store.
#[derive(Default)]
pub(super) struct Tails {
    queue: Mutex<Queue>,
}

impl std::fmt::Debug for Tails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tails").finish_non_exhaustive()
    }
}

impl Tails {
    /// The events of `stream_id` after `after_version`: read at once by this caller when no
    /// other read is queued or in flight, otherwise in the next batch.
    pub(super) async fn read(
        self: &Arc<Self>,
        pool: &Pool,
        call_timeout: Duration,
        stream_id: &str,
        after_version: u64,
    ) -> StoreResult<Vec<StoredEvent>> {
        let (answer, answered) = oneshot::channel();
        let (alone, start) = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.running == 0 && queue.pending.is_empty() {
                queue.running += 1;
                (true, false)
            } else {
                queue.pending.push(Pending {
                    stream_id: stream_id.to_owned(),
                    after_version,
                    answer,
                });
                let start = queue.running < MAX_RUNNING;
                if start {
                    queue.running += 1;
                }
                (false, start)
            }
        };
        if alone {
            // A batch of one costs a task and a wake-up more than the plain read.
            let _slot = Slot {
                tails: self.clone(),
                pool: pool.clone(),
                call_timeout,
            };
            return read_one(pool, stream_id, after_version).await;
        }
        if start {
            // Detached from this caller, so that a caller giving up does not abandon the reads
            // of others queued with it.
            tokio::spawn(run(self.clone(), pool.clone(), call_timeout));
        }
        answered.await.map_err(|_| {
            StoreError::Unavailable("the read was dropped before it was answered".into())
        })?
    }

    /// Takes the next batch off the queue; `None` (and the reader stops) when it is empty.
    fn next_batch(&self) -> Option<Vec<Pending>> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.pending.is_empty() {
            queue.running -= 1;
            return None;
        }
        let take = queue.pending.len().min(MAX_BATCH);
        Some(queue.pending.drain(..take).collect())
    }
}

/// The reader slot of a caller reading alone; given back when its read ends or is abandoned,
/// starting a reader task for the reads that queued meanwhile if no other takes them.
struct Slot {
    tails: Arc<Tails>,
    pool: Pool,
    call_timeout: Duration,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let start = {
            let mut queue = self.tails.queue.lock().unwrap_or_else(|p| p.into_inner());
            // The slot passes to a reader task when reads wait and no task would take them.
            let start = !queue.pending.is_empty() && queue.running == 1;
            if !start {
                queue.running -= 1;
            }
            start
        };
        if start {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(run(
                        self.tails.clone(),
                        self.pool.clone(),
                        self.call_timeout,
                    ));
                }
                Err(_) => {
                    // No runtime left to read on: the waiting reads are answered with an error
                    // by dropping them.
                    let mut queue = self.tails.queue.lock().unwrap_or_else(|p| p.into_inner());
                    queue.running -= 1;
                    queue.pending.clear();
                }
            }
        }
    }
}

/// Counts a reader stopped if its task ends without doing so itself (its runtime shut down while
/// it waited), so that later reads start new ones.
struct StopGuard(Arc<Tails>, bool);

impl Drop for StopGuard {
    fn drop(&mut self) {
        if !self.1 {
            let mut queue = self.0.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.running = queue.running.saturating_sub(1);
        }
    }
}

async fn run(tails: Arc<Tails>, pool: Pool, call_timeout: Duration) {
    let mut guard = StopGuard(tails.clone(), false);
    while let Some(batch) = tails.next_batch() {
        let (reads, answers): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|p| ((p.stream_id, p.after_version), p.answer))
            .unzip();
        let results = match tokio::time::timeout(call_timeout, read_batch(&pool, &reads)).await {
            Ok(Ok(results)) => results.into_iter().map(Ok).collect(),
            Ok(Err(e)) => answers.iter().map(|_| Err(same_error(&e))).collect(),
            Err(_) => {
                // The connection given up on may be left behind an unanswered query; the idle
                // ones are closed so that none is handed out again.
                pool.retain(|_, _| false);
                let e = StoreError::Unavailable(
                    format!(
                        "PostgreSQL did not answer within {} ms",
                        call_timeout.as_millis()
                    )
                    .into(),
                );
                answers
                    .iter()
                    .map(|_| Err(same_error(&e)))
                    .collect::<Vec<_>>()
            }
        };
        for (answer, result) in answers.into_iter().zip(results) {
            // A caller that stopped waiting has no one to tell.
            let _ = answer.send(result);
        }
    }
    // `next_batch` counted this reader out when it found the queue empty.
    guard.1 = true;
}

/// One stream's events after its version, their sealed fields opened.
async fn read_one(
    pool: &Pool,
    stream_id: &str,
    after_version: u64,
) -> StoreResult<Vec<StoredEvent>> {
    let client = pool.get().await.map_err(map_pool_err)?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 AND version > $2 \
             ORDER BY version"
        ))
        .await
        .map_err(map_err)?;
    let rows = client
        .query(&stmt, &[&stream_id, &to_sql_int(after_version)])
        .await
        .map_err(map_err)?;
    let mut events = rows
        .iter()
        .map(decode_event)
        .collect::<StoreResult<Vec<_>>>()?;
    super::super::keys::postgres::open(&client, &mut events).await?;
    Ok(events)
}

/// Reads every stream's events after its version with one statement; the events of read `i`
/// come back as the `i`-th vector, in version order, their sealed fields opened.
async fn read_batch(pool: &Pool, reads: &[(String, u64)]) -> StoreResult<Vec<Vec<StoredEvent>>> {
    let client = pool.get().await.map_err(map_pool_err)?;
    let stmt = client
        .prepare_cached(&format!(
            // `OFFSET 0` keeps the planner from flattening the subquery into a join, which it
            // can plan as a scan of the whole log while the statistics are young: each read is
            // one probe of the (stream_id, version) index.
            "SELECT e.*, k.i FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY \
             AS k(stream_id, after_version, i) \
             CROSS JOIN LATERAL (SELECT {EVENT_COLUMNS} FROM events \
             WHERE events.stream_id = k.stream_id AND events.version > k.after_version \
             ORDER BY events.version OFFSET 0) e \
             ORDER BY k.i, e.version"
        ))
        .await
        .map_err(map_err)?;
    let streams: Vec<&str> = reads.iter().map(|(s, _)| s.as_str()).collect();
    let versions: Vec<i64> = reads.iter().map(|(_, v)| to_sql_int(*v)).collect();
    let rows = client
        .query(&stmt, &[&streams, &versions])
        .await
        .map_err(map_err)?;

    let mut events = Vec::with_capacity(rows.len());
    let mut owners = Vec::with_capacity(rows.len());
    for row in &rows {
        events.push(decode_event(row)?);
        let i: i64 = row.try_get(12).map_err(corrupt)?;
        owners.push(to_u64(i, "read index")?);
    }
    super::super::keys::postgres::open(&client, &mut events).await?;

    let mut results: Vec<Vec<StoredEvent>> = reads.iter().map(|_| Vec::new()).collect();
    for (event, i) in events.into_iter().zip(owners) {
        let slot = usize::try_from(i)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| results.get_mut(i))
            .ok_or_else(|| StoreError::Corrupt(format!("a read index {i} out of range")))?;
        slot.push(event);
    }
    Ok(results)
}
