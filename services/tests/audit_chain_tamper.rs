//! The log's hash chain against rows changed behind the store's back, on SQLite and PostgreSQL.
//!
//! Each scenario writes the same six events through the store, tampers with the rows directly
//! (rusqlite on the database file, a tokio-postgres session on the database) and checks that
//! `verify_chain` names the exact first broken position and how it was broken. PostgreSQL
//! scenarios skip when no server is reachable, unless `ONBEHALF_REQUIRE_SERVICES=1`.

use chrono::{DateTime, Utc};
use onbehalf::store::postgres::PostgresStore;
use onbehalf::store::sqlite::{SqliteStore, DATABASE_FILE};
use onbehalf::store::{
    verify_chain, AppendBatch, BreakKind, ChainHash, ChainReport, EventStore, NewEvent, StoreError,
};
use onbehalf::testing::{postgres_test_database, TempDataDir};
use onbehalf_events::{Actor, Metadata};
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Building blocks

/// Direct access to the database under a store, bypassing it.
enum Raw {
    Sqlite(rusqlite::Connection),
    Postgres(tokio_postgres::Client),
}

impl Raw {
    /// Runs `sqlite` or `postgres` (one or more statements), whichever fits the backend.
    async fn exec2(&self, sqlite: &str, postgres: &str) {
        match self {
            Raw::Sqlite(conn) => conn
                .execute_batch(sqlite)
                .unwrap_or_else(|e| panic!("{sqlite}: {e}")),
            Raw::Postgres(client) => client
                .batch_execute(postgres)
                .await
                .unwrap_or_else(|e| panic!("{postgres}: {e}")),
        }
    }

    /// Runs SQL that both backends understand alike.
    async fn exec(&self, sql: &str) {
        self.exec2(sql, sql).await
    }
}

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 250_000).expect("valid test timestamp")
}

fn batch(stream: &str, expected_version: u64, seconds: i64, types: &[&str]) -> AppendBatch {
    let mut metadata = Metadata::new(Actor::Service("billing".to_owned()));
    metadata.client_address = Some("203.0.113.7".to_owned());
    AppendBatch {
        stream_id: stream.to_owned(),
        stream_type: "client_account".to_owned(),
        expected_version,
        occurred_at: at(seconds),
        events: types
            .iter()
            .enumerate()
            .map(|(i, t)| {
                NewEvent::new(*t, "1", json!({ "n": i, "at": seconds }), metadata.clone())
            })
            .collect(),
        reservations: Vec::new(),
        releases: Vec::new(),
        request: None,
    }
}

/// Six events over three streams: positions 1 and 2 in one append, then one per append.
async fn six_events(store: &dyn EventStore) {
    let appends = [
        batch(
            "account-a",
            0,
            1_700_000_000,
            &["AccountCreated", "MemberInvited"],
        ),
        batch("account-b", 0, 1_700_000_060, &["AccountCreated"]),
        batch("account-a", 2, 1_700_000_120, &["InvitationAccepted"]),
        batch("account-b", 1, 1_700_000_180, &["InvoiceIssued"]),
        batch("account-c", 0, 1_700_000_240, &["AccountCreated"]),
    ];
    for append in appends {
        store.append(append).await.expect("append");
    }
}

async fn stored_hash(store: &dyn EventStore, position: u64) -> ChainHash {
    let event = store
        .read_all(position - 1, 1)
        .await
        .expect("read")
        .pop()
        .expect("the event exists");
    ChainHash::parse(event.hash.as_deref().expect("a hash")).expect("a valid hash")
}

/// Verifies with several batch sizes, so that breaks on and across batch edges are both seen,
/// and returns the report they all agree on.
async fn verify(store: &dyn EventStore) -> ChainReport {
    let small = verify_chain(store, 2).await.expect("verify");
    let single = verify_chain(store, 1).await.expect("verify");
    let large = verify_chain(store, 1000).await.expect("verify");
    assert_eq!(small, single, "batch sizes 2 and 1 agree");
    assert_eq!(small, large, "batch sizes 2 and 1000 agree");
    small
}

fn broken(position: u64, kind: BreakKind) -> ChainReport {
    ChainReport::Broken { position, kind }
}

/// Rows shifted by `by` from position `from` on, through negative positions so that no
/// intermediate state collides with the primary key, and the head moved with them. `mark` is
/// what else the head's update sets: on SQLite, the mark of an advance by this build, which an
/// editor who read the schema sets as the store does.
fn shift_sql(from: u64, by: i64, mark: &str) -> String {
    format!(
        "UPDATE events SET position = -position WHERE position >= {from};\n\
         UPDATE events SET position = -position + ({by}) WHERE position < 0;\n\
         UPDATE event_head SET position = position + ({by}){mark};"
    )
}

/// The head's mark of an advance by this build, on SQLite.
const SQLITE_MARK: &str = ", lease_aware = 1";

/// A forged copy of the row at `source`, written at `position` with another id and version.
fn forge_sql(position: u64, source: u64, uuid_cast: &str) -> String {
    format!(
        "INSERT INTO events (position, event_id, stream_id, stream_type, version, occurred_at, \
         event_type, event_version, payload, metadata, key_id, hash) \
         SELECT {position}, '0190a0b0-c0d0-7e00-8f00-000000000abc'{uuid_cast}, stream_id, \
         stream_type, 90 + {position}, occurred_at, 'InvoicePaid', event_version, payload, \
         metadata, key_id, hash FROM events WHERE position = {source}"
    )
}

fn swap_sql(a: u64, b: u64) -> String {
    format!(
        "UPDATE events SET position = -1 WHERE position = {a};\n\
         UPDATE events SET position = {a} WHERE position = {b};\n\
         UPDATE events SET position = {b} WHERE position = -1;"
    )
}

// ---------------------------------------------------------------------------------------------
// Scenarios

async fn an_untouched_log_verifies_intact_to_its_head(store: &dyn EventStore, _raw: &Raw) {
    six_events(store).await;

    assert_eq!(
        verify(store).await,
        ChainReport::Intact {
            head: 6,
            last_hash: stored_hash(store, 6).await,
        }
    );
}

async fn an_altered_payload_is_caught_at_its_position(store: &dyn EventStore, raw: &Raw) {
    six_events(store).await;
    raw.exec(r#"UPDATE events SET payload = '{"n":0,"at":1}' WHERE position = 3"#)
        .await;

    assert_eq!(verify(store).await, broken(3, BreakKind::Altered));
}

async fn a_commit_time_moved_by_one_microsecond_is_caught_as_altered(
    store: &dyn EventStore,
    raw: &Raw,
) {
    six_events(store).await;
    raw.exec2(
        "UPDATE events SET occurred_at = occurred_at + 1 WHERE position = 4",
        "UPDATE events SET occurred_at = occurred_at + interval '1 microsecond' \
         WHERE position = 4",
    )
    .await;

    assert_eq!(verify(store).await, broken(4, BreakKind::Altered));
}

async fn an_altered_head_event_is_caught_as_altered(store: &dyn EventStore, raw: &Raw) {
    six_events(store).await;
    raw.exec("UPDATE events SET event_type = 'AccountClosed' WHERE position = 6")
        .await;

    assert_eq!(verify(store).await, broken(6, BreakKind::Altered));
}

async fn metadata_that_no_longer_decodes_is_caught_as_altered(store: &dyn EventStore, raw: &Raw) {
    six_events(store).await;
    raw.exec(r#"UPDATE events SET metadata = '{"actor":"nobody"}' WHERE position = 5"#)
        .await;

    assert_eq!(verify(store).await, broken(5, BreakKind::Altered));
}

async fn a_deleted_row_is_caught_at_the_missing_position(store: &dyn EventStore, raw: &Raw) {
    six_events(store).await;
    raw.exec("DELETE FROM events WHERE position = 4").await;

    assert_eq!(verify(store).await, broken(4, BreakKind::Deleted));
}

async fn a_deleted_head_row_is_caught_against_the_recorded_head(store: &dyn EventStore, raw: &Raw) {
    six_events(store).await;
    raw.exec("DELETE FROM events WHERE position = 6").await;

    assert_eq!(verify(store).await, broken(6, BreakKind::Deleted));
    // Appending onto a head that is gone would hide the deletion, so the store refuses.
    let refused = store
        .append(batch("account-d", 0, 1_700_000_300, &["AccountCreated"]))
        .await;
    assert!(
        matches!(&refused, Err(StoreError::Corrupt(m)) if m == "the head event at position 6 is missing"),
        "{refused:?}"
    );
}

async fn a_deleted_row_with_later_rows_renumbered_is_caught_as_deleted(
    store: &dyn EventStore,
    raw: &Raw,
) {
    six_events(store).await;
    raw.exec2(
        &format!(
            "DELETE FROM events WHERE position = 3;\n{}",
            shift_sql(4, -1, SQLITE_MARK)
        ),
        &format!(
            "DELETE FROM events WHERE position = 3;\n{}",
            shift_sql(4, -1, "")
        ),
    )
    .await;

    assert_eq!(store.head_position().await.unwrap(), 5);
    assert_eq!(verify(store).await, broken(3, BreakKind::Deleted));
}

async fn a_forged_row_beyond_the_head_is_caught_as_inserted(store: &dyn EventStore, raw: &Raw) {
    six_events(store).await;
    raw.exec2(&forge_sql(7, 6, ""), &forge_sql(7, 6, "::uuid"))
        .await;

    assert_eq!(verify(store).await, broken(7, BreakKind::Inserted));
}

async fn a_forged_row_pushed_into_the_middle_is_caught_as_inserted(
    store: &dyn EventStore,
    raw: &Raw,
) {
    six_events(store).await;
    raw.exec2(
        &format!("{}\n{};", shift_sql(3, 1, SQLITE_MARK), forge_sql(3, 2, "")),
        &format!("{}\n{};", shift_sql(3, 1, ""), forge_sql(3, 2, "::uuid")),
    )
    .await;

    assert_eq!(store.head_position().await.unwrap(), 7);
    assert_eq!(verify(store).await, broken(3, BreakKind::Inserted));
}

async fn two_rows_with_swapped_positions_are_caught_as_reordered(
    store: &dyn EventStore,
    raw: &Raw,
) {
    six_events(store).await;
    raw.exec(&swap_sql(2, 5)).await;

    assert_eq!(verify(store).await, broken(2, BreakKind::Reordered));
}

async fn two_neighbouring_rows_swapped_are_caught_as_reordered(store: &dyn EventStore, raw: &Raw) {
    six_events(store).await;
    raw.exec(&swap_sql(3, 4)).await;

    assert_eq!(verify(store).await, broken(3, BreakKind::Reordered));
}

async fn a_replaced_hash_is_caught_as_altered(store: &dyn EventStore, raw: &Raw) {
    six_events(store).await;
    raw.exec(&format!(
        "UPDATE events SET hash = '{}' WHERE position = 2",
        "ab".repeat(32)
    ))
    .await;

    // The row's own hash changed, so the row after it no longer follows from it either; the
    // break is named where it starts.
    assert_eq!(verify(store).await, broken(2, BreakKind::Altered));
}

// ---------------------------------------------------------------------------------------------
// Running the scenarios against each backend

macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            use super::*;

            $(
                #[tokio::test]
                async fn $scenario() {
                    let dir = TempDataDir::new();
                    let store = SqliteStore::open(dir.path()).await.unwrap();
                    let raw = Raw::Sqlite(
                        rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap(),
                    );
                    super::$scenario(&store, &raw).await;
                }
            )*
        }

        mod postgres {
            use super::*;

            $(
                #[tokio::test]
                async fn $scenario() {
                    let Some(db) = postgres_test_database().await else { return };
                    let store = PostgresStore::connect(&db.url).await.unwrap();
                    let raw = Raw::Postgres(db.client().await.unwrap());
                    super::$scenario(&store, &raw).await;
                    drop(raw);
                    drop(store);
                    db.drop_database().await.unwrap();
                }
            )*
        }
    };
}

on_both_backends!(
    an_untouched_log_verifies_intact_to_its_head,
    an_altered_payload_is_caught_at_its_position,
    a_commit_time_moved_by_one_microsecond_is_caught_as_altered,
    an_altered_head_event_is_caught_as_altered,
    metadata_that_no_longer_decodes_is_caught_as_altered,
    a_deleted_row_is_caught_at_the_missing_position,
    a_deleted_head_row_is_caught_against_the_recorded_head,
    a_deleted_row_with_later_rows_renumbered_is_caught_as_deleted,
    a_forged_row_beyond_the_head_is_caught_as_inserted,
    a_forged_row_pushed_into_the_middle_is_caught_as_inserted,
    two_rows_with_swapped_positions_are_caught_as_reordered,
    two_neighbouring_rows_swapped_are_caught_as_reordered,
    a_replaced_hash_is_caught_as_altered,
);

// ---------------------------------------------------------------------------------------------
// A log written before the chain existed
