//! The read side: in-memory read models fed from the log by position.
//!
//! Architecture Invariant: read models are fed only from the durable log, never from the
//! command path. After a crash they are rebuilt from the log; a command's success never depends
//! on them.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use onbehalf_projections::{InvitationLinks, ReadModels};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::readmodel_pg::{ReadModelError, ReadModelStore};
use crate::store::EventStore;

/// How many events the feed reads per batch.
const BATCH: usize = 1000;
/// How often the feed looks at the log, by default, when no append was announced to it.
pub(crate) const POLL: Duration = Duration::from_millis(200);
/// How often a mirror of the PostgreSQL read models looks again without a notification.
const FALLBACK: Duration = Duration::from_secs(1);

/// Shared, position-aware access to the read models.
#[derive(Debug, Clone)]
pub struct ReadSide {
    models: Arc<RwLock<ReadModels>>,
    position: watch::Receiver<u64>,
}

impl ReadSide {
    /// Rebuilds `models` from the whole log, then keeps feeding them in the background.
    ///
    /// `appended` wakes the feed as soon as an append is announced on it (this process's
    /// executor announces its own); appends nobody announced are picked up by polling every
    /// 200 ms.
    pub async fn start(
        store: Arc<dyn EventStore>,
        models: ReadModels,
        appended: watch::Receiver<u64>,
    ) -> Result<Self> {
        Self::start_polling(store, models, appended, POLL).await
    }

    /// Like [`Self::start`], polling every `poll` for appends nobody announced.
    pub async fn start_polling(
        store: Arc<dyn EventStore>,
        models: ReadModels,
        mut appended: watch::Receiver<u64>,
        poll: Duration,
    ) -> Result<Self> {
        let models = Arc::new(RwLock::new(models));
        let (position_tx, position) = watch::channel(0);
        while feed_once(&*store, &models, &position_tx).await? > 0 {}
        tracing::info!(
            position = *position_tx.borrow(),
            "read models rebuilt from the log"
        );

        let feed_models = models.clone();
        tokio::spawn(async move {
            loop {
                match feed_once(&*store, &feed_models, &position_tx).await {
                    Ok(0) => {
                        tokio::select! {
                            changed = appended.changed() => {
                                if changed.is_err() {
                                    tokio::time::sleep(poll).await;
                                }
                            }
                            _ = tokio::time::sleep(poll) => {}
                            _ = position_tx.closed() => return,
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "read-model feed failed; retrying");
                        tokio::time::sleep(POLL).await;
                    }
                }
            }
        });
        Ok(Self { models, position })
    }

    /// Read models mirrored from the PostgreSQL read models that projection workers write
    /// (`onbehalf project`), instead of folded here: the mirror is loaded from the serving
    /// generation, then brought forward whenever a worker's commit notifies
    /// [`crate::readmodel_pg::NOTIFY_CHANNEL`], so a read's `min_position` waits for the
    /// worker across processes. A rebuild's swap is seen as a new generation and loaded whole.
    // LIMITATION: the mirror holds the whole read models in memory, as the embedded read side
    // does; the audit trail and notifications would need SQL queries once they outgrow it.
    pub async fn follow_postgres(
        store: ReadModelStore,
        links: Arc<dyn InvitationLinks>,
    ) -> Result<Self> {
        let (loaded, generation) = store
            .load(links.clone(), true)
            .await
            .map_err(read_model_error)?;
        tracing::info!(
            position = loaded.position(),
            generation,
            "read models loaded from PostgreSQL"
        );
        let (position_tx, position) = watch::channel(loaded.position());
        let models = Arc::new(RwLock::new(loaded));
        let (wake_tx, mut wake) = watch::channel(0u64);

        let listener = store.clone();
        let listen_stop = position_tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ended = listener.listen(&wake_tx) => {
                        if let Err(e) = ended {
                            tracing::warn!(error = %e, "read-model notifications lost; listening again");
                        }
                    }
                    _ = listen_stop.closed() => return,
                }
                tokio::time::sleep(POLL).await;
            }
        });

        let follow_models = models.clone();
        tokio::spawn(async move {
            let mut generation = generation;
            loop {
                match follow_once(&store, &links, &follow_models, &mut generation).await {
                    Ok(position) => {
                        position_tx.send_if_modified(|p| {
                            let changed = *p != position;
                            *p = position;
                            changed
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "read models not refreshed; retrying"),
                }
                // LIMITATION: besides notifications, the mirror looks again every second, which
                // bounds how long a lost notification (a broken listening connection) delays
                // reads.
                tokio::select! {
                    changed = wake.changed() => {
                        if changed.is_err() {
                            tokio::time::sleep(FALLBACK).await;
                        }
                    }
                    _ = tokio::time::sleep(FALLBACK) => {}
                    _ = position_tx.closed() => return,
                }
            }
        });
        Ok(Self { models, position })
    }

    /// The position the read models have reached.
    pub fn position(&self) -> u64 {
        *self.position.borrow()
    }

    /// Waits until the read models have reached `min_position` (at once for 0), but no later
    /// than `deadline`, then runs `read` on them.
    pub async fn read<T>(
        &self,
        min_position: u64,
        deadline: Instant,
        read: impl FnOnce(&ReadModels) -> T,
    ) -> Result<T> {
        if min_position > 0 {
            let mut rx = self.position.clone();
            let reached =
                tokio::time::timeout_at(deadline, rx.wait_for(|p| *p >= min_position)).await;
            match reached {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(Error::Unavailable("read models stopped".into())),
                Err(_) => {
                    return Err(Error::DeadlineExceeded(format!(
                        "read models are at position {}, not yet at {min_position}",
                        self.position()
                    )))
                }
            }
        }
        let guard = self
            .models
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(read(&guard))
    }
}

// LIMITATION: a batch is read, then folded, then the next one read; overlapping the two would
// bring a rebuild at start closer to the slower of them (see docs/BENCHMARKS.md, "Replay").
async fn feed_once(
    store: &dyn EventStore,
    models: &RwLock<ReadModels>,
    position: &watch::Sender<u64>,
) -> Result<usize> {
    let after = models.read().unwrap_or_else(|p| p.into_inner()).position();
    let events = store.read_all(after, BATCH).await?;
    if events.is_empty() {
        return Ok(0);
    }
    let mut guard = models.write().unwrap_or_else(|p| p.into_inner());
    for event in &events {
        guard
            .apply(event)
            .map_err(|e| Error::Internal(format!("read models cannot apply the log: {e}")))?;
    }
    position.send_replace(guard.position());
    Ok(events.len())
}

fn read_model_error(e: ReadModelError) -> Error {
    if e.is_unavailable() {
        Error::Unavailable(e.to_string())
    } else {
        Error::Internal(e.to_string())
    }
}

/// Brings the mirror to the stored checkpoint; returns the position it reached.
async fn follow_once(
    store: &ReadModelStore,
    links: &Arc<dyn InvitationLinks>,
    models: &RwLock<ReadModels>,
    generation: &mut u64,
) -> std::result::Result<u64, ReadModelError> {
    let after = models.read().unwrap_or_else(|p| p.into_inner()).position();
    let delta = store.delta(Some(*generation), after, true).await?;
    let Some(checkpoint) = delta.checkpoint else {
        return Ok(after);
    };
    if checkpoint.generation != *generation {
        // A rebuild swapped generations: the new one is loaded whole, then replaces the old.
        let (fresh, serving) = store.load(links.clone(), true).await?;
        let position = fresh.position();
        *models.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        tracing::info!(
            generation = serving,
            position,
            "read models swapped to a rebuilt generation"
        );
        *generation = serving;
        return Ok(position);
    }
    if checkpoint.position <= after {
        return Ok(after);
    }
    let mut guard = models.write().unwrap_or_else(|p| p.into_inner());
    delta.apply_to(&mut guard);
    Ok(guard.position())
}
