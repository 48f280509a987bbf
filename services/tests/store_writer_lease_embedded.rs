//! The writer lease of the embedded (SQLite) store: the only process appending answers "has this
//! stream moved?" from memory, and another process's append waits until it has stopped.
//!
//! Two stores opened on one data directory play two processes: each opens the lease's files
//! itself, and the operating system's file locks do not tell two open files of one process
//! from two processes. A row written straight into the `events` table, behind the stores, shows
//! which reads are answered from memory: such a row breaks the lease's premise (every append
//! goes through a store), so a read that does not return it did not ask SQLite.

use std::fs::{OpenOptions, TryLockError};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use onbehalf::store::sqlite::{SqliteOptions, SqliteStore, DATABASE_FILE};
use onbehalf::store::{AppendBatch, EventAppender, EventReader};
use onbehalf::testing::TempDataDir;
use onbehalf_events::StoredEvent;
use serde_json::json;

const ACCOUNT: &str = "client-account-5f0c";

/// Names the data directory of the child process that holds the lease until it is killed.
const CHILD_DIR_ENV: &str = "ONBEHALF_TEST_LEASE_CHILD_DIR";

#[path = "support/counted.rs"]
mod counted;

fn batch(stream_id: &str, expected_version: u64, n: u64) -> AppendBatch {
    counted::counted(stream_id, expected_version, json!({ "n": n }))
}

fn versions(events: &[StoredEvent]) -> Vec<u64> {
    events.iter().map(|e| e.version).collect()
}

/// Waits until `store` holds the lease, which it takes within a few ticks of its first append
/// when no other process appends.
async fn until_held(store: &SqliteStore) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !store.holds_writer_lease() {
        assert!(Instant::now() < deadline, "the lease was not taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes the stream's version `version` straight into the table, as a copy of its first event.
fn write_behind_the_stores(dir: &Path, version: i64) {
    rusqlite::Connection::open(dir.join(DATABASE_FILE))
        .unwrap()
        .execute(
            "INSERT INTO events (position, event_id, stream_id, stream_type, version, \
             occurred_at, event_type, event_version, payload, metadata, key_id, hash) \
             SELECT 1000 + ?1, lower(hex(randomblob(16))), stream_id, stream_type, ?1, \
             occurred_at, event_type, event_version, payload, metadata, key_id, hash \
             FROM events WHERE stream_id = ?2 AND version = 1",
            rusqlite::params![version, ACCOUNT],
        )
        .unwrap();
}

/// Whether some process holds the lease's lock exclusively.
fn lease_locked(dir: &Path) -> bool {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(format!("{DATABASE_FILE}-lease")))
        .unwrap();
    match file.try_lock_shared() {
        Ok(()) => false,
        Err(TryLockError::WouldBlock) => true,
        Err(TryLockError::Error(e)) => panic!("cannot try the lease's lock: {e}"),
    }
}

/// A store whose lease is stepped by the test, so that nothing happens between two steps.
async fn stepped(dir: &Path) -> SqliteStore {
    let mut options = SqliteOptions::default();
    options.manual_lease_ticks = true;
    SqliteStore::open_with(dir, options).await.unwrap()
}

#[tokio::test]
async fn the_only_appender_answers_a_known_stream_head_from_memory() {
    let dir = TempDataDir::new();
    let store = stepped(dir.path()).await;
    store.append(batch(ACCOUNT, 0, 1)).await.unwrap();
    store.tick_writer_lease().await.unwrap();
    assert!(store.holds_writer_lease());
    assert!(lease_locked(dir.path()));

    // Read once under the lease: the head is learned from SQLite.
    assert_eq!(
        versions(&store.read_stream(ACCOUNT, 1).await.unwrap()),
        [] as [u64; 0]
    );
    write_behind_the_stores(dir.path(), 2);
    // The known head is answered from memory, a read from an older version asks SQLite.
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
    write_behind_the_stores(dir.path(), 4);
    assert_eq!(
        versions(&store.read_stream(ACCOUNT, 3).await.unwrap()),
        [] as [u64; 0]
    );

    // At its next step the holder sees that another connection committed, and gives the
    // lease up.
    store.tick_writer_lease().await.unwrap();
    assert!(!store.holds_writer_lease());
    assert!(!lease_locked(dir.path()));
    assert_eq!(versions(&store.read_stream(ACCOUNT, 3).await.unwrap()), [4]);
}

#[tokio::test]
async fn a_lease_file_removed_under_the_holder_stops_its_answers_from_memory() {
    let dir = TempDataDir::new();
    let holder = stepped(dir.path()).await;
    holder.append(batch(ACCOUNT, 0, 1)).await.unwrap();
    holder.tick_writer_lease().await.unwrap();
    assert_eq!(
        versions(&holder.read_stream(ACCOUNT, 1).await.unwrap()),
        [] as [u64; 0]
    );

    // Removed as if it were a stale lock: a process started afterwards locks a new file, which
    // the holder's lock does not keep out, so its append does not wait.
    std::fs::remove_file(dir.path().join(format!("{DATABASE_FILE}-lease"))).unwrap();
    let other = SqliteStore::open(dir.path()).await.unwrap();
    let started = Instant::now();
    other.append(batch(ACCOUNT, 1, 2)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));

    // The holder sees that its file is gone before answering from memory.
    assert_eq!(
        versions(&holder.read_stream(ACCOUNT, 1).await.unwrap()),
        [2]
    );
    assert!(!holder.holds_writer_lease());
    // Its next append locks the file the path names now.
    holder.append(batch(ACCOUNT, 2, 3)).await.unwrap();
    assert_eq!(
        versions(&other.read_stream(ACCOUNT, 0).await.unwrap()),
        [1, 2, 3]
    );
}

#[tokio::test]
async fn a_wish_file_removed_under_the_holder_is_opened_again() {
    let dir = TempDataDir::new();
    let holder = SqliteStore::open(dir.path()).await.unwrap();
    holder.append(batch(ACCOUNT, 0, 1)).await.unwrap();
    until_held(&holder).await;
    assert_eq!(
        versions(&holder.read_stream(ACCOUNT, 1).await.unwrap()),
        [] as [u64; 0]
    );

    std::fs::remove_file(dir.path().join(format!("{DATABASE_FILE}-wish"))).unwrap();
    let other = SqliteStore::open(dir.path()).await.unwrap();
    let started = Instant::now();
    other.append(batch(ACCOUNT, 1, 2)).await.unwrap();
    // An append that had to wait for a holder that never saw its wish fails after five seconds.
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!holder.holds_writer_lease());
    assert_eq!(
        versions(&holder.read_stream(ACCOUNT, 1).await.unwrap()),
        [2]
    );
}

#[tokio::test]
async fn a_lease_file_that_cannot_be_opened_fails_an_append_and_names_the_file() {
    let dir = TempDataDir::new();
    let path = dir.path().join(format!("{DATABASE_FILE}-lease"));
    std::fs::create_dir(&path).unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();

    let refused = store.append(batch(ACCOUNT, 0, 1)).await.unwrap_err();
    let message = refused.to_string();
    assert!(
        message.contains(&format!(
            "cannot open the writer lease's file {}: ",
            path.display()
        )),
        "{message}"
    );
    assert_eq!(
        versions(&store.read_stream(ACCOUNT, 0).await.unwrap()),
        [] as [u64; 0]
    );
}

#[tokio::test]
async fn an_append_by_another_process_waits_until_the_holder_stops_answering_from_memory() {
    let dir = TempDataDir::new();
    let holder = SqliteStore::open(dir.path()).await.unwrap();
    let other = SqliteStore::open(dir.path()).await.unwrap();
    holder.append(batch(ACCOUNT, 0, 1)).await.unwrap();
    until_held(&holder).await;
    assert_eq!(
        versions(&holder.read_stream(ACCOUNT, 1).await.unwrap()),
        [] as [u64; 0]
    );

    // The other process's append (a revocation, say) lands only once the holder gave up.
    let appended = other.append(batch(ACCOUNT, 1, 2)).await.unwrap();
    assert_eq!(appended.stream_version, 2);
    assert!(!holder.holds_writer_lease());
    assert_eq!(
        versions(&holder.read_stream(ACCOUNT, 1).await.unwrap()),
        [2]
    );

    // For a while after, neither takes the lease, though both append and read.
    holder
        .append(batch("client-account-9a71", 0, 1))
        .await
        .unwrap();
    other.append(batch(ACCOUNT, 2, 3)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!holder.holds_writer_lease());
    assert!(!other.holds_writer_lease());
    assert!(!lease_locked(dir.path()));
    assert_eq!(
        versions(&holder.read_stream(ACCOUNT, 0).await.unwrap()),
        [1, 2, 3]
    );
}

#[tokio::test]
async fn a_store_without_the_lease_honours_another_stores_lease_and_never_takes_it() {
    let dir = TempDataDir::new();
    let plain = SqliteStore::open_with(dir.path(), SqliteOptions::default().writer_lease(false))
        .await
        .unwrap();
    plain.append(batch(ACCOUNT, 0, 1)).await.unwrap();
    assert_eq!(versions(&plain.read_stream(ACCOUNT, 0).await.unwrap()), [1]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!plain.holds_writer_lease());
    assert!(!lease_locked(dir.path()));

    let holder = SqliteStore::open(dir.path()).await.unwrap();
    assert_eq!(
        versions(&holder.read_stream(ACCOUNT, 0).await.unwrap()),
        [1]
    );
    until_held(&holder).await;
    assert_eq!(
        versions(&holder.read_stream(ACCOUNT, 1).await.unwrap()),
        [] as [u64; 0]
    );
    plain.append(batch(ACCOUNT, 1, 2)).await.unwrap();
    assert!(!holder.holds_writer_lease());
    assert_eq!(
        versions(&holder.read_stream(ACCOUNT, 1).await.unwrap()),
        [2]
    );
}

#[tokio::test]
async fn an_append_by_a_build_that_does_not_know_the_lease_is_refused() {
    let dir = TempDataDir::new();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    store.append(batch(ACCOUNT, 0, 1)).await.unwrap();

    // What a build without the lease sends: the stream's next event, then the head.
    let mut conn = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    let tx = conn.transaction().unwrap();
    tx.execute(
        "INSERT INTO events (position, event_id, stream_id, stream_type, version, occurred_at, \
         event_type, event_version, payload, metadata, key_id, hash) \
         SELECT 2, lower(hex(randomblob(16))), stream_id, stream_type, 2, occurred_at, \
         event_type, event_version, payload, metadata, key_id, hash FROM events WHERE position = 1",
        [],
    )
    .unwrap();
    let refused = tx
        .execute("UPDATE event_head SET position = 2 WHERE singleton = 1", [])
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "the log is written under a writer lease that this build does not honour"
    );
    drop(tx);

    assert_eq!(versions(&store.read_stream(ACCOUNT, 0).await.unwrap()), [1]);
    // This build's appends go on, and clear their mark each time.
    store.append(batch(ACCOUNT, 1, 2)).await.unwrap();
    let mark: Option<i64> = conn
        .query_row("SELECT lease_aware FROM event_head", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mark, None);
    assert_eq!(
        versions(&store.read_stream(ACCOUNT, 0).await.unwrap()),
        [1, 2]
    );
}

#[tokio::test]
async fn a_store_closed_while_holding_the_lease_lets_the_next_append_through_at_once() {
    let dir = TempDataDir::new();
    let holder = SqliteStore::open(dir.path()).await.unwrap();
    holder.append(batch(ACCOUNT, 0, 1)).await.unwrap();
    until_held(&holder).await;
    drop(holder);
    assert!(!lease_locked(dir.path()));

    let next = SqliteStore::open(dir.path()).await.unwrap();
    next.append(batch(ACCOUNT, 1, 2)).await.unwrap();
    until_held(&next).await;
}

#[tokio::test]
async fn a_store_whose_runtime_stopped_gives_the_lease_up() {
    let dir = TempDataDir::new();
    let path = dir.path().to_path_buf();
    // The store outlives the runtime its keeper ran on: nobody would look for wishes any more.
    let orphan = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let store = runtime.block_on(async {
            let store = SqliteStore::open(&path).await.unwrap();
            store.append(batch(ACCOUNT, 0, 1)).await.unwrap();
            until_held(&store).await;
            store
        });
        runtime.shutdown_timeout(Duration::from_secs(5));
        store
    })
    .await
    .unwrap();
    assert!(!orphan.holds_writer_lease());
    assert!(!lease_locked(dir.path()));

    let next = SqliteStore::open(dir.path()).await.unwrap();
    next.append(batch(ACCOUNT, 1, 2)).await.unwrap();
    assert_eq!(
        versions(&next.read_stream(ACCOUNT, 0).await.unwrap()),
        [1, 2]
    );
}

#[tokio::test]
async fn a_lease_held_by_a_killed_process_is_free_at_once() {
    let dir = TempDataDir::new();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lease_holder_until_killed",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let held = stdout
        .lines()
        .map_while(Result::ok)
        .any(|line| line == "lease held");
    assert!(held, "the child process ended without holding the lease");
    assert!(lease_locked(dir.path()));

    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!lease_locked(dir.path()));

    let next = SqliteStore::open(dir.path()).await.unwrap();
    let started = Instant::now();
    next.append(batch(ACCOUNT, 1, 2)).await.unwrap();
    // An append that had to wait for a holder fails after five seconds; this one did not wait.
    assert!(started.elapsed() < Duration::from_secs(2));
    until_held(&next).await;
    assert_eq!(
        versions(&next.read_stream(ACCOUNT, 0).await.unwrap()),
        [1, 2]
    );
}

/// The child process of `a_lease_held_by_a_killed_process_is_free_at_once`: takes the lease on
/// the data directory it is given, says so, and waits to be killed.
#[tokio::test]
#[ignore = "run by a_lease_held_by_a_killed_process_is_free_at_once in a process of its own"]
async fn lease_holder_until_killed() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let store = SqliteStore::open(Path::new(&dir)).await.unwrap();
    store.append(batch(ACCOUNT, 0, 1)).await.unwrap();
    until_held(&store).await;
    println!("lease held");
    tokio::time::sleep(Duration::from_secs(60)).await;
}
