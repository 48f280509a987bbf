//! `onbehalf events`, `onbehalf replay` and `onbehalf aggregate` as an operator runs them, against
//! a real server on a fresh data directory whose clock the test holds.
//!
//! The log: the catalogue's hosting plan (1), ABC's owner and the designer register (2, 3), ABC
//! Company is created (4) and orders hosting (5, 6), invites the designer with PRODUCTS and
//! INVOICES (7), who accepts (8); a week later the owner revokes INVOICES (9).

use std::process::Command;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use onbehalf::auth::{find_signing_key, keys_dir, Signer, DEFAULT_ISSUER};
use onbehalf::cli::{AuthedChannel, Bearer};
use onbehalf::clock::ManualClock;
use onbehalf::server::{self, RunningServer, ServerConfig};
use onbehalf::store::postgres::PostgresStore;
use onbehalf::store::sqlite::SqliteStore;
use onbehalf::store::EventReader;
use onbehalf::testing::{postgres_test_database, TempDataDir, TestDatabase};
use onbehalf::tokens::{InvitationTokens, TokenClaims};
use onbehalf_events::StoredEvent;
use onbehalf_proto::v1 as pb;
use serde_json::json;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_onbehalf");
const DESIGNER: &str = "designer@yourcompany.com";

fn monday_3_march() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 3, 9, 0, 0)
        .single()
        .expect("a valid date")
}

/// The server, its data directory and the ids the story created.
struct Fixture {
    dir: TempDataDir,
    db: Option<TestDatabase>,
    url: String,
    abc: String,
    owner: String,
    designer: String,
    invoice: String,
    service: String,
    invitation: String,
    _server: RunningServer,
}

impl Fixture {
    fn dir(&self) -> &str {
        self.dir.path().to_str().expect("a UTF-8 path")
    }

    /// The log as stored, to name event ids and correlation ids the test cannot know.
    async fn log(&self) -> Vec<StoredEvent> {
        match &self.db {
            Some(db) => PostgresStore::connect(&db.url)
                .await
                .expect("the log opens")
                .read_all(0, 100)
                .await
                .expect("the log is readable"),
            None => SqliteStore::open(self.dir.path())
                .await
                .expect("the log opens")
                .read_all(0, 100)
                .await
                .expect("the log is readable"),
        }
    }

    /// An offline subcommand's arguments, pointed at this story's log and data directory.
    fn offline(&self, list: &[&str]) -> Vec<String> {
        let mut all = args(list);
        all.extend(["--data-dir".to_owned(), self.dir().to_owned()]);
        if let Some(db) = &self.db {
            all.extend(["--database-url".to_owned(), db.url.clone()]);
        }
        all
    }
}

fn short(id: &str) -> String {
    id.replace('-', "")[..8].to_owned()
}

fn channel_as(channel: &Channel, signer: &Signer, sub: &str, scope: Option<&str>) -> AuthedChannel {
    let token = signer
        .sign(sub, scope, Utc::now(), chrono::Duration::hours(1))
        .expect("a token");
    InterceptedService::new(
        channel.clone(),
        Bearer::new(&token).expect("a header value"),
    )
}

async fn tell_the_story() -> Fixture {
    tell_the_story_on(None).await
}

/// The story on SQLite, or on the PostgreSQL database given.
async fn tell_the_story_on(db: Option<TestDatabase>) -> Fixture {
    let dir = TempDataDir::new();
    let clock = ManualClock::new(monday_3_march());
    let mut config = ServerConfig::new(dir.path());
    config.database_url = db.as_ref().map(|d| d.url.clone());
    config.listen = "127.0.0.1:0".parse().expect("a socket address");
    config.clock = Arc::new(clock.clone());
    let running = server::spawn(config).await.expect("the server starts");
    let url = format!("http://{}", running.addr);
    let channel = Channel::from_shared(url.clone())
        .expect("a URI")
        .connect()
        .await
        .expect("the server accepts connections");
    let key = find_signing_key(&keys_dir(dir.path()))
        .expect("the key directory is readable")
        .expect("the server made a key");
    let signer = Signer::load(&key, DEFAULT_ISSUER, DEFAULT_ISSUER).expect("the key loads");
    let admin = channel_as(
        &channel,
        &signer,
        "service:setup",
        Some("users:register catalog:write"),
    );

    let product = pb::catalog_service_client::CatalogServiceClient::new(admin.clone())
        .put_product(pb::PutProductRequest {
            product: Some(pb::Product {
                product_id: String::new(),
                name: "Starter Hosting".into(),
                kind: pb::ProductKind::Hosting as i32,
                tld: String::new(),
                prices: vec![pb::Price {
                    billing_cycle: pb::BillingCycle::Annually as i32,
                    amount_minor: 15_000_000,
                    currency: "TZS".into(),
                }],
            }),
            request_id: "put-hosting".into(),
        })
        .await
        .expect("the product is put")
        .into_inner()
        .product
        .expect("the product")
        .product_id;
    let users = pb::user_service_client::UserServiceClient::new(admin);
    let register = |email: &str, name: &str| {
        let request = pb::RegisterUserRequest {
            email: email.into(),
            display_name: name.into(),
            request_id: format!("register-{email}"),
        };
        let mut users = users.clone();
        async move {
            users
                .register_user(request)
                .await
                .expect("the user registers")
                .into_inner()
                .user
                .expect("the user")
                .user_id
        }
    };
    let owner = register("admin@abc.co.tz", "ABC Company").await;
    let designer = register(DESIGNER, "Web Designer").await;

    let as_owner = channel_as(&channel, &signer, &owner, None);
    let abc = pb::account_service_client::AccountServiceClient::new(as_owner.clone())
        .create_account(pb::CreateAccountRequest {
            name: "ABC Company".into(),
            email: "admin@abc.co.tz".into(),
            request_id: "create-abc".into(),
        })
        .await
        .expect("ABC is created")
        .into_inner()
        .account
        .expect("the account")
        .account_id;
    let ordered = pb::hosting_service_client::HostingServiceClient::new(as_owner.clone())
        .order_service(pb::OrderServiceRequest {
            account_id: abc.clone(),
            product_id: product,
            domain: "abc.co.tz".into(),
            billing_cycle: pb::BillingCycle::Annually as i32,
            request_id: "order-abc-hosting".into(),
        })
        .await
        .expect("ABC orders hosting")
        .into_inner();
    let invitation = pb::invitation_service_client::InvitationServiceClient::new(as_owner.clone())
        .invite_user(pb::InviteUserRequest {
            account_id: abc.clone(),
            email: DESIGNER.into(),
            permissions: vec![
                pb::Permission::Invoices as i32,
                pb::Permission::Products as i32,
            ],
            full_access: false,
            request_id: "invite-designer".into(),
        })
        .await
        .expect("ABC invites the designer")
        .into_inner()
        .invitation
        .expect("the invitation")
        .invitation_id;
    let secret = std::fs::read(dir.path().join("invitation.secret")).expect("the secret");
    let token = InvitationTokens::new(secret, "http://localhost:8080/invitations/accept")
        .expect("tokens")
        .mint(TokenClaims {
            account_id: abc.parse().expect("a UUID"),
            invitation_id: invitation.parse().expect("a UUID"),
            generation: 0,
        });
    pb::invitation_service_client::InvitationServiceClient::new(channel_as(
        &channel, &signer, &designer, None,
    ))
    .accept_invitation(pb::AcceptInvitationRequest {
        token,
        request_id: "accept-abc".into(),
    })
    .await
    .expect("the designer accepts");

    clock.advance(chrono::Duration::days(7));
    pb::access_service_client::AccessServiceClient::new(as_owner)
        .revoke_permission(pb::RevokePermissionRequest {
            account_id: abc.clone(),
            user_id: designer.clone(),
            permissions: vec![pb::Permission::Invoices as i32],
            request_id: "revoke-designer-invoices".into(),
        })
        .await
        .expect("the owner revokes INVOICES");

    Fixture {
        dir,
        db,
        url,
        abc,
        owner,
        designer,
        invoice: ordered.invoice_id,
        service: ordered.service_id,
        invitation,
        _server: running,
    }
}

/// Runs the binary off the runtime's threads; returns (success, stdout, stderr).
async fn run(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(BIN)
            .args(&args)
            .env_remove("ONBEHALF_TOKEN")
            .env_remove("DATABASE_URL")
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

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_prints_one_line_per_event_of_an_account_for_people() {
    let f = tell_the_story().await;
    let (ok, out, err) = run(args(&[
        "events",
        "--server",
        &f.url,
        "--key-dir",
        f.dir(),
        "--account",
        &f.abc,
    ]))
    .await;
    assert!(ok, "{err}");
    let invoice = short(&f.invoice);
    assert_eq!(
        out,
        format!(
            "    #4  2025-03-03T09:00:00Z  admin@abc.co.tz             ABC Company         AccountCreated          ABC Company, billing admin@abc.co.tz, owner admin@abc.co.tz\n\
             \x20   #5  2025-03-03T09:00:00Z  admin@abc.co.tz             ABC Company         ServiceOrdered          Starter Hosting abc.co.tz, ANNUALLY TZS 150,000.00\n\
             \x20   #6  2025-03-03T09:00:00Z  admin@abc.co.tz             ABC Company         InvoiceIssued           invoice {invoice} TZS 150,000.00 due 2025-03-03\n\
             \x20   #7  2025-03-03T09:00:00Z  admin@abc.co.tz             ABC Company         UserInvited             designer@yourcompany.com with PRODUCTS, INVOICES until 2025-03-10T09:00:00Z\n\
             \x20   #8  2025-03-03T09:00:00Z  designer@yourcompany.com    ABC Company         InvitationAccepted      designer@yourcompany.com joined with PRODUCTS, INVOICES\n\
             \x20   #9  2025-03-10T09:00:00Z  admin@abc.co.tz             ABC Company         PermissionsRevoked      designer@yourcompany.com lost INVOICES; now PRODUCTS\n"
        )
    );

    // Who removed the designer's INVOICES, and the window of positions around it.
    let (ok, out, err) = run(args(&[
        "events",
        "--server",
        &f.url,
        "--key-dir",
        f.dir(),
        "--type",
        "PermissionsRevoked",
        "--type",
        "PermissionsGranted",
    ]))
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1);
    assert!(
        out.starts_with("    #9  2025-03-10T09:00:00Z  admin@abc.co.tz "),
        "{out}"
    );
    let (ok, out, err) = run(args(&[
        "events",
        "--server",
        &f.url,
        "--key-dir",
        f.dir(),
        "--from",
        "2",
        "--to",
        "3",
    ]))
    .await;
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "    #2  2025-03-03T09:00:00Z  service:setup               -                   UserRegistered          admin@abc.co.tz (ABC Company)\n\
         \x20   #3  2025-03-03T09:00:00Z  service:setup               -                   UserRegistered          designer@yourcompany.com (Web Designer)\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_json_prints_every_envelope_field_one_object_per_line() {
    let f = tell_the_story().await;
    let (ok, out, err) = run(args(&[
        "events",
        "--server",
        &f.url,
        "--key-dir",
        f.dir(),
        "--actor",
        &f.designer,
        "--json",
    ]))
    .await;
    assert!(ok, "{err}");
    let log = f.log().await;
    let accepted = &log[7];
    assert_eq!(accepted.position, 8);
    let expected = json!({
        "position": 8,
        "event_id": accepted.event_id.to_string(),
        "occurred_at": "2025-03-03T09:00:00Z",
        "stream_id": format!("account-{}", f.abc),
        "stream_type": "client_account",
        "version": 5,
        "event_type": "InvitationAccepted",
        "event_version": "1",
        "actor_kind": "user",
        "actor_user_id": f.designer,
        "actor_name": null,
        "on_behalf_of": f.abc,
        "permission": null,
        "request_id": "accept-abc",
        "correlation_id": accepted.metadata.correlation_id.to_string(),
        "causation_id": null,
        "client_address": null,
        "user_agent": null,
        "key_id": null,
        "hash": accepted.hash,
        "payload": {"InvitationAccepted": {
            "invitation_id": f.invitation,
            "user_id": f.designer,
            "permissions": ["PRODUCTS", "INVOICES"],
        }},
    });
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect();
    assert_eq!(lines, vec![expected]);
    // Fields keep the envelope's order, position first.
    assert!(
        out.starts_with(&format!(
            "{{\"position\":8,\"event_id\":\"{}\",\"occurred_at\":",
            accepted.event_id
        )),
        "{out}"
    );
}

async fn replay_until_a_point(f: Fixture) {
    let before = run(f.offline(&["replay", "--until", "8", "--account", &f.abc])).await;
    let report = |position: u64, at: &str, designer: &str| {
        format!(
            "The log as of position {position} ({at}), replayed in memory.\n\
             \n\
             ABC Company  (account {abc})\n\
             \x20 billing email  admin@abc.co.tz\n\
             \x20 owner          admin@abc.co.tz\n\
             \x20 members\n\
             \x20   OWNER   admin@abc.co.tz           full access\n\
             \x20   MEMBER  designer@yourcompany.com  {designer}\n\
             \x20 invitations\n\
             \x20   designer@yourcompany.com  ACCEPTED   PRODUCTS, INVOICES  expires 2025-03-10T09:00:00Z\n\
             \x20 services\n\
             \x20   Starter Hosting  abc.co.tz  ANNUALLY  ACTIVE  next due 2026-03-03\n\
             \x20 invoices\n\
             \x20   #1    UNPAID     total TZS 150,000.00  paid TZS 0.00  due 2025-03-03\n\
             \x20 balance  TZS 150,000.00\n",
            abc = f.abc,
        )
    };
    assert_eq!(
        before,
        (
            true,
            report(8, "2025-03-03T09:00:00Z", "PRODUCTS, INVOICES"),
            String::new()
        )
    );
    let after = run(f.offline(&[
        "replay",
        "--until",
        "2025-03-11T00:00:00Z",
        "--account",
        &f.abc,
    ]))
    .await;
    assert_eq!(
        after,
        (
            true,
            report(9, "2025-03-11T00:00:00Z", "PRODUCTS"),
            String::new()
        )
    );

    let (ok, _, err) = run(f.offline(&["replay", "--until", "10"])).await;
    assert!(!ok);
    assert_eq!(
        err,
        "onbehalf: position: is beyond the head of the log, position 9\n"
    );
    let (ok, _, err) = run(f.offline(&["replay", "--until", "3", "--account", &f.abc])).await;
    assert!(!ok);
    assert_eq!(
        err,
        format!("onbehalf: account {} did not exist at that point\n", f.abc)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_until_a_position_prints_the_account_as_it_was_then() {
    replay_until_a_point(tell_the_story().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_until_a_position_prints_the_account_as_it_was_then_on_postgres() {
    let Some(db) = postgres_test_database().await else {
        return;
    };
    replay_until_a_point(tell_the_story_on(Some(db)).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_without_the_invitation_secret_says_it_uses_a_throwaway_one() {
    let f = tell_the_story().await;
    std::fs::remove_file(f.dir.path().join("invitation.secret")).expect("the secret is removed");
    let (ok, out, err) = run(args(&["replay", "--data-dir", f.dir(), "--until", "1"])).await;
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "The log as of position 1 (2025-03-03T09:00:00Z), replayed in memory.\n"
    );
    assert_eq!(
        err,
        format!(
            "note: no invitation secret at {}; replaying with a throwaway one, so invitation \
             links would differ from the server's\n",
            f.dir.path().join("invitation.secret").display()
        )
    );
}

async fn aggregate_at_a_version(f: Fixture) {
    let (ok, out, err) = run(f.offline(&["aggregate", &f.abc, "--at-version", "4"])).await;
    assert!(ok, "{err}");
    let log = f.log().await;
    let payload = |i: usize| serde_json::to_string(&log[i].payload).expect("JSON");

    let (header, rest) = out.split_once('\n').expect("a header line");
    assert_eq!(
        header,
        format!(
            "account-{} at version 4 of 6 (position 7, 2025-03-03T09:00:00Z)",
            f.abc
        )
    );
    let (state, events) = rest.split_once("\n\nevents\n").expect("state, then events");
    let state: serde_json::Value = serde_json::from_str(state).expect("the state is JSON");
    assert_eq!(
        state,
        json!({
            "account_id": f.abc,
            "name": "ABC Company",
            "email": "admin@abc.co.tz",
            "owner": f.owner,
            "members": {},
            "invitations": {f.invitation.clone(): {
                "email": DESIGNER,
                "permissions": ["PRODUCTS", "INVOICES"],
                "expires_at": "2025-03-10T09:00:00Z",
                "generation": 0,
                "status": "Pending",
                "invited_by": f.owner,
            }},
            "services": {f.service.clone(): {
                "product_name": "Starter Hosting",
                "kind": "HOSTING",
                "domain": "abc.co.tz",
                "billing_cycle": "ANNUALLY",
                "amount_minor": 15_000_000,
                "currency": "TZS",
                "ordered_on": "2025-03-03",
                "periods": 1,
                "next_due_date": "2026-03-03",
                "cancelled": false,
                "renewals": {},
                "suspended_for": null,
            }},
            "invoices": {f.invoice.clone(): {
                "service_id": f.service,
                "kind": {"kind": "order"},
                "total_minor": 15_000_000,
                "paid_minor": 0,
                "currency": "TZS",
                "status": "Unpaid",
                "due_date": "2025-03-03",
                "reminders": [],
            }},
            "contacts": {},
            "opt_ins": {},
            "panel_placements": {},
        })
    );
    assert_eq!(
        events,
        format!(
            "  v1  #4  2025-03-03T09:00:00Z  AccountCreated  {}\n\
             \x20 v2  #5  2025-03-03T09:00:00Z  ServiceOrdered  {}\n\
             \x20 v3  #6  2025-03-03T09:00:00Z  InvoiceIssued  {}\n\
             \x20 v4  #7  2025-03-03T09:00:00Z  UserInvited  {}\n",
            payload(3),
            payload(4),
            payload(5),
            payload(6)
        )
    );
    assert!(payload(3).starts_with("{\"AccountCreated\":{"));

    let (ok, _, err) = run(f.offline(&["aggregate", &f.abc, "--at-version", "7"])).await;
    assert!(!ok);
    assert_eq!(
        err,
        "onbehalf: at-version: must be between 1 and 6, the stream's latest version\n"
    );
    let unknown = Uuid::new_v4();
    let (ok, _, err) = run(f.offline(&["aggregate", &unknown.to_string()])).await;
    assert!(!ok);
    assert_eq!(err, format!("onbehalf: account {unknown} not found\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_at_a_version_prints_the_write_model_and_the_events_that_led_there() {
    aggregate_at_a_version(tell_the_story().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_at_a_version_prints_the_write_model_and_the_events_that_led_there_on_postgres() {
    let Some(db) = postgres_test_database().await else {
        return;
    };
    aggregate_at_a_version(tell_the_story_on(Some(db)).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_commands_on_a_directory_without_a_log_say_so_and_create_nothing() {
    let parent = TempDataDir::new();
    let missing = parent.path().join("onbehalf-dat");
    let missing_arg = missing.to_str().expect("a UTF-8 path").to_owned();
    for command in [
        vec!["replay", "--until", "1", "--data-dir", &missing_arg],
        vec![
            "aggregate",
            "0f6c1f4e-3f0a-4a57-9a43-5a1b0c3b2f10",
            "--data-dir",
            &missing_arg,
        ],
    ] {
        let (ok, out, err) = run(args(&command)).await;
        assert!(!ok);
        assert_eq!(out, "");
        assert_eq!(
            err,
            format!(
                "onbehalf: no log at {}; give the server's --data-dir, or --database-url\n",
                missing.join("events.db").display()
            )
        );
    }
    assert!(!missing.exists(), "nothing was created");
}
