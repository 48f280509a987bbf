//! The real `onbehalf serve` process killed with SIGKILL in the middle of a load of thousands of
//! commands from concurrent clients, then started again on the same log.
//!
//! After the restart the log must hold every command the server acknowledged, at the position it
//! acknowledged; every command in the log must be whole (exactly the events its type produces, at
//! consecutive positions); the positions must be gap-free and the hash chain intact; retrying the
//! commands that were in flight must settle each of them exactly once; and the restarted server's
//! read models must agree with a fold of the log made here, independently of the projections.
//!
//! Each run starts its own server process on its own data directory and a free port; the
//! PostgreSQL run uses a database of its own. Killing the process never touches the shared
//! PostgreSQL server.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onbehalf::auth::{self, Signer};
use onbehalf::server::{self, ServerConfig};
use onbehalf::store::chain::{verify_chain, ChainReport};
use onbehalf::testing::{postgres_test_database, TempDataDir};
use onbehalf_events::{Actor, StoredEvent};
use onbehalf_proto::v1 as pb;
use pb::access_service_client::AccessServiceClient;
use pb::account_service_client::AccountServiceClient;
use pb::audit_service_client::AuditServiceClient;
use pb::billing_service_client::BillingServiceClient;
use pb::catalog_service_client::CatalogServiceClient;
use pb::hosting_service_client::HostingServiceClient;
use pb::invitation_service_client::InvitationServiceClient;
use pb::notification_service_client::NotificationServiceClient;
use pb::user_service_client::UserServiceClient;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_onbehalf");

/// Concurrent clients, each on a connection of its own.
const CLIENTS: usize = 6;
/// The server is killed once this many commands were acknowledged.
const KILL_AFTER_ACKS: usize = 3_000;
/// No client sends more than this many commands, so the load is bounded even if the kill
/// never came.
const MAX_COMMANDS_PER_CLIENT: usize = 2_000;
/// Nor does the load last longer than this.
const MAX_LOAD_TIME: Duration = Duration::from_secs(300);
/// The monthly price of the hosting plan every client orders, in minor units.
const MONTHLY_MINOR: i64 = 1_500_000;

/// The kinds of command the load sends, and the events each one appends when accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    PutProduct,
    Register,
    CreateAccount,
    Invite,
    Accept,
    Grant,
    Order,
    Pay,
}

impl Kind {
    /// The event types an accepted command of this kind appends, in order.
    fn events(self) -> &'static [&'static str] {
        match self {
            Kind::PutProduct => &["ProductPut"],
            Kind::Register => &["UserRegistered"],
            Kind::CreateAccount => &["AccountCreated"],
            Kind::Invite => &["UserInvited"],
            Kind::Accept => &["InvitationAccepted"],
            Kind::Grant => &["PermissionsGranted"],
            Kind::Order => &["ServiceOrdered", "InvoiceIssued"],
            Kind::Pay => &["PaymentReceived", "InvoicePaid"],
        }
    }
}

/// A command as sent: enough to send it again, unchanged, after the restart.
#[derive(Clone, Debug)]
enum Request {
    PutProduct(pb::PutProductRequest),
    Register(pb::RegisterUserRequest),
    CreateAccount(pb::CreateAccountRequest),
    Invite(pb::InviteUserRequest),
    Accept(pb::AcceptInvitationRequest),
    Grant(pb::GrantPermissionRequest),
    Order(pb::OrderServiceRequest),
    Pay(pb::PayInvoiceRequest),
}

/// What an accepted command answered: its position and the ids it created.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Answer {
    position: u64,
    id: String,
    second_id: String,
}

/// One command sent by the load.
#[derive(Clone, Debug)]
struct Sent {
    kind: Kind,
    actor: Actor,
    request_id: String,
    token: String,
    request: Request,
}

/// Connections to one server, each call carrying its own bearer token.
#[derive(Clone)]
struct Api {
    channel: Channel,
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().expect("an ASCII token");
    request.metadata_mut().insert("authorization", value);
    request
}

impl Api {
    async fn connect(addr: &str) -> Api {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("a valid URI")
            .connect()
            .await
            .expect("the server accepts connections");
        Api { channel }
    }

    /// Sends one command and answers its position and ids.
    async fn send(&self, sent: &Sent) -> Result<Answer, tonic::Status> {
        let ch = self.channel.clone();
        let token = sent.token.as_str();
        Ok(match sent.request.clone() {
            Request::PutProduct(r) => {
                let out = CatalogServiceClient::new(ch)
                    .put_product(with_token(r, token))
                    .await?
                    .into_inner();
                Answer {
                    position: out.position,
                    id: out.product.map(|p| p.product_id).unwrap_or_default(),
                    ..Answer::default()
                }
            }
            Request::Register(r) => {
                let out = UserServiceClient::new(ch)
                    .register_user(with_token(r, token))
                    .await?
                    .into_inner();
                Answer {
                    position: out.position,
                    id: out.user.map(|u| u.user_id).unwrap_or_default(),
                    ..Answer::default()
                }
            }
            Request::CreateAccount(r) => {
                let out = AccountServiceClient::new(ch)
                    .create_account(with_token(r, token))
                    .await?
                    .into_inner();
                Answer {
                    position: out.position,
                    id: out.account.map(|a| a.account_id).unwrap_or_default(),
                    ..Answer::default()
                }
            }
            Request::Invite(r) => {
                let out = InvitationServiceClient::new(ch)
                    .invite_user(with_token(r, token))
                    .await?
                    .into_inner();
                Answer {
                    position: out.position,
                    id: out.invitation.map(|i| i.invitation_id).unwrap_or_default(),
                    ..Answer::default()
                }
            }
            Request::Accept(r) => {
                let out = InvitationServiceClient::new(ch)
                    .accept_invitation(with_token(r, token))
                    .await?
                    .into_inner();
                Answer {
                    position: out.position,
                    id: out.account_id,
                    ..Answer::default()
                }
            }
            Request::Grant(r) => {
                let out = AccessServiceClient::new(ch)
                    .grant_permission(with_token(r, token))
                    .await?
                    .into_inner();
                Answer {
                    position: out.position,
                    id: out.member.map(|m| m.user_id).unwrap_or_default(),
                    ..Answer::default()
                }
            }
            Request::Order(r) => {
                let out = HostingServiceClient::new(ch)
                    .order_service(with_token(r, token))
                    .await?
                    .into_inner();
                Answer {
                    position: out.position,
                    id: out.service_id,
                    second_id: out.invoice_id,
                }
            }
            Request::Pay(r) => {
                let out = BillingServiceClient::new(ch)
                    .pay_invoice(with_token(r, token))
                    .await?
                    .into_inner();
                Answer {
                    position: out.position,
                    id: out.invoice.map(|i| i.invoice_id).unwrap_or_default(),
                    ..Answer::default()
                }
            }
        })
    }

    /// The acceptance token of the invitation notice `email` received for `account_id`.
    async fn invitation_token(
        &self,
        token: &str,
        email: &str,
        account_id: &str,
        min_position: u64,
    ) -> Result<String, tonic::Status> {
        let notices = NotificationServiceClient::new(self.channel.clone())
            .list_notifications(with_token(
                pb::ListNotificationsRequest {
                    recipient_email: email.to_owned(),
                    page_size: 500,
                    min_position,
                    ..Default::default()
                },
                token,
            ))
            .await?
            .into_inner()
            .notifications;
        notices
            .into_iter()
            .find(|n| {
                n.account_id == account_id
                    && n.category == pb::NotificationCategory::Invitation as i32
            })
            .map(|n| n.action_token)
            .ok_or_else(|| tonic::Status::not_found("no invitation notice"))
    }
}

/// A server process, killed when dropped.
struct Served {
    child: Child,
    addr: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `onbehalf serve` on a free loopback port and waits for its "listening" log line.
fn serve(data_dir: &Path, database_url: Option<&str>) -> Served {
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(url) = database_url {
        command.args(["--database-url", url]);
    }
    let mut child = command.spawn().expect("the binary starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("addr=").nth(1) {
                let addr = addr.split_whitespace().next().unwrap_or_default();
                let _ = tx.send(Ok(addr.to_owned()));
            }
            // Keep draining so the server never blocks on a full pipe.
            if lines.len() < 200 {
                lines.push(line);
            }
        }
        let _ = tx.send(Err(lines));
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Ok(addr)) => Served { child, addr },
        Ok(Err(lines)) => panic!("the server exited before listening: {lines:#?}"),
        Err(_) => panic!("the server did not report its address within 120 s"),
    }
}

/// Everything the load saw: every command sent, and the answers of those acknowledged.
#[derive(Default)]
struct Record {
    sent: Vec<Sent>,
    acked: Vec<(String, Answer)>,
    /// Errors before the kill: none is expected.
    unexpected: Vec<String>,
}

struct Load {
    api: Api,
    record: Arc<Mutex<Record>>,
    acks: Arc<AtomicUsize>,
    killed: Arc<AtomicBool>,
    started: Instant,
    commands: usize,
}

/// Why a client stopped sending.
enum Stop {
    /// The server went away (after the kill) or a bound was reached.
    Done,
}

impl Load {
    /// Sends one command, recording it before it leaves and its answer when it comes.
    async fn command(&mut self, sent: Sent) -> Result<Answer, Stop> {
        if self.commands >= MAX_COMMANDS_PER_CLIENT || self.started.elapsed() > MAX_LOAD_TIME {
            return Err(Stop::Done);
        }
        self.commands += 1;
        self.record
            .lock()
            .expect("the record lock")
            .sent
            .push(sent.clone());
        match self.api.send(&sent).await {
            Ok(answer) => {
                self.record
                    .lock()
                    .expect("the record lock")
                    .acked
                    .push((sent.request_id.clone(), answer.clone()));
                self.acks.fetch_add(1, Ordering::SeqCst);
                Ok(answer)
            }
            Err(status) => {
                self.failed(format!("{:?} {}: {status:?}", sent.kind, sent.request_id));
                Err(Stop::Done)
            }
        }
    }

    fn failed(&self, what: String) {
        if !self.killed.load(Ordering::SeqCst) {
            self.record
                .lock()
                .expect("the record lock")
                .unexpected
                .push(what);
        }
    }
}

/// The tokens the load signs with.
struct Tokens {
    signer: Signer,
}

impl Tokens {
    fn user(&self, user_id: &str) -> String {
        self.sign(user_id, None)
    }

    fn service(&self, name: &str, scope: &str) -> String {
        self.sign(&format!("service:{name}"), Some(scope))
    }

    fn sign(&self, sub: &str, scope: Option<&str>) -> String {
        self.signer
            .sign(sub, scope, chrono::Utc::now(), chrono::Duration::hours(2))
            .expect("the token is signed")
    }
}

fn user_actor(user_id: &str) -> Actor {
    Actor::User(user_id.parse().expect("a user id"))
}

/// One client's share of the load: an agency's whole story, over and over, until the server
/// goes away. Each round registers an owner and a member, creates an account, invites the
/// member, who accepts, is granted ORDERS, orders hosting and pays its invoice.
async fn client(
    mut load: Load,
    tokens: Arc<Tokens>,
    client: usize,
    product_id: String,
) -> Result<(), Stop> {
    let registrar = Actor::Service("crash-registrar".into());
    let registrar_token = tokens.service("crash-registrar", "users:register");
    for round in 0.. {
        let rid = |step: &str| format!("crash-{client}-{round}-{step}");
        let owner_email = format!("owner-{client}-{round}@crash.example");
        let member_email = format!("member-{client}-{round}@crash.example");

        let owner = load
            .command(Sent {
                kind: Kind::Register,
                actor: registrar.clone(),
                request_id: rid("register-owner"),
                token: registrar_token.clone(),
                request: Request::Register(pb::RegisterUserRequest {
                    email: owner_email.clone(),
                    display_name: format!("Owner {client}.{round}"),
                    request_id: rid("register-owner"),
                }),
            })
            .await?
            .id;
        let member = load
            .command(Sent {
                kind: Kind::Register,
                actor: registrar.clone(),
                request_id: rid("register-member"),
                token: registrar_token.clone(),
                request: Request::Register(pb::RegisterUserRequest {
                    email: member_email.clone(),
                    display_name: format!("Designer {client}.{round}"),
                    request_id: rid("register-member"),
                }),
            })
            .await?
            .id;
        let owner_token = tokens.user(&owner);
        let member_token = tokens.user(&member);

        let account = load
            .command(Sent {
                kind: Kind::CreateAccount,
                actor: user_actor(&owner),
                request_id: rid("create-account"),
                token: owner_token.clone(),
                request: Request::CreateAccount(pb::CreateAccountRequest {
                    name: format!("Client {client}.{round} Ltd"),
                    email: format!("billing-{client}-{round}@crash.example"),
                    request_id: rid("create-account"),
                }),
            })
            .await?
            .id;
        let invited = load
            .command(Sent {
                kind: Kind::Invite,
                actor: user_actor(&owner),
                request_id: rid("invite"),
                token: owner_token.clone(),
                request: Request::Invite(pb::InviteUserRequest {
                    account_id: account.clone(),
                    email: member_email.clone(),
                    permissions: vec![pb::Permission::Invoices as i32],
                    full_access: false,
                    request_id: rid("invite"),
                }),
            })
            .await?;

        let invitation_token = match load
            .api
            .invitation_token(&member_token, &member_email, &account, invited.position)
            .await
        {
            Ok(token) => token,
            Err(status) => {
                load.failed(format!("invitation notice of {member_email}: {status:?}"));
                return Err(Stop::Done);
            }
        };
        load.command(Sent {
            kind: Kind::Accept,
            actor: user_actor(&member),
            request_id: rid("accept"),
            token: member_token.clone(),
            request: Request::Accept(pb::AcceptInvitationRequest {
                token: invitation_token,
                request_id: rid("accept"),
            }),
        })
        .await?;
        load.command(Sent {
            kind: Kind::Grant,
            actor: user_actor(&owner),
            request_id: rid("grant"),
            token: owner_token.clone(),
            request: Request::Grant(pb::GrantPermissionRequest {
                account_id: account.clone(),
                user_id: member.clone(),
                permissions: vec![pb::Permission::Orders as i32],
                request_id: rid("grant"),
            }),
        })
        .await?;
        let invoice = load
            .command(Sent {
                kind: Kind::Order,
                actor: user_actor(&member),
                request_id: rid("order"),
                token: member_token.clone(),
                request: Request::Order(pb::OrderServiceRequest {
                    account_id: account.clone(),
                    product_id: product_id.clone(),
                    domain: String::new(),
                    billing_cycle: pb::BillingCycle::Monthly as i32,
                    request_id: rid("order"),
                }),
            })
            .await?
            .second_id;
        load.command(Sent {
            kind: Kind::Pay,
            actor: user_actor(&member),
            request_id: rid("pay"),
            token: member_token.clone(),
            request: Request::Pay(pb::PayInvoiceRequest {
                account_id: account.clone(),
                invoice_id: invoice,
                amount_minor: MONTHLY_MINOR,
                reference: format!("crash-pay-{client}-{round}"),
                request_id: rid("pay"),
            }),
        })
        .await?;
    }
    Ok(())
}

/// What the scenario measured, printed for the record.
#[derive(Debug)]
struct Figures {
    sent: usize,
    acknowledged: usize,
    in_flight_at_kill: usize,
    in_flight_committed: usize,
    events_after_restart: u64,
}

impl Figures {
    fn print(&self, store: &str) {
        println!(
            "{store}: {} commands sent, {} acknowledged before SIGKILL, {} in flight at the kill \
             ({} of them committed), {} events in the log after the retries",
            self.sent,
            self.acknowledged,
            self.in_flight_at_kill,
            self.in_flight_committed,
            self.events_after_restart
        );
    }
}

/// The whole scenario on one store: load, SIGKILL, restart, verify.
async fn kill_during_load_then_restart(database_url: Option<&str>) -> Figures {
    let dir = TempDataDir::new();
    let (key, _) = auth::ensure_dev_keypair(dir.path()).expect("a development key pair");
    let signer =
        Signer::load(&key, auth::DEFAULT_ISSUER, auth::DEFAULT_ISSUER).expect("the key loads");
    let tokens = Arc::new(Tokens { signer });
    let record = Arc::new(Mutex::new(Record::default()));
    let acks = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));

    let mut served = serve(dir.path(), database_url);

    // The catalogue's one product, before the load.
    let setup_api = Api::connect(&served.addr).await;
    let mut setup = Load {
        api: setup_api.clone(),
        record: record.clone(),
        acks: acks.clone(),
        killed: killed.clone(),
        started: Instant::now(),
        commands: 0,
    };
    let catalogue = tokens.service("crash-catalogue", "catalog:write");
    let product = setup
        .command(Sent {
            kind: Kind::PutProduct,
            actor: Actor::Service("crash-catalogue".into()),
            request_id: "crash-put-product".into(),
            token: catalogue.clone(),
            request: Request::PutProduct(pb::PutProductRequest {
                product: Some(pb::Product {
                    product_id: String::new(),
                    name: "Starter Hosting".into(),
                    kind: pb::ProductKind::Hosting as i32,
                    tld: String::new(),
                    prices: vec![pb::Price {
                        billing_cycle: pb::BillingCycle::Monthly as i32,
                        amount_minor: MONTHLY_MINOR,
                        currency: "TZS".into(),
                    }],
                }),
                request_id: "crash-put-product".into(),
            }),
        })
        .await
        .unwrap_or_else(|_| panic!("PutProduct failed: {:?}", record.lock().unwrap().unexpected))
        .id;

    // The load: several clients, each on its own connection.
    let mut clients = tokio::task::JoinSet::new();
    for n in 0..CLIENTS {
        let load = Load {
            api: Api::connect(&served.addr).await,
            record: record.clone(),
            acks: acks.clone(),
            killed: killed.clone(),
            started: Instant::now(),
            commands: 0,
        };
        clients.spawn(client(load, tokens.clone(), n, product.clone()));
    }

    // SIGKILL in the middle of it.
    let waited = Instant::now();
    while acks.load(Ordering::SeqCst) < KILL_AFTER_ACKS && !clients.is_empty() {
        assert!(
            waited.elapsed() < MAX_LOAD_TIME,
            "the load did not reach {KILL_AFTER_ACKS} acknowledged commands in time"
        );
        assert!(
            record.lock().unwrap().unexpected.is_empty(),
            "{:?}",
            record.lock().unwrap().unexpected
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    killed.store(true, Ordering::SeqCst);
    served.child.kill().expect("SIGKILL is sent");
    let status = served.child.wait().expect("the killed server is reaped");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the server died of SIGKILL"
    );
    while clients.join_next().await.is_some() {}

    let record = std::mem::take(&mut *record.lock().expect("the record lock"));
    assert!(
        record.unexpected.is_empty(),
        "errors before the kill: {:?}",
        record.unexpected
    );
    let acked: HashMap<&str, &Answer> = record
        .acked
        .iter()
        .map(|(rid, answer)| (rid.as_str(), answer))
        .collect();
    assert_eq!(acked.len(), record.acked.len(), "request ids are unique");
    let in_flight: Vec<&Sent> = record
        .sent
        .iter()
        .filter(|s| !acked.contains_key(s.request_id.as_str()))
        .collect();
    assert!(
        acked.len() >= KILL_AFTER_ACKS,
        "{} acknowledged",
        acked.len()
    );

    // Start again on the same log.
    let served = serve(dir.path(), database_url);
    let mut config = ServerConfig::new(dir.path());
    config.database_url = database_url.map(str::to_owned);
    let store = server::open_store(&config)
        .await
        .expect("the log opens beside the server");

    // The log as the crash left it.
    let log = store.read_all(0, usize::MAX).await.expect("the log reads");
    let head = store.head_position().await.expect("the head reads");
    let sent_by_rid: HashMap<&str, &Sent> = record
        .sent
        .iter()
        .map(|s| (s.request_id.as_str(), s))
        .collect();
    let commands = check_whole_commands(&log, head, &sent_by_rid);
    assert_eq!(
        verify_chain(store.as_ref(), 500)
            .await
            .expect("the chain reads"),
        ChainReport::Intact {
            head,
            last_hash: onbehalf::store::ChainHash::parse(
                log.last()
                    .and_then(|e| e.hash.as_deref())
                    .expect("the last event has a hash")
            )
            .expect("a stored hash"),
        },
        "the hash chain is intact after the crash"
    );

    // Every acknowledged command is in the log, at the position it was acknowledged with.
    for (rid, answer) in &record.acked {
        let positions = commands
            .get(rid.as_str())
            .unwrap_or_else(|| panic!("acknowledged command {rid} is missing from the log"));
        assert_eq!(
            positions.last().copied(),
            Some(answer.position),
            "acknowledged command {rid} sits at the position it was acknowledged with"
        );
    }
    let in_flight_committed = in_flight
        .iter()
        .filter(|s| commands.contains_key(s.request_id.as_str()))
        .count();
    // Nothing but what was sent is in the log: acknowledged plus some of those in flight.
    assert_eq!(commands.len(), record.acked.len() + in_flight_committed);

    // Retrying what was in flight settles each command exactly once: a committed one answers
    // its first outcome and appends nothing; one that never committed is decided afresh.
    let api = Api::connect(&served.addr).await;
    let mut expected_head = head;
    for sent in &in_flight {
        let committed = commands.get(sent.request_id.as_str());
        match (api.send(sent).await, committed) {
            (Ok(answer), Some(positions)) => assert_eq!(
                Some(answer.position),
                positions.last().copied(),
                "a retry of committed {} answers its first position",
                sent.request_id
            ),
            (Ok(answer), None) => {
                expected_head += sent.kind.events().len() as u64;
                assert_eq!(answer.position, expected_head, "{}", sent.request_id);
            }
            (Err(status), committed) => panic!(
                "retrying {} ({:?}, committed: {}) failed: {status:?}",
                sent.request_id,
                sent.kind,
                committed.is_some()
            ),
        }
    }
    let log = store.read_all(0, usize::MAX).await.expect("the log reads");
    let head = store.head_position().await.expect("the head reads");
    assert_eq!(
        head, expected_head,
        "retries appended only what never committed"
    );
    let commands = check_whole_commands(&log, head, &sent_by_rid);
    assert_eq!(
        commands.len(),
        record.sent.len(),
        "every command sent is in the log once"
    );

    // The restarted server's read models converge to the log.
    converge(&api, &tokens, &log, head).await;

    Figures {
        sent: record.sent.len(),
        acknowledged: record.acked.len(),
        in_flight_at_kill: in_flight.len(),
        in_flight_committed,
        events_after_restart: head,
    }
}

/// Checks that the log is gap-free from 1 to `head` and that every command in it is whole:
/// exactly the events its kind appends, in order, at consecutive positions, all sent by the load.
/// Returns each command's positions by request id.
fn check_whole_commands<'a>(
    log: &'a [StoredEvent],
    head: u64,
    sent: &HashMap<&str, &Sent>,
) -> BTreeMap<&'a str, Vec<u64>> {
    let positions: Vec<u64> = log.iter().map(|e| e.position).collect();
    assert_eq!(
        positions,
        (1..=head).collect::<Vec<_>>(),
        "positions are gap-free"
    );

    let mut commands: BTreeMap<&str, Vec<&StoredEvent>> = BTreeMap::new();
    for event in log {
        let rid = event
            .metadata
            .request_id
            .as_deref()
            .unwrap_or_else(|| panic!("event {} has no request id", event.position));
        commands.entry(rid).or_default().push(event);
    }
    commands
        .into_iter()
        .map(|(rid, events)| {
            let sent = sent
                .get(rid)
                .unwrap_or_else(|| panic!("{rid} in the log was never sent"));
            let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
            assert_eq!(types, sent.kind.events(), "{rid} is whole");
            let first = events[0].position;
            let positions: Vec<u64> = events.iter().map(|e| e.position).collect();
            assert_eq!(
                positions,
                (first..first + events.len() as u64).collect::<Vec<_>>(),
                "{rid}'s events are consecutive"
            );
            let correlations: BTreeSet<_> =
                events.iter().map(|e| e.metadata.correlation_id).collect();
            assert_eq!(correlations.len(), 1, "{rid} has one correlation id");
            assert!(
                events.iter().all(|e| e.metadata.actor == sent.actor),
                "{rid} was appended for its own actor"
            );
            (rid, positions)
        })
        .collect()
}

/// A client account as a fold of the log made here, independently of the projections.
#[derive(Debug, Default, PartialEq, Eq)]
struct AccountFold {
    owner: String,
    /// Member user id to permission numbers.
    members: BTreeMap<String, BTreeSet<i32>>,
    /// Invoice id to (total, paid).
    invoices: BTreeMap<String, (i64, i64)>,
}

fn permission_number(name: &serde_json::Value) -> i32 {
    let name = name.as_str().expect("a permission name");
    pb::Permission::from_str_name(name).expect("a known permission") as i32
}

fn fold(log: &[StoredEvent]) -> BTreeMap<String, AccountFold> {
    let mut accounts: BTreeMap<String, AccountFold> = BTreeMap::new();
    for event in log {
        let Some(account_id) = event.stream_id.strip_prefix("account-") else {
            continue;
        };
        let account = accounts.entry(account_id.to_owned()).or_default();
        let body = &event.payload[event.event_type.as_str()];
        let text = |field: &str| body[field].as_str().expect("a string field").to_owned();
        match event.event_type.as_str() {
            "AccountCreated" => account.owner = text("owner_user_id"),
            "InvitationAccepted" => {
                let permissions = body["permissions"].as_array().expect("permissions");
                account.members.insert(
                    text("user_id"),
                    permissions.iter().map(permission_number).collect(),
                );
            }
            "PermissionsGranted" => {
                let permissions = body["permissions"].as_array().expect("permissions");
                account.members.insert(
                    text("user_id"),
                    permissions.iter().map(permission_number).collect(),
                );
            }
            "InvoiceIssued" => {
                let total = body["total_minor"].as_i64().expect("a total");
                account.invoices.insert(text("invoice_id"), (total, 0));
            }
            "PaymentReceived" => {
                let amount = body["amount_minor"].as_i64().expect("an amount");
                account
                    .invoices
                    .get_mut(&text("invoice_id"))
                    .expect("a payment follows its invoice")
                    .1 += amount;
            }
            _ => {}
        }
    }
    accounts
}

/// Asks the restarted server, as each account's owner and with `min_position = head`, for its
/// members and invoices, and compares them with the fold; and checks that the audit trail has
/// one entry per event.
async fn converge(api: &Api, tokens: &Tokens, log: &[StoredEvent], head: u64) {
    let expected = fold(log);
    assert!(!expected.is_empty());
    for (account_id, want) in &expected {
        let owner = tokens.user(&want.owner);
        let members = AccountServiceClient::new(api.channel.clone())
            .list_members(with_token(
                pb::ListMembersRequest {
                    account_id: account_id.clone(),
                    page_size: 500,
                    min_position: head,
                    ..Default::default()
                },
                &owner,
            ))
            .await
            .expect("the members are readable")
            .into_inner();
        assert!(members.next_page_token.is_empty());
        let got_members: BTreeMap<String, BTreeSet<i32>> = members
            .members
            .iter()
            .filter(|m| m.role != pb::Role::Owner as i32)
            .map(|m| (m.user_id.clone(), m.permissions.iter().copied().collect()))
            .collect();
        let owners: Vec<&str> = members
            .members
            .iter()
            .filter(|m| m.role == pb::Role::Owner as i32)
            .map(|m| m.user_id.as_str())
            .collect();
        assert_eq!(owners, vec![want.owner.as_str()], "owner of {account_id}");
        assert_eq!(got_members, want.members, "members of {account_id}");

        let invoices = BillingServiceClient::new(api.channel.clone())
            .list_invoices(with_token(
                pb::ListInvoicesRequest {
                    account_id: account_id.clone(),
                    page_size: 500,
                    min_position: head,
                    ..Default::default()
                },
                &owner,
            ))
            .await
            .expect("the invoices are readable")
            .into_inner();
        let got_invoices: BTreeMap<String, (i64, i64)> = invoices
            .invoices
            .iter()
            .map(|i| (i.invoice_id.clone(), (i.total_minor, i.paid_minor)))
            .collect();
        assert_eq!(got_invoices, want.invoices, "invoices of {account_id}");
        for invoice in &invoices.invoices {
            let paid = invoice.paid_minor == invoice.total_minor;
            let status = if paid {
                pb::InvoiceStatus::Paid
            } else {
                pb::InvoiceStatus::Unpaid
            };
            assert_eq!(invoice.status, status as i32, "{}", invoice.invoice_id);
        }
        let owed: i64 = want
            .invoices
            .values()
            .map(|(total, paid)| total - paid)
            .sum();
        assert_eq!(invoices.balance_minor, owed, "balance of {account_id}");
    }

    let auditor = tokens.service("crash-auditor", "audit:read");
    let mut audit = AuditServiceClient::new(api.channel.clone());
    let mut positions = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = audit
            .list_audit_trail(with_token(
                pb::ListAuditTrailRequest {
                    page_size: 500,
                    page_token,
                    min_position: head,
                    ..Default::default()
                },
                &auditor,
            ))
            .await
            .expect("the audit trail is readable")
            .into_inner();
        positions.extend(page.entries.iter().map(|e| e.position));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    positions.sort_unstable();
    assert_eq!(
        positions,
        (1..=head).collect::<Vec<_>>(),
        "one audit entry per event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_load_loses_no_acknowledged_command_on_sqlite() {
    let figures = kill_during_load_then_restart(None).await;
    figures.print("SQLite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_load_loses_no_acknowledged_command_on_postgres() {
    let Some(database) = postgres_test_database().await else {
        return;
    };
    let figures = kill_during_load_then_restart(Some(&database.url)).await;
    figures.print("PostgreSQL");
    database.drop_database().await.expect("the database drops");
}
