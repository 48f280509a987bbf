//! Event types, envelope and value types of onbehalf.
//!
//! This crate is the vocabulary shared by the write side (aggregates, stores) and the read side
//! (projections). It holds data and parsing rules only.
//!
//! Architecture Invariant: nothing here performs I/O or decides a command; events are facts that
//! were already decided.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    rust_2018_idioms
)]

pub mod account;
pub mod actor;
pub mod catalog;
pub use catalog::{Price, Product};
pub mod contact;
pub mod envelope;
pub mod permission;
pub mod personal;
pub mod subjects;
pub mod upcast;
pub mod user;
pub mod values;

pub use account::AccountEvent;
pub use actor::Actor;
pub use catalog::CatalogEvent;
pub use contact::{ContactCategories, ContactCategory};
pub use envelope::{Metadata, StoredEvent};
pub use permission::{Permission, PermissionSet};
pub use upcast::{upcast, UpcastError};
pub use user::UserEvent;

/// Every event type knows its name, schema version and which of its fields hold personal data.
pub trait EventSchema {
    /// The event's type name as stored in the log and shown in the audit trail.
    fn event_type(&self) -> &'static str;
    /// The schema version of this event type's payload, as written to the log.
    ///
    /// It must equal [`upcast::current_version`] of the type, so that [`upcast()`] brings
    /// older stored events to exactly the shape this type decodes.
    fn event_version(&self) -> &'static str {
        "1"
    }
    /// Names of the payload fields that hold personal data (emails, names, contact details).
    ///
    /// These are the fields that per-user encryption and erasure operate on.
    fn personal_fields(&self) -> &'static [&'static str] {
        &[]
    }
    /// Whose data key seals the personal fields: the event's own stream unless the data
    /// belongs to someone else (an invitee's email).
    fn personal_subject(&self) -> personal::DataSubject {
        personal::DataSubject::OwnStream
    }
}

/// The aggregate types whose streams make up the log.
pub mod stream_type {
    /// A user's stream: `user-<uuid>`.
    pub const USER: &str = "user";
    /// A client account's stream: `account-<uuid>`.
    pub const CLIENT_ACCOUNT: &str = "client_account";
    /// The provider's single catalogue stream: `catalog`.
    pub const CATALOG: &str = "catalog";
}

/// The stream id of a user.
pub fn user_stream(user_id: uuid::Uuid) -> String {
    format!("user-{user_id}")
}

/// The stream id of a client account.
pub fn account_stream(account_id: uuid::Uuid) -> String {
    format!("account-{account_id}")
}

/// The stream id of the provider's catalogue.
pub const CATALOG_STREAM: &str = "catalog";
