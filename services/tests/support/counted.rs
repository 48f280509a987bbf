//! The append the store tests make most: one `Counted` event by the system on a client account
//! stream, at a fixed time, with no reservation, release or request id.

use chrono::{DateTime, Utc};
use onbehalf::store::{AppendBatch, NewEvent};
use onbehalf_events::{Actor, Metadata};

/// One `Counted` event carrying `payload`, appended to `stream_id` at `expected_version`.
pub fn counted(stream_id: &str, expected_version: u64, payload: serde_json::Value) -> AppendBatch {
    AppendBatch {
        stream_id: stream_id.to_owned(),
        stream_type: "client_account".to_owned(),
        expected_version,
        occurred_at: DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap(),
        events: vec![NewEvent::new(
            "Counted",
            "1",
            payload,
            Metadata::new(Actor::System),
        )],
        reservations: Vec::new(),
        releases: Vec::new(),
        request: None,
    }
}
