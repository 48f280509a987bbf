//! Audit export throughput: a year of a busy agency's actions exported through the real server.
//!
//! The log is seeded with [`crate::seed`] (one audit entry per event), the real server is started
//! on it on a loopback port (its read side rebuilds the audit trail at start), and each case runs
//! `onbehalf audit export`'s own client code (`onbehalf::cli::audit::export`) against it, the
//! bytes going to a counting sink. Client and server share this process and its cores, as they
//! would share one machine. Each figure is the median of several rounds after warm-up rounds.
//! `VerifyAuditTrail` over the same log is measured the same way.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use onbehalf::cli::audit::{export, verify, ExportArgs, Format, VerifyArgs};
use onbehalf::cli::ServerArgs;
use uuid::Uuid;

use crate::replay::median;
use crate::BenchError;

/// One way of exporting.
#[derive(Debug, Clone)]
pub struct Case {
    /// How the report names it.
    pub name: String,
    /// The line format.
    pub format: Format,
    /// Only this actor's entries.
    pub actor: Option<Uuid>,
}

/// The median of one case's rounds.
#[derive(Debug, Clone)]
pub struct Measured {
    /// The case.
    pub name: String,
    /// Entries written: lines, less the CSV header.
    pub entries: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Median seconds per export.
    pub seconds: f64,
}

/// Counts what an export writes and keeps none of it.
#[derive(Debug, Default)]
struct Counter {
    bytes: u64,
    lines: u64,
}

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes += buf.len() as u64;
        self.lines += buf.iter().filter(|b| **b == b'\n').count() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn server_args(url: &str, key_dir: &Path) -> ServerArgs {
    ServerArgs {
        server: url.to_owned(),
        token: None,
        key_data_dir: key_dir.to_path_buf(),
    }
}

/// Runs every case `warmup + rounds` times against the server at `url` and reports the medians
/// of the measured rounds; every round of a case must write the same lines and bytes.
pub async fn measure(
    url: &str,
    key_dir: &Path,
    cases: &[Case],
    warmup: usize,
    rounds: usize,
) -> Result<Vec<Measured>, BenchError> {
    let mut results = Vec::new();
    for case in cases {
        let args = ExportArgs {
            server: server_args(url, key_dir),
            format: case.format,
            account: None,
            actor: case.actor,
            action: None,
            from: None,
            to: None,
            newest_first: false,
            output: None,
        };
        let mut times = Vec::new();
        let mut seen: Option<(u64, u64)> = None;
        for round in 0..warmup + rounds {
            let mut counter = Counter::default();
            let started = Instant::now();
            export(&args, &mut counter)
                .await
                .map_err(|e| BenchError::Setup(format!("export {}: {e}", case.name)))?;
            let took = started.elapsed().as_secs_f64();
            let written = (counter.lines, counter.bytes);
            if *seen.get_or_insert(written) != written {
                return Err(BenchError::Setup(format!(
                    "export {} wrote {written:?}, an earlier round {seen:?}",
                    case.name
                )));
            }
            if round >= warmup {
                times.push(took);
            }
        }
        let (lines, bytes) = seen.unwrap_or_default();
        let header = u64::from(case.format == Format::Csv);
        results.push(Measured {
            name: case.name.clone(),
            entries: lines.saturating_sub(header),
            bytes,
            seconds: median(times),
        });
    }
    Ok(results)
}

/// The median seconds of `VerifyAuditTrail` over the whole log, which must verify intact.
pub async fn measure_verify(
    url: &str,
    key_dir: &Path,
    warmup: usize,
    rounds: usize,
) -> Result<(String, f64), BenchError> {
    let args = VerifyArgs {
        server: server_args(url, key_dir),
        offline: false,
        store: onbehalf::cli::StoreArgs {
            data_dir: key_dir.to_path_buf(),
            database_url: None,
        },
    };
    let mut times = Vec::new();
    let mut report = Vec::new();
    for round in 0..warmup + rounds {
        report.clear();
        let started = Instant::now();
        verify(&args, &mut report)
            .await
            .map_err(|e| BenchError::Setup(format!("verify: {e}")))?;
        let took = started.elapsed().as_secs_f64();
        if round >= warmup {
            times.push(took);
        }
    }
    let line = String::from_utf8_lossy(&report).trim_end().to_owned();
    Ok((line, median(times)))
}

/// `onbehalf-bench audit-export`: seed a log, start the server on it, export and verify.
#[derive(Debug, clap::Args)]
pub struct AuditExportArgs {
    /// Audit entries (events) in the seeded log: a year of a busy agency's actions.
    #[arg(long, default_value_t = 200_000)]
    entries: u64,
    /// A short run that only shows the program works: 20,000 entries, 1 warm-up and 3 rounds.
    #[arg(long)]
    quick: bool,
    /// Rounds whose median is reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Rounds run before them and not counted.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Which stores to measure.
    #[arg(long, value_enum, default_value = "both")]
    backend: crate::BackendChoice,
    /// The PostgreSQL server to create the bench's throwaway database on.
    #[arg(long, default_value = crate::DEFAULT_DATABASE_URL)]
    database_url: String,
}

/// One backend's figures.
struct Report {
    store: &'static str,
    started_in: f64,
    exports: Vec<Measured>,
    verified: String,
    verify_seconds: f64,
}

/// Runs the benchmark and prints the machine, the parameters and a Markdown table of medians.
pub async fn run(args: AuditExportArgs) -> Result<(), BenchError> {
    let (entries, rounds, warmup) = if args.quick {
        (20_000, 3, 1)
    } else {
        (args.entries, args.rounds, args.warmup)
    };
    if entries == 0 || rounds == 0 {
        return Err(BenchError::Setup(
            "entries and rounds must be at least 1".into(),
        ));
    }
    println!("# onbehalf-bench audit-export");
    println!();
    println!("machine: {}", crate::machine());
    println!(
        "parameters: {entries} audit entries, {warmup} warm-up + {rounds} measured rounds, \
         medians; client and server in one process over loopback gRPC"
    );

    let mut reports = Vec::new();
    if matches!(
        args.backend,
        crate::BackendChoice::Sqlite | crate::BackendChoice::Both
    ) {
        let dir = crate::TempDir::new()?;
        reports.push(on_backend("sqlite", &dir.0, None, entries, warmup, rounds).await?);
    }
    if matches!(
        args.backend,
        crate::BackendChoice::Postgres | crate::BackendChoice::Both
    ) {
        match crate::BenchDatabase::create(&args.database_url).await {
            Ok(database) => {
                let dir = crate::TempDir::new()?;
                let result = on_backend(
                    "postgres",
                    &dir.0,
                    Some(database.url.clone()),
                    entries,
                    warmup,
                    rounds,
                )
                .await;
                database.drop_database().await?;
                reports.push(result?);
            }
            Err(e) if args.backend == crate::BackendChoice::Both => {
                println!("postgres: skipped, cannot create a database at the server: {e}");
            }
            Err(e) => return Err(e),
        }
    }

    println!();
    println!("| store | export | entries | MiB | median s | entries/s | MiB/s |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for report in &reports {
        for m in &report.exports {
            let mib = m.bytes as f64 / (1024.0 * 1024.0);
            let seconds = m.seconds.max(f64::MIN_POSITIVE);
            println!(
                "| {} | {} | {} | {mib:.1} | {:.3} | {} | {:.1} |",
                report.store,
                m.name,
                crate::thousands(m.entries as f64),
                m.seconds,
                crate::thousands(m.entries as f64 / seconds),
                mib / seconds,
            );
        }
    }
    println!();
    println!(
        "| store | server start (read models rebuilt) s | VerifyAuditTrail median s | answer |"
    );
    println!("|---|---:|---:|---|");
    for report in &reports {
        println!(
            "| {} | {:.2} | {:.3} | {} |",
            report.store, report.started_in, report.verify_seconds, report.verified
        );
    }
    Ok(())
}

async fn on_backend(
    store_name: &'static str,
    data_dir: &Path,
    database_url: Option<String>,
    entries: u64,
    warmup: usize,
    rounds: usize,
) -> Result<Report, BenchError> {
    let setup = |e: onbehalf::error::Error| BenchError::Setup(e.to_string());
    let mut config = onbehalf::server::ServerConfig::new(data_dir);
    config.listen = "127.0.0.1:0"
        .parse()
        .map_err(|e| BenchError::Setup(format!("listen address: {e}")))?;
    config.database_url = database_url;

    let store = onbehalf::server::open_store(&config).await.map_err(setup)?;
    let seeded = crate::seed::seed(&*store, entries).await?;
    drop(store);
    println!(
        "{store_name}: seeded {} entries ({} client accounts)",
        seeded.events, seeded.accounts
    );

    let started = Instant::now();
    let running = onbehalf::server::spawn(config).await.map_err(setup)?;
    let started_in = started.elapsed().as_secs_f64();
    let url = format!("http://{}", running.addr);

    let designer = crate::seed::designer_id(0);
    let cases = [
        Case {
            name: "JSON Lines, everything".into(),
            format: Format::Jsonl,
            actor: None,
        },
        Case {
            name: "CSV, everything".into(),
            format: Format::Csv,
            actor: None,
        },
        Case {
            name: "JSON Lines, one designer across its client accounts".into(),
            format: Format::Jsonl,
            actor: Some(designer),
        },
    ];
    let exports = measure(&url, data_dir, &cases, warmup, rounds).await?;
    let (verified, verify_seconds) = measure_verify(&url, data_dir, warmup, rounds).await?;
    running.shutdown().await.map_err(setup)?;
    Ok(Report {
        store: store_name,
        started_in,
        exports,
        verified,
        verify_seconds,
    })
}
