//! Memory: the peak resident memory of a server holding client accounts with their members.
//!
//! For each size the bench seeds an SQLite data directory with that many client accounts, each
//! with its owner and a number of members (three by default), then starts the server on it in a child process (this
//! program again, `memory-serve`), which rebuilds its read models from the log, and reads the
//! child's peak resident set (`VmHWM`) once it listens. An empty data directory gives the
//! server's own footprint, which is subtracted to give bytes per account.

use std::path::PathBuf;
use std::time::Instant;

use crate::{BenchError, TempDir};

/// `onbehalf-bench memory`.
#[derive(Debug, clap::Args)]
pub struct MemoryArgs {
    /// Client account counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,30000,100000")]
    pub accounts: Vec<usize>,
    /// Members of each client account besides its owner, comma-separated; every count is
    /// measured at every size.
    #[arg(long, value_delimiter = ',', default_value = "3")]
    pub members: Vec<usize>,
    /// Small sizes (300, 1,000 and 3,000 accounts) that only show the program works.
    #[arg(long)]
    pub quick: bool,
}

/// `onbehalf-bench memory-serve`: start the server on a data directory, report memory, exit.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The seeded data directory.
    #[arg(long)]
    pub data_dir: PathBuf,
}

/// One size's figures.
#[derive(Debug, Clone, Copy)]
pub struct MemoryRow {
    /// Client accounts.
    pub accounts: usize,
    /// Members of each client account besides its owner.
    pub members: usize,
    /// Events in the log.
    pub events: u64,
    /// Peak resident memory of the server process, KiB.
    pub peak_kib: u64,
    /// Seconds from start to listening (read models rebuilt).
    pub start_seconds: f64,
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The child's side: start, report `peak <kib> start <seconds>`, stop.
pub async fn serve(args: ServeArgs) -> Result<(), BenchError> {
    let mut config = onbehalf::server::ServerConfig::new(&args.data_dir);
    config.listen = "127.0.0.1:0"
        .parse()
        .map_err(|e| BenchError::Setup(format!("listen address: {e}")))?;
    let started = Instant::now();
    let running = onbehalf::server::spawn(config).await?;
    let took = started.elapsed().as_secs_f64();
    println!("peak {} start {took}", status_kib("VmHWM:"));
    running.shutdown().await?;
    Ok(())
}

async fn measure_child(data_dir: &std::path::Path) -> Result<(u64, f64), BenchError> {
    let exe = std::env::current_exe()
        .map_err(|e| BenchError::Setup(format!("cannot find this program: {e}")))?;
    let output = tokio::process::Command::new(exe)
        .arg("memory-serve")
        .arg("--data-dir")
        .arg(data_dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .map_err(|e| BenchError::Setup(format!("cannot start the server process: {e}")))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut words = text.split_whitespace();
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("peak"), Some(kib), Some("start"), Some(seconds)) if output.status.success() => Ok((
            kib.parse()
                .map_err(|e| BenchError::Setup(format!("peak `{kib}`: {e}")))?,
            seconds
                .parse()
                .map_err(|e| BenchError::Setup(format!("start `{seconds}`: {e}")))?,
        )),
        _ => Err(BenchError::Setup(format!(
            "the server process said `{}` ({})",
            text.trim(),
            output.status
        ))),
    }
}

/// Measures an empty server, then each size at each member count; the first row is the empty
/// one.
pub async fn run(args: &MemoryArgs) -> Result<Vec<MemoryRow>, BenchError> {
    let sizes = if args.quick {
        vec![300, 1_000, 3_000]
    } else {
        args.accounts.clone()
    };
    println!(
        "memory parameters: client accounts {sizes:?}, each with its owner and {:?} members \
         (invited with full access and accepted) from a pool of one agency user per ten \
         accounts; SQLite log; server in a child process, peak resident set (VmHWM) once it \
         listens with its read models rebuilt",
        args.members
    );
    let mut cases = vec![(0, 0)];
    for &members in &args.members {
        cases.extend(sizes.iter().map(|&accounts| (accounts, members)));
    }
    let mut rows = Vec::new();
    for (accounts, members) in cases {
        let dir = TempDir::new()?;
        let events = if accounts == 0 {
            0
        } else {
            let store = onbehalf::store::sqlite::SqliteStore::open(&dir.0).await?;
            let events = crate::seed::seed_members(&store, accounts, members).await?;
            drop(store);
            events
        };
        let (peak_kib, start_seconds) = measure_child(&dir.0).await?;
        let row = MemoryRow {
            accounts,
            members,
            events,
            peak_kib,
            start_seconds,
        };
        println!("  {row:?}");
        rows.push(row);
    }
    Ok(rows)
}

/// Prints the memory table.
pub fn print(rows: &[MemoryRow]) {
    let empty = rows.first().map_or(0, |r| r.peak_kib);
    println!("| client accounts | members each | events | server peak RSS MiB | above an empty server MiB | bytes per account | start s |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let above = r.peak_kib.saturating_sub(empty) as f64 * 1024.0;
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {} | {:.2} |",
            crate::thousands(r.accounts as f64),
            if r.accounts == 0 {
                "".to_owned()
            } else {
                r.members.to_string()
            },
            crate::thousands(r.events as f64),
            r.peak_kib as f64 / 1024.0,
            above / (1024.0 * 1024.0),
            if r.accounts == 0 {
                "".to_owned()
            } else {
                crate::thousands(above / r.accounts as f64)
            },
            r.start_seconds
        );
    }
}
