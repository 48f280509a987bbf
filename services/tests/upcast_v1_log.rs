//! A log written before `UserInvited` version 2 existed works exactly like one written after.
//!
//! Two logs of the same story are written straight into a store, one with the invitations as a
//! release before version 2 wrote them (hand-built version 1 payloads without `invited_by`), one
//! as the current release writes them. Everything that reads the log must make no difference
//! between them: the aggregate's decisions, the rebuilt read models, the audit trail and the
//! gRPC API of a server started on the old log. The stored rows stay as written.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use onbehalf::auth::{self, Signer};
use onbehalf::clock::ManualClock;
use onbehalf::domain::{AccountCommand, ClientAccount, Command, CommandContext};
use onbehalf::error::Error;
use onbehalf::executor::{Execution, Executor, EMAIL_SCOPE};
use onbehalf::read::ReadSide;
use onbehalf::server::{self, ServerConfig};
use onbehalf::store::postgres::PostgresStore;
use onbehalf::store::sqlite::SqliteStore;
use onbehalf::store::{verify_chain, AppendBatch, ChainReport, EventStore, NewEvent, Reservation};
use onbehalf::testing::{postgres_test_database, TempDataDir, TestDatabase};
use onbehalf::tokens::InvitationTokens;
use onbehalf_events::values::{Email, Name};
use onbehalf_events::{
    account_stream, stream_type, user_stream, AccountEvent, Actor, EventSchema, Metadata,
    Permission, PermissionSet, StoredEvent, UserEvent,
};
use onbehalf_projections::ReadModels;
use onbehalf_proto::v1 as pb;
use serde_json::{json, Value};
use tokio::sync::watch;
use tonic::transport::Channel;
use uuid::Uuid;

const OWNER: Uuid = Uuid::from_u128(0x0a01);
const DESIGNER: Uuid = Uuid::from_u128(0x0a02);
const BOOKKEEPER: Uuid = Uuid::from_u128(0x0a03);
const ABC: Uuid = Uuid::from_u128(0x0abc);
const DESIGNER_INVITATION: Uuid = Uuid::from_u128(0x1a01);
const BOOKKEEPER_INVITATION: Uuid = Uuid::from_u128(0x1a02);

/// Positions of the two invitations in the story.
const INVITED_POSITIONS: [u64; 2] = [5, 7];

/// When the story starts: Monday 3 March 2025, 09:00 UTC; each step is a minute later.
fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 3, 9, 0, 0).unwrap()
}

/// The moment every test asks about: after the story, before any invitation expires.
fn now() -> DateTime<Utc> {
    start() + chrono::Duration::hours(1)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Written {
    /// By a release before `UserInvited` version 2: invitations without `invited_by`.
    BeforeVersion2,
    /// By the current release.
    Current,
}

/// One step of the story: one command's event, ready for the store.
struct Step {
    stream_id: String,
    stream_type: &'static str,
    actor: Actor,
    event_type: &'static str,
    event_version: &'static str,
    payload: Value,
    reservation: Option<Reservation>,
}

fn user_step(user_id: Uuid, email: &str, display_name: &str) -> Step {
    let event = UserEvent::UserRegistered {
        user_id,
        email: Email::parse(email).unwrap(),
        display_name: Name::parse(display_name).unwrap(),
    };
    Step {
        stream_id: user_stream(user_id),
        stream_type: stream_type::USER,
        actor: Actor::Service("client-area".into()),
        event_type: event.event_type(),
        event_version: event.event_version(),
        payload: serde_json::to_value(&event).unwrap(),
        reservation: Some(Reservation {
            scope: EMAIL_SCOPE.into(),
            key: onbehalf_events::values::email_key(email),
        }),
    }
}

fn account_step(actor: Uuid, event: AccountEvent) -> Step {
    Step {
        stream_id: account_stream(ABC),
        stream_type: stream_type::CLIENT_ACCOUNT,
        actor: Actor::User(actor),
        event_type: event.event_type(),
        event_version: event.event_version(),
        payload: serde_json::to_value(&event).unwrap(),
        reservation: None,
    }
}

/// An invitation by the owner, in the shape of `written`.
fn invitation_step(
    written: Written,
    invitation_id: Uuid,
    email: &str,
    permissions: &[&str],
) -> Step {
    let expires_at = start() + chrono::Duration::days(7);
    match written {
        Written::Current => account_step(
            OWNER,
            AccountEvent::UserInvited {
                invitation_id,
                email: Email::parse(email).unwrap(),
                permissions: permissions.iter().map(|p| p.parse().unwrap()).collect(),
                expires_at,
                invited_by: OWNER,
            },
        ),
        // Exactly what a release before version 2 wrote: no `invited_by`, version "1".
        Written::BeforeVersion2 => Step {
            stream_id: account_stream(ABC),
            stream_type: stream_type::CLIENT_ACCOUNT,
            actor: Actor::User(OWNER),
            event_type: "UserInvited",
            event_version: "1",
            payload: json!({"UserInvited": {
                "invitation_id": invitation_id.to_string(),
                "email": email,
                "permissions": permissions,
                "expires_at": "2025-03-10T09:00:00Z",
            }}),
            reservation: None,
        },
    }
}

/// ABC Company's owner registers, creates the account, invites the designer with full access
/// (accepted) and the bookkeeper with INVOICES (still pending).
fn story(written: Written) -> Vec<Step> {
    vec![
        user_step(OWNER, "admin@abc.co.tz", "ABC Company"),
        user_step(DESIGNER, "designer@yourcompany.com", "Web Designer"),
        user_step(BOOKKEEPER, "accounts@abc.co.tz", "Bookkeeper"),
        account_step(
            OWNER,
            AccountEvent::AccountCreated {
                account_id: ABC,
                name: Name::parse("ABC Company").unwrap(),
                email: Email::parse("admin@abc.co.tz").unwrap(),
                owner_user_id: OWNER,
            },
        ),
        invitation_step(
            written,
            DESIGNER_INVITATION,
            "designer@yourcompany.com",
            &[
                "PROFILE",
                "CONTACTS",
                "PRODUCTS",
                "MANAGE_PRODUCTS",
                "PRODUCT_SSO",
                "DOMAINS",
                "MANAGE_DOMAINS",
                "INVOICES",
                "QUOTES",
                "TICKETS",
                "AFFILIATES",
                "EMAILS",
                "ORDERS",
            ],
        ),
        account_step(
            DESIGNER,
            AccountEvent::InvitationAccepted {
                invitation_id: DESIGNER_INVITATION,
                user_id: DESIGNER,
                permissions: PermissionSet::full(),
            },
        ),
        invitation_step(
            written,
            BOOKKEEPER_INVITATION,
            "accounts@abc.co.tz",
            &["INVOICES"],
        ),
    ]
}

/// Appends the story one command at a time through the store's own append, so positions and
/// hashes are the store's; event ids, times and correlation ids are fixed so that both logs
/// differ only in how their invitations were written.
async fn write(store: &dyn EventStore, written: Written) {
    let mut versions = std::collections::HashMap::new();
    for (i, step) in story(written).into_iter().enumerate() {
        let position = i as u64 + 1;
        let mut metadata = Metadata::new(step.actor.clone());
        metadata.correlation_id = Uuid::from_u128(0xc000 + position as u128);
        if step.stream_type == stream_type::CLIENT_ACCOUNT {
            metadata.on_behalf_of = Some(ABC);
        }
        let mut event = NewEvent::new(step.event_type, step.event_version, step.payload, metadata);
        event.event_id = Uuid::from_u128(0xe000 + position as u128);
        let version: &mut u64 = versions.entry(step.stream_id.clone()).or_default();
        let appended = store
            .append(AppendBatch {
                stream_id: step.stream_id,
                stream_type: step.stream_type.to_owned(),
                expected_version: *version,
                occurred_at: start() + chrono::Duration::minutes(i as i64),
                events: vec![event],
                reservations: step.reservation.into_iter().collect(),
                releases: Vec::new(),
                request: None,
            })
            .await
            .unwrap();
        *version += 1;
        assert_eq!(appended.last_position, position);
    }
}

/// Where a log lives; dropping it removes the data directory and the database.
struct Log {
    store: Arc<dyn EventStore>,
    dir: TempDataDir,
    database: Option<TestDatabase>,
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh log of the story written as `written`, or `None` when PostgreSQL is not reachable
/// (and not required).
async fn log(backend: Backend, written: Written) -> Option<Log> {
    let dir = TempDataDir::new();
    let (store, database): (Arc<dyn EventStore>, _) = match backend {
        Backend::Sqlite => (Arc::new(SqliteStore::open(dir.path()).await.unwrap()), None),
        Backend::Postgres => {
            let database = postgres_test_database().await?;
            let store = PostgresStore::connect(&database.url).await.unwrap();
            (Arc::new(store), Some(database))
        }
    };
    write(&*store, written).await;
    Some(Log {
        store,
        dir,
        database,
    })
}

async fn both_logs(backend: Backend) -> Option<(Log, Log)> {
    Some((
        log(backend, Written::BeforeVersion2).await?,
        log(backend, Written::Current).await?,
    ))
}

fn executor(store: &Arc<dyn EventStore>) -> Executor {
    let (appended, _) = watch::channel(0);
    Executor::new(store.clone(), Arc::new(ManualClock::new(now())), appended)
}

async fn run(executor: &Executor, actor: Uuid, body: AccountCommand) -> Result<u64, Error> {
    let execution = Execution::<ClientAccount> {
        stream_id: account_stream(ABC),
        command: Command {
            context: CommandContext {
                actor: Actor::User(actor),
                now: now(),
            },
            body,
        },
        metadata: Metadata::new(Actor::User(actor)),
        idempotency: None,
        reservations: Vec::new(),
    };
    executor
        .execute(execution, |_: &ClientAccount| Ok(()))
        .await
        .map(|done| done.position)
}

/// What an appended event says, without the ids and hash that differ between two logs.
fn content(event: &StoredEvent) -> (u64, u64, String, String, Value) {
    (
        event.position,
        event.version,
        event.event_type.clone(),
        event.event_version.clone(),
        event.payload.clone(),
    )
}

fn tokens() -> Arc<InvitationTokens> {
    Arc::new(InvitationTokens::new(vec![7; 32], "https://my.netpoa.test/accept").unwrap())
}

async fn rebuilt(store: &Arc<dyn EventStore>) -> ReadSide {
    let (_appended, rx) = watch::channel(0);
    ReadSide::start(store.clone(), ReadModels::new(tokens()), rx)
        .await
        .unwrap()
}

async fn read<T>(side: &ReadSide, read: impl FnOnce(&ReadModels) -> T) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    side.read(7, deadline, read).await.unwrap()
}

// ---------------------------------------------------------------------------------------------
// (a) decisions

async fn the_aggregate_decides_the_same_on_both_logs(backend: Backend) {
    let Some((v1, v2)) = both_logs(backend).await else {
        return;
    };
    let (old, new) = (executor(&v1.store), executor(&v2.store));

    let loaded_old = old
        .load::<ClientAccount>(&account_stream(ABC))
        .await
        .unwrap();
    let loaded_new = new
        .load::<ClientAccount>(&account_stream(ABC))
        .await
        .unwrap();
    assert_eq!(loaded_old.aggregate, loaded_new.aggregate);
    assert_eq!(
        (loaded_old.version, loaded_old.position),
        (loaded_new.version, loaded_new.position)
    );
    assert_eq!(
        loaded_old.aggregate.invitations[&BOOKKEEPER_INVITATION].invited_by,
        OWNER
    );

    // Inviting the bookkeeper again is refused on both: the v1 invitation is pending.
    let again = || AccountCommand::Invite {
        invitation_id: Uuid::from_u128(0x1a03),
        email: Email::parse("accounts@abc.co.tz").unwrap(),
        invitee_user_id: Some(BOOKKEEPER),
        permissions: [Permission::Invoices].into_iter().collect(),
        ttl: chrono::Duration::days(7),
    };
    let refused_old = run(&old, OWNER, again()).await.unwrap_err();
    let refused_new = run(&new, OWNER, again()).await.unwrap_err();
    assert_eq!(refused_old.to_string(), refused_new.to_string());
    assert_eq!(
        refused_old.to_string(),
        "a pending invitation for that email exists"
    );

    // The bookkeeper accepts the invitation the v1 log holds, and both logs record the same.
    let accept = || AccountCommand::AcceptInvitation {
        invitation_id: BOOKKEEPER_INVITATION,
        generation: 0,
    };
    assert_eq!(run(&old, BOOKKEEPER, accept()).await.unwrap(), 8);
    assert_eq!(run(&new, BOOKKEEPER, accept()).await.unwrap(), 8);
    let appended_old = v1.store.read_all(7, 10).await.unwrap();
    let appended_new = v2.store.read_all(7, 10).await.unwrap();
    assert_eq!(
        appended_old.iter().map(content).collect::<Vec<_>>(),
        appended_new.iter().map(content).collect::<Vec<_>>()
    );
    assert_eq!(
        appended_old.iter().map(content).collect::<Vec<_>>(),
        vec![(
            8,
            5,
            "InvitationAccepted".to_owned(),
            "1".to_owned(),
            json!({"InvitationAccepted": {
                "invitation_id": BOOKKEEPER_INVITATION,
                "user_id": BOOKKEEPER,
                "permissions": ["INVOICES"],
            }})
        )]
    );
}

#[tokio::test]
async fn a_client_account_loaded_from_a_v1_log_decides_as_on_the_v2_log_on_sqlite() {
    the_aggregate_decides_the_same_on_both_logs(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_client_account_loaded_from_a_v1_log_decides_as_on_the_v2_log_on_postgres() {
    the_aggregate_decides_the_same_on_both_logs(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------
// (b) read models

async fn the_read_models_are_the_same_on_both_logs(backend: Backend) {
    let Some((v1, v2)) = both_logs(backend).await else {
        return;
    };
    let (old, new) = (rebuilt(&v1.store).await, rebuilt(&v2.store).await);

    let views = |m: &ReadModels| {
        (
            m.accounts.invitations(ABC, now()),
            m.accounts.members(ABC),
            [OWNER, DESIGNER, BOOKKEEPER].map(|u| m.accounts.accessible_accounts(u)),
            m.notifications.all().to_vec(),
            m.audit.all().to_vec(),
            m.position(),
        )
    };
    let from_old = read(&old, views).await;
    let from_new = read(&new, views).await;
    assert_eq!(from_old, from_new);

    let invitations = &from_old.0;
    assert_eq!(
        invitations
            .iter()
            .map(|i| (i.invitation_id, i.invited_by, i.email.to_string()))
            .collect::<Vec<_>>(),
        vec![
            (
                DESIGNER_INVITATION,
                OWNER,
                "designer@yourcompany.com".into()
            ),
            (BOOKKEEPER_INVITATION, OWNER, "accounts@abc.co.tz".into()),
        ]
    );
    let invitation_mail = from_old.3.iter().find(|n| n.position == 7).map(|n| {
        (
            n.recipient_email.to_string(),
            n.body.lines().next().map(str::to_owned),
        )
    });
    assert_eq!(
        invitation_mail,
        Some((
            "accounts@abc.co.tz".to_owned(),
            Some(
                "ABC Company <admin@abc.co.tz> invited you to act on behalf of ABC Company with \
                 INVOICES."
                    .to_owned()
            )
        ))
    );
}

#[tokio::test]
async fn read_models_rebuilt_from_a_v1_log_equal_those_from_the_v2_log_on_sqlite() {
    the_read_models_are_the_same_on_both_logs(Backend::Sqlite).await;
}

#[tokio::test]
async fn read_models_rebuilt_from_a_v1_log_equal_those_from_the_v2_log_on_postgres() {
    the_read_models_are_the_same_on_both_logs(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------
// (c) audit trail

async fn the_audit_trail_shows_version_2_and_the_rows_stay_as_written(backend: Backend) {
    let Some(v1) = log(backend, Written::BeforeVersion2).await else {
        return;
    };
    let side = rebuilt(&v1.store).await;

    let entries = read(&side, |m| {
        m.audit
            .for_account(ABC)
            .into_iter()
            .map(|e| (e.position, e.action.clone(), e.event_version.clone()))
            .collect::<Vec<_>>()
    })
    .await;
    assert_eq!(
        entries,
        vec![
            (4, "AccountCreated".to_owned(), "1".to_owned()),
            (5, "UserInvited".to_owned(), "2".to_owned()),
            (6, "InvitationAccepted".to_owned(), "1".to_owned()),
            (7, "UserInvited".to_owned(), "2".to_owned()),
        ]
    );

    let rows = v1.store.read_all(0, 10).await.unwrap();
    for position in INVITED_POSITIONS {
        let row = &rows[position as usize - 1];
        assert_eq!(row.event_version, "1");
        assert_eq!(row.payload["UserInvited"].get("invited_by"), None);
        assert!(row.hash.is_some(), "the store hashed position {position}");
    }
    // Reading and upcasting changed no row: the hash chain still holds over the whole log.
    assert!(matches!(
        verify_chain(&*v1.store, 3).await.unwrap(),
        ChainReport::Intact { head: 7, .. }
    ));
}

#[tokio::test]
async fn the_audit_trail_of_a_v1_log_shows_version_2_while_the_rows_stay_as_written_on_sqlite() {
    the_audit_trail_shows_version_2_and_the_rows_stay_as_written(Backend::Sqlite).await;
}

#[tokio::test]
async fn the_audit_trail_of_a_v1_log_shows_version_2_while_the_rows_stay_as_written_on_postgres() {
    the_audit_trail_shows_version_2_and_the_rows_stay_as_written(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------
// (d) the real server

fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

async fn the_server_serves_the_v1_log_upcast(backend: Backend) {
    let Some(v1) = log(backend, Written::BeforeVersion2).await else {
        return;
    };
    let mut config = ServerConfig::new(v1.dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.database_url = v1.database.as_ref().map(|db| db.url.clone());
    config.clock = Arc::new(ManualClock::new(now()));
    let running = server::spawn(config).await.unwrap();
    let key = auth::find_signing_key(&auth::keys_dir(v1.dir.path()))
        .unwrap()
        .unwrap();
    let signer = Signer::load(&key, auth::DEFAULT_ISSUER, auth::DEFAULT_ISSUER).unwrap();
    let token = |sub: &str, scope: Option<&str>| {
        signer
            .sign(sub, scope, Utc::now(), chrono::Duration::hours(1))
            .unwrap()
    };
    let channel = Channel::from_shared(format!("http://{}", running.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let owner = token(&OWNER.to_string(), None);

    let listed = pb::invitation_service_client::InvitationServiceClient::new(channel.clone())
        .list_invitations(authed(
            pb::ListInvitationsRequest {
                account_id: ABC.to_string(),
                min_position: 7,
                ..Default::default()
            },
            &owner,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .invitations
            .iter()
            .map(|i| (i.email.as_str(), i.invited_by_user_id.clone(), i.state))
            .collect::<Vec<_>>(),
        vec![
            (
                "designer@yourcompany.com",
                OWNER.to_string(),
                pb::InvitationState::Accepted as i32
            ),
            (
                "accounts@abc.co.tz",
                OWNER.to_string(),
                pb::InvitationState::Pending as i32
            ),
        ]
    );

    let audit = pb::audit_service_client::AuditServiceClient::new(channel.clone())
        .list_audit_trail(authed(
            pb::ListAuditTrailRequest {
                account_id: ABC.to_string(),
                min_position: 7,
                ..Default::default()
            },
            &owner,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        audit
            .entries
            .iter()
            .map(|e| (e.position, e.action.as_str(), e.event_version.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (4, "AccountCreated", "1"),
            (5, "UserInvited", "2"),
            (6, "InvitationAccepted", "1"),
            (7, "UserInvited", "2"),
        ]
    );

    let mut stream = pb::history_service_client::HistoryServiceClient::new(channel)
        .stream_events(authed(
            pb::StreamEventsRequest {
                event_types: vec!["UserInvited".into()],
                ..Default::default()
            },
            &token("service:replayer", Some("events:read")),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut streamed = Vec::new();
    while let Some(response) = stream.message().await.unwrap() {
        streamed.push(response.event.unwrap());
    }
    let rows = v1.store.read_all(0, 10).await.unwrap();
    assert_eq!(
        streamed
            .iter()
            .map(|e| {
                let payload: Value = serde_json::from_str(&e.payload_json).unwrap();
                (
                    e.position,
                    e.event_version.clone(),
                    payload["UserInvited"]["invited_by"].clone(),
                    e.hash.clone(),
                )
            })
            .collect::<Vec<_>>(),
        INVITED_POSITIONS
            .iter()
            .map(|&p| {
                let row = &rows[p as usize - 1];
                (
                    p,
                    "2".to_owned(),
                    json!(OWNER),
                    row.hash.clone().unwrap_or_default(),
                )
            })
            .collect::<Vec<_>>()
    );

    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_server_started_on_a_v1_log_lists_audits_and_streams_invitations_at_v2_on_sqlite() {
    the_server_serves_the_v1_log_upcast(Backend::Sqlite).await;
}

#[tokio::test]
async fn the_server_started_on_a_v1_log_lists_audits_and_streams_invitations_at_v2_on_postgres() {
    the_server_serves_the_v1_log_upcast(Backend::Postgres).await;
}
