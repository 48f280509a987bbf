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

/// The reservation scope that keeps user emails unique.
pub const EMAIL_SCOPE: &str = "user_email";

/// The reservation scope that keeps a domain registered to one service at a time.
pub const DOMAIN_SCOPE: &str = "domain";

/// A key that must be unique across every stream, such as a registered domain name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UniqueKey {
    /// What kind of key.
    pub scope: &'static str,
    /// The key, normalised.
    pub key: String,
}

/// The unique keys a command's events claim and give up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyChanges {
    /// Keys to claim; the command fails if another stream holds one.
    pub claimed: Vec<UniqueKey>,
    /// Keys this stream gives up.
    pub released: Vec<UniqueKey>,
    /// Data subjects whose keys are deleted with the events (an erasure): every personal field
    /// they sealed reads as erased from then on.
    pub erased: Vec<String>,
}

/// Aggregates whose events claim keys unique across streams; the executor writes the claims in
/// the same transaction as the events.
pub trait UniqueKeys: cqrs_es::Aggregate {
    /// The keys `events` claim and give up, given the state they were decided on and applied to.
    fn unique_keys(&self, _events: &[Self::Event]) -> KeyChanges {
        KeyChanges::default()
    }
}

impl UniqueKeys for Catalog {}

impl UniqueKeys for ClientAccount {
    fn unique_keys(&self, events: &[Self::Event]) -> KeyChanges {
        use onbehalf_events::values::ProductKind;
        use onbehalf_events::AccountEvent;
        let domain_key = |domain: &onbehalf_events::values::DomainName| UniqueKey {
            scope: DOMAIN_SCOPE,
            key: domain.as_str().to_owned(),
        };
        let mut changes = KeyChanges::default();
        for event in events {
            match event {
                AccountEvent::ServiceOrdered {
                    kind: ProductKind::Domain,
                    domain: Some(domain),
                    ..
                } => {
                    changes.claimed.push(domain_key(domain));
                }
                AccountEvent::ServiceCancelled { service_id } => {
                    let cancelled = self.services.get(service_id);
                    if let Some(domain) = cancelled
                        .filter(|s| s.kind == ProductKind::Domain)
                        .and_then(|s| s.domain.as_ref())
                    {
                        changes.released.push(domain_key(domain));
                    }
                }
                _ => {}
            }
        }
        changes
    }
}
