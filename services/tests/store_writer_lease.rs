//! The writer lease of the PostgreSQL store: the only process appending answers "has this
//! stream moved?" from memory, and another process's append waits until it has stopped.
//!
//! Two stores opened on one database play two API replicas. A row written straight into the
//! `events` table, behind both stores, shows which reads are answered from memory: such a row
//! breaks the lease's premise (every append goes through a store), so a read that does not
//! return it did not ask PostgreSQL.
//!
//! They need PostgreSQL and skip without it, unless `ONBEHALF_REQUIRE_SERVICES=1`.

use std::time::{Duration, Instant};

use onbehalf::store::postgres::PostgresStore;
use onbehalf::store::{AppendBatch, EventAppender, EventReader};
use onbehalf::testing::{postgres_test_database, TestDatabase};
use onbehalf_events::StoredEvent;
use serde_json::json;

const ACCOUNT: &str = "client-account-5f0c";

#[path = "support/counted.rs"]
mod counted;

fn batch(stream_id: &str, expected_version: u64, n: u64) -> AppendBatch {
    counted::counted(stream_id, expected_version, json!({ "n": n }))
}

fn versions(events: &[StoredEvent]) -> Vec<u64> {
    events.iter().map(|e| e.version).collect()
}

async fn open(db: &TestDatabase) -> PostgresStore {
    PostgresStore::connect(&db.url).await.unwrap()
}

/// Waits until `store` holds the lease, which it takes within a few renewal periods of its
/// first append when no other process appends.
async fn until_held(store: &PostgresStore) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !store.holds_writer_lease() {
        assert!(Instant::now() < deadline, "the lease was not taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens a store on a runtime of its own, appends the account's first event, waits until the
/// store holds the lease, then shuts the runtime down: the store's tasks stop without giving
/// the lease up, as in a process that was killed.
async fn holder_killed(db: &TestDatabase) {
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let store = PostgresStore::connect(&url).await.unwrap();
            store.append(batch(ACCOUNT, 0, 1)).await.unwrap();
            until_held(&store).await;
            std::mem::forget(store);
        });
        runtime.shutdown_background();
    })
    .await
    .unwrap();
}

/// Writes the stream's version `version` straight into the table, as a copy of its first event.
async fn write_behind_the_stores(db: &TestDatabase, version: i64) {
    db.client()
        .await
        .unwrap()
        .execute(
            "INSERT INTO events (position, event_id, stream_id, stream_type, version, \
             occurred_at, event_type, event_version, payload, metadata, key_id, hash) \
             SELECT 1000 + $1::bigint, gen_random_uuid(), stream_id, stream_type, $1::bigint, occurred_at, \
             event_type, event_version, payload, metadata, key_id, hash \
             FROM events WHERE stream_id = $2 AND version = 1",
            &[&version, &ACCOUNT],
        )
        .await
        .unwrap();
}

/// An append as a build without the lease makes it: the stream's next event, then the head.
const OLD_BUILD_APPEND: &str = "BEGIN;
    INSERT INTO events (position, event_id, stream_id, stream_type, version, occurred_at,
        event_type, event_version, payload, metadata, key_id, hash)
    SELECT (SELECT position FROM event_head) + 1, gen_random_uuid(), stream_id, stream_type,
        version + 1, occurred_at, event_type, event_version, payload, metadata, key_id, hash
    FROM events WHERE position = (SELECT position FROM event_head);
    UPDATE event_head SET position = position + 1;
    COMMIT;";

/// The account's events, read by a store opened for the purpose.
async fn client_reader(db: &TestDatabase) -> Vec<StoredEvent> {
    open(db).await.read_stream(ACCOUNT, 0).await.unwrap()
}

/// The lease columns of the head row: holder, epoch, and whether a quiet period runs.
async fn lease_row(db: &TestDatabase) -> (Option<uuid::Uuid>, i64, bool) {
    let row = db
        .client()
        .await
        .unwrap()
        .query_one(
            "SELECT lease_holder, lease_epoch, quiet_until > now() FROM event_head",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test]
async fn the_only_appender_answers_a_known_stream_head_from_memory() {
    let Some(db) = postgres_test_database().await else {
        return;
    };
    let store = open(&db).await;
    store.append(batch(ACCOUNT, 0, 1)).await.unwrap();
    until_held(&store).await;

    // Read once under the lease: the head is learned from PostgreSQL.
    assert_eq!(
        versions(&store.read_stream(ACCOUNT, 1).await.unwrap()),
        [] as [u64; 0]
    );
    write_behind_the_stores(&db, 2).await;
    // The known head is answered from memory, a read from an older version asks PostgreSQL.
    assert_eq!(
        versions(&store.read_stream(ACCOUNT, 1).await.unwrap()),
        [] as [u64; 0]
    );
    assert_eq!(
        versions(&store.read_stream(ACCOUNT, 0).await.unwrap()),
        [1, 2]
    );

    // The store's own append makes the new head known without a read.
    store.append(batch(ACCOUNT, 2, 3)).await.unwrap();
    write_behind_the_stores(&db, 4).await;
    assert_eq!(
        versions(&store.read_stream(ACCOUNT, 3).await.unwrap()),
        [] as [u64; 0]
    );
    assert_eq!(
        versions(&store.read_stream(ACCOUNT, 2).await.unwrap()),
        [3, 4]
    );

    drop(store);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn an_append_by_another_process_waits_until_the_holder_stops_answering_from_memory() {
    let Some(db) = postgres_test_database().await else {
        return;
    };
    let holder = open(&db).await;
    let other = open(&db).await;
    holder.append(batch(ACCOUNT, 0, 1)).await.unwrap();
    until_held(&holder).await;
    assert_eq!(
        versions(&holder.read_stream(ACCOUNT, 1).await.unwrap()),
        [] as [u64; 0]
    );
    let (_, epoch, quiet) = lease_row(&db).await;
    assert!(!quiet);

    // The other replica's append (a revocation, say) lands only once the holder gave up.
    let appended = other.append(batch(ACCOUNT, 1, 2)).await.unwrap();
    assert_eq!(appended.stream_version, 2);
    assert!(!holder.holds_writer_lease());
    assert_eq!(
        versions(&holder.read_stream(ACCOUNT, 1).await.unwrap()),
        [2]
    );
    // Given up (one epoch) by the holder; the change of appender starts a quiet period.
    assert_eq!(lease_row(&db).await, (None, epoch + 1, true));

    // While both append, neither takes the lease.
    holder
        .append(batch("client-account-9a71", 0, 1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!holder.holds_writer_lease());
    assert!(!other.holds_writer_lease());
    assert_eq!(lease_row(&db).await, (None, epoch + 1, true));

    drop((holder, other));
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_lease_left_by_a_process_that_died_lapses_and_the_next_append_clears_it() {
    let Some(db) = postgres_test_database().await else {
        return;
    };
    holder_killed(&db).await;
    let (Some(_), epoch, _) = lease_row(&db).await else {
        panic!("the head row names no holder");
    };

    let other = open(&db).await;
    let appended = other.append(batch(ACCOUNT, 1, 2)).await.unwrap();
    assert_eq!(appended.stream_version, 2);
    assert_eq!(lease_row(&db).await, (None, epoch + 1, true));
    assert_eq!(
        versions(&other.read_stream(ACCOUNT, 0).await.unwrap()),
        [1, 2]
    );

    drop(other);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn an_advance_that_ignores_the_lease_is_refused_while_it_is_live() {
    let Some(db) = postgres_test_database().await else {
        return;
    };
    holder_killed(&db).await;
    let (Some(_), epoch, _) = lease_row(&db).await else {
        panic!("the head row names no holder");
    };

    // What a build without the lease sends.
    let client = db.client().await.unwrap();
    let refused = client.batch_execute(OLD_BUILD_APPEND).await.unwrap_err();
    let refused = refused.as_db_error().unwrap();
    assert_eq!(refused.code().code(), "55P03");
    assert_eq!(
        refused.message(),
        "the log is under a writer lease that this build does not honour"
    );
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(versions(&client_reader(&db).await), [1]);

    // Once the lease has lapsed, such an advance goes through, clears the lease (so that a
    // renewal already on its way fails) and starts a quiet period.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client.batch_execute(OLD_BUILD_APPEND).await.unwrap();
    assert_eq!(versions(&client_reader(&db).await), [1, 2]);
    assert_eq!(lease_row(&db).await, (None, epoch + 1, true));
    let last: Option<uuid::Uuid> = client
        .query_one("SELECT last_appender FROM event_head", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(last, None);

    // No process takes the lease while the quiet period runs, not even the only one appending.
    let next = open(&db).await;
    next.append(batch("client-account-9a71", 0, 1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!next.holds_writer_lease());

    drop(next);
    drop(client);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_restarted_process_that_only_reads_takes_the_lease_once_the_log_is_quiet() {
    let Some(db) = postgres_test_database().await else {
        return;
    };
    let before = open(&db).await;
    before.append(batch(ACCOUNT, 0, 1)).await.unwrap();
    until_held(&before).await;
    drop(before);

    // The next process reads (checks permissions) but does not append; it takes the lease once
    // the one before has given it up and two seconds passed since the last append.
    let after = open(&db).await;
    let started = Instant::now();
    assert_eq!(versions(&after.read_stream(ACCOUNT, 0).await.unwrap()), [1]);
    until_held(&after).await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(
        versions(&after.read_stream(ACCOUNT, 1).await.unwrap()),
        [] as [u64; 0]
    );
    write_behind_the_stores(&db, 2).await;
    assert_eq!(
        versions(&after.read_stream(ACCOUNT, 1).await.unwrap()),
        [] as [u64; 0]
    );

    drop(after);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_store_closed_while_holding_the_lease_gives_it_up() {
    let Some(db) = postgres_test_database().await else {
        return;
    };
    let holder = open(&db).await;
    holder.append(batch(ACCOUNT, 0, 1)).await.unwrap();
    until_held(&holder).await;
    let (Some(_), epoch, _) = lease_row(&db).await else {
        panic!("the head row names no holder");
    };
    drop(holder);

    let deadline = Instant::now() + Duration::from_secs(5);
    while lease_row(&db).await != (None, epoch + 1, false) {
        assert!(Instant::now() < deadline, "the lease was not given up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Given up, not lapsed: it is still within the second the last renewal granted.
    let live: bool = db
        .client()
        .await
        .unwrap()
        .query_one("SELECT lease_expires_at > now() FROM event_head", &[])
        .await
        .unwrap()
        .get(0);
    assert!(live);

    db.drop_database().await.unwrap();
}
