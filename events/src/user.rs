//! Events of a user's stream.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::{Email, Name};
use crate::EventSchema;

/// What happened to a user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum UserEvent {
    /// A login identity was registered.
    UserRegistered {
        /// The new user's id.
        user_id: Uuid,
        /// Personal: the login email, trimmed, as given.
        email: Email,
        /// Personal: the display name.
        display_name: Name,
    },
}

impl EventSchema for UserEvent {
    fn event_type(&self) -> &'static str {
        match self {
            UserEvent::UserRegistered { .. } => "UserRegistered",
        }
    }

    fn personal_fields(&self) -> &'static [&'static str] {
        match self {
            UserEvent::UserRegistered { .. } => &["email", "display_name"],
        }
    }
}

impl cqrs_es::DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        EventSchema::event_type(self).to_owned()
    }

    fn event_version(&self) -> String {
        EventSchema::event_version(self).to_owned()
    }
}
