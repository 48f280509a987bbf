//! The relay against a real PostgreSQL log and real NATS servers.
//!
//! Every test runs its own `nats-server` on a free loopback port (so that it may kill and restart
//! it) and its own throwaway database; the machine's shared NATS and PostgreSQL are never stopped
//! or reconfigured. Without PostgreSQL or a `nats-server` binary the tests print a skip message,
//! unless `ONBEHALF_REQUIRE_SERVICES=1`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{self, stream};
use onbehalf::relay::{
    self, EventPublisher, PublishOutcome, RelayConfig, RelayError, RelayHandle, RelayStatus,
    RelayedEvent, Role, StreamSettings, POSITION_HEADER,
};
use onbehalf::store::postgres::PostgresStore;
use onbehalf::store::{AppendBatch, EventAppender, EventReader, NewEvent};
use onbehalf::testing::{postgres_test_database, NatsTestServer, TempDataDir, TestDatabase};
use onbehalf_events::{Actor, Metadata, StoredEvent};
use serde_json::json;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_onbehalf");

/// Longest wait for anything a test waits for.
const PATIENCE: Duration = Duration::from_secs(30);

const ABC_COMPANY: Uuid = Uuid::from_u128(0x0b6f_3c4e_2f0a_4c1e_9a57_5f1d_2c3b_4a59);
const DESIGNER: Uuid = Uuid::from_u128(0x6a1e_9f0c_7d2b_4e3a_8c4d_1b2a_3c4d_5e6f);

/// A database and a private broker, or `None` when either is missing and not required.
async fn services() -> Option<(TestDatabase, NatsTestServer)> {
    let db = postgres_test_database().await?;
    let nats = NatsTestServer::start().await?;
    Some((db, nats))
}

/// Appends events to a test log the way commands do, rotating over a client account, a user and
/// the catalogue.
struct Log {
    store: PostgresStore,
    versions: HashMap<String, u64>,
    appended: u64,
}

impl Log {
    async fn open(db: &TestDatabase) -> Log {
        Log {
            store: PostgresStore::connect(&db.url).await.unwrap(),
            versions: HashMap::new(),
            appended: 0,
        }
    }

    /// Appends `n` events, one command each; returns the position of the last.
    async fn commit(&mut self, n: u64) -> u64 {
        let mut last = 0;
        for _ in 0..n {
            let (stream_id, stream_type, event_type) = match self.appended % 3 {
                0 => (
                    format!("account-{ABC_COMPANY}"),
                    "client_account",
                    "AccountNoted",
                ),
                1 => (format!("user-{DESIGNER}"), "user", "UserNoted"),
                _ => ("catalog".to_owned(), "catalog", "CatalogNoted"),
            };
            let version = self.versions.entry(stream_id.clone()).or_insert(0);
            let appended = self
                .store
                .append(AppendBatch {
                    stream_id: stream_id.clone(),
                    stream_type: stream_type.to_owned(),
                    expected_version: *version,
                    occurred_at: chrono::Utc::now(),
                    events: vec![NewEvent::new(
                        event_type,
                        "1",
                        json!({ "n": self.appended }),
                        Metadata::new(Actor::System),
                    )],
                    reservations: Vec::new(),
                    releases: Vec::new(),
                    request: None,
                })
                .await
                .unwrap();
            *version = appended.stream_version;
            self.appended += 1;
            last = appended.last_position;
        }
        last
    }

    /// The log as it leaves the store for the broker: personal fields sealed.
    async fn events(&self) -> Vec<StoredEvent> {
        self.store.read_all_sealed(0, 10_000).await.unwrap()
    }
}

/// A relay on the test's database and broker with short pauses.
fn config(db: &TestDatabase, nats: &NatsTestServer) -> RelayConfig {
    let mut config = RelayConfig::new(db.url.clone(), nats.url());
    config.poll_interval = Duration::from_millis(50);
    config.ack_timeout = Duration::from_secs(1);
    config.backoff = relay::Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    config
}

async fn wait(relay: &mut RelayHandle, what: &str, condition: impl FnMut(&RelayStatus) -> bool) {
    if let Err(last) = relay.wait_for(PATIENCE, condition).await {
        panic!("relay never reached `{what}`; last status {last:?}");
    }
}

/// Waits until the relay is active, caught up and checkpointed at `position`.
async fn wait_caught_up(relay: &mut RelayHandle, position: u64) -> RelayStatus {
    wait(relay, "caught up", |s| {
        s.role == Role::Active
            && s.caught_up
            && s.acknowledged == position
            && s.checkpoint == position
    })
    .await;
    relay.status()
}

async fn jetstream(nats: &NatsTestServer) -> jetstream::Context {
    jetstream::new(async_nats::connect(nats.url()).await.unwrap())
}

/// Every message of the stream, in stream order.
async fn stream_messages(nats: &NatsTestServer, name: &str) -> Vec<StreamMessage> {
    let js = jetstream(nats).await;
    let stream = js.get_stream(name).await.unwrap();
    let state = stream.get_info().await.unwrap().state;
    let mut messages = Vec::new();
    if state.messages == 0 {
        return messages;
    }
    for sequence in state.first_sequence..=state.last_sequence {
        messages.push(stream.get_raw_message(sequence).await.unwrap());
    }
    messages
}

fn header(message: &StreamMessage, name: &str) -> String {
    message
        .headers
        .get(name)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

/// Asserts that the stream holds exactly the log: message `i` is the event at position `i`, with
/// its subject, `Nats-Msg-Id`, position header and envelope.
async fn assert_stream_holds_the_log(nats: &NatsTestServer, log: &Log) {
    let events = log.events().await;
    let messages = stream_messages(nats, "ONBEHALF_EVENTS").await;
    let positions: Vec<String> = messages
        .iter()
        .map(|m| header(m, POSITION_HEADER))
        .collect();
    let expected: Vec<String> = (1..=events.len()).map(|p| p.to_string()).collect();
    assert_eq!(positions, expected, "positions in the stream");
    for (index, (message, event)) in messages.iter().zip(&events).enumerate() {
        assert_eq!(message.sequence, index as u64 + 1);
        assert_eq!(message.subject.as_str(), relay::subject_for(event));
        assert_eq!(header(message, "Nats-Msg-Id"), event.event_id.to_string());
        assert_eq!(
            RelayedEvent::decode(&message.payload).unwrap(),
            RelayedEvent::from(event)
        );
    }
}

async fn saved_checkpoint(db: &TestDatabase, name: &str) -> i64 {
    db.client()
        .await
        .unwrap()
        .query_one(
            "SELECT position FROM relay_checkpoint WHERE name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn every_committed_event_arrives_once_in_position_order_with_its_subject_id_and_position() {
    let Some((db, nats)) = services().await else {
        return;
    };
    let mut log = Log::open(&db).await;
    log.commit(5).await;

    let mut relay = relay::spawn(config(&db, &nats)).await.unwrap();
    wait_caught_up(&mut relay, 5).await;
    log.commit(4).await;
    let status = wait_caught_up(&mut relay, 9).await;

    assert_eq!((status.published, status.duplicates), (9, 0));
    assert_eq!(status.leases_taken, 1);
    assert_stream_holds_the_log(&nats, &log).await;
    let first = &stream_messages(&nats, "ONBEHALF_EVENTS").await[0];
    assert_eq!(
        first.subject.as_str(),
        format!("onbehalf.v1.client_account.{ABC_COMPANY}.AccountNoted")
    );
    assert_eq!(saved_checkpoint(&db, "default").await, 9);

    relay.shutdown().await.unwrap();
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn the_relay_retries_while_nats_is_down_and_catches_up_without_loss_or_duplicates() {
    let Some((db, mut nats)) = services().await else {
        return;
    };
    let mut log = Log::open(&db).await;
    log.commit(3).await;
    let mut relay = relay::spawn(config(&db, &nats)).await.unwrap();
    wait_caught_up(&mut relay, 3).await;

    nats.stop();
    // Commands keep committing: the log never waits for the broker.
    assert_eq!(log.commit(4).await, 7);
    wait(&mut relay, "an outage", |s| s.broker_outages == 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = relay.status();
    assert_eq!((during.acknowledged, during.checkpoint), (3, 3));
    assert_eq!(during.broker_outages, 1);

    nats.restart().await;
    let after = wait_caught_up(&mut relay, 7).await;

    assert_eq!(after.broker_outages, 1);
    assert_eq!(after.published + after.duplicates, 7);
    assert_stream_holds_the_log(&nats, &log).await;
    let state = jetstream(&nats)
        .await
        .get_stream("ONBEHALF_EVENTS")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .state;
    assert_eq!((state.messages, state.last_sequence), (7, 7));
    assert_eq!(saved_checkpoint(&db, "default").await, 7);

    relay.shutdown().await.unwrap();
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn only_one_of_two_relays_publishes_and_the_other_takes_over_from_the_checkpoint() {
    let Some((db, nats)) = services().await else {
        return;
    };
    let mut log = Log::open(&db).await;
    log.commit(4).await;

    let mut first = relay::spawn(config(&db, &nats)).await.unwrap();
    wait(&mut first, "active", |s| s.role == Role::Active).await;
    let mut second = relay::spawn(config(&db, &nats)).await.unwrap();
    wait(&mut second, "standby", |s| s.role == Role::Standby).await;
    wait_caught_up(&mut first, 4).await;
    log.commit(2).await;
    wait_caught_up(&mut first, 6).await;

    let waiting = second.status();
    assert_eq!(waiting.role, Role::Standby);
    assert_eq!(
        (waiting.published, waiting.duplicates, waiting.leases_taken),
        (0, 0, 0)
    );
    assert_eq!(first.status().published, 6);

    // The active relay dies: its lease session closes with it.
    let died = Instant::now();
    first.abort();
    log.commit(3).await;
    let took_over = wait_caught_up(&mut second, 9).await;

    assert!(
        died.elapsed() < Duration::from_secs(10),
        "took over after {:?}",
        died.elapsed()
    );
    assert_eq!(
        (
            took_over.published,
            took_over.duplicates,
            took_over.leases_taken
        ),
        (3, 0, 1)
    );
    assert_stream_holds_the_log(&nats, &log).await;
    assert_eq!(saved_checkpoint(&db, "default").await, 9);

    second.shutdown().await.unwrap();
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_relay_restarted_from_its_checkpoint_republishes_nothing_already_acknowledged() {
    let Some((db, nats)) = services().await else {
        return;
    };
    let mut log = Log::open(&db).await;
    log.commit(5).await;
    let mut relay = relay::spawn(config(&db, &nats)).await.unwrap();
    wait_caught_up(&mut relay, 5).await;
    relay.shutdown().await.unwrap();
    assert_eq!(saved_checkpoint(&db, "default").await, 5);

    let mut restarted = relay::spawn(config(&db, &nats)).await.unwrap();
    let resumed = wait_caught_up(&mut restarted, 5).await;
    assert_eq!((resumed.published, resumed.duplicates), (0, 0));
    log.commit(1).await;
    let status = wait_caught_up(&mut restarted, 6).await;

    assert_eq!((status.published, status.duplicates), (1, 0));
    assert_stream_holds_the_log(&nats, &log).await;

    restarted.shutdown().await.unwrap();
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_checkpoint_behind_the_stream_resumes_after_the_stream_without_republishing() {
    let Some((db, nats)) = services().await else {
        return;
    };
    let mut log = Log::open(&db).await;
    log.commit(5).await;
    let mut relay = relay::spawn(config(&db, &nats)).await.unwrap();
    wait_caught_up(&mut relay, 5).await;
    relay.shutdown().await.unwrap();
    // As if the relay had died after the broker acknowledged 3, 4 and 5 but before it saved them.
    db.client()
        .await
        .unwrap()
        .execute(
            "UPDATE relay_checkpoint SET position = 2 WHERE name = 'default'",
            &[],
        )
        .await
        .unwrap();

    let mut restarted = relay::spawn(config(&db, &nats)).await.unwrap();
    let resumed = wait_caught_up(&mut restarted, 5).await;

    assert_eq!((resumed.published, resumed.duplicates), (0, 0));
    assert_eq!(saved_checkpoint(&db, "default").await, 5);
    assert_stream_holds_the_log(&nats, &log).await;

    restarted.shutdown().await.unwrap();
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn relays_with_different_names_keep_separate_leases_and_checkpoints() {
    let Some((db, nats)) = services().await else {
        return;
    };
    let mut log = Log::open(&db).await;
    log.commit(2).await;
    let mut default = relay::spawn(config(&db, &nats)).await.unwrap();
    let mut other_config = config(&db, &nats);
    other_config.name = "archive".into();
    let mut other = relay::spawn(other_config).await.unwrap();

    // Both are active at once: each name has its own lease. Whichever publishes an event first
    // stores it; the other finds it stored, by its message id or as the stream's tail.
    let a = wait_caught_up(&mut default, 2).await;
    let b = wait_caught_up(&mut other, 2).await;

    assert_eq!((a.leases_taken, b.leases_taken), (1, 1));
    assert_eq!(a.published + b.published, 2);
    assert_eq!(saved_checkpoint(&db, "default").await, 2);
    assert_eq!(saved_checkpoint(&db, "archive").await, 2);
    assert_stream_holds_the_log(&nats, &log).await;

    default.shutdown().await.unwrap();
    other.shutdown().await.unwrap();
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_republished_event_is_dropped_by_the_broker_as_a_duplicate() {
    let Some((db, nats)) = services().await else {
        return;
    };
    let mut log = Log::open(&db).await;
    log.commit(1).await;
    let event = log.events().await.remove(0);
    let client = async_nats::connect(nats.url()).await.unwrap();
    let publisher = EventPublisher::new(client, "ONBEHALF_EVENTS", Duration::from_secs(20));
    publisher
        .ensure_stream(&StreamSettings::builtin())
        .await
        .unwrap();

    let first = publisher.publish(&event).await.unwrap();
    // As after a publish that timed out although the broker had stored it.
    let again = publisher.publish(&event).await.unwrap();

    assert_eq!(
        first,
        PublishOutcome {
            sequence: 1,
            duplicate: false
        }
    );
    assert_eq!(
        again,
        PublishOutcome {
            sequence: 1,
            duplicate: true
        }
    );
    assert_eq!(stream_messages(&nats, "ONBEHALF_EVENTS").await.len(), 1);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn an_event_republished_after_the_duplicate_window_is_stored_again_so_consumers_deduplicate_by_position(
) {
    let Some((db, nats)) = services().await else {
        return;
    };
    let mut log = Log::open(&db).await;
    log.commit(1).await;
    let event = log.events().await.remove(0);
    let client = async_nats::connect(nats.url()).await.unwrap();
    let publisher = EventPublisher::new(client, "ONBEHALF_EVENTS", Duration::from_secs(20));
    let settings = StreamSettings {
        duplicate_window: Duration::from_secs(1),
        ..StreamSettings::builtin()
    };
    publisher.ensure_stream(&settings).await.unwrap();

    let first = publisher.publish(&event).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let late = publisher.publish(&event).await.unwrap();

    assert_eq!(
        first,
        PublishOutcome {
            sequence: 1,
            duplicate: false
        }
    );
    assert_eq!(
        late,
        PublishOutcome {
            sequence: 2,
            duplicate: false
        }
    );
    let positions: Vec<String> = stream_messages(&nats, "ONBEHALF_EVENTS")
        .await
        .iter()
        .map(|m| header(m, POSITION_HEADER))
        .collect();
    assert_eq!(positions, ["1", "1"]);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn the_stream_is_created_from_the_built_in_settings_and_follows_an_override_file() {
    let Some((db, nats)) = services().await else {
        return;
    };
    let mut relay = relay::spawn(config(&db, &nats)).await.unwrap();
    wait_caught_up(&mut relay, 0).await;
    relay.shutdown().await.unwrap();
    let js = jetstream(&nats).await;
    let created = js
        .get_stream("ONBEHALF_EVENTS")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .config;
    let builtin = StreamSettings::builtin().to_config();
    assert_eq!(created.subjects, ["onbehalf.v1.>"]);
    assert_eq!(created.retention, stream::RetentionPolicy::Limits);
    assert_eq!(created.storage, stream::StorageType::File);
    assert_eq!(created.num_replicas, 1);
    assert_eq!(created.duplicate_window, Duration::from_secs(120));
    assert_eq!(created.max_age, Duration::ZERO);
    assert_eq!(
        (created.max_messages, created.max_bytes, created.discard),
        (builtin.max_messages, builtin.max_bytes, builtin.discard)
    );

    let dir = TempDataDir::new();
    let file = dir.path().join("stream.toml");
    std::fs::write(&file, "duplicate_window = \"30s\"\nmax_age = \"1h\"\n").unwrap();
    let mut overridden = config(&db, &nats);
    overridden.stream = StreamSettings::from_file(&file).unwrap();
    let mut relay = relay::spawn(overridden).await.unwrap();
    wait_caught_up(&mut relay, 0).await;
    relay.shutdown().await.unwrap();
    let updated = js
        .get_stream("ONBEHALF_EVENTS")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .config;

    assert_eq!(updated.duplicate_window, Duration::from_secs(30));
    assert_eq!(updated.max_age, Duration::from_secs(3_600));
    assert_eq!(updated.subjects, ["onbehalf.v1.>"]);
    assert_eq!(updated.retention, stream::RetentionPolicy::Limits);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_stream_fed_from_another_log_stops_the_relay_instead_of_mixing_logs() {
    let Some((db, nats)) = services().await else {
        return;
    };
    let mut log = Log::open(&db).await;
    log.commit(2).await;
    let mut relay = relay::spawn(config(&db, &nats)).await.unwrap();
    wait_caught_up(&mut relay, 2).await;
    relay.shutdown().await.unwrap();

    let Some(other_db) = postgres_test_database().await else {
        return;
    };
    let mut other_log = Log::open(&other_db).await;
    other_log.commit(3).await;
    let mut misplaced = relay::spawn(config(&other_db, &nats)).await.unwrap();
    wait(&mut misplaced, "stopped", |s| s.role == Role::Stopped).await;

    match misplaced.shutdown().await {
        Err(RelayError::ForeignStream { stream, sequence }) => {
            assert_eq!((stream.as_str(), sequence), ("ONBEHALF_EVENTS", 2));
        }
        other => panic!("expected a foreign stream error, got {other:?}"),
    }
    assert_eq!(stream_messages(&nats, "ONBEHALF_EVENTS").await.len(), 2);
    other_db.drop_database().await.unwrap();
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn the_relay_subcommand_publishes_the_log_with_settings_from_flags_environment_and_file() {
    let Some((db, nats)) = services().await else {
        return;
    };
    let mut log = Log::open(&db).await;
    log.commit(3).await;
    let dir = TempDataDir::new();
    let file = dir.path().join("stream.json");
    std::fs::write(&file, r#"{ "duplicate_window": "45s" }"#).unwrap();

    let mut child = std::process::Command::new(BIN)
        .args(["relay", "--name", "cli", "--nats-stream-config"])
        .arg(&file)
        .env("DATABASE_URL", &db.url)
        .env("ONBEHALF_NATS_URL", nats.url())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut published = 0;
    while Instant::now() < deadline {
        if let Ok(stream) = jetstream(&nats).await.get_stream("ONBEHALF_EVENTS").await {
            published = stream.cached_info().state.messages;
            if published == 3 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();

    assert_eq!(published, 3);
    assert_stream_holds_the_log(&nats, &log).await;
    let config = jetstream(&nats)
        .await
        .get_stream("ONBEHALF_EVENTS")
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    assert_eq!(config.duplicate_window, Duration::from_secs(45));
    let deadline = Instant::now() + PATIENCE;
    let mut checkpoint = 0;
    while Instant::now() < deadline && checkpoint != 3 {
        checkpoint = saved_checkpoint(&db, "cli").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(checkpoint, 3);
    db.drop_database().await.unwrap();
}

/// A loopback TCP proxy in front of PostgreSQL that can cut the network between a relay and the
/// server: on [`Partition::cut`] it closes every upstream connection (the server sees its peer
/// go away and ends the session) while the relay's side stays open and silent, as a partition
/// looks from the relay; connections made after the cut are accepted and never answered.
struct Partition {
    url: String,
    cut: tokio::sync::watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Partition {
    async fn start(db: &TestDatabase) -> Partition {
        let config: tokio_postgres::Config = db.url.parse().unwrap();
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = listener.local_addr().unwrap();
        let url = format!(
            "postgres://{}@{listen}/{}",
            config.get_user().unwrap_or("postgres"),
            db.name()
        );
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let accept = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut cut_rx = cut_rx.clone();
                connections.spawn(async move {
                    if !*cut_rx.borrow() {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {
                                    return;
                                }
                                _ = cut_rx.wait_for(|cut| *cut) => drop(outbound),
                            }
                        }
                    }
                    // Keep the relay's end open, answering nothing, until the proxy is dropped.
                    std::future::pending::<()>().await;
                    drop(inbound);
                });
            }
        });
        Partition { url, cut, accept }
    }

    fn cut(&self) {
        let _ = self.cut.send(true);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[tokio::test]
async fn a_holder_cut_off_from_postgresql_stops_publishing_and_the_successor_loses_and_duplicates_nothing(
) {
    let Some((db, nats)) = services().await else {
        return;
    };
    let mut log = Log::open(&db).await;
    log.commit(3).await;
    // The first relay reads the log directly but holds its lease through the proxy, so that it
    // keeps reading and publishing after the cut, the worst case for the lease.
    let partition = Partition::start(&db).await;
    let mut cut_off_config = config(&db, &nats);
    cut_off_config.database_url = partition.url.clone();
    let store = PostgresStore::connect(&db.url).await.unwrap();
    let mut cut_off = relay::spawn_on(store, cut_off_config).unwrap();
    wait_caught_up(&mut cut_off, 3).await;
    let mut successor = relay::spawn(config(&db, &nats)).await.unwrap();
    wait(&mut successor, "standby", |s| s.role == Role::Standby).await;

    partition.cut();
    log.commit(3).await;
    wait(&mut cut_off, "no longer active", |s| s.role != Role::Active).await;
    let took_over = wait_caught_up(&mut successor, 6).await;
    assert_eq!(took_over.leases_taken, 1);
    log.commit(3).await;
    let after = wait_caught_up(&mut successor, 9).await;

    let stopped = cut_off.status();
    assert_ne!(stopped.role, Role::Active);
    assert_eq!(stopped.leases_taken, 1);
    assert_eq!(stopped.published + after.published, 9);
    assert_stream_holds_the_log(&nats, &log).await;
    assert_eq!(saved_checkpoint(&db, "default").await, 9);

    cut_off.abort();
    successor.shutdown().await.unwrap();
    drop(partition);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_commit_wakes_an_idle_relay_long_before_its_poll_interval() {
    let Some((db, nats)) = services().await else {
        return;
    };
    let mut log = Log::open(&db).await;
    log.commit(2).await;

    // A poll interval the test never waits out: only the commit's notification can wake the
    // relay in time.
    let mut config = config(&db, &nats);
    config.poll_interval = Duration::from_secs(600);
    let mut relay = relay::spawn(config).await.unwrap();
    wait_caught_up(&mut relay, 2).await;
    // The relay went idle after its first read; let it settle into its wait.
    tokio::time::sleep(Duration::from_millis(200)).await;

    log.commit(3).await;
    let woken = relay
        .wait_for(Duration::from_secs(10), |s| {
            s.caught_up && s.checkpoint == 5
        })
        .await;
    assert!(
        woken.is_ok(),
        "the relay slept through the commit: {woken:?}"
    );
    assert_eq!(relay.status().published, 5);
    assert_stream_holds_the_log(&nats, &log).await;

    relay.shutdown().await.unwrap();
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_creating_the_stream_at_the_same_moment_all_find_it_ready() {
    // Each round, on a broker of its own, four relays create the missing stream at once as
    // starting relays do: an update that finds none, then a create, which all but one lose to
    // another's.
    for round in 0..20 {
        let Some(nats) = NatsTestServer::start().await else {
            return;
        };
        let mut publishers = Vec::new();
        for _ in 0..4 {
            let client = async_nats::connect(nats.url()).await.unwrap();
            // What is checked is who wins the race, not how fast: a broker just started on a
            // busy machine can take seconds to answer its first JetStream requests.
            publishers.push(EventPublisher::new(
                client,
                "ONBEHALF_EVENTS",
                Duration::from_secs(20),
            ));
        }
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(publishers.len()));
        let tasks: Vec<_> = publishers
            .into_iter()
            .map(|publisher| {
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    publisher
                        .ensure_stream(&StreamSettings::builtin())
                        .await
                        .map(|info| info.config.name)
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        let mut ready = Vec::new();
        for task in tasks {
            ready.push(task.await.unwrap());
        }
        assert_eq!(
            ready,
            vec![Ok("ONBEHALF_EVENTS".to_owned()); 4],
            "round {round}"
        );
    }
}
