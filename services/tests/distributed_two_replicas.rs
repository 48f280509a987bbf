//! The distributed mode end to end: two API replicas, one relay and one projection worker, each
//! its own `onbehalf` process, on one PostgreSQL database and a private `nats-server`.
//!
//! The walkthrough's commands alternate between the replicas, and every read goes to the other
//! replica with the previous response's position as `min_position`: it must see that write.
//! Then both replicas take commands on the same client account at once: every accepted command
//! is in the log exactly once, in a gap-free stream, and every refusal is `ABORTED`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use onbehalf::auth::{self, Signer};
use onbehalf::store::postgres::PostgresStore;
use onbehalf::store::EventReader;
use onbehalf::testing::{postgres_test_database, NatsTestServer, TempDataDir};
use onbehalf_proto::v1 as pb;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_onbehalf");

const DESIGNER: &str = "designer@yourcompany.com";
const CLIENTS: [(&str, &str); 4] = [
    ("ABC Company", "admin@abc.co.tz"),
    ("New Life Church", "info@newlife.or.tz"),
    ("Star Logistics", "support@starlogistics.co.tz"),
    ("Green Farm Ltd", "info@greenfarm.co.tz"),
];

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str], dir: &Path) -> Child {
    let mut command = Command::new(BIN);
    command.args(args);
    if args[0] != "relay" {
        command.arg("--data-dir").arg(dir);
    }
    command
        .env("RUST_LOG", "info,async_nats=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

/// `onbehalf serve --read-models postgres` on a free port; returns it with its address.
fn replica(db_url: &str, dir: &Path) -> (Process, String) {
    let mut child = spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--read-models",
            "postgres",
            "--database-url",
            db_url,
        ],
        dir,
    );
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("addr=").nth(1) {
                let addr = addr.split_whitespace().next().unwrap_or_default();
                let _ = tx.send(Ok(addr.to_owned()));
            }
            lines.push(line);
        }
        let _ = tx.send(Err(lines));
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(addr)) => (Process(child), format!("http://{addr}")),
        Ok(Err(lines)) => panic!("replica exited before listening: {lines:?}"),
        Err(_) => panic!("replica did not report its address within 30 s"),
    }
}

/// A relay or a worker; its log goes to the test's output, shown when the test fails.
fn background(args: &[&str], dir: &Path) -> Process {
    let mut child = spawn(args, dir);
    let stderr = child.stderr.take().expect("stderr is piped");
    let name = args[0].to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{name}] {line}");
        }
    });
    Process(child)
}

type Authed = InterceptedService<Channel, onbehalf::cli::Bearer>;

/// Every client of one actor on one replica.
#[derive(Clone)]
struct Api {
    users: pb::user_service_client::UserServiceClient<Authed>,
    accounts: pb::account_service_client::AccountServiceClient<Authed>,
    invitations: pb::invitation_service_client::InvitationServiceClient<Authed>,
    catalog: pb::catalog_service_client::CatalogServiceClient<Authed>,
    hosting: pb::hosting_service_client::HostingServiceClient<Authed>,
    billing: pb::billing_service_client::BillingServiceClient<Authed>,
    notifications: pb::notification_service_client::NotificationServiceClient<Authed>,
    audit: pb::audit_service_client::AuditServiceClient<Authed>,
}

impl Api {
    fn new(channel: &Channel, token: &str) -> Api {
        let bearer = onbehalf::cli::Bearer::new(token).unwrap();
        let svc = || InterceptedService::new(channel.clone(), bearer.clone());
        Api {
            users: pb::user_service_client::UserServiceClient::new(svc()),
            accounts: pb::account_service_client::AccountServiceClient::new(svc()),
            invitations: pb::invitation_service_client::InvitationServiceClient::new(svc()),
            catalog: pb::catalog_service_client::CatalogServiceClient::new(svc()),
            hosting: pb::hosting_service_client::HostingServiceClient::new(svc()),
            billing: pb::billing_service_client::BillingServiceClient::new(svc()),
            notifications: pb::notification_service_client::NotificationServiceClient::new(svc()),
            audit: pb::audit_service_client::AuditServiceClient::new(svc()),
        }
    }
}

/// One actor, on both replicas.
struct Actor {
    on: [Api; 2],
}

struct Replicas {
    channels: [Channel; 2],
    signer: Signer,
}

impl Replicas {
    fn actor(&self, subject: &str, scope: Option<&str>) -> Actor {
        let token = self
            .signer
            .sign(
                subject,
                scope,
                chrono::Utc::now(),
                chrono::Duration::hours(1),
            )
            .unwrap();
        Actor {
            on: [
                Api::new(&self.channels[0], &token),
                Api::new(&self.channels[1], &token),
            ],
        }
    }
}

fn price(cycle: pb::BillingCycle, amount_minor: i64) -> pb::Price {
    pb::Price {
        billing_cycle: cycle as i32,
        amount_minor,
        currency: "TZS".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthrough_across_two_replicas_reads_every_write_it_made() {
    let Some(db) = postgres_test_database().await else {
        return;
    };
    let Some(nats) = NatsTestServer::start().await else {
        return;
    };
    let dir = TempDataDir::new();
    let nats_url = nats.url();
    // The first replica creates the data directory's keys and secret; the others share them.
    let (_a, url_a) = replica(&db.url, dir.path());
    let (_b, url_b) = replica(&db.url, dir.path());
    let _relay = background(
        &["relay", "--database-url", &db.url, "--nats-url", &nats_url],
        dir.path(),
    );
    let _worker = background(
        &[
            "project",
            "--database-url",
            &db.url,
            "--nats-url",
            &nats_url,
        ],
        dir.path(),
    );

    let key = auth::find_signing_key(&auth::keys_dir(dir.path()))
        .unwrap()
        .unwrap();
    let replicas = Replicas {
        channels: [
            Channel::from_shared(url_a)
                .unwrap()
                .connect()
                .await
                .unwrap(),
            Channel::from_shared(url_b)
                .unwrap()
                .connect()
                .await
                .unwrap(),
        ],
        signer: Signer::load(&key, auth::DEFAULT_ISSUER, auth::DEFAULT_ISSUER).unwrap(),
    };
    let service = replicas.actor(
        "service:walkthrough",
        Some("users:register catalog:write notifications:read audit:read"),
    );
    // Each step writes on replica `w` and reads on the other one.
    let mut w = 0usize;
    let mut flip = || {
        w = 1 - w;
        (w, 1 - w)
    };

    // The catalogue.
    let (on, other) = flip();
    let put = service.on[on]
        .catalog
        .clone()
        .put_product(pb::PutProductRequest {
            product: Some(pb::Product {
                product_id: onbehalf::demo::HOSTING_PRODUCT.to_string(),
                name: "Starter Hosting".into(),
                kind: pb::ProductKind::Hosting as i32,
                tld: String::new(),
                prices: vec![price(pb::BillingCycle::Annually, 15_000_000)],
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let products = service.on[other]
        .catalog
        .clone()
        .list_products(pb::ListProductsRequest {
            min_position: put.position,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .products;
    assert_eq!(
        products.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["Starter Hosting"]
    );

    // The designer registers; registering answers from the read models, so this alone crosses
    // the relay, the worker and the replica's mirror.
    let (on, other) = flip();
    let registered = service.on[on]
        .users
        .clone()
        .register_user(pb::RegisterUserRequest {
            email: DESIGNER.into(),
            display_name: "Web Designer".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let designer_id = registered.user.unwrap().user_id;
    let designer = replicas.actor(&designer_id, None);
    let switcher = designer.on[other]
        .accounts
        .clone()
        .list_accessible_accounts(pb::ListAccessibleAccountsRequest {
            min_position: registered.position,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .accounts;
    assert!(switcher.is_empty(), "a new user has no account yet");

    let mut abc = None;
    let mut expected_switcher = Vec::new();
    for (name, email) in CLIENTS {
        let (on, other) = flip();
        let owner_id = service.on[on]
            .users
            .clone()
            .register_user(pb::RegisterUserRequest {
                email: email.into(),
                display_name: name.into(),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap()
            .user_id;
        let owner = replicas.actor(&owner_id, None);
        let created = owner.on[other]
            .accounts
            .clone()
            .create_account(pb::CreateAccountRequest {
                name: name.into(),
                email: email.into(),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let account_id = created.account.unwrap().account_id;

        let (on, other) = flip();
        let got = owner.on[other]
            .accounts
            .clone()
            .get_account(pb::GetAccountRequest {
                account_id: account_id.clone(),
                min_position: created.position,
            })
            .await
            .unwrap()
            .into_inner()
            .account
            .unwrap();
        assert_eq!((got.name.as_str(), got.email.as_str()), (name, email));

        let invited = owner.on[on]
            .invitations
            .clone()
            .invite_user(pb::InviteUserRequest {
                account_id: account_id.clone(),
                email: DESIGNER.into(),
                permissions: vec![],
                full_access: true,
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let notices = designer.on[other]
            .notifications
            .clone()
            .list_notifications(pb::ListNotificationsRequest {
                recipient_email: DESIGNER.into(),
                min_position: invited.position,
                page_size: 500,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .notifications;
        let token = notices
            .iter()
            .rev()
            .find(|n| n.account_id == account_id && !n.action_token.is_empty())
            .map(|n| n.action_token.clone())
            .unwrap_or_else(|| panic!("the invitation to {name} is among the notices"));

        let (on, other) = flip();
        let accepted = designer.on[on]
            .invitations
            .clone()
            .accept_invitation(pb::AcceptInvitationRequest {
                token,
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        expected_switcher.push(name.to_owned());
        let switcher = designer.on[other]
            .accounts
            .clone()
            .list_accessible_accounts(pb::ListAccessibleAccountsRequest {
                min_position: accepted.position,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .accounts;
        let mut names: Vec<String> = switcher.iter().map(|a| a.name.clone()).collect();
        names.sort();
        let mut want = expected_switcher.clone();
        want.sort();
        assert_eq!(names, want, "the switcher after accepting {name}");
        assert!(switcher.iter().all(|a| a.permissions.len() == 13));
        if name == "ABC Company" {
            abc = Some(account_id);
        }
    }
    let abc = abc.expect("ABC Company was created");

    // The designer orders hosting for ABC Company on its behalf and pays the invoice.
    let (on, other) = flip();
    let ordered = designer.on[on]
        .hosting
        .clone()
        .order_service(pb::OrderServiceRequest {
            account_id: abc.clone(),
            product_id: onbehalf::demo::HOSTING_PRODUCT.to_string(),
            domain: "abc.co.tz".into(),
            billing_cycle: pb::BillingCycle::Annually as i32,
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let invoices = designer.on[other]
        .billing
        .clone()
        .list_invoices(pb::ListInvoicesRequest {
            account_id: abc.clone(),
            min_position: ordered.position,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(invoices.balance_minor, 15_000_000);
    assert_eq!(
        invoices
            .invoices
            .iter()
            .map(|i| (i.invoice_id.as_str(), i.number, i.status))
            .collect::<Vec<_>>(),
        [(
            ordered.invoice_id.as_str(),
            1,
            pb::InvoiceStatus::Unpaid as i32
        )]
    );

    let (on, _) = flip();
    let paid = designer.on[on]
        .billing
        .clone()
        .pay_invoice(pb::PayInvoiceRequest {
            account_id: abc.clone(),
            invoice_id: ordered.invoice_id.clone(),
            amount_minor: 15_000_000,
            reference: "MPESA-0001".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paid.invoice.unwrap().status, pb::InvoiceStatus::Paid as i32);
    let invoices = designer.on[1 - on]
        .billing
        .clone()
        .list_invoices(pb::ListInvoicesRequest {
            account_id: abc.clone(),
            min_position: paid.position,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(invoices.balance_minor, 0);
    assert_eq!(invoices.invoices[0].status, pb::InvoiceStatus::Paid as i32);

    let trail = service.on[on]
        .audit
        .clone()
        .list_audit_trail(pb::ListAuditTrailRequest {
            account_id: abc.clone(),
            page_size: 500,
            min_position: paid.position,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let last = trail.last().unwrap();
    assert_eq!(
        (last.position, last.actor_email.as_str()),
        (paid.position, DESIGNER)
    );

    // Both replicas take profile changes of ABC Company at once.
    let mut tasks = Vec::new();
    for i in 0..24usize {
        let mut accounts = designer.on[i % 2].accounts.clone();
        let abc = abc.clone();
        tasks.push(tokio::spawn(async move {
            accounts
                .update_account_profile(pb::UpdateAccountProfileRequest {
                    account_id: abc,
                    name: format!("ABC Company {i}"),
                    email: "admin@abc.co.tz".into(),
                    request_id: format!("profile-{i}"),
                })
                .await
        }));
    }
    let mut accepted = BTreeSet::new();
    let mut aborted = 0;
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(response) => {
                accepted.insert((response.into_inner().position, format!("ABC Company {i}")));
            }
            Err(status) if status.code() == tonic::Code::Aborted => aborted += 1,
            Err(status) => panic!("a concurrent profile change failed: {status:?}"),
        }
    }
    assert_eq!(accepted.len() + aborted, 24);
    assert!(!accepted.is_empty());

    let log = PostgresStore::connect(&db.url).await.unwrap();
    let stream = log.read_stream(&format!("account-{abc}"), 0).await.unwrap();
    let versions: Vec<u64> = stream.iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=stream.len() as u64).collect::<Vec<_>>());
    let updates: BTreeSet<(u64, String)> = stream
        .iter()
        .filter(|e| e.event_type == "AccountProfileUpdated")
        .map(|e| {
            let name = e.payload["AccountProfileUpdated"]["name"].as_str();
            (
                e.position,
                name.unwrap_or_else(|| panic!("a name in {}", e.payload))
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        updates, accepted,
        "every accepted change once, nothing else"
    );

    let (newest_position, newest_name) = accepted.iter().next_back().unwrap().clone();
    for api in &designer.on {
        let account = api
            .accounts
            .clone()
            .get_account(pb::GetAccountRequest {
                account_id: abc.clone(),
                min_position: newest_position,
            })
            .await
            .unwrap()
            .into_inner()
            .account
            .unwrap();
        assert_eq!(account.name, newest_name);
    }
}
