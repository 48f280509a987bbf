//! Audit trail: one entry per event, the actor's email as it was, per account and per actor.

mod support;

use onbehalf_events::{account_stream, Actor, Permission};
use onbehalf_projections::AuditEntry;
use support::{email, fold, Agency, Ctx, Log};
use uuid::Uuid;

#[test]
fn every_event_of_every_stream_gets_one_entry_in_position_order() {
    let (_, log) = Agency::walkthrough();
    let models = fold(&log.events);

    let positions: Vec<u64> = models.audit.all().iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=log.events.len() as u64).collect::<Vec<_>>());
    let actions: Vec<&str> = models.audit.all()[..4]
        .iter()
        .map(|e| e.action.as_str())
        .collect();
    assert_eq!(
        actions,
        vec![
            "UserRegistered",
            "AccountCreated",
            "UserRegistered",
            "AccountCreated"
        ]
    );
}

#[test]
fn an_entry_shows_who_acted_on_whose_behalf_with_the_actors_email_as_it_was() {
    let (agency, mut log) = Agency::walkthrough();
    let ctx = Ctx::user(agency.designer)
        .for_account(agency.abc)
        .relying_on(Permission::Invoices)
        .request("pay-inv-1")
        .with_client("196.41.38.7", "Mozilla/5.0 (X11; Linux x86_64)");
    log.order_hosting(
        &Ctx::system().for_account(agency.abc),
        agency.abc,
        Uuid::from_u128(0x5001),
        Uuid::from_u128(0x6001),
        "abc.co.tz",
    );
    let payment = log.pay(
        &ctx,
        agency.abc,
        Uuid::from_u128(0x6001),
        Uuid::from_u128(0x7001),
        100,
        "CARD-1",
    );
    let models = fold(&log.events);

    let entry = models
        .audit
        .all()
        .iter()
        .find(|e| e.position == payment.position)
        .unwrap();
    assert_eq!(
        entry,
        &AuditEntry {
            position: payment.position,
            occurred_at: payment.occurred_at,
            event_id: payment.event_id,
            stream_id: account_stream(agency.abc),
            action: "PaymentReceived".into(),
            event_version: "1".into(),
            actor: Actor::User(agency.designer),
            actor_user_id: Some(agency.designer),
            actor_email: Some(email("designer@yourcompany.com")),
            on_behalf_of: Some(agency.abc),
            permission: Some(Permission::Invoices),
            request_id: Some("pay-inv-1".into()),
            correlation_id: payment.metadata.correlation_id,
            causation_id: None,
            client_address: Some("196.41.38.7".into()),
            user_agent: Some("Mozilla/5.0 (X11; Linux x86_64)".into()),
            reason: None,
        }
    );
}

#[test]
fn the_actors_email_is_taken_from_the_users_events_at_that_moment() {
    let mut log = Log::new();
    let (user, account) = (Uuid::from_u128(0x1), Uuid::from_u128(0x2));
    // The user acts before the log holds its registration, then registers: only later entries
    // can know the email, and the earlier one is not rewritten.
    log.create_account(user, account, "Green Farm Ltd", "office@greenfarm.co.tz");
    log.register(user, "Neema@GreenFarm.co.tz", "Neema");
    log.create_account(
        user,
        Uuid::from_u128(0x3),
        "Green Farm Shop",
        "shop@greenfarm.co.tz",
    );
    let models = fold(&log.events);

    let emails: Vec<Option<&str>> = models
        .audit
        .for_actor(user)
        .iter()
        .map(|e| e.actor_email.as_ref().map(|m| m.as_str()))
        .collect();
    assert_eq!(
        emails,
        vec![
            None,
            Some("Neema@GreenFarm.co.tz"),
            Some("Neema@GreenFarm.co.tz")
        ]
    );
}

#[test]
fn an_actor_that_is_not_a_user_has_no_email() {
    let (agency, mut log) = Agency::walkthrough();
    let staff = Ctx::by(Actor::Staff("support-desk".into())).for_account(agency.star);
    log.order_hosting(
        &staff,
        agency.star,
        Uuid::from_u128(0x5001),
        Uuid::from_u128(0x6001),
        "starlogistics.co.tz",
    );
    let models = fold(&log.events);

    let last = models.audit.all().last().unwrap();
    assert_eq!(last.actor, Actor::Staff("support-desk".into()));
    assert_eq!((last.actor_user_id, last.actor_email.clone()), (None, None));
}

#[test]
fn an_accounts_trail_holds_its_own_stream_and_actions_on_its_behalf_once_each() {
    let (agency, mut log) = Agency::walkthrough();
    // A user-stream event issued on behalf of ABC Company (for example by its support tooling).
    let helper = Uuid::from_u128(0x1999);
    log.user(
        &Ctx::user(agency.abc_owner).for_account(agency.abc),
        onbehalf_events::UserEvent::UserRegistered {
            user_id: helper,
            email: email("helpdesk@abc.co.tz"),
            display_name: support::name("Help Desk"),
        },
    );
    let models = fold(&log.events);

    let abc: Vec<(u64, &str)> = models
        .audit
        .for_account(agency.abc)
        .iter()
        .map(|e| (e.position, e.action.as_str()))
        .collect();
    assert_eq!(
        abc,
        vec![
            (4, "AccountCreated"),
            (5, "UserInvited"),
            (6, "InvitationAccepted"),
            (log.events.len() as u64, "UserRegistered"),
        ]
    );
}

#[test]
fn an_actors_trail_lists_only_that_users_actions() {
    let (agency, log) = Agency::walkthrough();
    let models = fold(&log.events);

    let designer: Vec<(u64, &str, Option<Uuid>)> = models
        .audit
        .for_actor(agency.designer)
        .iter()
        .map(|e| (e.position, e.action.as_str(), e.on_behalf_of))
        .collect();
    assert_eq!(
        designer,
        vec![
            (1, "UserRegistered", None),
            (2, "AccountCreated", Some(agency.designer_account)),
            (6, "InvitationAccepted", Some(agency.abc)),
            (10, "InvitationAccepted", Some(agency.newlife)),
            (14, "InvitationAccepted", Some(agency.star)),
            (18, "InvitationAccepted", Some(agency.greenfarm)),
        ]
    );
}
