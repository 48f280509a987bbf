//! The distributed mode as production runs it, in this process: API replicas on one PostgreSQL
//! log, each answering reads from the read models persisted in PostgreSQL, which only the relay
//! (log to NATS JetStream) and a projection worker (JetStream to the read models, with `NOTIFY`)
//! bring forward.
//!
//! Every part is started through the library's own entry point, the one the `onbehalf serve
//! --read-models postgres`, `onbehalf relay` and `onbehalf project` subcommands call, with their
//! defaults, except the JetStream stream and consumer names: those are unique to the run, so the
//! bench can share a NATS server with others, and the stream (with its consumer) is deleted when
//! the bench stops.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use onbehalf::project::{self, ProjectConfig, ProjectHandle};
use onbehalf::relay::{
    self, EventPublisher, RelayConfig, RelayHandle, Role, StreamSettings, StreamSetupError,
};
use onbehalf::server::{ReadModelSource, RunningServer};
use uuid::Uuid;

use crate::seed::MixSetup;
use crate::served::{Backend, Served};
use crate::BenchError;

/// The longest the bench waits for the relay and the projection worker to carry the seeded log
/// into the read models.
const CATCH_UP: Duration = Duration::from_secs(120);

/// The longest the bench waits for the NATS server to accept a connection.
const NATS_CONNECT: Duration = Duration::from_secs(3);

/// How long the stream's setup and deletion wait for the broker's answer.
const NATS_CALL: Duration = Duration::from_secs(5);

/// Two API replicas on one seeded PostgreSQL log, a relay and a projection worker.
#[derive(Debug)]
pub struct Replicas {
    /// Replica A, which the bench sends commands to; it holds the database and data directory
    /// both replicas share.
    pub writer: Served,
    /// Replica B's URL, `http://127.0.0.1:<port>`; it learns of A's writes only through the
    /// relay, the worker and the read models in PostgreSQL.
    pub reader_url: String,
    /// How long the relay waits before reading the log again once it has published everything.
    pub relay_poll: Duration,
    /// The run's JetStream stream.
    pub stream: String,
    /// The run's durable consumer on it.
    pub consumer: String,
    reader: Option<RunningServer>,
    relay: Option<RelayHandle>,
    worker: Option<ProjectHandle>,
    jetstream: Option<jetstream::Context>,
}

/// What [`Replicas::start`] found instead of a NATS server.
#[derive(Debug)]
pub struct NatsUnreachable(pub String);

impl Replicas {
    /// Seeds `setup` into a fresh PostgreSQL database on `admin_url`, starts replica A on it
    /// reading from the read models in PostgreSQL, creates a stream of the run's own on the NATS
    /// server at `nats_url`, starts the relay and the projection worker, waits until the read
    /// models hold the whole seeded log, then starts replica B.
    ///
    /// `Ok(Err(_))` when no NATS server answers at `nats_url`; nothing was created then.
    pub async fn start(
        admin_url: &str,
        nats_url: &str,
        setup: MixSetup,
    ) -> Result<Result<Replicas, NatsUnreachable>, BenchError> {
        let client = match async_nats::ConnectOptions::new()
            .connection_timeout(NATS_CONNECT)
            .connect(nats_url)
            .await
        {
            Ok(client) => client,
            Err(e) => return Ok(Err(NatsUnreachable(e.to_string()))),
        };
        let writer = Served::start_reading(
            Backend::Postgres,
            admin_url,
            setup,
            false,
            ReadModelSource::Postgres,
        )
        .await?;
        let run = Uuid::new_v4().simple();
        let mut replicas = Replicas {
            writer,
            reader_url: String::new(),
            relay_poll: Duration::ZERO,
            stream: format!("ONBEHALF_BENCH_{run}"),
            consumer: format!("onbehalf-bench-{run}"),
            reader: None,
            relay: None,
            worker: None,
            jetstream: None,
        };
        match replicas.bring_up(client, nats_url).await {
            Ok(()) => Ok(Ok(replicas)),
            Err(e) => {
                if let Err(cleanup) = replicas.stop().await {
                    eprintln!("warning: cleaning up after a failed start: {cleanup}");
                }
                Err(e)
            }
        }
    }

    async fn bring_up(
        &mut self,
        client: async_nats::Client,
        nats_url: &str,
    ) -> Result<(), BenchError> {
        let database_url = self
            .writer
            .database_url()
            .ok_or_else(|| BenchError::Setup("replica A has no PostgreSQL database".into()))?
            .to_owned();

        // The stream is created here rather than by the relay, so that a refusal is reported
        // before anything waits on the relay, and so that the bench holds what deletes it.
        let settings = StreamSettings {
            name: self.stream.clone(),
            ..StreamSettings::builtin()
        };
        let publisher = EventPublisher::new(client, &self.stream, NATS_CALL);
        match publisher.ensure_stream(&settings).await {
            Ok(_) => self.jetstream = Some(publisher.jetstream().clone()),
            Err(e @ StreamSetupError::Refused { .. }) => {
                return Err(BenchError::Setup(format!(
                    "{e}; the relay's subjects ({}) may already be captured by another stream \
                     on the NATS server, such as one named ONBEHALF_BENCH_<run> left by a bench \
                     run that was killed, which must be deleted first",
                    settings.subjects.join(", ")
                )))
            }
            Err(e) => return Err(BenchError::Setup(e.to_string())),
        }

        let mut relay_config = RelayConfig::new(database_url.clone(), nats_url);
        relay_config.stream = settings;
        self.relay_poll = relay_config.poll_interval;
        self.relay = Some(
            relay::spawn(relay_config)
                .await
                .map_err(|e| BenchError::Setup(format!("relay: {e}")))?,
        );
        let mut worker_config = ProjectConfig::new(
            database_url,
            nats_url,
            Arc::new(self.writer.invitations.clone()),
        );
        worker_config.stream = self.stream.clone();
        worker_config.consumer = self.consumer.clone();
        self.worker = Some(
            project::spawn(worker_config)
                .await
                .map_err(|e| BenchError::Setup(format!("projection worker: {e}")))?,
        );

        let published = self.relay_caught_up().await?;
        self.worker_reached(published).await?;
        let reader = self.writer.replica(ReadModelSource::Postgres).await?;
        self.reader_url = format!("http://{}", reader.addr);
        self.reader = Some(reader);
        Ok(())
    }

    /// Waits until the relay has published the whole log; the last position it published.
    async fn relay_caught_up(&mut self) -> Result<u64, BenchError> {
        let relay = self
            .relay
            .as_mut()
            .ok_or_else(|| BenchError::Setup("the relay is not running".into()))?;
        let seen = relay
            .wait_for(CATCH_UP, |s| s.caught_up || s.role == Role::Stopped)
            .await;
        match seen {
            Ok(status) if status.role != Role::Stopped => Ok(status.acknowledged),
            Ok(status) | Err(status) => {
                let ended = match self.relay.take() {
                    Some(relay) if status.role == Role::Stopped => relay.shutdown().await.err(),
                    Some(relay) => {
                        relay.abort();
                        None
                    }
                    None => None,
                };
                Err(BenchError::Setup(match ended {
                    Some(e) => format!("the relay stopped: {e}"),
                    None => format!(
                        "the relay did not publish the seeded log within {} s ({status:?})",
                        CATCH_UP.as_secs()
                    ),
                }))
            }
        }
    }

    /// Waits until the projection worker has committed the read models up to `position`.
    async fn worker_reached(&mut self, position: u64) -> Result<(), BenchError> {
        let worker = self
            .worker
            .as_mut()
            .ok_or_else(|| BenchError::Setup("the projection worker is not running".into()))?;
        match worker.wait_for(CATCH_UP, |s| s.position >= position).await {
            Ok(_) => Ok(()),
            Err(status) => {
                // A worker that ended has dropped its status; shutting it down returns why.
                let ended = match self.worker.take() {
                    Some(worker) => worker.shutdown().await.err(),
                    None => None,
                };
                Err(BenchError::Setup(match ended {
                    Some(e) => format!("the projection worker stopped: {e}"),
                    None => format!(
                        "the projection worker did not reach position {position} within {} s \
                         ({status:?})",
                        CATCH_UP.as_secs()
                    ),
                }))
            }
        }
    }

    /// Stops replica B, the relay and the worker, deletes the stream (and its consumer with it),
    /// then stops replica A and drops the database; everything is attempted, and the first
    /// failure is returned.
    pub async fn stop(mut self) -> Result<(), BenchError> {
        let mut first = Ok(());
        let mut keep = |result: Result<(), BenchError>| {
            if first.is_ok() {
                first = result;
            }
        };
        if let Some(reader) = self.reader.take() {
            keep(reader.shutdown().await.map_err(BenchError::from));
        }
        if let Some(relay) = self.relay.take() {
            keep(
                relay
                    .shutdown()
                    .await
                    .map_err(|e| BenchError::Setup(format!("relay: {e}"))),
            );
        }
        if let Some(worker) = self.worker.take() {
            keep(
                worker
                    .shutdown()
                    .await
                    .map_err(|e| BenchError::Setup(format!("projection worker: {e}"))),
            );
        }
        if let Some(jetstream) = self.jetstream.take() {
            let deleted = tokio::time::timeout(NATS_CALL, jetstream.delete_stream(&self.stream))
                .await
                .map_err(|_| "no answer in time".to_owned())
                .and_then(|r| r.map_err(|e| e.to_string()));
            keep(deleted.map(drop).map_err(|e| {
                BenchError::Setup(format!("cannot delete stream {}: {e}", self.stream))
            }));
        }
        keep(self.writer.stop().await);
        first
    }
}
