//! The event log: small traits that every backend implements, and the types they exchange.
//!
//! Architecture Invariant: a backend assigns positions in commit order. A reader that asks for
//! the events after position `p` never receives `p + 2` before `p + 1` is visible, so a reader
//! that resumes from its last position never skips an event.
//!
//! Architecture Invariant: an append is all or nothing. The events of one command, the unique
//! reservations it makes and its idempotency record are written in one transaction.
//!
//! Architecture Invariant: every stored event carries its link of a SHA-256 hash chain, computed
//! by the store inside the append under the lock that assigns positions, over the event exactly
//! as it is stored ([`EventContent::canonical_bytes`]). [`verify_chain`] walks the log and names
//! the first position where the chain breaks.

use chrono::{DateTime, Utc};
use onbehalf_events::{Metadata, StoredEvent};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub mod chain;
mod heads;
pub mod keys;
pub mod postgres;
pub mod sqlite;

pub use chain::{verify_chain, BreakKind, ChainReport};

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
    /// Stored and read back unchanged, unless `seal` replaces it with the id of the key that
    /// sealed the event.
    pub key_id: Option<String>,
    /// Personal fields the store seals under their subject's data key before writing and
    /// hashing the event ([`keys`]); `None` stores the payload as given.
    pub seal: Option<keys::Seal>,
    /// Data subjects whose keys the store deletes in the same transaction (an erasure).
    pub erase: Vec<String>,
}

impl NewEvent {
    /// An event with a fresh time-ordered id and plain personal fields.
    ///
    /// There is no hash to give: the store computes every event's link of the hash chain
    /// itself, inside the append (see [`chain`]).
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
            seal: None,
            erase: Vec::new(),
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
    /// Unique keys this stream gives up together with the events (a key another stream holds
    /// is left alone). Released before `reservations` are claimed.
    pub releases: Vec<Reservation>,
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
    ///
    /// This and [`read_stream`](Self::read_stream) return events opened: each sealed personal
    /// field holds its plain value while its data key exists and the erased placeholder once
    /// the key was deleted ([`keys`]).
    async fn read_all(&self, after_position: u64, limit: usize) -> StoreResult<Vec<StoredEvent>>;

    /// Like [`read_all`](Self::read_all), but every event exactly as stored, sealed fields
    /// included: what the hash chain covers and what leaves the store for a broker.
    async fn read_all_sealed(
        &self,
        after_position: u64,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>>;

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

/// A link of the log's hash chain: a SHA-256 digest, written as 64 lowercase hex digits.
///
/// The link of the event at position `p` is `SHA-256(link of p - 1 ‖ canonical bytes of p)`,
/// where the link before position 1 is [`GENESIS_HASH`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainHash([u8; 32]);

/// The link the event at position 1 chains to: 32 zero bytes.
pub const GENESIS_HASH: ChainHash = ChainHash([0; 32]);

impl ChainHash {
    /// Parses 64 hex digits (either case); `None` for anything else.
    pub fn parse(hex: &str) -> Option<ChainHash> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut digest = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            // Only the lower-case form the store writes: any other spelling is a changed row.
            if pair.iter().any(|b| b.is_ascii_uppercase()) {
                return None;
            }
            let high = char::from(pair[0]).to_digit(16)?;
            let low = char::from(pair[1]).to_digit(16)?;
            digest[i] = u8::try_from(high * 16 + low).ok()?;
        }
        Some(ChainHash(digest))
    }

    /// The digest's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The link that follows `self` for an event with these canonical bytes.
    pub fn next(&self, canonical: &[u8]) -> ChainHash {
        let mut digest = Sha256::new();
        digest.update(self.0);
        digest.update(canonical);
        ChainHash(digest.finalize().into())
    }
}

impl std::fmt::Display for ChainHash {
    /// 64 lowercase hex digits, the form the stores keep in their `hash` column.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChainHash({self})")
    }
}

/// Every stored field of one event except its hash: what its link of the chain covers.
///
/// Both backends build it from the values they write, and verification builds it from the
/// values read back, so the two agree exactly when the row is unchanged. The chain covers events
/// as stored: an encrypted payload whose key was erased still verifies, because the ciphertext
/// in the log did not change.
#[derive(Clone, Copy, Debug)]
pub struct EventContent<'a> {
    /// The event's position.
    pub position: u64,
    /// The event's id.
    pub event_id: Uuid,
    /// The stream.
    pub stream_id: &'a str,
    /// The stream's aggregate type.
    pub stream_type: &'a str,
    /// The version within the stream.
    pub version: u64,
    /// The commit time; only its whole microseconds count, the precision both backends keep.
    pub occurred_at: DateTime<Utc>,
    /// The event's type name.
    pub event_type: &'a str,
    /// The payload's schema version.
    pub event_version: &'a str,
    /// The payload, as it reads back from the store (see [`stored_payload`]).
    pub payload: &'a serde_json::Value,
    /// The envelope metadata.
    pub metadata: &'a Metadata,
    /// The id of the key encrypting the payload's personal fields.
    pub key_id: Option<&'a str>,
}

/// Tells the canonical encoding of one version apart from any other byte string.
const CANONICAL_TAG: &[u8] = b"onbehalf.event.v1";

impl<'a> EventContent<'a> {
    /// The content of a stored event, as read back.
    pub fn of(event: &'a StoredEvent) -> EventContent<'a> {
        EventContent {
            position: event.position,
            event_id: event.event_id,
            stream_id: &event.stream_id,
            stream_type: &event.stream_type,
            version: event.version,
            occurred_at: event.occurred_at,
            event_type: &event.event_type,
            event_version: &event.event_version,
            payload: &event.payload,
            metadata: &event.metadata,
            key_id: event.key_id.as_deref(),
        }
    }

    /// The same content claimed at another position (verification uses it to recognise an
    /// event that was moved).
    pub fn at_position(self, position: u64) -> EventContent<'a> {
        EventContent { position, ..self }
    }

    /// The fixed-order encoding the chain hashes.
    ///
    /// In order: the tag `onbehalf.event.v1`, position, event id (16 bytes), stream id, stream
    /// type, version, occurred-at (microseconds since the Unix epoch, signed), event type, event
    /// version, payload (compact JSON), metadata (compact JSON), key id. Integers are 8 bytes
    /// big-endian; every string is preceded by its length in bytes as 8 bytes big-endian; the
    /// key id is a `0` byte when absent and a `1` byte and the string when present. No two
    /// different contents have the same encoding.
    // LIMITATION: payload and metadata are hashed as they parse, not as the stored text: a key unknown to the envelope, or a duplicate key in the payload JSON (the parser keeps the last), added to a row by hand is not detected.
    pub fn canonical_bytes(&self) -> StoreResult<Vec<u8>> {
        let payload = serde_json::to_vec(self.payload).map_err(|e| {
            StoreError::Corrupt(format!("payload at position {}: {e}", self.position))
        })?;
        let metadata = serde_json::to_vec(self.metadata).map_err(|e| {
            StoreError::Corrupt(format!("metadata at position {}: {e}", self.position))
        })?;
        let mut out = Vec::with_capacity(256 + payload.len() + metadata.len());
        let text = |out: &mut Vec<u8>, bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            out.extend_from_slice(bytes);
        };
        text(&mut out, CANONICAL_TAG);
        out.extend_from_slice(&self.position.to_be_bytes());
        out.extend_from_slice(self.event_id.as_bytes());
        text(&mut out, self.stream_id.as_bytes());
        text(&mut out, self.stream_type.as_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.occurred_at.timestamp_micros().to_be_bytes());
        text(&mut out, self.event_type.as_bytes());
        text(&mut out, self.event_version.as_bytes());
        text(&mut out, &payload);
        text(&mut out, &metadata);
        match self.key_id {
            None => out.push(0),
            Some(key_id) => {
                out.push(1);
                text(&mut out, key_id.as_bytes());
            }
        }
        Ok(out)
    }

    /// This event's link of the chain, given the link of the event before it.
    pub fn chain_hash(&self, previous: &ChainHash) -> StoreResult<ChainHash> {
        Ok(previous.next(&self.canonical_bytes()?))
    }
}

/// The commit time as both backends store it: cut to whole microseconds.
///
/// The backends write this value, and hash it, so that what is hashed is what reads back.
pub(crate) fn stored_time(at: DateTime<Utc>) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).ok_or_else(|| {
        StoreError::Backend(format!("commit time {at} is out of the store's range").into())
    })
}

/// The payload as it will read back from the store: written as compact JSON text, parsed again.
///
/// Hashing this rather than the caller's value keeps the chain exact even for a number whose
/// text does not parse back to the very same bits.
pub(crate) fn stored_payload(payload: &serde_json::Value) -> StoreResult<serde_json::Value> {
    let text = serde_json::to_string(payload).map_err(|e| StoreError::Backend(Box::new(e)))?;
    serde_json::from_str(&text).map_err(|e| StoreError::Backend(Box::new(e)))
}

/// The links of a batch's events, in order, chained onto `previous` (the head event's link),
/// for events landing at positions `head + 1, head + 2, ...` and versions `version + 1, ...`.
pub(crate) fn batch_hashes(
    batch: &AppendBatch,
    occurred_at: DateTime<Utc>,
    head: u64,
    version: u64,
    previous: ChainHash,
) -> StoreResult<Vec<ChainHash>> {
    let mut link = previous;
    let mut links = Vec::with_capacity(batch.events.len());
    for (offset, event) in (1u64..).zip(&batch.events) {
        let payload = stored_payload(&event.payload)?;
        let content = EventContent {
            position: head + offset,
            event_id: event.event_id,
            stream_id: &batch.stream_id,
            stream_type: &batch.stream_type,
            version: version + offset,
            occurred_at,
            event_type: &event.event_type,
            event_version: &event.event_version,
            payload: &payload,
            metadata: &event.metadata,
            key_id: event.key_id.as_deref(),
        };
        link = content.chain_hash(&link)?;
        links.push(link);
    }
    Ok(links)
}

/// The link a new append chains onto: the genesis link for an empty log, otherwise the stored
/// hash of the head event.
///
/// A head event that is missing or whose hash is not a link means the log was changed outside
/// the store; appending onto it would hide that, so the append fails as corrupt.
pub(crate) fn head_link(head: u64, stored: Option<Option<String>>) -> StoreResult<ChainHash> {
    if head == 0 {
        return Ok(GENESIS_HASH);
    }
    match stored {
        None => Err(StoreError::Corrupt(format!(
            "the head event at position {head} is missing"
        ))),
        Some(hash) => hash.as_deref().and_then(ChainHash::parse).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "the head event at position {head} carries no valid hash"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use onbehalf_events::{Actor, Permission};

    use super::*;

    fn content_fixture() -> (serde_json::Value, Metadata) {
        let user = Uuid::parse_str("6a1e9f0c-7d2b-4e3a-8c4d-1b2a3c4d5e6f").unwrap();
        let mut metadata = Metadata::new(Actor::User(user));
        metadata.permission = Some(Permission::Invoices);
        metadata.correlation_id = Uuid::parse_str("11111111-2222-4333-8444-555555555555").unwrap();
        let payload = serde_json::json!({ "invoice": "INV-1", "amount_minor": 1_500_000 });
        (payload, metadata)
    }

    // The expected digests were computed outside Rust from the documented encoding; a change of
    // the encoding would break the verification of every stored log, so it must fail here.
    #[test]
    fn the_canonical_encoding_hashes_to_its_documented_digest() {
        let (payload, metadata) = content_fixture();
        let content = EventContent {
            position: 7,
            event_id: Uuid::parse_str("0190a0b0-c0d0-7e00-8f00-000000000001").unwrap(),
            stream_id: "account-0b6f",
            stream_type: "client_account",
            version: 3,
            // Nanoseconds beyond the microsecond are not part of what is stored or hashed.
            occurred_at: DateTime::from_timestamp(1_741_000_000, 123_456_789).unwrap(),
            event_type: "InvoicePaid",
            event_version: "1",
            payload: &payload,
            metadata: &metadata,
            key_id: Some("key-user-6a1e"),
        };

        let first = content.chain_hash(&GENESIS_HASH).unwrap();
        let second = content.chain_hash(&first).unwrap();

        assert_eq!(
            first.to_string(),
            "32ec5361bf70e3a8c32ff290200af06e051bc2a20f4b63e1e17f195cf6531335"
        );
        assert_eq!(
            second.to_string(),
            "1968bfed0bbf4d10443fd201d75e4a7cbdef4d39f013668f01647e5d24336ecf"
        );
    }

    #[test]
    fn a_chain_hash_reads_back_from_its_hex_form_and_nothing_else_parses() {
        let hash = GENESIS_HASH.next(b"x");
        assert_eq!(ChainHash::parse(&hash.to_string()), Some(hash));
        // The store writes lower case; an upper-cased hash is a changed row.
        assert_eq!(ChainHash::parse(&hash.to_string().to_uppercase()), None);
        assert_eq!(ChainHash::parse(&"0".repeat(63)), None);
        assert_eq!(ChainHash::parse(&"g".repeat(64)), None);
        assert_eq!(ChainHash::parse(&"é".repeat(32)), None);
        assert_eq!(GENESIS_HASH.to_string(), "0".repeat(64));
    }

    #[test]
    fn a_missing_key_id_and_an_empty_one_encode_differently() {
        let (payload, metadata) = content_fixture();
        let base = EventContent {
            position: 1,
            event_id: Uuid::nil(),
            stream_id: "s",
            stream_type: "t",
            version: 1,
            occurred_at: DateTime::from_timestamp(0, 0).unwrap(),
            event_type: "E",
            event_version: "1",
            payload: &payload,
            metadata: &metadata,
            key_id: None,
        };
        let empty = EventContent {
            key_id: Some(""),
            ..base
        };
        assert_ne!(
            base.canonical_bytes().unwrap(),
            empty.canonical_bytes().unwrap()
        );
    }
}
