//! Invitations: expiry derived from `now`, resends, settled states, ownership transfer.

mod support;

use chrono::Duration;
use onbehalf_events::{AccountEvent, Permission, PermissionSet};
use onbehalf_projections::{
    InvitationLinks, InvitationState, InvitationView, NotificationCategory, Role,
};
use support::{email, fold, name, perms, Agency, Ctx, Log, TestLinks};
use uuid::Uuid;

const INVOICES_ONLY: &[Permission] = &[Permission::Invoices];

/// ABC Company alone, inviting its accountant to view and pay invoices.
fn abc_invites_the_accountant() -> (Agency, Log, Uuid) {
    let agency = Agency::ids();
    let mut log = Log::new();
    log.register(agency.abc_owner, "admin@abc.co.tz", "Amina");
    log.create_account(
        agency.abc_owner,
        agency.abc,
        "ABC Company",
        "admin@abc.co.tz",
    );
    let invitation = Uuid::from_u128(0x3100);
    log.invite(
        agency.abc_owner,
        agency.abc,
        invitation,
        "Accounts@ABC.co.tz",
        perms(INVOICES_ONLY),
    );
    (agency, log, invitation)
}

#[test]
fn a_pending_invitation_expires_once_now_reaches_its_expiry() {
    let (agency, log, invitation) = abc_invites_the_accountant();
    let models = fold(&log.events);
    let invited = &log.events[2];
    let expires_at = invited.occurred_at + Duration::days(7);

    let at = |now| models.accounts.invitations(agency.abc, now);
    let pending = InvitationView {
        invitation_id: invitation,
        account_id: agency.abc,
        account_name: name("ABC Company"),
        email: email("Accounts@ABC.co.tz"),
        permissions: perms(INVOICES_ONLY),
        invited_at: invited.occurred_at,
        invited_by: agency.abc_owner,
        expires_at,
        generation: 0,
        state: InvitationState::Pending,
    };
    assert_eq!(at(expires_at - Duration::seconds(1)), vec![pending.clone()]);
    assert_eq!(
        at(expires_at),
        vec![InvitationView {
            state: InvitationState::Expired,
            ..pending.clone()
        }]
    );
    assert_eq!(
        models
            .accounts
            .pending_invitations_for_email("accounts@abc.co.tz", expires_at - Duration::seconds(1)),
        vec![pending]
    );
    assert_eq!(
        models
            .accounts
            .pending_invitations_for_email("accounts@abc.co.tz", expires_at),
        vec![]
    );
}

#[test]
fn resending_gives_a_new_token_a_new_expiry_and_a_new_notification() {
    let (agency, mut log, invitation) = abc_invites_the_accountant();
    log.wait(Duration::days(8));
    let new_expiry = log.now() + Duration::days(7);
    log.account(
        &Ctx::user(agency.abc_owner).for_account(agency.abc),
        agency.abc,
        AccountEvent::InvitationResent {
            invitation_id: invitation,
            generation: 1,
            expires_at: new_expiry,
        },
    );
    let models = fold(&log.events);

    let view = models
        .accounts
        .invitation(agency.abc, invitation, log.now())
        .unwrap();
    assert_eq!(
        (view.generation, view.expires_at, view.state),
        (1, new_expiry, InvitationState::Pending)
    );

    let sent = models.notifications.for_recipient("accounts@abc.co.tz");
    assert_eq!(sent.len(), 2);
    let first = TestLinks.token(agency.abc, invitation, 0);
    let second = TestLinks.token(agency.abc, invitation, 1);
    assert_ne!(first, second);
    assert_eq!(sent[0].action_token.as_deref(), Some(first.as_str()));
    assert_eq!(sent[1].action_token.as_deref(), Some(second.as_str()));
    assert!(sent[1].body.contains(&TestLinks.accept_url(&second)));
    assert!(!sent[1].body.contains(&first));
    assert_ne!(sent[0].notification_id, sent[1].notification_id);
    assert_eq!(sent[1].event_type, "InvitationResent");
}

#[test]
fn the_invitation_notice_carries_the_link_the_account_and_the_permissions() {
    let (agency, log) = Agency::walkthrough();
    let models = fold(&log.events);

    let invitation = Agency::invitation(agency.abc);
    let notice = models
        .notifications
        .for_recipient("designer@yourcompany.com")
        .into_iter()
        .find(|n| n.category == NotificationCategory::Invitation && n.account_id == agency.abc)
        .unwrap();
    let token = TestLinks.token(agency.abc, invitation, 0);
    assert_eq!(notice.action_token.as_deref(), Some(token.as_str()));
    assert_eq!(notice.subject, "Invitation to manage ABC Company");
    assert_eq!(
        notice.body,
        format!(
            "Amina <admin@abc.co.tz> invited you to act on behalf of ABC Company with full \
             access.\n\
             Accept the invitation: https://my.netpoa.test/invitations/accept?token={token}\n\
             The invitation expires at 2026-03-08 09:{:02} UTC.",
            notice.created_at.format("%M")
        )
    );
    // The token is recomputed, never stored in the log.
    assert!(log
        .events
        .iter()
        .all(|e| !e.payload.to_string().contains(&token)));
}

#[test]
fn an_invitation_with_some_permissions_lists_them_by_name() {
    let (_, log, _) = abc_invites_the_accountant();
    let models = fold(&log.events);

    let notice = models.notifications.for_recipient("accounts@abc.co.tz")[0];
    assert!(notice.body.starts_with(
        "Amina <admin@abc.co.tz> invited you to act on behalf of ABC Company with INVOICES.\n"
    ));
    assert_eq!(notice.recipient_email, email("Accounts@ABC.co.tz"));
}

#[test]
fn accepted_declined_and_cancelled_invitations_keep_their_state_past_expiry() {
    let (agency, mut log, accepted) = abc_invites_the_accountant();
    let owner = Ctx::user(agency.abc_owner).for_account(agency.abc);
    let (declined, cancelled) = (Uuid::from_u128(0x3101), Uuid::from_u128(0x3102));
    let accountant = Uuid::from_u128(0x1100);
    log.invite(
        agency.abc_owner,
        agency.abc,
        declined,
        "designer@yourcompany.com",
        PermissionSet::full(),
    );
    log.invite(
        agency.abc_owner,
        agency.abc,
        cancelled,
        "it@abc.co.tz",
        PermissionSet::full(),
    );
    log.register(accountant, "accounts@abc.co.tz", "Accountant");
    log.accept(accountant, agency.abc, accepted, perms(INVOICES_ONLY));
    log.account(
        &Ctx::user(agency.designer).for_account(agency.abc),
        agency.abc,
        AccountEvent::InvitationDeclined {
            invitation_id: declined,
            user_id: agency.designer,
        },
    );
    log.account(
        &owner,
        agency.abc,
        AccountEvent::InvitationCancelled {
            invitation_id: cancelled,
        },
    );
    let models = fold(&log.events);

    let long_after = log.now() + Duration::days(365);
    let states: Vec<(Uuid, InvitationState)> = models
        .accounts
        .invitations(agency.abc, long_after)
        .into_iter()
        .map(|i| (i.invitation_id, i.state))
        .collect();
    assert_eq!(
        states,
        vec![
            (accepted, InvitationState::Accepted),
            (declined, InvitationState::Declined),
            (cancelled, InvitationState::Cancelled),
        ]
    );
    assert_eq!(
        models
            .accounts
            .pending_invitations_for_email("designer@yourcompany.com", log.now()),
        vec![]
    );
    assert_eq!(
        models.accounts.access(agency.abc, accountant),
        Some((Role::Member, perms(INVOICES_ONLY)))
    );
}

#[test]
fn ownership_transfer_makes_the_former_owner_a_member_with_full_access() {
    let (agency, mut log) = Agency::walkthrough();
    log.account(
        &Ctx::user(agency.greenfarm_owner).for_account(agency.greenfarm),
        agency.greenfarm,
        AccountEvent::OwnershipTransferred {
            from_user_id: agency.greenfarm_owner,
            to_user_id: agency.designer,
        },
    );
    let models = fold(&log.events);

    let account = models.accounts.account(agency.greenfarm).unwrap();
    assert_eq!(account.owner_user_id, agency.designer);
    assert_eq!(account.members.len(), 1);
    assert_eq!(
        account.members.get(&agency.greenfarm_owner),
        Some(&PermissionSet::full())
    );
    let roles: Vec<(Uuid, Role)> = models
        .accounts
        .members(agency.greenfarm)
        .iter()
        .map(|m| (m.user_id, m.role))
        .collect();
    assert_eq!(
        roles,
        vec![
            (agency.designer, Role::Owner),
            (agency.greenfarm_owner, Role::Member)
        ]
    );
    let owned: Vec<Uuid> = models
        .accounts
        .accessible_accounts(agency.designer)
        .into_iter()
        .filter(|a| a.role == Role::Owner)
        .map(|a| a.account_id)
        .collect();
    assert_eq!(owned, vec![agency.greenfarm, agency.designer_account]);
}
