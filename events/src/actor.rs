//! Who issued a command.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The issuer of a command, as recorded in every event's envelope.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Actor {
    /// A registered user acting through the client area.
    User(Uuid),
    /// An internal system, authenticated as `service:<name>`.
    Service(String),
    /// A member of the provider's staff, authenticated as `staff:<name>`.
    Staff(String),
    /// The service itself (the scheduler).
    System,
}

impl Actor {
    /// The actor's kind as a lowercase word: `user`, `service`, `staff` or `system`.
    pub fn kind(&self) -> &'static str {
        match self {
            Actor::User(_) => "user",
            Actor::Service(_) => "service",
            Actor::Staff(_) => "staff",
            Actor::System => "system",
        }
    }

    /// The user id, when the actor is a user.
    pub fn user_id(&self) -> Option<Uuid> {
        match self {
            Actor::User(id) => Some(*id),
            _ => None,
        }
    }
}

/// Renders the actor as the key that scopes its request ids: `user:<id>`, `service:<name>`, ...
impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::User(id) => write!(f, "user:{id}"),
            Actor::Service(name) => write!(f, "service:{name}"),
            Actor::Staff(name) => write!(f, "staff:{name}"),
            Actor::System => f.write_str("system"),
        }
    }
}
