//! Notification routing: which notification-worthy event reaches whom, as records a mailer can
//! deliver exactly once.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use onbehalf_events::account::RemovalReason;
use onbehalf_events::values::{Email, Name, ProductKind};
use onbehalf_events::{AccountEvent, ContactCategories, ContactCategory, StoredEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::accounts::{AccountTree, AccountView, UserView};
use crate::billing::{BillingLedger, ServiceView};
use crate::format::{describe_permissions, format_money};
use crate::InvitationLinks;

/// What a notification is about; mailers and preferences group by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum NotificationCategory {
    /// An invitation to a client account, for the invitee.
    Invitation,
    /// Invoices and payments, for the account's billing email.
    Billing,
    /// Orders, renewals and cancellations of services, for the account's billing email.
    Service,
    /// Changes of who may act on a client account, for the owner and the affected user.
    Security,
}

impl NotificationCategory {
    /// The category as a lowercase word: `invitation`, `billing`, `service` or `security`.
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationCategory::Invitation => "invitation",
            NotificationCategory::Billing => "billing",
            NotificationCategory::Service => "service",
            NotificationCategory::Security => "security",
        }
    }
}

/// One message for one recipient, produced by one event.
///
/// The id is the UUID v5 of the event id (as namespace) and `<recipient key>/<category>`, so a
/// rebuild from the same log produces the same ids and a mailer can de-duplicate deliveries.
/// `Debug` hides the token and the body of a notification that carries a token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Stable id: the same event, recipient and category always give the same id.
    pub notification_id: Uuid,
    /// What the notification is about.
    pub category: NotificationCategory,
    /// Where to send it.
    pub recipient_email: Email,
    /// The client account it concerns.
    pub account_id: Uuid,
    /// The subject line.
    pub subject: String,
    /// The plain-text body.
    pub body: String,
    /// For an invitation, the acceptance token the body's link carries; `None` otherwise.
    pub action_token: Option<String>,
    /// The position of the event that produced it.
    pub position: u64,
    /// When that event was committed.
    pub created_at: DateTime<Utc>,
    /// The type name of that event.
    pub event_type: String,
    /// What kind of notice it is, naming the mail template that renders it (`invoice_issued`,
    /// `payment_reminder`, `member_removed`, ...).
    #[serde(default)]
    pub kind: String,
    /// The values a mail template's placeholders are replaced with, always including
    /// `account_name` and `recipient_email`.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

impl fmt::Debug for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = self.action_token.is_some();
        f.debug_struct("Notification")
            .field("notification_id", &self.notification_id)
            .field("category", &self.category)
            .field("recipient_email", &self.recipient_email)
            .field("account_id", &self.account_id)
            .field("subject", &self.subject)
            .field("body", if secret { &"<redacted>" } else { &self.body })
            .field(
                "action_token",
                &self.action_token.as_ref().map(|_| "<redacted>"),
            )
            .field("position", &self.position)
            .field("created_at", &self.created_at)
            .field("event_type", &self.event_type)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Every routed notification, in position order, with indexes by recipient and account.
///
/// Routing rules: invitations go to the invitee, naming who sent them. Invoices, payments and
/// reminders (category `invoice`), and orders, renewals, suspensions and cancellations of
/// services (`product` for hosting, `domain` for domains) go to the account's billing email as
/// it was at that moment, to every contact receiving that category, and to the owner and every
/// member who opted into it and still holds the permission that shows the same in the client
/// area; one notice per distinct email. Membership and permission changes and ownership
/// transfers go to the owner and the affected user, once each, whatever they opted into, and an
/// acceptance also to the user who sent the invitation. A member who opted into nothing
/// receives nothing else of a client account.
#[derive(Clone, Debug, Default)]
pub struct NotificationRouting {
    notifications: Vec<Notification>,
    by_recipient: BTreeMap<String, Vec<usize>>,
    by_account: BTreeMap<Uuid, Vec<usize>>,
    contacts: BTreeMap<Uuid, BTreeMap<Uuid, ContactView>>,
    opt_ins: BTreeMap<Uuid, BTreeMap<Uuid, ContactCategories>>,
}

impl NotificationRouting {
    /// The notifications sent to this email key (compared case-insensitively), in position
    /// order.
    pub fn for_recipient(&self, email_key: &str) -> Vec<&Notification> {
        self.pick(
            self.by_recipient
                .get(&onbehalf_events::values::email_key(email_key)),
        )
    }

    /// The notifications concerning this client account, in position order.
    pub fn for_account(&self, account_id: Uuid) -> Vec<&Notification> {
        self.pick(self.by_account.get(&account_id))
    }

    /// Every notification in position order.
    pub fn all(&self) -> &[Notification] {
        &self.notifications
    }

    /// The contacts and members' opt-ins of one account, as a persisted document holds them.
    pub(crate) fn account_part(
        &self,
        account_id: Uuid,
    ) -> (
        BTreeMap<Uuid, ContactView>,
        BTreeMap<Uuid, ContactCategories>,
    ) {
        (
            self.contacts.get(&account_id).cloned().unwrap_or_default(),
            self.opt_ins.get(&account_id).cloned().unwrap_or_default(),
        )
    }

    /// Replaces the contacts and opt-ins of one account.
    pub(crate) fn put_account_part(
        &mut self,
        account_id: Uuid,
        contacts: BTreeMap<Uuid, ContactView>,
        opt_ins: BTreeMap<Uuid, ContactCategories>,
    ) {
        if contacts.is_empty() {
            self.contacts.remove(&account_id);
        } else {
            self.contacts.insert(account_id, contacts);
        }
        if opt_ins.is_empty() {
            self.opt_ins.remove(&account_id);
        } else {
            self.opt_ins.insert(account_id, opt_ins);
        }
    }

    /// Every account with contacts or opt-ins.
    pub(crate) fn account_ids(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.contacts.keys().chain(self.opt_ins.keys()).copied()
    }

    /// The current contacts of a client account, by id.
    pub fn contacts(&self, account_id: Uuid) -> Vec<&ContactView> {
        self.contacts
            .get(&account_id)
            .into_iter()
            .flat_map(|c| c.values())
            .collect()
    }

    /// What the owner or a member of a client account opted into; empty when nothing.
    pub fn opt_ins(&self, account_id: Uuid, user_id: Uuid) -> ContactCategories {
        self.opt_ins
            .get(&account_id)
            .and_then(|a| a.get(&user_id))
            .cloned()
            .unwrap_or_default()
    }

    /// Folds the events that change who receives what, before routing.
    fn fold_recipients(&mut self, account_id: Uuid, payload: &AccountEvent) {
        match payload {
            AccountEvent::ContactAdded {
                contact_id,
                name,
                email,
                categories,
            } => {
                self.contacts.entry(account_id).or_default().insert(
                    *contact_id,
                    ContactView {
                        contact_id: *contact_id,
                        name: name.clone(),
                        email: email.clone(),
                        categories: categories.clone(),
                    },
                );
            }
            AccountEvent::ContactRemoved { contact_id } => {
                if let Some(contacts) = self.contacts.get_mut(&account_id) {
                    contacts.remove(contact_id);
                }
            }
            AccountEvent::NotificationOptInsSet {
                user_id,
                categories,
            } => {
                let account = self.opt_ins.entry(account_id).or_default();
                if categories.is_empty() {
                    account.remove(user_id);
                } else {
                    account.insert(*user_id, categories.clone());
                }
            }
            AccountEvent::MemberRemoved { user_id, .. } => {
                if let Some(account) = self.opt_ins.get_mut(&account_id) {
                    account.remove(user_id);
                }
            }
            _ => {}
        }
    }

    /// Appends a notification routed elsewhere (a persisted one), indexing it like a routed one.
    pub(crate) fn push_routed(&mut self, notification: Notification) {
        let index = self.notifications.len();
        self.by_recipient
            .entry(notification.recipient_email.key())
            .or_default()
            .push(index);
        self.by_account
            .entry(notification.account_id)
            .or_default()
            .push(index);
        self.notifications.push(notification);
    }

    /// Takes every notification out, leaving the routing empty.
    pub(crate) fn drain(&mut self) -> Vec<Notification> {
        self.by_recipient.clear();
        self.by_account.clear();
        std::mem::take(&mut self.notifications)
    }

    fn pick(&self, indexes: Option<&Vec<usize>>) -> Vec<&Notification> {
        indexes
            .into_iter()
            .flatten()
            .filter_map(|&i| self.notifications.get(i))
            .collect()
    }

    /// Routes one client account event, reading the read models as they are right after it.
    pub(crate) fn route(
        &mut self,
        event: &StoredEvent,
        account_id: Uuid,
        payload: &AccountEvent,
        accounts: &AccountTree,
        billing: &BillingLedger,
        links: &dyn InvitationLinks,
    ) {
        self.fold_recipients(account_id, payload);
        // An event of an account the log never created has nobody to tell.
        let Some(account) = accounts.account(account_id) else {
            return;
        };
        let ctx = Context {
            event,
            account,
            accounts,
            billing,
            links,
            contacts: self.contacts.get(&account_id),
            opt_ins: self.opt_ins.get(&account_id),
        };
        let drafts = ctx.drafts(payload);
        for draft in drafts {
            self.push(event, account_id, draft);
        }
    }

    /// Forgets an erased user's notifications and its name and email in everyone else's, as a
    /// fold of the log after the erasure routes them: nothing goes to an erased address, and the
    /// user reads as `[erased] <erased@erased.invalid>`.
    pub(crate) fn erase_user(&mut self, user: &UserView) {
        let key = user.email.key();
        let label = user_label_of(user);
        let erased_label = format!(
            "{} <{}>",
            onbehalf_events::personal::ERASED_NAME,
            onbehalf_events::personal::ERASED_EMAIL
        );
        let kept: Vec<Notification> = std::mem::take(&mut self.notifications)
            .into_iter()
            .filter(|n| n.recipient_email.key() != key)
            .map(|mut n| {
                n.subject = n.subject.replace(&label, &erased_label);
                n.body = n.body.replace(&label, &erased_label);
                n
            })
            .collect();
        self.by_recipient.clear();
        self.by_account.clear();
        for (index, notification) in kept.iter().enumerate() {
            self.by_recipient
                .entry(notification.recipient_email.key())
                .or_default()
                .push(index);
            self.by_account
                .entry(notification.account_id)
                .or_default()
                .push(index);
        }
        self.notifications = kept;
    }

    fn push(&mut self, event: &StoredEvent, account_id: Uuid, draft: Draft) {
        // An erased address receives nothing; erasing drops what was routed to it before.
        if draft.recipient.is_erased() {
            return;
        }
        let key = draft.recipient.key();
        let name = format!("{key}/{}", draft.category.as_str());
        let notification = Notification {
            notification_id: Uuid::new_v5(&event.event_id, name.as_bytes()),
            category: draft.category,
            recipient_email: draft.recipient,
            account_id,
            subject: draft.subject,
            body: draft.body,
            action_token: draft.action_token,
            position: event.position,
            created_at: event.occurred_at,
            event_type: event.event_type.clone(),
            kind: draft.kind.to_owned(),
            fields: draft.fields,
        };
        let index = self.notifications.len();
        self.notifications.push(notification);
        self.by_recipient.entry(key).or_default().push(index);
        self.by_account.entry(account_id).or_default().push(index);
    }
}

/// A contact of a client account, as the log last described it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactView {
    /// The contact.
    pub contact_id: Uuid,
    /// The contact's name.
    pub name: Name,
    /// Where its mail goes.
    pub email: Email,
    /// What it receives.
    pub categories: ContactCategories,
}

/// A notification before it receives its id and event fields.
struct Draft {
    category: NotificationCategory,
    recipient: Email,
    subject: String,
    body: String,
    action_token: Option<String>,
    kind: &'static str,
    fields: BTreeMap<String, String>,
}

/// What a notice says, before it is addressed.
struct Message {
    kind: &'static str,
    subject: String,
    body: String,
    fields: Vec<(&'static str, String)>,
}

impl Message {
    fn new(kind: &'static str, subject: String, body: String) -> Self {
        Self {
            kind,
            subject,
            body,
            fields: Vec::new(),
        }
    }

    fn field(mut self, name: &'static str, value: impl ToString) -> Self {
        self.fields.push((name, value.to_string()));
        self
    }
}

/// Everything routing reads, as it is right after the event.
struct Context<'a> {
    event: &'a StoredEvent,
    account: &'a AccountView,
    accounts: &'a AccountTree,
    billing: &'a BillingLedger,
    links: &'a dyn InvitationLinks,
    contacts: Option<&'a BTreeMap<Uuid, ContactView>>,
    opt_ins: Option<&'a BTreeMap<Uuid, ContactCategories>>,
}

impl Context<'_> {
    fn drafts(&self, payload: &AccountEvent) -> Vec<Draft> {
        let name = self.account.name.as_str();
        match payload {
            AccountEvent::UserInvited { invitation_id, .. } => {
                self.invitation(*invitation_id, 0).into_iter().collect()
            }
            AccountEvent::InvitationResent {
                invitation_id,
                generation,
                ..
            } => self
                .invitation(*invitation_id, *generation)
                .into_iter()
                .collect(),

            AccountEvent::ServiceOrdered {
                service_id,
                amount_minor,
                currency,
                ..
            } => {
                let Some(service) = self.billing.service(self.account.account_id, *service_id)
                else {
                    return Vec::new();
                };
                let label = service_label(service);
                let price = format_money(*amount_minor, currency);
                let cycle = service
                    .billing_cycle
                    .as_str()
                    .to_lowercase()
                    .replace('_', "-");
                let subject = format!("New service for {name}: {label}");
                let body = format!(
                    "{label} was ordered for {name}.\nPrice: {price} per cycle, billed {cycle}.\n\
                     Next due date: {}.",
                    service.next_due_date,
                );
                let message = Message::new("service_ordered", subject, body)
                    .field("service", &label)
                    .field("price", price)
                    .field("billing_cycle", cycle)
                    .field("next_due_date", service.next_due_date);
                self.to_account(
                    service_topic(service),
                    NotificationCategory::Service,
                    message,
                )
            }
            AccountEvent::ServiceRenewed {
                service_id,
                next_due_date,
            } => {
                let Some(service) = self.billing.service(self.account.account_id, *service_id)
                else {
                    return Vec::new();
                };
                let label = service_label(service);
                let subject = format!("Service renewed for {name}: {label}");
                let body =
                    format!("{label} of {name} was renewed.\nNext due date: {next_due_date}.");
                let message = Message::new("service_renewed", subject, body)
                    .field("service", &label)
                    .field("next_due_date", next_due_date);
                self.to_account(
                    service_topic(service),
                    NotificationCategory::Service,
                    message,
                )
            }
            AccountEvent::ServiceCancelled { service_id } => {
                let Some(service) = self.billing.service(self.account.account_id, *service_id)
                else {
                    return Vec::new();
                };
                let label = service_label(service);
                let subject = format!("Service cancelled for {name}: {label}");
                let body = format!("{label} of {name} was cancelled and will not be renewed.");
                let message =
                    Message::new("service_cancelled", subject, body).field("service", &label);
                self.to_account(
                    service_topic(service),
                    NotificationCategory::Service,
                    message,
                )
            }
            AccountEvent::ServiceSuspended {
                service_id,
                invoice_id,
            } => {
                let account_id = self.account.account_id;
                let (Some(service), Some(invoice)) = (
                    self.billing.service(account_id, *service_id),
                    self.billing.invoice(account_id, *invoice_id),
                ) else {
                    return Vec::new();
                };
                let label = service_label(service);
                let outstanding = format_money(invoice.outstanding_minor(), &invoice.currency);
                let subject = format!("Service suspended for {name}: {label}");
                let body = format!(
                    "{label} of {name} was suspended because invoice #{} (due {}) is unpaid.\n\
                     Still due: {outstanding}. Paying it brings the service back at once.",
                    invoice.number, invoice.due_date,
                );
                let message = Message::new("service_suspended", subject, body)
                    .field("service", &label)
                    .field("invoice_number", invoice.number)
                    .field("due_date", invoice.due_date)
                    .field("outstanding", outstanding);
                self.to_account(
                    service_topic(service),
                    NotificationCategory::Service,
                    message,
                )
            }
            AccountEvent::ServiceUnsuspended { service_id } => {
                let Some(service) = self.billing.service(self.account.account_id, *service_id)
                else {
                    return Vec::new();
                };
                let label = service_label(service);
                let subject = format!("Service restored for {name}: {label}");
                let body = format!("{label} of {name} runs again: the unpaid invoice was paid.");
                let message =
                    Message::new("service_unsuspended", subject, body).field("service", &label);
                self.to_account(
                    service_topic(service),
                    NotificationCategory::Service,
                    message,
                )
            }

            AccountEvent::InvoiceIssued { invoice_id, .. } => {
                let Some(invoice) = self.billing.invoice(self.account.account_id, *invoice_id)
                else {
                    return Vec::new();
                };
                let subject = format!("Invoice #{} for {name}", invoice.number);
                let lines: Vec<String> = invoice
                    .lines
                    .iter()
                    .map(|line| {
                        format!(
                            "- {}: {}",
                            line.description,
                            format_money(line.amount_minor, &invoice.currency)
                        )
                    })
                    .collect();
                let total = format_money(invoice.total_minor, &invoice.currency);
                let mut body = format!(
                    "Invoice #{} was issued to {name} on {}.\n",
                    invoice.number, invoice.issued_on
                );
                for line in &lines {
                    body.push_str(line);
                    body.push('\n');
                }
                body.push_str(&format!("Total: {total}\nDue date: {}.", invoice.due_date));
                let message = Message::new("invoice_issued", subject, body)
                    .field("invoice_number", invoice.number)
                    .field("issued_on", invoice.issued_on)
                    .field("lines", lines.join("\n"))
                    .field("total", total)
                    .field("due_date", invoice.due_date);
                self.to_account(
                    ContactCategory::Invoice,
                    NotificationCategory::Billing,
                    message,
                )
            }
            AccountEvent::PaymentReceived {
                invoice_id,
                amount_minor,
                reference,
                ..
            } => {
                let Some(invoice) = self.billing.invoice(self.account.account_id, *invoice_id)
                else {
                    return Vec::new();
                };
                let currency = &invoice.currency;
                let amount = format_money(*amount_minor, currency);
                let paid = format_money(invoice.paid_minor, currency);
                let total = format_money(invoice.total_minor, currency);
                let outstanding = format_money(invoice.outstanding_minor(), currency);
                let subject = format!("Payment received for invoice #{}", invoice.number);
                let body = format!(
                    "A payment of {amount} (reference {reference}) was received for invoice #{} \
                     of {name}.\nPaid so far: {paid} of {total}. Still due: {outstanding}.",
                    invoice.number,
                );
                let message = Message::new("payment_received", subject, body)
                    .field("invoice_number", invoice.number)
                    .field("amount", amount)
                    .field("reference", reference)
                    .field("paid", paid)
                    .field("total", total)
                    .field("outstanding", outstanding);
                self.to_account(
                    ContactCategory::Invoice,
                    NotificationCategory::Billing,
                    message,
                )
            }
            AccountEvent::PaymentReminderSent {
                invoice_id,
                days_from_due,
            } => {
                let Some(invoice) = self.billing.invoice(self.account.account_id, *invoice_id)
                else {
                    return Vec::new();
                };
                let outstanding = format_money(invoice.outstanding_minor(), &invoice.currency);
                let when = match days_from_due {
                    d if *d < 0 => format!("is due in {} days", d.unsigned_abs()),
                    0 => "is due today".to_owned(),
                    d => format!("is {d} days overdue"),
                };
                let subject = format!("Reminder: invoice #{} {when}", invoice.number);
                let body = format!(
                    "Invoice #{} of {name} {when} (due date {}).\nStill due: {outstanding}.",
                    invoice.number, invoice.due_date,
                );
                let message = Message::new("payment_reminder", subject, body)
                    .field("invoice_number", invoice.number)
                    .field("when", when)
                    .field("due_date", invoice.due_date)
                    .field("outstanding", outstanding);
                self.to_account(
                    ContactCategory::Invoice,
                    NotificationCategory::Billing,
                    message,
                )
            }

            AccountEvent::InvitationAccepted {
                invitation_id,
                user_id,
                permissions,
            } => {
                let who = self.user_label(*user_id);
                let described = describe_permissions(permissions);
                let subject = format!("{who} joined {name}");
                let body = format!(
                    "{who} accepted an invitation and is now a member of {name} with {described}."
                );
                // The user who sent the invitation hears of the answer even when ownership has
                // moved on since.
                let mut recipients = vec![self.account.owner_user_id, *user_id];
                recipients.extend(
                    self.accounts
                        .invitation(
                            self.account.account_id,
                            *invitation_id,
                            self.event.occurred_at,
                        )
                        .map(|i| i.invited_by),
                );
                let message = Message::new("member_joined", subject, body)
                    .field("member", who)
                    .field("permissions", described);
                self.security(&recipients, message)
            }
            AccountEvent::MemberRemoved { user_id, reason } => {
                let who = self.user_label(*user_id);
                let how = match reason {
                    RemovalReason::Revoked => "was removed by the owner",
                    RemovalReason::Left => "left the account",
                };
                let subject = format!("{who} no longer has access to {name}");
                let body = format!("{who} {how} and can no longer act on behalf of {name}.");
                let message = Message::new("member_removed", subject, body)
                    .field("member", who)
                    .field("how", how);
                self.security(&[self.account.owner_user_id, *user_id], message)
            }
            AccountEvent::PermissionsGranted {
                user_id,
                granted,
                permissions,
            } => {
                let who = self.user_label(*user_id);
                let subject = format!("Permissions of {who} on {name} changed");
                let body = format!(
                    "{who} was granted {} on {name} and now holds {}.",
                    describe_permissions(granted),
                    describe_permissions(permissions)
                );
                let message = Message::new("permissions_granted", subject, body)
                    .field("member", who)
                    .field("granted", describe_permissions(granted))
                    .field("permissions", describe_permissions(permissions));
                self.security(&[self.account.owner_user_id, *user_id], message)
            }
            AccountEvent::PermissionsRevoked {
                user_id,
                revoked,
                permissions,
            } => {
                let who = self.user_label(*user_id);
                let subject = format!("Permissions of {who} on {name} changed");
                let body = format!(
                    "{who} lost {} on {name} and now holds {}.",
                    describe_permissions(revoked),
                    describe_permissions(permissions)
                );
                let message = Message::new("permissions_revoked", subject, body)
                    .field("member", who)
                    .field("revoked", describe_permissions(revoked))
                    .field("permissions", describe_permissions(permissions));
                self.security(&[self.account.owner_user_id, *user_id], message)
            }
            AccountEvent::OwnershipTransferred {
                from_user_id,
                to_user_id,
            } => {
                let from = self.user_label(*from_user_id);
                let to = self.user_label(*to_user_id);
                let subject = format!("Ownership of {name} transferred");
                let body = format!(
                    "Ownership of {name} moved from {from} to {to}.\n\
                     {from} stays a member with full access."
                );
                let message = Message::new("ownership_transferred", subject, body)
                    .field("from", from)
                    .field("to", to);
                // The former owner is the owner "as at that moment"; the new owner is the
                // affected user.
                self.security(&[*from_user_id, *to_user_id], message)
            }

            // Everything else (profile and contact changes, settled or cancelled invoices,
            // nameservers, events this routing does not mail) reaches nobody.
            _ => Vec::new(),
        }
    }

    /// The invitation email of one send; the token is recomputed, never read from the log.
    fn invitation(&self, invitation_id: Uuid, generation: u32) -> Option<Draft> {
        let account_id = self.account.account_id;
        let invitation =
            self.accounts
                .invitation(account_id, invitation_id, self.event.occurred_at)?;
        let token = self.links.token(account_id, invitation_id, generation);
        let url = self.links.accept_url(&token);
        let name = self.account.name.as_str();
        let inviter = self.user_label(invitation.invited_by);
        let permissions = describe_permissions(&invitation.permissions);
        let expires_at = invitation
            .expires_at
            .format("%Y-%m-%d %H:%M UTC")
            .to_string();
        let subject = format!("Invitation to manage {name}");
        let body = format!(
            "{inviter} invited you to act on behalf of {name} with {permissions}.\n\
             Accept the invitation: {url}\n\
             The invitation expires at {expires_at}.",
        );
        let message = Message::new("invitation", subject, body)
            .field("inviter", inviter)
            .field("permissions", permissions)
            .field("accept_url", url)
            .field("expires_at", expires_at);
        let mut draft = self.draft(NotificationCategory::Invitation, invitation.email, &message);
        draft.action_token = Some(token);
        Some(draft)
    }

    fn draft(&self, category: NotificationCategory, recipient: Email, message: &Message) -> Draft {
        let mut fields: BTreeMap<String, String> = message
            .fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        fields.insert("account_name".into(), self.account.name.to_string());
        fields.insert("recipient_email".into(), recipient.to_string());
        Draft {
            category,
            recipient,
            subject: message.subject.clone(),
            body: message.body.clone(),
            action_token: None,
            kind: message.kind,
            fields,
        }
    }

    /// A billing or service notice for the account: its billing email as it is at this moment,
    /// every contact receiving `topic`, and every owner or member who opted into `topic` and
    /// still holds the permission that shows the same in the client area. One notice per
    /// distinct email.
    fn to_account(
        &self,
        topic: ContactCategory,
        category: NotificationCategory,
        message: Message,
    ) -> Vec<Draft> {
        let mut recipients = vec![self.account.email.clone()];
        recipients.extend(
            self.contacts
                .into_iter()
                .flat_map(|c| c.values())
                .filter(|c| c.categories.contains(&topic))
                .map(|c| c.email.clone()),
        );
        for (user_id, categories) in self.opt_ins.into_iter().flatten() {
            if !categories.contains(&topic) || !self.holds(*user_id, topic) {
                continue;
            }
            if let Some(user) = self.accounts.user(*user_id) {
                recipients.push(user.email.clone());
            }
        }
        let mut drafts: Vec<Draft> = Vec::new();
        for recipient in recipients {
            if drafts.iter().any(|d| d.recipient.key() == recipient.key()) {
                continue;
            }
            drafts.push(self.draft(category, recipient, &message));
        }
        drafts
    }

    /// Whether `user_id` is the owner, or a member holding what `topic` needs, right now.
    fn holds(&self, user_id: Uuid, topic: ContactCategory) -> bool {
        if self.account.owner_user_id == user_id {
            return true;
        }
        match self.account.members.get(&user_id) {
            Some(held) => topic.required_permission().is_none_or(|p| held.contains(p)),
            None => false,
        }
    }

    /// One security notice per distinct recipient among `users`, in the given order.
    fn security(&self, users: &[Uuid], message: Message) -> Vec<Draft> {
        let mut drafts: Vec<Draft> = Vec::new();
        for user in users.iter().filter_map(|id| self.accounts.user(*id)) {
            if drafts.iter().any(|d| d.recipient.key() == user.email.key()) {
                continue;
            }
            drafts.push(self.draft(NotificationCategory::Security, user.email.clone(), &message));
        }
        drafts
    }

    /// `Display Name <email>` of a user, or its id when its registration is not in the log.
    fn user_label(&self, user_id: Uuid) -> String {
        match self.accounts.user(user_id) {
            Some(UserView {
                display_name,
                email,
                ..
            }) => format!("{display_name} <{email}>"),
            None => format!("user {user_id}"),
        }
    }
}

/// The contact category of a service's notices: domains apart from hosting.
fn service_topic(service: &ServiceView) -> ContactCategory {
    match service.kind {
        ProductKind::Domain => ContactCategory::Domain,
        ProductKind::Hosting => ContactCategory::Product,
    }
}

/// `Starter Hosting (abc.co.tz)`, or the product name alone for a service without a domain.
fn service_label(service: &ServiceView) -> String {
    match &service.domain {
        Some(domain) => format!("{} ({domain})", service.product_name),
        None => service.product_name.to_string(),
    }
}

/// `Display Name <email>`, the label notifications give a registered user.
fn user_label_of(user: &UserView) -> String {
    format!("{} <{}>", user.display_name, user.email)
}
