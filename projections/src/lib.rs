//! Read models of onbehalf, folded from the log by position.
//!
//! [`ReadModels`] holds every read model (account tree, billing ledger, catalogue, notification
//! routing, audit trail) and one position shared by all of them, so they always describe the
//! same prefix of the log.
//!
//! Architecture Invariant: projections never decide; they only fold events that were already
//! decided on the write model.
//! An event whose facts look odd (a grant to someone who is not a member, a payment on an unknown
//! invoice) is folded as far as it makes sense and otherwise ignored, never rejected: the log is
//! the truth and the projection has no authority to disagree with it.
//!
//! Architecture Invariant: events are applied strictly in position order.
//! An event at or below the current position is skipped, so redelivery is harmless; an event
//! that would leave a gap is refused and nothing changes.
//!
//! Architecture Invariant: no secret is read from the log or stored here except the invitation
//! tokens that [`InvitationLinks`] recomputes for the mailer.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    rust_2018_idioms
)]

use std::sync::Arc;

use onbehalf_events::{
    stream_type, upcast, AccountEvent, CatalogEvent, StoredEvent, UpcastError, UserEvent,
};
use uuid::Uuid;

mod accounts;
mod audit;
mod billing;
mod catalog;
mod documents;
mod format;
mod notifications;

pub use accounts::{
    AccessibleAccount, AccountTree, AccountView, InvitationState, InvitationView, MemberView, Role,
    UserView,
};
pub use audit::{AuditEntry, AuditFilter, AuditOrder, AuditPage, AuditTrail};
pub use billing::{
    BillingLedger, InvoiceStatus, InvoiceView, PaymentView, ServiceStatus, ServiceView,
};
pub use catalog::CatalogView;
pub use documents::{AccountDocument, Changes};
pub use format::format_money;
pub use notifications::{ContactView, Notification, NotificationCategory, NotificationRouting};

/// Recomputes invitation tokens and links, so that no token ever has to be stored in the log.
///
/// Implementations must be deterministic: the same arguments give the same token on every call
/// and after every restart, so a rebuilt projection routes the same links. Their `Debug` output
/// must not reveal the secret they sign with.
pub trait InvitationLinks: Send + Sync + std::fmt::Debug {
    /// The acceptance token of an invitation at a given send generation (0 = first send).
    fn token(&self, account_id: Uuid, invitation_id: Uuid, generation: u32) -> String;
    /// The link put in the invitation email body for that token.
    fn accept_url(&self, token: &str) -> String;
}

/// What [`ReadModels::apply`] did with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The event was the next one in the log and every read model now includes it.
    Applied,
    /// The event was at or below the current position (a redelivery); nothing changed.
    Skipped,
}

/// Why an event could not be applied. Nothing changes when an error is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// Applying the event would skip at least one position of the log.
    #[error("event at position {found} would leave a gap: the next position is {expected}")]
    Gap {
        /// The only position that can be applied next.
        expected: u64,
        /// The position of the refused event.
        found: u64,
    },
    /// The payload does not decode into the event type of its stream.
    #[error("the payload of the event at position {position} does not decode")]
    Decode {
        /// The position of the refused event.
        position: u64,
        /// What the decoder said.
        #[source]
        source: serde_json::Error,
    },
    /// The event cannot be brought to the current version of its type (a version newer than
    /// this release knows, or an older payload its upcast step cannot convert).
    #[error(transparent)]
    Upcast(#[from] UpcastError),
    /// A client account event whose stream id is not `account-<uuid>`.
    #[error("the event at position {position} is in stream `{stream_id}`, not `account-<uuid>`")]
    StreamId {
        /// The position of the refused event.
        position: u64,
        /// The stream id as stored.
        stream_id: String,
    },
}

/// Every read model of onbehalf at one position of the log.
///
/// All views always include exactly the events at positions `1..=position()`.
// LIMITATION: the read models live in memory only, so every start replays the log from
// position 1 and memory grows with the audit trail and the notifications.
#[derive(Clone, Debug)]
pub struct ReadModels {
    /// Users, client accounts, members and invitations.
    pub accounts: AccountTree,
    /// Services, invoices and payments per client account.
    pub billing: BillingLedger,
    /// The provider's products.
    pub catalog: CatalogView,
    /// Notifications ready for a mailer.
    pub notifications: NotificationRouting,
    /// Who did what, on whose behalf.
    pub audit: AuditTrail,
    links: Arc<dyn InvitationLinks>,
    position: u64,
    /// What changed since last taken, while a writer of documents tracks it.
    changes: Option<Changes>,
}

/// A payload decoded once, before any read model changes.
enum Decoded {
    User(UserEvent),
    Account(Uuid, AccountEvent),
    Catalog(CatalogEvent),
    /// A stream type this crate does not know: it only reaches the audit trail.
    Other,
}

impl ReadModels {
    /// Empty read models at position 0; `links` recomputes invitation tokens for notifications.
    pub fn new(links: Arc<dyn InvitationLinks>) -> Self {
        Self {
            accounts: AccountTree::default(),
            billing: BillingLedger::default(),
            catalog: CatalogView::default(),
            notifications: NotificationRouting::default(),
            audit: AuditTrail::default(),
            links,
            position: 0,
            changes: None,
        }
    }

    /// The position of the last applied event; 0 before the first.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Folds the event at the next position into every read model.
    ///
    /// The event may be stored at any version of its type: it is upcast to the current version
    /// first, so every read model, the audit trail included, sees the current version only.
    ///
    /// An event at or below [`position`](Self::position) is [`Applied::Skipped`]. An event
    /// further ahead is refused with [`ProjectionError::Gap`], one that cannot be upcast with
    /// [`ProjectionError::Upcast`], and one that does not decode with
    /// [`ProjectionError::Decode`]; in every case no read model and not the position change.
    pub fn apply(&mut self, event: &StoredEvent) -> Result<Applied, ProjectionError> {
        if event.position <= self.position {
            return Ok(Applied::Skipped);
        }
        let expected = self.position + 1;
        if event.position != expected {
            return Err(ProjectionError::Gap {
                expected,
                found: event.position,
            });
        }

        // Every fallible step happens before the first change, so an error leaves no trace.
        // Only an event stored at an older version is copied.
        let upcast_event;
        let event = if upcast::is_current(event) {
            event
        } else {
            upcast_event = upcast(event.clone())?;
            &upcast_event
        };
        let decoded = decode(event)?;

        // The account tree and the ledger fold first: notifications and audit entries describe
        // the state right after the event (the invoice number it received, the email of a user
        // who just registered).
        let stream_account = match &decoded {
            Decoded::User(e) => {
                if let UserEvent::UserErased { user_id } = e {
                    // Before the tree forgets the user's email: routing finds it by that email.
                    if let Some(user) = self.accounts.user(*user_id).cloned() {
                        self.notifications.erase_user(&user);
                    }
                    self.audit.erase_actor(*user_id);
                }
                self.accounts.apply_user(e);
                None
            }
            Decoded::Account(account_id, e) => {
                self.accounts.apply_account(*account_id, e, event);
                self.billing.apply(*account_id, e, event);
                self.notifications.route(
                    event,
                    *account_id,
                    e,
                    &self.accounts,
                    &self.billing,
                    self.links.as_ref(),
                );
                Some(*account_id)
            }
            Decoded::Catalog(e) => {
                self.catalog.apply(e);
                None
            }
            Decoded::Other => None,
        };
        self.audit.record(event, stream_account, &self.accounts);
        if self.changes.is_some() {
            let change = change_of(event, &decoded);
            self.note_change(change);
        }

        self.position = event.position;
        Ok(Applied::Applied)
    }
}

fn decode(event: &StoredEvent) -> Result<Decoded, ProjectionError> {
    let decode_error = |source| ProjectionError::Decode {
        position: event.position,
        source,
    };
    match event.stream_type.as_str() {
        stream_type::USER => event.decode().map(Decoded::User).map_err(decode_error),
        stream_type::CLIENT_ACCOUNT => {
            let account_id =
                account_id_of(&event.stream_id).ok_or_else(|| ProjectionError::StreamId {
                    position: event.position,
                    stream_id: event.stream_id.clone(),
                })?;
            let payload = event.decode().map_err(decode_error)?;
            Ok(Decoded::Account(account_id, payload))
        }
        stream_type::CATALOG => event.decode().map(Decoded::Catalog).map_err(decode_error),
        // LIMITATION: events of stream types unknown to this crate are only audited; a new stream
        // type needs a new projection release before it reaches any other read model.
        _ => Ok(Decoded::Other),
    }
}

/// Which document an applied event changed.
fn change_of(event: &StoredEvent, decoded: &Decoded) -> documents::Change {
    use documents::Change;
    match decoded {
        // The stream names the user, whatever the event type, as the account's stream names
        // the account.
        Decoded::User(payload) => event
            .stream_id
            .strip_prefix("user-")
            .and_then(|id| Uuid::parse_str(id).ok())
            .map_or(Change::Nothing, |user_id| Change::User {
                user_id,
                rewrites: matches!(payload, UserEvent::UserErased { .. }),
            }),
        Decoded::Account(account_id, payload) => Change::Account {
            account_id: *account_id,
            invitee: match payload {
                AccountEvent::UserInvited { email, .. } => Some(email.key()),
                _ => None,
            },
        },
        Decoded::Catalog(CatalogEvent::ProductPut { product }) => {
            Change::Product(product.product_id)
        }
        Decoded::Other => Change::Nothing,
    }
}

/// The client account named by a stream id `account-<uuid>`.
fn account_id_of(stream_id: &str) -> Option<Uuid> {
    stream_id
        .strip_prefix("account-")
        .and_then(|id| Uuid::parse_str(id).ok())
}
