//! Latencies over gRPC: `CheckPermission` beside a no-op RPC on the same server behind the same
//! authentication, and read-your-writes (a command's response, then a read with its position as
//! `min_position`), on the server that took the command and on another API replica.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use onbehalf_proto::v1 as pb;
use rand::Rng;
use tonic::transport::Channel;

use crate::replicas::{NatsUnreachable, Replicas};
use crate::seed::{designer_id, mix_account_id, mix_owner_id, MixSetup};
use crate::served::{authorized, Backend, Served};
use crate::throughput::percentile;
use crate::BenchError;

/// The no-op service's one method.
const PING: &str = "/onbehalf.bench.Noop/Ping";

/// A gRPC service whose one method, `Ping`, takes and answers an empty message and does nothing:
/// mounted behind the API's authentication, it costs what the transport and the bearer-token
/// check cost, and nothing else.
#[derive(Debug, Clone, Copy, Default)]
pub struct Noop;

impl tonic::server::NamedService for Noop {
    const NAME: &'static str = "onbehalf.bench.Noop";
}

struct Ping;

impl tonic::server::UnaryService<()> for Ping {
    type Response = ();
    type Future = std::future::Ready<Result<tonic::Response<()>, tonic::Status>>;

    fn call(&mut self, _request: tonic::Request<()>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(())))
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Noop {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            if request.uri().path() == PING {
                let codec = tonic_prost::ProstCodec::<(), ()>::default();
                Ok(tonic::server::Grpc::new(codec).unary(Ping, request).await)
            } else {
                Ok(tonic::Status::unimplemented("no such method").into_http())
            }
        })
    }
}

async fn ping(channel: Channel, token: &str) -> Result<(), BenchError> {
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| BenchError::Setup(format!("channel: {e}")))?;
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    client
        .unary(
            authorized((), token)?,
            http::uri::PathAndQuery::from_static(PING),
            codec,
        )
        .await
        .map_err(|e| BenchError::Setup(format!("Ping refused: {e}")))?;
    Ok(())
}

/// p50, p99 and p99.9 in microseconds, and the number of calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quantiles {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Calls measured.
    pub calls: usize,
}

fn quantiles(mut latencies: Vec<Duration>) -> Quantiles {
    latencies.sort_unstable();
    Quantiles {
        p50_us: percentile(&latencies, 0.50),
        p99_us: percentile(&latencies, 0.99),
        p999_us: percentile(&latencies, 0.999),
        calls: latencies.len(),
    }
}

/// One row of the permission-check table.
#[derive(Debug, Clone)]
pub struct CheckRow {
    /// Which store the server runs on.
    pub store: &'static str,
    /// Concurrent callers.
    pub callers: usize,
    /// The no-op RPC.
    pub noop: Quantiles,
    /// `CheckPermission`.
    pub check: Quantiles,
    /// The stream read a check makes, alone, straight through tokio-postgres on the server's
    /// database (PostgreSQL only).
    pub read: Option<Quantiles>,
}

/// One row of the read-your-writes table.
#[derive(Debug, Clone)]
pub struct FreshRow {
    /// Which store and read side.
    pub store: &'static str,
    /// The read with the command's position as `min_position`.
    pub read: Quantiles,
    /// The command before it.
    pub command: Quantiles,
}

/// How long and how often.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Seconds per round and kind of call.
    pub seconds: f64,
    /// Rounds run first and not counted.
    pub warmup: usize,
    /// Rounds counted.
    pub rounds: usize,
    /// Read-your-writes samples.
    pub fresh_samples: usize,
}

/// Calls `call` from `callers` tasks for `seconds`; the latencies of every call.
async fn hammer<F, Fut>(callers: usize, seconds: f64, call: F) -> Result<Vec<Duration>, BenchError>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BenchError>> + Send,
{
    let call = Arc::new(call);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0;
            while Instant::now() < deadline {
                let started = Instant::now();
                call(caller, i).await?;
                latencies.push(started.elapsed());
                i += 1;
            }
            Ok::<_, BenchError>(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(
            task.await
                .map_err(|e| BenchError::Setup(format!("caller failed: {e}")))??,
        );
    }
    Ok(all)
}

/// `CheckPermission` and the no-op at each caller count, alternating round by round so that
/// both see the same machine.
pub async fn permission_checks(
    backend: Backend,
    admin_url: &str,
    setup: MixSetup,
    callers: &[usize],
    plan: Plan,
) -> Result<Vec<CheckRow>, BenchError> {
    let served = Served::start(backend, admin_url, setup, true).await?;
    let result = async {
        // A ticket desk asking about agency users, as internal systems do.
        let token = Arc::new(served.token("service:tickets", Some("access:check"))?);
        let channels = Arc::new(served.channels(8).await?);
        let reads = match served.database_url() {
            Some(url) => Some(crate::throughput::floor_pool(url)?),
            None => None,
        };
        let mut rows = Vec::new();
        for &n in callers {
            let (mut noop, mut check, mut read) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..plan.warmup + plan.rounds {
                let (t, c) = (token.clone(), channels.clone());
                let pinged = hammer(n, plan.seconds, move |caller, _| {
                    let (t, channel) = (t.clone(), c[caller % c.len()].clone());
                    async move { ping(channel, &t).await }
                })
                .await?;
                let (t, c) = (token.clone(), channels.clone());
                let accounts = setup.accounts;
                let designers = setup.designers;
                let checked = hammer(n, plan.seconds, move |caller, i| {
                    let (t, channel) = (t.clone(), c[caller % c.len()].clone());
                    let account = (caller * 7919 + i) % accounts;
                    let user = designer_id(((caller + i) % designers) as u64);
                    async move {
                        let mut access =
                            pb::access_service_client::AccessServiceClient::new(channel);
                        access
                            .check_permission(authorized(
                                pb::CheckPermissionRequest {
                                    account_id: mix_account_id(account).to_string(),
                                    user_id: user.to_string(),
                                    permission: pb::Permission::Tickets as i32,
                                    min_position: 0,
                                },
                                &t,
                            )?)
                            .await
                            .map_err(|e| BenchError::Setup(format!("CheckPermission: {e}")))?;
                        Ok(())
                    }
                })
                .await?;
                let read_alone = match &reads {
                    Some(pool) => read_streams(pool.clone(), n, plan.seconds, accounts).await?,
                    None => Vec::new(),
                };
                if round >= plan.warmup {
                    noop.extend(pinged);
                    check.extend(checked);
                    read.extend(read_alone);
                }
            }
            let row = CheckRow {
                store: backend_name(backend),
                callers: n,
                noop: quantiles(noop),
                check: quantiles(check),
                read: reads.as_ref().map(|_| quantiles(read)),
            };
            println!(
                "  {} callers={n}: no-op {:?}, check {:?}, read alone {:?}",
                row.store, row.noop, row.check, row.read
            );
            rows.push(row);
        }
        Ok::<_, BenchError>(rows)
    }
    .await;
    served.stop().await?;
    result
}

/// What a check's load of an account it has folded sends to PostgreSQL: a read of the events
/// after the version it holds, which finds none, from `callers` tasks on their own connections.
async fn read_streams(
    pool: deadpool_postgres::Pool,
    callers: usize,
    seconds: f64,
    accounts: usize,
) -> Result<Vec<Duration>, BenchError> {
    hammer(callers, seconds, move |caller, i| {
        let pool = pool.clone();
        let stream =
            onbehalf_events::account_stream(mix_account_id((caller * 7919 + i) % accounts));
        async move {
            let failed = |e: &dyn std::fmt::Display| BenchError::Setup(format!("stream read: {e}"));
            let client = pool.get().await.map_err(|e| failed(&e))?;
            let statement = client
                .prepare_cached(
                    "SELECT * FROM events WHERE stream_id = $1 AND version > $2 ORDER BY version",
                )
                .await
                .map_err(|e| failed(&e))?;
            let rows = client
                .query(&statement, &[&stream, &1_000_000_i64])
                .await
                .map_err(|e| failed(&e))?;
            if !rows.is_empty() {
                return Err(failed(&format!(
                    "{stream} has events past version 1,000,000"
                )));
            }
            Ok(())
        }
    })
    .await
}

fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "embedded (SQLite)",
        Backend::Postgres => "distributed (PostgreSQL)",
    }
}

/// The store label of the read-your-writes row measured across API replicas.
pub const ACROSS_REPLICAS: &str = "distributed, read on another replica (PostgreSQL + JetStream)";

/// Read-your-writes: an owner invites an address, then lists the account's invitations with the
/// invitation's position as `min_position`; the read's latency is the time from the command's
/// response until the read model has the invitation and answers.
pub async fn read_your_writes(
    backend: Backend,
    admin_url: &str,
    setup: MixSetup,
    plan: Plan,
) -> Result<FreshRow, BenchError> {
    let served = Served::start(backend, admin_url, setup, false).await?;
    let result = async {
        let channel = served.channels(1).await?.remove(0);
        sample_fresh(
            backend_name(backend),
            &served,
            channel.clone(),
            channel,
            setup,
            plan,
            Duration::ZERO,
        )
        .await
    }
    .await;
    served.stop().await?;
    result
}

/// Read-your-writes across API replicas, the distributed mode as production runs it: the
/// command goes to replica A, the read at its position to replica B, which learns of the write
/// only once the relay has published it to JetStream, the projection worker has written it into
/// the read models in PostgreSQL, and B's mirror of them has followed the worker's `NOTIFY`.
///
/// The relay looks at the log again only a poll interval after it last found it empty, so a
/// caller that writes right after its previous read would always land early in that interval;
/// a pause drawn uniformly from zero to the poll interval before each command (not counted)
/// lets the writes arrive at any moment of it, as independent clients' do.
///
/// `None` when no NATS server answers at `nats_url` (said on the output).
pub async fn read_across_replicas(
    admin_url: &str,
    nats_url: &str,
    setup: MixSetup,
    plan: Plan,
) -> Result<Option<FreshRow>, BenchError> {
    let replicas = match Replicas::start(admin_url, nats_url, setup).await? {
        Ok(replicas) => replicas,
        Err(NatsUnreachable(e)) => {
            println!("  {ACROSS_REPLICAS}: skipped, NATS not reachable at {nats_url}: {e}");
            return Ok(None);
        }
    };
    println!(
        "  {ACROSS_REPLICAS}: stream {}, consumer {}, relay polling every {} ms when idle",
        replicas.stream,
        replicas.consumer,
        replicas.relay_poll.as_millis()
    );
    let result = async {
        let writer = replicas.writer.channels(1).await?.remove(0);
        let reader = crate::served::connect(&replicas.reader_url).await?;
        sample_fresh(
            ACROSS_REPLICAS,
            &replicas.writer,
            writer,
            reader,
            setup,
            plan,
            replicas.relay_poll,
        )
        .await
    }
    .await;
    replicas.stop().await?;
    result.map(Some)
}

/// `InviteUser` through `writer`, then `ListInvitations` at its position through `reader`, one
/// caller, `plan.fresh_samples` times after a tenth as many warm-up samples; every read must
/// show the invitation. Before each command the caller pauses for a time drawn uniformly below
/// `pause` (none when zero), which is not counted.
async fn sample_fresh(
    store: &'static str,
    served: &Served,
    writer: Channel,
    reader: Channel,
    setup: MixSetup,
    plan: Plan,
    pause: Duration,
) -> Result<FreshRow, BenchError> {
    let mut invitations = pb::invitation_service_client::InvitationServiceClient::new(writer);
    let mut lists = pb::invitation_service_client::InvitationServiceClient::new(reader);
    let warmup = plan.fresh_samples / 10 + 1;
    let (mut reads, mut commands) = (Vec::new(), Vec::new());
    for i in 0..warmup + plan.fresh_samples {
        let account = i % setup.accounts;
        let owner = served.token(&mix_owner_id(account).to_string(), None)?;
        if !pause.is_zero() {
            let wait = rand::thread_rng().gen_range(Duration::ZERO..pause);
            tokio::time::sleep(wait).await;
        }
        let started = Instant::now();
        let invited = invitations
            .invite_user(authorized(
                pb::InviteUserRequest {
                    account_id: mix_account_id(account).to_string(),
                    email: format!("fresh{i}@yourcompany.com"),
                    permissions: vec![pb::Permission::Invoices as i32],
                    full_access: false,
                    request_id: format!("fresh-{i}"),
                },
                &owner,
            )?)
            .await
            .map_err(|e| BenchError::Setup(format!("InviteUser: {e}")))?
            .into_inner();
        let answered = Instant::now();
        let listed = lists
            .list_invitations(authorized(
                pb::ListInvitationsRequest {
                    account_id: mix_account_id(account).to_string(),
                    min_position: invited.position,
                    ..Default::default()
                },
                &owner,
            )?)
            .await
            .map_err(|e| BenchError::Setup(format!("ListInvitations: {e}")))?
            .into_inner();
        let read = answered.elapsed();
        let wanted = invited.invitation.map(|inv| inv.invitation_id);
        if !listed
            .invitations
            .iter()
            .any(|inv| Some(&inv.invitation_id) == wanted.as_ref())
        {
            return Err(BenchError::Setup(
                "a read at the command's position did not show its invitation".into(),
            ));
        }
        if i >= warmup {
            reads.push(read);
            commands.push(answered - started);
        }
    }
    let row = FreshRow {
        store,
        read: quantiles(reads),
        command: quantiles(commands),
    };
    println!(
        "  {}: read {:?}, command {:?}",
        row.store, row.read, row.command
    );
    Ok(row)
}
