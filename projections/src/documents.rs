//! The read models as documents: what a persisted copy stores, and how it is put back.
//!
//! A store of read models (a database) keeps one document per key: per client account, per
//! user, per invitee email, per product, plus the notifications and audit entries in position
//! order and the ledger's last invoice number. [`ReadModels::take_changes`] tells which keys the
//! events applied since the last call touched, so a writer stores only those; the `put_*`
//! methods rebuild read models from stored documents, giving exactly the models the fold had.
//!
//! Architecture Invariant: documents are cut along the fold's own dependencies. Everything an
//! event of a client account's stream changes in the account tree and the ledger lives in that
//! account's document; an event of a user's stream changes only that user's document; a
//! catalogue event only its product. Notifications and audit entries are only ever appended.

use std::collections::{BTreeMap, BTreeSet};

use onbehalf_events::{ContactCategories, Product};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::accounts::{AccountView, Invitation, UserView};
use crate::audit::AuditEntry;
use crate::billing::AccountBilling;
use crate::notifications::{ContactView, Notification};
use crate::ReadModels;

/// Everything the read models hold about one client account: its view (owner, members,
/// profile), its invitations, its services and its invoices, its contacts and its members'
/// notification opt-ins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountDocument {
    /// The client account.
    pub account_id: Uuid,
    view: Option<AccountView>,
    invitations: Vec<Invitation>,
    billing: AccountBilling,
    #[serde(default)]
    contacts: BTreeMap<Uuid, ContactView>,
    #[serde(default)]
    opt_ins: BTreeMap<Uuid, ContactCategories>,
}

/// The keys whose documents changed, and the notifications and audit entries appended, since
/// changes were last taken.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Client accounts whose [`AccountDocument`] changed.
    pub accounts: BTreeSet<Uuid>,
    /// Users whose [`UserView`] changed.
    pub users: BTreeSet<Uuid>,
    /// Invitee email keys whose list of invitations changed.
    pub invitation_emails: BTreeSet<String>,
    /// Products that were put.
    pub products: BTreeSet<Uuid>,
    /// The notifications routed, in position order; taken out of the read models.
    pub notifications: Vec<Notification>,
    /// The audit entries recorded, in position order; taken out of the read models.
    pub audit: Vec<AuditEntry>,
    /// Whether an applied event changed what was folded before it beyond the documents named
    /// here (an erasure rewrites past notifications, audit entries and other accounts'
    /// invitations): a persisted copy must then be rebuilt from the log.
    pub rewrites_history: bool,
}

impl ReadModels {
    /// From now on, record which documents every applied event changes, and hand the routed
    /// notifications and audit entries to [`take_changes`](Self::take_changes) instead of
    /// keeping them.
    ///
    /// This is for a writer that stores documents elsewhere: its read models then never grow
    /// with the log, and their notification and audit views stay empty.
    pub fn track_changes(&mut self) {
        self.changes.get_or_insert_with(Changes::default);
    }

    /// What changed since the last call (or since [`track_changes`](Self::track_changes));
    /// empty when changes are not tracked.
    pub fn take_changes(&mut self) -> Changes {
        let Some(changes) = self.changes.as_mut() else {
            return Changes::default();
        };
        let mut taken = std::mem::take(changes);
        taken.notifications = self.notifications.drain();
        taken.audit = self.audit.drain();
        taken
    }

    /// Records the keys an event changed; called once it is applied.
    pub(crate) fn note_change(&mut self, change: Change) {
        let Some(changes) = self.changes.as_mut() else {
            return;
        };
        match change {
            Change::User { user_id, rewrites } => {
                changes.users.insert(user_id);
                changes.rewrites_history |= rewrites;
            }
            Change::Account {
                account_id,
                invitee,
            } => {
                changes.accounts.insert(account_id);
                changes.invitation_emails.extend(invitee);
            }
            Change::Product(product_id) => {
                changes.products.insert(product_id);
            }
            Change::Nothing => {}
        }
    }

    /// Every key the read models hold a document for, with every notification and audit entry:
    /// what a full copy of them stores.
    pub fn documents(&self) -> Changes {
        let (accounts, users, emails) = self.accounts.keys();
        Changes {
            accounts: accounts
                .into_iter()
                .chain(self.billing.account_ids())
                .chain(self.notifications.account_ids())
                .collect(),
            users: users.into_iter().collect(),
            invitation_emails: emails.into_iter().collect(),
            products: self
                .catalog
                .products()
                .iter()
                .map(|p| p.product_id)
                .collect(),
            notifications: self.notifications.all().to_vec(),
            audit: self.audit.all().to_vec(),
            rewrites_history: false,
        }
    }

    /// The document of a client account as the read models hold it now.
    pub fn account_document(&self, account_id: Uuid) -> AccountDocument {
        let (view, invitations) = self.accounts.account_parts(account_id);
        let (contacts, opt_ins) = self.notifications.account_part(account_id);
        AccountDocument {
            account_id,
            view,
            invitations,
            billing: self.billing.account_part(account_id),
            contacts,
            opt_ins,
        }
    }

    /// The `(client account, invitation)` pairs sent to an invitee email key, first sent first.
    pub fn invitations_to(&self, email_key: &str) -> Vec<(Uuid, Uuid)> {
        self.accounts.invitations_to(email_key)
    }

    /// The number of the last invoice issued; 0 before the first.
    pub fn last_invoice_number(&self) -> u64 {
        self.billing.last_invoice_number()
    }

    /// Puts a stored client account document in place of what the read models hold for it.
    pub fn put_account(&mut self, document: AccountDocument) {
        let AccountDocument {
            account_id,
            view,
            invitations,
            billing,
            contacts,
            opt_ins,
        } = document;
        self.accounts
            .put_account_parts(account_id, view, invitations);
        self.billing.put_account_part(account_id, billing);
        self.notifications
            .put_account_part(account_id, contacts, opt_ins);
    }

    /// Puts a stored user in place of what the read models hold for it.
    pub fn put_user(&mut self, user: UserView) {
        self.accounts.put_user(user);
    }

    /// Puts the stored invitations of an invitee email key in place.
    pub fn put_invitations_to(&mut self, email_key: String, sent: Vec<(Uuid, Uuid)>) {
        self.accounts.put_invitations_to(email_key, sent);
    }

    /// Puts a stored product in place.
    pub fn put_product(&mut self, product: Product) {
        self.catalog.put(product);
    }

    /// Appends a stored notification; they must come in position order.
    pub fn push_notification(&mut self, notification: Notification) {
        self.notifications.push_routed(notification);
    }

    /// Appends a stored audit entry; they must come in position order.
    pub fn push_audit_entry(&mut self, entry: AuditEntry) {
        self.audit.push_recorded(entry);
    }

    /// Declares that the documents put so far are the read models at `position`, after
    /// `last_invoice_number` invoices; the next applied event must be `position + 1`.
    pub fn restore_position(&mut self, position: u64, last_invoice_number: u64) {
        self.billing.set_last_invoice_number(last_invoice_number);
        self.position = position;
    }
}

/// Which document one applied event changed.
pub(crate) enum Change {
    /// A user's stream; `rewrites` when the event changes what earlier events folded into.
    User { user_id: Uuid, rewrites: bool },
    /// A client account's stream; `invitee` is the email key of a new invitation.
    Account {
        account_id: Uuid,
        invitee: Option<String>,
    },
    /// The catalogue.
    Product(Uuid),
    /// A stream only the audit trail sees.
    Nothing,
}
