//! The command executor: load an aggregate from the log, decide, append, report the position.
//!
//! This replaces cqrs-es's `CqrsFramework`, which neither returns positions nor feeds
//! projections durably: here the only output of a command is what the log committed, and read
//! models follow the log by position.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use onbehalf_events::personal::{self, DataSubject};
use onbehalf_events::{EventSchema, Metadata};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use uuid::Uuid;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::store::keys::Seal;
use crate::store::{AppendBatch, EventStore, NewEvent, RequestRecord, Reservation, StoreError};

pub use crate::domain::{DOMAIN_SCOPE, EMAIL_SCOPE};

impl From<crate::domain::UniqueKey> for Reservation {
    fn from(key: crate::domain::UniqueKey) -> Self {
        Reservation {
            scope: key.scope.to_owned(),
            key: key.key,
        }
    }
}

/// How many times a command is decided again after losing an optimistic race.
// LIMITATION: a member writing to an account without pause through another replica can make every attempt of the owner's command (a revocation too) lose its race, so the owner gets ABORTED and must retry; nothing decides a command under the lock itself.
const MAX_ATTEMPTS: u32 = 8;

/// An aggregate as loaded from its stream.
#[derive(Debug)]
pub struct Loaded<A> {
    /// The state after every stored event.
    pub aggregate: A,
    /// The stream's version (0 for a stream with no events).
    pub version: u64,
    /// The position of the stream's last event (0 for none).
    pub position: u64,
}

/// A caller's idempotency key for one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idempotency {
    /// The caller's request id.
    pub request_id: String,
    /// Digest of the request's content without the request id.
    pub request_hash: String,
}

/// One command to execute against one stream.
#[derive(Debug)]
pub struct Execution<A: Aggregate> {
    /// The stream the aggregate lives in.
    pub stream_id: String,
    /// The command, decided again on each attempt.
    pub command: A::Command,
    /// The envelope metadata of every event the command appends.
    pub metadata: Metadata,
    /// The caller's idempotency key.
    pub idempotency: Option<Idempotency>,
    /// Unique keys claimed with the events.
    pub reservations: Vec<Reservation>,
}

/// The result of an accepted command.
#[derive(Debug, Clone, PartialEq)]
pub struct Executed<T> {
    /// What the command produced (ids), as first returned.
    pub value: T,
    /// Position of the command's last event; for a command that changed nothing, the position
    /// of the stream's last event.
    pub position: u64,
    /// Whether this is the remembered outcome of an earlier identical request.
    pub replayed: bool,
}

/// How many streams' folded states are kept in memory before the cache starts over.
const CACHED_STREAMS: usize = 20_000;

/// Folded aggregates by stream, and one lock per stream for commands of this process.
///
/// A cached state is the fold of a stream's first `version` events. Events never change once
/// committed, so a cached state is never stale, only short: a load reads the events after it.
#[derive(Default)]
struct Streams {
    states: std::sync::Mutex<HashMap<String, Cached>>,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

struct Cached {
    aggregate: Box<dyn Any + Send + Sync>,
    version: u64,
    position: u64,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cached = self.states.lock().map(|s| s.len()).unwrap_or_default();
        f.debug_struct("Streams")
            .field("cached", &cached)
            .finish_non_exhaustive()
    }
}

impl Streams {
    fn get<A: Clone + 'static>(&self, stream_id: &str) -> Option<Loaded<A>> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let cached = states.get(stream_id)?;
        let aggregate = cached.aggregate.downcast_ref::<A>()?.clone();
        Some(Loaded {
            aggregate,
            version: cached.version,
            position: cached.position,
        })
    }

    fn put<A: Clone + Send + Sync + 'static>(&self, stream_id: &str, loaded: &Loaded<A>) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if states
            .get(stream_id)
            .is_some_and(|c| c.version >= loaded.version)
        {
            return;
        }
        // LIMITATION: the cache starts over when full instead of evicting the least recently used streams.
        if states.len() >= CACHED_STREAMS {
            states.clear();
        }
        states.insert(
            stream_id.to_owned(),
            Cached {
                aggregate: Box::new(loaded.aggregate.clone()),
                version: loaded.version,
                position: loaded.position,
            },
        );
    }

    /// Drops every folded state, so that the next load of each stream folds it from the log.
    fn forget_states(&self) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.clear();
    }

    /// Waits for this process's other commands on `stream_id` to finish, so that they queue
    /// instead of losing optimistic races to each other.
    async fn lock(&self, stream_id: &str) -> StreamGuard<'_> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(stream_id.to_owned()).or_default().clone()
        };
        let guard = lock.clone().lock_owned().await;
        StreamGuard {
            streams: self,
            stream_id: stream_id.to_owned(),
            lock,
            guard: Some(guard),
        }
    }
}

struct StreamGuard<'a> {
    streams: &'a Streams,
    stream_id: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self.streams.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map and this guard hold the lock: nobody waits, so the entry can go.
        if Arc::strong_count(&self.lock) == 2 {
            locks.remove(&self.stream_id);
        }
    }
}

/// Executes commands on the log.
#[derive(Debug, Clone)]
pub struct Executor {
    store: Arc<dyn EventStore>,
    clock: Arc<dyn Clock>,
    appended: watch::Sender<u64>,
    streams: Arc<Streams>,
}

impl Executor {
    /// An executor over `store`; every append is announced on `appended` with its position.
    pub fn new(
        store: Arc<dyn EventStore>,
        clock: Arc<dyn Clock>,
        appended: watch::Sender<u64>,
    ) -> Self {
        Self {
            store,
            clock,
            appended,
            streams: Arc::default(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Tells this executor's readers that the log has reached `position`, for appends made by
    /// other processes that polling would otherwise find later.
    pub fn announce(&self, position: u64) {
        self.appended.send_replace(position);
    }

    /// A receiver that sees the position of every append this executor makes from now on, for
    /// readers of the log that want to be woken rather than poll.
    pub fn appended(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Loads an aggregate by folding the events of its stream, each upcast to the current
    /// version of its type; an event that cannot be upcast or decoded fails the load.
    ///
    /// The fold starts from the state this process last folded for the stream, if it holds one,
    /// and reads only the events committed after it.
    // LIMITATION: no snapshots in the store; a process that starts, or a stream that left the cache, folds the whole stream once.
    pub async fn load<A>(&self, stream_id: &str) -> Result<Loaded<A>>
    where
        A: Aggregate + Clone + 'static,
    {
        let mut loaded = self.streams.get::<A>(stream_id).unwrap_or(Loaded {
            aggregate: A::default(),
            version: 0,
            position: 0,
        });
        let events = self.store.read_stream(stream_id, loaded.version).await?;
        let fresh = !events.is_empty();
        for stored in events {
            // Older events are brought to the current version of their type before deciding.
            let stored = onbehalf_events::upcast(stored).map_err(|e| {
                Error::Internal(format!("stream {stream_id} cannot be loaded: {e}"))
            })?;
            let event: A::Event = stored.decode().map_err(|e| {
                Error::Internal(format!(
                    "event at position {} cannot be decoded: {e}",
                    stored.position
                ))
            })?;
            loaded.aggregate.apply(event);
            loaded.version = stored.version;
            loaded.position = stored.position;
        }
        if fresh {
            self.streams.put(stream_id, &loaded);
        }
        Ok(loaded)
    }

    /// Executes `execution`, deciding again after a lost optimistic race.
    ///
    /// `outcome` computes what the caller gets back from the aggregate's state after the
    /// command; it is stored with the events so that a retry with the same request id gets the
    /// same answer and appends nothing.
    ///
    /// The first decision is made on the state this process last folded for the stream, when it
    /// holds one, without reading the log: an append carries the version it was decided on, and
    /// the store refuses it under the lock that orders the log if the stream has moved since, so
    /// an accepted command was always decided on the stream's latest state. A decision that
    /// appends nothing (a refusal or a no-op) has no append to check it, so it is only answered
    /// once the log confirms the stream has not moved; otherwise it is decided again on the
    /// events read. The request id is checked the same way: by the append, which refuses a used
    /// one and hands back its first outcome, and by a lookup only when nothing is appended.
    pub async fn execute<A, T, F>(&self, execution: Execution<A>, outcome: F) -> Result<Executed<T>>
    where
        A: Aggregate<Error = crate::domain::DomainError, Services = ()>
            + crate::domain::UniqueKeys
            + Clone
            + 'static,
        A::Command: Clone,
        A::Event: EventSchema,
        T: Serialize + DeserializeOwned,
        F: Fn(&A) -> Result<T>,
    {
        let actor_key = execution.metadata.actor.to_string();
        let mut execution = execution;
        execution.metadata.request_id =
            execution.idempotency.as_ref().map(|k| k.request_id.clone());

        let _queued = self.streams.lock(&execution.stream_id).await;
        // Whether the state decided on was read from the log during this execution.
        let mut confirmed = false;
        let mut next: Option<Loaded<A>> = None;
        for attempt in 0..MAX_ATTEMPTS {
            let cached = match (&next, confirmed) {
                (None, false) => self.streams.get::<A>(&execution.stream_id),
                _ => None,
            };
            let mut loaded: Loaded<A> = match next.take().or(cached) {
                Some(loaded) => loaded,
                None => {
                    confirmed = true;
                    self.load(&execution.stream_id).await?
                }
            };
            let decided_on = loaded.version;
            let sink = EventSink::default();
            let decided = loaded
                .aggregate
                .handle(execution.command.clone(), &(), &sink)
                .await;
            let decided = match decided {
                Ok(()) => Ok(sink.collect().await),
                Err(refused) => Err(refused),
            };
            let events = match decided {
                Ok(events) if !events.is_empty() => events,
                decided => {
                    // A refusal or a no-op has no append to check the state it was decided on:
                    // it is answered only once the log confirms that state is the latest.
                    if !confirmed {
                        confirmed = true;
                        next = self.moved(&execution.stream_id, decided_on).await?;
                        if next.is_some() {
                            continue;
                        }
                    }
                    // A first attempt of this request may have committed while this one waited
                    // for the stream: its effect can be what refuses the retry (a second pending
                    // invitation, a paid invoice) or makes it a no-op. The retry answers the
                    // first outcome instead.
                    if let Some(first) = self.first_outcome(&execution, &actor_key).await? {
                        return first;
                    }
                    // LIMITATION: a no-op leaves no record of its request id (records are written with events), so a retry after the account changed is decided afresh and may append.
                    return match decided {
                        Err(refused) => Err(refused.into()),
                        Ok(_) => Ok(Executed {
                            value: outcome(&loaded.aggregate)?,
                            position: loaded.position,
                            replayed: false,
                        }),
                    };
                }
            };
            let value = outcome(&loaded.aggregate)?;

            let keys = loaded.aggregate.unique_keys(&events);
            let mut batch = self.batch::<A>(&execution, &actor_key, decided_on, events, &value)?;
            batch
                .reservations
                .extend(keys.claimed.into_iter().map(Reservation::from));
            batch
                .releases
                .extend(keys.released.into_iter().map(Reservation::from));
            let erases = !keys.erased.is_empty();
            if let Some(first) = batch.events.first_mut() {
                first.erase = keys.erased;
            }
            match self.store.append(batch).await {
                Ok(appended) => {
                    if erases {
                        // Folded states of other streams may hold values the erasure sealed
                        // away (an invitee's email); they are folded again from the log.
                        // LIMITATION: only this process forgets its folded states; another API replica keeps deciding on the plain values it folded until it restarts or the stream leaves its cache.
                        self.streams.forget_states();
                    } else {
                        // The state the decision left is the fold of the stream up to the
                        // appended events, so the next command starts from it.
                        loaded.version = appended.stream_version;
                        loaded.position = appended.last_position;
                        self.streams.put(&execution.stream_id, &loaded);
                    }
                    self.appended.send_replace(appended.last_position);
                    tracing::info!(
                        stream_id = %execution.stream_id,
                        position = appended.last_position,
                        "command accepted"
                    );
                    return Ok(Executed {
                        value,
                        position: appended.last_position,
                        replayed: false,
                    });
                }
                Err(StoreError::Conflict { .. }) if !confirmed => {
                    // The folded state was behind the log (another process appended): decide
                    // again at once on the events read from it.
                    confirmed = true;
                    continue;
                }
                Err(StoreError::Conflict { .. }) => {
                    // Writers that collided would collide again at once; a short random pause
                    // spreads their next attempts.
                    let pause =
                        rand::Rng::gen_range(&mut rand::thread_rng(), 0..=(2u64 << attempt));
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                    continue;
                }
                Err(StoreError::DuplicateRequest(stored)) => {
                    let key = execution.idempotency.as_ref().ok_or_else(|| {
                        Error::Internal("store reported a duplicate request without one".into())
                    })?;
                    return replay(key, stored.request_hash, stored.outcome, stored.position);
                }
                Err(other) => return Err(other.into()),
            }
        }
        Err(Error::Aborted(format!(
            "{} kept changing concurrently; gave up after {MAX_ATTEMPTS} attempts",
            execution.stream_id
        )))
    }

    /// The stream as the log holds it now, when it has events after `version`.
    async fn moved<A>(&self, stream_id: &str, version: u64) -> Result<Option<Loaded<A>>>
    where
        A: Aggregate + Clone + 'static,
    {
        let loaded = self.load::<A>(stream_id).await?;
        Ok((loaded.version > version).then_some(loaded))
    }

    /// The remembered outcome of this execution's request, when an attempt of it has committed.
    /// Asked only when a decision appends nothing, so an accepted command pays nothing for it.
    async fn first_outcome<A, T>(
        &self,
        execution: &Execution<A>,
        actor_key: &str,
    ) -> Result<Option<Result<Executed<T>>>>
    where
        A: Aggregate,
        T: DeserializeOwned,
    {
        let Some(key) = &execution.idempotency else {
            return Ok(None);
        };
        Ok(self
            .store
            .find_request(actor_key, &key.request_id)
            .await?
            .map(|stored| replay(key, stored.request_hash, stored.outcome, stored.position)))
    }

    fn batch<A>(
        &self,
        execution: &Execution<A>,
        actor_key: &str,
        expected_version: u64,
        events: Vec<A::Event>,
        value: &impl Serialize,
    ) -> Result<AppendBatch>
    where
        A: Aggregate,
        A::Event: EventSchema,
    {
        let events = events
            .into_iter()
            .map(|event| {
                Ok(NewEvent {
                    event_id: Uuid::now_v7(),
                    event_type: event.event_type().to_owned(),
                    event_version: event.event_version().to_owned(),
                    payload: serde_json::to_value(&event)
                        .map_err(|e| Error::Internal(format!("event cannot be encoded: {e}")))?,
                    metadata: execution.metadata.clone(),
                    key_id: None,
                    seal: seal_of(&execution.stream_id, &event),
                    erase: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let request = match &execution.idempotency {
            Some(key) => Some(RequestRecord {
                actor: actor_key.to_owned(),
                request_id: key.request_id.clone(),
                request_hash: key.request_hash.clone(),
                outcome: serde_json::to_value(value)
                    .map_err(|e| Error::Internal(format!("outcome cannot be encoded: {e}")))?,
            }),
            None => None,
        };
        Ok(AppendBatch {
            stream_id: execution.stream_id.clone(),
            stream_type: A::TYPE.to_owned(),
            expected_version,
            occurred_at: self.clock.now(),
            events,
            reservations: execution.reservations.clone(),
            releases: Vec::new(),
            request,
        })
    }
}

/// The personal fields of `event` to seal, under the key of its data subject.
fn seal_of(stream_id: &str, event: &impl EventSchema) -> Option<Seal> {
    let fields = event.personal_fields();
    if fields.is_empty() {
        return None;
    }
    let subject = match event.personal_subject() {
        DataSubject::OwnStream => personal::stream_subject(stream_id),
        DataSubject::Email(email) => personal::email_subject(&email),
    };
    Some(Seal {
        subject,
        fields: fields.iter().map(|f| (*f).to_owned()).collect(),
    })
}

fn replay<T: DeserializeOwned>(
    key: &Idempotency,
    stored_hash: String,
    outcome: serde_json::Value,
    position: u64,
) -> Result<Executed<T>> {
    if stored_hash != key.request_hash {
        return Err(Error::invalid(
            "request_id",
            "this request id was already used for a different request",
        ));
    }
    if crate::store::keys::is_erased_outcome(&outcome) {
        return Err(Error::FailedPrecondition(
            "the first outcome of this request held personal data that was erased since".into(),
        ));
    }
    let value = serde_json::from_value(outcome)
        .map_err(|e| Error::Internal(format!("stored outcome cannot be decoded: {e}")))?;
    Ok(Executed {
        value,
        position,
        replayed: true,
    })
}
