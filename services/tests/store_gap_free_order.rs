//! The global order is a commit order: a reader that polls "everything after the last position
//! I saw" never skips an event.
//!
//! The classic trap is a sequence: numbers are handed out when rows are inserted, not when they
//! commit, so a slow transaction holding a lower number can commit after a fast one holding a
//! higher number, and a reader that already moved past the higher number never sees the lower
//! one. These tests first reproduce that on a plain `bigserial` table, then show that
//! [`PostgresStore`] is immune: a position that is taken but not committed blocks every later
//! appender, so nothing can become visible after it before it does.
//!
//! They need PostgreSQL and skip without it, unless `ONBEHALF_REQUIRE_SERVICES=1`.

use std::time::Duration;

use onbehalf::store::postgres::{CommitGate, PostgresStore};
use onbehalf::store::{AppendBatch, Appended, EventAppender, EventReader};
use onbehalf::testing::{postgres_test_database, TestDatabase};
use serde_json::json;
use tokio::sync::oneshot;

#[path = "support/counted.rs"]
mod counted;

fn batch(stream_id: &str, expected_version: u64, n: usize) -> AppendBatch {
    counted::counted(stream_id, expected_version, json!({ "n": n }))
}

/// Ids a reader polling "id > last seen" has seen, in the order it saw them.
struct PollingReader {
    last_seen: i64,
    seen: Vec<i64>,
}

impl PollingReader {
    async fn poll(&mut self, client: &tokio_postgres::Client) {
        let rows = client
            .query(
                "SELECT id FROM naive_log WHERE id > $1 ORDER BY id",
                &[&self.last_seen],
            )
            .await
            .unwrap();
        for row in rows {
            let id: i64 = row.get(0);
            self.seen.push(id);
            self.last_seen = id;
        }
    }
}

/// Phase one: on a `bigserial` table, a reader skips the row of the slower transaction.
async fn bigserial_reader_skips_a_lower_id_that_commits_late(db: &TestDatabase) {
    let setup = db.client().await.unwrap();
    setup
        .batch_execute("CREATE TABLE naive_log (id bigserial PRIMARY KEY, body text NOT NULL)")
        .await
        .unwrap();
    let slow = db.client().await.unwrap();
    let fast = db.client().await.unwrap();
    let reader_client = db.client().await.unwrap();
    let mut reader = PollingReader {
        last_seen: 0,
        seen: Vec::new(),
    };

    slow.batch_execute("BEGIN").await.unwrap();
    let slow_id: i64 = slow
        .query_one(
            "INSERT INTO naive_log (body) VALUES ('slow') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    fast.batch_execute("BEGIN").await.unwrap();
    let fast_id: i64 = fast
        .query_one(
            "INSERT INTO naive_log (body) VALUES ('fast') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!((slow_id, fast_id), (1, 2));

    fast.batch_execute("COMMIT").await.unwrap();
    reader.poll(&reader_client).await;
    assert_eq!(
        reader.seen,
        vec![2],
        "the reader sees the faster, higher id first"
    );

    slow.batch_execute("COMMIT").await.unwrap();
    reader.poll(&reader_client).await;

    let committed: Vec<i64> = reader_client
        .query("SELECT id FROM naive_log ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(committed, vec![1, 2], "both rows are committed");
    assert_eq!(reader.seen, vec![2], "but the reader skipped id 1 for good");
}

/// Phase two: with the store, the slower append's position blocks the faster one until it
/// commits, and the reader sees both, in order.
async fn store_holds_later_appends_behind_an_uncommitted_position(db: &TestDatabase) {
    let writer = PostgresStore::connect(&db.url).await.unwrap();
    // A second pool, as another replica reading the log would have.
    let reader = PostgresStore::connect(&db.url).await.unwrap();

    let (taken_tx, taken_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel();
    let slow = {
        let writer = writer.clone();
        let gate = CommitGate {
            taken: taken_tx,
            release: release_rx,
        };
        tokio::spawn(async move {
            writer
                .append_with_commit_gate(batch("account-slow", 0, 1), gate)
                .await
        })
    };
    let slow_taken = taken_rx.await.unwrap();
    assert_eq!(
        slow_taken,
        Appended {
            first_position: 1,
            last_position: 1,
            stream_version: 1
        }
    );

    let fast = {
        let writer = writer.clone();
        tokio::spawn(async move { writer.append(batch("account-fast", 0, 2)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !fast.is_finished(),
        "a later append must wait for the uncommitted position"
    );
    assert_eq!(reader.read_all(0, 100).await.unwrap(), Vec::new());
    assert_eq!(reader.head_position().await.unwrap(), 0);

    release_tx.send(()).unwrap();
    assert_eq!(slow.await.unwrap().unwrap(), slow_taken);
    let fast_landed = fast.await.unwrap().unwrap();
    assert_eq!(
        fast_landed,
        Appended {
            first_position: 2,
            last_position: 2,
            stream_version: 1
        }
    );

    let seen = reader.read_all(0, 100).await.unwrap();
    let seen: Vec<(u64, &str)> = seen
        .iter()
        .map(|e| (e.position, e.stream_id.as_str()))
        .collect();
    assert_eq!(seen, vec![(1, "account-slow"), (2, "account-fast")]);
    assert_eq!(reader.head_position().await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_commit_is_skipped_on_bigserial_but_holds_back_later_appends_in_the_store() {
    let Some(db) = postgres_test_database().await else {
        return;
    };

    bigserial_reader_skips_a_lower_id_that_commits_late(&db).await;
    store_holds_later_appends_behind_an_uncommitted_position(&db).await;

    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_polling_reader_sees_every_position_in_order_while_appenders_race() {
    const TASKS: usize = 8;
    const APPENDS: usize = 25;
    let Some(db) = postgres_test_database().await else {
        return;
    };
    let writer = PostgresStore::connect(&db.url).await.unwrap();
    let reader = PostgresStore::connect(&db.url).await.unwrap();
    let total = (TASKS * APPENDS) as u64;

    let poller = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut last_seen = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while last_seen < total && tokio::time::Instant::now() < deadline {
            for event in reader.read_all(last_seen, 7).await.unwrap() {
                seen.push(event.position);
                last_seen = event.position;
            }
        }
        seen
    });
    let appenders: Vec<_> = (0..TASKS)
        .map(|task| {
            let writer = writer.clone();
            tokio::spawn(async move {
                let stream = format!("account-{task}");
                for n in 0..APPENDS {
                    writer.append(batch(&stream, n as u64, n)).await.unwrap();
                }
            })
        })
        .collect();
    for appender in appenders {
        appender.await.unwrap();
    }

    let seen = poller.await.unwrap();
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    drop(writer);
    db.drop_database().await.unwrap();
}
