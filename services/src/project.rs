//! The projection worker, behind `onbehalf project`: folds the events the relay put on NATS
//! JetStream into the read models persisted in PostgreSQL.
//!
//! One worker applies every read model (they share one position, see
//! [`crate::readmodel_pg`]). It reads the events stream through a durable pull consumer and
//! gathers up to a batch of messages. The stream carries personal fields sealed as stored, and
//! only the log holds the keys that open them, so the batch tells the worker how far to go: it
//! reads the events from its checkpoint up to the batch's last position from the log, checks
//! that each event that arrived is the log's event at its position, folds them with the same
//! [`ReadModels`] code the embedded mode runs, and writes the documents they changed together
//! with the new checkpoint in one PostgreSQL transaction; only then does it acknowledge the
//! messages.
//!
//! Guarantees:
//!
//! - **No lost effect.** A message is acknowledged only after the transaction holding its effect
//!   committed. A worker killed at any point leaves the stored checkpoint at the end of the last
//!   committed batch, and the broker redelivers everything unacknowledged.
//! - **No duplicated effect.** An event at or below the checkpoint is skipped: redeliveries and
//!   duplicates in the stream change nothing.
//! - **No gap.** Every position between the checkpoint and the last that arrived is read from
//!   the PostgreSQL log, whether its message arrived or not; nothing is ever skipped.
//! - **One writer wins.** Every write names the checkpoint it started from; a write that finds
//!   another (a second worker, a rebuild's swap) is refused, and the worker reloads its state
//!   from PostgreSQL and folds the batch again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use onbehalf_events::subjects::EVENTS_STREAM;
use onbehalf_events::StoredEvent;
use onbehalf_projections::{InvitationLinks, ProjectionError, ReadModels};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use crate::readmodel_pg::{ReadModelError, ReadModelStore, WriteMode, Written};
use crate::relay::RelayedEvent;
use crate::store::postgres::PostgresStore;
use crate::store::{EventReader, StoreError};
use crate::tokens::InvitationTokens;

/// The durable consumer name used when none is given; workers with the same name share the
/// consumer's progress on the broker.
pub const DEFAULT_CONSUMER: &str = "onbehalf-read-models";

/// How long the worker waits for more messages to fill a batch once one has arrived.
const GATHER: Duration = Duration::from_millis(2);

/// The longest pause between attempts while PostgreSQL or the broker is away.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What stops a projection worker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectError {
    /// The read-model database failed in a way waiting does not cure.
    #[error(transparent)]
    ReadModels(#[from] ReadModelError),
    /// The event log failed in a way waiting does not cure.
    #[error("event log: {0}")]
    Log(#[from] StoreError),
    /// An event cannot be folded; the worker stops rather than skip it.
    #[error("cannot fold the log: {0}")]
    Projection(#[from] ProjectionError),
    /// The stream holds an event the log does not have, or another event at its position.
    #[error("the stream's event at position {found} is not this log's (its head is {head})")]
    ForeignStream {
        /// The position that arrived.
        found: u64,
        /// The log's last position.
        head: u64,
    },
    /// The broker refused the consumer or could not be reached at start.
    #[error("NATS: {0}")]
    Nats(String),
    /// The invitation secret or link base is unusable.
    #[error("{0}")]
    Config(String),
    /// The rebuild that follows an erasure failed.
    #[error("rebuild after an erasure: {0}")]
    Rebuild(String),
}

/// Everything a worker needs.
#[derive(Clone)]
pub struct ProjectConfig {
    /// The PostgreSQL database holding both the log and the read models.
    pub database_url: String,
    /// The NATS server.
    pub nats_url: String,
    /// The JetStream stream the relay publishes to.
    pub stream: String,
    /// The durable consumer's name.
    pub consumer: String,
    /// The most events folded and written in one transaction.
    pub batch_size: usize,
    /// Recomputes invitation tokens for notifications; must use the API's secret.
    pub links: Arc<dyn InvitationLinks>,
}

impl std::fmt::Debug for ProjectConfig {
    // The URLs may hold passwords.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectConfig")
            .field("stream", &self.stream)
            .field("consumer", &self.consumer)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl ProjectConfig {
    /// A worker on `database_url` and `nats_url` with the built-in stream and consumer names
    /// and batches of 500 events.
    pub fn new(
        database_url: impl Into<String>,
        nats_url: impl Into<String>,
        links: Arc<dyn InvitationLinks>,
    ) -> ProjectConfig {
        ProjectConfig {
            database_url: database_url.into(),
            nats_url: nats_url.into(),
            stream: EVENTS_STREAM.to_owned(),
            consumer: DEFAULT_CONSUMER.to_owned(),
            batch_size: 500,
            links,
        }
    }
}

/// What a running worker has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProjectStatus {
    /// The generation it writes.
    pub generation: u64,
    /// The checkpoint it last committed (or loaded).
    pub position: u64,
    /// Batches committed.
    pub batches: u64,
    /// Events that arrived at or below the checkpoint and were skipped.
    pub skipped: u64,
    /// Events read from the log to fill gaps in what arrived.
    pub filled: u64,
    /// Times the state was reloaded from PostgreSQL (a refused or failed write).
    pub reloads: u64,
    /// Rebuilds run because an erasure rewrote history.
    pub rebuilds: u64,
}

/// A worker running on a task of its own.
#[derive(Debug)]
pub struct ProjectHandle {
    status: watch::Receiver<ProjectStatus>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ProjectError>>,
}

impl ProjectHandle {
    /// The latest status.
    pub fn status(&self) -> ProjectStatus {
        *self.status.borrow()
    }

    /// Waits until `condition` holds for the status, at most `timeout`; the last status when it
    /// does not.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        condition: impl FnMut(&ProjectStatus) -> bool,
    ) -> Result<ProjectStatus, ProjectStatus> {
        let reached = tokio::time::timeout(timeout, self.status.wait_for(condition))
            .await
            .map(|r| r.map(|status| *status));
        match reached {
            Ok(Ok(status)) => Ok(status),
            _ => Err(self.status()),
        }
    }

    /// Asks the worker to stop after its current batch and waits for it.
    pub async fn shutdown(self) -> Result<(), ProjectError> {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(ProjectError::Nats(format!("worker task failed: {e}"))),
        }
    }
}

/// Starts a worker; it runs until [`ProjectHandle::shutdown`] or a fatal error.
// LIMITATION: workers sharing a consumer split its messages, so each write of one finds the
// other's checkpoint and reloads; they stay correct but only one makes progress at a time.
pub async fn spawn(config: ProjectConfig) -> Result<ProjectHandle, ProjectError> {
    let read_models = ReadModelStore::connect(&config.database_url).await?;
    let log = PostgresStore::connect(&config.database_url).await?;
    let (models, generation) = read_models.load(config.links.clone(), false).await?;
    let (status_tx, status) = watch::channel(ProjectStatus {
        generation,
        position: models.position(),
        ..ProjectStatus::default()
    });
    let (stop, stop_rx) = watch::channel(false);
    let mut worker = Worker {
        config,
        read_models,
        log,
        models,
        generation,
        status: status_tx,
        stop: stop_rx,
    };
    worker.models.track_changes();
    let task = tokio::spawn(async move { worker.run().await });
    Ok(ProjectHandle { status, stop, task })
}

struct Worker {
    config: ProjectConfig,
    read_models: ReadModelStore,
    log: PostgresStore,
    models: ReadModels,
    generation: u64,
    status: watch::Sender<ProjectStatus>,
    stop: watch::Receiver<bool>,
}

/// Why folding a batch did not finish.
enum Interrupted {
    /// Waiting may cure it (a database away); the state is reloaded before trying again.
    Retry(String),
    /// It cannot go on.
    Fatal(ProjectError),
}

impl From<StoreError> for Interrupted {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => Interrupted::Retry(e.to_string()),
            e => Interrupted::Fatal(ProjectError::Log(e)),
        }
    }
}

impl From<ReadModelError> for Interrupted {
    fn from(e: ReadModelError) -> Self {
        if e.is_unavailable() {
            Interrupted::Retry(e.to_string())
        } else {
            Interrupted::Fatal(ProjectError::ReadModels(e))
        }
    }
}

impl Worker {
    async fn run(&mut self) -> Result<(), ProjectError> {
        tracing::info!(
            generation = self.generation,
            position = self.models.position(),
            consumer = %self.config.consumer,
            "projection worker started"
        );
        // A worker stopped between an erasure and its rebuild finishes the rebuild first.
        if let Ok(serving) = self.read_models.serving().await {
            if serving.history_stale {
                self.rebuild().await?;
            }
        }
        let mut attempt = 0u32;
        loop {
            let consumer = match self.consumer().await {
                Ok(consumer) => consumer,
                Err(e) => {
                    if attempt == 0 {
                        tracing::warn!(error = %e, "events stream not available yet; retrying");
                    }
                    attempt = attempt.saturating_add(1);
                    if self.pause(backoff(attempt)).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            attempt = 0;
            match self.consume(consumer).await? {
                Consumed::Stopped => return Ok(()),
                Consumed::Broken(e) => {
                    tracing::warn!(error = %e, "lost the consumer; opening it again");
                    if self.pause(backoff(1)).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn consumer(&self) -> Result<consumer::PullConsumer, String> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(self.config.nats_url.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let js = jetstream::new(client);
        let stream = js
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .get_or_create_consumer(
                &self.config.consumer,
                consumer::pull::Config {
                    durable_name: Some(self.config.consumer.clone()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    deliver_policy: consumer::DeliverPolicy::All,
                    ack_wait: Duration::from_secs(30),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| e.to_string())
    }

    async fn consume(
        &mut self,
        consumer: consumer::PullConsumer,
    ) -> Result<Consumed, ProjectError> {
        let mut messages = match consumer.messages().await {
            Ok(messages) => messages,
            Err(e) => return Ok(Consumed::Broken(e.to_string())),
        };
        let mut errors = 0u32;
        loop {
            let first = tokio::select! {
                next = messages.next() => next,
                _ = self.stop.changed() => return Ok(Consumed::Stopped),
            };
            let first = match first {
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    errors += 1;
                    if errors >= 5 {
                        return Ok(Consumed::Broken(e.to_string()));
                    }
                    tracing::debug!(error = %e, "consumer hiccup");
                    continue;
                }
                None => return Ok(Consumed::Broken("the message stream ended".into())),
            };
            errors = 0;
            let mut batch = vec![first];
            while batch.len() < self.config.batch_size.max(1) {
                match tokio::time::timeout(GATHER, messages.next()).await {
                    Ok(Some(Ok(message))) => batch.push(message),
                    _ => break,
                }
            }
            let events: Vec<StoredEvent> = batch
                .iter()
                .filter_map(|m| match RelayedEvent::decode(&m.message.payload) {
                    Ok(event) => Some(StoredEvent::from(event)),
                    Err(e) => {
                        // The position is unknown, so the event it should have been is read
                        // from the log when the next one arrives.
                        tracing::warn!(error = %e, subject = %m.message.subject, "undecodable message ignored");
                        None
                    }
                })
                .collect();
            if !self.project(&events).await? {
                return Ok(Consumed::Stopped);
            }
            for message in &batch {
                // A lost ack means a redelivery, which is skipped by position.
                if let Err(e) = message.ack().await {
                    tracing::debug!(error = %e, "ack not sent");
                }
            }
        }
    }

    /// Folds `events` and commits them; `false` when told to stop while waiting out a failure.
    async fn project(&mut self, events: &[StoredEvent]) -> Result<bool, ProjectError> {
        let mut attempt = 0u32;
        loop {
            match self.try_project(events).await {
                Ok(false) => return Ok(true),
                Ok(true) => {
                    self.rebuild().await?;
                    return Ok(true);
                }
                Err(Interrupted::Fatal(e)) => {
                    tracing::error!(error = %e, "projection worker stops");
                    return Err(e);
                }
                Err(Interrupted::Retry(reason)) => {
                    attempt = attempt.saturating_add(1);
                    if attempt == 1 {
                        tracing::warn!(error = %reason, "read models not written; retrying");
                    }
                    if self.pause(backoff(attempt)).await {
                        return Ok(false);
                    }
                    if let Err(Interrupted::Fatal(e)) = self.reload().await {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Folds and writes `events`; `true` when what it wrote rewrote history (an erasure), which
    /// only a rebuild makes right in the stored notifications and audit entries.
    async fn try_project(&mut self, events: &[StoredEvent]) -> Result<bool, Interrupted> {
        loop {
            let from = self.models.position();
            let arrived: BTreeMap<u64, uuid::Uuid> = events
                .iter()
                .filter(|e| e.position > from)
                .map(|e| (e.position, e.event_id))
                .collect();
            let skipped = (events.len() - arrived.len()) as u64;
            let Some((&target, _)) = arrived.last_key_value() else {
                self.status.send_modify(|s| s.skipped += skipped);
                return Ok(false);
            };
            self.fold_log_until(target, &arrived).await?;
            let filled = (target - from) - arrived.len() as u64;

            let changes = self.models.take_changes();
            let written = self
                .read_models
                .write(
                    self.generation,
                    from,
                    &self.models,
                    &changes,
                    WriteMode::Serving,
                )
                .await?;
            match written {
                Written::Committed => {
                    self.status.send_modify(|s| {
                        s.position = target;
                        s.batches += 1;
                        s.skipped += skipped;
                        s.filled += filled;
                    });
                    return Ok(changes.rewrites_history);
                }
                Written::Stale | Written::Behind(_) => {
                    tracing::info!(
                        generation = self.generation,
                        "checkpoint moved elsewhere; reloading the read models"
                    );
                    self.reload().await?;
                }
            }
        }
    }

    /// Folds the log's events after the current position up to `target`, read from the log:
    /// the stream carries personal fields sealed, and only the log opens them. An event that
    /// arrived must be the log's event at its position.
    async fn fold_log_until(
        &mut self,
        target: u64,
        arrived: &BTreeMap<u64, uuid::Uuid>,
    ) -> Result<(), Interrupted> {
        while self.models.position() < target {
            let after = self.models.position();
            let want = usize::try_from(target - after)
                .unwrap_or(usize::MAX)
                .min(1000);
            let events = self.log.read_all(after, want).await?;
            if events.is_empty() {
                let head = self.log.head_position().await?;
                return Err(Interrupted::Fatal(ProjectError::ForeignStream {
                    found: target,
                    head,
                }));
            }
            for event in events.iter().filter(|e| e.position <= target) {
                if arrived
                    .get(&event.position)
                    .is_some_and(|id| *id != event.event_id)
                {
                    return Err(Interrupted::Fatal(ProjectError::ForeignStream {
                        found: event.position,
                        head: self.log.head_position().await?,
                    }));
                }
                self.models
                    .apply(event)
                    .map_err(|e| Interrupted::Fatal(e.into()))?;
            }
        }
        Ok(())
    }

    /// Rebuilds the read models from the log into a fresh generation, swaps it in, and goes on
    /// from it: the way an erasure reaches notifications and audit entries already stored.
    async fn rebuild(&mut self) -> Result<(), ProjectError> {
        tracing::info!("an erasure rewrote history; rebuilding the read models");
        let progress = indicatif::ProgressBar::hidden();
        crate::cli::projections::rebuild(
            &self.config.database_url,
            self.config.links.clone(),
            &progress,
        )
        .await
        .map_err(|e| ProjectError::Rebuild(e.to_string()))?;
        match self.reload().await {
            Ok(()) => {
                self.status.send_modify(|s| s.rebuilds += 1);
                Ok(())
            }
            Err(Interrupted::Fatal(e)) => Err(e),
            Err(Interrupted::Retry(e)) => Err(ProjectError::Rebuild(e)),
        }
    }

    async fn reload(&mut self) -> Result<(), Interrupted> {
        let (mut models, generation) = self
            .read_models
            .load(self.config.links.clone(), false)
            .await?;
        models.track_changes();
        self.models = models;
        self.generation = generation;
        let position = self.models.position();
        self.status.send_modify(|s| {
            s.generation = generation;
            s.position = position;
            s.reloads += 1;
        });
        Ok(())
    }

    /// Sleeps; `true` if told to stop meanwhile.
    async fn pause(&mut self, duration: Duration) -> bool {
        if *self.stop.borrow() {
            return true;
        }
        tokio::select! {
            () = tokio::time::sleep(duration) => *self.stop.borrow(),
            _ = self.stop.changed() => true,
        }
    }
}

enum Consumed {
    Stopped,
    Broken(String),
}

fn backoff(attempt: u32) -> Duration {
    let exp = 50u64.saturating_mul(1u64 << attempt.min(8));
    Duration::from_millis(exp).min(MAX_BACKOFF)
}

// ---------------------------------------------------------------------------------------------
// The command line
// ---------------------------------------------------------------------------------------------

/// `onbehalf project`: fold the events stream into the PostgreSQL read models.
#[derive(Clone, clap::Args)]
pub struct ProjectArgs {
    /// The PostgreSQL database holding the log and the read models.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// The NATS server.
    #[arg(
        long,
        env = "ONBEHALF_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// The durable consumer's name; workers with the same name share its progress.
    #[arg(long, env = "ONBEHALF_PROJECTION_CONSUMER", default_value = DEFAULT_CONSUMER)]
    pub consumer: String,
    /// The most events folded and written in one transaction.
    #[arg(long, env = "ONBEHALF_PROJECTION_BATCH", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
    /// The API's data directory, for its invitation secret.
    #[arg(long, default_value = "./onbehalf-data", env = "ONBEHALF_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The API's invitation secret file; default `<data dir>/invitation.secret`. It must exist:
    /// notifications carry tokens the API must accept.
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

impl std::fmt::Debug for ProjectArgs {
    // The URLs may hold passwords.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectArgs")
            .field("consumer", &self.consumer)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

/// The invitation links of an API whose secret is in `secret_file` (default
/// `<data_dir>/invitation.secret`); refuses a missing file rather than invent a secret the API
/// does not know.
pub fn invitation_links(
    data_dir: &std::path::Path,
    secret_file: Option<&std::path::Path>,
    accept_url_base: &str,
) -> Result<Arc<dyn InvitationLinks>, ProjectError> {
    let path = secret_file
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| data_dir.join("invitation.secret"));
    if !path.is_file() {
        return Err(ProjectError::Config(format!(
            "no invitation secret at {}; give the API's --invitation-secret-file or --data-dir",
            path.display()
        )));
    }
    let secret = InvitationTokens::load_or_create_secret(&path)
        .map_err(|e| ProjectError::Config(e.to_string()))?;
    let tokens = InvitationTokens::new(secret, accept_url_base)
        .map_err(|e| ProjectError::Config(e.to_string()))?;
    Ok(Arc::new(tokens))
}

/// Runs a worker from the command line until Ctrl-C (or SIGINT), then stops it cleanly.
pub async fn run_cli(args: ProjectArgs) -> Result<(), ProjectError> {
    let links = invitation_links(
        &args.data_dir,
        args.invitation_secret_file.as_deref(),
        &args.accept_url_base,
    )?;
    let mut config = ProjectConfig::new(args.database_url, args.nats_url, links);
    config.consumer = args.consumer;
    config.batch_size = args.batch_size as usize;
    let mut worker = spawn(config).await?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("shutting down");
            worker.shutdown().await
        }
        result = &mut worker.task => match result {
            Ok(result) => result,
            Err(e) => Err(ProjectError::Nats(format!("worker task failed: {e}"))),
        },
    }
}
