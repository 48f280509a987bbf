//! The relay: carries committed events from the PostgreSQL log to NATS JetStream, in position
//! order, each exactly once in the stream.
//!
//! The relay reads the log by position, as stored with personal fields sealed
//! ([`EventReader::read_all_sealed`]), publishes every event to the
//! stream [`EVENTS_STREAM`] under `onbehalf.v1.<stream type>.<aggregate id>.<event type>`, waits
//! for the broker's acknowledgement of each publish before the next, and advances a checkpoint of
//! its own (`relay_checkpoint`) only past acknowledged events. Every message carries the event id
//! as `Nats-Msg-Id` and the position in [`POSITION_HEADER`]; its payload is a [`RelayedEvent`].
//!
//! Guarantees:
//!
//! - **Order.** Exactly one publish is in flight at a time, and the next event is sent only once
//!   the broker has acknowledged the previous one, so the stream holds events in position order.
//!   A publish that fails is retried, with the same `Nats-Msg-Id`, before anything later is sent.
//! - **Nothing lost.** The checkpoint is never ahead of what the broker acknowledged; a relay that
//!   starts (or takes over) resumes after `max(checkpoint, last position in the stream)`.
//! - **Nothing duplicated** while the broker's duplicate window covers a re-publish: every
//!   re-publish reuses the event id as `Nats-Msg-Id` and the broker drops it.
//! - **One active relay per name** however many run: see the lease below.
//!
//! # The lease
//!
//! A relay is active only while it holds a PostgreSQL session-level advisory lock, taken with
//! `pg_try_advisory_lock` on a dedicated connection; standbys try again every second
//! ([`RelayConfig::lease_retry`]). PostgreSQL releases the lock when that session ends, so when
//! the active relay dies its connection closes and a standby takes over within about a second.
//!
//! Why this is safe, including when the lock holder is cut off from PostgreSQL but can still
//! reach the broker:
//!
//! - The checkpoint is written only through the lease session. A relay whose session is gone can
//!   no longer move the checkpoint, so the checkpoint a successor reads is never ahead of what
//!   some holder had acknowledged.
//! - The relay publishes only while its last confirmed round trip on the lease session is less
//!   than [`LEASE_FRESHNESS`] old; otherwise it first checks the session, and stops publishing
//!   as soon as that check fails or takes longer than [`DB_CALL_TIMEOUT`]. A cut-off holder thus
//!   stops within a few seconds of losing PostgreSQL.
//! - PostgreSQL ends the cut-off holder's session (and so frees the lock) only after the
//!   server-side TCP keepalives set on the lease session fail, about ten seconds, or after
//!   `idle_session_timeout` when the holder is frozen. Until then no successor can start.
//! - Should both still overlap, both publish the same events in the same order with the same
//!   `Nats-Msg-Id`s; the broker stores whichever copy comes first and drops the other as a
//!   duplicate, because the overlap is seconds and the duplicate window minutes. Each relay
//!   sends `n + 1` only after `n` was acknowledged, so some copy of `n` is stored before any copy
//!   of `n + 1`: the stream stays in position order.
//!
//! # The broker's traps
//!
//! - *The duplicate window is finite.* A relay that re-published events acknowledged longer ago
//!   than the window would store them twice. The checkpoint is advanced after every batch and
//!   before every back-off, and a starting relay resumes after the last position already in the
//!   stream, so an ordinary restart re-publishes nothing. Consumers must still de-duplicate by
//!   position, which they do anyway because they checkpoint by position.
//! - *A publish may time out yet have been stored.* The relay re-publishes the same event with
//!   the same `Nats-Msg-Id`, and the broker answers with a duplicate acknowledgement.
//! - *The broker may be down.* The relay retries with capped exponential back-off and jitter,
//!   logs one `warn` per outage, and keeps its checkpoint. Commands keep committing meanwhile:
//!   the API never talks to NATS.
//! - *The broker restarts.* It rebuilds its duplicate tracking from the stored messages, so a
//!   re-publish after a broker restart is still dropped within the window.
//! - *An acknowledgement is not an fsync.* A single broker acknowledges before syncing to disk;
//!   production streams want three replicas (`replicas = 3` in the settings file).
//! - *Another stream may capture the subjects.* Every publish names the expected stream
//!   (`Nats-Expected-Stream`), so a misrouted publish is refused instead of stored elsewhere.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage, stream};
use chrono::{DateTime, Utc};
use onbehalf_events::subjects::{self, EVENTS_STREAM};
use onbehalf_events::{Metadata, StoredEvent};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::store::postgres::PostgresStore;
use crate::store::{EventReader, StoreError};

/// The header that carries an event's position in the log.
pub const POSITION_HEADER: &str = "Onbehalf-Position";

/// The relay name used when none is given; relays with the same name share one lease and one
/// checkpoint.
pub const DEFAULT_RELAY_NAME: &str = "default";

/// How old the last confirmed round trip on the lease session may be before the relay checks the
/// session again instead of publishing.
pub const LEASE_FRESHNESS: Duration = Duration::from_secs(1);

/// The longest the relay waits for one call on its lease session before it treats the lease as
/// lost.
pub const DB_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Server-side settings of the lease session, applied one by one after it connects.
///
/// The keepalives make PostgreSQL notice a holder cut off by the network after about
/// 5 + 2 × 3 = 11 seconds, instead of the system default of hours. `idle_session_timeout`
/// (PostgreSQL 14 and later) ends the session of a holder that stays silent, e.g. a frozen
/// process whose kernel still answers keepalives; an active relay talks to its session at least
/// every [`LEASE_FRESHNESS`] while it works and every poll interval while idle.
const LEASE_SESSION_SETTINGS: &[&str] = &[
    "SET tcp_keepalives_idle = 5",
    "SET tcp_keepalives_interval = 2",
    "SET tcp_keepalives_count = 3",
    "SET idle_session_timeout = '30s'",
    "SET application_name = 'onbehalf-relay'",
];

/// The key of the transaction-scoped advisory lock that serialises the relay's migration.
const RELAY_SCHEMA_LOCK_KEY: i64 = 0x6f62_7265_6c61_7931; // "obrelay1"

/// The relay's own table, created at start if missing.
const RELAY_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS relay_checkpoint (
    name       text        PRIMARY KEY,
    position   bigint      NOT NULL CHECK (position >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
)";

// ---------------------------------------------------------------------------------------------
// The message
// ---------------------------------------------------------------------------------------------

/// The payload of every relayed message: one committed event exactly as the log holds it, as
/// JSON.
///
/// Field names are those of [`StoredEvent`], so `serde_json::from_slice::<StoredEvent>` reads the
/// payload too; `key_id` and `hash` are left out when absent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelayedEvent {
    /// Global, gap-free position in the log; also in the [`POSITION_HEADER`] header.
    pub position: u64,
    /// The event's id; also the message's `Nats-Msg-Id`.
    pub event_id: Uuid,
    /// The stream the event belongs to, e.g. `account-<uuid>`.
    pub stream_id: String,
    /// The aggregate type of the stream, e.g. `client_account`.
    pub stream_type: String,
    /// The event's version within its stream.
    pub version: u64,
    /// When the event was committed.
    pub occurred_at: DateTime<Utc>,
    /// The event's type name.
    pub event_type: String,
    /// The schema version of the payload.
    pub event_version: String,
    /// The payload as stored.
    pub payload: serde_json::Value,
    /// Who and for whom.
    pub metadata: Metadata,
    /// Id of the key that encrypts the payload's personal fields, when it is encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The event's link of the log's hash chain, when the store has computed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

impl RelayedEvent {
    /// The message payload: compact JSON.
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Reads a message payload written by [`RelayedEvent::encode`].
    pub fn decode(bytes: &[u8]) -> Result<RelayedEvent, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl From<&StoredEvent> for RelayedEvent {
    fn from(event: &StoredEvent) -> Self {
        RelayedEvent {
            position: event.position,
            event_id: event.event_id,
            stream_id: event.stream_id.clone(),
            stream_type: event.stream_type.clone(),
            version: event.version,
            occurred_at: event.occurred_at,
            event_type: event.event_type.clone(),
            event_version: event.event_version.clone(),
            payload: event.payload.clone(),
            metadata: event.metadata.clone(),
            key_id: event.key_id.clone(),
            hash: event.hash.clone(),
        }
    }
}

impl From<RelayedEvent> for StoredEvent {
    fn from(event: RelayedEvent) -> Self {
        StoredEvent {
            event_id: event.event_id,
            position: event.position,
            stream_id: event.stream_id,
            stream_type: event.stream_type,
            version: event.version,
            occurred_at: event.occurred_at,
            event_type: event.event_type,
            event_version: event.event_version,
            payload: event.payload,
            metadata: event.metadata,
            key_id: event.key_id,
            hash: event.hash,
        }
    }
}

/// The aggregate id of a stream: the part of the stream id after its type prefix (`account-`,
/// `user-`), or the whole id for a stream without one (`catalog`).
pub fn aggregate_id(stream_id: &str) -> &str {
    stream_id
        .split_once('-')
        .map_or(stream_id, |(_, rest)| rest)
}

/// The subject an event is published under:
/// `onbehalf.v1.<stream type>.<aggregate id>.<event type>`.
///
/// Each part is made a valid subject token: `.`, `*`, `>`, whitespace and control characters
/// become `_`, and an empty part becomes `_`. The log's own names never contain them; the
/// envelope always carries the exact values.
pub fn subject_for(event: &StoredEvent) -> String {
    subjects::event_subject(
        &subject_token(&event.stream_type),
        &subject_token(aggregate_id(&event.stream_id)),
        &subject_token(&event.event_type),
    )
}

fn subject_token(raw: &str) -> String {
    if raw.is_empty() {
        return "_".to_owned();
    }
    raw.chars()
        .map(|c| match c {
            '.' | '*' | '>' => '_',
            c if c.is_whitespace() || c.is_control() => '_',
            c => c,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The stream's settings
// ---------------------------------------------------------------------------------------------

/// How long the broker remembers message ids to drop re-publishes, unless overridden.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How the broker discards old messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    /// Keep messages until a limit (here: the maximum age) is reached. The built-in setting.
    Limits,
    /// Keep messages while some consumer has not acknowledged them.
    Interest,
    /// Remove each message once one consumer acknowledged it.
    #[serde(rename = "workqueue")]
    WorkQueue,
}

impl From<Retention> for stream::RetentionPolicy {
    fn from(retention: Retention) -> Self {
        match retention {
            Retention::Limits => stream::RetentionPolicy::Limits,
            Retention::Interest => stream::RetentionPolicy::Interest,
            Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
        }
    }
}

/// The JetStream stream the relay creates or updates at start.
///
/// [`StreamSettings::builtin`] is the definition built into the binary; the same definition is
/// kept in `deploy/nats/onbehalf-events.json` for operators, and a test checks the two agree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSettings {
    /// The stream's name; [`EVENTS_STREAM`] for the built-in settings.
    pub name: String,
    /// The subjects the stream captures; `onbehalf.v1.>` for the built-in settings.
    pub subjects: Vec<String>,
    /// How old messages are discarded.
    pub retention: Retention,
    /// How many servers keep each message (1 to 5).
    pub replicas: usize,
    /// How long the broker drops a message whose `Nats-Msg-Id` it has already stored.
    pub duplicate_window: Duration,
    /// How long messages are kept; zero keeps them until another limit applies.
    pub max_age: Duration,
}

impl StreamSettings {
    /// The built-in stream: `ONBEHALF_EVENTS` on `onbehalf.v1.>`, file storage, limits retention,
    /// a two-minute duplicate window, one replica, no age limit.
    pub fn builtin() -> StreamSettings {
        StreamSettings {
            name: EVENTS_STREAM.to_owned(),
            subjects: vec![format!("{}.>", subjects::SUBJECT_PREFIX)],
            retention: Retention::Limits,
            replicas: 1,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            max_age: Duration::ZERO,
        }
    }

    /// The built-in settings with `file`'s overrides applied; see [`StreamOverrides::load`].
    pub fn from_file(path: &Path) -> Result<StreamSettings, StreamConfigError> {
        StreamSettings::builtin().with_overrides(StreamOverrides::load(path)?)
    }

    /// These settings with every field `overrides` names replaced, checked together.
    pub fn with_overrides(
        mut self,
        overrides: StreamOverrides,
    ) -> Result<StreamSettings, StreamConfigError> {
        if let Some(retention) = overrides.retention {
            self.retention = retention;
        }
        if let Some(replicas) = overrides.replicas {
            self.replicas = replicas;
        }
        if let Some(window) = overrides.duplicate_window {
            self.duplicate_window = parse_duration("duplicate_window", &window)?;
        }
        if let Some(max_age) = overrides.max_age {
            self.max_age = parse_duration("max_age", &max_age)?;
        }
        self.check()?;
        Ok(self)
    }

    /// Refuses what the broker would refuse, with the field named.
    pub fn check(&self) -> Result<(), StreamConfigError> {
        if !(1..=5).contains(&self.replicas) {
            return Err(StreamConfigError::Invalid {
                field: "replicas",
                reason: format!("must be between 1 and 5, not {}", self.replicas),
            });
        }
        if self.duplicate_window.is_zero() {
            return Err(StreamConfigError::Invalid {
                field: "duplicate_window",
                reason: "must be longer than zero: it is what drops re-published events".into(),
            });
        }
        // The broker keeps both as signed 64-bit nanoseconds; a longer one would wrap around.
        for (field, duration) in [
            ("duplicate_window", self.duplicate_window),
            ("max_age", self.max_age),
        ] {
            if duration.as_nanos() > MAX_BROKER_NANOS {
                return Err(StreamConfigError::Invalid {
                    field,
                    reason: "must be at most 106751d (the broker's limit)".into(),
                });
            }
        }
        if !self.max_age.is_zero() && self.duplicate_window > self.max_age {
            return Err(StreamConfigError::Invalid {
                field: "duplicate_window",
                reason: "must not be longer than max_age".into(),
            });
        }
        Ok(())
    }

    /// The JetStream stream definition, in the form the broker's API and `nats stream add
    /// --config` take. Unlimited counts are written as `-1`, as the broker reports them back.
    pub fn to_config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            retention: self.retention.into(),
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            max_age: self.max_age,
            discard: stream::DiscardPolicy::Old,
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: -1,
            max_message_size: -1,
            max_consumers: -1,
            ..Default::default()
        }
    }
}

/// The stream settings an operator may change, read from a TOML or JSON file.
///
/// Every field is optional; a missing one keeps the built-in value. Durations are written as a
/// whole number with a unit: `500ms`, `90s`, `2m`, `12h`, `30d`, or `0`.
///
/// ```toml
/// retention = "limits"      # limits | interest | workqueue
/// replicas = 3
/// duplicate_window = "5m"
/// max_age = "30d"
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOverrides {
    /// How old messages are discarded.
    pub retention: Option<Retention>,
    /// How many servers keep each message.
    pub replicas: Option<usize>,
    /// How long the broker drops re-published message ids.
    pub duplicate_window: Option<String>,
    /// How long messages are kept; `0` for no age limit.
    pub max_age: Option<String>,
}

impl StreamOverrides {
    /// Reads `path`: JSON if its name ends in `.json`, TOML if it ends in `.toml`.
    ///
    /// Unknown keys are refused, so a misspelt setting is an error rather than silently ignored.
    pub fn load(path: &Path) -> Result<StreamOverrides, StreamConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| StreamConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => StreamOverrides::from_json(&text),
            Some("toml") => StreamOverrides::from_toml(&text),
            _ => Err(StreamConfigError::UnknownFormat(path.to_owned())),
        }
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<StreamOverrides, StreamConfigError> {
        toml::from_str(text).map_err(|e| StreamConfigError::Toml(Box::new(e)))
    }

    /// Parses JSON text.
    pub fn from_json(text: &str) -> Result<StreamOverrides, StreamConfigError> {
        serde_json::from_str(text).map_err(StreamConfigError::Json)
    }
}

/// Parses `500ms`, `90s`, `2m`, `12h`, `30d` or `0`.
/// The longest duration JetStream stores: `i64::MAX` nanoseconds, about 292 years.
const MAX_BROKER_NANOS: u128 = i64::MAX as u128;

fn parse_duration(field: &'static str, raw: &str) -> Result<Duration, StreamConfigError> {
    let invalid = || StreamConfigError::Invalid {
        field,
        reason: format!("`{raw}` is not a duration such as 500ms, 90s, 2m, 12h, 30d or 0"),
    };
    let raw = raw.trim();
    if raw == "0" {
        return Ok(Duration::ZERO);
    }
    let split = raw
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (digits, unit) = raw.split_at(split);
    let n: u64 = digits.parse().map_err(|_| invalid())?;
    let seconds_per_unit = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(invalid()),
    };
    n.checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(invalid)
}

/// Why stream settings could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamConfigError {
    /// The file could not be read.
    #[error("cannot read stream settings {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file's name ends in neither `.json` nor `.toml`.
    #[error("stream settings {0} must be a .toml or .json file")]
    UnknownFormat(PathBuf),
    /// The TOML is malformed or has an unknown key.
    #[error("stream settings: {0}")]
    Toml(#[source] Box<toml::de::Error>),
    /// The JSON is malformed or has an unknown key.
    #[error("stream settings: {0}")]
    Json(#[source] serde_json::Error),
    /// A value is out of range.
    #[error("stream setting {field} {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Publishing
// ---------------------------------------------------------------------------------------------

/// Publishes committed events to one JetStream stream, each with its event id as `Nats-Msg-Id`,
/// its position in [`POSITION_HEADER`] and the stream named in `Nats-Expected-Stream`.
#[derive(Clone, Debug)]
pub struct EventPublisher {
    jetstream: jetstream::Context,
    stream: String,
}

/// The broker's acknowledgement of one publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishOutcome {
    /// The message's sequence number in the stream.
    pub sequence: u64,
    /// Whether the broker had already stored a message with this `Nats-Msg-Id` within its
    /// duplicate window and dropped this one.
    pub duplicate: bool,
}

/// The last message of the stream, as [`EventPublisher::tail`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamTail {
    /// Its sequence number in the stream.
    pub sequence: u64,
    /// Its [`POSITION_HEADER`], when present and a number.
    pub position: Option<u64>,
    /// Its `Nats-Msg-Id`, when present.
    pub message_id: Option<String>,
}

/// Why a publish was not acknowledged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishFailure {
    /// The envelope could not be encoded. Permanent.
    #[error("cannot encode the event at position {position}: {source}")]
    Encode {
        /// The event's position.
        position: u64,
        /// Why.
        source: serde_json::Error,
    },
    /// The message is larger than the broker's `max_payload`. Permanent until the broker's
    /// limit is raised.
    #[error("the event at position {position} is larger than the broker accepts: {source}")]
    TooLarge {
        /// The event's position.
        position: u64,
        /// The client's error.
        source: jetstream::context::PublishError,
    },
    /// No stream captures the subject (no responders): the stream is missing.
    #[error("no stream captures the subject of position {position}: {source}")]
    StreamNotFound {
        /// The event's position.
        position: u64,
        /// The client's error.
        source: jetstream::context::PublishError,
    },
    /// No acknowledgement came in time; the broker may still have stored the message.
    #[error("no acknowledgement for position {position} in time: {source}")]
    TimedOut {
        /// The event's position.
        position: u64,
        /// The client's error.
        source: jetstream::context::PublishError,
    },
    /// The broker refused the message or could not be reached.
    #[error("publishing position {position} failed: {source}")]
    Broker {
        /// The event's position.
        position: u64,
        /// The client's error.
        source: jetstream::context::PublishError,
    },
}

impl PublishFailure {
    /// Whether publishing the same event again may succeed. Safe to do: the broker drops a
    /// re-publish of a stored event by its `Nats-Msg-Id`.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            PublishFailure::Encode { .. } | PublishFailure::TooLarge { .. }
        )
    }
}

/// Why the stream could not be made ready.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamSetupError {
    /// The broker refused the definition (an invalid value, a change it does not allow such as
    /// the retention of an existing stream, subjects that overlap another stream). Permanent.
    #[error("the broker refused the stream definition of {stream}: {source}")]
    Refused {
        /// The stream.
        stream: String,
        /// The broker's answer.
        source: jetstream::context::CreateStreamError,
    },
    /// The broker or its JetStream could not be reached, or did not answer in time.
    #[error("cannot reach JetStream to set up {stream}: {source}")]
    Unreachable {
        /// The stream.
        stream: String,
        /// The client's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StreamSetupError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StreamSetupError::Unreachable { .. })
    }
}

impl EventPublisher {
    /// A publisher on `client` for the stream `stream`; a publish that gets no acknowledgement
    /// within `ack_timeout` fails with [`PublishFailure::TimedOut`].
    pub fn new(client: async_nats::Client, stream: &str, ack_timeout: Duration) -> EventPublisher {
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(ack_timeout)
            .build(client);
        EventPublisher {
            jetstream,
            stream: stream.to_owned(),
        }
    }

    /// The JetStream context, for reading the stream back.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// Creates the stream, or updates it to `settings` if it exists.
    ///
    /// The settings are authoritative: a change made to the stream by hand is reverted at the
    /// next start, so changes belong in the `--nats-stream-config` file.
    pub async fn ensure_stream(
        &self,
        settings: &StreamSettings,
    ) -> Result<stream::Info, StreamSetupError> {
        use jetstream::context::CreateStreamErrorKind as Kind;
        let mut raced = false;
        let created = loop {
            let created = self
                .jetstream
                .create_or_update_stream(settings.to_config())
                .await;
            // Another relay can create the stream between this one's update, which found none,
            // and its create, which the server then refuses as a name in use or (checked first)
            // as subjects overlapping the stream just made. Updating it now finds it; a stream
            // of another name that truly overlaps is refused again.
            let lost_the_create = matches!(
                created.as_ref().map_err(|e| e.kind()),
                Err(Kind::JetStream(e)) if e.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST
                    || e.error_code() == jetstream::ErrorCode::STREAM_SUBJECT_OVERLAP
            );
            if raced || !lost_the_create {
                break created;
            }
            raced = true;
        };
        created.map_err(|err| match err.kind() {
            Kind::JetStream(_) | Kind::EmptyStreamName | Kind::InvalidStreamName => {
                StreamSetupError::Refused {
                    stream: settings.name.clone(),
                    source: err,
                }
            }
            _ => StreamSetupError::Unreachable {
                stream: settings.name.clone(),
                source: Box::new(err),
            },
        })
    }

    /// The last message in the stream, `None` when the stream is empty or its last message was
    /// removed.
    pub async fn tail(&self) -> Result<Option<StreamTail>, StreamSetupError> {
        let unreachable =
            |source: Box<dyn std::error::Error + Send + Sync>| StreamSetupError::Unreachable {
                stream: self.stream.clone(),
                source,
            };
        let stream = self
            .jetstream
            .get_stream_no_info(&self.stream)
            .await
            .map_err(|e| unreachable(Box::new(e)))?;
        let info = stream
            .get_info()
            .await
            .map_err(|e| unreachable(Box::new(e)))?;
        if info.state.messages == 0 {
            return Ok(None);
        }
        // Under interest or work-queue retention consumers remove messages, the last one too;
        // the relay then has only its checkpoint to go by.
        let last = match stream.get_raw_message(info.state.last_sequence).await {
            Ok(last) => last,
            Err(err) if matches!(err.kind(), stream::RawMessageErrorKind::NoMessageFound) => {
                return Ok(None)
            }
            Err(err) => return Err(unreachable(Box::new(err))),
        };
        Ok(Some(StreamTail {
            sequence: last.sequence,
            position: last
                .headers
                .get(POSITION_HEADER)
                .and_then(|v| v.as_str().parse().ok()),
            message_id: last
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_owned()),
        }))
    }

    /// Publishes `event` and waits for the broker's acknowledgement.
    ///
    /// Publishing the same event again is harmless within the stream's duplicate window: the
    /// broker recognises the `Nats-Msg-Id` and answers with `duplicate: true`.
    pub async fn publish(&self, event: &StoredEvent) -> Result<PublishOutcome, PublishFailure> {
        use jetstream::context::PublishErrorKind as Kind;
        let position = event.position;
        let payload = RelayedEvent::from(event)
            .encode()
            .map_err(|source| PublishFailure::Encode { position, source })?;
        let message = PublishMessage::build()
            .message_id(event.event_id.to_string())
            .expected_stream(&self.stream)
            .header(POSITION_HEADER, position.to_string())
            .payload(payload.into());
        let classify = |source: jetstream::context::PublishError| match source.kind() {
            Kind::MaxPayloadExceeded => PublishFailure::TooLarge { position, source },
            Kind::StreamNotFound => PublishFailure::StreamNotFound { position, source },
            Kind::TimedOut => PublishFailure::TimedOut { position, source },
            _ => PublishFailure::Broker { position, source },
        };
        let ack = self
            .jetstream
            .send_publish(subject_for(event), message)
            .await
            .map_err(classify)?
            .await
            .map_err(classify)?;
        Ok(PublishOutcome {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Back-off
// ---------------------------------------------------------------------------------------------

/// Capped exponential back-off with jitter between retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first pause's upper bound.
    pub initial: Duration,
    /// No pause is longer than this.
    pub max: Duration,
}

impl Default for Backoff {
    /// 100 ms doubling up to 5 s.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The pause before retry number `attempt` (0 for the first retry): a bound of
    /// `initial × 2^attempt`, capped at `max`, and a pause drawn uniformly from the upper half of
    /// that bound, so that relays and retries do not fall into step.
    pub fn delay(&self, attempt: u32) -> Duration {
        let bound = self
            .initial
            .saturating_mul(2u32.saturating_pow(attempt.min(31)))
            .min(self.max);
        let half = bound / 2;
        let jitter = rand::Rng::gen_range(&mut rand::thread_rng(), 0..=half.as_micros());
        half + Duration::from_micros(u64::try_from(jitter).unwrap_or(u64::MAX))
    }
}

/// One dependency's outage: logged once when it begins and once when it ends.
#[derive(Debug)]
struct Outage {
    what: &'static str,
    since: Option<Instant>,
    attempt: u32,
}

impl Outage {
    fn new(what: &'static str) -> Outage {
        Outage {
            what,
            since: None,
            attempt: 0,
        }
    }

    /// Records a failure and returns the pause before the next try; `true` with it when this
    /// failure began an outage.
    fn failed(
        &mut self,
        backoff: &Backoff,
        error: &(dyn std::fmt::Display + Sync),
    ) -> (Duration, bool) {
        let began = self.since.is_none();
        if began {
            self.since = Some(Instant::now());
            tracing::warn!(%error, "{} unreachable; retrying with back-off", self.what);
        } else {
            tracing::debug!(%error, attempt = self.attempt, "{} still unreachable", self.what);
        }
        let pause = backoff.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        (pause, began)
    }

    fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                after_ms = since.elapsed().as_millis() as u64,
                retries = self.attempt,
                "{} reachable again",
                self.what
            );
        }
        self.attempt = 0;
    }
}

// ---------------------------------------------------------------------------------------------
// The lease and the checkpoint
// ---------------------------------------------------------------------------------------------

/// Why the lease session cannot be used.
#[derive(Debug, thiserror::Error)]
enum LeaseError {
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL did not answer within {0:?}")]
    TimedOut(Duration),
    #[error("relay checkpoint {0} is out of range")]
    Corrupt(i64),
}

/// A connection whose session holds (or tries to take) the relay's advisory lock.
struct LeaseSession {
    client: tokio_postgres::Client,
    name: String,
    key: i64,
    held: bool,
    last_contact: Instant,
}

impl std::fmt::Debug for LeaseSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseSession")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("held", &self.held)
            .finish()
    }
}

/// The advisory lock key of relay `name`: the first 8 bytes of a SHA-256 of a fixed prefix and
/// the name, so that different names have different leases.
pub fn lease_key(name: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(b"onbehalf.relay.lease\0")
        .chain_update(name.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

async fn timed<T, E>(call: impl std::future::Future<Output = Result<T, E>>) -> Result<T, LeaseError>
where
    LeaseError: From<E>,
{
    match tokio::time::timeout(DB_CALL_TIMEOUT, call).await {
        Ok(result) => result.map_err(LeaseError::from),
        Err(_) => Err(LeaseError::TimedOut(DB_CALL_TIMEOUT)),
    }
}

impl LeaseSession {
    /// Opens a dedicated session, applies the lease settings and creates the relay's table.
    async fn open(config: &tokio_postgres::Config, name: &str) -> Result<LeaseSession, LeaseError> {
        let (client, connection) = timed(config.connect(tokio_postgres::NoTls)).await?;
        // The connection task ends when the client is dropped, which closes the session and so
        // releases the lock; an error on it reaches us through the client's next call.
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "relay lease connection ended");
            }
        });
        for setting in LEASE_SESSION_SETTINGS {
            match timed(client.batch_execute(setting)).await {
                Ok(()) => {}
                // An older server without the setting: the lease still works, a frozen holder
                // is just noticed later.
                Err(LeaseError::Postgres(err))
                    if err.code() == Some(&SqlState::UNDEFINED_OBJECT) =>
                {
                    tracing::debug!(setting, "PostgreSQL lacks a lease session setting");
                }
                Err(err) => return Err(err),
            }
        }
        timed(client.batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({RELAY_SCHEMA_LOCK_KEY}); {RELAY_SCHEMA}; COMMIT"
        )))
        .await?;
        Ok(LeaseSession {
            client,
            name: name.to_owned(),
            key: lease_key(name),
            held: false,
            last_contact: Instant::now(),
        })
    }

    /// Tries once to take the lock; `true` once this session holds it.
    async fn try_take(&mut self) -> Result<bool, LeaseError> {
        let row = timed(
            self.client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&self.key]),
        )
        .await?;
        self.held = row.try_get(0)?;
        self.last_contact = Instant::now();
        Ok(self.held)
    }

    /// Whether the last confirmed round trip is recent enough to keep publishing.
    fn is_fresh(&self) -> bool {
        self.last_contact.elapsed() < LEASE_FRESHNESS
    }

    /// A round trip on the session. A session-level lock lasts as long as its session, so a
    /// successful round trip proves the lock is still held.
    async fn confirm(&mut self) -> Result<(), LeaseError> {
        timed(self.client.batch_execute("SELECT 1")).await?;
        self.last_contact = Instant::now();
        Ok(())
    }

    /// The relay's checkpoint, created at 0 on first use.
    async fn checkpoint(&mut self) -> Result<u64, LeaseError> {
        timed(self.client.execute(
            "INSERT INTO relay_checkpoint (name, position) VALUES ($1, 0) \
             ON CONFLICT (name) DO NOTHING",
            &[&self.name],
        ))
        .await?;
        let row = timed(self.client.query_one(
            "SELECT position FROM relay_checkpoint WHERE name = $1",
            &[&self.name],
        ))
        .await?;
        self.last_contact = Instant::now();
        let position: i64 = row.try_get(0)?;
        u64::try_from(position).map_err(|_| LeaseError::Corrupt(position))
    }

    /// Moves the checkpoint forward to `position` (never backward).
    async fn save(&mut self, position: u64) -> Result<(), LeaseError> {
        let value = i64::try_from(position).map_err(|_| LeaseError::Corrupt(i64::MAX))?;
        timed(self.client.execute(
            "UPDATE relay_checkpoint SET position = $2, updated_at = now() \
             WHERE name = $1 AND position < $2",
            &[&self.name, &value],
        ))
        .await?;
        self.last_contact = Instant::now();
        Ok(())
    }

    /// Releases the lock and closes the session.
    async fn release(self) {
        if self.held {
            let _ = timed(
                self.client
                    .query_one("SELECT pg_advisory_unlock($1)", &[&self.key]),
            )
            .await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The relay
// ---------------------------------------------------------------------------------------------

/// Everything a relay needs to run.
#[derive(Clone)]
pub struct RelayConfig {
    /// Relays with the same name share one lease and one checkpoint: exactly one of them is
    /// active. Letters, digits, `_` and `-`, at most 64.
    pub name: String,
    /// The PostgreSQL log.
    pub database_url: String,
    /// The NATS server, e.g. `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// The stream to create or update at start and publish to.
    pub stream: StreamSettings,
    /// How many events are read from the log at a time; the checkpoint is saved after each batch.
    pub batch_size: usize,
    /// How long an idle active relay waits before reading the log again when no commit is
    /// announced meanwhile (appends announce theirs at commit, waking the relay at once).
    pub poll_interval: Duration,
    /// How often a standby tries to take the lease.
    pub lease_retry: Duration,
    /// How long a publish waits for its acknowledgement.
    pub ack_timeout: Duration,
    /// Pauses between retries while the broker or the log is unreachable.
    pub backoff: Backoff,
}

impl std::fmt::Debug for RelayConfig {
    // Both URLs may hold passwords.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("name", &self.name)
            .field("stream", &self.stream)
            .field("batch_size", &self.batch_size)
            .field("poll_interval", &self.poll_interval)
            .field("lease_retry", &self.lease_retry)
            .field("ack_timeout", &self.ack_timeout)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl RelayConfig {
    /// A relay named [`DEFAULT_RELAY_NAME`] with the built-in stream, batches of 256, polling
    /// every 200 ms, a standby retrying the lease every second, 5 s acknowledgement timeout and
    /// the default back-off.
    pub fn new(database_url: impl Into<String>, nats_url: impl Into<String>) -> RelayConfig {
        RelayConfig {
            name: DEFAULT_RELAY_NAME.to_owned(),
            database_url: database_url.into(),
            nats_url: nats_url.into(),
            stream: StreamSettings::builtin(),
            batch_size: 256,
            poll_interval: Duration::from_millis(200),
            lease_retry: Duration::from_secs(1),
            ack_timeout: Duration::from_secs(5),
            backoff: Backoff::default(),
        }
    }

    fn check(&self) -> Result<(), RelayError> {
        let valid_name = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_name {
            return Err(RelayError::InvalidName(self.name.clone()));
        }
        if self.batch_size == 0 {
            return Err(RelayError::InvalidBatchSize);
        }
        self.stream.check()?;
        Ok(())
    }
}

/// What a relay is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Connecting, or waiting to reach PostgreSQL.
    Starting,
    /// Another relay holds the lease; this one tries again every [`RelayConfig::lease_retry`].
    Standby,
    /// This relay holds the lease and publishes.
    Active,
    /// The relay has stopped.
    Stopped,
}

/// A relay's progress, as its handle reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayStatus {
    /// What the relay is doing.
    pub role: Role,
    /// The last position saved as the checkpoint by this relay (or read at takeover).
    pub checkpoint: u64,
    /// The last position the broker acknowledged to this relay (or found in the stream at
    /// takeover).
    pub acknowledged: u64,
    /// Whether an active relay has published everything the log held at its last read.
    pub caught_up: bool,
    /// Events this relay had stored by the broker (acknowledgements not marked duplicate).
    pub published: u64,
    /// Acknowledgements marked duplicate: re-publishes the broker dropped.
    pub duplicates: u64,
    /// Broker outages seen while active, each logged once at `warn`.
    pub broker_outages: u64,
    /// How often this relay took the lease.
    pub leases_taken: u64,
}

impl Default for RelayStatus {
    fn default() -> Self {
        RelayStatus {
            role: Role::Starting,
            checkpoint: 0,
            acknowledged: 0,
            caught_up: false,
            published: 0,
            duplicates: 0,
            broker_outages: 0,
            leases_taken: 0,
        }
    }
}

/// Why a relay stopped or could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The relay name is empty, too long or has characters other than letters, digits, `_`, `-`.
    #[error("relay name `{0}` must be 1 to 64 letters, digits, `_` or `-`")]
    InvalidName(String),
    /// The batch size is zero.
    #[error("the relay's batch size must be at least 1")]
    InvalidBatchSize,
    /// The stream settings are invalid.
    #[error(transparent)]
    StreamConfig(#[from] StreamConfigError),
    /// The database URL does not parse.
    #[error("invalid database URL: {0}")]
    DatabaseUrl(#[source] tokio_postgres::Error),
    /// The NATS URL does not parse.
    #[error("invalid NATS URL: {0}")]
    NatsUrl(#[source] async_nats::ConnectError),
    /// The log could not be opened or read back.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The log returned an event out of order; the relay stops rather than publish it.
    #[error("the log returned position {found} where {expected} was due")]
    Gap {
        /// The position due next.
        expected: u64,
        /// The position read.
        found: u64,
    },
    /// The stream's last message is not this log's event at the position it names.
    #[error(
        "stream {stream} does not hold this log's events (message {sequence}); \
         purge it or point the relay at the right database"
    )]
    ForeignStream {
        /// The stream.
        stream: String,
        /// The sequence of the message that does not match.
        sequence: u64,
    },
    /// The relay's checkpoint is unreadable.
    #[error("relay checkpoint is unreadable: {0}")]
    Checkpoint(String),
    /// The broker refused the stream definition.
    #[error(transparent)]
    Stream(StreamSetupError),
    /// An event can never be published.
    #[error(transparent)]
    Publish(PublishFailure),
    /// The relay's task ended abnormally.
    #[error("the relay task ended abnormally: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running relay.
#[derive(Debug)]
pub struct RelayHandle {
    status: watch::Receiver<RelayStatus>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), RelayError>>,
}

impl RelayHandle {
    /// The relay's latest status.
    pub fn status(&self) -> RelayStatus {
        self.status.borrow().clone()
    }

    /// Waits until the status satisfies `condition`, at most `timeout`; the status then, or
    /// `Err` with the last status seen.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        condition: impl FnMut(&RelayStatus) -> bool,
    ) -> Result<RelayStatus, RelayStatus> {
        let reached = tokio::time::timeout(timeout, self.status.wait_for(condition))
            .await
            .map(|seen| seen.map(|status| status.clone()));
        match reached {
            Ok(Ok(status)) => Ok(status),
            _ => Err(self.status()),
        }
    }

    /// Stops the relay after the publish in flight, saves its checkpoint and releases its lease.
    pub async fn shutdown(self) -> Result<(), RelayError> {
        let _ = self.stop.send(true);
        self.task.await?
    }

    /// Ends the relay at once, as if its process died: its lease session closes, and a standby
    /// takes over from the checkpoint.
    pub fn abort(self) {
        self.task.abort();
    }
}

/// Opens the log at `config.database_url` (running its migrations) and starts a relay on it.
///
/// The relay runs until [`RelayHandle::shutdown`], [`RelayHandle::abort`] or a permanent error
/// (the handle's task then ends with it). PostgreSQL must answer while the log is opened here,
/// which fails with [`RelayError::Store`] otherwise; after that, neither PostgreSQL nor NATS
/// being unreachable is an error: the relay waits for them, retrying.
pub async fn spawn(config: RelayConfig) -> Result<RelayHandle, RelayError> {
    config.check()?;
    let store = PostgresStore::connect(&config.database_url).await?;
    spawn_on(store, config)
}

/// Starts a relay on an open log; see [`spawn`].
pub fn spawn_on(store: PostgresStore, config: RelayConfig) -> Result<RelayHandle, RelayError> {
    config.check()?;
    let mut db_config: tokio_postgres::Config = config
        .database_url
        .parse()
        .map_err(RelayError::DatabaseUrl)?;
    db_config.connect_timeout(DB_CALL_TIMEOUT);
    // Client-side keepalives notice a vanished server; the server-side ones are set per session.
    db_config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(11));

    let (status_tx, status_rx) = watch::channel(RelayStatus::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (head_tx, head) = watch::channel(0);
    // The follower ends with the relay, which holds the only receiver of `head`.
    let follower = tokio::spawn(store.clone().keep_following_appends(head_tx));
    let relay = Relay {
        store,
        db_config,
        config,
        status: status_tx,
        stop: stop_rx,
        head,
    };
    let task = tokio::spawn(async move {
        let result = relay.run().await;
        follower.abort();
        result
    });
    Ok(RelayHandle {
        status: status_rx,
        stop: stop_tx,
        task,
    })
}

/// How an active period ended.
enum Exit {
    /// The lease session failed; the relay no longer knows that it holds the lease.
    LeaseLost(LeaseError),
    /// The log could not be read while taking over; the relay gives the lease up and tries
    /// again.
    Interrupted(StoreError),
    /// Told to stop.
    Stopped,
}

struct Relay {
    store: PostgresStore,
    db_config: tokio_postgres::Config,
    config: RelayConfig,
    status: watch::Sender<RelayStatus>,
    stop: watch::Receiver<bool>,
    /// The log's head as the commits of appends announce it ([`follow_appends`]).
    head: watch::Receiver<u64>,
}

impl Relay {
    async fn run(mut self) -> Result<(), RelayError> {
        let span = tracing::info_span!("relay", name = %self.config.name);
        let result = tracing::Instrument::instrument(self.run_inner(), span).await;
        self.status.send_modify(|s| s.role = Role::Stopped);
        if let Err(err) = &result {
            tracing::error!(error = %err, "relay stopped");
        }
        result
    }

    async fn run_inner(&mut self) -> Result<(), RelayError> {
        // The client reconnects by itself, forever; `retry_on_initial_connect` lets the relay
        // start while the broker is down.
        let client = async_nats::ConnectOptions::new()
            .name(format!("onbehalf-relay-{}", self.config.name))
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .connect(self.config.nats_url.as_str())
            .await
            .map_err(RelayError::NatsUrl)?;
        let publisher =
            EventPublisher::new(client, &self.config.stream.name, self.config.ack_timeout);

        let mut postgres = Outage::new("PostgreSQL");
        let mut session: Option<LeaseSession> = None;
        let mut announced_standby = false;
        loop {
            if self.stopping() {
                return Ok(());
            }
            let current = match session.take() {
                Some(current) => Ok(current),
                None => LeaseSession::open(&self.db_config, &self.config.name).await,
            };
            let mut current = match current {
                Ok(current) => current,
                Err(err) => {
                    let (pause, _) = postgres.failed(&self.config.backoff, &err);
                    self.set_role(Role::Starting);
                    if self.pause(pause.max(self.config.lease_retry)).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            match current.try_take().await {
                Ok(true) => {}
                Ok(false) => {
                    postgres.recovered();
                    if !announced_standby {
                        tracing::info!("another relay holds the lease; standing by");
                        announced_standby = true;
                    }
                    self.set_role(Role::Standby);
                    session = Some(current);
                    if self.pause(self.config.lease_retry).await {
                        return Ok(());
                    }
                    continue;
                }
                Err(err) => {
                    postgres.failed(&self.config.backoff, &err);
                    if self.pause(self.config.lease_retry).await {
                        return Ok(());
                    }
                    continue;
                }
            }
            postgres.recovered();
            announced_standby = false;
            match self.lead(&publisher, &mut current).await? {
                Exit::Stopped => {
                    current.release().await;
                    tracing::info!("lease released");
                    return Ok(());
                }
                Exit::Interrupted(err) => {
                    tracing::warn!(error = %err, "cannot read the log; giving the lease up");
                    self.status.send_modify(|s| {
                        s.role = Role::Starting;
                        s.caught_up = false;
                    });
                    drop(current);
                    if self.pause(self.config.lease_retry).await {
                        return Ok(());
                    }
                }
                Exit::LeaseLost(err) => {
                    tracing::warn!(error = %err, "lease lost; stopped publishing");
                    self.status.send_modify(|s| {
                        s.role = Role::Starting;
                        s.caught_up = false;
                    });
                    // Dropping the session closes it, which frees the lock if the server still
                    // has it.
                    drop(current);
                }
            }
        }
    }

    /// The active period: publishes from the checkpoint until the lease is lost or the relay is
    /// told to stop.
    async fn lead(
        &mut self,
        publisher: &EventPublisher,
        lease: &mut LeaseSession,
    ) -> Result<Exit, RelayError> {
        let checkpoint = match lease.checkpoint().await {
            Ok(checkpoint) => checkpoint,
            Err(LeaseError::Corrupt(value)) => {
                return Err(RelayError::Checkpoint(format!("position {value}")))
            }
            Err(err) => return Ok(Exit::LeaseLost(err)),
        };
        tracing::info!(checkpoint, "lease taken");
        self.status.send_modify(|s| {
            s.role = Role::Active;
            s.checkpoint = checkpoint;
            s.acknowledged = checkpoint;
            s.caught_up = false;
            s.leases_taken += 1;
        });

        let mut broker = Outage::new("NATS");
        let tail = loop {
            match self.prepare_stream(publisher).await {
                Ok(tail) => {
                    broker.recovered();
                    break tail;
                }
                Err(err) if err.is_retryable() => {
                    if let Some(exit) = self.wait_out(&mut broker, &err, lease, checkpoint).await {
                        return Ok(exit);
                    }
                }
                Err(err) => return Err(RelayError::Stream(err)),
            }
        };

        // The stream may already hold events past the checkpoint: those a predecessor had
        // acknowledged but not yet checkpointed. Positions are published in order, so every
        // position up to the stream's last one is stored, and resuming after it re-publishes
        // nothing, however long ago it was acknowledged.
        let mut acknowledged = checkpoint;
        if let Some(tail) = tail {
            let last = match self.check_tail(&tail).await {
                Ok(last) => last,
                Err(RelayError::Store(err)) if !matches!(err, StoreError::Corrupt(_)) => {
                    return Ok(Exit::Interrupted(err))
                }
                Err(err) => return Err(err),
            };
            if last > checkpoint {
                acknowledged = last;
                if let Err(err) = lease.save(acknowledged).await {
                    return Ok(Exit::LeaseLost(err));
                }
                tracing::info!(
                    checkpoint,
                    stream_position = last,
                    "the stream is ahead of the checkpoint; resuming after the stream"
                );
            }
        }
        let mut saved = acknowledged;
        self.status.send_modify(|s| {
            s.checkpoint = saved;
            s.acknowledged = acknowledged;
        });

        let mut log = Outage::new("PostgreSQL log");
        let mut caught_up = false;
        loop {
            if self.stopping() {
                if saved < acknowledged && lease.save(acknowledged).await.is_ok() {
                    self.set_checkpoint(acknowledged);
                }
                return Ok(Exit::Stopped);
            }
            // The head announced before this read: a commit announced after it wakes the wait
            // below, one announced before it is found by it.
            let announced = *self.head.borrow_and_update();
            // Events leave the store sealed, exactly as the chain covers them: the broker never
            // holds a personal field in the clear, and an erasure reaches its copies too.
            let events = match self
                .store
                .read_all_sealed(acknowledged, self.config.batch_size)
                .await
            {
                Ok(events) => {
                    log.recovered();
                    events
                }
                Err(StoreError::Corrupt(detail)) => return Err(StoreError::Corrupt(detail).into()),
                Err(err) => {
                    let (pause, _) = log.failed(&self.config.backoff, &err);
                    if self.pause(pause).await {
                        continue;
                    }
                    if let Err(err) = lease.confirm().await {
                        return Ok(Exit::LeaseLost(err));
                    }
                    continue;
                }
            };

            if events.is_empty() {
                if !caught_up {
                    caught_up = true;
                    tracing::info!(position = acknowledged, "caught up");
                    self.status.send_modify(|s| s.caught_up = true);
                }
                if !lease.is_fresh() {
                    if let Err(err) = lease.confirm().await {
                        return Ok(Exit::LeaseLost(err));
                    }
                }
                self.wait_for_appends(acknowledged.max(announced)).await;
                continue;
            }
            if caught_up {
                caught_up = false;
                self.status.send_modify(|s| s.caught_up = false);
            }

            for event in &events {
                let expected = acknowledged + 1;
                if event.position != expected {
                    return Err(RelayError::Gap {
                        expected,
                        found: event.position,
                    });
                }
                // LIMITATION: one publish is in flight at a time, so throughput is one broker round
                // trip per event; pipelining would let a later event be stored before a failed
                // earlier one is retried, breaking position order in the stream.
                loop {
                    if !lease.is_fresh() {
                        if let Err(err) = lease.confirm().await {
                            return Ok(Exit::LeaseLost(err));
                        }
                    }
                    match publisher.publish(event).await {
                        // LIMITATION: JetStream acknowledges once the message is in its files,
                        // not synced to disk (its `sync_interval`); a broker host crash can lose
                        // acknowledged events behind the checkpoint, which replicas guard against.
                        Ok(outcome) => {
                            broker.recovered();
                            self.status.send_modify(|s| {
                                s.acknowledged = event.position;
                                if outcome.duplicate {
                                    s.duplicates += 1;
                                } else {
                                    s.published += 1;
                                }
                            });
                            break;
                        }
                        Err(err) if err.is_retryable() => {
                            // A stream deleted by hand: put it back before trying again.
                            let missing = matches!(err, PublishFailure::StreamNotFound { .. });
                            if saved < acknowledged {
                                if let Err(err) = lease.save(acknowledged).await {
                                    return Ok(Exit::LeaseLost(err));
                                }
                                saved = acknowledged;
                                self.set_checkpoint(saved);
                            }
                            if let Some(exit) = self.wait_out(&mut broker, &err, lease, saved).await
                            {
                                return Ok(exit);
                            }
                            if missing {
                                if let Err(err) = publisher.ensure_stream(&self.config.stream).await
                                {
                                    if !err.is_retryable() {
                                        return Err(RelayError::Stream(err));
                                    }
                                }
                            }
                        }
                        Err(err) => return Err(RelayError::Publish(err)),
                    }
                }
                acknowledged = event.position;
            }

            if let Err(err) = lease.save(acknowledged).await {
                return Ok(Exit::LeaseLost(err));
            }
            saved = acknowledged;
            self.set_checkpoint(saved);
        }
    }

    async fn prepare_stream(
        &self,
        publisher: &EventPublisher,
    ) -> Result<Option<StreamTail>, StreamSetupError> {
        let info = publisher.ensure_stream(&self.config.stream).await?;
        tracing::info!(
            stream = %info.config.name,
            messages = info.state.messages,
            "stream ready"
        );
        publisher.tail().await
    }

    /// The position of the stream's last message, once it is shown to be this log's event at
    /// that position. A stream fed from another log (a database recreated under a kept stream)
    /// would otherwise make the relay skip or mix events, so it stops the relay instead.
    async fn check_tail(&self, tail: &StreamTail) -> Result<u64, RelayError> {
        let foreign = || RelayError::ForeignStream {
            stream: self.config.stream.name.clone(),
            sequence: tail.sequence,
        };
        let (Some(position), Some(message_id)) = (tail.position, tail.message_id.as_deref()) else {
            return Err(foreign());
        };
        let Some(before) = position.checked_sub(1) else {
            return Err(foreign());
        };
        let events = self.store.read_all_sealed(before, 1).await?;
        match events.first() {
            Some(event)
                if event.position == position && event.event_id.to_string() == message_id =>
            {
                Ok(position)
            }
            _ => Err(foreign()),
        }
    }

    /// Records a broker failure, pauses with back-off and confirms the lease; `Some` when the
    /// relay must leave the active period.
    async fn wait_out(
        &mut self,
        broker: &mut Outage,
        error: &(dyn std::fmt::Display + Sync),
        lease: &mut LeaseSession,
        checkpoint: u64,
    ) -> Option<Exit> {
        let (pause, began) = broker.failed(&self.config.backoff, error);
        if began {
            tracing::debug!(checkpoint, "checkpoint kept while the broker is away");
            self.status.send_modify(|s| s.broker_outages += 1);
        }
        if self.pause(pause).await {
            return Some(Exit::Stopped);
        }
        match lease.confirm().await {
            Ok(()) => None,
            Err(err) => Some(Exit::LeaseLost(err)),
        }
    }

    fn set_role(&self, role: Role) {
        self.status.send_if_modified(|s| {
            let changed = s.role != role;
            s.role = role;
            changed
        });
    }

    fn set_checkpoint(&self, checkpoint: u64) {
        self.status.send_modify(|s| s.checkpoint = checkpoint);
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow() || self.stop.has_changed().is_err()
    }

    /// Waits until an append past `known` is announced, the poll interval has passed, or the
    /// relay is told to stop. `known` covers what the relay has read and what was announced
    /// before it read, so an announcement the read already answered does not wake it again. The
    /// poll interval bounds the wait while no notification arrives (the listening connection is
    /// down, or the append was made by a release that did not announce).
    async fn wait_for_appends(&mut self, known: u64) {
        if self.stopping() {
            return;
        }
        let poll = tokio::time::sleep(self.config.poll_interval);
        let announced = self.head.wait_for(|head| *head > known);
        tokio::select! {
            () = poll => {}
            _ = announced => {}
            _ = self.stop.changed() => {}
        }
    }

    /// Sleeps for `duration`; `true` if the relay was told to stop meanwhile.
    async fn pause(&mut self, duration: Duration) -> bool {
        if self.stopping() {
            return true;
        }
        tokio::select! {
            () = tokio::time::sleep(duration) => self.stopping(),
            _ = self.stop.changed() => true,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The command line
// ---------------------------------------------------------------------------------------------

/// `onbehalf relay`: carry committed events from PostgreSQL to NATS JetStream.
#[derive(Clone, clap::Args)]
pub struct RelayArgs {
    /// The PostgreSQL log.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// The NATS server.
    #[arg(
        long,
        env = "ONBEHALF_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// A TOML or JSON file overriding the built-in stream settings (retention, replicas,
    /// duplicate_window, max_age).
    #[arg(long, env = "ONBEHALF_NATS_STREAM_CONFIG")]
    pub nats_stream_config: Option<PathBuf>,
    /// Relays with the same name share one lease and one checkpoint.
    #[arg(long, env = "ONBEHALF_RELAY_NAME", default_value = DEFAULT_RELAY_NAME)]
    pub name: String,
}

impl std::fmt::Debug for RelayArgs {
    // Both URLs may hold passwords.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayArgs")
            .field("nats_stream_config", &self.nats_stream_config)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Runs a relay from the command line until Ctrl-C (or SIGINT), then stops it cleanly.
pub async fn run_cli(args: RelayArgs) -> Result<(), RelayError> {
    let mut config = RelayConfig::new(args.database_url, args.nats_url);
    config.name = args.name;
    if let Some(path) = &args.nats_stream_config {
        config.stream = StreamSettings::from_file(path)?;
    }
    let mut relay = spawn(config).await?;
    let ended = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        result = &mut relay.task => Some(result),
    };
    match ended {
        None => {
            tracing::info!("shutting down");
            relay.shutdown().await
        }
        Some(result) => result?,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onbehalf_events::Actor;

    fn event(stream_id: &str, stream_type: &str, event_type: &str) -> StoredEvent {
        StoredEvent {
            event_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
            position: 7,
            stream_id: stream_id.to_owned(),
            stream_type: stream_type.to_owned(),
            version: 3,
            occurred_at: DateTime::parse_from_rfc3339("2025-03-01T10:00:00.123456Z")
                .map(|t| t.with_timezone(&Utc))
                .unwrap(),
            event_type: event_type.to_owned(),
            event_version: "2".to_owned(),
            payload: serde_json::json!({ "name": "ABC Company" }),
            metadata: Metadata::new(Actor::System),
            key_id: None,
            hash: Some("ab".repeat(32)),
        }
    }

    #[test]
    fn subjects_name_the_stream_type_the_aggregate_id_and_the_event_type() {
        let id = "0b7c4a52-3f0a-4a57-9a43-5a1b0c3b2f10";
        assert_eq!(
            subject_for(&event(
                &format!("account-{id}"),
                "client_account",
                "UserInvited"
            )),
            format!("onbehalf.v1.client_account.{id}.UserInvited")
        );
        assert_eq!(
            subject_for(&event(&format!("user-{id}"), "user", "UserRegistered")),
            format!("onbehalf.v1.user.{id}.UserRegistered")
        );
        assert_eq!(
            subject_for(&event("catalog", "catalog", "ProductAdded")),
            "onbehalf.v1.catalog.catalog.ProductAdded"
        );
    }

    #[test]
    fn characters_that_subjects_forbid_become_underscores() {
        assert_eq!(
            subject_for(&event("x-a.b*c>d e", "odd type", "")),
            "onbehalf.v1.odd_type.a_b_c_d_e._"
        );
    }

    #[test]
    fn the_envelope_carries_every_stored_field_and_reads_back_as_a_stored_event() {
        let stored = event("catalog", "catalog", "ProductAdded");
        let bytes = RelayedEvent::from(&stored).encode().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "event_id",
                "event_type",
                "event_version",
                "hash",
                "metadata",
                "occurred_at",
                "payload",
                "position",
                "stream_id",
                "stream_type",
                "version"
            ]
        );
        assert_eq!(json["position"], 7);
        assert_eq!(json["version"], 3);
        assert_eq!(json["occurred_at"], "2025-03-01T10:00:00.123456Z");
        assert_eq!(
            StoredEvent::from(RelayedEvent::decode(&bytes).unwrap()),
            stored
        );
        assert_eq!(
            serde_json::from_slice::<StoredEvent>(&bytes).unwrap(),
            stored
        );
    }

    #[test]
    fn the_built_in_stream_matches_the_deployed_definition_file() {
        let file = include_str!("../../deploy/nats/onbehalf-events.json");
        let deployed: serde_json::Value = serde_json::from_str(file).unwrap();
        let builtin = serde_json::to_value(StreamSettings::builtin().to_config()).unwrap();
        assert_eq!(deployed, builtin);
        let parsed: stream::Config = serde_json::from_str(file).unwrap();
        assert_eq!(parsed, StreamSettings::builtin().to_config());
        assert_eq!(parsed.name, "ONBEHALF_EVENTS");
        assert_eq!(parsed.subjects, ["onbehalf.v1.>"]);
        assert_eq!(parsed.duplicate_window, Duration::from_secs(120));
        assert_eq!(parsed.storage, stream::StorageType::File);
        assert_eq!(parsed.retention, stream::RetentionPolicy::Limits);
        assert_eq!(parsed.num_replicas, 1);
    }

    #[test]
    fn toml_overrides_replace_only_the_settings_they_name() {
        let overrides = StreamOverrides::from_toml(
            "retention = \"interest\"\nreplicas = 3\nduplicate_window = \"5m\"\nmax_age = \"30d\"\n",
        )
        .unwrap();
        let settings = StreamSettings::builtin().with_overrides(overrides).unwrap();
        assert_eq!(
            settings,
            StreamSettings {
                name: "ONBEHALF_EVENTS".into(),
                subjects: vec!["onbehalf.v1.>".into()],
                retention: Retention::Interest,
                replicas: 3,
                duplicate_window: Duration::from_secs(300),
                max_age: Duration::from_secs(30 * 86_400),
            }
        );
        let partial = StreamOverrides::from_json(r#"{ "duplicate_window": "90s" }"#).unwrap();
        let settings = StreamSettings::builtin().with_overrides(partial).unwrap();
        assert_eq!(
            settings,
            StreamSettings {
                duplicate_window: Duration::from_secs(90),
                ..StreamSettings::builtin()
            }
        );
    }

    #[test]
    fn durations_the_broker_cannot_hold_are_refused_instead_of_wrapping() {
        for (toml, field) in [
            (
                "duplicate_window = \"99999999999d\"\nmax_age = \"0\"",
                "duplicate_window",
            ),
            ("max_age = \"106752d\"", "max_age"),
        ] {
            let overrides = StreamOverrides::from_toml(toml).unwrap();
            match StreamSettings::builtin().with_overrides(overrides) {
                Err(StreamConfigError::Invalid { field: f, reason }) => {
                    assert_eq!(f, field);
                    assert_eq!(reason, "must be at most 106751d (the broker's limit)");
                }
                other => panic!("{toml}: {other:?}"),
            }
        }
        let longest = StreamOverrides::from_toml("max_age = \"106751d\"").unwrap();
        let settings = StreamSettings::builtin().with_overrides(longest).unwrap();
        assert_eq!(settings.max_age, Duration::from_secs(106_751 * 86_400));
    }

    #[test]
    fn unknown_keys_and_bad_values_in_overrides_are_refused() {
        assert!(matches!(
            StreamOverrides::from_toml("replica = 3"),
            Err(StreamConfigError::Toml(_))
        ));
        assert!(matches!(
            StreamOverrides::from_json(r#"{ "retention": "forever" }"#),
            Err(StreamConfigError::Json(_))
        ));
        let refused = |text: &str| {
            StreamSettings::builtin()
                .with_overrides(StreamOverrides::from_toml(text).unwrap())
                .unwrap_err()
        };
        assert!(matches!(
            refused("replicas = 6"),
            StreamConfigError::Invalid {
                field: "replicas",
                ..
            }
        ));
        assert!(matches!(
            refused("duplicate_window = \"0\""),
            StreamConfigError::Invalid {
                field: "duplicate_window",
                ..
            }
        ));
        assert!(matches!(
            refused("duplicate_window = \"10m\"\nmax_age = \"5m\""),
            StreamConfigError::Invalid {
                field: "duplicate_window",
                ..
            }
        ));
        assert!(matches!(
            refused("max_age = \"5 weeks\""),
            StreamConfigError::Invalid {
                field: "max_age",
                ..
            }
        ));
    }

    #[test]
    fn durations_take_a_unit_or_zero() {
        let parse = |raw| parse_duration("max_age", raw).ok();
        assert_eq!(parse("0"), Some(Duration::ZERO));
        assert_eq!(parse("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse("12h"), Some(Duration::from_secs(43_200)));
        assert_eq!(parse("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse("90"), None);
        assert_eq!(parse("m"), None);
        assert_eq!(parse("-1s"), None);
        assert_eq!(parse("99999999999999999999d"), None);
    }

    #[test]
    fn back_off_doubles_up_to_its_cap_and_stays_in_the_upper_half_of_each_bound() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        let bounds = [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000];
        for (attempt, bound_ms) in bounds.into_iter().enumerate() {
            let bound = Duration::from_millis(bound_ms);
            for _ in 0..50 {
                let delay = backoff.delay(attempt as u32);
                assert!(delay >= bound / 2 && delay <= bound, "{attempt}: {delay:?}");
            }
        }
        assert!(backoff.delay(u32::MAX) <= Duration::from_secs(5));
    }

    #[test]
    fn lease_keys_differ_by_relay_name_and_are_stable() {
        // Pinned: relays of two releases running side by side during an upgrade must compete
        // for the same lock, so the key of a name may never change.
        assert_eq!(lease_key("default"), 2_628_344_797_772_777_335);
        assert_ne!(lease_key("default"), lease_key("eu-archive"));
    }
}
