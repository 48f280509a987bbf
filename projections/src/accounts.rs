//! The account tree: users, client accounts, their owner and members, and invitations.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use onbehalf_events::values::{Email, Name};
use onbehalf_events::{AccountEvent, PermissionSet, StoredEvent, UserEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::format::name_key;

/// A registered user as the log last described it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    /// The user's id.
    pub user_id: Uuid,
    /// The login email as given at registration.
    pub email: Email,
    /// The display name.
    pub display_name: Name,
}

impl UserView {
    /// Whether the user was erased: its email and name read as the erased placeholders.
    pub fn is_erased(&self) -> bool {
        self.email.is_erased()
    }
}

/// A client account: its profile, owner and members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    /// The account's id.
    pub account_id: Uuid,
    /// The account's (company) name.
    pub name: Name,
    /// The billing email that receives invoices and service notices.
    pub email: Email,
    /// The one user with every right on the account.
    pub owner_user_id: Uuid,
    /// Every member except the owner, with the permissions each holds.
    pub members: BTreeMap<Uuid, PermissionSet>,
}

/// How a user relates to a client account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The owner: full access, including managing users.
    Owner,
    /// A member holding the permissions it was given.
    Member,
}

/// One entry of a user's account switcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessibleAccount {
    /// The client account.
    pub account_id: Uuid,
    /// Its current name.
    pub name: Name,
    /// The user's role there.
    pub role: Role,
    /// What the user may do there; every permission for the owner.
    pub permissions: PermissionSet,
}

/// One user of a client account, as its user management page lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    /// The user.
    pub user_id: Uuid,
    /// The user's login email.
    pub email: Email,
    /// The user's display name.
    pub display_name: Name,
    /// Owner or member.
    pub role: Role,
    /// What the user may do; every permission for the owner.
    pub permissions: PermissionSet,
}

/// Where an invitation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InvitationState {
    /// Sent and still acceptable.
    Pending,
    /// Accepted: the invitee became a member.
    Accepted,
    /// Declined by the invitee.
    Declined,
    /// Withdrawn by the owner.
    Cancelled,
    /// Never settled and past its expiry; derived from the query's `now`, never stored.
    Expired,
}

/// An invitation as seen at the `now` given to the query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvitationView {
    /// The invitation.
    pub invitation_id: Uuid,
    /// The client account the invitee is invited to.
    pub account_id: Uuid,
    /// The account's current name.
    pub account_name: Name,
    /// The invitee's email as the owner typed it.
    pub email: Email,
    /// The permissions the invitee receives on acceptance.
    pub permissions: PermissionSet,
    /// When the invitation was first sent.
    pub invited_at: DateTime<Utc>,
    /// The user who sent it: the owner at that moment.
    pub invited_by: Uuid,
    /// When the latest send stops being acceptable.
    pub expires_at: DateTime<Utc>,
    /// How many times the invitation was sent before the latest send (0 until it is resent).
    pub generation: u32,
    /// Its state at the query's `now`.
    pub state: InvitationState,
}

/// An invitation as folded; its state is never [`InvitationState::Expired`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Invitation {
    invitation_id: Uuid,
    email: Email,
    permissions: PermissionSet,
    invited_at: DateTime<Utc>,
    invited_by: Uuid,
    expires_at: DateTime<Utc>,
    generation: u32,
    state: InvitationState,
}

impl Invitation {
    /// The state at `now`: a pending invitation is expired from its expiry instant on, the
    /// instant at which it stops being acceptable.
    fn state_at(&self, now: DateTime<Utc>) -> InvitationState {
        if self.state == InvitationState::Pending && now >= self.expires_at {
            InvitationState::Expired
        } else {
            self.state
        }
    }
}

/// Users and client accounts: who owns what, who may do what where, and who is invited.
///
/// Answers the account switcher ([`accessible_accounts`](Self::accessible_accounts)) and the
/// user management page ([`members`](Self::members), [`invitations`](Self::invitations)).
#[derive(Clone, Debug, Default)]
pub struct AccountTree {
    users: BTreeMap<Uuid, UserView>,
    users_by_email: BTreeMap<String, Uuid>,
    accounts: BTreeMap<Uuid, AccountView>,
    /// Every account a user owns or is a member of.
    access: BTreeMap<Uuid, BTreeSet<Uuid>>,
    /// Per account, in the order the invitations were first sent.
    invitations: BTreeMap<Uuid, Vec<Invitation>>,
    /// Per invitee email key, `(account, invitation)` in the order first sent.
    invitations_by_email: BTreeMap<String, Vec<(Uuid, Uuid)>>,
}

impl AccountTree {
    /// The user with this id, once registered.
    pub fn user(&self, user_id: Uuid) -> Option<&UserView> {
        self.users.get(&user_id)
    }

    /// The user whose login email has this key ([`Email::key`]); compared case-insensitively.
    pub fn user_by_email(&self, email_key: &str) -> Option<&UserView> {
        self.users_by_email
            .get(&onbehalf_events::values::email_key(email_key))
            .and_then(|id| self.users.get(id))
    }

    /// The client account with this id.
    pub fn account(&self, account_id: Uuid) -> Option<&AccountView> {
        self.accounts.get(&account_id)
    }

    /// Every client account the user owns or is a member of: owned accounts first, then by name
    /// (case-insensitively), then by id.
    pub fn accessible_accounts(&self, user_id: Uuid) -> Vec<AccessibleAccount> {
        let mut out: Vec<AccessibleAccount> = self
            .access
            .get(&user_id)
            .into_iter()
            .flatten()
            .filter_map(|account_id| self.accounts.get(account_id))
            .filter_map(|account| {
                let (role, permissions) = role_of(account, user_id)?;
                Some(AccessibleAccount {
                    account_id: account.account_id,
                    name: account.name.clone(),
                    role,
                    permissions,
                })
            })
            .collect();
        out.sort_by_cached_key(|a| {
            (
                a.role != Role::Owner,
                name_key(a.name.as_str()),
                a.account_id,
            )
        });
        out
    }

    /// The role and permissions of a user on an account, or `None` when it has no access.
    pub fn access(&self, account_id: Uuid, user_id: Uuid) -> Option<(Role, PermissionSet)> {
        self.accounts
            .get(&account_id)
            .and_then(|account| role_of(account, user_id))
    }

    /// The users of a client account: the owner first, then members by email key, then id.
    ///
    /// A member whose registration is not in the log is left out; the write side only admits
    /// registered users, so this happens only with a truncated log.
    pub fn members(&self, account_id: Uuid) -> Vec<MemberView> {
        let Some(account) = self.accounts.get(&account_id) else {
            return Vec::new();
        };
        let owner = std::iter::once((account.owner_user_id, Role::Owner, PermissionSet::full()));
        let members = account
            .members
            .iter()
            .map(|(user_id, permissions)| (*user_id, Role::Member, permissions.clone()));
        let mut out: Vec<MemberView> = owner
            .chain(members)
            .filter_map(|(user_id, role, permissions)| {
                let user = self.users.get(&user_id)?;
                Some(MemberView {
                    user_id,
                    email: user.email.clone(),
                    display_name: user.display_name.clone(),
                    role,
                    permissions,
                })
            })
            .collect();
        out.sort_by_cached_key(|m| (m.role != Role::Owner, m.email.key(), m.user_id));
        out
    }

    /// Every invitation of a client account, settled or not, in the order first sent, with its
    /// state at `now`.
    pub fn invitations(&self, account_id: Uuid, now: DateTime<Utc>) -> Vec<InvitationView> {
        self.invitations
            .get(&account_id)
            .into_iter()
            .flatten()
            .filter_map(|invitation| self.view(account_id, invitation, now))
            .collect()
    }

    /// The invitations to this email key that are still acceptable at `now`, across all client
    /// accounts, in the order first sent.
    pub fn pending_invitations_for_email(
        &self,
        email_key: &str,
        now: DateTime<Utc>,
    ) -> Vec<InvitationView> {
        self.invitations_by_email
            .get(&onbehalf_events::values::email_key(email_key))
            .into_iter()
            .flatten()
            .filter_map(|(account_id, invitation_id)| {
                let invitation = self.find_invitation(*account_id, *invitation_id)?;
                self.view(*account_id, invitation, now)
            })
            .filter(|view| view.state == InvitationState::Pending)
            .collect()
    }

    /// One invitation of a client account with its state at `now`.
    pub fn invitation(
        &self,
        account_id: Uuid,
        invitation_id: Uuid,
        now: DateTime<Utc>,
    ) -> Option<InvitationView> {
        let invitation = self.find_invitation(account_id, invitation_id)?;
        self.view(account_id, invitation, now)
    }

    fn find_invitation(&self, account_id: Uuid, invitation_id: Uuid) -> Option<&Invitation> {
        self.invitations
            .get(&account_id)?
            .iter()
            .find(|i| i.invitation_id == invitation_id)
    }

    fn view(
        &self,
        account_id: Uuid,
        invitation: &Invitation,
        now: DateTime<Utc>,
    ) -> Option<InvitationView> {
        let account = self.accounts.get(&account_id)?;
        Some(InvitationView {
            invitation_id: invitation.invitation_id,
            account_id,
            account_name: account.name.clone(),
            email: invitation.email.clone(),
            permissions: invitation.permissions.clone(),
            invited_at: invitation.invited_at,
            invited_by: invitation.invited_by,
            expires_at: invitation.expires_at,
            generation: invitation.generation,
            state: invitation.state_at(now),
        })
    }

    pub(crate) fn apply_user(&mut self, event: &UserEvent) {
        match event {
            UserEvent::UserRegistered {
                user_id,
                email,
                display_name,
            } => {
                if let Some(previous) = self.users.get(user_id) {
                    self.users_by_email.remove(&previous.email.key());
                }
                // An erased email names nobody: every erased user reads the same placeholder.
                if !email.is_erased() {
                    self.users_by_email.insert(email.key(), *user_id);
                }
                self.users.insert(
                    *user_id,
                    UserView {
                        user_id: *user_id,
                        email: email.clone(),
                        display_name: display_name.clone(),
                    },
                );
            }
            UserEvent::UserErased { user_id } => self.erase_user(*user_id),
        }
    }

    /// Forgets an erased user's email and name, and the email of every invitation sent to it,
    /// exactly as a fold of the log after the erasure reads them (the erased placeholders).
    fn erase_user(&mut self, user_id: Uuid) {
        let Some(user) = self.users.get_mut(&user_id) else {
            return;
        };
        let key = user.email.key();
        user.email = Email::erased();
        user.display_name = Name::erased();
        if self.users_by_email.get(&key) == Some(&user_id) {
            self.users_by_email.remove(&key);
        }
        for (account_id, invitation_id) in
            self.invitations_by_email.remove(&key).unwrap_or_default()
        {
            if let Some(invitation) = self.invitation_mut(account_id, invitation_id) {
                invitation.email = Email::erased();
            }
        }
    }

    pub(crate) fn apply_account(
        &mut self,
        account_id: Uuid,
        event: &AccountEvent,
        stored: &StoredEvent,
    ) {
        match event {
            AccountEvent::AccountCreated {
                name,
                email,
                owner_user_id,
                ..
            } => {
                // The stream id names the account; the payload's copy of the id is not trusted
                // over it, so that every read model files the account under the same key.
                self.accounts.insert(
                    account_id,
                    AccountView {
                        account_id,
                        name: name.clone(),
                        email: email.clone(),
                        owner_user_id: *owner_user_id,
                        members: BTreeMap::new(),
                    },
                );
                self.grant_access(*owner_user_id, account_id);
            }
            AccountEvent::AccountProfileUpdated { name, email } => {
                if let Some(account) = self.accounts.get_mut(&account_id) {
                    account.name = name.clone();
                    account.email = email.clone();
                }
            }
            AccountEvent::UserInvited {
                invitation_id,
                email,
                permissions,
                expires_at,
                invited_by,
            } => {
                let invitations = self.invitations.entry(account_id).or_default();
                if invitations
                    .iter()
                    .any(|i| i.invitation_id == *invitation_id)
                {
                    return;
                }
                invitations.push(Invitation {
                    invitation_id: *invitation_id,
                    email: email.clone(),
                    permissions: permissions.clone(),
                    invited_at: stored.occurred_at,
                    invited_by: *invited_by,
                    expires_at: *expires_at,
                    generation: 0,
                    state: InvitationState::Pending,
                });
                if !email.is_erased() {
                    self.invitations_by_email
                        .entry(email.key())
                        .or_default()
                        .push((account_id, *invitation_id));
                }
            }
            AccountEvent::InvitationResent {
                invitation_id,
                generation,
                expires_at,
            } => {
                if let Some(invitation) = self.invitation_mut(account_id, *invitation_id) {
                    invitation.generation = *generation;
                    invitation.expires_at = *expires_at;
                }
            }
            AccountEvent::InvitationCancelled { invitation_id } => {
                self.settle(account_id, *invitation_id, InvitationState::Cancelled);
            }
            AccountEvent::InvitationDeclined { invitation_id, .. } => {
                self.settle(account_id, *invitation_id, InvitationState::Declined);
            }
            AccountEvent::InvitationAccepted {
                invitation_id,
                user_id,
                permissions,
            } => {
                self.settle(account_id, *invitation_id, InvitationState::Accepted);
                let Some(account) = self.accounts.get_mut(&account_id) else {
                    return;
                };
                if account.owner_user_id != *user_id {
                    account.members.insert(*user_id, permissions.clone());
                    self.grant_access(*user_id, account_id);
                }
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
                // The event carries the resulting set, so folding it is a replacement; a change
                // naming someone who is not a member has nothing to change here.
                if let Some(held) = self
                    .accounts
                    .get_mut(&account_id)
                    .and_then(|account| account.members.get_mut(user_id))
                {
                    *held = permissions.clone();
                }
            }
            AccountEvent::MemberRemoved { user_id, .. } => {
                let Some(account) = self.accounts.get_mut(&account_id) else {
                    return;
                };
                if account.members.remove(user_id).is_some() {
                    self.revoke_access(*user_id, account_id);
                }
            }
            AccountEvent::OwnershipTransferred {
                from_user_id,
                to_user_id,
            } => {
                let Some(account) = self.accounts.get_mut(&account_id) else {
                    return;
                };
                account.members.remove(to_user_id);
                account.owner_user_id = *to_user_id;
                if from_user_id != to_user_id {
                    account.members.insert(*from_user_id, PermissionSet::full());
                }
                self.grant_access(*to_user_id, account_id);
                self.grant_access(*from_user_id, account_id);
            }
            AccountEvent::ServiceOrdered { .. }
            | AccountEvent::InvoiceIssued { .. }
            | AccountEvent::PaymentReceived { .. }
            | AccountEvent::InvoicePaid { .. }
            | AccountEvent::InvoiceCancelled { .. }
            | AccountEvent::ServiceRenewed { .. }
            | AccountEvent::ServiceCancelled { .. }
            | AccountEvent::NameserversUpdated { .. }
            | AccountEvent::ContactAdded { .. }
            | AccountEvent::ContactRemoved { .. }
            | AccountEvent::NotificationOptInsSet { .. }
            | AccountEvent::PaymentReminderSent { .. }
            | AccountEvent::ServiceSuspended { .. }
            | AccountEvent::ServiceUnsuspended { .. }
            | AccountEvent::ServiceActivated { .. }
            | AccountEvent::ServiceLoginOpened { .. }
            | AccountEvent::ServiceLoginFailed { .. } => {}
        }
    }

    /// The account's view and invitations, as a persisted document holds them.
    pub(crate) fn account_parts(&self, account_id: Uuid) -> (Option<AccountView>, Vec<Invitation>) {
        (
            self.accounts.get(&account_id).cloned(),
            self.invitations
                .get(&account_id)
                .cloned()
                .unwrap_or_default(),
        )
    }

    /// Replaces what the tree holds about one account; the user-to-account access follows the
    /// account's owner and members, which is what the fold grants and revokes.
    pub(crate) fn put_account_parts(
        &mut self,
        account_id: Uuid,
        view: Option<AccountView>,
        invitations: Vec<Invitation>,
    ) {
        if let Some(previous) = self.accounts.remove(&account_id) {
            self.revoke_access(previous.owner_user_id, account_id);
            for user_id in previous.members.keys() {
                self.revoke_access(*user_id, account_id);
            }
        }
        if let Some(view) = view {
            self.grant_access(view.owner_user_id, account_id);
            for user_id in view.members.keys() {
                self.grant_access(*user_id, account_id);
            }
            self.accounts.insert(account_id, view);
        }
        if invitations.is_empty() {
            self.invitations.remove(&account_id);
        } else {
            self.invitations.insert(account_id, invitations);
        }
    }

    /// Every account, user and invitee email key held, in key order.
    pub(crate) fn keys(&self) -> (Vec<Uuid>, Vec<Uuid>, Vec<String>) {
        let mut accounts: Vec<Uuid> = self.accounts.keys().copied().collect();
        accounts.extend(self.invitations.keys().copied());
        (
            accounts,
            self.users.keys().copied().collect(),
            self.invitations_by_email.keys().cloned().collect(),
        )
    }

    /// Replaces a user's view, keeping the email index in step.
    pub(crate) fn put_user(&mut self, view: UserView) {
        if let Some(previous) = self.users.get(&view.user_id) {
            self.users_by_email.remove(&previous.email.key());
        }
        self.users_by_email.insert(view.email.key(), view.user_id);
        self.users.insert(view.user_id, view);
    }

    /// The `(account, invitation)` pairs sent to an email key, in the order first sent.
    pub(crate) fn invitations_to(&self, email_key: &str) -> Vec<(Uuid, Uuid)> {
        self.invitations_by_email
            .get(email_key)
            .cloned()
            .unwrap_or_default()
    }

    /// Replaces the invitations sent to an email key.
    pub(crate) fn put_invitations_to(&mut self, email_key: String, sent: Vec<(Uuid, Uuid)>) {
        if sent.is_empty() {
            self.invitations_by_email.remove(&email_key);
        } else {
            self.invitations_by_email.insert(email_key, sent);
        }
    }

    fn invitation_mut(&mut self, account_id: Uuid, invitation_id: Uuid) -> Option<&mut Invitation> {
        self.invitations
            .get_mut(&account_id)?
            .iter_mut()
            .find(|i| i.invitation_id == invitation_id)
    }

    fn settle(&mut self, account_id: Uuid, invitation_id: Uuid, state: InvitationState) {
        if let Some(invitation) = self.invitation_mut(account_id, invitation_id) {
            invitation.state = state;
        }
    }

    fn grant_access(&mut self, user_id: Uuid, account_id: Uuid) {
        self.access.entry(user_id).or_default().insert(account_id);
    }

    fn revoke_access(&mut self, user_id: Uuid, account_id: Uuid) {
        if let Some(accounts) = self.access.get_mut(&user_id) {
            accounts.remove(&account_id);
            if accounts.is_empty() {
                self.access.remove(&user_id);
            }
        }
    }
}

fn role_of(account: &AccountView, user_id: Uuid) -> Option<(Role, PermissionSet)> {
    if account.owner_user_id == user_id {
        Some((Role::Owner, PermissionSet::full()))
    } else {
        account
            .members
            .get(&user_id)
            .map(|p| (Role::Member, p.clone()))
    }
}
