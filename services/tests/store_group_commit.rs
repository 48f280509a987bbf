//! Group commit on PostgreSQL: appends that queue behind the head lock are committed together,
//! and each is still decided as if it were alone. An append that loses its optimistic race,
//! reuses a request id or claims a taken key fails by itself; the rest of its group lands, at
//! gap-free positions in queue order, with the hash chain intact.
//!
//! Each test holds the head lock with a gated append, queues appends behind it so that they form
//! one group, then releases it.
//!
//! They need PostgreSQL and skip without it, unless `ONBEHALF_REQUIRE_SERVICES=1`.

use std::time::Duration;

use onbehalf::store::keys::Seal;
use onbehalf::store::postgres::{CommitGate, PostgresStore};
use onbehalf::store::{
    verify_chain, AppendBatch, Appended, ChainReport, EventAppender, EventReader, RequestRecord,
    Reservation, StoreError, StoreResult,
};
use onbehalf::testing::postgres_test_database;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[path = "support/counted.rs"]
mod counted;

fn batch(stream_id: &str, expected_version: u64) -> AppendBatch {
    counted::counted(stream_id, expected_version, json!({ "stream": stream_id }))
}

fn with_request(mut batch: AppendBatch, request_id: &str) -> AppendBatch {
    batch.request = Some(RequestRecord {
        actor: "user:1".into(),
        request_id: request_id.into(),
        request_hash: format!("hash-of-{}", batch.stream_id),
        outcome: json!({ "stream": batch.stream_id }),
    });
    batch
}

fn claiming(mut batch: AppendBatch, key: &str) -> AppendBatch {
    batch.reservations.push(Reservation {
        scope: "domain".into(),
        key: key.into(),
    });
    batch
}

fn releasing(mut batch: AppendBatch, key: &str) -> AppendBatch {
    batch.releases.push(Reservation {
        scope: "domain".into(),
        key: key.into(),
    });
    batch
}

/// The last position of each append that landed; `None` for each one refused.
fn landed(answers: &[StoreResult<Appended>]) -> Vec<Option<u64>> {
    answers
        .iter()
        .map(|a| a.as_ref().ok().map(|a| a.last_position))
        .collect()
}

/// Holds the head lock with a gated append to `account-gate` (at the position after the log's
/// head), queues `batches` one after the
/// other behind it, releases the lock, and returns each queued append's answer in order.
async fn queued_behind_the_lock(
    store: &PostgresStore,
    batches: Vec<AppendBatch>,
) -> Vec<StoreResult<Appended>> {
    let head = store
        .read_all(0, 10_000)
        .await
        .unwrap()
        .last()
        .map_or(0, |e| e.position);
    let (taken_tx, taken_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel();
    let gated = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append_with_commit_gate(
                    batch("account-gate", 0),
                    CommitGate {
                        taken: taken_tx,
                        release: release_rx,
                    },
                )
                .await
        })
    };
    taken_rx.await.unwrap();

    let mut queued: Vec<JoinHandle<StoreResult<Appended>>> = Vec::new();
    for b in batches {
        let store = store.clone();
        queued.push(tokio::spawn(async move { store.append(b).await }));
        // Queue order is arrival order: let each append reach the queue before the next.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    release_tx.send(()).unwrap();
    assert_eq!(gated.await.unwrap().unwrap().last_position, head + 1);
    let mut answers = Vec::new();
    for q in queued {
        answers.push(q.await.unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_race_in_a_group_fails_only_that_append() {
    let Some(db) = postgres_test_database().await else {
        return;
    };
    let store = PostgresStore::connect(&db.url).await.unwrap();

    let answers = queued_behind_the_lock(
        &store,
        vec![
            batch("account-a", 0),
            batch("account-b", 0),
            batch("account-a", 0),
            batch("account-c", 0),
            batch("account-a", 1),
        ],
    )
    .await;

    let landed: Vec<Option<(u64, u64)>> = answers
        .iter()
        .map(|a| a.as_ref().ok().map(|a| (a.last_position, a.stream_version)))
        .collect();
    assert_eq!(
        landed,
        vec![Some((2, 1)), Some((3, 1)), None, Some((4, 1)), Some((5, 2))]
    );
    assert!(matches!(
        &answers[2],
        Err(StoreError::Conflict { stream_id, expected: 0, actual: 1 }) if stream_id == "account-a"
    ));
    let log = store.read_all(0, 100).await.unwrap();
    let order: Vec<(u64, &str, u64)> = log
        .iter()
        .map(|e| (e.position, e.stream_id.as_str(), e.version))
        .collect();
    assert_eq!(
        order,
        vec![
            (1, "account-gate", 1),
            (2, "account-a", 1),
            (3, "account-b", 1),
            (4, "account-c", 1),
            (5, "account-a", 2),
        ]
    );
    assert!(matches!(
        verify_chain(&store, 100).await.unwrap(),
        ChainReport::Intact { head: 5, .. }
    ));
    drop(store);
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_id_used_twice_in_a_group_lands_once_and_the_retry_gets_its_outcome() {
    let Some(db) = postgres_test_database().await else {
        return;
    };
    let store = PostgresStore::connect(&db.url).await.unwrap();

    let answers = queued_behind_the_lock(
        &store,
        vec![
            with_request(batch("account-a", 0), "req-1"),
            with_request(batch("account-b", 0), "req-1"),
            with_request(batch("account-c", 0), "req-2"),
        ],
    )
    .await;

    assert_eq!(answers[0].as_ref().unwrap().last_position, 2);
    match &answers[1] {
        Err(StoreError::DuplicateRequest(first)) => {
            assert_eq!(first.position, 2);
            assert_eq!(first.request_hash, "hash-of-account-a");
            assert_eq!(first.outcome, json!({ "stream": "account-a" }));
        }
        other => panic!("expected the first outcome, got {other:?}"),
    }
    assert_eq!(answers[2].as_ref().unwrap().last_position, 3);
    assert_eq!(store.head_position().await.unwrap(), 3);
    let stored = onbehalf::store::RequestLog::find_request(&store, "user:1", "req-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.position, 2);
    drop(store);
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_claimed_twice_in_a_group_goes_to_the_first_and_a_release_frees_it_in_order() {
    let Some(db) = postgres_test_database().await else {
        return;
    };
    let store = PostgresStore::connect(&db.url).await.unwrap();

    let release = releasing(batch("account-a", 1), "client1.co.tz");
    let answers = queued_behind_the_lock(
        &store,
        vec![
            claiming(batch("account-a", 0), "client1.co.tz"),
            claiming(batch("account-b", 0), "client1.co.tz"),
            release,
            claiming(batch("account-c", 0), "client1.co.tz"),
        ],
    )
    .await;

    let positions = landed(&answers);
    assert_eq!(positions, vec![Some(2), None, Some(3), Some(4)]);
    assert!(matches!(
        &answers[1],
        Err(StoreError::Reserved { scope, key }) if scope == "domain" && key == "client1.co.tz"
    ));
    let holder =
        onbehalf::store::ReservationLookup::find_reservation(&store, "domain", "client1.co.tz")
            .await
            .unwrap();
    assert_eq!(holder.as_deref(), Some("account-c"));
    let streams: Vec<String> = store
        .read_all(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.stream_id)
        .collect();
    assert_eq!(
        streams,
        vec!["account-gate", "account-a", "account-a", "account-c"]
    );
    drop(store);
    db.drop_database().await.unwrap();
}

/// An event whose `email` field is sealed under `subject`'s data key; its payload has the shape
/// serde gives the event enums, `{"<Variant>": {...}}`.
fn sealing(stream_id: &str, expected_version: u64, subject: &str, email: &str) -> AppendBatch {
    let mut b = batch(stream_id, expected_version);
    b.events[0].payload = json!({ "Invited": { "email": email } });
    b.events[0].seal = Some(Seal {
        subject: subject.to_owned(),
        fields: vec!["email".to_owned()],
    });
    b
}

/// The `email` of every invitation event in `stream_id`, opened (or erased), by position.
async fn invited_emails(store: &PostgresStore, stream_id: &str) -> Vec<(u64, serde_json::Value)> {
    store
        .read_all(0, 100)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.stream_id == stream_id && e.payload.get("Invited").is_some())
        .map(|e| (e.position, e.payload["Invited"]["email"].clone()))
        .collect()
}

/// The data keys stored, as (subject, key id), by subject.
async fn stored_keys(db: &onbehalf::testing::TestDatabase) -> Vec<(String, String)> {
    db.client()
        .await
        .unwrap()
        .query(
            "SELECT subject, key_id FROM data_keys ORDER BY subject",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_of_a_group_seal_erase_and_seal_again_as_if_one_after_another() {
    let Some(db) = postgres_test_database().await else {
        return;
    };
    let store = PostgresStore::connect(&db.url).await.unwrap();

    let mut erasure = batch("user-a", 2);
    erasure.events[0].erase = vec!["email-a".to_owned()];
    let answers = queued_behind_the_lock(
        &store,
        vec![
            sealing("user-a", 0, "email-a", "designer@yourcompany.com"),
            sealing("user-a", 1, "email-a", "designer@yourcompany.com"),
            // Loses its race: the key it would create for `email-b` is never stored.
            sealing("user-b", 3, "email-b", "admin@abc.co.tz"),
            erasure,
            sealing("user-a", 3, "email-a", "web@yourcompany.com"),
        ],
    )
    .await;
    let landed = landed(&answers);
    assert_eq!(landed, vec![Some(2), Some(3), None, Some(4), Some(5)]);

    // Read back opened: the two events sealed before the erasure read as erased, the one
    // sealed after it under a new key opens.
    let log = store.read_all(0, 100).await.unwrap();
    let emails = invited_emails(&store, "user-a").await;
    let erased = onbehalf_events::personal::erased_value("email");
    assert_eq!(
        emails,
        vec![
            (2, erased.clone()),
            (3, erased),
            (5, json!("web@yourcompany.com"))
        ]
    );
    let key_ids: Vec<Option<String>> = log.iter().map(|e| e.key_id.clone()).collect();
    assert_eq!(
        key_ids[1], key_ids[2],
        "one key for both appends before the erasure"
    );
    assert_ne!(key_ids[1], key_ids[4], "a new key after the erasure");

    // The table holds exactly the key made after the erasure.
    assert_eq!(
        stored_keys(&db).await,
        vec![("email-a".to_owned(), key_ids[4].clone().unwrap())]
    );
    assert!(matches!(
        verify_chain(&store, 100).await.unwrap(),
        ChainReport::Intact { head: 5, .. }
    ));
    drop(store);
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stored_key_released_and_claimed_by_another_stream_in_one_group_changes_holder() {
    let Some(db) = postgres_test_database().await else {
        return;
    };
    let store = PostgresStore::connect(&db.url).await.unwrap();
    store
        .append(claiming(batch("account-a", 0), "client1.co.tz"))
        .await
        .unwrap();

    let release = releasing(batch("account-a", 1), "client1.co.tz");
    let answers = queued_behind_the_lock(
        &store,
        vec![
            claiming(batch("account-b", 0), "client1.co.tz"),
            release,
            claiming(batch("account-c", 0), "client1.co.tz"),
        ],
    )
    .await;

    let positions = landed(&answers);
    assert_eq!(positions, vec![None, Some(3), Some(4)]);
    assert!(matches!(
        &answers[0],
        Err(StoreError::Reserved { scope, key }) if scope == "domain" && key == "client1.co.tz"
    ));
    let client = db.client().await.unwrap();
    let rows: Vec<(String, String, String)> = client
        .query("SELECT scope, key, stream_id FROM reservations", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        vec![(
            "domain".to_owned(),
            "client1.co.tz".to_owned(),
            "account-c".to_owned()
        )]
    );
    drop(client);
    drop(store);
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stored_data_key_erased_and_sealed_again_in_one_group_is_replaced_by_a_new_one() {
    let Some(db) = postgres_test_database().await else {
        return;
    };
    let store = PostgresStore::connect(&db.url).await.unwrap();
    store
        .append(sealing("user-a", 0, "email-a", "designer@yourcompany.com"))
        .await
        .unwrap();

    let mut erasure = batch("user-a", 1);
    erasure.events[0].erase = vec!["email-a".to_owned()];
    let answers = queued_behind_the_lock(
        &store,
        vec![
            erasure,
            sealing("user-a", 2, "email-a", "web@yourcompany.com"),
        ],
    )
    .await;
    let landed = landed(&answers);
    assert_eq!(landed, vec![Some(3), Some(4)]);

    let log = store.read_all(0, 100).await.unwrap();
    let emails = invited_emails(&store, "user-a").await;
    assert_eq!(
        emails,
        vec![
            (1, onbehalf_events::personal::erased_value("email")),
            (4, json!("web@yourcompany.com"))
        ]
    );
    let key_ids: Vec<Option<String>> = log.iter().map(|e| e.key_id.clone()).collect();
    assert_ne!(key_ids[0], key_ids[3], "a new key after the erasure");
    assert_eq!(
        stored_keys(&db).await,
        vec![("email-a".to_owned(), key_ids[3].clone().unwrap())]
    );
    assert!(matches!(
        verify_chain(&store, 100).await.unwrap(),
        ChainReport::Intact { head: 4, .. }
    ));
    drop(store);
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_whose_write_fails_commits_nothing_and_the_next_group_lands_where_it_would_have() {
    let Some(db) = postgres_test_database().await else {
        return;
    };
    let store = PostgresStore::connect(&db.url).await.unwrap();
    // Text in PostgreSQL cannot hold a NUL byte: the events' insert fails after every check of
    // the group has passed, with the commit already sent behind it.
    let mut unstorable = claiming(
        with_request(batch("account-a", 0), "first"),
        "client1.co.tz",
    );
    unstorable.events[0].event_type = "Counted\0".into();

    let failed = store.append(unstorable).await;
    assert_eq!(
        failed.map_err(|e| e.to_string()),
        Err(
            "event store failure: invalid byte sequence for encoding \"UTF8\": 0x00 (22021)".into()
        )
    );
    let after = store
        .append(claiming(
            with_request(batch("account-b", 0), "first"),
            "client1.co.tz",
        ))
        .await
        .unwrap();

    assert_eq!(after.last_position, 1);
    let streams: Vec<String> = store
        .read_all(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.stream_id)
        .collect();
    assert_eq!(streams, vec!["account-b"]);
    let holder =
        onbehalf::store::ReservationLookup::find_reservation(&store, "domain", "client1.co.tz")
            .await
            .unwrap();
    assert_eq!(holder.as_deref(), Some("account-b"));
    drop(store);
    db.drop_database().await.unwrap();
}

/// Queues `first` behind the gated append that holds the head lock, then `then` one after the
/// other while `first`'s group waits for the lock, so that `then` become the group begun right
/// behind `first`'s commit; releases the lock and returns `first`'s answer and the others'.
async fn queued_behind_one_group(
    store: &PostgresStore,
    first: AppendBatch,
    then: Vec<AppendBatch>,
) -> (StoreResult<Appended>, Vec<StoreResult<Appended>>) {
    let mut all = vec![first];
    all.extend(then);
    let mut answers = queued_behind_the_lock(store, all).await;
    let rest = answers.split_off(1);
    (answers.remove(0), rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_begun_behind_a_commit_is_decided_on_what_that_commit_wrote() {
    let Some(db) = postgres_test_database().await else {
        return;
    };
    let store = PostgresStore::connect(&db.url).await.unwrap();

    let (first, then) = queued_behind_one_group(
        &store,
        claiming(
            with_request(batch("account-a", 0), "order-1"),
            "client1.co.tz",
        ),
        vec![
            // Each of these would pass its checks against the log as it was before `first`.
            batch("account-a", 0),
            claiming(batch("account-b", 0), "client1.co.tz"),
            with_request(batch("account-c", 0), "order-1"),
            batch("account-a", 1),
        ],
    )
    .await;

    assert_eq!(first.unwrap().last_position, 2);
    assert!(matches!(
        then[0],
        Err(StoreError::Conflict {
            expected: 0,
            actual: 1,
            ..
        })
    ));
    assert!(matches!(
        &then[1],
        Err(StoreError::Reserved { key, .. }) if key == "client1.co.tz"
    ));
    match &then[2] {
        Err(StoreError::DuplicateRequest(first)) => {
            assert_eq!(first.position, 2);
            assert_eq!(first.outcome, json!({ "stream": "account-a" }));
        }
        other => panic!("expected the first outcome, got {other:?}"),
    }
    assert_eq!(then[3].as_ref().unwrap().last_position, 3);
    let streams: Vec<(u64, String, u64)> = store
        .read_all(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.position, e.stream_id, e.version))
        .collect();
    assert_eq!(
        streams,
        vec![
            (1, "account-gate".into(), 1),
            (2, "account-a".into(), 1),
            (3, "account-a".into(), 2),
        ]
    );
    assert!(matches!(
        verify_chain(&store, 100).await.unwrap(),
        ChainReport::Intact { head: 3, .. }
    ));
    drop(store);
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_begun_behind_a_failed_commit_lands_where_the_failed_one_would_have() {
    let Some(db) = postgres_test_database().await else {
        return;
    };
    let store = PostgresStore::connect(&db.url).await.unwrap();
    let mut unstorable = claiming(
        with_request(batch("account-a", 0), "order-1"),
        "client1.co.tz",
    );
    unstorable.events[0].event_type = "Counted\0".into();

    let (first, then) = queued_behind_one_group(
        &store,
        unstorable,
        vec![
            claiming(batch("account-b", 0), "client1.co.tz"),
            with_request(batch("account-c", 0), "order-1"),
            batch("account-a", 0),
        ],
    )
    .await;

    assert!(matches!(first, Err(StoreError::Backend(_))), "{first:?}");
    assert_eq!(landed(&then), vec![Some(2), Some(3), Some(4)], "{then:?}");
    let streams: Vec<(u64, String)> = store
        .read_all(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.position, e.stream_id))
        .collect();
    assert_eq!(
        streams,
        vec![
            (1, "account-gate".into()),
            (2, "account-b".into()),
            (3, "account-c".into()),
            (4, "account-a".into()),
        ]
    );
    let holder =
        onbehalf::store::ReservationLookup::find_reservation(&store, "domain", "client1.co.tz")
            .await
            .unwrap();
    assert_eq!(holder.as_deref(), Some("account-b"));
    assert!(matches!(
        verify_chain(&store, 100).await.unwrap(),
        ChainReport::Intact { head: 4, .. }
    ));
    drop(store);
    db.drop_database().await.unwrap();
}
