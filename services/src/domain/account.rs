//! The `ClientAccount` aggregate: the consistency boundary for access and billing.
//!
//! Membership, invitations, services and invoices of one client account live in one stream, so
//! every decision about them is made on the account's own current state (a revoked member can
//! never act again, however far the read models lag).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use onbehalf_events::account::{InvoiceKind, InvoiceLine, PanelFailure, RemovalReason};
use onbehalf_events::values::{BillingCycle, Currency, DomainName, Email, Name, ProductKind};
use onbehalf_events::{AccountEvent, Actor, ContactCategories, Permission, PermissionSet, Product};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Command, CommandContext, DomainError};

/// Commands on a client account.
#[derive(Clone, Debug, PartialEq)]
pub enum AccountCommand {
    /// Create the account with the actor as owner.
    Create {
        /// The new account's id.
        account_id: Uuid,
        /// The account's name.
        name: Name,
        /// The billing email.
        email: Email,
    },
    /// Change name and billing email. Needs PROFILE.
    UpdateProfile {
        /// The new name.
        name: Name,
        /// The new billing email.
        email: Email,
    },
    /// Invite an email. Owner only.
    Invite {
        /// The new invitation's id.
        invitation_id: Uuid,
        /// The invitee's email.
        email: Email,
        /// The user registered with that email, if any (to refuse inviting a member again).
        invitee_user_id: Option<Uuid>,
        /// The permissions granted on acceptance.
        permissions: PermissionSet,
        /// How long the invitation stays acceptable.
        ttl: Duration,
    },
    /// Send a pending invitation again. Owner only.
    ResendInvitation {
        /// The invitation.
        invitation_id: Uuid,
        /// How long the invitation stays acceptable from now.
        ttl: Duration,
    },
    /// Withdraw a pending invitation. Owner only.
    CancelInvitation {
        /// The invitation.
        invitation_id: Uuid,
    },
    /// Accept an invitation; the actor becomes a member.
    AcceptInvitation {
        /// The invitation named by the token.
        invitation_id: Uuid,
        /// The send generation named by the token.
        generation: u32,
    },
    /// Decline an invitation.
    DeclineInvitation {
        /// The invitation named by the token.
        invitation_id: Uuid,
        /// The send generation named by the token.
        generation: u32,
    },
    /// Add permissions to a member. Owner only.
    GrantPermissions {
        /// The member.
        user_id: Uuid,
        /// The permissions to add.
        permissions: PermissionSet,
    },
    /// Remove permissions from a member. Owner only.
    RevokePermissions {
        /// The member.
        user_id: Uuid,
        /// The permissions to remove.
        permissions: PermissionSet,
    },
    /// Remove a member. Owner only.
    RevokeAccess {
        /// The member.
        user_id: Uuid,
    },
    /// The actor leaves the account.
    Leave,
    /// Make a member the owner. Owner only.
    TransferOwnership {
        /// The member who becomes owner.
        new_owner_user_id: Uuid,
    },
    /// Order a product at its catalogue price. Needs ORDERS.
    OrderService {
        /// The new service's id.
        service_id: Uuid,
        /// The first invoice's id.
        invoice_id: Uuid,
        /// The product as the catalogue holds it now.
        product: Product,
        /// The domain, required for domain products.
        domain: Option<DomainName>,
        /// The billing cycle.
        billing_cycle: BillingCycle,
    },
    /// Issue the renewal invoice of the next cycle, or find the one already issued. Needs ORDERS.
    RenewService {
        /// The service.
        service_id: Uuid,
        /// The id to give a new invoice.
        invoice_id: Uuid,
    },
    /// Cancel a service and its unpaid invoices. Needs ORDERS.
    CancelService {
        /// The service.
        service_id: Uuid,
    },
    /// Set a domain's nameservers. Needs MANAGE_DOMAINS.
    UpdateNameservers {
        /// The domain service.
        service_id: Uuid,
        /// The nameservers.
        nameservers: Vec<DomainName>,
    },
    /// Record a payment. Needs INVOICES, or a billing service.
    PayInvoice {
        /// The invoice.
        invoice_id: Uuid,
        /// The new payment's id.
        payment_id: Uuid,
        /// The amount in minor units.
        amount_minor: i64,
        /// The payer's reference.
        reference: String,
    },
    /// Place a hosting service on a control-panel server. Provisioning services only.
    ActivateService {
        /// The hosting service.
        service_id: Uuid,
        /// The server's configured name.
        server: String,
        /// The service's user name on that server's panel.
        panel_username: String,
    },
    /// Record that the actor opened the control panel of a service, or that the panel failed
    /// to open it. Needs PRODUCTS and PRODUCT_SSO; provider staff may too.
    RecordServiceLogin {
        /// The hosting service.
        service_id: Uuid,
        /// Why the panel did not open a session; `None` when it did.
        failure: Option<PanelFailure>,
    },
    /// Add a contact who receives the account's mail of some categories. Needs CONTACTS.
    AddContact {
        /// The new contact's id.
        contact_id: Uuid,
        /// The contact's name.
        name: Name,
        /// The contact's email.
        email: Email,
        /// What the contact receives; at least one category.
        categories: ContactCategories,
    },
    /// Remove a contact. Needs CONTACTS.
    RemoveContact {
        /// The contact.
        contact_id: Uuid,
    },
    /// Choose which of the account's mail the actor (owner or member) receives.
    SetNotificationOptIns {
        /// The categories; each needs the permission that shows the same in the client area.
        categories: ContactCategories,
    },
    /// Issue the renewal invoice of the cycle starting at `period_start`, once the date is at
    /// most `lead_days` away. The system actor only (the scheduler).
    IssueRenewal {
        /// The service.
        service_id: Uuid,
        /// The cycle the scheduler saw due; nothing happens unless it is still the next one.
        period_start: NaiveDate,
        /// The id to give a new invoice.
        invoice_id: Uuid,
        /// How many days before the due date renewals are issued.
        lead_days: u32,
    },
    /// Remind the account of an unpaid invoice. The system actor only.
    RemindInvoice {
        /// The invoice.
        invoice_id: Uuid,
        /// Days from the due date: negative before it, zero or positive on or after it.
        days_from_due: i32,
    },
    /// Suspend a service whose invoice stayed unpaid `grace_days` past its due date. The system
    /// actor only.
    SuspendService {
        /// The service.
        service_id: Uuid,
        /// The unpaid invoice.
        invoice_id: Uuid,
        /// Days after the due date a service may stay unpaid.
        grace_days: u32,
    },
}

impl AccountCommand {
    /// The permission a member needs for this command; `None` for owner-only or self-service
    /// commands.
    pub fn required_permission(&self) -> Option<Permission> {
        match self {
            AccountCommand::UpdateProfile { .. } => Some(Permission::Profile),
            AccountCommand::OrderService { .. }
            | AccountCommand::RenewService { .. }
            | AccountCommand::CancelService { .. } => Some(Permission::Orders),
            AccountCommand::UpdateNameservers { .. } => Some(Permission::ManageDomains),
            AccountCommand::PayInvoice { .. } => Some(Permission::Invoices),
            AccountCommand::RecordServiceLogin { .. } => Some(Permission::ProductSso),
            AccountCommand::AddContact { .. } | AccountCommand::RemoveContact { .. } => {
                Some(Permission::Contacts)
            }
            _ => None,
        }
    }
}

/// The state of an invitation on the write side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InvitationStatus {
    /// Waiting for an answer (unless expired).
    Pending,
    /// Accepted.
    Accepted,
    /// Declined.
    Declined,
    /// Cancelled by the owner.
    Cancelled,
}

/// An invitation on the write side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InvitationState {
    /// The invitee's email.
    pub email: Email,
    /// The permissions granted on acceptance.
    pub permissions: PermissionSet,
    /// When it stops being acceptable.
    pub expires_at: DateTime<Utc>,
    /// How many times it was resent; only the latest generation's token works.
    pub generation: u32,
    /// Where it stands.
    pub status: InvitationStatus,
    /// The user who sent it.
    pub invited_by: Uuid,
}

impl InvitationState {
    fn is_open(&self, now: DateTime<Utc>) -> bool {
        self.status == InvitationStatus::Pending && now < self.expires_at
    }
}

/// A service on the write side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceState {
    /// The product's name at order time.
    pub product_name: Name,
    /// Hosting or domain.
    pub kind: ProductKind,
    /// The domain.
    pub domain: Option<DomainName>,
    /// How it is billed.
    pub billing_cycle: BillingCycle,
    /// Price of one cycle.
    pub amount_minor: i64,
    /// Currency of the price.
    pub currency: Currency,
    /// The order date, from which every due date is counted.
    pub ordered_on: NaiveDate,
    /// How many cycles are paid for or billed at order (the first is the order's).
    pub periods: u32,
    /// When the next cycle starts.
    pub next_due_date: NaiveDate,
    /// Whether it was cancelled.
    pub cancelled: bool,
    /// Renewal invoices by the first day of the cycle they bill.
    pub renewals: BTreeMap<NaiveDate, Uuid>,
    /// The unpaid invoice for which the service is suspended; `None` while it runs.
    #[serde(default)]
    pub suspended_for: Option<Uuid>,
}

impl ServiceState {
    /// The end of the cycle that starts at the next due date, counted from the order date.
    pub fn next_period_end(&self) -> NaiveDate {
        self.billing_cycle.after(self.ordered_on, self.periods + 1)
    }
}

/// The status of an invoice on the write side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InvoiceStatus {
    /// Not yet paid in full.
    Unpaid,
    /// Paid in full.
    Paid,
    /// Cancelled unpaid.
    Cancelled,
}

/// An invoice on the write side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InvoiceState {
    /// The service billed.
    pub service_id: Uuid,
    /// First cycle or renewal.
    pub kind: InvoiceKind,
    /// Sum of the lines.
    pub total_minor: i64,
    /// Sum of the payments.
    pub paid_minor: i64,
    /// Currency.
    pub currency: Currency,
    /// Status.
    pub status: InvoiceStatus,
    /// The due date.
    #[serde(default)]
    pub due_date: Option<NaiveDate>,
    /// The reminders sent, as days from the due date.
    #[serde(default)]
    pub reminders: BTreeSet<i32>,
}

/// A contact of a client account on the write side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContactState {
    /// The contact's name.
    pub name: Name,
    /// The contact's email.
    pub email: Email,
    /// What the contact receives.
    pub categories: ContactCategories,
}

/// A client account's write-model state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientAccount {
    /// Set once created.
    pub account_id: Option<Uuid>,
    /// The name.
    pub name: Option<Name>,
    /// The billing email.
    pub email: Option<Email>,
    /// The owner, who holds every permission.
    pub owner: Option<Uuid>,
    /// Members (never the owner) and their permissions.
    pub members: BTreeMap<Uuid, PermissionSet>,
    /// Every invitation ever sent.
    pub invitations: BTreeMap<Uuid, InvitationState>,
    /// Every service ever ordered.
    pub services: BTreeMap<Uuid, ServiceState>,
    /// Every invoice ever issued.
    pub invoices: BTreeMap<Uuid, InvoiceState>,
    /// Where each activated hosting service lives, by service.
    #[serde(default)]
    pub panel_placements: BTreeMap<Uuid, PanelPlacement>,
    /// The current contacts.
    #[serde(default)]
    pub contacts: BTreeMap<Uuid, ContactState>,
    /// What the owner and members opted into; absent: nothing.
    #[serde(default)]
    pub opt_ins: BTreeMap<Uuid, ContactCategories>,
}

/// How an actor is allowed to act on an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// The owner.
    Owner,
    /// A member holding the permissions of the set.
    Member,
}

impl ClientAccount {
    /// Whether the account exists.
    pub fn exists(&self) -> bool {
        self.account_id.is_some()
    }

    /// Whether `user_id` holds `permission` on this account: the owner holds all of them.
    pub fn allows(&self, user_id: Uuid, permission: Permission) -> bool {
        self.owner == Some(user_id)
            || self
                .members
                .get(&user_id)
                .is_some_and(|p| p.contains(permission))
    }

    /// The permissions of `user_id` here, or `None` when it is neither owner nor member.
    pub fn permissions_of(&self, user_id: Uuid) -> Option<PermissionSet> {
        if self.owner == Some(user_id) {
            Some(PermissionSet::full())
        } else {
            self.members.get(&user_id).cloned()
        }
    }

    /// Whether `user_id` is the owner or a member.
    pub fn is_party(&self, user_id: Uuid) -> bool {
        self.owner == Some(user_id) || self.members.contains_key(&user_id)
    }

    fn require_exists(&self) -> Result<(), DomainError> {
        if self.exists() {
            Ok(())
        } else {
            Err(DomainError::NotFound("account"))
        }
    }

    fn require_owner(&self, ctx: &CommandContext) -> Result<Uuid, DomainError> {
        self.require_exists()?;
        match ctx.actor {
            Actor::User(id) if self.owner == Some(id) => Ok(id),
            Actor::User(id) if self.members.contains_key(&id) => {
                Err(DomainError::denied("only the account owner manages users"))
            }
            _ => Err(DomainError::denied(
                "caller is not the owner of this account",
            )),
        }
    }

    fn require_permission(
        &self,
        ctx: &CommandContext,
        permission: Permission,
        services_allowed: bool,
    ) -> Result<(), DomainError> {
        self.require_exists()?;
        match &ctx.actor {
            Actor::User(id) if self.allows(*id, permission) => Ok(()),
            Actor::User(id) if self.members.contains_key(id) => Err(DomainError::denied(format!(
                "caller lacks the {permission} permission"
            ))),
            Actor::Service(_) | Actor::System if services_allowed => Ok(()),
            // Provider staff act on any account; the API refuses them without a stated reason,
            // which the envelope records.
            Actor::Staff(_) => Ok(()),
            _ => Err(DomainError::denied(
                "caller is not the owner or a member of this account",
            )),
        }
    }

    fn require_user(ctx: &CommandContext) -> Result<Uuid, DomainError> {
        ctx.actor
            .user_id()
            .ok_or_else(|| DomainError::denied("only users may do this"))
    }

    fn invitation(&self, invitation_id: Uuid) -> Result<&InvitationState, DomainError> {
        self.invitations
            .get(&invitation_id)
            .ok_or(DomainError::NotFound("invitation"))
    }

    fn answerable_invitation(
        &self,
        invitation_id: Uuid,
        generation: u32,
        now: DateTime<Utc>,
    ) -> Result<&InvitationState, DomainError> {
        self.require_exists()?;
        let invitation = self.invitation(invitation_id)?;
        match invitation.status {
            InvitationStatus::Accepted => {
                return Err(DomainError::precondition("invitation was already accepted"))
            }
            InvitationStatus::Declined => {
                return Err(DomainError::precondition("invitation was declined"))
            }
            InvitationStatus::Cancelled => {
                return Err(DomainError::precondition("invitation was cancelled"))
            }
            InvitationStatus::Pending => {}
        }
        if generation != invitation.generation {
            return Err(DomainError::precondition(
                "invitation was sent again; only the newest link works",
            ));
        }
        if now >= invitation.expires_at {
            return Err(DomainError::precondition("invitation has expired"));
        }
        Ok(invitation)
    }

    fn member(&self, user_id: Uuid) -> Result<&PermissionSet, DomainError> {
        if self.owner == Some(user_id) {
            return Err(DomainError::precondition(
                "the owner holds every permission and cannot be changed",
            ));
        }
        self.members
            .get(&user_id)
            .ok_or(DomainError::NotFound("member"))
    }

    fn service(&self, service_id: Uuid) -> Result<&ServiceState, DomainError> {
        self.services
            .get(&service_id)
            .ok_or(DomainError::NotFound("service"))
    }

    fn decide(&self, command: Command<AccountCommand>) -> Result<Vec<AccountEvent>, DomainError> {
        let ctx = &command.context;
        let now = ctx.now;
        let today = now.date_naive();
        match command.body {
            AccountCommand::Create {
                account_id,
                name,
                email,
            } => {
                let owner_user_id = Self::require_user(ctx)?;
                if self.exists() {
                    return Err(DomainError::AlreadyExists("account already exists".into()));
                }
                Ok(vec![AccountEvent::AccountCreated {
                    account_id,
                    name,
                    email,
                    owner_user_id,
                }])
            }
            AccountCommand::UpdateProfile { name, email } => {
                self.require_permission(ctx, Permission::Profile, false)?;
                if self.name.as_ref() == Some(&name) && self.email.as_ref() == Some(&email) {
                    return Ok(vec![]);
                }
                Ok(vec![AccountEvent::AccountProfileUpdated { name, email }])
            }
            AccountCommand::Invite {
                invitation_id,
                email,
                invitee_user_id,
                permissions,
                ttl,
            } => {
                let invited_by = self.require_owner(ctx)?;
                if permissions.is_empty() {
                    return Err(DomainError::invalid("permissions", "must not be empty"));
                }
                if invitee_user_id.is_some_and(|u| self.is_party(u)) {
                    return Err(DomainError::AlreadyExists(
                        "that user is already the owner or a member of this account".into(),
                    ));
                }
                let key = email.key();
                if self
                    .invitations
                    .values()
                    .any(|i| i.email.key() == key && i.is_open(now))
                {
                    return Err(DomainError::AlreadyExists(
                        "a pending invitation for that email exists".into(),
                    ));
                }
                if self.invitations.contains_key(&invitation_id) {
                    return Err(DomainError::AlreadyExists("invitation id is taken".into()));
                }
                Ok(vec![AccountEvent::UserInvited {
                    invitation_id,
                    email,
                    permissions,
                    expires_at: now.checked_add_signed(ttl).ok_or_else(|| {
                        DomainError::invalid(
                            "ttl",
                            "the invitation would expire beyond the calendar",
                        )
                    })?,
                    invited_by,
                }])
            }
            AccountCommand::ResendInvitation { invitation_id, ttl } => {
                self.require_owner(ctx)?;
                let invitation = self.invitation(invitation_id)?;
                if invitation.status != InvitationStatus::Pending {
                    return Err(DomainError::precondition(
                        "only a pending invitation can be sent again",
                    ));
                }
                let key = invitation.email.key();
                let newer_open = self
                    .invitations
                    .iter()
                    .any(|(id, i)| *id != invitation_id && i.email.key() == key && i.is_open(now));
                if newer_open {
                    return Err(DomainError::AlreadyExists(
                        "another pending invitation for that email exists".into(),
                    ));
                }
                Ok(vec![AccountEvent::InvitationResent {
                    invitation_id,
                    generation: invitation.generation + 1,
                    expires_at: now.checked_add_signed(ttl).ok_or_else(|| {
                        DomainError::invalid(
                            "ttl",
                            "the invitation would expire beyond the calendar",
                        )
                    })?,
                }])
            }
            AccountCommand::CancelInvitation { invitation_id } => {
                self.require_owner(ctx)?;
                let invitation = self.invitation(invitation_id)?;
                if invitation.status != InvitationStatus::Pending {
                    return Err(DomainError::precondition(
                        "only a pending invitation can be cancelled",
                    ));
                }
                Ok(vec![AccountEvent::InvitationCancelled { invitation_id }])
            }
            AccountCommand::AcceptInvitation {
                invitation_id,
                generation,
            } => {
                let user_id = Self::require_user(ctx)?;
                let invitation = self.answerable_invitation(invitation_id, generation, now)?;
                if self.is_party(user_id) {
                    return Err(DomainError::AlreadyExists(
                        "caller is already the owner or a member of this account".into(),
                    ));
                }
                Ok(vec![AccountEvent::InvitationAccepted {
                    invitation_id,
                    user_id,
                    permissions: invitation.permissions.clone(),
                }])
            }
            AccountCommand::DeclineInvitation {
                invitation_id,
                generation,
            } => {
                let user_id = Self::require_user(ctx)?;
                self.answerable_invitation(invitation_id, generation, now)?;
                Ok(vec![AccountEvent::InvitationDeclined {
                    invitation_id,
                    user_id,
                }])
            }
            AccountCommand::GrantPermissions {
                user_id,
                permissions,
            } => {
                self.require_owner(ctx)?;
                let held = self.member(user_id)?;
                let granted = permissions.difference(held);
                if granted.is_empty() {
                    return Ok(vec![]);
                }
                let permissions = held.union(&granted);
                Ok(vec![AccountEvent::PermissionsGranted {
                    user_id,
                    granted,
                    permissions,
                }])
            }
            AccountCommand::RevokePermissions {
                user_id,
                permissions,
            } => {
                self.require_owner(ctx)?;
                let held = self.member(user_id)?;
                let revoked = held.intersection(&permissions);
                if revoked.is_empty() {
                    return Ok(vec![]);
                }
                let permissions = held.difference(&revoked);
                Ok(vec![AccountEvent::PermissionsRevoked {
                    user_id,
                    revoked,
                    permissions,
                }])
            }
            AccountCommand::RevokeAccess { user_id } => {
                self.require_owner(ctx)?;
                if self.owner == Some(user_id) {
                    return Err(DomainError::precondition("the owner cannot be removed"));
                }
                self.member(user_id)?;
                Ok(vec![AccountEvent::MemberRemoved {
                    user_id,
                    reason: RemovalReason::Revoked,
                }])
            }
            AccountCommand::Leave => {
                self.require_exists()?;
                let user_id = Self::require_user(ctx)?;
                if self.owner == Some(user_id) {
                    return Err(DomainError::precondition(
                        "the owner cannot leave; transfer ownership first",
                    ));
                }
                if !self.members.contains_key(&user_id) {
                    return Err(DomainError::denied(
                        "caller is not a member of this account",
                    ));
                }
                Ok(vec![AccountEvent::MemberRemoved {
                    user_id,
                    reason: RemovalReason::Left,
                }])
            }
            AccountCommand::TransferOwnership { new_owner_user_id } => {
                let from_user_id = self.require_owner(ctx)?;
                if new_owner_user_id == from_user_id {
                    return Err(DomainError::precondition(
                        "caller already owns this account",
                    ));
                }
                if !self.members.contains_key(&new_owner_user_id) {
                    return Err(DomainError::precondition(
                        "ownership can only move to a current member",
                    ));
                }
                Ok(vec![AccountEvent::OwnershipTransferred {
                    from_user_id,
                    to_user_id: new_owner_user_id,
                }])
            }
            AccountCommand::OrderService {
                service_id,
                invoice_id,
                product,
                domain,
                billing_cycle,
            } => {
                self.require_permission(ctx, Permission::Orders, false)?;
                self.decide_order(
                    service_id,
                    invoice_id,
                    product,
                    domain,
                    billing_cycle,
                    today,
                )
            }
            AccountCommand::RenewService {
                service_id,
                invoice_id,
            } => {
                self.require_permission(ctx, Permission::Orders, false)?;
                let service = self.service(service_id)?;
                if service.cancelled {
                    return Err(DomainError::precondition(
                        "a cancelled service cannot be renewed",
                    ));
                }
                let period_start = service.next_due_date;
                if service.renewals.contains_key(&period_start) {
                    return Ok(vec![]);
                }
                self.renewal_events(service_id, invoice_id, today)
            }
            AccountCommand::CancelService { service_id } => {
                self.require_permission(ctx, Permission::Orders, false)?;
                let service = self.service(service_id)?;
                if service.cancelled {
                    return Err(DomainError::precondition("service is already cancelled"));
                }
                // LIMITATION: a part-paid invoice is cancelled like an unpaid one; what was already paid is not credited or refunded.
                let mut events: Vec<AccountEvent> = self
                    .invoices
                    .iter()
                    .filter(|(_, i)| {
                        i.service_id == service_id && i.status == InvoiceStatus::Unpaid
                    })
                    .map(|(id, _)| AccountEvent::InvoiceCancelled { invoice_id: *id })
                    .collect();
                events.push(AccountEvent::ServiceCancelled { service_id });
                Ok(events)
            }
            AccountCommand::UpdateNameservers {
                service_id,
                nameservers,
            } => {
                self.require_permission(ctx, Permission::ManageDomains, false)?;
                let service = self.service(service_id)?;
                if service.kind != ProductKind::Domain {
                    return Err(DomainError::precondition("only a domain has nameservers"));
                }
                if service.cancelled {
                    return Err(DomainError::precondition("service is cancelled"));
                }
                Ok(vec![AccountEvent::NameserversUpdated {
                    service_id,
                    nameservers,
                }])
            }
            AccountCommand::PayInvoice {
                invoice_id,
                payment_id,
                amount_minor,
                reference,
            } => {
                self.require_permission(ctx, Permission::Invoices, true)?;
                self.decide_payment(invoice_id, payment_id, amount_minor, reference)
            }
            AccountCommand::ActivateService {
                service_id,
                server,
                panel_username,
            } => self.decide_activation(ctx, service_id, server, panel_username),
            AccountCommand::RecordServiceLogin {
                service_id,
                failure,
            } => {
                let server = self.service_login(&ctx.actor, service_id)?.server.clone();
                Ok(vec![match failure {
                    None => AccountEvent::ServiceLoginOpened { service_id, server },
                    Some(failure) => AccountEvent::ServiceLoginFailed {
                        service_id,
                        server,
                        failure,
                    },
                }])
            }
            AccountCommand::AddContact {
                contact_id,
                name,
                email,
                categories,
            } => {
                self.require_permission(ctx, Permission::Contacts, false)?;
                if categories.is_empty() {
                    return Err(DomainError::invalid(
                        "categories",
                        "a contact receives at least one category",
                    ));
                }
                if self.contacts.contains_key(&contact_id) {
                    return Err(DomainError::AlreadyExists("contact id is taken".into()));
                }
                let key = email.key();
                if self.contacts.values().any(|c| c.email.key() == key) {
                    return Err(DomainError::AlreadyExists(
                        "a contact with that email exists".into(),
                    ));
                }
                Ok(vec![AccountEvent::ContactAdded {
                    contact_id,
                    name,
                    email,
                    categories,
                }])
            }
            AccountCommand::RemoveContact { contact_id } => {
                self.require_permission(ctx, Permission::Contacts, false)?;
                if !self.contacts.contains_key(&contact_id) {
                    return Err(DomainError::NotFound("contact"));
                }
                Ok(vec![AccountEvent::ContactRemoved { contact_id }])
            }
            AccountCommand::SetNotificationOptIns { categories } => {
                self.require_exists()?;
                let user_id = Self::require_user(ctx)?;
                let held = self.permissions_of(user_id).ok_or_else(|| {
                    DomainError::denied("caller is not the owner or a member of this account")
                })?;
                if let Some(missing) = categories
                    .iter()
                    .find_map(|c| c.required_permission().filter(|p| !held.contains(*p)))
                {
                    return Err(DomainError::denied(format!(
                        "receiving that mail needs the {missing} permission"
                    )));
                }
                let current = self.opt_ins.get(&user_id).cloned().unwrap_or_default();
                if current == categories {
                    return Ok(vec![]);
                }
                Ok(vec![AccountEvent::NotificationOptInsSet {
                    user_id,
                    categories,
                }])
            }
            AccountCommand::IssueRenewal {
                service_id,
                period_start,
                invoice_id,
                lead_days,
            } => {
                Self::require_system(ctx)?;
                self.require_exists()?;
                let service = self.service(service_id)?;
                // A cycle already renewed, billed (by a member or an earlier run) or not yet
                // close enough is left alone: this is what makes the scheduler exact.
                let opens = period_start - Duration::days(i64::from(lead_days));
                if service.cancelled
                    || service.next_due_date != period_start
                    || service.renewals.contains_key(&period_start)
                    || today < opens
                {
                    return Ok(vec![]);
                }
                self.renewal_events(service_id, invoice_id, today)
            }
            AccountCommand::RemindInvoice {
                invoice_id,
                days_from_due,
            } => {
                Self::require_system(ctx)?;
                self.require_exists()?;
                let invoice = self
                    .invoices
                    .get(&invoice_id)
                    .ok_or(DomainError::NotFound("invoice"))?;
                let Some(due_date) = invoice.due_date else {
                    return Ok(vec![]);
                };
                let at = due_date + Duration::days(i64::from(days_from_due));
                // A reminder before the due date makes no sense once the date has passed.
                let in_time = today >= at && (days_from_due >= 0 || today < due_date);
                let cancelled = self
                    .services
                    .get(&invoice.service_id)
                    .is_some_and(|s| s.cancelled);
                if invoice.status != InvoiceStatus::Unpaid
                    || invoice.reminders.contains(&days_from_due)
                    || !in_time
                    || cancelled
                {
                    return Ok(vec![]);
                }
                Ok(vec![AccountEvent::PaymentReminderSent {
                    invoice_id,
                    days_from_due,
                }])
            }
            AccountCommand::SuspendService {
                service_id,
                invoice_id,
                grace_days,
            } => {
                Self::require_system(ctx)?;
                self.require_exists()?;
                let service = self.service(service_id)?;
                let invoice = self
                    .invoices
                    .get(&invoice_id)
                    .ok_or(DomainError::NotFound("invoice"))?;
                let overdue = invoice
                    .due_date
                    .is_some_and(|due| today >= due + Duration::days(i64::from(grace_days)));
                if service.cancelled
                    || service.suspended_for.is_some()
                    || invoice.service_id != service_id
                    || invoice.status != InvoiceStatus::Unpaid
                    || !overdue
                {
                    return Ok(vec![]);
                }
                Ok(vec![AccountEvent::ServiceSuspended {
                    service_id,
                    invoice_id,
                }])
            }
        }
    }

    fn require_system(ctx: &CommandContext) -> Result<(), DomainError> {
        match ctx.actor {
            Actor::System => Ok(()),
            _ => Err(DomainError::denied("only the scheduler does this")),
        }
    }

    /// The renewal invoice of the service's next cycle, and its settlement when it is free.
    fn renewal_events(
        &self,
        service_id: Uuid,
        invoice_id: Uuid,
        today: NaiveDate,
    ) -> Result<Vec<AccountEvent>, DomainError> {
        let service = self.service(service_id)?;
        if self.invoices.contains_key(&invoice_id) {
            return Err(DomainError::AlreadyExists("invoice id is taken".into()));
        }
        let period_start = service.next_due_date;
        let period_end = service.next_period_end();
        let line = InvoiceLine {
            description: describe_line(service, period_start, period_end),
            amount_minor: service.amount_minor,
        };
        let mut events = vec![AccountEvent::InvoiceIssued {
            invoice_id,
            service_id,
            kind: InvoiceKind::Renewal { period_start },
            total_minor: line.amount_minor,
            lines: vec![line],
            currency: service.currency.clone(),
            issued_on: today,
            due_date: period_start,
        }];
        if service.amount_minor == 0 {
            // Nothing can be paid on a free invoice, so it is settled as it is issued.
            events.push(AccountEvent::InvoicePaid { invoice_id });
            events.push(AccountEvent::ServiceRenewed {
                service_id,
                next_due_date: period_end,
            });
        }
        Ok(events)
    }

    fn decide_order(
        &self,
        service_id: Uuid,
        invoice_id: Uuid,
        product: Product,
        domain: Option<DomainName>,
        billing_cycle: BillingCycle,
        today: NaiveDate,
    ) -> Result<Vec<AccountEvent>, DomainError> {
        if product.kind == ProductKind::Domain {
            let Some(domain) = &domain else {
                return Err(DomainError::invalid(
                    "domain",
                    "a domain order needs a domain",
                ));
            };
            let Some(tld) = &product.tld else {
                return Err(DomainError::precondition("the domain product has no TLD"));
            };
            if !domain.is_under(tld) {
                return Err(DomainError::invalid(
                    "domain",
                    format!("`{domain}` is not a name directly under `{}`", tld.as_str()),
                ));
            }
            if !billing_cycle.is_yearly() {
                return Err(DomainError::invalid(
                    "billing_cycle",
                    "domains are registered for whole years only",
                ));
            }
        }
        let price = product.price(billing_cycle).ok_or_else(|| {
            DomainError::invalid(
                "billing_cycle",
                format!("the product is not sold {}", billing_cycle.as_str()),
            )
        })?;
        if self.services.contains_key(&service_id) || self.invoices.contains_key(&invoice_id) {
            return Err(DomainError::AlreadyExists(
                "service or invoice id is taken".into(),
            ));
        }
        let next_due_date = billing_cycle.advance(today);
        let ordered = AccountEvent::ServiceOrdered {
            service_id,
            product_id: product.product_id,
            product_name: product.name.clone(),
            kind: product.kind,
            domain: domain.clone(),
            billing_cycle,
            amount_minor: price.amount_minor,
            currency: price.currency.clone(),
            ordered_on: today,
            next_due_date,
        };
        let service = ServiceState {
            product_name: product.name.clone(),
            kind: product.kind,
            domain,
            billing_cycle,
            amount_minor: price.amount_minor,
            currency: price.currency.clone(),
            ordered_on: today,
            periods: 1,
            next_due_date,
            cancelled: false,
            renewals: BTreeMap::new(),
            suspended_for: None,
        };
        let line = InvoiceLine {
            description: describe_line(&service, today, next_due_date),
            amount_minor: price.amount_minor,
        };
        let issued = AccountEvent::InvoiceIssued {
            invoice_id,
            service_id,
            kind: InvoiceKind::Order,
            total_minor: line.amount_minor,
            lines: vec![line],
            currency: price.currency.clone(),
            issued_on: today,
            due_date: today,
        };
        let mut events = vec![ordered, issued];
        if price.amount_minor == 0 {
            // Nothing can be paid on a free invoice, so it is settled as it is issued.
            events.push(AccountEvent::InvoicePaid { invoice_id });
        }
        Ok(events)
    }

    fn decide_payment(
        &self,
        invoice_id: Uuid,
        payment_id: Uuid,
        amount_minor: i64,
        reference: String,
    ) -> Result<Vec<AccountEvent>, DomainError> {
        let invoice = self
            .invoices
            .get(&invoice_id)
            .ok_or(DomainError::NotFound("invoice"))?;
        match invoice.status {
            InvoiceStatus::Paid => {
                return Err(DomainError::precondition("invoice is already paid"))
            }
            InvoiceStatus::Cancelled => {
                return Err(DomainError::precondition("invoice is cancelled"))
            }
            InvoiceStatus::Unpaid => {}
        }
        if amount_minor <= 0 {
            return Err(DomainError::invalid(
                "amount_minor",
                "must be greater than zero",
            ));
        }
        let outstanding = invoice.total_minor - invoice.paid_minor;
        if amount_minor > outstanding {
            return Err(DomainError::precondition(format!(
                "overpayment: {amount_minor} exceeds the {outstanding} still owed"
            )));
        }
        let mut events = vec![AccountEvent::PaymentReceived {
            invoice_id,
            payment_id,
            amount_minor,
            reference,
        }];
        if amount_minor == outstanding {
            events.push(AccountEvent::InvoicePaid { invoice_id });
            let service = self.service(invoice.service_id)?;
            if service.suspended_for == Some(invoice_id) {
                events.push(AccountEvent::ServiceUnsuspended {
                    service_id: invoice.service_id,
                });
            }
            if let InvoiceKind::Renewal { period_start } = invoice.kind {
                let service = self.service(invoice.service_id)?;
                if service.next_due_date == period_start && !service.cancelled {
                    events.push(AccountEvent::ServiceRenewed {
                        service_id: invoice.service_id,
                        next_due_date: service.next_period_end(),
                    });
                }
            }
        }
        Ok(events)
    }

    /// The renewal invoice already issued for the service's current cycle, if any.
    pub fn pending_renewal(&self, service_id: Uuid) -> Option<Uuid> {
        let service = self.services.get(&service_id)?;
        service.renewals.get(&service.next_due_date).copied()
    }
}

fn describe_line(service: &ServiceState, from: NaiveDate, until: NaiveDate) -> String {
    let last_day = until.pred_opt().unwrap_or(until);
    match &service.domain {
        Some(domain) => format!("{} - {domain} ({from} - {last_day})", service.product_name),
        None => format!("{} ({from} - {last_day})", service.product_name),
    }
}

impl Aggregate for ClientAccount {
    const TYPE: &'static str = onbehalf_events::stream_type::CLIENT_ACCOUNT;
    type Command = Command<AccountCommand>;
    type Event = AccountEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            AccountEvent::AccountCreated {
                account_id,
                name,
                email,
                owner_user_id,
            } => {
                self.account_id = Some(account_id);
                self.name = Some(name);
                self.email = Some(email);
                self.owner = Some(owner_user_id);
            }
            AccountEvent::AccountProfileUpdated { name, email } => {
                self.name = Some(name);
                self.email = Some(email);
            }
            AccountEvent::UserInvited {
                invitation_id,
                email,
                permissions,
                expires_at,
                invited_by,
            } => {
                self.invitations.insert(
                    invitation_id,
                    InvitationState {
                        email,
                        permissions,
                        expires_at,
                        generation: 0,
                        status: InvitationStatus::Pending,
                        invited_by,
                    },
                );
            }
            AccountEvent::InvitationResent {
                invitation_id,
                generation,
                expires_at,
            } => {
                if let Some(i) = self.invitations.get_mut(&invitation_id) {
                    i.generation = generation;
                    i.expires_at = expires_at;
                }
            }
            AccountEvent::InvitationCancelled { invitation_id } => {
                self.set_invitation_status(invitation_id, InvitationStatus::Cancelled);
            }
            AccountEvent::InvitationAccepted {
                invitation_id,
                user_id,
                permissions,
            } => {
                self.set_invitation_status(invitation_id, InvitationStatus::Accepted);
                self.members.insert(user_id, permissions);
            }
            AccountEvent::InvitationDeclined { invitation_id, .. } => {
                self.set_invitation_status(invitation_id, InvitationStatus::Declined);
            }
            AccountEvent::PermissionsGranted {
                user_id,
                permissions,
                ..
            }
            | AccountEvent::PermissionsRevoked {
                user_id,
                permissions,
                ..
            } => {
                self.members.insert(user_id, permissions);
            }
            AccountEvent::MemberRemoved { user_id, .. } => {
                self.members.remove(&user_id);
                self.opt_ins.remove(&user_id);
            }
            AccountEvent::OwnershipTransferred {
                from_user_id,
                to_user_id,
            } => {
                self.members.remove(&to_user_id);
                self.members.insert(from_user_id, PermissionSet::full());
                self.owner = Some(to_user_id);
            }
            AccountEvent::ServiceOrdered {
                service_id,
                product_name,
                kind,
                domain,
                billing_cycle,
                amount_minor,
                currency,
                ordered_on,
                next_due_date,
                ..
            } => {
                self.services.insert(
                    service_id,
                    ServiceState {
                        product_name,
                        kind,
                        domain,
                        billing_cycle,
                        amount_minor,
                        currency,
                        ordered_on,
                        periods: 1,
                        next_due_date,
                        cancelled: false,
                        renewals: BTreeMap::new(),
                        suspended_for: None,
                    },
                );
            }
            AccountEvent::InvoiceIssued {
                invoice_id,
                service_id,
                kind,
                total_minor,
                currency,
                due_date,
                ..
            } => {
                if let (InvoiceKind::Renewal { period_start }, Some(service)) =
                    (&kind, self.services.get_mut(&service_id))
                {
                    service.renewals.insert(*period_start, invoice_id);
                }
                self.invoices.insert(
                    invoice_id,
                    InvoiceState {
                        service_id,
                        kind,
                        total_minor,
                        paid_minor: 0,
                        currency,
                        status: InvoiceStatus::Unpaid,
                        due_date: Some(due_date),
                        reminders: BTreeSet::new(),
                    },
                );
            }
            AccountEvent::PaymentReceived {
                invoice_id,
                amount_minor,
                ..
            } => {
                if let Some(i) = self.invoices.get_mut(&invoice_id) {
                    i.paid_minor += amount_minor;
                }
            }
            AccountEvent::InvoicePaid { invoice_id } => {
                self.set_invoice_status(invoice_id, InvoiceStatus::Paid);
            }
            AccountEvent::InvoiceCancelled { invoice_id } => {
                self.set_invoice_status(invoice_id, InvoiceStatus::Cancelled);
            }
            AccountEvent::ServiceRenewed {
                service_id,
                next_due_date,
            } => {
                if let Some(s) = self.services.get_mut(&service_id) {
                    s.next_due_date = next_due_date;
                    s.periods += 1;
                }
            }
            AccountEvent::ServiceCancelled { service_id } => {
                if let Some(s) = self.services.get_mut(&service_id) {
                    s.cancelled = true;
                }
            }
            AccountEvent::NameserversUpdated { .. } => {}
            AccountEvent::ServiceActivated {
                service_id,
                server,
                panel_username,
            } => {
                self.panel_placements.insert(
                    service_id,
                    PanelPlacement {
                        server,
                        panel_username,
                    },
                );
            }
            AccountEvent::ServiceLoginOpened { .. } | AccountEvent::ServiceLoginFailed { .. } => {}
            AccountEvent::ContactAdded {
                contact_id,
                name,
                email,
                categories,
            } => {
                self.contacts.insert(
                    contact_id,
                    ContactState {
                        name,
                        email,
                        categories,
                    },
                );
            }
            AccountEvent::ContactRemoved { contact_id } => {
                self.contacts.remove(&contact_id);
            }
            AccountEvent::NotificationOptInsSet {
                user_id,
                categories,
            } => {
                if categories.is_empty() {
                    self.opt_ins.remove(&user_id);
                } else {
                    self.opt_ins.insert(user_id, categories);
                }
            }
            AccountEvent::PaymentReminderSent {
                invoice_id,
                days_from_due,
            } => {
                if let Some(i) = self.invoices.get_mut(&invoice_id) {
                    i.reminders.insert(days_from_due);
                }
            }
            AccountEvent::ServiceSuspended {
                service_id,
                invoice_id,
            } => {
                if let Some(s) = self.services.get_mut(&service_id) {
                    s.suspended_for = Some(invoice_id);
                }
            }
            AccountEvent::ServiceUnsuspended { service_id } => {
                if let Some(s) = self.services.get_mut(&service_id) {
                    s.suspended_for = None;
                }
            }
        }
    }
}

impl ClientAccount {
    fn set_invitation_status(&mut self, invitation_id: Uuid, status: InvitationStatus) {
        if let Some(i) = self.invitations.get_mut(&invitation_id) {
            i.status = status;
        }
    }

    fn set_invoice_status(&mut self, invoice_id: Uuid, status: InvoiceStatus) {
        if let Some(i) = self.invoices.get_mut(&invoice_id) {
            i.status = status;
        }
    }
}

/// Where a hosting service lives: its control-panel server and its user name there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PanelPlacement {
    /// The server's configured name.
    pub server: String,
    /// The service's user name on the server's panel.
    pub panel_username: String,
}

impl ClientAccount {
    /// Where `actor` may open the control panel of `service_id`, decided on this state: the
    /// owner, a member holding PRODUCTS and PRODUCT_SSO, or provider staff; a hosting service
    /// that is activated, neither suspended nor cancelled.
    pub fn service_login(
        &self,
        actor: &Actor,
        service_id: Uuid,
    ) -> Result<&PanelPlacement, DomainError> {
        self.require_exists()?;
        match actor {
            Actor::User(id) if self.owner == Some(*id) => {}
            Actor::User(id) => {
                let Some(held) = self.members.get(id) else {
                    return Err(DomainError::denied(
                        "caller is not the owner or a member of this account",
                    ));
                };
                for needed in [Permission::Products, Permission::ProductSso] {
                    if !held.contains(needed) {
                        return Err(DomainError::denied(format!(
                            "caller lacks the {needed} permission"
                        )));
                    }
                }
            }
            Actor::Staff(_) => {}
            Actor::Service(_) | Actor::System => {
                return Err(DomainError::denied(
                    "only users and provider staff open control panels",
                ))
            }
        }
        let service = self.service(service_id)?;
        if service.kind != ProductKind::Hosting {
            return Err(DomainError::precondition(
                "only a hosting service has a control panel",
            ));
        }
        if service.cancelled {
            return Err(DomainError::precondition("service is cancelled"));
        }
        if service.suspended_for.is_some() {
            return Err(DomainError::precondition("service is suspended"));
        }
        self.panel_placements.get(&service_id).ok_or_else(|| {
            DomainError::precondition("service is not activated on a panel server yet")
        })
    }

    fn decide_activation(
        &self,
        ctx: &CommandContext,
        service_id: Uuid,
        server: String,
        panel_username: String,
    ) -> Result<Vec<AccountEvent>, DomainError> {
        self.require_exists()?;
        if !matches!(ctx.actor, Actor::Service(_)) {
            return Err(DomainError::denied(
                "only the provisioning system activates services",
            ));
        }
        let service = self.service(service_id)?;
        if service.kind != ProductKind::Hosting {
            return Err(DomainError::precondition(
                "only a hosting service lives on a panel server",
            ));
        }
        if service.cancelled {
            return Err(DomainError::precondition("service is cancelled"));
        }
        let placement = PanelPlacement {
            server,
            panel_username,
        };
        if self.panel_placements.get(&service_id) == Some(&placement) {
            return Ok(vec![]);
        }
        Ok(vec![AccountEvent::ServiceActivated {
            service_id,
            server: placement.server,
            panel_username: placement.panel_username,
        }])
    }
}
