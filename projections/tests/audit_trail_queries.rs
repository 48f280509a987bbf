//! Audit trail queries: filters, both orders, position cursors and the upper bound.

mod support;

use chrono::Duration;
use onbehalf_projections::{AuditFilter, AuditOrder, AuditTrail};
use support::{at, fold, Agency};

fn positions(trail: &AuditTrail, filter: &AuditFilter, order: AuditOrder) -> Vec<Vec<u64>> {
    // Every page of two, following the cursors to the end.
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = trail.page(filter, order, after, u64::MAX, 2);
        pages.push(page.entries.iter().map(|e| e.position).collect());
        match page.next {
            Some(cursor) => after = Some(cursor),
            None => return pages,
        }
    }
}

#[test]
fn a_users_actions_across_its_accounts_page_by_position_in_both_orders() {
    let (agency, log) = Agency::walkthrough();
    let models = fold(&log.events);
    let designer = AuditFilter {
        actor_user_id: Some(agency.designer),
        ..AuditFilter::default()
    };

    assert_eq!(
        positions(&models.audit, &designer, AuditOrder::OldestFirst),
        vec![vec![1, 2], vec![6, 10], vec![14, 18]]
    );
    assert_eq!(
        positions(&models.audit, &designer, AuditOrder::NewestFirst),
        vec![vec![18, 14], vec![10, 6], vec![2, 1]]
    );
}

#[test]
fn account_action_and_time_filters_combine() {
    let (agency, log) = Agency::walkthrough();
    let models = fold(&log.events);
    // The walkthrough's clock starts at 09:00 and moves a minute per event, so event `p` was
    // committed at 09:00 + (p - 1) minutes.
    let minute = |p: i64| at(2026, 3, 1, 9) + Duration::minutes(p - 1);

    let abc = AuditFilter {
        account_id: Some(agency.abc),
        ..AuditFilter::default()
    };
    assert_eq!(
        positions(&models.audit, &abc, AuditOrder::OldestFirst),
        vec![vec![4, 5], vec![6]]
    );
    let accepted = AuditFilter {
        action: Some("InvitationAccepted".into()),
        ..AuditFilter::default()
    };
    assert_eq!(
        positions(&models.audit, &accepted, AuditOrder::OldestFirst),
        vec![vec![6, 10], vec![14, 18]]
    );
    let window = AuditFilter {
        action: Some("InvitationAccepted".into()),
        from: Some(minute(10)),
        to: Some(minute(18)),
        ..AuditFilter::default()
    };
    assert_eq!(
        positions(&models.audit, &window, AuditOrder::OldestFirst),
        vec![vec![10, 14]]
    );
    let empty = AuditFilter {
        from: Some(minute(5)),
        to: Some(minute(5)),
        ..AuditFilter::default()
    };
    assert_eq!(
        positions(&models.audit, &empty, AuditOrder::NewestFirst),
        vec![Vec::<u64>::new()]
    );
}

#[test]
fn the_upper_bound_and_a_cursor_hold_a_page_still_while_entries_arrive() {
    let (agency, mut log) = Agency::walkthrough();
    let mut models = fold(&log.events);
    let all = AuditFilter::default();

    let first = models
        .audit
        .page(&all, AuditOrder::NewestFirst, None, 18, 3);
    let first: Vec<u64> = first.entries.iter().map(|e| e.position).collect();
    assert_eq!(first, vec![18, 17, 16]);

    // Newer entries arrive; the next page newest first carries on below the cursor.
    log.register(
        uuid::Uuid::from_u128(0x1000_0099),
        "late@example.com",
        "Late",
    );
    log.create_account(
        agency.designer,
        uuid::Uuid::from_u128(0x2000_0099),
        "Late Co",
        "late@example.com",
    );
    models = fold(&log.events);
    let second = models
        .audit
        .page(&all, AuditOrder::NewestFirst, Some(16), u64::MAX, 3);
    assert_eq!(
        second
            .entries
            .iter()
            .map(|e| e.position)
            .collect::<Vec<_>>(),
        vec![15, 14, 13]
    );
    assert_eq!(second.next, Some(13));

    let bounded = models
        .audit
        .page(&all, AuditOrder::OldestFirst, Some(17), 18, 5);
    assert_eq!(
        bounded
            .entries
            .iter()
            .map(|e| e.position)
            .collect::<Vec<_>>(),
        vec![18]
    );
    assert_eq!(bounded.next, None);
    let nothing = models
        .audit
        .page(&all, AuditOrder::OldestFirst, None, u64::MAX, 0);
    assert_eq!((nothing.entries.len(), nothing.next), (0, None));
}
