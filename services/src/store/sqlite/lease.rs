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
//! so that the holder never gives the lease up in the middle of its own append. Every lock is
//! checked to be on the file its path names now, and the holder checks its file is still named
//! before it answers from memory or appends: a lock file removed or replaced by hand would
//! otherwise let two processes hold the lease at once.
//! `docs/decisions/0012-embedded-writer-lease.md` records why and what it costs.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
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

/// Which file a path names, or an open file is: device and inode.
type FileId = (u64, u64);

fn id_of(metadata: &std::fs::Metadata) -> FileId {
    (metadata.dev(), metadata.ino())
}

/// One of the lease's files. A lock protects only while every process locks the same file, so
/// each lock taken is checked to be on the file the path names now, and the file is opened
/// again when the path was removed or replaced.
#[derive(Debug)]
struct LockFile {
    path: PathBuf,
    open: Mutex<Option<(File, FileId)>>,
}

impl LockFile {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            open: Mutex::new(None),
        }
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, Option<(File, FileId)>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failed(&self, what: &str, err: std::io::Error) -> StoreError {
        StoreError::Unavailable(
            format!(
                "cannot {what} the writer lease's file {}: {err}",
                self.path.display()
            )
            .into(),
        )
    }

    /// Opens the file, creating it if needed; read-only where it cannot be written (a lock
    /// needs no write access).
    fn open_file(&self) -> StoreResult<(File, FileId)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .or_else(|err| match err.kind() {
                ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
                    File::open(&self.path).map_err(|_| err)
                }
                _ => Err(err),
            })
            .map_err(|e| self.failed("open", e))?;
        let id = id_of(&file.metadata().map_err(|e| self.failed("inspect", e))?);
        Ok((file, id))
    }

    /// The file the path names now, if any.
    fn named(&self) -> Option<FileId> {
        std::fs::metadata(&self.path).ok().map(|m| id_of(&m))
    }

    /// Tries to lock the file the path names, shared or exclusively: `false` when another holds
    /// it. A file whose path was removed or replaced is closed (which drops its locks) and the
    /// path opened again.
    fn try_lock(&self, shared: bool) -> StoreResult<bool> {
        let mut open = self.guard();
        for _ in 0..3 {
            if open.is_none() {
                *open = Some(self.open_file()?);
            }
            let Some((file, id)) = open.as_ref() else {
                continue;
            };
            let locked = if shared {
                file.try_lock_shared()
            } else {
                file.try_lock()
            };
            match locked {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) if self.named() == Some(*id) => return Ok(false),
                Err(TryLockError::WouldBlock) => {
                    *open = None;
                    continue;
                }
                Err(TryLockError::Error(e)) => return Err(self.failed("lock", e)),
            }
            if self.named() == Some(*id) {
                return Ok(true);
            }
            *open = None;
        }
        Err(StoreError::Unavailable(
            format!(
                "the writer lease's file {} is being removed or replaced",
                self.path.display()
            )
            .into(),
        ))
    }

    fn unlock(&self) -> StoreResult<()> {
        match self.guard().as_ref() {
            Some((file, _)) => file.unlock().map_err(|e| self.failed("unlock", e)),
            None => Ok(()),
        }
    }

    /// The open file, if it is still the one the path names.
    fn still_named(&self) -> Option<FileId> {
        let id = self.guard().as_ref().map(|(_, id)| *id)?;
        (self.named() == Some(id)).then_some(id)
    }
}

/// One store's side of the embedded writer lease, shared by its clones.
#[derive(Debug)]
pub(super) struct FileLease {
    lease: LockFile,
    wish: LockFile,
    /// Whether this store may take the lease, or only honours it.
    may_take: bool,
    /// What the store knows of stream heads while it holds the lease.
    pub(super) heads: KnownHeads,
    /// The lease file this store holds locked, while it holds the lease.
    held_file: Mutex<Option<FileId>>,
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
    /// The lease's files beside `database`, for a store that may take the lease or only
    /// honours it. They are opened (and created if needed) when first locked.
    pub(super) fn open(database: &Path, may_take: bool) -> Self {
        let beside = |suffix: &str| {
            let mut name = database.as_os_str().to_owned();
            name.push(suffix);
            LockFile::new(PathBuf::from(name))
        };
        Self {
            lease: beside("-lease"),
            wish: beside("-wish"),
            may_take,
            heads: KnownHeads::default(),
            held_file: Mutex::default(),
            seen: Mutex::default(),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn held_file(&self) -> std::sync::MutexGuard<'_, Option<FileId>> {
        self.held_file.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a stream head this store knows may be answered from memory now: it holds the
    /// lease, and the lease file it holds locked is still the one its path names (a file
    /// removed or replaced under it no longer keeps other processes out).
    pub(super) fn may_answer(&self) -> bool {
        let Some(held) = *self.held_file() else {
            return false;
        };
        if self.lease.named() == Some(held) {
            return true;
        }
        // What it knows may be stale from now on; the keeper lets the lock go at its next tick.
        // LIMITATION: a lease file removed or replaced while the holder's own append is under way lets a process that opens the new file take the lease and read a head that append then moves, until its next tick sees the commit.
        self.heads.give_up();
        *self.held_file() = None;
        tracing::warn!(
            path = %self.lease.path.display(),
            "the writer lease's file was removed or replaced: stream heads are read again"
        );
        false
    }

    /// Takes what an append needs of the lease. Called with the writer connection held.
    pub(super) fn before_append(&self) -> StoreResult<Hold> {
        if let Some(epoch) = self.heads.held_epoch() {
            if self.lease.still_named().is_some() {
                return Ok(Hold::Held(epoch));
            }
            self.give_up(epoch, "its file was removed or replaced")?;
        }
        if self.lease.try_lock(true)? {
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
                wishing = self.wish.try_lock(true)?;
            }
            if self.lease.try_lock(true)? {
                if wishing {
                    self.wish.unlock()?;
                }
                return Ok(Hold::Shared);
            }
            if started.elapsed() > WAIT_AT_MOST {
                if wishing {
                    self.wish.unlock()?;
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
            Hold::Shared => self.lease.unlock(),
        }
    }

    /// Takes, keeps or gives up the lease. Called every [`TICK`] with the writer connection
    /// held.
    pub(super) fn tick(&self, writer: &Connection) -> StoreResult<()> {
        let now = Instant::now();
        let mut seen = self.seen();
        // A change means another connection (another process's store) committed since. When the
        // version cannot be read, other processes are assumed active, and nobody takes the
        // lease.
        let moved = match writer.query_row("PRAGMA data_version", [], |row| row.get::<_, i64>(0)) {
            Ok(version) => {
                let moved = seen.data_version.is_some_and(|v| v != version);
                seen.data_version = Some(version);
                moved
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot tell whether another process appended");
                true
            }
        };
        if moved {
            seen.other_at = Some(now);
        }
        let idle = self.heads.idle();
        if let Some(epoch) = self.heads.held_epoch() {
            if idle.is_none_or(|idle| idle > GIVE_UP_AFTER) {
                self.give_up(epoch, "no stream read or append lately")?;
            } else if self.wished()? {
                seen.other_at = Some(now);
                self.give_up(epoch, "another process appends")?;
            } else if moved {
                // Nothing appends while the lease is held but through a lock on another file
                // (the lease's file was removed or replaced) or by hand.
                self.give_up(epoch, "another connection committed")?;
            } else if self.lease.still_named().is_none() {
                self.give_up(epoch, "its file was removed or replaced")?;
            }
            return Ok(());
        }

        let wanted = self.may_take && idle.is_some_and(|idle| idle < TAKE_WITHIN);
        let quiet = seen
            .other_at
            .is_none_or(|at| now.duration_since(at) >= QUIET);
        if !wanted || !quiet {
            return Ok(());
        }
        match self.lease.try_lock(false) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(err) => {
                // A data directory this process cannot write to; its appends fail on the same
                // file, with the same message.
                tracing::debug!(error = %err, "embedded writer lease not taken");
                return Ok(());
            }
        }
        if self.wished()? {
            seen.other_at = Some(now);
            return self.lease.unlock();
        }
        seen.epochs += 1;
        *self.held_file() = self.lease.still_named();
        self.heads.took(seen.epochs, None);
        tracing::info!(
            epoch = seen.epochs,
            "embedded writer lease taken: stream heads answered from memory"
        );
        Ok(())
    }

    /// Whether another process holds the wish file's lock.
    fn wished(&self) -> StoreResult<bool> {
        if self.wish.try_lock(false)? {
            self.wish.unlock()?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Stops answering from memory, then unlocks the lease. A lease file no longer named by its
    /// path is opened again by the next lock, as every lock checks.
    fn give_up(&self, epoch: i64, why: &str) -> StoreResult<()> {
        self.heads.give_up();
        *self.held_file() = None;
        tracing::info!(epoch, why, "embedded writer lease given up");
        self.lease.unlock()
    }
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
