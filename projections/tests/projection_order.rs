//! Position order: redelivery is skipped, gaps and undecodable events are refused untouched.

mod support;

use onbehalf_events::stream_type;
use onbehalf_projections::{Applied, ProjectionError, Role};
use support::{fold, models, Agency, Ctx, Log};
use uuid::Uuid;

#[test]
fn events_apply_one_position_after_another() {
    let (_, log) = Agency::walkthrough();
    let mut models = models();
    assert_eq!(models.position(), 0);

    for (i, event) in log.events.iter().enumerate() {
        assert_eq!(models.apply(event).unwrap(), Applied::Applied);
        assert_eq!(models.position(), i as u64 + 1);
    }
    assert_eq!(models.audit.all().len(), log.events.len());
}

#[test]
fn a_redelivered_event_is_skipped() {
    let (agency, log) = Agency::walkthrough();
    let mut models = fold(&log.events);
    let before = (
        models.notifications.all().to_vec(),
        models.audit.all().to_vec(),
    );

    assert_eq!(models.apply(&log.events[3]).unwrap(), Applied::Skipped);
    assert_eq!(
        models.apply(log.events.last().unwrap()).unwrap(),
        Applied::Skipped
    );

    assert_eq!(models.position(), log.events.len() as u64);
    assert_eq!(
        (
            models.notifications.all().to_vec(),
            models.audit.all().to_vec()
        ),
        before
    );
    assert_eq!(
        models.accounts.accessible_accounts(agency.designer).len(),
        5
    );
}

#[test]
fn an_event_past_the_next_position_is_refused_and_nothing_changes() {
    let (agency, log) = Agency::walkthrough();
    let mut models = fold(&log.events[..4]);

    let error = models.apply(&log.events[5]).unwrap_err();

    assert!(
        matches!(
            error,
            ProjectionError::Gap {
                expected: 5,
                found: 6
            }
        ),
        "unexpected {error:?}"
    );
    assert_eq!(
        error.to_string(),
        "event at position 6 would leave a gap: the next position is 5"
    );
    assert_eq!(models.position(), 4);
    assert_eq!(models.audit.all().len(), 4);
    assert_eq!(models.apply(&log.events[4]).unwrap(), Applied::Applied);
    assert_eq!(models.apply(&log.events[5]).unwrap(), Applied::Applied);
    assert_eq!(
        models
            .accounts
            .access(agency.abc, agency.designer)
            .map(|(role, _)| role),
        Some(Role::Member)
    );
}

#[test]
fn an_undecodable_payload_is_refused_and_the_position_stays() {
    let (agency, mut log) = Agency::walkthrough();
    let bad = log.push(
        &Ctx::user(agency.abc_owner),
        onbehalf_events::account_stream(agency.abc),
        stream_type::CLIENT_ACCOUNT,
        "InvoiceIssued",
        serde_json::json!({ "InvoiceIssued": { "invoice_id": "not a uuid" } }),
    );
    let mut models = fold(&log.events[..log.events.len() - 1]);
    let position = models.position();

    let error = models.apply(&bad).unwrap_err();

    assert!(
        matches!(error, ProjectionError::Decode { position: p, .. } if p == bad.position),
        "unexpected {error:?}"
    );
    assert_eq!(models.position(), position);
    assert_eq!(models.audit.all().len() as u64, position);
}

#[test]
fn a_client_account_event_in_a_stream_naming_no_account_is_refused() {
    let mut log = Log::new();
    let event = log.push(
        &Ctx::system(),
        "account-abc".to_owned(),
        stream_type::CLIENT_ACCOUNT,
        "InvoicePaid",
        serde_json::json!({ "InvoicePaid": { "invoice_id": Uuid::nil() } }),
    );
    let mut models = models();

    let error = models.apply(&event).unwrap_err();

    assert!(
        matches!(
            &error,
            ProjectionError::StreamId { position: 1, stream_id } if stream_id == "account-abc"
        ),
        "unexpected {error:?}"
    );
    assert_eq!(models.position(), 0);
}

#[test]
fn an_event_of_an_unknown_stream_type_is_only_audited() {
    let mut log = Log::new();
    let event = log.push(
        &Ctx::system(),
        "ticket-1".to_owned(),
        "ticket",
        "TicketOpened",
        serde_json::json!({ "TicketOpened": {} }),
    );
    let mut models = models();

    assert_eq!(models.apply(&event).unwrap(), Applied::Applied);

    assert_eq!(models.position(), 1);
    assert_eq!(models.audit.all()[0].action, "TicketOpened");
    assert!(models.notifications.all().is_empty());
}
