//! `onbehalf projections status` and `onbehalf projections rebuild NAME`: the persisted read
//! models of the distributed mode.
//!
//! A rebuild folds the PostgreSQL log from position 0 into a fresh generation while the serving
//! one keeps answering reads, then makes it serve in one transaction, at a position at least
//! the serving one's, so that no read goes back in time; the retired generation is deleted
//! afterwards.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use onbehalf_projections::{Changes, ReadModels};

use crate::project::{invitation_links, ProjectError};
use crate::readmodel_pg::{ReadModelError, ReadModelStore, WriteMode, Written, PROJECTION};
use crate::store::postgres::PostgresStore;
use crate::store::{EventReader, StoreError};

/// How many events a rebuild folds and writes per transaction.
const REBUILD_BATCH: usize = 2000;

/// `onbehalf projections`.
#[derive(Debug, Args)]
pub struct ProjectionsArgs {
    #[command(subcommand)]
    command: ProjectionsCommand,
}

#[derive(Debug, Subcommand)]
enum ProjectionsCommand {
    /// Print each projection's generations, positions, the log's head and the lag.
    Status(StatusArgs),
    /// Rebuild a projection from position 0 into a fresh generation, then swap it in.
    Rebuild(RebuildArgs),
}

/// Where the log and the read models are.
#[derive(Clone, Args)]
pub struct DatabaseArgs {
    /// The PostgreSQL database holding the log and the read models.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
}

impl std::fmt::Debug for DatabaseArgs {
    // The URL may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseArgs").finish_non_exhaustive()
    }
}

/// `onbehalf projections status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    database: DatabaseArgs,
}

/// `onbehalf projections rebuild`.
#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// The projection: `read-models` (every read model; they share one position).
    pub name: String,
    #[command(flatten)]
    database: DatabaseArgs,
    /// The API's data directory, for its invitation secret.
    #[arg(long, default_value = "./onbehalf-data", env = "ONBEHALF_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The API's invitation secret file; default `<data dir>/invitation.secret`.
    #[arg(long, env = "ONBEHALF_INVITATION_SECRET_FILE")]
    pub invitation_secret_file: Option<PathBuf>,
    /// The client-area page that accepts invitations, as the API is given it.
    #[arg(
        long,
        default_value = "http://localhost:8080/invitations/accept",
        env = "ONBEHALF_ACCEPT_URL_BASE"
    )]
    pub accept_url_base: String,
}

/// What can stop `onbehalf projections`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionsCliError {
    /// The read models failed.
    #[error(transparent)]
    ReadModels(#[from] ReadModelError),
    /// The log failed.
    #[error("event log: {0}")]
    Log(#[from] StoreError),
    /// The log cannot be folded, or the secret is unusable.
    #[error(transparent)]
    Project(#[from] ProjectError),
    /// Another rebuild wrote the same generation.
    #[error("generation {0} was changed by someone else; run the rebuild again")]
    Concurrent(u64),
    /// The output could not be written.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs `onbehalf projections ...`, printing to `out` (the report) and drawing progress on
/// standard error when it is a terminal.
pub async fn run(args: &ProjectionsArgs, out: &mut dyn Write) -> Result<(), ProjectionsCliError> {
    match &args.command {
        ProjectionsCommand::Status(a) => status(&a.database.database_url, out).await,
        ProjectionsCommand::Rebuild(a) => {
            if a.name != PROJECTION {
                return Err(ReadModelError::UnknownProjection(a.name.clone()).into());
            }
            let links = invitation_links(
                &a.data_dir,
                a.invitation_secret_file.as_deref(),
                &a.accept_url_base,
            )?;
            let progress = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            let report = rebuild(&a.database.database_url, links, &progress).await?;
            progress.finish_and_clear();
            writeln!(
                out,
                "rebuilt {PROJECTION}: generation {} serves at position {} ({} events in {:.1} s)",
                report.generation,
                report.position,
                report.events,
                report.elapsed.as_secs_f64()
            )?;
            Ok(())
        }
    }
}

/// Prints one line per generation: name, generation, state, position, head and lag.
pub async fn status(database_url: &str, out: &mut dyn Write) -> Result<(), ProjectionsCliError> {
    let read_models = ReadModelStore::connect(database_url).await?;
    let log = PostgresStore::connect(database_url).await?;
    let head = log.head_position().await?;
    let generations = read_models.status().await?;
    writeln!(
        out,
        "{:<12} {:>10} {:<10} {:>10} {:>10} {:>10}",
        "PROJECTION", "GENERATION", "STATE", "POSITION", "HEAD", "LAG"
    )?;
    for g in generations {
        writeln!(
            out,
            "{:<12} {:>10} {:<10} {:>10} {:>10} {:>10}",
            g.name,
            g.generation,
            if g.serving { "serving" } else { "building" },
            g.position,
            head,
            head.saturating_sub(g.position)
        )?;
    }
    Ok(())
}

/// What a rebuild did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebuildReport {
    /// The generation that serves now.
    pub generation: u64,
    /// Its checkpoint at the swap.
    pub position: u64,
    /// Events folded.
    pub events: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// Rebuilds [`PROJECTION`] from position 0 into a fresh generation and swaps it in; the old
/// generation serves until the swap commits.
pub async fn rebuild(
    database_url: &str,
    links: std::sync::Arc<dyn onbehalf_projections::InvitationLinks>,
    progress: &ProgressBar,
) -> Result<RebuildReport, ProjectionsCliError> {
    let started = std::time::Instant::now();
    let read_models = ReadModelStore::connect(database_url).await?;
    let log = PostgresStore::connect(database_url).await?;
    let generation = read_models.begin_generation().await?;
    tracing::info!(generation, "rebuilding {PROJECTION}");

    progress.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] position {pos}/{len} · {per_sec} · {eta} left",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.set_length(log.head_position().await?);

    let mut models = ReadModels::new(links);
    models.track_changes();
    let mut pending = Changes::default();
    let mut pending_from = 0u64;
    // Fill the generation batch by batch while the old one serves.
    loop {
        let events = log.read_all(models.position(), REBUILD_BATCH).await?;
        if events.is_empty() {
            break;
        }
        let from = models.position();
        fold(&mut models, &events)?;
        let changes = models.take_changes();
        match read_models
            .write(generation, from, &models, &changes, WriteMode::Building)
            .await?
        {
            Written::Committed => {}
            Written::Stale | Written::Behind(_) => {
                return Err(ProjectionsCliError::Concurrent(generation))
            }
        }
        pending_from = models.position();
        progress.set_position(pending_from);
        if progress.length().is_some_and(|l| l < pending_from) {
            progress.set_length(pending_from);
        }
    }

    // Swap: the serving generation may have moved on meanwhile; fold at least that far.
    loop {
        let from = pending_from;
        let events = log.read_all(models.position(), REBUILD_BATCH).await?;
        fold(&mut models, &events)?;
        merge(&mut pending, models.take_changes());
        match read_models
            .write(generation, from, &models, &pending, WriteMode::Swap)
            .await?
        {
            Written::Committed => break,
            Written::Behind(ahead) => {
                tracing::debug!(ahead, "serving generation ahead of the rebuild; folding on");
                if models.position() >= ahead && events.is_empty() {
                    return Err(ProjectionsCliError::Concurrent(generation));
                }
            }
            Written::Stale => return Err(ProjectionsCliError::Concurrent(generation)),
        }
        progress.set_position(models.position());
    }
    let position = models.position();
    progress.set_position(position);
    read_models.drop_retired_generations().await?;
    tracing::info!(generation, position, "projection rebuilt and swapped in");
    Ok(RebuildReport {
        generation,
        position,
        events: position,
        elapsed: started.elapsed(),
    })
}

fn fold(
    models: &mut ReadModels,
    events: &[onbehalf_events::StoredEvent],
) -> Result<(), ProjectionsCliError> {
    for event in events {
        models
            .apply(event)
            .map_err(|e| ProjectionsCliError::Project(ProjectError::Projection(e)))?;
    }
    Ok(())
}

/// Adds `more` to changes not yet written.
fn merge(pending: &mut Changes, more: Changes) {
    pending.accounts.extend(more.accounts);
    pending.users.extend(more.users);
    pending.invitation_emails.extend(more.invitation_emails);
    pending.products.extend(more.products);
    pending.notifications.extend(more.notifications);
    pending.audit.extend(more.audit);
}
