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
    /// The user was erased (the right to be forgotten): the data keys that sealed its personal
    /// fields were deleted with this event, so every earlier event of it reads as erased.
    /// It carries no personal data itself.
    UserErased {
        /// The erased user.
        user_id: Uuid,
    },
}

impl EventSchema for UserEvent {
    fn event_type(&self) -> &'static str {
        match self {
            UserEvent::UserRegistered { .. } => "UserRegistered",
            UserEvent::UserErased { .. } => "UserErased",
        }
    }

    fn personal_fields(&self) -> &'static [&'static str] {
        match self {
            UserEvent::UserRegistered { .. } => &["email", "display_name"],
            UserEvent::UserErased { .. } => &[],
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
