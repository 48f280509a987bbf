//! The envelope every stored event travels in.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Actor, Permission};

/// Who issued the command that produced an event, for whom, and under which request.
///
/// The actor's email is deliberately absent: projections derive it from the user's own events
/// as it was at that moment, which keeps personal data out of every envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Who issued the command.
    pub actor: Actor,
    /// The client account the command acted on, when it acted on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<Uuid>,
    /// The permission the decision relied on; `None` for owner-only and self-service commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission: Option<Permission>,
    /// The caller's idempotency key, scoped to the actor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Groups every event caused by one original request across commands.
    pub correlation_id: Uuid,
    /// The event or request that directly caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// The end user's address, when the calling front end supplies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_address: Option<String>,
    /// The end user's browser or tool, when the calling front end supplies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Why a provider staff member acted, as the staff member stated it; present exactly when
    /// the actor is staff. Declared last, and absent when unset, so that envelopes written
    /// before it existed keep their bytes and their hashes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Metadata {
    /// Metadata for a command issued by `actor`, with a fresh correlation id.
    pub fn new(actor: Actor) -> Self {
        Self {
            actor,
            on_behalf_of: None,
            permission: None,
            request_id: None,
            correlation_id: Uuid::new_v4(),
            causation_id: None,
            client_address: None,
            user_agent: None,
            reason: None,
        }
    }
}

/// One event as it is stored in the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Unique id of the event (also its de-duplication id on a broker).
    pub event_id: Uuid,
    /// Global, gap-free position in commit order, starting at 1.
    pub position: u64,
    /// The stream (aggregate instance) the event belongs to, e.g. `account-<uuid>`.
    pub stream_id: String,
    /// The aggregate type of the stream, one of [`crate::stream_type`].
    pub stream_type: String,
    /// The event's version within its stream, starting at 1.
    pub version: u64,
    /// When the event was committed, by the server's clock.
    pub occurred_at: DateTime<Utc>,
    /// The event's type name.
    pub event_type: String,
    /// The schema version of the payload.
    pub event_version: String,
    /// The payload as stored.
    pub payload: serde_json::Value,
    /// Who and for whom.
    pub metadata: Metadata,
    /// Id of the key that encrypts this event's personal fields; `None` while they are plain.
    pub key_id: Option<String>,
    /// Tamper-evidence hash of the event chained to its predecessor; `None` until computed.
    pub hash: Option<String>,
}

impl StoredEvent {
    /// Decodes the payload into the event type of its stream.
    ///
    /// The payload is read in place: decoding allocates only what the event itself holds, never
    /// a copy of the payload.
    pub fn decode<E: serde::de::DeserializeOwned>(&self) -> Result<E, serde_json::Error> {
        E::deserialize(&self.payload)
    }
}
