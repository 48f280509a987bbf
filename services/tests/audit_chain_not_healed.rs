//! Opening a log never rewrites its hashes: blanking the hashes of an edited log does not make
//! it verify again after a restart.

use chrono::Utc;
use onbehalf::store::sqlite::SqliteStore;
use onbehalf::store::{verify_chain, AppendBatch, BreakKind, ChainReport, EventAppender, NewEvent};
use onbehalf::testing::TempDataDir;
use onbehalf_events::{Actor, Metadata};
use serde_json::json;

#[tokio::test]
async fn blanked_hashes_of_an_edited_log_stay_blank_and_are_reported() {
    let dir = TempDataDir::new();
    {
        let store = SqliteStore::open(dir.path()).await.unwrap();
        for n in 1..=3u64 {
            store
                .append(AppendBatch {
                    stream_id: "account-1".into(),
                    stream_type: "client_account".into(),
                    expected_version: n - 1,
                    occurred_at: Utc::now(),
                    events: vec![NewEvent::new(
                        "Counted",
                        "1",
                        json!({ "n": n }),
                        Metadata::new(Actor::System),
                    )],
                    reservations: Vec::new(),
                    releases: Vec::new(),
                    request: None,
                })
                .await
                .unwrap();
        }
    }
    let db = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
    db.execute_batch(
        "UPDATE events SET payload = '{\"n\":20}' WHERE position = 2; UPDATE events SET hash = NULL;",
    )
    .unwrap();
    drop(db);

    let store = SqliteStore::open(dir.path()).await.unwrap();
    let blank: i64 = rusqlite::Connection::open(dir.path().join("events.db"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM events WHERE hash IS NULL", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(blank, 3, "opening the store rewrote no hash");
    assert_eq!(
        verify_chain(&store, 1000).await.unwrap(),
        ChainReport::Broken {
            position: 1,
            kind: BreakKind::Altered
        }
    );
}
