//! The real `onbehalf project` process killed with SIGKILL while it folds batches, then started
//! again: the read models it leaves must equal a fold of the log, with nothing lost and nothing
//! applied twice.
//!
//! The test runs its own `nats-server` and database; the log is the walkthrough plus a thousand
//! registrations, published to the stream the way the relay does.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use onbehalf::project;
use onbehalf::readmodel_pg::ReadModelStore;
use onbehalf::relay::{EventPublisher, StreamSettings};
use onbehalf::server::{self, ServerConfig};
use onbehalf::store::postgres::PostgresStore;
use onbehalf::store::EventReader;
use onbehalf::testing::{postgres_test_database, NatsTestServer, TempDataDir};
use onbehalf_projections::{InvitationLinks, ReadModels};
use onbehalf_proto::v1 as pb;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_onbehalf");
const ACCEPT_URL: &str = "http://localhost:8080/invitations/accept";
const REGISTRATIONS: usize = 1000;

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_worker(db_url: &str, nats_url: &str, dir: &TempDataDir) -> Worker {
    let child = Command::new(BIN)
        .args(["project", "--batch-size", "10", "--database-url", db_url])
        .args(["--nats-url", nats_url, "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the binary starts");
    Worker(child)
}

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

async fn register_many(addr: std::net::SocketAddr, dir: &TempDataDir) {
    let key = onbehalf::auth::find_signing_key(&onbehalf::auth::keys_dir(dir.path()))
        .unwrap()
        .unwrap();
    let signer = onbehalf::auth::Signer::load(
        &key,
        onbehalf::auth::DEFAULT_ISSUER,
        onbehalf::auth::DEFAULT_ISSUER,
    )
    .unwrap();
    let token = signer
        .sign(
            "service:test",
            Some("users:register"),
            chrono::Utc::now(),
            chrono::Duration::hours(1),
        )
        .unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let users = pb::user_service_client::UserServiceClient::with_interceptor(
        channel,
        onbehalf::cli::Bearer::new(&token).unwrap(),
    );
    let mut tasks = Vec::new();
    for lane in 0..8 {
        let mut users = users.clone();
        tasks.push(tokio::spawn(async move {
            for i in (lane..REGISTRATIONS).step_by(8) {
                users
                    .register_user(pb::RegisterUserRequest {
                        email: format!("staff{i}@starlogistics.co.tz"),
                        display_name: format!("Star Logistics Staff {i}"),
                        request_id: String::new(),
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_resumes_with_no_lost_and_no_duplicated_effect() {
    let Some(db) = postgres_test_database().await else {
        return;
    };
    let Some(nats) = NatsTestServer::start().await else {
        return;
    };
    let dir = TempDataDir::new();
    let mut config = ServerConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.database_url = Some(db.url.clone());
    let server = server::spawn(config).await.unwrap();
    onbehalf::demo::walkthrough(&format!("http://{}", server.addr), dir.path())
        .await
        .unwrap();
    register_many(server.addr, &dir).await;
    server.shutdown().await.unwrap();

    let log = PostgresStore::connect(&db.url).await.unwrap();
    let events = log.read_all(0, 100_000).await.unwrap();
    let head = events.len() as u64;
    assert!(head > REGISTRATIONS as u64);
    let publisher = EventPublisher::new(
        async_nats::connect(nats.url()).await.unwrap(),
        onbehalf_events::subjects::EVENTS_STREAM,
        Duration::from_secs(5),
    );
    publisher
        .ensure_stream(&StreamSettings::builtin())
        .await
        .unwrap();
    for event in &events {
        publisher.publish(event).await.unwrap();
    }

    let read_models = ReadModelStore::connect(&db.url).await.unwrap();
    let mut worker = start_worker(&db.url, &nats.url(), &dir);
    // Kill it once it has committed a few batches, while many remain.
    let deadline = Instant::now() + Duration::from_secs(60);
    let killed_at = loop {
        let position = read_models.serving().await.unwrap().position;
        if position >= 50 {
            worker.0.kill().unwrap();
            worker.0.wait().unwrap();
            break position;
        }
        assert!(Instant::now() < deadline, "the worker made no progress");
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let after_kill = read_models.serving().await.unwrap().position;
    assert!(
        after_kill < head,
        "the worker was killed before the end of the log ({after_kill} of {head})"
    );
    assert!(after_kill >= killed_at);
    println!("killed at position {after_kill} of {head}");
    drop(worker);

    let restarted = Instant::now();
    let worker = start_worker(&db.url, &nats.url(), &dir);
    let deadline = restarted + Duration::from_secs(60);
    while read_models.serving().await.unwrap().position < head {
        assert!(
            Instant::now() < deadline,
            "the restarted worker never caught up"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "the restarted worker folded {} events in batches of 10 in {} ms, start included",
        head - after_kill,
        restarted.elapsed().as_millis()
    );
    drop(worker);

    let links: Arc<dyn InvitationLinks> =
        project::invitation_links(dir.path(), None, ACCEPT_URL).unwrap();
    let mut fold = ReadModels::new(links.clone());
    for event in &events {
        fold.apply(event).unwrap();
    }
    let stored = read_models.load(links, true).await.unwrap().0;
    assert_eq!(stored.position(), head);
    assert_eq!(
        stored.audit.all().len() as u64,
        head,
        "one audit entry per event, once"
    );
    assert_eq!(snapshot(&stored), snapshot(&fold));
}
