//! Notification routing: security notices, de-duplication, stable ids, hidden tokens.

mod support;

use onbehalf_events::account::RemovalReason;
use onbehalf_events::{AccountEvent, Permission};
use onbehalf_projections::{Notification, NotificationCategory};
use support::{fold, perms, Agency, Ctx};
use uuid::Uuid;

fn security(notices: Vec<&Notification>) -> Vec<(&str, &str, &str)> {
    notices
        .into_iter()
        .filter(|n| n.category == NotificationCategory::Security)
        .map(|n| {
            (
                n.event_type.as_str(),
                n.recipient_email.as_str(),
                n.subject.as_str(),
            )
        })
        .collect()
}

#[test]
fn security_notices_go_to_the_owner_and_the_affected_user() {
    let (agency, mut log) = Agency::walkthrough();
    let owner = Ctx::user(agency.newlife_owner).for_account(agency.newlife);
    log.account(
        &owner,
        agency.newlife,
        AccountEvent::PermissionsRevoked {
            user_id: agency.designer,
            revoked: perms(&[Permission::Invoices, Permission::Orders]),
            permissions: onbehalf_events::PermissionSet::full()
                .difference(&perms(&[Permission::Invoices, Permission::Orders])),
        },
    );
    log.account(
        &owner,
        agency.newlife,
        AccountEvent::MemberRemoved {
            user_id: agency.designer,
            reason: RemovalReason::Revoked,
        },
    );
    let models = fold(&log.events);

    let joined = "Designer <designer@yourcompany.com> joined New Life Church";
    let changed = "Permissions of Designer <designer@yourcompany.com> on New Life Church changed";
    let removed = "Designer <designer@yourcompany.com> no longer has access to New Life Church";
    assert_eq!(
        security(models.notifications.for_account(agency.newlife)),
        vec![
            ("InvitationAccepted", "info@newlife.or.tz", joined),
            ("InvitationAccepted", "designer@yourcompany.com", joined),
            ("PermissionsRevoked", "info@newlife.or.tz", changed),
            ("PermissionsRevoked", "designer@yourcompany.com", changed),
            ("MemberRemoved", "info@newlife.or.tz", removed),
            ("MemberRemoved", "designer@yourcompany.com", removed),
        ]
    );
    let revoked = models
        .notifications
        .for_account(agency.newlife)
        .into_iter()
        .find(|n| n.event_type == "PermissionsRevoked")
        .unwrap();
    assert_eq!(
        revoked.body,
        "Designer <designer@yourcompany.com> lost INVOICES, ORDERS on New Life Church and now \
         holds PROFILE, CONTACTS, PRODUCTS, MANAGE_PRODUCTS, PRODUCT_SSO, DOMAINS, \
         MANAGE_DOMAINS, QUOTES, TICKETS, AFFILIATES, EMAILS."
    );
}

#[test]
fn a_security_notice_whose_affected_user_is_the_owner_is_sent_once() {
    let (agency, mut log) = Agency::walkthrough();
    // The write side never grants to the owner, but a projection folds whatever the log says.
    log.account(
        &Ctx::user(agency.star_owner).for_account(agency.star),
        agency.star,
        AccountEvent::PermissionsGranted {
            user_id: agency.star_owner,
            granted: perms(&[Permission::Tickets]),
            permissions: perms(&[Permission::Tickets]),
        },
    );
    let models = fold(&log.events);

    let granted: Vec<_> = security(models.notifications.for_account(agency.star))
        .into_iter()
        .filter(|(event_type, ..)| *event_type == "PermissionsGranted")
        .map(|(_, recipient, _)| recipient)
        .collect();
    assert_eq!(granted, vec!["support@starlogistics.co.tz"]);
    assert_eq!(
        models.accounts.account(agency.star).unwrap().owner_user_id,
        agency.star_owner
    );
}

#[test]
fn ownership_transfer_notifies_the_former_and_the_new_owner() {
    let (agency, mut log) = Agency::walkthrough();
    log.account(
        &Ctx::user(agency.abc_owner).for_account(agency.abc),
        agency.abc,
        AccountEvent::OwnershipTransferred {
            from_user_id: agency.abc_owner,
            to_user_id: agency.designer,
        },
    );
    let models = fold(&log.events);

    let transfer: Vec<_> = models
        .notifications
        .all()
        .iter()
        .filter(|n| n.event_type == "OwnershipTransferred")
        .map(|n| (n.recipient_email.as_str(), n.account_id))
        .collect();
    assert_eq!(
        transfer,
        vec![
            ("admin@abc.co.tz", agency.abc),
            ("designer@yourcompany.com", agency.abc)
        ]
    );
    let notice = models
        .notifications
        .all()
        .iter()
        .find(|n| n.event_type == "OwnershipTransferred")
        .unwrap();
    assert_eq!(
        notice.body,
        "Ownership of ABC Company moved from Amina <admin@abc.co.tz> to Designer \
         <designer@yourcompany.com>.\nAmina <admin@abc.co.tz> stays a member with full access."
    );
}

#[test]
fn members_receive_no_notice_of_a_client_account_but_security_and_invitations() {
    let (agency, mut log) = Agency::walkthrough();
    let ctx = Ctx::user(agency.designer)
        .for_account(agency.abc)
        .relying_on(Permission::Orders);
    log.order_hosting(
        &ctx,
        agency.abc,
        Uuid::from_u128(0x5001),
        Uuid::from_u128(0x6001),
        "abc.co.tz",
    );
    log.pay(
        &ctx,
        agency.abc,
        Uuid::from_u128(0x6001),
        Uuid::from_u128(0x7001),
        100,
        "CARD-1",
    );
    let models = fold(&log.events);

    let designer: Vec<(NotificationCategory, &str)> = models
        .notifications
        .for_recipient("designer@yourcompany.com")
        .into_iter()
        .filter(|n| n.account_id == agency.abc)
        .map(|n| (n.category, n.event_type.as_str()))
        .collect();
    assert_eq!(
        designer,
        vec![
            (NotificationCategory::Invitation, "UserInvited"),
            (NotificationCategory::Security, "InvitationAccepted"),
        ]
    );
}

#[test]
fn notification_ids_are_uuid_v5_of_event_recipient_and_category() {
    let (agency, log) = Agency::walkthrough();
    let models = fold(&log.events);

    let accepted = log
        .events
        .iter()
        .find(|e| {
            e.event_type == "InvitationAccepted" && e.metadata.on_behalf_of == Some(agency.abc)
        })
        .unwrap();
    let ids: Vec<Uuid> = models
        .notifications
        .all()
        .iter()
        .filter(|n| n.position == accepted.position)
        .map(|n| n.notification_id)
        .collect();
    assert_eq!(
        ids,
        vec![
            Uuid::new_v5(&accepted.event_id, b"admin@abc.co.tz/security"),
            Uuid::new_v5(&accepted.event_id, b"designer@yourcompany.com/security"),
        ]
    );
    let mut all: Vec<Uuid> = models
        .notifications
        .all()
        .iter()
        .map(|n| n.notification_id)
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), models.notifications.all().len());
}

#[test]
fn debug_output_of_an_invitation_notice_hides_its_token_and_link() {
    let (_, log) = Agency::walkthrough();
    let models = fold(&log.events);
    let notice = models
        .notifications
        .for_recipient("designer@yourcompany.com")[0];
    let token = notice.action_token.clone().unwrap();

    let printed = format!("{notice:?} {:?}", models.notifications);

    assert!(!printed.contains(&token), "{printed}");
    assert!(!printed.contains("invitations/accept"), "{printed}");
    assert!(printed.contains("<redacted>"));
    assert!(
        printed.contains("subject: \"Invitation to manage ABC Company\""),
        "{printed}"
    );
}
