//! Command throughput: one fixed mix of commands over many client accounts, with N concurrent
//! clients, on onbehalf (in-process and over gRPC), on the peer (cqrs-es with postgres-es), and
//! on the floor PostgreSQL itself sets (plain inserts of the same events).
//!
//! One cycle of the mix, on one client account: the owner invites an agency user (PRODUCTS),
//! the user accepts, the owner grants ORDERS and INVOICES, the user orders monthly hosting (the
//! service and its first invoice), and pays the invoice in full (the payment and the paid
//! invoice): 5 commands, 7 events, each command authorised on the state the earlier ones left.
//! Client `i` of `N` works on the accounts `i, i + N, i + 2N, ...` in turn, so no two clients
//! share an account and no command loses an optimistic race; the account's `n`-th cycle invites
//! agency user `(account + n) mod designers`.
//!
//! A round lets every client start cycles until its time is up and finish the one it is in;
//! the rate is the commands finished over the time until the last client stopped. Each figure is
//! the median of the measured rounds after warm-up rounds; latencies are pooled over the
//! measured rounds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use onbehalf::clock::SystemClock;
use onbehalf::domain::{AccountCommand, Catalog, ClientAccount, Command, CommandContext};
use onbehalf::executor::{Execution, Executor, Idempotency, EMAIL_SCOPE};
use onbehalf::store::EventStore;
use onbehalf_events::values::{BillingCycle, Email};
use onbehalf_events::{account_stream, Actor, Metadata, Permission, PermissionSet, CATALOG_STREAM};
use uuid::Uuid;

use crate::seed::{
    designer_id, mix_account_id, mix_designer_email, mix_owner_id, MIX_PRICE_MINOR, MIX_PRODUCT,
};
use crate::BenchError;

/// Commands in one cycle of the mix.
pub const COMMANDS_PER_CYCLE: u64 = 5;
/// Events one cycle appends: invite 1, accept 1, grant 1, order 2, pay 2.
pub const EVENTS_PER_CYCLE: u64 = 7;

/// How rounds are run.
#[derive(Debug, Clone, Copy)]
pub struct Rounds {
    /// Seconds each client keeps starting cycles.
    pub seconds: f64,
    /// Rounds run first and not counted.
    pub warmup: usize,
    /// Rounds whose median is reported.
    pub measured: usize,
}

/// One system's figures at one client count.
#[derive(Debug, Clone, Copy, Default)]
pub struct MixFigures {
    /// Median commands per second.
    pub commands_per_s: f64,
    /// Median events per second.
    pub events_per_s: f64,
    /// Median command latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile command latency, microseconds.
    pub p99_us: f64,
    /// Commands in the measured rounds.
    pub commands: u64,
}

/// Something that runs one cycle of the mix on one client account.
#[async_trait::async_trait]
pub trait Driver: Send + Sync + 'static {
    /// Runs cycle `n` of account `account`, inviting agency user `designer`, and records each
    /// command's latency.
    async fn cycle(
        &self,
        account: usize,
        designer: usize,
        n: usize,
        latencies: &mut Vec<Duration>,
    ) -> Result<(), BenchError>;
}

/// How many cycles each account went through, shared by every round on one system.
#[derive(Debug)]
pub struct Progress {
    cycles: Vec<AtomicUsize>,
    designers: usize,
}

impl Progress {
    /// No cycles yet on `accounts` accounts with `designers` agency users to invite.
    pub fn new(accounts: usize, designers: usize) -> Self {
        Self {
            cycles: (0..accounts).map(|_| AtomicUsize::new(0)).collect(),
            designers,
        }
    }
}

/// The `p`-quantile of sorted latencies, in microseconds (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e6
}

/// Runs the mix with `clients` concurrent clients and reports the medians.
pub async fn measure(
    driver: Arc<dyn Driver>,
    progress: &Arc<Progress>,
    clients: usize,
    rounds: Rounds,
) -> Result<MixFigures, BenchError> {
    let mut rates = Vec::new();
    let mut latencies = Vec::new();
    let mut commands = 0;
    for r in 0..rounds.warmup + rounds.measured {
        let (seconds, cycles, lat) = round(&driver, progress, clients, rounds.seconds).await?;
        if r >= rounds.warmup {
            rates.push((cycles * COMMANDS_PER_CYCLE) as f64 / seconds);
            commands += cycles * COMMANDS_PER_CYCLE;
            latencies.extend(lat);
        }
    }
    latencies.sort_unstable();
    let commands_per_s = crate::replay::median(rates);
    Ok(MixFigures {
        commands_per_s,
        events_per_s: commands_per_s * EVENTS_PER_CYCLE as f64 / COMMANDS_PER_CYCLE as f64,
        p50_us: percentile(&latencies, 0.50),
        p99_us: percentile(&latencies, 0.99),
        commands,
    })
}

async fn round(
    driver: &Arc<dyn Driver>,
    progress: &Arc<Progress>,
    clients: usize,
    seconds: f64,
) -> Result<(f64, u64, Vec<Duration>), BenchError> {
    let accounts = progress.cycles.len();
    if clients == 0 || accounts < clients {
        return Err(BenchError::Setup(format!(
            "{clients} clients need at least as many client accounts ({accounts})"
        )));
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for client in 0..clients {
        let driver = driver.clone();
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let own = (accounts - client).div_ceil(clients);
            let mut latencies = Vec::new();
            let mut cycles = 0u64;
            let mut k = 0usize;
            while Instant::now() < deadline {
                let account = client + clients * (k % own);
                k += 1;
                let n = progress.cycles[account].fetch_add(1, Ordering::Relaxed);
                if n >= progress.designers {
                    return Err(BenchError::Setup(format!(
                        "client account {account} has invited every agency user; give more accounts"
                    )));
                }
                let designer = (account + n) % progress.designers;
                driver.cycle(account, designer, n, &mut latencies).await?;
                cycles += 1;
            }
            Ok::<_, BenchError>((cycles, latencies))
        }));
    }
    let mut cycles = 0;
    let mut latencies = Vec::new();
    for task in tasks {
        let (c, l) = task
            .await
            .map_err(|e| BenchError::Setup(format!("client task failed: {e}")))??;
        cycles += c;
        latencies.extend(l);
    }
    Ok((started.elapsed().as_secs_f64(), cycles, latencies))
}

/// Deterministic ids of cycle `n` of account `a`: invitation, service, invoice, payment.
fn cycle_ids(a: usize, n: usize) -> [Uuid; 4] {
    let seq = (a as u128) << 32 | n as u128;
    [1u128, 2, 3, 4].map(|kind| Uuid::from_u128(kind << 120 | 0xb << 112 | seq))
}

fn set(permissions: &[Permission]) -> PermissionSet {
    permissions.iter().copied().collect()
}

/// onbehalf's command layer called in-process: the executor deciding each command on the
/// aggregate loaded from the log and appending with an idempotency record, doing what the gRPC
/// handlers do around it (the invitee's registration looked up, the catalogue loaded).
#[derive(Debug)]
pub struct InProcess {
    executor: Executor,
}

impl InProcess {
    /// Commands through a fresh executor over `store`.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        let (appended, _) = tokio::sync::watch::channel(0);
        Self {
            executor: Executor::new(store, Arc::new(SystemClock), appended),
        }
    }

    async fn run(
        &self,
        account: usize,
        actor: Uuid,
        body: AccountCommand,
        latencies: &mut Vec<Duration>,
        started: Instant,
    ) -> Result<(), BenchError> {
        let account_id = mix_account_id(account);
        let mut metadata = Metadata::new(Actor::User(actor));
        metadata.on_behalf_of = Some(account_id);
        metadata.permission = body.required_permission();
        let execution = Execution {
            stream_id: account_stream(account_id),
            command: Command {
                context: CommandContext {
                    actor: Actor::User(actor),
                    now: self.executor.clock().now(),
                },
                body,
            },
            metadata,
            idempotency: Some(Idempotency {
                request_id: Uuid::new_v4().to_string(),
                request_hash: "mix".into(),
            }),
            reservations: vec![],
        };
        self.executor
            .execute::<ClientAccount, (), _>(execution, |_| Ok(()))
            .await
            .map_err(|e| BenchError::Setup(format!("command refused: {e}")))?;
        latencies.push(started.elapsed());
        Ok(())
    }
}

fn parse<T, E: std::fmt::Display>(what: &str, parsed: Result<T, E>) -> Result<T, BenchError> {
    parsed.map_err(|e| BenchError::Setup(format!("{what}: {e}")))
}

#[async_trait::async_trait]
impl Driver for InProcess {
    async fn cycle(
        &self,
        account: usize,
        designer: usize,
        n: usize,
        latencies: &mut Vec<Duration>,
    ) -> Result<(), BenchError> {
        let owner = mix_owner_id(account);
        let user = designer_id(designer as u64);
        let [invitation_id, service_id, invoice_id, payment_id] = cycle_ids(account, n);

        let started = Instant::now();
        let email = parse("email", Email::parse(&mix_designer_email(designer)))?;
        let invitee_user_id = self
            .executor
            .store()
            .find_reservation(EMAIL_SCOPE, &email.key())
            .await?
            .and_then(|s| {
                s.strip_prefix("user-")
                    .and_then(|id| Uuid::parse_str(id).ok())
            });
        let invite = AccountCommand::Invite {
            invitation_id,
            email,
            invitee_user_id,
            permissions: set(&[Permission::Products]),
            ttl: chrono::Duration::days(7),
        };
        self.run(account, owner, invite, latencies, started).await?;

        let accept = AccountCommand::AcceptInvitation {
            invitation_id,
            generation: 0,
        };
        self.run(account, user, accept, latencies, Instant::now())
            .await?;

        let grant = AccountCommand::GrantPermissions {
            user_id: user,
            permissions: set(&[Permission::Orders, Permission::Invoices]),
        };
        self.run(account, owner, grant, latencies, Instant::now())
            .await?;

        let started = Instant::now();
        let catalog = self.executor.load::<Catalog>(CATALOG_STREAM).await?;
        let product = catalog
            .aggregate
            .products
            .get(&MIX_PRODUCT)
            .cloned()
            .ok_or_else(|| BenchError::Setup("the catalogue has no hosting product".into()))?;
        let order = AccountCommand::OrderService {
            service_id,
            invoice_id,
            product,
            domain: None,
            billing_cycle: BillingCycle::Monthly,
        };
        self.run(account, user, order, latencies, started).await?;

        let pay = AccountCommand::PayInvoice {
            invoice_id,
            payment_id,
            amount_minor: MIX_PRICE_MINOR,
            reference: format!("card-{payment_id}"),
        };
        self.run(account, user, pay, latencies, Instant::now())
            .await
    }
}

impl From<onbehalf::error::Error> for BenchError {
    fn from(e: onbehalf::error::Error) -> Self {
        BenchError::Setup(e.to_string())
    }
}

/// The floor: the same events' payloads and metadata inserted straight through tokio-postgres
/// into a table with no checks beyond its primary key, by `clients` concurrent writers sharing
/// a pool of `connections`, `batch` rows per statement (1: one autocommitted insert per event).
pub async fn floor(
    pool: &deadpool_postgres::Pool,
    rows: &Arc<Vec<(String, String, serde_json::Value, serde_json::Value)>>,
    clients: usize,
    batch: usize,
    rounds: Rounds,
) -> Result<MixFigures, BenchError> {
    let mut rates = Vec::new();
    let mut latencies = Vec::new();
    let mut inserted = 0u64;
    for r in 0..rounds.warmup + rounds.measured {
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(rounds.seconds);
        let mut tasks = Vec::new();
        for client in 0..clients {
            let pool = pool.clone();
            let rows = rows.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut count = 0u64;
                let mut next = client * 97;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let db = pool
                        .get()
                        .await
                        .map_err(|e| BenchError::Setup(format!("floor pool: {e}")))?;
                    let take: Vec<_> = (0..batch).map(|i| &rows[(next + i) % rows.len()]).collect();
                    next += batch;
                    if batch == 1 {
                        let (stream, kind, payload, metadata) = take[0];
                        let stmt = db
                            .prepare_cached(
                                "INSERT INTO floor_events (stream_id, event_type, payload, metadata) \
                                 VALUES ($1, $2, $3, $4)",
                            )
                            .await?;
                        db.execute(&stmt, &[stream, kind, payload, metadata]).await?;
                    } else {
                        let streams: Vec<&String> = take.iter().map(|r| &r.0).collect();
                        let kinds: Vec<&String> = take.iter().map(|r| &r.1).collect();
                        let payloads: Vec<&serde_json::Value> = take.iter().map(|r| &r.2).collect();
                        let metadata: Vec<&serde_json::Value> = take.iter().map(|r| &r.3).collect();
                        let stmt = db
                            .prepare_cached(
                                "INSERT INTO floor_events (stream_id, event_type, payload, metadata) \
                                 SELECT * FROM unnest($1::text[], $2::text[], $3::json[], $4::json[])",
                            )
                            .await?;
                        db.execute(&stmt, &[&streams, &kinds, &payloads, &metadata])
                            .await?;
                    }
                    lat.push(t.elapsed());
                    count += batch as u64;
                }
                Ok::<_, BenchError>((count, lat))
            }));
        }
        let mut count = 0;
        let mut lat = Vec::new();
        for task in tasks {
            let (c, l) = task
                .await
                .map_err(|e| BenchError::Setup(format!("floor task failed: {e}")))??;
            count += c;
            lat.extend(l);
        }
        let seconds = started.elapsed().as_secs_f64();
        if r >= rounds.warmup {
            rates.push(count as f64 / seconds);
            inserted += count;
            latencies.extend(lat);
        }
    }
    latencies.sort_unstable();
    let events_per_s = crate::replay::median(rates);
    Ok(MixFigures {
        commands_per_s: events_per_s / batch as f64,
        events_per_s,
        p50_us: percentile(&latencies, 0.50),
        p99_us: percentile(&latencies, 0.99),
        commands: inserted,
    })
}

/// The floor's table: the event's stream, type, payload and metadata, and a generated key.
pub const FLOOR_SCHEMA: &str = "CREATE TABLE floor_events (
    position    bigserial PRIMARY KEY,
    stream_id   text NOT NULL,
    event_type  text NOT NULL,
    payload     json NOT NULL,
    metadata    json NOT NULL
)";

/// The mix's own events as the store holds them (payload and metadata as written), to insert
/// the same sizes on the floor: the last `count` events of the log.
pub async fn mix_rows(
    store: &dyn EventStore,
    count: u64,
) -> Result<Vec<(String, String, serde_json::Value, serde_json::Value)>, BenchError> {
    let head = store.head_position().await?;
    let events = store
        .read_all(head.saturating_sub(count), count as usize)
        .await?;
    events
        .into_iter()
        .map(|e| {
            let metadata = serde_json::to_value(&e.metadata)
                .map_err(|err| BenchError::Setup(format!("metadata: {err}")))?;
            Ok((e.stream_id, e.event_type, e.payload, metadata))
        })
        .collect()
}

/// `onbehalf-bench throughput`: the mix on every system, and the floor.
#[derive(Debug, clap::Args)]
pub struct ThroughputArgs {
    /// A short run that only shows the program works: 0.3 s rounds, 1 warm-up and 3 rounds, 256
    /// accounts.
    #[arg(long)]
    pub quick: bool,
    /// Concurrent clients, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    pub clients: Vec<usize>,
    /// Seconds per round.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Rounds whose median is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Rounds run before them and not counted.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Client accounts each system starts with.
    #[arg(long, default_value_t = 2048)]
    pub accounts: usize,
    /// Agency users to invite; an account goes through at most this many cycles.
    #[arg(long, default_value_t = 64)]
    pub designers: usize,
    /// Rows per statement of the batched floor.
    #[arg(long, default_value_t = 100)]
    pub floor_batch: usize,
    /// Which systems to measure, comma-separated: inprocess, grpc, peer, floor, embedded
    /// (SQLite, at 1 and 8 clients).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "inprocess,grpc,peer,floor,embedded"
    )]
    pub systems: Vec<String>,
    /// A built `onbehalf-bench-peer`; by default it is built and run with cargo from
    /// `bench/peer`.
    #[arg(long)]
    pub peer_binary: Option<std::path::PathBuf>,
    /// The PostgreSQL server to create the bench's throwaway databases on.
    #[arg(long, default_value = crate::DEFAULT_DATABASE_URL)]
    pub database_url: String,
}

impl ThroughputArgs {
    /// Rounds, accounts and users after `--quick`.
    pub fn effective(&self) -> (Rounds, usize, usize) {
        if self.quick {
            (
                Rounds {
                    seconds: 0.3,
                    warmup: 1,
                    measured: 3,
                },
                256,
                64,
            )
        } else {
            (
                Rounds {
                    seconds: self.seconds,
                    warmup: self.warmup,
                    measured: self.rounds,
                },
                self.accounts,
                self.designers,
            )
        }
    }
}

/// One row of the throughput table.
#[derive(Debug, Clone)]
pub struct Row {
    /// The system measured.
    pub system: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Its figures.
    pub figures: MixFigures,
}

/// Runs every system the arguments name and returns the rows, printing progress.
pub async fn run(args: &ThroughputArgs) -> Result<Vec<Row>, BenchError> {
    let (rounds, accounts, designers) = args.effective();
    let wants = |s: &str| args.systems.iter().any(|x| x == s);
    let setup = crate::seed::MixSetup {
        accounts,
        designers,
    };
    println!(
        "throughput parameters: clients {:?}, {accounts} client accounts, {designers} agency \
         users, rounds of {} s, {} warm-up + {} measured, pool of 16 PostgreSQL connections per \
         system",
        args.clients, rounds.seconds, rounds.warmup, rounds.measured
    );
    let mut rows = Vec::new();
    let mut sample = Vec::new();

    if wants("inprocess") || wants("floor") {
        let database = crate::BenchDatabase::create(&args.database_url).await?;
        let result = async {
            let store: Arc<dyn EventStore> =
                Arc::new(onbehalf::store::postgres::PostgresStore::connect(&database.url).await?);
            crate::seed::seed_mix(store.clone(), setup, 16).await?;
            let driver: Arc<dyn Driver> = Arc::new(InProcess::new(store.clone()));
            let progress = Arc::new(Progress::new(accounts, designers));
            let mut found = Vec::new();
            for &n in &args.clients {
                let figures = measure(driver.clone(), &progress, n, rounds).await?;
                println!("  onbehalf in-process, postgres, N={n}: {figures:?}");
                found.push(Row {
                    system: "onbehalf in-process (PostgreSQL)".into(),
                    clients: n,
                    figures,
                });
            }
            sample = mix_rows(&*store, 700).await?;
            Ok::<_, BenchError>(found)
        }
        .await;
        database.drop_database().await?;
        let found = result?;
        if wants("inprocess") {
            rows.extend(found);
        }
    }

    if wants("grpc") {
        let served = crate::served::Served::start(
            crate::served::Backend::Postgres,
            &args.database_url,
            setup,
            false,
        )
        .await?;
        let result = async {
            let driver: Arc<dyn Driver> =
                Arc::new(crate::served::GrpcMix::new(&served, setup, 8).await?);
            let progress = Arc::new(Progress::new(accounts, designers));
            let mut found = Vec::new();
            for &n in &args.clients {
                let figures = measure(driver.clone(), &progress, n, rounds).await?;
                println!("  onbehalf over gRPC, postgres, N={n}: {figures:?}");
                found.push(Row {
                    system: "onbehalf over loopback gRPC (PostgreSQL)".into(),
                    clients: n,
                    figures,
                });
            }
            Ok::<_, BenchError>(found)
        }
        .await;
        served.stop().await?;
        rows.extend(result?);
    }

    if wants("peer") {
        rows.extend(peer(args, rounds, accounts, designers).await?);
    }

    if wants("embedded") {
        let dir = crate::TempDir::new()?;
        let store: Arc<dyn EventStore> =
            Arc::new(onbehalf::store::sqlite::SqliteStore::open(&dir.0).await?);
        crate::seed::seed_mix(store.clone(), setup, 1).await?;
        let driver: Arc<dyn Driver> = Arc::new(InProcess::new(store.clone()));
        let progress = Arc::new(Progress::new(accounts, designers));
        for n in [1, 8] {
            let figures = measure(driver.clone(), &progress, n, rounds).await?;
            println!("  onbehalf in-process, sqlite, N={n}: {figures:?}");
            rows.push(Row {
                system: "embedded: onbehalf in-process (SQLite)".into(),
                clients: n,
                figures,
            });
        }
    }

    if wants("floor") && !sample.is_empty() {
        let database = crate::BenchDatabase::create(&args.database_url).await?;
        let result = async {
            let pool = floor_pool(&database.url)?;
            pool.get()
                .await
                .map_err(|e| BenchError::Setup(format!("floor pool: {e}")))?
                .batch_execute(FLOOR_SCHEMA)
                .await?;
            let sample = Arc::new(sample);
            let mut found = Vec::new();
            for (batch, name) in [
                (1, "floor: single-event inserts".to_owned()),
                (
                    args.floor_batch,
                    format!("floor: {}-event batched inserts", args.floor_batch),
                ),
            ] {
                for &n in &args.clients {
                    let figures = floor(&pool, &sample, n, batch, rounds).await?;
                    println!("  {name}, N={n}: {figures:?}");
                    found.push(Row {
                        system: name.clone(),
                        clients: n,
                        figures,
                    });
                }
            }
            Ok::<_, BenchError>(found)
        }
        .await;
        database.drop_database().await?;
        rows.extend(result?);
    }
    Ok(rows)
}

pub(crate) fn floor_pool(url: &str) -> Result<deadpool_postgres::Pool, BenchError> {
    let config: tokio_postgres::Config = url.parse()?;
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    deadpool_postgres::Pool::builder(manager)
        .max_size(16)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| BenchError::Setup(format!("floor pool: {e}")))
}

#[derive(Debug, serde::Deserialize)]
struct PeerReport {
    clients: usize,
    commands_per_s: Vec<f64>,
    events_per_s: Vec<f64>,
    p50_us: f64,
    p99_us: f64,
    commands: u64,
}

/// Runs the peer program on a fresh database and reads its report lines.
async fn peer(
    args: &ThroughputArgs,
    rounds: Rounds,
    accounts: usize,
    designers: usize,
) -> Result<Vec<Row>, BenchError> {
    let database = crate::BenchDatabase::create(&args.database_url).await?;
    let clients = args
        .clients
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let peer_args = [
        "--database-url".to_owned(),
        database.url.clone(),
        "--clients".to_owned(),
        clients,
        "--accounts".to_owned(),
        accounts.to_string(),
        "--designers".to_owned(),
        designers.to_string(),
        "--seconds".to_owned(),
        rounds.seconds.to_string(),
        "--warmup".to_owned(),
        rounds.warmup.to_string(),
        "--rounds".to_owned(),
        rounds.measured.to_string(),
    ];
    let mut command = match &args.peer_binary {
        Some(binary) => tokio::process::Command::new(binary),
        None => {
            let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("peer/Cargo.toml");
            let mut c = tokio::process::Command::new(
                std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
            );
            c.args(["run", "--quiet", "--release", "--manifest-path"])
                .arg(manifest)
                .arg("--");
            // Share this build's target directory, so the peer's dependencies are built once.
            if std::env::var_os("CARGO_TARGET_DIR").is_none() {
                if let Some(dir) = std::env::current_exe()
                    .ok()
                    .and_then(|exe| exe.parent()?.parent().map(std::path::Path::to_path_buf))
                {
                    c.env("CARGO_TARGET_DIR", dir);
                }
            }
            c
        }
    };
    command
        .args(peer_args)
        .stderr(std::process::Stdio::inherit());
    let output = command
        .output()
        .await
        .map_err(|e| BenchError::Setup(format!("cannot run the peer: {e}")));
    database.drop_database().await?;
    let output = output?;
    if !output.status.success() {
        return Err(BenchError::Setup(format!(
            "the peer failed: {}",
            output.status
        )));
    }
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let report: PeerReport = serde_json::from_str(line)
            .map_err(|e| BenchError::Setup(format!("the peer's report `{line}`: {e}")))?;
        let figures = MixFigures {
            commands_per_s: report.commands_per_s.first().copied().unwrap_or(0.0),
            events_per_s: report.events_per_s.first().copied().unwrap_or(0.0),
            p50_us: report.p50_us,
            p99_us: report.p99_us,
            commands: report.commands,
        };
        println!(
            "  peer cqrs-es + postgres-es, N={}: {figures:?}",
            report.clients
        );
        rows.push(Row {
            system: "peer: cqrs-es + postgres-es in-process".into(),
            clients: report.clients,
            figures,
        });
    }
    Ok(rows)
}
