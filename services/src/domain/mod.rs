//! Aggregates: the write model on which every decision is made.
//!
//! Architecture Invariant: aggregates know nothing of gRPC, tokens or stores. They receive a
//! command with its context (actor and time), check it against their own state, and emit events.

use chrono::{DateTime, Utc};
use onbehalf_events::Actor;

pub mod account;
pub mod catalog;
pub mod user;

pub use account::{AccountCommand, ClientAccount};
pub use catalog::{Catalog, CatalogCommand};
pub use user::{User, UserCommand};

/// Who issues a command, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandContext {
    /// The authenticated issuer.
    pub actor: Actor,
    /// The time of the decision, from the server's clock.
    pub now: DateTime<Utc>,
}

/// A command with its context, as an aggregate handles it.
#[derive(Clone, Debug, PartialEq)]
pub struct Command<C> {
    /// Who and when.
    pub context: CommandContext,
    /// What.
    pub body: C,
}

/// Why an aggregate refused a command. Each kind maps to one gRPC code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DomainError {
    /// A field of the command is malformed or does not fit the state.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The request field at fault.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The actor may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The thing to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The state does not allow the command.
    #[error("{0}")]
    FailedPrecondition(String),
}

impl DomainError {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        DomainError::InvalidArgument {
            field,
            message: message.into(),
        }
    }

    pub(crate) fn denied(message: impl Into<String>) -> Self {
        DomainError::PermissionDenied(message.into())
    }

    pub(crate) fn precondition(message: impl Into<String>) -> Self {
        DomainError::FailedPrecondition(message.into())
    }
}
