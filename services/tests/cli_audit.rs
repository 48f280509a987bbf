//! `onbehalf audit export` and `onbehalf audit verify` as an operator runs them, against a real
//! server on SQLite and on PostgreSQL: exports exact to the byte, a verification of the untouched
//! log, and a non-zero exit naming the position and kind once a row was changed by hand.

use std::path::Path;
use std::process::Command;

use chrono::{DateTime, Utc};
use onbehalf::server::{self, ServerConfig};
use onbehalf::store::sqlite::DATABASE_FILE;
use onbehalf::store::{AppendBatch, EventStore, NewEvent};
use onbehalf::testing::{postgres_test_database, TempDataDir, TestDatabase};
use onbehalf_events::values::{Email, Name};
use onbehalf_events::{
    account_stream, stream_type, user_stream, AccountEvent, Actor, Metadata, Permission, UserEvent,
};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_onbehalf");

const DESIGNER: Uuid = Uuid::from_u128(0x6a1e_9f0c_7d2b_4e3a_8c4d_1b2a_3c4d_5e6f);
const OWNER: Uuid = Uuid::from_u128(0x1c2d_3e4f_5a6b_4c7d_8e9f_0a1b_2c3d_4e5f);
const ABC: Uuid = Uuid::from_u128(0x0b6f_3c4e_2f0a_4c1e_9a57_5f1d_2c3b_4a59);

fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("a valid test time")
        .with_timezone(&Utc)
}

fn event_id(n: u128) -> Uuid {
    Uuid::from_u128(0x0190_a0b0_c0d0_7e00_8f00_0000_0000_0000 | n)
}

/// Appends one event with a fixed id and time.
async fn append(
    store: &dyn EventStore,
    stream_id: String,
    stream: &str,
    version: u64,
    when: &str,
    (n, event_type, payload): (u128, &str, serde_json::Value),
    metadata: Metadata,
) {
    let mut event = NewEvent::new(event_type, "1", payload, metadata);
    event.event_id = event_id(n);
    store
        .append(AppendBatch {
            stream_id,
            stream_type: stream.to_owned(),
            expected_version: version,
            occurred_at: at(when),
            events: vec![event],
            reservations: Vec::new(),
            releases: Vec::new(),
            request: None,
        })
        .await
        .expect("the seed appends");
}

/// Four events: two registrations, ABC's creation by its owner, and the designer renaming ABC
/// through a front end that passed the end user's address.
async fn seed(store: &dyn EventStore) {
    let register = |user_id: Uuid, email: &str, name: &str| {
        serde_json::to_value(UserEvent::UserRegistered {
            user_id,
            email: Email::parse(email).unwrap(),
            display_name: Name::parse(name).unwrap(),
        })
        .unwrap()
    };
    let by = |actor: Actor, request_id: &str| {
        let mut metadata = Metadata::new(actor);
        metadata.request_id = Some(request_id.to_owned());
        metadata
    };
    let registrar = Actor::Service("signup".to_owned());
    append(
        store,
        user_stream(DESIGNER),
        stream_type::USER,
        0,
        "2025-03-03T09:00:00Z",
        (
            1,
            "UserRegistered",
            register(DESIGNER, "designer@yourcompany.com", "Web Designer"),
        ),
        by(registrar.clone(), "signup-1"),
    )
    .await;
    append(
        store,
        user_stream(OWNER),
        stream_type::USER,
        0,
        "2025-03-03T09:00:01Z",
        (
            2,
            "UserRegistered",
            register(OWNER, "admin@abc.co.tz", "Amina"),
        ),
        by(registrar, "signup-2"),
    )
    .await;
    let mut created = by(Actor::User(OWNER), "create-abc");
    created.on_behalf_of = Some(ABC);
    append(
        store,
        account_stream(ABC),
        stream_type::CLIENT_ACCOUNT,
        0,
        "2025-03-03T09:05:00Z",
        (
            3,
            "AccountCreated",
            serde_json::to_value(AccountEvent::AccountCreated {
                account_id: ABC,
                name: Name::parse("ABC Company").unwrap(),
                email: Email::parse("admin@abc.co.tz").unwrap(),
                owner_user_id: OWNER,
            })
            .unwrap(),
        ),
        created,
    )
    .await;
    let mut renamed = by(Actor::User(DESIGNER), "rename, \"abc\"");
    renamed.on_behalf_of = Some(ABC);
    renamed.permission = Some(Permission::Profile);
    renamed.client_address = Some("203.0.113.7".to_owned());
    append(
        store,
        account_stream(ABC),
        stream_type::CLIENT_ACCOUNT,
        1,
        "2025-03-03T10:30:00.123456Z",
        (
            4,
            "AccountProfileUpdated",
            serde_json::to_value(AccountEvent::AccountProfileUpdated {
                name: Name::parse("ABC Company Ltd").unwrap(),
                email: Email::parse("admin@abc.co.tz").unwrap(),
            })
            .unwrap(),
        ),
        renamed,
    )
    .await;
}

/// Runs the binary off the runtime's threads, so the in-process server keeps answering.
async fn run(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(BIN)
            .args(&args)
            .output()
            .expect("the binary runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("the binary's thread ends")
}

fn audit(subcommand: &str, server: &str, key_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["audit".into(), subcommand.into(), "--server".into()];
    args.push(server.to_owned());
    args.push("--key-dir".into());
    args.push(key_dir.display().to_string());
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args
}

const JSONL: &str = concat!(
    r#"{"position":1,"occurred_at":"2025-03-03T09:00:00.000000Z","actor_kind":"service","#,
    r#""actor_user_id":null,"actor_email":null,"actor_name":"signup","account_id":null,"#,
    r#""permission":null,"action":"UserRegistered","request_id":"signup-1","#,
    r#""client_address":null,"event_id":"0190a0b0-c0d0-7e00-8f00-000000000001"}"#,
    "\n",
    r#"{"position":2,"occurred_at":"2025-03-03T09:00:01.000000Z","actor_kind":"service","#,
    r#""actor_user_id":null,"actor_email":null,"actor_name":"signup","account_id":null,"#,
    r#""permission":null,"action":"UserRegistered","request_id":"signup-2","#,
    r#""client_address":null,"event_id":"0190a0b0-c0d0-7e00-8f00-000000000002"}"#,
    "\n",
    r#"{"position":3,"occurred_at":"2025-03-03T09:05:00.000000Z","actor_kind":"user","#,
    r#""actor_user_id":"1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f","actor_email":"admin@abc.co.tz","#,
    r#""actor_name":null,"account_id":"0b6f3c4e-2f0a-4c1e-9a57-5f1d2c3b4a59","#,
    r#""permission":null,"action":"AccountCreated","request_id":"create-abc","#,
    r#""client_address":null,"event_id":"0190a0b0-c0d0-7e00-8f00-000000000003"}"#,
    "\n",
    r#"{"position":4,"occurred_at":"2025-03-03T10:30:00.123456Z","actor_kind":"user","#,
    r#""actor_user_id":"6a1e9f0c-7d2b-4e3a-8c4d-1b2a3c4d5e6f","#,
    r#""actor_email":"designer@yourcompany.com","actor_name":null,"#,
    r#""account_id":"0b6f3c4e-2f0a-4c1e-9a57-5f1d2c3b4a59","permission":"PROFILE","#,
    r#""action":"AccountProfileUpdated","request_id":"rename, \"abc\"","#,
    r#""client_address":"203.0.113.7","event_id":"0190a0b0-c0d0-7e00-8f00-000000000004"}"#,
    "\n",
);

const CSV: &str = concat!(
    "position,occurred_at,actor_kind,actor_user_id,actor_email,actor_name,account_id,",
    "permission,action,request_id,client_address,event_id\r\n",
    "4,2025-03-03T10:30:00.123456Z,user,6a1e9f0c-7d2b-4e3a-8c4d-1b2a3c4d5e6f,",
    "designer@yourcompany.com,,0b6f3c4e-2f0a-4c1e-9a57-5f1d2c3b4a59,PROFILE,",
    "AccountProfileUpdated,\"rename, \"\"abc\"\"\",203.0.113.7,",
    "0190a0b0-c0d0-7e00-8f00-000000000004\r\n",
);

/// The whole operator session on one backend; `tamper` changes ABC's creation by hand.
async fn operator_exports_and_verifies_then_sees_the_tampering<F, Fut>(
    dir: &TempDataDir,
    database: Option<&TestDatabase>,
    tamper: F,
) where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut config = ServerConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.database_url = database.map(|db| db.url.clone());
    let store = server::open_store(&config).await.expect("the log opens");
    seed(&*store).await;
    let head_hash = store.read_all(3, 1).await.unwrap()[0].hash.clone().unwrap();
    let running = server::spawn(config).await.expect("the server starts");
    let url = format!("http://{}", running.addr);

    let (ok, stdout, stderr) = run(audit("verify", &url, dir.path(), &[])).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout, format!("intact: head 4, last hash {head_hash}\n"));

    let (ok, stdout, stderr) = run(audit("export", &url, dir.path(), &[])).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout, JSONL);

    let output = dir.path().join("designer-renames.csv");
    let output_arg = output.display().to_string();
    let (ok, stdout, stderr) = run(audit(
        "export",
        &url,
        dir.path(),
        &[
            "--format",
            "csv",
            "--actor",
            &DESIGNER.to_string(),
            "--account",
            &ABC.to_string(),
            "--action",
            "AccountProfileUpdated",
            "--from",
            "2025-03-03T10:00:00Z",
            "--to",
            "2025-03-03T11:00:00+00:00",
            "--output",
            &output_arg,
        ],
    ))
    .await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(std::fs::read_to_string(&output).unwrap(), CSV);
    assert!(!dir.path().join("designer-renames.csv.partial").exists());

    tamper().await;

    let (ok, stdout, stderr) = run(audit("verify", &url, dir.path(), &[])).await;
    assert!(!ok, "a broken chain exits non-zero");
    assert_eq!(stdout, "broken: position 3, altered\n");
    // A broken chain exits 3, a verification that could not run exits 1: scripts tell them apart.
    let exit = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            Command::new(BIN).args(&args).status().expect("runs").code()
        })
    };
    assert_eq!(
        exit(audit("verify", &url, dir.path(), &[])).await.unwrap(),
        Some(3)
    );
    assert_eq!(
        exit(audit("verify", "http://127.0.0.1:1", dir.path(), &[]))
            .await
            .unwrap(),
        Some(1)
    );
    // The same walk without a server, straight from the log.
    let mut offline = vec![
        "audit".to_owned(),
        "verify".to_owned(),
        "--offline".to_owned(),
        "--data-dir".to_owned(),
        dir.path().display().to_string(),
    ];
    if let Some(db) = database {
        offline.extend(["--database-url".to_owned(), db.url.clone()]);
    }
    let (ok, stdout, _) = run(offline).await;
    assert!(!ok);
    assert_eq!(stdout, "broken: position 3, altered\n");
    assert_eq!(
        stderr,
        "onbehalf: the log's hash chain is broken at position 3: altered\n"
    );

    let (ok, _, stderr) = run(audit("export", &url, dir.path(), &["--from", "yesterday"])).await;
    assert!(!ok);
    assert!(
        stderr.contains("`yesterday` is not an RFC 3339 time"),
        "{stderr}"
    );
    running.shutdown().await.expect("the server stops");
}

const TAMPER: &str = r#"UPDATE events SET payload = '{"account_id":"0b6f3c4e-2f0a-4c1e-9a57-5f1d2c3b4a59","name":"ABC Co","email":"admin@abc.co.tz","owner_user_id":"1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"}' WHERE position = 3"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_audit_export_and_verify_work_against_a_server_and_verify_fails_after_tampering() {
    let dir = TempDataDir::new();
    let file = dir.path().join(DATABASE_FILE);
    operator_exports_and_verifies_then_sees_the_tampering(&dir, None, || async move {
        let raw = rusqlite::Connection::open(&file).unwrap();
        assert_eq!(raw.execute(TAMPER, []).unwrap(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_audit_export_and_verify_work_against_a_server_and_verify_fails_after_tampering() {
    let Some(db) = postgres_test_database().await else {
        return;
    };
    let dir = TempDataDir::new();
    let client = db.client().await.unwrap();
    operator_exports_and_verifies_then_sees_the_tampering(&dir, Some(&db), || async {
        assert_eq!(client.execute(TAMPER, &[]).await.unwrap(), 1);
    })
    .await;
    drop(client);
    db.drop_database().await.unwrap();
}
