//! `onbehalf-bench`: benchmarks of onbehalf, run as `cargo run --release -p onbehalf-bench --
//! <benchmark>`.
//!
//! Every benchmark seeds what it measures into stores it creates itself (an SQLite data
//! directory under the system's temporary directory, a PostgreSQL database it creates and drops)
//! and prints the machine, the parameters and a Markdown table of medians.

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};
use onbehalf::store::postgres::PostgresStore;
use onbehalf::store::sqlite::SqliteStore;
use onbehalf::store::{EventStore, StoreError};
use onbehalf::tokens::InvitationTokens;
use onbehalf_projections::{InvitationLinks, ProjectionError};
use tokio_postgres::NoTls;

mod audit_export;
mod latency;
mod memory;
mod replay;
mod replicas;
mod seed;
mod served;
mod throughput;

/// The PostgreSQL server the bench creates its database on unless told otherwise: the local
/// test server.
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The NATS server (with JetStream) the bench creates its throwaway stream on unless told
/// otherwise: the local one.
const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The read models refused an event of the seeded log.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// PostgreSQL refused to create or drop the bench's database.
    #[error("PostgreSQL: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// The bench's own setup went wrong.
    #[error("{0}")]
    Setup(String),
}

#[derive(Debug, Parser)]
#[command(name = "onbehalf-bench", about = "Benchmarks of onbehalf")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Seed a log, then compare the raw read of the log with the rebuild of every read model.
    Replay(ReplayArgs),
    /// Seed a log, start the server on it, and time `onbehalf audit export` and verification.
    AuditExport(audit_export::AuditExportArgs),
    /// Command throughput of one mix on onbehalf, on cqrs-es with postgres-es, and on plain
    /// PostgreSQL inserts.
    Throughput(throughput::ThroughputArgs),
    /// CheckPermission beside a no-op RPC behind the same authentication, and read-your-writes.
    Latency(LatencyArgs),
    /// Peak resident memory of a server holding client accounts with their members.
    Memory(memory::MemoryArgs),
    /// Used by `memory`: start the server on a data directory, report memory, exit.
    #[command(hide = true)]
    MemoryServe(memory::ServeArgs),
    /// Every benchmark in turn (throughput, latency, replay, memory), one table each.
    All(AllArgs),
}

#[derive(Debug, Args)]
struct LatencyArgs {
    /// A short run that only shows the program works.
    #[arg(long)]
    quick: bool,
    /// Seconds per round and kind of call.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds whose calls are pooled.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Read-your-writes samples per store.
    #[arg(long, default_value_t = 500)]
    samples: usize,
    /// The PostgreSQL server to create the bench's throwaway databases on.
    #[arg(long, default_value = DEFAULT_DATABASE_URL)]
    database_url: String,
    /// The NATS server with JetStream to create the bench's throwaway stream on, for
    /// read-your-writes across replicas; that row is skipped when none answers.
    #[arg(long, default_value = DEFAULT_NATS_URL)]
    nats_url: String,
}

#[derive(Debug, Args)]
struct AllArgs {
    /// Every part in its short form (seconds each); CI runs this to keep the program working.
    #[arg(long)]
    quick: bool,
    /// The PostgreSQL server to create the bench's throwaway databases on.
    #[arg(long, default_value = DEFAULT_DATABASE_URL)]
    database_url: String,
    /// The NATS server with JetStream to create the bench's throwaway stream on.
    #[arg(long, default_value = DEFAULT_NATS_URL)]
    nats_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendChoice {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// Events in the seeded log.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// A short run that only shows the program works: 20,000 events, 1 warm-up and 3 rounds.
    #[arg(long)]
    quick: bool,
    /// Prefix sizes of the log to measure, comma-separated; default 10%, 30% and 100% of it.
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<u64>,
    /// Rounds whose median is reported; three keep a 1,000,000-event run to minutes.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Rounds run before them and not counted.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Events per `read_all`, as the server's read side uses.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Which stores to measure.
    #[arg(long, value_enum, default_value = "both")]
    backend: BackendChoice,
    /// The PostgreSQL server to create the bench's throwaway database on.
    #[arg(long, default_value = DEFAULT_DATABASE_URL)]
    database_url: String,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Replay(args) => runtime.block_on(replay_bench(args)),
        Command::AuditExport(args) => runtime.block_on(audit_export::run(args)),
        Command::Throughput(args) => runtime.block_on(throughput_bench(args)),
        Command::Latency(args) => runtime.block_on(latency_bench(args)),
        Command::All(args) => runtime.block_on(all_bench(args)),
        Command::Memory(args) => runtime.block_on(async {
            println!("# onbehalf-bench memory");
            println!();
            println!("machine: {}", machine());
            let rows = memory::run(&args).await?;
            println!();
            memory::print(&rows);
            Ok(())
        }),
        Command::MemoryServe(args) => runtime.block_on(memory::serve(args)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn latency_bench(args: LatencyArgs) -> Result<(), BenchError> {
    println!("# onbehalf-bench latency");
    println!();
    println!("machine: {}", machine());
    println!("load average at start: {}", load_average());
    latency_tables(&args).await?;
    println!("load average at end: {}", load_average());
    Ok(())
}

async fn latency_tables(args: &LatencyArgs) -> Result<(), BenchError> {
    let plan = if args.quick {
        latency::Plan {
            seconds: 0.3,
            warmup: 1,
            rounds: 2,
            fresh_samples: 40,
        }
    } else {
        latency::Plan {
            seconds: args.seconds,
            warmup: 1,
            rounds: args.rounds,
            fresh_samples: args.samples,
        }
    };
    let setup = seed::MixSetup {
        accounts: if args.quick { 256 } else { 2048 },
        designers: 64,
    };
    println!(
        "latency parameters: {} client accounts; per caller count {} warm-up + {} rounds of {} s \
         of each call, alternating; CheckPermission by a service token with access:check on a \
         rotating account and user; read-your-writes: {} InviteUser then ListInvitations with \
         its position as min_position, one caller, on the same server, then across replicas \
         (InviteUser to replica A, ListInvitations to replica B, both reading the read models in \
         PostgreSQL that a relay to JetStream and a projection worker feed, all in this process; \
         a random pause below the relay's poll interval before each InviteUser, not counted)",
        setup.accounts, plan.warmup, plan.rounds, plan.seconds, plan.fresh_samples
    );
    let mut checks = Vec::new();
    let mut fresh = Vec::new();
    for backend in [served::Backend::Sqlite, served::Backend::Postgres] {
        checks.extend(
            latency::permission_checks(backend, &args.database_url, setup, &[1, 64], plan).await?,
        );
        fresh.push(latency::read_your_writes(backend, &args.database_url, setup, plan).await?);
    }
    fresh.extend(
        latency::read_across_replicas(&args.database_url, &args.nats_url, setup, plan).await?,
    );
    println!();
    println!("| server store | callers | no-op p50 / p99 / p99.9 ms | CheckPermission p50 / p99 / p99.9 ms | p99 ÷ no-op p99 | calls | its stream read alone p50 / p99 / p99.9 ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let ms = |q: &latency::Quantiles| {
        format!(
            "{:.2} / {:.2} / {:.2}",
            q.p50_us / 1000.0,
            q.p99_us / 1000.0,
            q.p999_us / 1000.0
        )
    };
    for r in &checks {
        println!(
            "| {} | {} | {} | {} | {:.2} | {} / {} | {} |",
            r.store,
            r.callers,
            ms(&r.noop),
            ms(&r.check),
            r.check.p99_us / r.noop.p99_us.max(f64::MIN_POSITIVE),
            thousands(r.noop.calls as f64),
            thousands(r.check.calls as f64),
            r.read.as_ref().map_or_else(String::new, ms),
        );
    }
    println!();
    println!(
        "| server store | command p50 / p99 ms | read at its position p50 / p99 ms | samples |"
    );
    println!("|---|---:|---:|---:|");
    for r in &fresh {
        println!(
            "| {} | {:.2} / {:.2} | {:.2} / {:.2} | {} |",
            r.store,
            r.command.p50_us / 1000.0,
            r.command.p99_us / 1000.0,
            r.read.p50_us / 1000.0,
            r.read.p99_us / 1000.0,
            r.read.calls
        );
    }
    Ok(())
}

async fn all_bench(args: AllArgs) -> Result<(), BenchError> {
    let started = Instant::now();
    println!(
        "# onbehalf-bench all{}",
        if args.quick { " --quick" } else { "" }
    );
    println!();
    println!("machine: {}", machine());
    println!("load average at start: {}", load_average());
    println!();
    println!("## Command throughput");
    let throughput_args = throughput::ThroughputArgs {
        quick: args.quick,
        clients: vec![1, 8, 64],
        seconds: 2.0,
        rounds: 3,
        warmup: 1,
        accounts: 2048,
        designers: 64,
        floor_batch: 100,
        systems: ["inprocess", "grpc", "peer", "floor", "embedded"]
            .map(String::from)
            .to_vec(),
        peer_binary: None,
        database_url: args.database_url.clone(),
    };
    let rows = throughput::run(&throughput_args).await?;
    println!();
    print_throughput(&rows);
    println!();
    println!("## Permission checks and read-your-writes");
    latency_tables(&LatencyArgs {
        quick: args.quick,
        seconds: 2.0,
        rounds: 3,
        samples: 500,
        database_url: args.database_url.clone(),
        nats_url: args.nats_url.clone(),
    })
    .await?;
    println!();
    println!("## Replay");
    replay_bench(ReplayArgs {
        events: 1_000_000,
        quick: args.quick,
        sizes: Vec::new(),
        rounds: 3,
        warmup: 1,
        batch: 1000,
        backend: BackendChoice::Both,
        database_url: args.database_url.clone(),
    })
    .await?;
    println!();
    println!("## Memory");
    let mut rows = memory::run(&memory::MemoryArgs {
        accounts: vec![10_000, 30_000, 100_000],
        members: vec![3],
        quick: args.quick,
    })
    .await?;
    // How it grows with members: one size at fewer and more members; the empty server is
    // measured once.
    let by_members = memory::run(&memory::MemoryArgs {
        accounts: vec![if args.quick { 1_000 } else { 30_000 }],
        members: vec![1, 9],
        quick: false,
    })
    .await?;
    rows.extend(by_members.into_iter().skip(1));
    println!();
    memory::print(&rows);
    println!();
    println!("load average at end: {}", load_average());
    println!("whole run: {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

async fn throughput_bench(args: throughput::ThroughputArgs) -> Result<(), BenchError> {
    println!("# onbehalf-bench throughput");
    println!();
    println!("machine: {}", machine());
    println!("load average at start: {}", load_average());
    let rows = throughput::run(&args).await?;
    println!();
    print_throughput(&rows);
    println!("load average at end: {}", load_average());
    Ok(())
}

fn print_throughput(rows: &[throughput::Row]) {
    let find = |prefix: &str, n: usize| {
        rows.iter()
            .find(|r| r.system.starts_with(prefix) && r.clients == n)
            .map(|r| r.figures)
    };
    println!("| system | N | commands/s | events/s | p50 ms | p99 ms | ÷ peer (commands/s) | ÷ single-insert floor (events/s) | measured |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let f = r.figures;
        let ratio = |other: Option<throughput::MixFigures>, events: bool| {
            other.map_or("".to_owned(), |o| {
                let (a, b) = if events {
                    (f.events_per_s, o.events_per_s)
                } else {
                    (f.commands_per_s, o.commands_per_s)
                };
                format!("{:.2}", a / b.max(f64::MIN_POSITIVE))
            })
        };
        let onbehalf = r.system.starts_with("onbehalf");
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {} | {} | {} |",
            r.system,
            r.clients,
            if r.system.starts_with("floor") {
                "".to_owned()
            } else {
                thousands(f.commands_per_s)
            },
            thousands(f.events_per_s),
            f.p50_us / 1000.0,
            f.p99_us / 1000.0,
            if onbehalf {
                ratio(find("peer", r.clients), false)
            } else {
                String::new()
            },
            if onbehalf {
                ratio(find("floor: single", r.clients), true)
            } else {
                String::new()
            },
            thousands(f.commands as f64),
        );
    }
}

/// The machine as the report describes it: CPU model, cores and memory.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    format!(
        "{model}, {cores} cores available, {:.1} GiB memory",
        memory_kib as f64 / (1024.0 * 1024.0)
    )
}

/// The 1, 5 and 15 minute load averages, to tell a quiet machine from a busy one.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

fn links() -> Result<Arc<dyn InvitationLinks>, BenchError> {
    // A fixed secret: the bench signs nothing anyone verifies; HMACs cost the same.
    let tokens = InvitationTokens::new(vec![0x5a; 32], "http://localhost:8080/invitations/accept")
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    Ok(Arc::new(tokens))
}

fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

async fn replay_bench(args: ReplayArgs) -> Result<(), BenchError> {
    let (events, rounds, warmup) = if args.quick {
        (20_000, 3, 1)
    } else {
        (args.events, args.rounds, args.warmup)
    };
    if events == 0 || rounds == 0 || args.batch == 0 {
        return Err(BenchError::Setup(
            "events, rounds and batch must be at least 1".into(),
        ));
    }
    // LIMITATION: the sizes are prefixes of one seeded log, not logs seeded to each size, so a
    // small prefix is read from tables (and caches) that hold the whole log.
    let mut sizes = if args.sizes.is_empty() || args.quick {
        vec![events.div_ceil(10), (events * 3).div_ceil(10), events]
    } else {
        args.sizes.clone()
    };
    sizes.retain(|&s| s > 0 && s <= events);
    sizes.sort_unstable();
    sizes.dedup();
    let rounds = replay::Rounds {
        warmup,
        measured: rounds,
        batch: args.batch,
    };
    let links = links()?;

    println!("# onbehalf-bench replay");
    println!();
    println!("machine: {}", machine());
    println!("load average at start: {}", load_average());
    println!(
        "parameters: {events} events, prefixes {sizes:?}, read batch {}, {} warm-up + {} measured \
         rounds, medians",
        rounds.batch, rounds.warmup, rounds.measured
    );

    let mut tables = Vec::new();
    let mut folded = None;
    if matches!(args.backend, BackendChoice::Sqlite | BackendChoice::Both) {
        let dir = TempDir::new()?;
        let store = SqliteStore::open(&dir.0).await?;
        let result = measure_backend("sqlite", &store, events, &sizes, rounds, &links).await;
        drop(store);
        drop(dir);
        let (rates, loaded) = result?;
        tables.push(("sqlite", rates));
        folded = Some(loaded);
    }
    if matches!(args.backend, BackendChoice::Postgres | BackendChoice::Both) {
        match BenchDatabase::create(&args.database_url).await {
            Ok(database) => {
                let result = async {
                    let store = PostgresStore::connect(&database.url).await?;
                    measure_backend("postgres", &store, events, &sizes, rounds, &links).await
                }
                .await;
                database.drop_database().await?;
                let (rates, loaded) = result?;
                tables.push(("postgres", rates));
                folded.get_or_insert(loaded);
            }
            Err(e) if args.backend == BackendChoice::Both => {
                println!("postgres: skipped, cannot create a database at the server: {e}");
            }
            Err(e) => return Err(e),
        }
    }

    println!();
    println!("| store | events | raw read (events/s) | rebuild (events/s) | rebuild / raw |");
    println!("|---|---:|---:|---:|---:|");
    for (name, rates) in &tables {
        for r in rates {
            println!(
                "| {name} | {} | {} | {} | {:.0}% |",
                thousands(r.events as f64),
                thousands(r.raw),
                thousands(r.rebuild),
                100.0 * r.rebuild / r.raw.max(f64::MIN_POSITIVE)
            );
        }
    }
    if let Some(loaded) = folded {
        let fold = replay::measure_fold(&loaded, &sizes, rounds, &links)?;
        println!();
        println!("| fold only, events in memory | events | events/s |");
        println!("|---|---:|---:|");
        for (size, rate) in fold {
            println!(
                "| ReadModels::apply | {} | {} |",
                thousands(size as f64),
                thousands(rate)
            );
        }
        println!();
        println!("{}", replay::summary(&loaded, &links)?);
    }
    println!("load average at end: {}", load_average());
    Ok(())
}

/// Seeds one store and measures it; also returns the whole log as read back, for the fold.
async fn measure_backend(
    name: &str,
    store: &dyn EventStore,
    events: u64,
    sizes: &[u64],
    rounds: replay::Rounds,
    links: &Arc<dyn InvitationLinks>,
) -> Result<(Vec<replay::Rates>, Vec<onbehalf_events::StoredEvent>), BenchError> {
    let started = Instant::now();
    let seeded = seed::seed(store, events).await?;
    let took = started.elapsed();
    println!(
        "{name}: seeded {} events in {} appends ({} client accounts, {} version 1 invitations) \
         in {:.1} s, {} events/s",
        seeded.events,
        seeded.appends,
        seeded.accounts,
        seeded.v1_invitations,
        took.as_secs_f64(),
        thousands(seeded.events as f64 / took.as_secs_f64().max(f64::MIN_POSITIVE)),
    );
    let rates = replay::measure_store(store, sizes, rounds, links).await?;
    let loaded = replay::load(store, events, rounds.batch).await?;
    Ok((rates, loaded))
}

/// A data directory under the system's temporary directory, removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, BenchError> {
        let path = std::env::temp_dir().join(format!("onbehalf-bench-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path)
            .map_err(|e| BenchError::Setup(format!("cannot create {}: {e}", path.display())))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover directory in the temporary directory harms nothing.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A database `onbehalf_bench_<random>` the bench created and must drop.
#[derive(Debug)]
struct BenchDatabase {
    url: String,
    name: String,
    admin_url: String,
}

impl BenchDatabase {
    async fn create(admin_url: &str) -> Result<Self, BenchError> {
        let admin = connect(admin_url).await?;
        let name = format!("onbehalf_bench_{}", uuid::Uuid::new_v4().simple());
        admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0"))
            .await?;
        Ok(Self {
            url: with_database(admin_url, &name),
            name,
            admin_url: admin_url.to_owned(),
        })
    }

    async fn drop_database(self) -> Result<(), BenchError> {
        let admin = connect(&self.admin_url).await?;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await?;
        Ok(())
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, BenchError> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.connect_timeout(std::time::Duration::from_secs(3));
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        // The connection ends when the client is dropped; an error then has no one to go to.
        let _ = connection.await;
    });
    Ok(client)
}

/// `url` naming database `name` instead of its own, for URL and key=value connection strings.
fn with_database(url: &str, name: &str) -> String {
    let Some(scheme) = url.find("://") else {
        return format!("{url} dbname={name}");
    };
    let authority = scheme + 3;
    let end = url[authority..]
        .find(['/', '?'])
        .map_or(url.len(), |i| authority + i);
    let query = url[end..].find('?').map_or("", |i| &url[end + i..]);
    format!("{}/{name}{query}", &url[..end])
}

#[cfg(test)]
mod tests {
    use super::{thousands, with_database};

    #[test]
    fn the_bench_database_replaces_the_servers_database_in_the_url() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "b1"),
            "postgres://postgres@127.0.0.1:5432/b1"
        );
        assert_eq!(
            with_database("postgres://u@127.0.0.1/db?sslmode=disable", "b1"),
            "postgres://u@127.0.0.1/b1?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://127.0.0.1", "b1"),
            "postgres://127.0.0.1/b1"
        );
        assert_eq!(
            with_database("host=127.0.0.1 user=postgres", "b1"),
            "host=127.0.0.1 user=postgres dbname=b1"
        );
    }

    #[test]
    fn rates_are_printed_with_thousands_separators() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(0.0), "0");
    }
}
