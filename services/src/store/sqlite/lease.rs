//! The embedded store's writer lease: while no other process appends to the database file, the
//! process holding the lease answers "has this stream moved since version `v`?" from memory
//! instead of asking SQLite (`heads.rs`).
//!
//! The lease is an advisory lock on a file beside the database (`events.db-lease`), which the
//! operating system drops with the process that held it, however that process ends:
//!
//! - The holder has the lock exclusively. It appends as any process does, and trusts memory
//!   for as long as it holds the lock.
//! - Every other append holds the lock shared until its transaction has committed or rolled
//!   back. An appender that finds the lock taken holds a second file (`events.db-wish`)
//!   shared, waits for the lease's lock, and lets the wish go once it has the lock.
//! - The holder looks for a wish every [`TICK`] (it tries the wish file's lock exclusively), and
//!   on finding one stops answering from memory first and only then unlocks the lease.
//! - A process that appends or reads streams, and saw no other process append or wish to in
//!   the last [`QUIET`], takes the lease when its lock is free and nobody wishes it.
//!
//! Every lock of the lease file is taken and dropped while the store's writer connection is held,
//! so that the holder never gives the lease up in the middle of its own append.
//! `docs/decisions/0012-embedded-writer-lease.md` records why and what it costs.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::store::heads::KnownHeads;
use crate::store::{StoreError, StoreResult};

/// How often the holder looks for a wish, and a process that could take the lease tries.
const TICK: Duration = Duration::from_millis(100);
/// A process takes the lease only if it appended or read a stream this recently.
const TAKE_WITHIN: Duration = Duration::from_secs(10);
/// The holder gives the lease up after this long without appending or reading a stream.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);
/// No process takes the lease within this long of seeing another process append or wish to, so
/// that processes taking turns do not pass it back and forth.
const QUIET: Duration = Duration::from_secs(10);
/// How long an append waits for the holder to give the lease up before failing.
const WAIT_AT_MOST: Duration = Duration::from_secs(5);
/// How often a waiting append tries the lease's lock again.
const WAIT_STEP: Duration = Duration::from_millis(2);

/// The schema step that makes an append by a build that knows nothing of the lease fail, rather
/// than land unseen by a holder: every append of this build marks the head row's advance
/// (`lease_aware = 1`), and the mark is cleared again after each advance.
pub(super) const MIGRATION: &str = r#"
ALTER TABLE event_head ADD COLUMN lease_aware INTEGER;
CREATE TRIGGER event_head_lease_guard BEFORE UPDATE OF position ON event_head
WHEN NEW.lease_aware IS NOT 1
BEGIN
    SELECT RAISE(ABORT, 'the log is written under a writer lease that this build does not honour');
END;
CREATE TRIGGER event_head_lease_mark_cleared AFTER UPDATE OF position ON event_head
BEGIN
    UPDATE event_head SET lease_aware = NULL WHERE singleton = 1;
END;
"#;

/// The statement that advances the head row, with this build's mark.
pub(super) const ADVANCE_HEAD: &str =
    "UPDATE event_head SET position = ?1, lease_aware = 1 WHERE singleton = 1";

/// What the keeper has seen of other processes.
#[derive(Debug, Default)]
struct Seen {
    /// The writer connection's `data_version` at the last tick: it changes when another
    /// connection commits.
    data_version: Option<i64>,
    /// When another process was last seen to append or wish to.
    other_at: Option<Instant>,
    /// The epochs handed out by this store.
    epochs: i64,
}

/// One store's side of the embedded writer lease, shared by its clones.
#[derive(Debug)]
pub(super) struct FileLease {
    lease: File,
    wish: File,
    /// Whether this store may take the lease, or only honours it.
    may_take: bool,
    /// What the store knows of stream heads while it holds the lease.
    pub(super) heads: KnownHeads,
    seen: Mutex<Seen>,
}

/// How an append holds the lease.
#[derive(Clone, Copy, Debug)]
pub(super) enum Hold {
    /// This store holds the lease, in this epoch.
    Held(i64),
    /// The lease's lock is held shared for the append.
    Shared,
}

impl Hold {
    /// The epoch of the lease held, for [`KnownHeads::written`].
    pub(super) fn epoch(self) -> Option<i64> {
        match self {
            Hold::Held(epoch) => Some(epoch),
            Hold::Shared => None,
        }
    }
}

impl FileLease {
    /// Opens (creating if needed) the lease's files beside `database`, for a store that may
    /// take the lease or only honours it.
    pub(super) fn open(database: &Path, may_take: bool) -> StoreResult<Self> {
        let beside = |suffix: &str| {
            let mut name = database.as_os_str().to_owned();
            name.push(suffix);
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&name)
                .map_err(|e| StoreError::Unavailable(Box::new(e)))
        };
        Ok(Self {
            lease: beside("-lease")?,
            wish: beside("-wish")?,
            may_take,
            heads: KnownHeads::default(),
            seen: Mutex::default(),
        })
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes what an append needs of the lease. Called with the writer connection held.
    pub(super) fn before_append(&self) -> StoreResult<Hold> {
        if let Some(epoch) = self.heads.held_epoch() {
            return Ok(Hold::Held(epoch));
        }
        if try_lock(self.lease.try_lock_shared())? {
            return Ok(Hold::Shared);
        }
        // LIMITATION: the holder finds the wish at its next tick, so this append waits up to TICK, polling on a blocking thread that holds the writer connection, with this process's other appends queued behind it.
        let started = Instant::now();
        // Another process holds the lease: this one does not take it for a while after.
        self.seen().other_at = Some(started);
        // The holder's look at the wish file holds that lock for an instant, so taking the
        // wish is retried too.
        let mut wishing = false;
        loop {
            if !wishing {
                wishing = try_lock(self.wish.try_lock_shared())?;
            }
            if try_lock(self.lease.try_lock_shared())? {
                if wishing {
                    unlock(&self.wish)?;
                }
                return Ok(Hold::Shared);
            }
            if started.elapsed() > WAIT_AT_MOST {
                if wishing {
                    unlock(&self.wish)?;
                }
                return Err(StoreError::Unavailable(
                    format!(
                        "another process holds the embedded log's writer lease and did not give \
                         it up within {} s",
                        WAIT_AT_MOST.as_secs()
                    )
                    .into(),
                ));
            }
            std::thread::sleep(WAIT_STEP);
        }
    }

    /// Lets go of what [`Self::before_append`] took, once the append's transaction has ended.
    /// Called with the writer connection held.
    pub(super) fn after_append(&self, hold: Hold) -> StoreResult<()> {
        match hold {
            Hold::Held(_) => Ok(()),
            Hold::Shared => unlock(&self.lease),
        }
    }

    /// Takes, keeps or gives up the lease. Called every [`TICK`] with the writer connection
    /// held.
    pub(super) fn tick(&self, writer: &Connection) -> StoreResult<()> {
        let now = Instant::now();
        let mut seen = self.seen();
        // A change means another connection (another process's store) committed since. When
        // the version cannot be read, other processes are assumed active: the holder still
        // looks for wishes, and nobody else takes the lease.
        match writer.query_row("PRAGMA data_version", [], |row| row.get::<_, i64>(0)) {
            Ok(version) => {
                if seen.data_version.is_some_and(|v| v != version) {
                    seen.other_at = Some(now);
                }
                seen.data_version = Some(version);
            }
            Err(err) => {
                seen.other_at = Some(now);
                tracing::warn!(error = %err, "cannot tell whether another process appended");
            }
        }

        let idle = self.heads.idle();
        if let Some(epoch) = self.heads.held_epoch() {
            if idle.is_none_or(|idle| idle > GIVE_UP_AFTER) {
                self.give_up(epoch, "no stream read or append lately")?;
            } else if self.wished()? {
                seen.other_at = Some(now);
                self.give_up(epoch, "another process appends")?;
            }
            return Ok(());
        }

        let wanted = self.may_take && idle.is_some_and(|idle| idle < TAKE_WITHIN);
        let quiet = seen
            .other_at
            .is_none_or(|at| now.duration_since(at) >= QUIET);
        if !wanted || !quiet || !try_lock(self.lease.try_lock())? {
            return Ok(());
        }
        if self.wished()? {
            seen.other_at = Some(now);
            return unlock(&self.lease);
        }
        seen.epochs += 1;
        self.heads.took(seen.epochs, None);
        tracing::info!(
            epoch = seen.epochs,
            "embedded writer lease taken: stream heads answered from memory"
        );
        Ok(())
    }

    /// Whether another process holds the wish file's lock.
    fn wished(&self) -> StoreResult<bool> {
        if try_lock(self.wish.try_lock())? {
            unlock(&self.wish)?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Stops answering from memory, then unlocks the lease.
    fn give_up(&self, epoch: i64, why: &str) -> StoreResult<()> {
        self.heads.give_up();
        tracing::info!(epoch, why, "embedded writer lease given up");
        unlock(&self.lease)
    }
}

/// Whether a lock was taken; `false` when another holds it.
fn try_lock(result: Result<(), TryLockError>) -> StoreResult<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(TryLockError::WouldBlock) => Ok(false),
        Err(TryLockError::Error(e)) => Err(StoreError::Unavailable(Box::new(e))),
    }
}

fn unlock(file: &File) -> StoreResult<()> {
    file.unlock()
        .map_err(|e| StoreError::Unavailable(Box::new(e)))
}

/// Ticks the lease of the store `inner` belongs to until every clone of the store has been
/// dropped; the operating system drops the locks with the files.
pub(super) async fn keep(inner: Weak<super::Inner>) {
    // A keeper stopped with its runtime while the store lives on gives the lease up, since
    // nobody would look for wishes any more.
    let _stopped = GiveUpWhenStopped(inner.clone());
    loop {
        tokio::time::sleep(TICK).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let ticked = tokio::task::spawn_blocking(move || {
            let writer = super::lock(&inner.writer);
            inner.lease.tick(&writer)
        })
        .await;
        match ticked {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "embedded writer lease not kept"),
            Err(err) => tracing::warn!(error = %err, "embedded writer lease tick failed"),
        }
    }
}

struct GiveUpWhenStopped(Weak<super::Inner>);

impl Drop for GiveUpWhenStopped {
    fn drop(&mut self) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        let _writer = super::lock(&inner.writer);
        if let Some(epoch) = inner.lease.heads.held_epoch() {
            if let Err(err) = inner.lease.give_up(epoch, "the store's keeper stopped") {
                tracing::warn!(error = %err, "embedded writer lease not given up");
            }
        }
    }
}
