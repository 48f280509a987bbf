//! The event log: small traits that every backend implements, and the types they exchange.
//!
//! Architecture Invariant: a backend assigns positions in commit order. A reader that asks for
//! the events after position `p` never receives `p + 2` before `p + 1` is visible, so a reader
//! that resumes from its last position never skips an event.
//!
//! Architecture Invariant: an append is all or nothing. The events of one command, the unique
//! reservations it makes and its idempotency record are written in one transaction.

use chrono::{DateTime, Utc};
use onbehalf_events::{Metadata, StoredEvent};
use uuid::Uuid;

pub mod postgres;
pub mod sqlite;

/// An event ready to be appended; the store assigns its position and stream version.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// Unique id of the event.
    pub event_id: Uuid,
    /// The event's type name.
    pub event_type: String,
    /// The schema version of the payload.
    pub event_version: String,
    /// The payload.
    pub payload: serde_json::Value,
    /// Who and for whom.
    pub metadata: Metadata,
    /// Id of the key that encrypts the payload's personal fields; `None` while they are plain.
    /// Stored and read back unchanged.
    pub key_id: Option<String>,
    /// Tamper-evidence hash of the event, when the caller computed one. Stored and read back
    /// unchanged; the store does not verify it.
    pub hash: Option<String>,
}

impl NewEvent {
    /// An event with a fresh time-ordered id, plain personal fields and no hash.
    pub fn new(
        event_type: impl Into<String>,
        event_version: impl Into<String>,
        payload: serde_json::Value,
        metadata: Metadata,
    ) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            event_version: event_version.into(),
            payload,
            metadata,
            key_id: None,
            hash: None,
        }
    }
}

/// A unique key claimed by an append, such as a registered email.
///
/// The claim is written in the same transaction as the events: if the key is already held the
/// whole append fails with [`StoreError::Reserved`] and nothing is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// What kind of key, e.g. `user_email`.
    pub scope: String,
    /// The key itself, already normalised (e.g. an email in lower case).
    pub key: String,
}

/// The idempotency record of an accepted command, stored with its events.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestRecord {
    /// The actor that scopes the request id, rendered as `user:<id>`, `service:<name>`, ...
    pub actor: String,
    /// The caller's request id.
    pub request_id: String,
    /// A digest of the request, to tell a retry from a different request with the same id.
    pub request_hash: String,
    /// The command's outcome (ids it created), returned again to a retry.
    pub outcome: serde_json::Value,
}

/// One command's worth of events for one stream.
#[derive(Clone, Debug, PartialEq)]
pub struct AppendBatch {
    /// The stream, e.g. `account-<uuid>`.
    pub stream_id: String,
    /// The aggregate type of the stream.
    // LIMITATION: backends store it per event and do not check it matches the stream's earlier
    // events; the aggregate layer is trusted to name streams and types consistently.
    pub stream_type: String,
    /// The stream version the command was decided on (0 for a new stream). The append fails with
    /// [`StoreError::Conflict`] if the stream has moved on.
    pub expected_version: u64,
    /// The commit time recorded on every event.
    pub occurred_at: DateTime<Utc>,
    /// The events, in order. Never empty.
    pub events: Vec<NewEvent>,
    /// Unique keys claimed together with the events.
    pub reservations: Vec<Reservation>,
    /// The idempotency record, when the caller gave a request id.
    pub request: Option<RequestRecord>,
}

/// Where an append landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Position of the first appended event.
    pub first_position: u64,
    /// Position of the last appended event.
    pub last_position: u64,
    /// The stream's version after the append.
    pub stream_version: u64,
}

/// The remembered outcome of an accepted command.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestOutcome {
    /// Digest of the request that was accepted.
    pub request_hash: String,
    /// The outcome that was returned.
    pub outcome: serde_json::Value,
    /// Position of the command's last event.
    pub position: u64,
}

/// What can go wrong in the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream's version is not the expected one: another command got there first.
    #[error("stream {stream_id} is at version {actual}, expected {expected}")]
    Conflict {
        /// The stream.
        stream_id: String,
        /// The version the command was decided on.
        expected: u64,
        /// The version found.
        actual: u64,
    },
    /// A unique key is already held.
    #[error("{scope} `{key}` is already taken")]
    Reserved {
        /// The scope of the key.
        scope: String,
        /// The key.
        key: String,
    },
    /// The actor already used this request id; its first outcome is returned.
    #[error("request id already used")]
    DuplicateRequest(RequestOutcome),
    /// The store cannot be reached.
    #[error("event store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Stored data cannot be read back.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Any other backend failure.
    #[error("event store failure: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// Whether the error is a lost optimistic race that a retry may win.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

/// Rejects a batch that no backend may write.
///
/// An empty batch is refused rather than ignored: it would claim reservations and a request id
/// without leaving an event, so nothing in the log would explain them.
pub(crate) fn check_batch(batch: &AppendBatch) -> StoreResult<()> {
    if batch.events.is_empty() {
        return Err(StoreError::Backend(
            format!(
                "an append to stream {} needs at least one event",
                batch.stream_id
            )
            .into(),
        ));
    }
    Ok(())
}

/// Result alias of the store.
pub type StoreResult<T> = Result<T, StoreError>;

/// The read side of the log.
#[async_trait::async_trait]
pub trait EventReader: Send + Sync {
    /// The events of one stream with a version greater than `after_version`, in version order.
    async fn read_stream(
        &self,
        stream_id: &str,
        after_version: u64,
    ) -> StoreResult<Vec<StoredEvent>>;

    /// Up to `limit` events with a position greater than `after_position`, in position order.
    async fn read_all(&self, after_position: u64, limit: usize) -> StoreResult<Vec<StoredEvent>>;

    /// The position of the last committed event (0 for an empty log).
    async fn head_position(&self) -> StoreResult<u64>;
}

/// The write side of the log.
#[async_trait::async_trait]
pub trait EventAppender: Send + Sync {
    /// Appends one batch atomically; see [`AppendBatch`] for the checks it makes.
    ///
    /// A batch whose request record names an (actor, request id) already stored fails with
    /// [`StoreError::DuplicateRequest`] carrying the stored outcome, and writes nothing.
    async fn append(&self, batch: AppendBatch) -> StoreResult<Appended>;
}

/// The idempotency records of accepted commands.
#[async_trait::async_trait]
pub trait RequestLog: Send + Sync {
    /// The outcome stored for `(actor, request_id)`, if any.
    async fn find_request(
        &self,
        actor: &str,
        request_id: &str,
    ) -> StoreResult<Option<RequestOutcome>>;
}

/// A complete event store backend.
pub trait EventStore:
    EventReader + EventAppender + RequestLog + ReservationLookup + std::fmt::Debug
{
}

impl<T> EventStore for T where
    T: EventReader + EventAppender + RequestLog + ReservationLookup + std::fmt::Debug
{
}

/// Looks up who holds a unique key.
#[async_trait::async_trait]
pub trait ReservationLookup: Send + Sync {
    /// The stream that holds `(scope, key)`, if any.
    async fn find_reservation(&self, scope: &str, key: &str) -> StoreResult<Option<String>>;
}
