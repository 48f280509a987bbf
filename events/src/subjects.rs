//! NATS subject names under which committed events are published.

/// The JetStream stream that carries committed events.
pub const EVENTS_STREAM: &str = "ONBEHALF_EVENTS";

/// The subject prefix of every event.
pub const SUBJECT_PREFIX: &str = "onbehalf.v1";

/// The subject of one event: `onbehalf.v1.<stream type>.<aggregate id>.<event type>`.
pub fn event_subject(stream_type: &str, aggregate_id: &str, event_type: &str) -> String {
    format!("{SUBJECT_PREFIX}.{stream_type}.{aggregate_id}.{event_type}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn subjects_name_stream_aggregate_and_type() {
        assert_eq!(
            super::event_subject("client_account", "42", "UserInvited"),
            "onbehalf.v1.client_account.42.UserInvited"
        );
    }
}
