//! The real server, started in this process on a loopback port over a store seeded with the
//! mix's starting point, and the mix driven against it over gRPC.

use std::time::{Duration, Instant};

use onbehalf::auth::{self, Signer};
use onbehalf::server::{ReadModelSource, RunningServer, ServerConfig};
use onbehalf::tokens::{InvitationTokens, TokenClaims};
use onbehalf_proto::v1 as pb;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::seed::{designer_id, mix_account_id, mix_designer_email, mix_owner_id, MixSetup};
use crate::throughput::Driver;
use crate::{BenchDatabase, BenchError, TempDir};

/// Where the served log lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite in the data directory (embedded).
    Sqlite,
    /// A fresh PostgreSQL database (distributed).
    Postgres,
}

/// A running server and what a client needs to call it.
#[derive(Debug)]
pub struct Served {
    /// The running server.
    pub running: RunningServer,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    signer: Signer,
    /// The server's invitation tokens (the bench plays the invitee's mailbox).
    pub invitations: InvitationTokens,
    config: ServerConfig,
    _data_dir: TempDir,
    database: Option<BenchDatabase>,
}

impl Served {
    /// Seeds `setup` into a fresh store of `backend`, then starts the server on it, with the
    /// no-op RPC mounted behind its authentication when `noop` is set; reads are answered from
    /// read models folded from the log in the server's process.
    pub async fn start(
        backend: Backend,
        admin_url: &str,
        setup: MixSetup,
        noop: bool,
    ) -> Result<Served, BenchError> {
        Self::start_reading(backend, admin_url, setup, noop, ReadModelSource::Log).await
    }

    /// [`Served::start`] with reads answered from `read_models`; [`ReadModelSource::Postgres`]
    /// needs [`Backend::Postgres`] and projection workers writing the read models.
    pub async fn start_reading(
        backend: Backend,
        admin_url: &str,
        setup: MixSetup,
        noop: bool,
        read_models: ReadModelSource,
    ) -> Result<Served, BenchError> {
        let data_dir = TempDir::new()?;
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(BenchDatabase::create(admin_url).await?),
        };
        let mut config = ServerConfig::new(&data_dir.0);
        config.listen = "127.0.0.1:0"
            .parse()
            .map_err(|e| BenchError::Setup(format!("listen address: {e}")))?;
        config.database_url = database.as_ref().map(|d| d.url.clone());
        config.read_models = read_models;
        let store = onbehalf::server::open_store(&config).await?;
        crate::seed::seed_mix(store.clone(), setup, 16).await?;
        drop(store);

        let running = onbehalf::server::spawn_with_service(
            config.clone(),
            noop.then_some(crate::latency::Noop),
        )
        .await?;
        let url = format!("http://{}", running.addr);
        let (key, _) = auth::ensure_dev_keypair(&data_dir.0)?;
        let signer = Signer::load(&key, auth::DEFAULT_ISSUER, auth::DEFAULT_ISSUER)?;
        let secret =
            InvitationTokens::load_or_create_secret(&data_dir.0.join("invitation.secret"))?;
        let invitations =
            InvitationTokens::new(secret, "http://localhost:8080/invitations/accept")?;
        Ok(Served {
            running,
            url,
            signer,
            invitations,
            config,
            _data_dir: data_dir,
            database,
        })
    }

    /// The PostgreSQL database the server's log is in, for [`Backend::Postgres`].
    pub fn database_url(&self) -> Option<&str> {
        self.database.as_ref().map(|d| d.url.as_str())
    }

    /// Starts another API replica on the same log and data directory (so the same signing keys
    /// and invitation secret: this server's tokens are good on it), on a loopback port of its
    /// own, reading from `read_models`. The caller shuts it down before [`Served::stop`].
    pub async fn replica(&self, read_models: ReadModelSource) -> Result<RunningServer, BenchError> {
        let mut config = self.config.clone();
        config.read_models = read_models;
        Ok(onbehalf::server::spawn(config).await?)
    }

    /// A bearer token for `sub` (a user id, or `service:<name>`) with `scope`.
    pub fn token(&self, sub: &str, scope: Option<&str>) -> Result<String, BenchError> {
        Ok(self
            .signer
            .sign(sub, scope, chrono::Utc::now(), chrono::Duration::hours(4))?)
    }

    /// `connections` plain-text channels to the server.
    pub async fn channels(&self, connections: usize) -> Result<Vec<Channel>, BenchError> {
        let mut channels = Vec::new();
        for _ in 0..connections.max(1) {
            channels.push(connect(&self.url).await?);
        }
        Ok(channels)
    }

    /// Stops the server and drops its database.
    pub async fn stop(self) -> Result<(), BenchError> {
        self.running.shutdown().await?;
        if let Some(database) = self.database {
            database.drop_database().await?;
        }
        Ok(())
    }
}

/// A plain-text channel to the server at `url` (`http://127.0.0.1:<port>`).
pub async fn connect(url: &str) -> Result<Channel, BenchError> {
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| BenchError::Setup(format!("endpoint: {e}")))?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| BenchError::Setup(format!("cannot connect to the server: {e}")))
}

/// `message` with `authorization: Bearer <token>`.
pub fn authorized<T>(message: T, token: &str) -> Result<tonic::Request<T>, BenchError> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|e| BenchError::Setup(format!("authorization header: {e}")))?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

fn rpc(e: tonic::Status) -> BenchError {
    BenchError::Setup(format!("RPC refused: {} {}", e.code(), e.message()))
}

/// The mix over gRPC: the same five commands as the in-process driver, each an RPC carrying the
/// caller's bearer token and a request id.
#[derive(Debug)]
pub struct GrpcMix {
    channels: Vec<Channel>,
    owners: Vec<String>,
    designers: Vec<String>,
    invitations: InvitationTokens,
}

impl GrpcMix {
    /// Tokens for every owner and agency user of `setup`, and `connections` channels.
    pub async fn new(
        served: &Served,
        setup: MixSetup,
        connections: usize,
    ) -> Result<Self, BenchError> {
        let owners = (0..setup.accounts)
            .map(|a| served.token(&mix_owner_id(a).to_string(), None))
            .collect::<Result<_, _>>()?;
        let designers = (0..setup.designers)
            .map(|d| served.token(&designer_id(d as u64).to_string(), None))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            channels: served.channels(connections).await?,
            owners,
            designers,
            invitations: served.invitations.clone(),
        })
    }
}

/// The position an RPC answered with, and the time it took.
fn timed<T>(started: Instant, latencies: &mut Vec<Duration>, value: T) -> T {
    latencies.push(started.elapsed());
    value
}

#[async_trait::async_trait]
impl Driver for GrpcMix {
    async fn cycle(
        &self,
        account: usize,
        designer: usize,
        n: usize,
        latencies: &mut Vec<Duration>,
    ) -> Result<(), BenchError> {
        let channel = self.channels[account % self.channels.len()].clone();
        let account_id = mix_account_id(account);
        let owner = &self.owners[account];
        let user = &self.designers[designer];
        let user_id = designer_id(designer as u64);
        let mut invitations =
            pb::invitation_service_client::InvitationServiceClient::new(channel.clone());
        let mut access = pb::access_service_client::AccessServiceClient::new(channel.clone());
        let mut hosting = pb::hosting_service_client::HostingServiceClient::new(channel.clone());
        let mut billing = pb::billing_service_client::BillingServiceClient::new(channel);
        let request_id =
            |step: u32| format!("mix-{account}-{n}-{step}-{}", Uuid::new_v4().simple());

        let started = Instant::now();
        let invited = invitations
            .invite_user(authorized(
                pb::InviteUserRequest {
                    account_id: account_id.to_string(),
                    email: mix_designer_email(designer),
                    permissions: vec![pb::Permission::Products as i32],
                    full_access: false,
                    request_id: request_id(1),
                },
                owner,
            )?)
            .await
            .map_err(rpc)?
            .into_inner();
        timed(started, latencies, ());
        let invitation_id = invited
            .invitation
            .map(|i| i.invitation_id)
            .ok_or_else(|| BenchError::Setup("InviteUser answered no invitation".into()))?;
        let invitation_id = Uuid::parse_str(&invitation_id)
            .map_err(|e| BenchError::Setup(format!("invitation id: {e}")))?;

        // The bench plays the invitee's mailbox: it mints the link's token the server mailed.
        let token = self.invitations.mint(TokenClaims {
            account_id,
            invitation_id,
            generation: 0,
        });
        let started = Instant::now();
        invitations
            .accept_invitation(authorized(
                pb::AcceptInvitationRequest {
                    token,
                    request_id: request_id(2),
                },
                user,
            )?)
            .await
            .map_err(rpc)?;
        timed(started, latencies, ());

        let started = Instant::now();
        access
            .grant_permission(authorized(
                pb::GrantPermissionRequest {
                    account_id: account_id.to_string(),
                    user_id: user_id.to_string(),
                    permissions: vec![
                        pb::Permission::Orders as i32,
                        pb::Permission::Invoices as i32,
                    ],
                    request_id: request_id(3),
                },
                owner,
            )?)
            .await
            .map_err(rpc)?;
        timed(started, latencies, ());

        let started = Instant::now();
        let ordered = hosting
            .order_service(authorized(
                pb::OrderServiceRequest {
                    account_id: account_id.to_string(),
                    product_id: crate::seed::MIX_PRODUCT.to_string(),
                    domain: String::new(),
                    billing_cycle: pb::BillingCycle::Monthly as i32,
                    request_id: request_id(4),
                },
                user,
            )?)
            .await
            .map_err(rpc)?
            .into_inner();
        timed(started, latencies, ());

        let started = Instant::now();
        billing
            .pay_invoice(authorized(
                pb::PayInvoiceRequest {
                    account_id: account_id.to_string(),
                    invoice_id: ordered.invoice_id,
                    amount_minor: crate::seed::MIX_PRICE_MINOR,
                    reference: format!("card-{account}-{n}"),
                    request_id: request_id(5),
                },
                user,
            )?)
            .await
            .map_err(rpc)?;
        timed(started, latencies, ());
        Ok(())
    }
}
