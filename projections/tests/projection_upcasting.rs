//! Read models fold events stored at older versions exactly as their current version.

mod support;

use onbehalf_events::{AccountEvent, PermissionSet, StoredEvent, UpcastError};
use onbehalf_projections::{NotificationCategory, ProjectionError};
use support::*;
use uuid::Uuid;

/// The same log with every invitation written as version 1 (no `invited_by`), as a release
/// before version 2 wrote it.
fn as_written_before_version_2(events: &[StoredEvent]) -> Vec<StoredEvent> {
    events
        .iter()
        .cloned()
        .map(|mut event| {
            if event.event_type == "UserInvited" {
                event.event_version = "1".into();
                event.payload["UserInvited"]
                    .as_object_mut()
                    .unwrap()
                    .remove("invited_by");
            }
            event
        })
        .collect()
}

#[test]
fn a_log_of_v1_invitations_folds_into_the_same_views_as_its_v2_form() {
    let (agency, log) = Agency::walkthrough();
    let v1_log = as_written_before_version_2(&log.events);
    assert_eq!(
        v1_log
            .iter()
            .filter(|e| e.event_type == "UserInvited" && e.event_version == "1")
            .count(),
        4
    );

    let (current, upcast) = (fold(&log.events), fold(&v1_log));

    for (_, account, _, _, _) in agency.clients() {
        assert_eq!(
            upcast.accounts.invitations(account, log.now()),
            current.accounts.invitations(account, log.now())
        );
        assert_eq!(
            upcast.accounts.members(account),
            current.accounts.members(account)
        );
    }
    assert_eq!(
        upcast.accounts.invitations(agency.abc, log.now())[0].invited_by,
        agency.abc_owner
    );
    assert_eq!(upcast.notifications.all(), current.notifications.all());
    assert_eq!(upcast.audit.all(), current.audit.all());
}

#[test]
fn the_audit_trail_shows_a_v1_invitation_at_its_current_version() {
    let (agency, log) = Agency::walkthrough();
    let v1_log = as_written_before_version_2(&log.events);

    let models = fold(&v1_log);

    let invited: Vec<(&str, &str)> = models
        .audit
        .for_account(agency.abc)
        .into_iter()
        .filter(|e| e.action == "UserInvited")
        .map(|e| (e.action.as_str(), e.event_version.as_str()))
        .collect();
    assert_eq!(invited, vec![("UserInvited", "2")]);
}

#[test]
fn an_event_of_a_version_newer_than_the_release_is_refused_and_nothing_changes() {
    let (agency, mut log) = Agency::walkthrough();
    let mut newer = log.account(
        &Ctx::user(agency.abc_owner).for_account(agency.abc),
        agency.abc,
        AccountEvent::InvitationCancelled {
            invitation_id: Uuid::from_u128(0x9999),
        },
    );
    newer.event_version = "2".into();
    let mut models = fold(&log.events[..log.events.len() - 1]);
    let position = models.position();

    let error = models.apply(&newer).unwrap_err();

    assert!(
        matches!(
            &error,
            ProjectionError::Upcast(UpcastError::FutureVersion {
                position: p,
                version: 2,
                current: 1,
                ..
            }) if *p == newer.position
        ),
        "unexpected {error:?}"
    );
    assert_eq!(models.position(), position);
    assert_eq!(models.audit.all().len() as u64, position);
}

#[test]
fn a_v1_invitation_whose_actor_is_not_a_user_is_refused_naming_its_position() {
    let (agency, mut log) = Agency::walkthrough();
    let mut invited = log.account(
        &Ctx::system().for_account(agency.abc),
        agency.abc,
        AccountEvent::UserInvited {
            invitation_id: Uuid::from_u128(0x9998),
            email: email("accounts@abc.co.tz"),
            permissions: PermissionSet::full(),
            expires_at: log.now(),
            invited_by: agency.abc_owner,
        },
    );
    invited = as_written_before_version_2(&[invited]).remove(0);
    let mut models = fold(&log.events[..log.events.len() - 1]);

    let error = models.apply(&invited).unwrap_err();

    assert_eq!(
        error.to_string(),
        format!(
            "the event at position {} (UserInvited v1) cannot be upcast: it lacks a user as the \
             envelope's actor, who sent the invitation",
            invited.position
        )
    );
    assert_eq!(models.position(), invited.position - 1);
}

#[test]
fn the_user_who_sent_an_invitation_hears_of_its_acceptance_after_ownership_moved() {
    let agency = Agency::ids();
    let mut log = Log::new();
    log.register(agency.abc_owner, "admin@abc.co.tz", "Amina");
    log.register(agency.designer, "designer@yourcompany.com", "Designer");
    let accountant = Uuid::from_u128(0x77);
    log.register(accountant, "accounts@abc.co.tz", "Accountant");
    log.create_account(
        agency.abc_owner,
        agency.abc,
        "ABC Company",
        "admin@abc.co.tz",
    );
    log.invite(
        agency.abc_owner,
        agency.abc,
        Agency::invitation(agency.abc),
        "designer@yourcompany.com",
        PermissionSet::full(),
    );
    log.accept(
        agency.designer,
        agency.abc,
        Agency::invitation(agency.abc),
        PermissionSet::full(),
    );
    let second = Uuid::from_u128(0x3101);
    log.invite(
        agency.abc_owner,
        agency.abc,
        second,
        "accounts@abc.co.tz",
        PermissionSet::full(),
    );
    log.account(
        &Ctx::user(agency.abc_owner).for_account(agency.abc),
        agency.abc,
        AccountEvent::OwnershipTransferred {
            from_user_id: agency.abc_owner,
            to_user_id: agency.designer,
        },
    );
    log.accept(accountant, agency.abc, second, PermissionSet::full());

    let models = fold(&log.events);

    let told: Vec<String> = models
        .notifications
        .all()
        .iter()
        .filter(|n| n.event_type == "InvitationAccepted" && n.position == log.events.len() as u64)
        .map(|n| {
            assert_eq!(n.category, NotificationCategory::Security);
            n.recipient_email.to_string()
        })
        .collect();
    assert_eq!(
        told,
        vec![
            "designer@yourcompany.com",
            "accounts@abc.co.tz",
            "admin@abc.co.tz"
        ]
    );
}
