//! The writer lease: while no other process appends to a database, the process holding the lease
//! may answer "has this stream moved since version `v`?" from memory instead of asking PostgreSQL.
//!
//! Every authorising read (`CheckPermission`, the checks of read RPCs) and every decision that
//! appends nothing reads its stream's events after the state the process folded, so that a
//! revocation committed by any replica is seen at once. That read is a round trip even when the
//! stream has not moved, which it almost never has when this process made its last write.
//!
//! The lease lives in the head row (`event_head`), which every append group locks first:
//!
//! - A process that appends or reads streams takes the lease when nobody holds it (or it has
//!   lapsed), when it was the last process to append or no process appended in the last two
//!   seconds, and when no quiet period runs: `lease_holder` is its id, `lease_epoch` grows by
//!   one, `lease_expires_at` is [`TERM`] after PostgreSQL's clock. It renews the lease every
//!   [`RENEW_EVERY`], and trusts it for [`TERM`] less [`MARGIN`] after it sent the renewal, on
//!   its own monotonic clock: PostgreSQL set the expiry later than that send, with the same
//!   length, so the holder stops trusting it before the database lets it lapse. After
//!   [`GIVE_UP_AFTER`] without a read or an append, it gives the lease up.
//! - A group of another process that finds a live lease in the head row it has locked writes
//!   nothing: it rolls back, sets `lease_wanted`, waits until the lease is released or lapsed,
//!   and begins again. The holder finds the wish at its next renewal, stops answering from
//!   memory first and only then releases the lease. A holder that died lets it lapse after
//!   [`TERM`].
//! - A group that finds a lapsed lease of another clears it (`lease_epoch` grows again) in the
//!   same statement that advances the head, so a late renewal of the lapsed lease cannot succeed.
//!   The group also records itself as the last appender; when that changes from one process to
//!   another, nobody takes the lease for ten seconds, so that replicas taking turns do not pass it
//!   back and forth.
//!
//! While it holds the lease the process knows each stream's head version from its own reads
//! and appends (`heads.rs`). `docs/decisions/0011-writer-lease.md` records why and what it
//! costs.

use std::sync::Weak;
use std::time::{Duration, Instant};

use deadpool_postgres::{Client, Pool};
use uuid::Uuid;

use super::{map_err, map_pool_err};
use crate::store::heads::KnownHeads;
use crate::store::{StoreError, StoreResult};

/// How long a lease lasts after PostgreSQL granted or renewed it.
pub(super) const TERM: Duration = Duration::from_secs(1);
/// How much sooner than [`TERM`] after a renewal was sent the holder stops trusting it: room for
/// the two clocks running at slightly different rates, and for the holder's own scheduling.
const MARGIN: Duration = Duration::from_millis(250);
/// How often the holder renews its lease, and how often a process that could take it tries.
const RENEW_EVERY: Duration = Duration::from_millis(100);
/// A process takes the lease only if it appended or read a stream this recently.
const TAKE_WITHIN: Duration = Duration::from_secs(10);
/// The holder gives the lease up after this long without appending or reading a stream.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);
/// How long a group waits for another process to give up its lease before failing.
const WAIT_AT_MOST: Duration = Duration::from_secs(5);

/// The schema step that adds the lease to the head row.
///
/// `appended_by` is set by every advance of this build and cleared again by the trigger, so the
/// trigger recognises an advance by an earlier build, which knows nothing of the lease: while a
/// lease is live it refuses that advance, and otherwise clears a lapsed lease (as this build's
/// advance does) and starts a quiet period, so that no process takes the lease while such a
/// build appends.
pub(super) const MIGRATION: &str = r#"
ALTER TABLE event_head
    ADD COLUMN lease_holder     uuid,
    ADD COLUMN lease_epoch      bigint      NOT NULL DEFAULT 0,
    ADD COLUMN lease_expires_at timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN lease_wanted     boolean     NOT NULL DEFAULT false,
    ADD COLUMN last_appender    uuid,
    ADD COLUMN quiet_until      timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN last_appended_at timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN appended_by      uuid;
CREATE FUNCTION event_head_lease_guard() RETURNS trigger LANGUAGE plpgsql AS $guard$
BEGIN
    IF NEW.position <> OLD.position AND NEW.appended_by IS NULL THEN
        IF OLD.lease_holder IS NOT NULL AND OLD.lease_expires_at > now() THEN
            RAISE EXCEPTION 'the log is under a writer lease that this build does not honour'
                USING ERRCODE = 'lock_not_available';
        END IF;
        NEW.last_appender := NULL;
        NEW.last_appended_at := now();
        NEW.quiet_until := now() + interval '10 seconds';
        IF OLD.lease_holder IS NOT NULL THEN
            NEW.lease_holder := NULL;
            NEW.lease_epoch := OLD.lease_epoch + 1;
        END IF;
    END IF;
    NEW.appended_by := NULL;
    RETURN NEW;
END
$guard$;
CREATE TRIGGER event_head_lease_guard BEFORE UPDATE ON event_head
    FOR EACH ROW EXECUTE FUNCTION event_head_lease_guard();
"#;

/// The locking statement of every group: the head position and the lease, read after the lock
/// was granted.
pub(super) const LOCK_HEAD: &str = "SELECT position, lease_holder, lease_epoch, \
     lease_expires_at > now() FROM event_head WHERE singleton FOR UPDATE";

/// Advances the head to `$1` for the appender `$2`: clears a lapsed lease of another process,
/// and starts the quiet period (ten seconds, in which no process takes the lease) when the last
/// appender changes.
pub(super) const ADVANCE_HEAD: &str = "UPDATE event_head SET position = $1, \
     appended_by = $2, last_appender = $2, last_appended_at = now(), \
     quiet_until = CASE WHEN last_appender IS NOT NULL AND last_appender <> $2 \
         THEN now() + interval '10 seconds' ELSE quiet_until END, \
     lease_holder = CASE WHEN lease_holder = $2 THEN lease_holder END, \
     lease_epoch = CASE WHEN lease_holder IS NOT NULL AND lease_holder <> $2 \
         THEN lease_epoch + 1 ELSE lease_epoch END, \
     lease_wanted = CASE WHEN lease_holder = $2 THEN lease_wanted ELSE false END \
     WHERE singleton";

/// The lease as a group found it in the head row it locked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Seen {
    /// The process holding it, lapsed or not.
    pub(super) holder: Option<Uuid>,
    /// Its epoch.
    pub(super) epoch: i64,
    /// Whether it had not yet lapsed by PostgreSQL's clock.
    pub(super) live: bool,
}

impl Seen {
    /// Whether a group of `me` must wait for another process to give the lease up.
    pub(super) fn blocks(&self, me: Uuid) -> bool {
        self.live && self.holder.is_some_and(|holder| holder != me)
    }

    /// The epoch of the lease `me` held when the group locked the head, if it held it.
    pub(super) fn held_by(&self, me: Uuid) -> Option<i64> {
        (self.holder == Some(me)).then_some(self.epoch)
    }
}

/// One store's side of the writer lease, shared by its clones.
#[derive(Debug)]
pub(super) struct WriterLease {
    /// This store's id as an appender; new for every store opened.
    me: Uuid,
    /// What the store knows of stream heads while it holds the lease.
    pub(super) heads: KnownHeads,
}

impl WriterLease {
    pub(super) fn new() -> Self {
        Self {
            me: Uuid::new_v4(),
            heads: KnownHeads::default(),
        }
    }

    /// This store's id as an appender.
    pub(super) fn me(&self) -> Uuid {
        self.me
    }
}

/// Takes, renews and gives up the lease for as long as the store is open: stops when every
/// clone of the store has been dropped.
// LIMITATION: the holder finds another process's wish at its next renewal, so that process's first append waits up to RENEW_EVERY; listening for it instead made every commit signal the listener (PostgreSQL wakes all listeners of a database on any NOTIFY), which cost more than it saved.
pub(super) async fn keep(lease: Weak<WriterLease>, pool: Pool) {
    let mut held: Option<(Uuid, i64)> = None;
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let Some(lease) = lease.upgrade() else {
            // Nothing reads through the closed store any more: the next appender need not wait
            // for the lease to lapse.
            if let Some((me, epoch)) = held {
                if let Ok(client) = pool.get().await {
                    let _ = release(&client, me, epoch).await;
                }
            }
            return;
        };
        if let Err(err) = step(&lease, &pool).await {
            // The lease lapses on its own while PostgreSQL cannot be reached; reads then ask
            // PostgreSQL, which fails the same way.
            tracing::debug!(error = %err, "writer lease not renewed");
        }
        held = lease.heads.held_epoch().map(|epoch| (lease.me, epoch));
    }
}

async fn step(lease: &WriterLease, pool: &Pool) -> StoreResult<()> {
    let idle = lease.heads.idle();
    match lease.heads.held_epoch() {
        Some(epoch) if idle.is_none_or(|idle| idle > GIVE_UP_AFTER) => {
            lease.heads.give_up();
            let client = pool.get().await.map_err(map_pool_err)?;
            release(&client, lease.me, epoch).await?;
            tracing::info!(
                epoch,
                "writer lease given up: no stream read or append lately"
            );
            Ok(())
        }
        Some(epoch) => renew(lease, pool, epoch).await,
        None if idle.is_some_and(|idle| idle < TAKE_WITHIN) => take(lease, pool).await,
        None => Ok(()),
    }
}

async fn take(lease: &WriterLease, pool: &Pool) -> StoreResult<()> {
    let client = pool.get().await.map_err(map_pool_err)?;
    let sent = Instant::now();
    let row = client
        .query_opt(
            "UPDATE event_head SET lease_holder = $1, lease_epoch = lease_epoch + 1, \
             lease_expires_at = now() + $2 * interval '1 millisecond', lease_wanted = false \
             WHERE singleton AND (lease_holder IS NULL OR lease_expires_at <= now()) \
             AND quiet_until <= now() \
             AND (last_appender = $1 OR last_appended_at <= now() - interval '2 seconds') \
             RETURNING lease_epoch",
            &[&lease.me, &term_millis()],
        )
        .await
        .map_err(map_err)?;
    if let Some(row) = row {
        let epoch: i64 = row.try_get(0).map_err(super::corrupt)?;
        // LIMITATION: trust is measured on `Instant`, which stops while the host is suspended, and against PostgreSQL's wall clock, which a step forward of more than MARGIN makes lapse early.
        lease.heads.took(epoch, Some(sent + TERM - MARGIN));
        tracing::info!(
            epoch,
            "writer lease taken: stream heads answered from memory"
        );
    }
    Ok(())
}

async fn renew(lease: &WriterLease, pool: &Pool, epoch: i64) -> StoreResult<()> {
    let client = pool.get().await.map_err(map_pool_err)?;
    let sent = Instant::now();
    let row = client
        .query_opt(
            "UPDATE event_head SET lease_expires_at = now() + $3 * interval '1 millisecond' \
             WHERE singleton AND lease_holder = $1 AND lease_epoch = $2 \
             AND lease_expires_at > now() \
             RETURNING lease_wanted",
            &[&lease.me, &epoch, &term_millis()],
        )
        .await
        .map_err(map_err)?;
    let Some(row) = row else {
        // Lapsed, and cleared by another process's append.
        lease.heads.give_up();
        tracing::info!(epoch, "writer lease lost");
        return Ok(());
    };
    let wanted: bool = row.try_get(0).map_err(super::corrupt)?;
    if !wanted {
        lease.heads.renewed(epoch, sent + TERM - MARGIN);
        return Ok(());
    }
    // Memory stops answering before the database lets another process append.
    lease.heads.give_up();
    release(&client, lease.me, epoch).await?;
    tracing::info!(epoch, "writer lease given up: another process appends");
    Ok(())
}

async fn release(client: &Client, me: Uuid, epoch: i64) -> StoreResult<()> {
    client
        .execute(
            "UPDATE event_head SET lease_holder = NULL, lease_epoch = lease_epoch + 1, \
             lease_wanted = false WHERE singleton AND lease_holder = $1 AND lease_epoch = $2",
            &[&me, &epoch],
        )
        .await
        .map_err(map_err)?;
    Ok(())
}

fn term_millis() -> f64 {
    TERM.as_secs_f64() * 1000.0
}

/// Asks the holder `seen` describes to give the lease up, and waits until it has, or its lease
/// has lapsed. Called with no transaction open on `client`.
pub(super) async fn wait_for_release(client: &Client, me: Uuid, seen: Seen) -> StoreResult<()> {
    let Some(holder) = seen.holder else {
        return Ok(());
    };
    // The holder finds the wish at its next renewal.
    client
        .execute(
            "UPDATE event_head SET lease_wanted = true \
             WHERE singleton AND lease_holder = $1 AND lease_epoch = $2",
            &[&holder, &seen.epoch],
        )
        .await
        .map_err(map_err)?;
    let started = Instant::now();
    loop {
        let row = client
            .query_one(
                "SELECT lease_holder IS NULL OR lease_holder = $1 OR lease_epoch <> $2 \
                 OR lease_expires_at <= now() FROM event_head WHERE singleton",
                &[&me, &seen.epoch],
            )
            .await
            .map_err(map_err)?;
        let free: bool = row.try_get(0).map_err(super::corrupt)?;
        if free {
            return Ok(());
        }
        if started.elapsed() > WAIT_AT_MOST {
            return Err(StoreError::Unavailable(
                format!(
                    "another process ({holder}) holds the writer lease and did not give it up \
                     within {} s",
                    WAIT_AT_MOST.as_secs()
                )
                .into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_blocking_only_while_live_and_held_by_another() {
        let me = Uuid::new_v4();
        let other = Uuid::new_v4();
        let seen = |holder, live| Seen {
            holder,
            epoch: 3,
            live,
        };
        assert!(seen(Some(other), true).blocks(me));
        assert!(!seen(Some(other), false).blocks(me));
        assert!(!seen(Some(me), true).blocks(me));
        assert!(!seen(None, true).blocks(me));
        assert_eq!(seen(Some(me), false).held_by(me), Some(3));
        assert_eq!(seen(Some(other), true).held_by(me), None);
    }
}
