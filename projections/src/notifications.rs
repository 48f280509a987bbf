//! Notification routing: which notification-worthy event reaches whom, as records a mailer can
//! deliver exactly once.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use onbehalf_events::account::RemovalReason;
use onbehalf_events::values::Email;
use onbehalf_events::{AccountEvent, StoredEvent};
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
            .finish()
    }
}

/// Every routed notification, in position order, with indexes by recipient and account.
///
/// Routing rules: invitations go to the invitee, naming who sent them; orders, invoices,
/// payments, renewals and cancellations go to the account's billing email as it was at that
/// moment; membership and permission changes go to the owner and the affected user, once each,
/// and an acceptance also to the user who sent the invitation. Members of a client account
/// receive nothing else of it.
// LIMITATION: account contacts and members' opt-ins are not in the log yet, so billing and
// service notices go to the billing email only.
#[derive(Clone, Debug, Default)]
pub struct NotificationRouting {
    notifications: Vec<Notification>,
    by_recipient: BTreeMap<String, Vec<usize>>,
    by_account: BTreeMap<Uuid, Vec<usize>>,
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
        };
        for draft in ctx.drafts(payload) {
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
        };
        let index = self.notifications.len();
        self.notifications.push(notification);
        self.by_recipient.entry(key).or_default().push(index);
        self.by_account.entry(account_id).or_default().push(index);
    }
}

/// A notification before it receives its id and event fields.
struct Draft {
    category: NotificationCategory,
    recipient: Email,
    subject: String,
    body: String,
    action_token: Option<String>,
}

/// Everything routing reads, as it is right after the event.
struct Context<'a> {
    event: &'a StoredEvent,
    account: &'a AccountView,
    accounts: &'a AccountTree,
    billing: &'a BillingLedger,
    links: &'a dyn InvitationLinks,
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
                let subject = format!("New service for {name}: {}", service_label(service));
                let body = format!(
                    "{} was ordered for {name}.\nPrice: {} per cycle, billed {}.\n\
                     Next due date: {}.",
                    service_label(service),
                    format_money(*amount_minor, currency),
                    service
                        .billing_cycle
                        .as_str()
                        .to_lowercase()
                        .replace('_', "-"),
                    service.next_due_date,
                );
                vec![self.to_billing_email(NotificationCategory::Service, subject, body)]
            }
            AccountEvent::ServiceRenewed {
                service_id,
                next_due_date,
            } => {
                let Some(service) = self.billing.service(self.account.account_id, *service_id)
                else {
                    return Vec::new();
                };
                let subject = format!("Service renewed for {name}: {}", service_label(service));
                let body = format!(
                    "{} of {name} was renewed.\nNext due date: {next_due_date}.",
                    service_label(service),
                );
                vec![self.to_billing_email(NotificationCategory::Service, subject, body)]
            }
            AccountEvent::ServiceCancelled { service_id } => {
                let Some(service) = self.billing.service(self.account.account_id, *service_id)
                else {
                    return Vec::new();
                };
                let subject = format!("Service cancelled for {name}: {}", service_label(service));
                let body = format!(
                    "{} of {name} was cancelled and will not be renewed.",
                    service_label(service),
                );
                vec![self.to_billing_email(NotificationCategory::Service, subject, body)]
            }

            AccountEvent::InvoiceIssued { invoice_id, .. } => {
                let Some(invoice) = self.billing.invoice(self.account.account_id, *invoice_id)
                else {
                    return Vec::new();
                };
                let subject = format!("Invoice #{} for {name}", invoice.number);
                let mut body = format!(
                    "Invoice #{} was issued to {name} on {}.\n",
                    invoice.number, invoice.issued_on
                );
                for line in &invoice.lines {
                    body.push_str(&format!(
                        "- {}: {}\n",
                        line.description,
                        format_money(line.amount_minor, &invoice.currency)
                    ));
                }
                body.push_str(&format!(
                    "Total: {}\nDue date: {}.",
                    format_money(invoice.total_minor, &invoice.currency),
                    invoice.due_date
                ));
                vec![self.to_billing_email(NotificationCategory::Billing, subject, body)]
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
                let subject = format!("Payment received for invoice #{}", invoice.number);
                let body = format!(
                    "A payment of {} (reference {reference}) was received for invoice #{} of \
                     {name}.\nPaid so far: {} of {}. Still due: {}.",
                    format_money(*amount_minor, currency),
                    invoice.number,
                    format_money(invoice.paid_minor, currency),
                    format_money(invoice.total_minor, currency),
                    format_money(invoice.outstanding_minor(), currency),
                );
                vec![self.to_billing_email(NotificationCategory::Billing, subject, body)]
            }

            AccountEvent::InvitationAccepted {
                invitation_id,
                user_id,
                permissions,
            } => {
                let who = self.user_label(*user_id);
                let subject = format!("{who} joined {name}");
                let body = format!(
                    "{who} accepted an invitation and is now a member of {name} with {}.",
                    describe_permissions(permissions)
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
                self.security(&recipients, subject, body)
            }
            AccountEvent::MemberRemoved { user_id, reason } => {
                let who = self.user_label(*user_id);
                let how = match reason {
                    RemovalReason::Revoked => "was removed by the owner",
                    RemovalReason::Left => "left the account",
                };
                let subject = format!("{who} no longer has access to {name}");
                let body = format!("{who} {how} and can no longer act on behalf of {name}.");
                self.security(&[self.account.owner_user_id, *user_id], subject, body)
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
                self.security(&[self.account.owner_user_id, *user_id], subject, body)
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
                self.security(&[self.account.owner_user_id, *user_id], subject, body)
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
                // The former owner is the owner "as at that moment"; the new owner is the
                // affected user.
                self.security(&[*from_user_id, *to_user_id], subject, body)
            }

            AccountEvent::AccountCreated { .. }
            | AccountEvent::AccountProfileUpdated { .. }
            | AccountEvent::InvitationCancelled { .. }
            | AccountEvent::InvitationDeclined { .. }
            | AccountEvent::InvoicePaid { .. }
            | AccountEvent::InvoiceCancelled { .. }
            | AccountEvent::NameserversUpdated { .. } => Vec::new(),
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
        let subject = format!("Invitation to manage {name}");
        let body = format!(
            "{} invited you to act on behalf of {name} with {}.\n\
             Accept the invitation: {url}\n\
             The invitation expires at {}.",
            self.user_label(invitation.invited_by),
            describe_permissions(&invitation.permissions),
            invitation.expires_at.format("%Y-%m-%d %H:%M UTC"),
        );
        Some(Draft {
            category: NotificationCategory::Invitation,
            recipient: invitation.email,
            subject,
            body,
            action_token: Some(token),
        })
    }

    fn to_billing_email(
        &self,
        category: NotificationCategory,
        subject: String,
        body: String,
    ) -> Draft {
        Draft {
            category,
            recipient: self.account.email.clone(),
            subject,
            body,
            action_token: None,
        }
    }

    /// One security notice per distinct recipient among `users`, in the given order.
    fn security(&self, users: &[Uuid], subject: String, body: String) -> Vec<Draft> {
        let mut drafts: Vec<Draft> = Vec::new();
        for user in users.iter().filter_map(|id| self.accounts.user(*id)) {
            if drafts.iter().any(|d| d.recipient.key() == user.email.key()) {
                continue;
            }
            drafts.push(Draft {
                category: NotificationCategory::Security,
                recipient: user.email.clone(),
                subject: subject.clone(),
                body: body.clone(),
                action_token: None,
            });
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
