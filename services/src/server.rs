//! Assembling and running the server: store, keys, executor, read models, gRPC services.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use onbehalf_projections::ReadModels;
use onbehalf_proto::v1 as pb;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;

use crate::auth::{self, Verifier};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::grpc::{self, App, Settings};
use crate::limit::SizeLimitLayer;
use crate::read::ReadSide;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::store::EventStore;
use crate::tokens::InvitationTokens;

/// Everything the server is configured with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The data directory: the SQLite log (when no database URL is given), keys and secrets.
    pub data_dir: PathBuf,
    /// A PostgreSQL URL; when set, the log lives there instead of in the data directory.
    pub database_url: Option<String>,
    /// Expected `iss` of bearer tokens.
    pub issuer: String,
    /// Expected `aud` of bearer tokens.
    pub audience: String,
    /// Extra public keys (`<kid>.pub.pem` files) besides those in the data directory.
    pub verification_keys: Vec<PathBuf>,
    /// The file holding the invitation MAC secret; default `<data dir>/invitation.secret`.
    pub invitation_secret_file: Option<PathBuf>,
    /// The client-area page that accepts invitations; tokens are appended as `?token=`.
    pub accept_url_base: String,
    /// The largest request message accepted, in bytes.
    pub max_message_bytes: usize,
    /// API behaviour settings.
    pub settings: Settings,
    /// The clock every decision reads.
    pub clock: Arc<dyn Clock>,
    /// TLS for the gRPC listener; without it the server listens in plain text, on loopback only.
    pub tls: Option<TlsConfig>,
    /// How often the verification keys are read again from their files.
    pub key_reload_interval: std::time::Duration,
    /// When set, this process also runs the renewal and reminder scheduler.
    pub scheduler: Option<crate::scheduler::SchedulerConfig>,
    /// Where reads are answered from.
    pub read_models: ReadModelSource,
    /// How often read models folded from the log look for appends nobody announced to them.
    /// Appends of this process wake them at once, and so do other processes' appends to a
    /// PostgreSQL log while this process listens for its commits; the poll covers the rest.
    pub log_poll_interval: std::time::Duration,
}

/// Where a server's reads are answered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadModelSource {
    /// Read models folded from the log in this process (the embedded mode's way).
    #[default]
    Log,
    /// A mirror of the read models projection workers keep in PostgreSQL; needs a database URL.
    Postgres,
}

/// Where the listener's certificate and key are, and whether clients must present one.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

fn read_pem(path: &std::path::Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::Internal(format!("cannot read the {what} {}: {e}", path.display())))
}

impl TlsConfig {
    fn server_config(&self) -> Result<tonic::transport::ServerTlsConfig> {
        let identity = tonic::transport::Identity::from_pem(
            read_pem(&self.cert, "TLS certificate")?,
            read_pem(&self.key, "TLS key")?,
        );
        let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(read_pem(
                ca,
                "client CA",
            )?));
        }
        Ok(config)
    }
}

impl ServerConfig {
    /// The defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: data_dir.into(),
            database_url: None,
            issuer: auth::DEFAULT_ISSUER.into(),
            audience: auth::DEFAULT_ISSUER.into(),
            verification_keys: Vec::new(),
            invitation_secret_file: None,
            accept_url_base: "http://localhost:8080/invitations/accept".into(),
            max_message_bytes: 64 * 1024,
            settings: Settings::default(),
            clock: Arc::new(SystemClock),
            tls: None,
            key_reload_interval: std::time::Duration::from_secs(10),
            scheduler: None,
            read_models: ReadModelSource::Log,
            log_poll_interval: crate::read::POLL,
        }
    }
}

/// A running server.
#[derive(Debug)]
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<()>>,
    scheduler: Option<JoinHandle<()>>,
}

impl RunningServer {
    /// Stops accepting calls, lets running ones finish, and waits for the server to end.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(scheduler) = self.scheduler.take() {
            scheduler.abort();
        }
        (&mut self.handle)
            .await
            .map_err(|e| Error::Internal(format!("server task failed: {e}")))?
    }

    /// Waits until the server ends by itself (an error) or `signal` completes.
    pub async fn run_until(mut self, signal: impl std::future::Future<Output = ()>) -> Result<()> {
        tokio::select! {
            result = &mut self.handle => {
                result.map_err(|e| Error::Internal(format!("server task failed: {e}")))?
            }
            () = signal => self.shutdown().await,
        }
    }
}

/// Every gRPC service the server offers, as the health service reports them.
pub const SERVICE_NAMES: &[&str] = &[
    "onbehalf.v1.UserService",
    "onbehalf.v1.AccountService",
    "onbehalf.v1.InvitationService",
    "onbehalf.v1.AccessService",
    "onbehalf.v1.CatalogService",
    "onbehalf.v1.HostingService",
    "onbehalf.v1.BillingService",
    "onbehalf.v1.NotificationService",
    "onbehalf.v1.AuditService",
    "onbehalf.v1.HistoryService",
];

/// Verification keys, `kid` → PEM-encoded public key, in order.
type KeyPems = Vec<(String, Vec<u8>)>;

/// The verification keys the configuration names, `kid` → PEM: every `*.pub.pem` of the key
/// directory and every `--verification-key` file, in order; and, apart, why each file that
/// cannot be read or holds no Ed25519 public key was left out.
fn verification_keys(config: &ServerConfig) -> Result<(KeyPems, Vec<String>)> {
    let mut files = auth::key_files(&auth::keys_dir(&config.data_dir))?;
    for path in &config.verification_keys {
        let kid = auth::public_kid(path).ok_or_else(|| {
            Error::Internal(format!("{} must be named `<kid>.pub.pem`", path.display()))
        })?;
        files.push((kid, path.clone()));
    }

    let (mut keys, mut problems) = (Vec::new(), Vec::new());
    for (kid, path) in files {
        let checked = std::fs::read(&path)
            .map_err(|e| Error::Internal(format!("cannot read {}: {e}", path.display())))
            .and_then(|pem| Verifier::check_key(&kid, &pem).map(|()| pem));
        match checked {
            Ok(pem) => keys.push((kid, pem)),
            Err(e) => problems.push(e.to_string()),
        }
    }
    Ok((keys, problems))
}

/// Reloads the verification keys every [`ServerConfig::key_reload_interval`], so that a key
/// added to (or removed from) the key files takes effect without a restart.
///
/// A file that cannot be read or holds no Ed25519 public key is left out, and said so at every
/// reload: a key whose file went missing or was broken is refused, never kept. The verifier is
/// replaced only when the keys change, so that it keeps remembering the tokens it accepted.
fn spawn_key_reload(config: ServerConfig, verifier: grpc::SharedVerifier, mut known: KeyPems) {
    let weak = Arc::downgrade(&verifier);
    drop(verifier);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(config.key_reload_interval).await;
            let Some(verifier) = weak.upgrade() else {
                return;
            };
            let (keys, problems) = match verification_keys(&config) {
                Ok(found) => found,
                Err(e) => {
                    tracing::error!(error = %e, "verification keys not reloaded; keeping the current ones");
                    continue;
                }
            };
            for problem in &problems {
                tracing::error!(error = %problem, "verification key left out");
            }
            if keys == known {
                continue;
            }
            match Verifier::new(&config.issuer, &config.audience, &keys) {
                Ok(fresh) => {
                    tracing::info!(kids = ?fresh.kids(), "verification keys reloaded");
                    *verifier.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
                    known = keys;
                }
                Err(e) => {
                    tracing::error!(error = %e, "verification keys not reloaded; keeping the current ones");
                }
            }
        }
    });
}

/// Opens the store the configuration names, running its migrations.
pub async fn open_store(config: &ServerConfig) -> Result<Arc<dyn EventStore>> {
    Ok(match &config.database_url {
        Some(url) => Arc::new(PostgresStore::connect(url).await?),
        None => Arc::new(SqliteStore::open(&config.data_dir).await?),
    })
}

/// Starts the server and returns once it listens.
pub async fn spawn(config: ServerConfig) -> Result<RunningServer> {
    // Without an extra service, any service type stands for the absent one.
    type Absent = pb::history_service_server::HistoryServiceServer<grpc::history::History>;
    spawn_with_service::<Absent>(config, None).await
}

/// Starts the server like [`spawn`], with `extra` mounted beside the API's own services, behind
/// the same bearer-token authentication and the same layers.
///
/// This is for programs that embed the server; the benchmark mounts a no-op RPC with it, to
/// measure what authentication and transport alone cost next to an API call.
pub async fn spawn_with_service<S>(config: ServerConfig, extra: Option<S>) -> Result<RunningServer>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    if config.tls.is_none() && !config.listen.ip().is_loopback() {
        return Err(Error::FailedPrecondition(format!(
            "refusing to listen in plain text on {}: plain text is for loopback only; give --tls-cert and --tls-key",
            config.listen
        )));
    }
    let tls = config
        .tls
        .as_ref()
        .map(TlsConfig::server_config)
        .transpose()?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        Error::Internal(format!("cannot create {}: {e}", config.data_dir.display()))
    })?;
    // The PostgreSQL store is kept by its type too: its commits are followed to wake the reads.
    let (store, postgres): (Arc<dyn EventStore>, Option<PostgresStore>) = match &config.database_url
    {
        Some(url) => {
            let postgres = PostgresStore::connect(url).await?;
            (Arc::new(postgres.clone()), Some(postgres))
        }
        None => (Arc::new(SqliteStore::open(&config.data_dir).await?), None),
    };

    // LIMITATION: a data directory without a private key gets a new trusted signing key pair at every such start, and a development key retired by removing only its public half gets that half back; there is no setting that forbids either.
    let (key_path, created) = auth::ensure_dev_keypair(&config.data_dir)?;
    if created {
        tracing::info!(path = %key_path.display(), "created a development signing key pair");
    }
    let (keys, mut problems) = verification_keys(&config)?;
    if !problems.is_empty() {
        return Err(Error::Internal(problems.remove(0)));
    }
    let verifier = Verifier::new(&config.issuer, &config.audience, &keys)?;
    let verifier = Arc::new(std::sync::RwLock::new(Arc::new(verifier)));
    spawn_key_reload(config.clone(), verifier.clone(), keys);

    let secret_path = config
        .invitation_secret_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("invitation.secret"));
    let secret = InvitationTokens::load_or_create_secret(&secret_path)?;
    let tokens = Arc::new(InvitationTokens::new(secret, &config.accept_url_base)?);

    let (appended_tx, appended_rx) = watch::channel(0);
    let executor = Executor::new(store.clone(), config.clock.clone(), appended_tx.clone());
    let read = match (config.read_models, &config.database_url) {
        (ReadModelSource::Postgres, Some(url)) => {
            let read_models = crate::readmodel_pg::ReadModelStore::connect(url)
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))?;
            ReadSide::follow_postgres(read_models, tokens.clone()).await?
        }
        (ReadModelSource::Postgres, None) => {
            return Err(Error::FailedPrecondition(
                "read models in PostgreSQL need a database URL".into(),
            ))
        }
        (ReadModelSource::Log, _) => {
            if let Some(postgres) = postgres {
                // Other processes' commits wake the feed like this process's own appends. The
                // follower ends once the feed, the last receiver, has ended with the server.
                tokio::spawn(postgres.keep_following_appends(appended_tx));
            }
            ReadSide::start_polling(
                store,
                ReadModels::new(tokens.clone()),
                appended_rx,
                config.log_poll_interval,
            )
            .await?
        }
    };
    let scheduler = config.scheduler.clone().map(|schedule| {
        crate::scheduler::Scheduler::new(executor.clone(), read.clone(), schedule).spawn()
    });
    let app = App::new(executor, read, tokens, config.settings.clone());

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Internal(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("cannot read the listening address: {e}")))?;
    let incoming = incoming(listener);

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    for service in SERVICE_NAMES {
        health_reporter
            .set_service_status(*service, tonic_health::ServingStatus::Serving)
            .await;
    }
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(onbehalf_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| Error::Internal(format!("cannot build reflection: {e}")))?;
    // Older clients (grpcurl before 1.8.8, grpcio's reflection) speak only v1alpha.
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| Error::Internal(format!("cannot build reflection: {e}")))?;

    let auth = grpc::authenticator(verifier);
    let limit = config.max_message_bytes + 1024;
    macro_rules! guarded {
        ($module:ident :: $server:ident, $svc:expr) => {
            InterceptedService::new(
                pb::$module::$server::new($svc)
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(16 << 20),
                auth.clone(),
            )
        };
    }
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| Error::Internal(format!("cannot use the TLS configuration: {e}")))?;
    }
    let router = builder
        .layer(SizeLimitLayer::new(config.max_message_bytes))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(guarded!(
            user_service_server::UserServiceServer,
            grpc::users::Users(app.clone())
        ))
        .add_service(guarded!(
            account_service_server::AccountServiceServer,
            grpc::accounts::Accounts(app.clone())
        ))
        .add_service(guarded!(
            invitation_service_server::InvitationServiceServer,
            grpc::invitations::Invitations(app.clone())
        ))
        .add_service(guarded!(
            access_service_server::AccessServiceServer,
            grpc::access::Access(app.clone())
        ))
        .add_service(guarded!(
            catalog_service_server::CatalogServiceServer,
            grpc::catalog::CatalogApi(app.clone())
        ))
        .add_service(guarded!(
            hosting_service_server::HostingServiceServer,
            grpc::hosting::Hosting(app.clone())
        ))
        .add_service(guarded!(
            billing_service_server::BillingServiceServer,
            grpc::billing::Billing(app.clone())
        ))
        .add_service(guarded!(
            notification_service_server::NotificationServiceServer,
            grpc::notifications::Notifications(app.clone())
        ))
        .add_service(guarded!(
            audit_service_server::AuditServiceServer,
            grpc::audit::Audit(app.clone())
        ))
        .add_service(guarded!(
            history_service_server::HistoryServiceServer,
            grpc::history::History(app.clone())
        ))
        .add_optional_service(extra.map(|svc| InterceptedService::new(svc, auth.clone())));

    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = shutdown_rx.await;
            })
            .await
            .map_err(|e| Error::Internal(format!("server failed: {e}")))
    });
    match &config.tls {
        Some(tls) if tls.client_ca.is_some() => {
            tracing::info!(%addr, "onbehalf listening with mutual TLS")
        }
        Some(_) => tracing::info!(%addr, "onbehalf listening with TLS"),
        None => tracing::info!(%addr, "onbehalf listening in plain text (loopback only)"),
    }
    Ok(RunningServer {
        scheduler,
        addr,
        shutdown: Some(shutdown_tx),
        handle,
    })
}

/// The connections `listener` accepts, each with `TCP_NODELAY` set.
///
/// Built from a listener, tonic's incoming stream sets no socket options of its own. Without
/// `TCP_NODELAY` the last frames of an answer can wait for the client's delayed acknowledgement
/// (about 40 ms on Linux): under 64 concurrent callers about one call in a thousand took 45 ms
/// instead of under 10.
fn incoming(listener: tokio::net::TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    #[tokio::test]
    async fn accepted_connections_send_without_waiting_for_acknowledgements() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = incoming(listener);

        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();

        assert!(accepted.nodelay().unwrap());
    }

    /// The public half of a fresh key pair made in a directory of its own: its `kid` and file.
    fn another_public_key(elsewhere: &crate::testing::TempDataDir) -> (String, PathBuf) {
        auth::ensure_dev_keypair(elsewhere.path()).unwrap();
        let (keys, _) = verification_keys(&ServerConfig::new(elsewhere.path())).unwrap();
        let kid = keys[0].0.clone();
        let file = auth::keys_dir(elsewhere.path()).join(format!("{kid}.pub.pem"));
        (kid, file)
    }

    async fn kids_once_reloaded(verifier: &grpc::SharedVerifier, wanted: &[&str]) -> Vec<String> {
        let mut kids = Vec::new();
        for _ in 0..100 {
            kids = verifier.read().unwrap().kids();
            if kids == wanted {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        kids
    }

    #[tokio::test]
    async fn reloads_replace_the_verifier_only_when_keys_change_and_refuse_broken_or_missing_ones()
    {
        let dir = crate::testing::TempDataDir::new();
        auth::ensure_dev_keypair(dir.path()).unwrap();
        let (other_dir, extra_dir) = (
            crate::testing::TempDataDir::new(),
            crate::testing::TempDataDir::new(),
        );
        let (other, other_file) = another_public_key(&other_dir);
        let (extra, extra_file) = another_public_key(&extra_dir);
        let mut config = ServerConfig::new(dir.path());
        config.key_reload_interval = std::time::Duration::from_millis(10);
        config.verification_keys = vec![extra_file.clone()];
        let (keys, problems) = verification_keys(&config).unwrap();
        assert_eq!(problems, Vec::<String>::new());
        let dev = keys[0].0.clone();
        let mut expected = vec![dev.clone(), extra.clone()];
        expected.sort();
        let started = Arc::new(Verifier::new(&config.issuer, &config.audience, &keys).unwrap());
        assert_eq!(started.kids(), expected);
        let verifier: grpc::SharedVerifier = Arc::new(std::sync::RwLock::new(started.clone()));
        spawn_key_reload(config.clone(), verifier.clone(), keys);

        // Unchanged keys: the same verifier, and with it the tokens it remembers.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(Arc::ptr_eq(&started, &verifier.read().unwrap()));

        // A broken file beside a new key, the development key retired and the extra key's file
        // gone: the new key is taken, and neither the broken nor the missing one is kept.
        let keys_dir = auth::keys_dir(dir.path());
        std::fs::write(keys_dir.join("broken.pub.pem"), b"not a key").unwrap();
        std::fs::copy(&other_file, keys_dir.join(format!("{other}.pub.pem"))).unwrap();
        std::fs::remove_file(keys_dir.join(format!("{dev}.pub.pem"))).unwrap();
        std::fs::remove_file(&extra_file).unwrap();
        assert_eq!(
            kids_once_reloaded(&verifier, &[&other]).await,
            vec![other.clone()]
        );
        let (keys, problems) = verification_keys(&config).unwrap();
        assert_eq!(
            keys.iter().map(|(kid, _)| kid.as_str()).collect::<Vec<_>>(),
            vec![other.as_str()]
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("verification key `broken` is not an Ed25519 public key"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with(&format!("cannot read {}", extra_file.display())),
            "{problems:?}"
        );

        // At start, the same problems are refused outright.
        let Err(refused) = spawn(config).await else {
            panic!("a server started with a broken key file");
        };
        assert!(
            refused
                .to_string()
                .contains("verification key `broken` is not an Ed25519 public key"),
            "{refused}"
        );
    }
}
