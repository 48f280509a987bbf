//! The contract every event store backend keeps, run against SQLite and PostgreSQL alike.
//!
//! Each behaviour is one generic function over [`EventStore`]; the `sqlite` and `postgres`
//! modules at the bottom run every one of them against a fresh store. PostgreSQL tests skip
//! when no server is reachable, unless `ONBEHALF_REQUIRE_SERVICES=1`.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use onbehalf::store::postgres::PostgresStore;
use onbehalf::store::sqlite::SqliteStore;
use onbehalf::store::{
    verify_chain, AppendBatch, Appended, ChainHash, ChainReport, EventAppender, EventContent,
    EventReader, EventStore, NewEvent, RequestLog, RequestOutcome, RequestRecord, Reservation,
    StoreError, GENESIS_HASH,
};
use onbehalf::testing::{postgres_test_database, TempDataDir};
use onbehalf_events::{Actor, Metadata, Permission, StoredEvent};
use serde_json::json;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Building blocks

fn at(seconds: i64, micros: u32) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, micros * 1_000).expect("valid test timestamp")
}

fn event(event_type: &str, payload: serde_json::Value) -> NewEvent {
    NewEvent::new(event_type, "1", payload, Metadata::new(Actor::System))
}

fn batch(stream_id: &str, expected_version: u64, events: Vec<NewEvent>) -> AppendBatch {
    AppendBatch {
        stream_id: stream_id.to_owned(),
        stream_type: "client_account".to_owned(),
        expected_version,
        occurred_at: at(1_700_000_000, 0),
        events,
        reservations: Vec::new(),
        releases: Vec::new(),
        request: None,
    }
}

fn one(stream_id: &str, expected_version: u64, n: u32) -> AppendBatch {
    batch(
        stream_id,
        expected_version,
        vec![event("Counted", json!({ "n": n }))],
    )
}

fn request(actor: &str, request_id: &str, outcome: serde_json::Value) -> RequestRecord {
    RequestRecord {
        actor: actor.to_owned(),
        request_id: request_id.to_owned(),
        request_hash: format!("hash-of-{request_id}"),
        outcome,
    }
}

fn reservation(scope: &str, key: &str) -> Reservation {
    Reservation {
        scope: scope.to_owned(),
        key: key.to_owned(),
    }
}

async fn all<S: EventStore>(store: &S) -> Vec<StoredEvent> {
    store.read_all(0, 100_000).await.expect("read_all")
}

fn positions(events: &[StoredEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

fn versions(events: &[StoredEvent]) -> Vec<u64> {
    events.iter().map(|e| e.version).collect()
}

// ---------------------------------------------------------------------------------------------
// Behaviours

async fn positions_start_at_one_and_are_gap_free_across_streams<S: EventStore>(store: &S) {
    let a = store.append(one("account-a", 0, 1)).await.unwrap();
    let b = store
        .append(batch(
            "account-b",
            0,
            vec![event("X", json!(1)), event("Y", json!(2))],
        ))
        .await
        .unwrap();
    let c = store.append(one("account-a", 1, 2)).await.unwrap();

    assert_eq!(
        a,
        Appended {
            first_position: 1,
            last_position: 1,
            stream_version: 1
        }
    );
    assert_eq!(
        b,
        Appended {
            first_position: 2,
            last_position: 3,
            stream_version: 2
        }
    );
    assert_eq!(
        c,
        Appended {
            first_position: 4,
            last_position: 4,
            stream_version: 2
        }
    );
    let log = all(store).await;
    assert_eq!(positions(&log), vec![1, 2, 3, 4]);
    let streams: Vec<&str> = log.iter().map(|e| e.stream_id.as_str()).collect();
    assert_eq!(
        streams,
        vec!["account-a", "account-b", "account-b", "account-a"]
    );
}

async fn stream_versions_start_at_one_in_every_stream<S: EventStore>(store: &S) {
    store.append(one("user-1", 0, 1)).await.unwrap();
    store.append(one("user-2", 0, 1)).await.unwrap();
    store.append(one("user-1", 1, 2)).await.unwrap();
    store.append(one("user-2", 1, 2)).await.unwrap();
    store.append(one("user-2", 2, 3)).await.unwrap();

    assert_eq!(
        versions(&store.read_stream("user-1", 0).await.unwrap()),
        vec![1, 2]
    );
    assert_eq!(
        versions(&store.read_stream("user-2", 0).await.unwrap()),
        vec![1, 2, 3]
    );
    assert_eq!(store.read_stream("user-3", 0).await.unwrap(), Vec::new());
}

async fn read_stream_returns_only_events_after_the_given_version<S: EventStore>(store: &S) {
    for n in 0..5 {
        store
            .append(one("account-r", u64::from(n), n))
            .await
            .unwrap();
        store
            .append(one(&format!("account-other-{n}"), 0, n))
            .await
            .unwrap();
    }

    let tail = store.read_stream("account-r", 3).await.unwrap();
    assert_eq!(versions(&tail), vec![4, 5]);
    assert_eq!(positions(&tail), vec![7, 9]);
    assert_eq!(tail[0].payload, json!({ "n": 3 }));
    assert_eq!(store.read_stream("account-r", 5).await.unwrap(), Vec::new());
    assert_eq!(
        store.read_stream("account-r", u64::MAX).await.unwrap(),
        Vec::new()
    );
}

async fn read_all_returns_events_after_a_position_up_to_the_limit<S: EventStore>(store: &S) {
    for n in 0..10 {
        store
            .append(one(&format!("account-{n}"), 0, n))
            .await
            .unwrap();
    }

    assert_eq!(
        positions(&store.read_all(0, 3).await.unwrap()),
        vec![1, 2, 3]
    );
    assert_eq!(
        positions(&store.read_all(3, 4).await.unwrap()),
        vec![4, 5, 6, 7]
    );
    assert_eq!(
        positions(&store.read_all(7, 100).await.unwrap()),
        vec![8, 9, 10]
    );
    assert_eq!(store.read_all(10, 100).await.unwrap(), Vec::new());
    assert_eq!(store.read_all(0, 0).await.unwrap(), Vec::new());
    assert_eq!(
        store.read_all(u64::MAX, usize::MAX).await.unwrap(),
        Vec::new()
    );
}

async fn head_position_is_zero_when_empty_and_the_last_position_after_appends<S: EventStore>(
    store: &S,
) {
    assert_eq!(store.head_position().await.unwrap(), 0);
    store.append(one("account-h", 0, 1)).await.unwrap();
    assert_eq!(store.head_position().await.unwrap(), 1);
    store
        .append(batch(
            "account-h",
            1,
            vec![event("A", json!(1)), event("B", json!(2))],
        ))
        .await
        .unwrap();
    assert_eq!(store.head_position().await.unwrap(), 3);
}

async fn expected_version_conflict_leaves_the_log_untouched<S: EventStore>(store: &S) {
    store.append(one("account-c", 0, 1)).await.unwrap();
    store.append(one("account-c", 1, 2)).await.unwrap();
    let before = all(store).await;

    let stale = store.append(one("account-c", 1, 3)).await;
    match stale {
        Err(StoreError::Conflict {
            stream_id,
            expected,
            actual,
        }) => {
            assert_eq!((stream_id.as_str(), expected, actual), ("account-c", 1, 2));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let ahead = store.append(one("account-c", 5, 3)).await.unwrap_err();
    assert!(ahead.is_conflict(), "{ahead:?}");
    let new_stream = store.append(one("account-new", 1, 1)).await.unwrap_err();
    assert!(new_stream.is_conflict(), "{new_stream:?}");

    assert_eq!(store.head_position().await.unwrap(), 2);
    assert_eq!(all(store).await, before);
    // The lost race took no position: the next append continues the log without a gap.
    let next = store.append(one("account-c", 2, 3)).await.unwrap();
    assert_eq!(
        next,
        Appended {
            first_position: 3,
            last_position: 3,
            stream_version: 3
        }
    );
}

async fn taken_reservation_fails_the_whole_batch_and_writes_no_event<S: EventStore>(store: &S) {
    let mut first = one("user-1", 0, 1);
    first.reservations = vec![reservation("user_email", "designer@yourcompany.com")];
    store.append(first).await.unwrap();

    let mut second = one("user-2", 0, 1);
    second.reservations = vec![
        reservation("user_email", "owner@example.com"),
        reservation("user_email", "designer@yourcompany.com"),
    ];
    second.request = Some(request("user:2", "req-1", json!({ "user_id": 2 })));
    match store.append(second).await {
        Err(StoreError::Reserved { scope, key }) => {
            assert_eq!(
                (scope.as_str(), key.as_str()),
                ("user_email", "designer@yourcompany.com")
            );
        }
        other => panic!("expected a taken reservation, got {other:?}"),
    }

    assert_eq!(store.head_position().await.unwrap(), 1);
    assert_eq!(store.read_stream("user-2", 0).await.unwrap(), Vec::new());
    assert_eq!(store.find_request("user:2", "req-1").await.unwrap(), None);
    // The batch's other, free key was not kept either: another stream can claim it.
    let mut third = one("user-3", 0, 1);
    third.reservations = vec![reservation("user_email", "owner@example.com")];
    assert_eq!(store.append(third).await.unwrap().last_position, 2);
    // Scopes are separate namespaces.
    let mut fourth = one("user-4", 0, 1);
    fourth.reservations = vec![reservation("account_name", "designer@yourcompany.com")];
    assert_eq!(store.append(fourth).await.unwrap().last_position, 3);
}

async fn a_released_key_can_be_claimed_by_another_stream_and_others_keys_stay<S: EventStore>(
    store: &S,
) {
    let mut first = one("account-a", 0, 1);
    first.reservations = vec![reservation("domain", "starlogistics.co.tz")];
    store.append(first).await.unwrap();
    let mut other = one("account-b", 0, 1);
    other.reservations = vec![reservation("domain", "abc.co.tz")];
    store.append(other).await.unwrap();

    // A stream releases only what it holds: account-a's release of abc.co.tz changes nothing.
    let mut release = one("account-a", 1, 2);
    release.releases = vec![
        reservation("domain", "starlogistics.co.tz"),
        reservation("domain", "abc.co.tz"),
    ];
    store.append(release).await.unwrap();
    assert_eq!(
        store
            .find_reservation("domain", "starlogistics.co.tz")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.find_reservation("domain", "abc.co.tz").await.unwrap(),
        Some("account-b".to_owned())
    );

    let mut claim = one("account-c", 0, 1);
    claim.reservations = vec![reservation("domain", "starlogistics.co.tz")];
    assert_eq!(store.append(claim).await.unwrap().last_position, 4);
    assert_eq!(
        store
            .find_reservation("domain", "starlogistics.co.tz")
            .await
            .unwrap(),
        Some("account-c".to_owned())
    );
}

async fn find_reservation_names_the_stream_that_holds_the_key<S: EventStore>(store: &S) {
    assert_eq!(
        store
            .find_reservation("user_email", "owner@example.com")
            .await
            .unwrap(),
        None
    );
    let mut claim = one("user-5", 0, 1);
    claim.reservations = vec![
        reservation("user_email", "owner@example.com"),
        reservation("account_name", "Example Web Studio"),
    ];
    store.append(claim).await.unwrap();

    let held = store
        .find_reservation("user_email", "owner@example.com")
        .await
        .unwrap();
    assert_eq!(held.as_deref(), Some("user-5"));
    let held = store
        .find_reservation("account_name", "Example Web Studio")
        .await
        .unwrap();
    assert_eq!(held.as_deref(), Some("user-5"));
    assert_eq!(
        store
            .find_reservation("account_name", "owner@example.com")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .find_reservation("user_email", "OWNER@example.com")
            .await
            .unwrap(),
        None
    );
}

async fn duplicate_request_id_returns_the_first_outcome_and_appends_nothing<S: EventStore>(
    store: &S,
) {
    store.append(one("account-other", 0, 1)).await.unwrap();
    let mut first = batch(
        "account-d",
        0,
        vec![event("A", json!(1)), event("B", json!(2))],
    );
    first.request = Some(request(
        "user:7",
        "req-42",
        json!({ "invoice_id": "inv-1" }),
    ));
    let appended = store.append(first.clone()).await.unwrap();
    assert_eq!(
        appended,
        Appended {
            first_position: 2,
            last_position: 3,
            stream_version: 2
        }
    );

    // The same command retried: same stream version, fresh event ids.
    let mut retry = first.clone();
    retry.events = vec![event("A", json!(1)), event("B", json!(2))];
    let expected = RequestOutcome {
        request_hash: "hash-of-req-42".to_owned(),
        outcome: json!({ "invoice_id": "inv-1" }),
        position: 3,
    };
    match store.append(retry).await {
        Err(StoreError::DuplicateRequest(outcome)) => assert_eq!(outcome, expected),
        other => panic!("expected a duplicate request, got {other:?}"),
    }
    // A retry decided on the newer stream version is still recognised.
    let mut late_retry = one("account-d", 2, 3);
    late_retry.request = first.request.clone();
    match store.append(late_retry).await {
        Err(StoreError::DuplicateRequest(outcome)) => assert_eq!(outcome, expected),
        other => panic!("expected a duplicate request, got {other:?}"),
    }

    assert_eq!(store.head_position().await.unwrap(), 3);
    assert_eq!(
        versions(&store.read_stream("account-d", 0).await.unwrap()),
        vec![1, 2]
    );
}

async fn find_request_returns_the_stored_outcome_scoped_to_the_actor<S: EventStore>(store: &S) {
    assert_eq!(store.find_request("user:1", "req-1").await.unwrap(), None);

    let mut first = one("account-f", 0, 1);
    first.request = Some(request("user:1", "req-1", json!({ "member_id": "m-1" })));
    store.append(first).await.unwrap();
    // The same request id from another actor is another request.
    let mut second = one("account-f", 1, 2);
    second.request = Some(request("service:billing", "req-1", json!(null)));
    store.append(second).await.unwrap();

    assert_eq!(
        store.find_request("user:1", "req-1").await.unwrap(),
        Some(RequestOutcome {
            request_hash: "hash-of-req-1".to_owned(),
            outcome: json!({ "member_id": "m-1" }),
            position: 1,
        })
    );
    assert_eq!(
        store
            .find_request("service:billing", "req-1")
            .await
            .unwrap(),
        Some(RequestOutcome {
            request_hash: "hash-of-req-1".to_owned(),
            outcome: json!(null),
            position: 2,
        })
    );
    assert_eq!(store.find_request("user:1", "req-2").await.unwrap(), None);
    assert_eq!(store.find_request("user:2", "req-1").await.unwrap(), None);
}

async fn rejected_commands_are_not_remembered<S: EventStore>(store: &S) {
    store.append(one("account-j", 0, 1)).await.unwrap();
    let mut stale = one("account-j", 0, 2);
    stale.request = Some(request("user:1", "req-9", json!({ "try": 1 })));
    assert!(store.append(stale).await.unwrap_err().is_conflict());
    assert_eq!(store.find_request("user:1", "req-9").await.unwrap(), None);

    let mut retry = one("account-j", 1, 2);
    retry.request = Some(request("user:1", "req-9", json!({ "try": 2 })));
    assert_eq!(store.append(retry).await.unwrap().last_position, 2);
    assert_eq!(
        store
            .find_request("user:1", "req-9")
            .await
            .unwrap()
            .unwrap()
            .outcome,
        json!({ "try": 2 })
    );
}

async fn empty_batch_is_rejected_and_writes_nothing<S: EventStore>(store: &S) {
    let mut empty = batch("account-e", 0, Vec::new());
    empty.reservations = vec![reservation("user_email", "nobody@example.com")];
    empty.request = Some(request("user:1", "req-e", json!({})));
    let err = store.append(empty).await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(err.to_string().contains("at least one event"), "{err}");

    assert_eq!(store.head_position().await.unwrap(), 0);
    assert_eq!(store.find_request("user:1", "req-e").await.unwrap(), None);
    let mut claim = one("user-9", 0, 1);
    claim.reservations = vec![reservation("user_email", "nobody@example.com")];
    assert_eq!(store.append(claim).await.unwrap().last_position, 1);
}

async fn every_envelope_field_round_trips_exactly<S: EventStore>(store: &S) {
    let account = Uuid::parse_str("0b6f3c4e-2f0a-4c1e-9a57-5f1d2c3b4a59").unwrap();
    let user = Uuid::parse_str("6a1e9f0c-7d2b-4e3a-8c4d-1b2a3c4d5e6f").unwrap();
    let metadata = Metadata {
        actor: Actor::User(user),
        on_behalf_of: Some(account),
        permission: Some(Permission::Invoices),
        request_id: Some("req-\u{e9}t\u{e9}".to_owned()),
        correlation_id: Uuid::new_v4(),
        causation_id: Some(Uuid::new_v4()),
        client_address: Some("203.0.113.7".to_owned()),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64)".to_owned()),
        reason: None,
    };
    let payload = json!({
        "invoice": { "number": "INV-2024-0001", "lines": [{ "amount_cents": 1299, "qty": 2 }] },
        "total": 25.98,
        "big": 9_007_199_254_740_993_u64,
        "negative": -42,
        "text": "quote \" backslash \\ nul \u{0} emoji \u{1f600} \u{fc}ml\u{e4}ut",
        "empty": {},
        "none": null,
        "flag": true,
    });
    let mut plain = event("InvoiceIssued", payload.clone());
    plain.metadata = Metadata::new(Actor::Service("billing".to_owned()));
    let mut marked = event("MemberInvited", json!("just a string"));
    marked.event_version = "2.1".to_owned();
    marked.metadata = metadata.clone();
    marked.key_id = Some("key-user-6a1e".to_owned());

    let mut append = batch("account-0b6f", 0, vec![plain.clone(), marked.clone()]);
    append.stream_type = "client_account".to_owned();
    // Nanoseconds are given; both backends keep microseconds, cutting the rest off.
    append.occurred_at = DateTime::from_timestamp(1_712_345_678, 123_456_789).unwrap();
    store.append(append).await.unwrap();

    let expected_time = DateTime::from_timestamp(1_712_345_678, 123_456_000).unwrap();
    let mut expected = vec![
        StoredEvent {
            event_id: plain.event_id,
            position: 1,
            stream_id: "account-0b6f".to_owned(),
            stream_type: "client_account".to_owned(),
            version: 1,
            occurred_at: expected_time,
            event_type: "InvoiceIssued".to_owned(),
            event_version: "1".to_owned(),
            payload,
            metadata: plain.metadata.clone(),
            key_id: None,
            hash: None,
        },
        StoredEvent {
            event_id: marked.event_id,
            position: 2,
            stream_id: "account-0b6f".to_owned(),
            stream_type: "client_account".to_owned(),
            version: 2,
            occurred_at: expected_time,
            event_type: "MemberInvited".to_owned(),
            event_version: "2.1".to_owned(),
            payload: json!("just a string"),
            metadata,
            key_id: marked.key_id.clone(),
            hash: None,
        },
    ];
    // The store computed each event's link over exactly what reads back, chained from genesis.
    let first = EventContent::of(&expected[0])
        .chain_hash(&GENESIS_HASH)
        .unwrap();
    let second = EventContent::of(&expected[1]).chain_hash(&first).unwrap();
    expected[0].hash = Some(first.to_string());
    expected[1].hash = Some(second.to_string());
    assert_eq!(all(store).await, expected);
    assert_eq!(
        store.read_stream("account-0b6f", 0).await.unwrap(),
        expected
    );
    // A read after a version the caller holds takes another path on some backends.
    assert_eq!(
        store.read_stream("account-0b6f", 1).await.unwrap(),
        expected[1..]
    );
}

async fn every_event_links_to_the_one_before_and_the_log_verifies_to_its_head<S: EventStore>(
    store: &S,
) {
    store
        .append(batch(
            "account-c",
            0,
            vec![event("X", json!({ "f": 0.1 })), event("Y", json!([1e300]))],
        ))
        .await
        .unwrap();
    store.append(one("account-d", 0, 7)).await.unwrap();

    let log = all(store).await;
    let mut previous = GENESIS_HASH;
    for stored in &log {
        let link = EventContent::of(stored).chain_hash(&previous).unwrap();
        assert_eq!(
            stored.hash,
            Some(link.to_string()),
            "position {}",
            stored.position
        );
        previous = link;
    }
    assert_eq!(
        verify_chain(store, 2).await.unwrap(),
        ChainReport::Intact {
            head: 3,
            last_hash: ChainHash::parse(log[2].hash.as_deref().unwrap()).unwrap(),
        }
    );
}

async fn an_empty_log_verifies_to_position_zero_and_the_genesis_hash<S: EventStore>(store: &S) {
    assert_eq!(
        verify_chain(store, 100).await.unwrap(),
        ChainReport::Intact {
            head: 0,
            last_hash: GENESIS_HASH,
        }
    );
}

async fn concurrent_appenders_produce_positions_one_to_n_without_gaps<S>(store: &S)
where
    S: EventStore + Clone + 'static,
{
    const TASKS: usize = 8;
    const APPENDS: usize = 50;

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let own = format!("account-task-{task}");
            let mut landed: Vec<Appended> = Vec::new();
            for n in 0..APPENDS {
                let stream = if n % 2 == 0 {
                    own.clone()
                } else {
                    "account-shared".to_owned()
                };
                let size = if n % 5 == 0 { 2 } else { 1 };
                let mut version = 0;
                loop {
                    version += store.read_stream(&stream, version).await.unwrap().len() as u64;
                    let events = (0..size)
                        .map(|i| event("Counted", json!([task, n, i])))
                        .collect();
                    match store.append(batch(&stream, version, events)).await {
                        Ok(appended) => {
                            landed.push(appended);
                            break;
                        }
                        Err(err) if err.is_conflict() => continue,
                        Err(err) => panic!("append failed: {err:?}"),
                    }
                }
            }
            landed
        }));
    }
    let mut landed = Vec::new();
    for task in tasks {
        landed.extend(task.await.unwrap());
    }

    let total = (TASKS * (APPENDS + APPENDS / 5)) as u64;
    let log = all(store).await;
    assert_eq!(positions(&log), (1..=total).collect::<Vec<_>>());
    assert_eq!(store.head_position().await.unwrap(), total);
    let ids: HashSet<Uuid> = log.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len() as u64, total);
    // Racing appenders each chained onto the head they committed after.
    assert!(matches!(
        verify_chain(store, 64).await.unwrap(),
        ChainReport::Intact { head, .. } if head == total
    ));

    // What each appender was told matches the log exactly.
    let mut told: Vec<u64> = landed
        .iter()
        .flat_map(|a| a.first_position..=a.last_position)
        .collect();
    told.sort_unstable();
    assert_eq!(told, (1..=total).collect::<Vec<_>>());

    // Every stream's versions run 1..=len in position order.
    let mut per_stream: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for e in &log {
        per_stream
            .entry(e.stream_id.as_str())
            .or_default()
            .push(e.version);
    }
    assert_eq!(per_stream.len(), TASKS + 1);
    for (stream, seen) in per_stream {
        assert_eq!(
            seen,
            (1..=seen.len() as u64).collect::<Vec<_>>(),
            "stream {stream}"
        );
    }
}

async fn concurrent_stream_reads_each_get_exactly_their_own_stream<S>(store: &S)
where
    S: EventStore + Clone + 'static,
{
    // Twelve streams of 1 to 12 events, so every stream's answer is different.
    for s in 1..=12u32 {
        let events = (0..s).map(|n| event("Counted", json!([s, n]))).collect();
        store
            .append(batch(&format!("account-{s}"), 0, events))
            .await
            .unwrap();
    }

    // 240 reads at once, each after a version of its own (some past the stream's end, one of
    // a stream that does not exist): however the backend combines them, each gets its own.
    let mut reads = Vec::new();
    for r in 0..240u32 {
        let store = store.clone();
        let s = r % 13 + 1;
        let after = u64::from(r % 7);
        reads.push(tokio::spawn(async move {
            let got = store
                .read_stream(&format!("account-{s}"), after)
                .await
                .unwrap();
            (s, after, got)
        }));
    }
    for read in reads {
        let (s, after, got) = read.await.unwrap();
        let len = if s == 13 { 0 } else { u64::from(s) };
        let expected: Vec<u64> = (after + 1..=len).collect();
        assert_eq!(versions(&got), expected, "account-{s} after {after}");
        let payloads: Vec<serde_json::Value> = got.iter().map(|e| e.payload.clone()).collect();
        let wanted: Vec<serde_json::Value> = expected.iter().map(|v| json!([s, v - 1])).collect();
        assert_eq!(payloads, wanted, "account-{s} after {after}");
        assert!(got.iter().all(|e| e.stream_id == format!("account-{s}")));
    }
}

// ---------------------------------------------------------------------------------------------
// Running the behaviours against each backend

macro_rules! contract {
    ($($behaviour:ident),* $(,)?) => {
        mod sqlite {
            use onbehalf::store::sqlite::SqliteStore;
            use onbehalf::testing::TempDataDir;

            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $behaviour() {
                    let dir = TempDataDir::new();
                    let store = SqliteStore::open(dir.path()).await.unwrap();
                    super::$behaviour(&store).await;
                }
            )*
        }

        mod postgres {
            use onbehalf::store::postgres::PostgresStore;
            use onbehalf::testing::postgres_test_database;

            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $behaviour() {
                    let Some(db) = postgres_test_database().await else { return };
                    let store = PostgresStore::connect(&db.url).await.unwrap();
                    super::$behaviour(&store).await;
                    drop(store);
                    db.drop_database().await.unwrap();
                }
            )*
        }
    };
}

contract!(
    positions_start_at_one_and_are_gap_free_across_streams,
    stream_versions_start_at_one_in_every_stream,
    read_stream_returns_only_events_after_the_given_version,
    read_all_returns_events_after_a_position_up_to_the_limit,
    head_position_is_zero_when_empty_and_the_last_position_after_appends,
    expected_version_conflict_leaves_the_log_untouched,
    taken_reservation_fails_the_whole_batch_and_writes_no_event,
    find_reservation_names_the_stream_that_holds_the_key,
    a_released_key_can_be_claimed_by_another_stream_and_others_keys_stay,
    duplicate_request_id_returns_the_first_outcome_and_appends_nothing,
    find_request_returns_the_stored_outcome_scoped_to_the_actor,
    rejected_commands_are_not_remembered,
    empty_batch_is_rejected_and_writes_nothing,
    every_envelope_field_round_trips_exactly,
    every_event_links_to_the_one_before_and_the_log_verifies_to_its_head,
    an_empty_log_verifies_to_position_zero_and_the_genesis_hash,
    concurrent_appenders_produce_positions_one_to_n_without_gaps,
    concurrent_stream_reads_each_get_exactly_their_own_stream,
);

// ---------------------------------------------------------------------------------------------
// Backend-specific behaviour

#[tokio::test]
async fn sqlite_data_survives_reopening_the_store() {
    let dir = TempDataDir::new();
    let written = {
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let mut first = one("account-s", 0, 1);
        first.reservations = vec![reservation("user_email", "owner@example.com")];
        first.request = Some(request("user:1", "req-1", json!({ "ok": true })));
        store.append(first).await.unwrap();
        store.append(one("account-s", 1, 2)).await.unwrap();
        all(&store).await
    };

    let store = SqliteStore::open(dir.path()).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), 4);
    assert_eq!(all(&store).await, written);
    assert_eq!(store.head_position().await.unwrap(), 2);
    assert_eq!(
        store
            .find_request("user:1", "req-1")
            .await
            .unwrap()
            .unwrap()
            .position,
        1
    );
    let mut again = one("account-t", 0, 1);
    again.reservations = vec![reservation("user_email", "owner@example.com")];
    assert!(matches!(
        store.append(again).await,
        Err(StoreError::Reserved { .. })
    ));
    assert_eq!(
        store
            .append(one("account-s", 2, 3))
            .await
            .unwrap()
            .first_position,
        3
    );
}

#[tokio::test]
async fn sqlite_creates_the_data_directory_and_its_database_file() {
    let dir = TempDataDir::new();
    let nested = dir.path().join("a").join("b");
    let store = SqliteStore::open(&nested).await.unwrap();
    assert_eq!(store.path(), nested.join("events.db"));
    assert!(nested.join("events.db").is_file());
    assert_eq!(store.schema_version().await.unwrap(), 4);
}

#[tokio::test]
async fn postgres_replicas_starting_at_once_migrate_the_schema_once() {
    let Some(db) = postgres_test_database().await else {
        return;
    };
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { PostgresStore::connect(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for start in starts {
        stores.push(start.await.unwrap().unwrap());
    }
    assert_eq!(stores[0].schema_version().await.unwrap(), 3);
    let client = db.client().await.unwrap();
    let applied: i64 = client
        .query_one("SELECT count(*) FROM schema_version", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, 3);
    drop((stores, client));
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn postgres_connect_to_an_unreachable_server_is_unavailable_promptly() {
    // A port that was just free on loopback: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let result =
        PostgresStore::connect(&format!("postgres://postgres@127.0.0.1:{port}/none")).await;
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn postgres_malformed_url_is_a_backend_error() {
    let result = PostgresStore::connect("postgres://127.0.0.1:notaport/x").await;
    assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
}

/// A loopback TCP proxy in front of the test server, to take "the server" down and bring it
/// back without touching the real one.
mod proxy {
    use std::net::SocketAddr;

    use tokio::net::{TcpSocket, TcpStream};
    use tokio::task::{JoinHandle, JoinSet};

    pub(super) struct Proxy {
        accept: JoinHandle<()>,
    }

    impl Proxy {
        /// Listens on `listen` and forwards every connection to `upstream`.
        pub(super) fn start(listen: SocketAddr, upstream: SocketAddr) -> Proxy {
            let socket = TcpSocket::new_v4().unwrap();
            // Rebinding the same port right after a stop must work despite TIME_WAIT.
            socket.set_reuseaddr(true).unwrap();
            socket.bind(listen).unwrap();
            let listener = socket.listen(64).unwrap();
            let accept = tokio::spawn(async move {
                // Dropping the set (when this task is aborted) aborts every forwarding task and
                // closes both ends of every connection, as a server going down would.
                let mut connections = JoinSet::new();
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        return;
                    };
                    connections.spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                }
            });
            Proxy { accept }
        }

        pub(super) async fn stop(self) {
            self.accept.abort();
            let _ = self.accept.await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_is_unavailable_while_the_server_is_down_and_recovers() {
    let Some(db) = postgres_test_database().await else {
        return;
    };
    let config: tokio_postgres::Config = db.url.parse().unwrap();
    let upstream_port = config.get_ports().first().copied().unwrap_or(5432);
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{upstream_port}").parse().unwrap();
    let user = config.get_user().unwrap_or("postgres");
    let listen: std::net::SocketAddr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let url = format!("postgres://{user}@{listen}/{}", db.name());

    let proxy = proxy::Proxy::start(listen, upstream);
    let store = PostgresStore::connect(&url).await.unwrap();
    store.append(one("account-u", 0, 1)).await.unwrap();

    proxy.stop().await;
    for _ in 0..3 {
        let started = Instant::now();
        let results = [
            store.head_position().await.map(|_| ()),
            store.read_all(0, 10).await.map(|_| ()),
            store.read_stream("account-u", 0).await.map(|_| ()),
            store.find_request("user:1", "req-1").await.map(|_| ()),
            store.append(one("account-u", 1, 2)).await.map(|_| ()),
        ];
        for result in results {
            assert!(
                matches!(result, Err(StoreError::Unavailable(_))),
                "{result:?}"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
    }

    let proxy = proxy::Proxy::start(listen, upstream);
    assert_eq!(store.head_position().await.unwrap(), 1);
    let appended = store.append(one("account-u", 1, 2)).await.unwrap();
    assert_eq!(
        appended,
        Appended {
            first_position: 2,
            last_position: 2,
            stream_version: 2
        }
    );
    assert_eq!(positions(&all(&store).await), vec![1, 2]);

    proxy.stop().await;
    drop(store);
    db.drop_database().await.unwrap();
}
