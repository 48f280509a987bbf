//! The projection worker, the PostgreSQL read models and `onbehalf projections`, against a real
//! PostgreSQL log and a private `nats-server`.
//!
//! Each test runs the walkthrough against an in-process server on its own database, publishes
//! the log to its own broker the way the relay does (or with deliberate duplicates and gaps),
//! and compares what the worker stored with a fold of the log made here.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use indicatif::ProgressBar;
use onbehalf::cli::projections;
use onbehalf::project::{self, ProjectConfig, ProjectHandle, ProjectStatus};
use onbehalf::readmodel_pg::{ReadModelStore, PROJECTION};
use onbehalf::relay::{subject_for, EventPublisher, RelayedEvent, StreamSettings};
use onbehalf::server::{self, ReadModelSource, RunningServer, ServerConfig};
use onbehalf::store::postgres::PostgresStore;
use onbehalf::store::EventReader;
use onbehalf::testing::{postgres_test_database, NatsTestServer, TempDataDir, TestDatabase};
use onbehalf_events::StoredEvent;
use onbehalf_projections::{InvitationLinks, ReadModels};
use onbehalf_proto::v1 as pb;
use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(30);
const ACCEPT_URL: &str = "http://localhost:8080/invitations/accept";

struct Setup {
    db: TestDatabase,
    nats: NatsTestServer,
    dir: TempDataDir,
    server: RunningServer,
    log: PostgresStore,
    links: Arc<dyn InvitationLinks>,
}

/// A database, a broker, a server on the database, and the walkthrough's events in the log.
async fn setup() -> Option<Setup> {
    let db = postgres_test_database().await?;
    let nats = NatsTestServer::start().await?;
    let dir = TempDataDir::new();
    let mut config = ServerConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.database_url = Some(db.url.clone());
    let server = server::spawn(config).await.unwrap();
    onbehalf::demo::walkthrough(&format!("http://{}", server.addr), dir.path())
        .await
        .unwrap();
    let log = PostgresStore::connect(&db.url).await.unwrap();
    let links = project::invitation_links(dir.path(), None, ACCEPT_URL).unwrap();
    Some(Setup {
        db,
        nats,
        dir,
        server,
        log,
        links,
    })
}

impl Setup {
    async fn events(&self) -> Vec<StoredEvent> {
        self.log.read_all(0, 100_000).await.unwrap()
    }

    async fn publisher(&self) -> EventPublisher {
        let client = async_nats::connect(self.nats.url()).await.unwrap();
        let publisher = EventPublisher::new(
            client,
            onbehalf_events::subjects::EVENTS_STREAM,
            Duration::from_secs(5),
        );
        publisher
            .ensure_stream(&StreamSettings::builtin())
            .await
            .unwrap();
        publisher
    }

    /// Publishes events as the relay does: the event id as `Nats-Msg-Id`.
    async fn publish(&self, events: &[StoredEvent]) {
        let publisher = self.publisher().await;
        for event in events {
            publisher.publish(event).await.unwrap();
        }
    }

    /// Publishes an event again under a fresh message id, which the broker cannot drop.
    async fn publish_duplicate(&self, event: &StoredEvent) {
        let js = jetstream::new(async_nats::connect(self.nats.url()).await.unwrap());
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", uuid::Uuid::new_v4().to_string().as_str());
        js.publish_with_headers(
            subject_for(event),
            headers,
            RelayedEvent::from(event).encode().unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }

    async fn worker(&self, batch_size: usize) -> ProjectHandle {
        let mut config =
            ProjectConfig::new(self.db.url.clone(), self.nats.url(), self.links.clone());
        config.batch_size = batch_size;
        project::spawn(config).await.unwrap()
    }

    /// The read models folded here from the whole log.
    async fn fold(&self) -> ReadModels {
        let mut models = ReadModels::new(self.links.clone());
        for event in self.events().await {
            models.apply(&event).unwrap();
        }
        models
    }

    /// The read models as the worker stored them.
    async fn stored(&self) -> ReadModels {
        let store = ReadModelStore::connect(&self.db.url).await.unwrap();
        store.load(self.links.clone(), true).await.unwrap().0
    }
}

/// Everything the read models hold, as one comparable value.
fn snapshot(m: &ReadModels) -> Value {
    let keys = m.documents();
    json!({
        "position": m.position(),
        "last_invoice_number": m.last_invoice_number(),
        "accounts": keys.accounts.iter().map(|id| serde_json::to_value(m.account_document(*id)).unwrap()).collect::<Vec<_>>(),
        "users": keys.users.iter().map(|id| serde_json::to_value(m.accounts.user(*id)).unwrap()).collect::<Vec<_>>(),
        "invitation_emails": keys.invitation_emails.iter().map(|k| json!([k, m.invitations_to(k)])).collect::<Vec<_>>(),
        "products": m.catalog.products().iter().map(|p| serde_json::to_value(p).unwrap()).collect::<Vec<_>>(),
        "notifications": serde_json::to_value(&keys.notifications).unwrap(),
        "audit": serde_json::to_value(&keys.audit).unwrap(),
    })
}

async fn caught_up(worker: &mut ProjectHandle, position: u64) -> ProjectStatus {
    match worker.wait_for(PATIENCE, |s| s.position == position).await {
        Ok(status) => status,
        Err(last) => panic!("worker never reached position {position}; last status {last:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_stores_what_a_fold_of_the_log_holds_with_its_checkpoint_at_the_head() {
    let Some(s) = setup().await else { return };
    // A billing contact of ABC Company, kept in the account's document.
    let owner = s
        .fold()
        .await
        .accounts
        .user_by_email("admin@abc.co.tz")
        .unwrap()
        .user_id;
    let abc = s.fold().await.accounts.accessible_accounts(owner)[0].account_id;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", s.server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    pb::account_service_client::AccountServiceClient::with_interceptor(
        channel,
        onbehalf::cli::Bearer::new(&user_token(&s.dir, owner)).unwrap(),
    )
    .add_contact(pb::AddContactRequest {
        account_id: abc.to_string(),
        name: "ABC Accounts".into(),
        email: "accounts@abc.co.tz".into(),
        categories: vec![pb::ContactCategory::ContactInvoice as i32],
        request_id: String::new(),
    })
    .await
    .unwrap();
    let events = s.events().await;
    let head = events.len() as u64;
    assert!(
        head > 20,
        "the walkthrough writes a real log, got {head} events"
    );
    s.publish(&events).await;

    let mut worker = s.worker(7).await;
    let status = caught_up(&mut worker, head).await;
    assert_eq!((status.skipped, status.filled), (0, 0));
    assert!(
        status.batches >= head.div_ceil(7),
        "batches hold at most 7 events: {status:?}"
    );

    let store = ReadModelStore::connect(&s.db.url).await.unwrap();
    let serving = store.serving().await.unwrap();
    assert_eq!((serving.generation, serving.position), (1, head));
    let fold = s.fold().await;
    assert_eq!(serving.last_invoice_number, fold.last_invoice_number());
    let stored = s.stored().await;
    assert_eq!(
        stored
            .notifications
            .contacts(abc)
            .iter()
            .map(|c| c.name.to_string())
            .collect::<Vec<_>>(),
        ["ABC Accounts"]
    );
    assert_eq!(snapshot(&stored), snapshot(&fold));
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_and_duplicate_events_are_skipped_by_position() {
    let Some(s) = setup().await else { return };
    let events = s.events().await;
    let head = events.len() as u64;
    s.publish(&events).await;
    let mut worker = s.worker(500).await;
    caught_up(&mut worker, head).await;
    let before = snapshot(&s.stored().await);

    // The same event ids again are dropped by the broker; fresh message ids get through and
    // reach the worker as duplicates.
    s.publish(&events[..3]).await;
    s.publish_duplicate(&events[2]).await;
    s.publish_duplicate(&events[events.len() - 1]).await;
    let status = match worker.wait_for(PATIENCE, |s| s.skipped == 2).await {
        Ok(status) => status,
        Err(last) => panic!("duplicates never reached the worker; last status {last:?}"),
    };
    assert_eq!(status.position, head);
    assert_eq!(snapshot(&s.stored().await), before);
    assert_eq!(before, snapshot(&s.fold().await));
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_the_stream_is_filled_from_the_log_never_skipped() {
    let Some(s) = setup().await else { return };
    let events = s.events().await;
    let head = events.len() as u64;
    // Positions 11 to head - 1 never reach the broker.
    s.publish(&events[..10]).await;
    s.publish(&events[events.len() - 1..]).await;

    let mut worker = s.worker(500).await;
    let status = caught_up(&mut worker, head).await;
    assert_eq!(status.filled, head - 11);
    assert_eq!(snapshot(&s.stored().await), snapshot(&s.fold().await));
    worker.shutdown().await.unwrap();
}

/// A token of the test server's key for a user.
fn user_token(dir: &TempDataDir, user_id: uuid::Uuid) -> String {
    let key = onbehalf::auth::find_signing_key(&onbehalf::auth::keys_dir(dir.path()))
        .unwrap()
        .unwrap();
    let signer = onbehalf::auth::Signer::load(
        &key,
        onbehalf::auth::DEFAULT_ISSUER,
        onbehalf::auth::DEFAULT_ISSUER,
    )
    .unwrap();
    signer
        .sign(
            &user_id.to_string(),
            None,
            chrono::Utc::now(),
            chrono::Duration::hours(1),
        )
        .unwrap()
}

/// A service token of the test server's key with `scopes`.
fn service_token(dir: &TempDataDir, scopes: &str) -> String {
    let key = onbehalf::auth::find_signing_key(&onbehalf::auth::keys_dir(dir.path()))
        .unwrap()
        .unwrap();
    let signer = onbehalf::auth::Signer::load(
        &key,
        onbehalf::auth::DEFAULT_ISSUER,
        onbehalf::auth::DEFAULT_ISSUER,
    )
    .unwrap();
    signer
        .sign(
            "service:test",
            Some(scopes),
            chrono::Utc::now(),
            chrono::Duration::hours(1),
        )
        .unwrap()
}

async fn replica(s: &Setup) -> RunningServer {
    let mut config = ServerConfig::new(s.dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.database_url = Some(s.db.url.clone());
    config.read_models = ReadModelSource::Postgres;
    server::spawn(config).await.unwrap()
}

type Notifications = pb::notification_service_client::NotificationServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        onbehalf::cli::Bearer,
    >,
>;

async fn notifications_client(addr: std::net::SocketAddr, token: &str) -> Notifications {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    pb::notification_service_client::NotificationServiceClient::with_interceptor(
        channel,
        onbehalf::cli::Bearer::new(token).unwrap(),
    )
}

async fn designer_notices(client: &mut Notifications, min_position: u64) -> Vec<String> {
    client
        .list_notifications(pb::ListNotificationsRequest {
            recipient_email: onbehalf::demo::DESIGNER.into(),
            min_position,
            page_size: 500,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .notifications
        .into_iter()
        .map(|n| n.notification_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_swaps_in_a_fresh_generation_while_reads_keep_answering() {
    let Some(s) = setup().await else { return };
    let events = s.events().await;
    let head = events.len() as u64;
    s.publish(&events).await;
    let mut worker = s.worker(500).await;
    caught_up(&mut worker, head).await;

    let fold = s.fold().await;
    let expected: Vec<String> = fold
        .notifications
        .for_recipient(onbehalf::demo::DESIGNER)
        .iter()
        .map(|n| n.notification_id.to_string())
        .collect();
    assert_eq!(
        expected.len(),
        8,
        "an invitation and an acceptance per client account"
    );
    let replica = replica(&s).await;
    let token = service_token(&s.dir, "notifications:read");
    let mut client = notifications_client(replica.addr, &token).await;
    assert_eq!(designer_notices(&mut client, head).await, expected);

    // Reads go on during the whole rebuild and must see the same notifications every time.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let mut client = client.clone();
        let expected = expected.clone();
        tokio::spawn(async move {
            let mut reads = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                assert_eq!(designer_notices(&mut client, head).await, expected);
                reads += 1;
            }
            reads
        })
    };
    let report = projections::rebuild(&s.db.url, s.links.clone(), &ProgressBar::hidden())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let reads = reader.await.unwrap();
    assert!(reads > 0, "reads ran during the rebuild");
    assert_eq!((report.generation, report.position), (2, head));

    let mut out = Vec::new();
    projections::status(&s.db.url, &mut out).await.unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!(
            "PROJECTION   GENERATION STATE        POSITION       HEAD        LAG\n\
             read-models           2 serving    {head:>10} {head:>10}          0\n"
        )
    );
    assert_eq!(snapshot(&s.stored().await), snapshot(&fold));

    // The worker notices the swap on its next write and goes on in the new generation.
    let more = register_one(&s).await;
    s.publish(&s.log.read_all(head, 100).await.unwrap()).await;
    let status = caught_up(&mut worker, more).await;
    assert_eq!((status.generation, status.reloads), (2, 1));
    assert_eq!(snapshot(&s.stored().await), snapshot(&s.fold().await));
    replica.shutdown().await.unwrap();
    worker.shutdown().await.unwrap();
}

/// Registers one more user through the test server; returns the position of its event.
async fn register_one(s: &Setup) -> u64 {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", s.server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let token = service_token(&s.dir, "users:register");
    let mut users = pb::user_service_client::UserServiceClient::with_interceptor(
        channel,
        onbehalf::cli::Bearer::new(&token).unwrap(),
    );
    users
        .register_user(pb::RegisterUserRequest {
            email: "ops@greenfarm.co.tz".into(),
            display_name: "Green Farm Operations".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .position
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_position_the_head_and_the_lag() {
    let Some(s) = setup().await else { return };
    let events = s.events().await;
    let head = events.len() as u64;
    s.publish(&events[..head as usize - 1]).await;
    let mut worker = s.worker(500).await;
    caught_up(&mut worker, head - 1).await;

    let mut out = Vec::new();
    projections::status(&s.db.url, &mut out).await.unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!(
            "PROJECTION   GENERATION STATE        POSITION       HEAD        LAG\n\
             {PROJECTION:<12}          1 serving    {:>10} {head:>10}          1\n",
            head - 1
        )
    );
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_is_carried_into_stored_history_by_a_rebuild() {
    let Some(s) = setup().await else { return };
    // Green Farm Ltd invites a new user, who is then erased.
    let staff = "ops@greenfarm.co.tz";
    register_one(&s).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", s.server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let before = s.fold().await;
    let green_farm_owner = before
        .accounts
        .user_by_email("info@greenfarm.co.tz")
        .unwrap()
        .user_id;
    let green_farm = before.accounts.accessible_accounts(green_farm_owner)[0].account_id;
    let owner_token = user_token(&s.dir, green_farm_owner);
    pb::invitation_service_client::InvitationServiceClient::with_interceptor(
        channel.clone(),
        onbehalf::cli::Bearer::new(&owner_token).unwrap(),
    )
    .invite_user(pb::InviteUserRequest {
        account_id: green_farm.to_string(),
        email: staff.into(),
        permissions: vec![],
        full_access: true,
        request_id: String::new(),
    })
    .await
    .unwrap();
    let before = s.fold().await;
    let owner_id = before.accounts.user_by_email(staff).unwrap().user_id;
    let owner = staff;
    assert_eq!(before.notifications.for_recipient(owner).len(), 1);
    let token = service_token(&s.dir, "users:erase");
    let mut users = pb::user_service_client::UserServiceClient::with_interceptor(
        channel,
        onbehalf::cli::Bearer::new(&token).unwrap(),
    );
    let erased = users
        .erase_user(pb::EraseUserRequest {
            user_id: owner_id.to_string(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();

    let events = s.events().await;
    let head = events.len() as u64;
    assert_eq!(erased.position, head);
    s.publish(&events).await;
    let mut worker = s.worker(500).await;
    let status = match worker
        .wait_for(PATIENCE, |s| s.rebuilds == 1 && s.position == head)
        .await
    {
        Ok(status) => status,
        Err(last) => panic!("the erasure never led to a rebuild; last status {last:?}"),
    };
    assert_eq!(status.generation, 2);

    let stored = s.stored().await;
    assert!(stored.notifications.for_recipient(owner).is_empty());
    assert_eq!(snapshot(&stored), snapshot(&s.fold().await));
    worker.shutdown().await.unwrap();
}
