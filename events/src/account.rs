//! Events of a client account's stream: profile, membership, invitations, services, invoices.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::contact::ContactCategories;
use crate::values::{BillingCycle, Currency, DomainName, Email, Name, ProductKind};
use crate::{EventSchema, PermissionSet};

/// Why a member left a client account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemovalReason {
    /// The owner removed the member's access.
    Revoked,
    /// The member left by itself.
    Left,
}

/// What an invoice bills for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InvoiceKind {
    /// The first cycle of a new service.
    Order,
    /// The cycle of a service starting at `period_start`.
    Renewal {
        /// The first day of the renewed cycle (the service's due date when it was issued).
        period_start: NaiveDate,
    },
}

/// One line of an invoice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLine {
    /// What is billed, e.g. `Starter Hosting - abc.co.tz (2026-03-01 - 2026-03-31)`.
    pub description: String,
    /// The line's amount in minor units.
    pub amount_minor: i64,
}

/// Why a control panel did not open a session, as the log records it: a kind, never the panel's
/// own words, the session URL or a credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PanelFailure {
    /// The panel's server could not be reached (name resolution, connection refused or reset).
    Unreachable,
    /// The panel did not answer in time.
    Timeout,
    /// The TLS handshake failed, e.g. an untrusted or mismatched certificate.
    Tls,
    /// The panel refused the provider's API credentials.
    Unauthorized,
    /// The panel answered with an HTTP error status.
    HttpStatus,
    /// The panel's answer could not be understood.
    InvalidResponse,
    /// The panel understood the request and declined it (e.g. no such panel user).
    Refused,
}

impl PanelFailure {
    /// The kind as a lowercase word, as serialised: `unreachable`, `timeout`, `tls`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            PanelFailure::Unreachable => "unreachable",
            PanelFailure::Timeout => "timeout",
            PanelFailure::Tls => "tls",
            PanelFailure::Unauthorized => "unauthorized",
            PanelFailure::HttpStatus => "http_status",
            PanelFailure::InvalidResponse => "invalid_response",
            PanelFailure::Refused => "refused",
        }
    }
}

/// What happened to a client account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AccountEvent {
    /// A client account was created; its creator is the owner.
    AccountCreated {
        /// The account's id.
        account_id: Uuid,
        /// Personal: the account's (company) name.
        name: Name,
        /// Personal: the billing email that receives invoices and service notices.
        email: Email,
        /// The owner.
        owner_user_id: Uuid,
    },
    /// The account's profile changed.
    AccountProfileUpdated {
        /// Personal: the new name.
        name: Name,
        /// Personal: the new billing email.
        email: Email,
    },
    /// The owner invited someone by email.
    UserInvited {
        /// The invitation's id.
        invitation_id: Uuid,
        /// Personal: the invitee's email.
        email: Email,
        /// The permissions the invitee receives on acceptance.
        permissions: PermissionSet,
        /// When the invitation stops being acceptable.
        expires_at: DateTime<Utc>,
        /// The user who sent the invitation (the owner at that moment). Added in version 2;
        /// version 1 events receive it from their envelope's actor when they are upcast.
        invited_by: Uuid,
    },
    /// The owner sent an invitation again; tokens of earlier sends no longer work.
    InvitationResent {
        /// The invitation.
        invitation_id: Uuid,
        /// How many times it has been sent before this one (1 for the first resend).
        generation: u32,
        /// The new expiry.
        expires_at: DateTime<Utc>,
    },
    /// The owner withdrew an invitation.
    InvitationCancelled {
        /// The invitation.
        invitation_id: Uuid,
    },
    /// A user accepted an invitation and became a member.
    InvitationAccepted {
        /// The invitation.
        invitation_id: Uuid,
        /// The new member.
        user_id: Uuid,
        /// The member's permissions.
        permissions: PermissionSet,
    },
    /// A user declined an invitation.
    InvitationDeclined {
        /// The invitation.
        invitation_id: Uuid,
        /// Who declined.
        user_id: Uuid,
    },
    /// A member received more permissions.
    PermissionsGranted {
        /// The member.
        user_id: Uuid,
        /// The permissions added.
        granted: PermissionSet,
        /// The member's permissions afterwards.
        permissions: PermissionSet,
    },
    /// A member lost some permissions.
    PermissionsRevoked {
        /// The member.
        user_id: Uuid,
        /// The permissions removed.
        revoked: PermissionSet,
        /// The member's permissions afterwards.
        permissions: PermissionSet,
    },
    /// A member's access ended.
    MemberRemoved {
        /// The former member.
        user_id: Uuid,
        /// Removed by the owner, or left.
        reason: RemovalReason,
    },
    /// Ownership moved to a member; the former owner stays a member with full access.
    OwnershipTransferred {
        /// The former owner.
        from_user_id: Uuid,
        /// The new owner.
        to_user_id: Uuid,
    },
    /// A service was ordered for the account.
    ServiceOrdered {
        /// The new service.
        service_id: Uuid,
        /// The catalogue product.
        product_id: Uuid,
        /// The product's name at the time of the order.
        product_name: Name,
        /// Hosting or domain.
        kind: ProductKind,
        /// The domain the service is for.
        domain: Option<DomainName>,
        /// How the service is billed.
        billing_cycle: BillingCycle,
        /// The catalogue price of one cycle at the time of the order.
        amount_minor: i64,
        /// The price's currency.
        currency: Currency,
        /// The order date.
        ordered_on: NaiveDate,
        /// The date the next cycle starts.
        next_due_date: NaiveDate,
    },
    /// An invoice was issued to the account.
    InvoiceIssued {
        /// The invoice.
        invoice_id: Uuid,
        /// The service billed.
        service_id: Uuid,
        /// First cycle or renewal.
        kind: InvoiceKind,
        /// The lines.
        lines: Vec<InvoiceLine>,
        /// Sum of the lines.
        total_minor: i64,
        /// Currency of every amount.
        currency: Currency,
        /// The issue date.
        issued_on: NaiveDate,
        /// The due date.
        due_date: NaiveDate,
    },
    /// A payment was recorded against an invoice.
    PaymentReceived {
        /// The invoice.
        invoice_id: Uuid,
        /// The payment.
        payment_id: Uuid,
        /// The amount in minor units.
        amount_minor: i64,
        /// The payer's or gateway's reference.
        reference: String,
    },
    /// An invoice was paid in full.
    InvoicePaid {
        /// The invoice.
        invoice_id: Uuid,
    },
    /// An unpaid invoice was cancelled.
    InvoiceCancelled {
        /// The invoice.
        invoice_id: Uuid,
    },
    /// A renewal was paid: the service runs for one more cycle.
    ServiceRenewed {
        /// The service.
        service_id: Uuid,
        /// The new next due date.
        next_due_date: NaiveDate,
    },
    /// A service was cancelled.
    ServiceCancelled {
        /// The service.
        service_id: Uuid,
    },
    /// A domain's nameservers changed.
    NameserversUpdated {
        /// The domain service.
        service_id: Uuid,
        /// The nameservers, in order.
        nameservers: Vec<DomainName>,
    },
    /// The provisioning system placed a hosting service on a control-panel server.
    ServiceActivated {
        /// The service.
        service_id: Uuid,
        /// The name of the server, as the provider's panel configuration knows it.
        server: String,
        /// The service's user name on that panel.
        panel_username: String,
    },
    /// The actor opened a session in the control panel of a service. Neither the session URL
    /// nor anything else secret is recorded.
    ServiceLoginOpened {
        /// The service.
        service_id: Uuid,
        /// The server whose panel opened the session.
        server: String,
    },
    /// The actor was allowed to open the control panel of a service, but the panel did not
    /// open a session.
    ServiceLoginFailed {
        /// The service.
        service_id: Uuid,
        /// The server whose panel was asked.
        server: String,
        /// Why, as a kind.
        failure: PanelFailure,
    },
    /// A contact was added to the account: someone who receives the account's mail of the
    /// given categories without being a user.
    ContactAdded {
        /// The contact.
        contact_id: Uuid,
        /// Personal: the contact's name.
        name: Name,
        /// Personal: the contact's email.
        email: Email,
        /// What the contact receives.
        categories: ContactCategories,
    },
    /// A contact was removed; it receives nothing more.
    ContactRemoved {
        /// The contact.
        contact_id: Uuid,
    },
    /// A member (or the owner) chose which of the account's mail it receives, replacing its
    /// earlier choice; security notices do not depend on it.
    NotificationOptInsSet {
        /// The member.
        user_id: Uuid,
        /// The categories it receives from now on (empty: none).
        categories: ContactCategories,
    },
    /// A reminder of an unpaid invoice was sent, some days before or after its due date.
    PaymentReminderSent {
        /// The invoice.
        invoice_id: Uuid,
        /// Days from the due date the reminder is for: negative before it, positive after.
        days_from_due: i32,
    },
    /// A service was suspended because an invoice of it stayed unpaid past its due date.
    ServiceSuspended {
        /// The service.
        service_id: Uuid,
        /// The unpaid invoice.
        invoice_id: Uuid,
    },
    /// A suspended service runs again: the invoice that suspended it was paid.
    ServiceUnsuspended {
        /// The service.
        service_id: Uuid,
    },
}

impl EventSchema for AccountEvent {
    fn event_type(&self) -> &'static str {
        match self {
            AccountEvent::AccountCreated { .. } => "AccountCreated",
            AccountEvent::AccountProfileUpdated { .. } => "AccountProfileUpdated",
            AccountEvent::UserInvited { .. } => "UserInvited",
            AccountEvent::InvitationResent { .. } => "InvitationResent",
            AccountEvent::InvitationCancelled { .. } => "InvitationCancelled",
            AccountEvent::InvitationAccepted { .. } => "InvitationAccepted",
            AccountEvent::InvitationDeclined { .. } => "InvitationDeclined",
            AccountEvent::PermissionsGranted { .. } => "PermissionsGranted",
            AccountEvent::PermissionsRevoked { .. } => "PermissionsRevoked",
            AccountEvent::MemberRemoved { .. } => "MemberRemoved",
            AccountEvent::OwnershipTransferred { .. } => "OwnershipTransferred",
            AccountEvent::ServiceOrdered { .. } => "ServiceOrdered",
            AccountEvent::InvoiceIssued { .. } => "InvoiceIssued",
            AccountEvent::PaymentReceived { .. } => "PaymentReceived",
            AccountEvent::InvoicePaid { .. } => "InvoicePaid",
            AccountEvent::InvoiceCancelled { .. } => "InvoiceCancelled",
            AccountEvent::ServiceRenewed { .. } => "ServiceRenewed",
            AccountEvent::ServiceCancelled { .. } => "ServiceCancelled",
            AccountEvent::NameserversUpdated { .. } => "NameserversUpdated",
            AccountEvent::ServiceActivated { .. } => "ServiceActivated",
            AccountEvent::ServiceLoginOpened { .. } => "ServiceLoginOpened",
            AccountEvent::ServiceLoginFailed { .. } => "ServiceLoginFailed",
            AccountEvent::ContactAdded { .. } => "ContactAdded",
            AccountEvent::ContactRemoved { .. } => "ContactRemoved",
            AccountEvent::NotificationOptInsSet { .. } => "NotificationOptInsSet",
            AccountEvent::PaymentReminderSent { .. } => "PaymentReminderSent",
            AccountEvent::ServiceSuspended { .. } => "ServiceSuspended",
            AccountEvent::ServiceUnsuspended { .. } => "ServiceUnsuspended",
        }
    }

    fn event_version(&self) -> &'static str {
        match self {
            // Version 2 added `invited_by`; see `crate::upcast` for the step from version 1.
            AccountEvent::UserInvited { .. } => "2",
            _ => "1",
        }
    }

    fn personal_fields(&self) -> &'static [&'static str] {
        match self {
            AccountEvent::AccountCreated { .. } | AccountEvent::AccountProfileUpdated { .. } => {
                &["name", "email"]
            }
            AccountEvent::UserInvited { .. } => &["email"],
            AccountEvent::ContactAdded { .. } => &["name", "email"],
            _ => &[],
        }
    }

    fn personal_subject(&self) -> crate::personal::DataSubject {
        match self {
            // The invitee may not be a user yet: its email is sealed under the key of the
            // email itself, which erasing the user later registered with it deletes.
            AccountEvent::UserInvited { email, .. } => {
                crate::personal::DataSubject::Email(email.clone())
            }
            _ => crate::personal::DataSubject::OwnStream,
        }
    }
}

impl cqrs_es::DomainEvent for AccountEvent {
    fn event_type(&self) -> String {
        EventSchema::event_type(self).to_owned()
    }

    fn event_version(&self) -> String {
        EventSchema::event_version(self).to_owned()
    }
}
