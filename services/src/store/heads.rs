//! What a process holding a writer lease knows of stream heads.
//!
//! Every authorising read (`CheckPermission`, the checks of read RPCs) and every decision that
//! appends nothing reads its stream's events after the state the process folded, so that a
//! revocation committed by any process is seen at once. While a process holds its backend's
//! writer lease, nothing can be appended that it does not append itself, so it may answer "has
//! this stream moved since version `v`?" from memory. Each backend grants the lease its own way
//! (`postgres/lease.rs`, `sqlite/lease.rs`); this module is the memory both keep.
//!
//! A read sent after the lease was taken saw everything committed before it, and nothing else
//! can commit until the lease is given up: the head it finds is remembered. A stream whose
//! append is under way is not known until the append has ended.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The most stream heads remembered at once; the memory is cleared when it fills.
const MAX_HEADS: usize = 100_000;

/// The lease this process holds: its epoch and until when it is trusted.
#[derive(Clone, Copy, Debug)]
struct Held {
    epoch: i64,
    /// `None` for a lease that holds until it is given up.
    trusted_until: Option<Instant>,
}

/// What this process knows of one stream while it holds the lease.
#[derive(Debug, Default)]
struct Stream {
    /// The stream's last version, when known to be the latest committed.
    head: Option<u64>,
    /// How many of this process's appends to the stream are under way.
    writing: u32,
    /// The sequence number of the last append to the stream this process began.
    last_write: u64,
    /// The sequence number of the last of those appends to end.
    last_done: u64,
}

#[derive(Debug, Default)]
struct State {
    held: Option<Held>,
    /// Grows whenever the lease is taken or given up, so that what was learned under one
    /// holding is never recorded under another.
    generation: u64,
    /// Grows with every group of appends this process begins.
    writes: u64,
    /// Grows with every group of appends this process sees end, committed or not.
    done: u64,
    /// When this process last appended or read a stream: it takes the lease only when that
    /// was recently, and gives it up after a long while without.
    last_demand: Option<Instant>,
    streams: HashMap<String, Stream>,
}

impl State {
    fn trusted(&self, now: Instant) -> bool {
        self.held
            .is_some_and(|held| held.trusted_until.is_none_or(|until| now < until))
    }

    /// Forgets every head, and makes what reads in flight find unrecordable: a read records
    /// nothing under a generation other than the one it began in.
    fn forget_heads(&mut self) {
        self.generation += 1;
        self.streams.retain(|_, stream| stream.writing > 0);
        for stream in self.streams.values_mut() {
            stream.head = None;
        }
    }
}

/// Taken before a stream read is sent; the head the read finds is remembered only if the lease
/// was held throughout and no append of this process to the stream was under way at any moment
/// of the read: none began since, and none that began before ended since.
#[derive(Clone, Copy, Debug)]
pub(super) struct ReadToken {
    generation: u64,
    writes: u64,
    done: u64,
}

/// How a stream read begins: answered from memory, or sent to the database with the token that
/// decides whether what it finds may be remembered.
#[derive(Clone, Copy, Debug)]
pub(super) enum ReadStart {
    /// The stream has no event after the version asked for.
    Unmoved,
    /// The read must be sent; `None` when the lease is not held.
    Send(Option<ReadToken>),
}

/// The stream heads one store knows under its writer lease, shared by its clones.
#[derive(Debug, Default)]
pub(super) struct KnownHeads {
    state: Mutex<State>,
}

impl KnownHeads {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this process holds a lease it still trusts.
    pub(super) fn is_held(&self) -> bool {
        self.state().trusted(Instant::now())
    }

    /// Begins a read of the stream's events after `after_version`, noting the demand for the
    /// lease: [`ReadStart::Unmoved`] when the lease is held and trusted, no append of this
    /// process to the stream is under way, and its head is known to be exactly `after_version`.
    pub(super) fn begin_read(&self, stream_id: &str, after_version: u64) -> ReadStart {
        let mut state = self.state();
        let now = Instant::now();
        state.last_demand = Some(now);
        if !state.trusted(now) {
            return ReadStart::Send(None);
        }
        let unmoved = state
            .streams
            .get(stream_id)
            .is_some_and(|s| s.writing == 0 && s.head == Some(after_version));
        if unmoved {
            return ReadStart::Unmoved;
        }
        ReadStart::Send(Some(ReadToken {
            generation: state.generation,
            writes: state.writes,
            done: state.done,
        }))
    }

    /// Remembers `head` as the stream's last version, found by a read that began with `token`.
    pub(super) fn read_found(&self, token: Option<ReadToken>, stream_id: &str, head: u64) {
        let Some(token) = token else {
            return;
        };
        let mut state = self.state();
        if state.generation != token.generation || state.held.is_none() {
            return;
        }
        // A stream without an entry had no append since the token's generation began: entries
        // are only dropped with a new generation, or while the lease is not held.
        if let Some(stream) = state.streams.get(stream_id) {
            if stream.writing > 0
                || stream.last_write > token.writes
                || stream.last_done > token.done
            {
                return;
            }
        } else if state.streams.len() >= MAX_HEADS {
            state.forget_heads();
            return;
        }
        state.streams.entry(stream_id.to_owned()).or_default().head = Some(head);
    }

    /// Marks the streams of an append (or a group of them) as being written: none of them is
    /// answered from memory until [`Self::written`].
    pub(super) fn writing<'a>(&self, streams: impl Iterator<Item = &'a str>) {
        let mut state = self.state();
        state.last_demand = Some(Instant::now());
        if state.streams.len() >= MAX_HEADS {
            state.forget_heads();
        }
        state.writes += 1;
        let sequence = state.writes;
        for stream_id in streams {
            let stream = state.streams.entry(stream_id.to_owned()).or_default();
            stream.writing += 1;
            stream.last_write = sequence;
            stream.head = None;
        }
    }

    /// Ends what [`Self::writing`] began. When the append committed under the lease this process
    /// still holds in the same epoch, each stream's head is its new last version; otherwise it
    /// is not known.
    pub(super) fn written<'a>(
        &self,
        heads: impl Iterator<Item = (&'a str, u64)>,
        committed: bool,
        held_epoch: Option<i64>,
    ) {
        let mut state = self.state();
        let known =
            committed && held_epoch.is_some() && state.held.map(|held| held.epoch) == held_epoch;
        // Without the lease no read is being recorded, so an idle entry can go.
        let keep = state.held.is_some();
        state.done += 1;
        let sequence = state.done;
        for (stream_id, head) in heads {
            let Some(stream) = state.streams.get_mut(stream_id) else {
                continue;
            };
            stream.writing = stream.writing.saturating_sub(1);
            stream.last_done = sequence;
            stream.head = (known && stream.writing == 0).then_some(head);
            if !keep && stream.writing == 0 {
                state.streams.remove(stream_id);
            }
        }
    }

    /// Starts answering from memory under the lease `epoch`, trusted until `trusted_until`
    /// (`None`: until given up), with nothing known yet.
    pub(super) fn took(&self, epoch: i64, trusted_until: Option<Instant>) {
        let mut state = self.state();
        state.forget_heads();
        state.held = Some(Held {
            epoch,
            trusted_until,
        });
    }

    /// Extends the trust in the lease `epoch`, if it is still the one held.
    pub(super) fn renewed(&self, epoch: i64, trusted_until: Instant) {
        let mut state = self.state();
        if let Some(held) = state.held.as_mut() {
            if held.epoch == epoch {
                held.trusted_until = Some(trusted_until);
            }
        }
    }

    /// Stops answering from memory; returns the epoch that was held.
    pub(super) fn give_up(&self) -> Option<i64> {
        let mut state = self.state();
        let held = state.held.take()?;
        state.forget_heads();
        Some(held.epoch)
    }

    /// The epoch of the lease held, trusted or not.
    pub(super) fn held_epoch(&self) -> Option<i64> {
        self.state().held.map(|held| held.epoch)
    }

    /// How long ago the process last appended or read a stream.
    pub(super) fn idle(&self) -> Option<Duration> {
        self.state().last_demand.map(|at| at.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holding(heads: &KnownHeads, epoch: i64) {
        heads.took(epoch, Some(Instant::now() + Duration::from_secs(60)));
    }

    impl KnownHeads {
        fn unmoved(&self, stream_id: &str, after_version: u64) -> bool {
            matches!(
                self.begin_read(stream_id, after_version),
                ReadStart::Unmoved
            )
        }

        /// The token a read would be sent with: no stream's head is ever `u64::MAX`.
        fn read_token(&self) -> Option<ReadToken> {
            match self.begin_read("", u64::MAX) {
                ReadStart::Send(token) => token,
                ReadStart::Unmoved => None,
            }
        }
    }

    #[test]
    fn a_head_is_answered_only_while_the_lease_is_held_and_trusted() {
        let heads = KnownHeads::default();
        let token = heads.read_token();
        assert!(token.is_none());
        heads.read_found(token, "client-account-a", 3);
        assert!(!heads.unmoved("client-account-a", 3));

        holding(&heads, 7);
        let token = heads.read_token();
        heads.read_found(token, "client-account-a", 3);
        assert!(heads.unmoved("client-account-a", 3));
        assert!(!heads.unmoved("client-account-a", 2));
        assert!(!heads.unmoved("client-account-b", 3));

        heads.took(8, Some(Instant::now() - Duration::from_millis(1)));
        assert!(!heads.unmoved("client-account-a", 3));
    }

    #[test]
    fn a_lease_held_until_given_up_stays_trusted() {
        let heads = KnownHeads::default();
        heads.took(1, None);
        assert!(heads.is_held());
        let token = heads.read_token();
        heads.read_found(token, "client-account-a", 3);
        assert!(heads.unmoved("client-account-a", 3));
        assert_eq!(heads.give_up(), Some(1));
        assert!(!heads.is_held());
        assert!(!heads.unmoved("client-account-a", 3));
    }

    #[test]
    fn a_read_that_overlapped_an_append_to_its_stream_is_not_remembered() {
        let heads = KnownHeads::default();
        holding(&heads, 1);
        let token = heads.read_token();
        heads.writing(["client-account-a"].into_iter());
        assert!(!heads.unmoved("client-account-a", 0));
        heads.written([("client-account-a", 2)].into_iter(), true, Some(1));
        assert!(heads.unmoved("client-account-a", 2));
        // The read was sent before the append began: what it found is older than the append.
        heads.read_found(token, "client-account-a", 0);
        assert!(heads.unmoved("client-account-a", 2));
        assert!(!heads.unmoved("client-account-a", 0));
    }

    #[test]
    fn a_read_sent_while_an_append_was_under_way_is_not_remembered() {
        let heads = KnownHeads::default();
        holding(&heads, 1);
        heads.writing(["client-account-a"].into_iter());
        // Sent while the append is under way: it may find the stream before the commit.
        let token = heads.read_token();
        heads.written([("client-account-a", 2)].into_iter(), true, Some(1));
        heads.read_found(token, "client-account-a", 1);
        assert!(heads.unmoved("client-account-a", 2));
        assert!(!heads.unmoved("client-account-a", 1));

        // A read sent after the commit was answered is remembered.
        let token = heads.read_token();
        heads.read_found(token, "client-account-b", 4);
        assert!(heads.unmoved("client-account-b", 4));
    }

    #[test]
    fn an_append_outside_the_held_epoch_leaves_its_stream_unknown() {
        let heads = KnownHeads::default();
        holding(&heads, 4);
        heads.writing(["client-account-a", "user-b"].into_iter());
        heads.written(
            [("client-account-a", 5), ("user-b", 1)].into_iter(),
            true,
            Some(3),
        );
        assert!(!heads.unmoved("client-account-a", 5));
        assert!(!heads.unmoved("user-b", 1));

        heads.writing(["client-account-a"].into_iter());
        heads.written([("client-account-a", 6)].into_iter(), false, Some(4));
        assert!(!heads.unmoved("client-account-a", 6));
    }

    #[test]
    fn giving_the_lease_up_forgets_every_head_learned_under_it() {
        let heads = KnownHeads::default();
        holding(&heads, 2);
        let token = heads.read_token();
        heads.read_found(token, "client-account-a", 9);
        assert_eq!(heads.give_up(), Some(2));
        assert!(!heads.unmoved("client-account-a", 9));

        holding(&heads, 4);
        assert!(!heads.unmoved("client-account-a", 9));
        // A read begun under the earlier holding finds nothing to remember under this one.
        heads.read_found(token, "client-account-a", 9);
        assert!(!heads.unmoved("client-account-a", 9));
    }
}
