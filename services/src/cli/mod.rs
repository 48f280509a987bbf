//! Building blocks shared by the command-line subcommands: reaching a server with a token, and
//! opening the log directly for offline debugging.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::auth::{self, Signer};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::store::EventStore;

pub mod audit;
pub mod history;
pub mod projections;

/// How a subcommand reaches a running server.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The server, e.g. `http://127.0.0.1:50051`.
    #[arg(
        long,
        default_value = "http://127.0.0.1:50051",
        env = "ONBEHALF_SERVER"
    )]
    pub server: String,
    /// A bearer token to call with; without it, a short-lived service token is signed with the
    /// data directory's development key.
    #[arg(long, env = "ONBEHALF_TOKEN")]
    pub token: Option<String>,
    /// The data directory whose development key signs the token when `--token` is not given.
    #[arg(
        long = "key-dir",
        default_value = "./onbehalf-data",
        env = "ONBEHALF_DATA_DIR"
    )]
    pub key_data_dir: PathBuf,
}

/// An interceptor that adds one bearer token to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(<redacted>)")
    }
}

impl Bearer {
    /// The interceptor for `token`.
    pub fn new(token: &str) -> Result<Self> {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::invalid("token", "is not a valid header value"))?;
        Ok(Self(value))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A channel whose every call carries the bearer token.
pub type AuthedChannel = InterceptedService<Channel, Bearer>;

impl ServerArgs {
    /// Connects to the server, calling as `--token` or as `service:<service>` with `scopes`.
    pub async fn connect(&self, service: &str, scopes: &str) -> Result<AuthedChannel> {
        let token = match &self.token {
            Some(token) => token.clone(),
            None => {
                let key = auth::find_signing_key(&auth::keys_dir(&self.key_data_dir))?.ok_or_else(
                    || {
                        Error::FailedPrecondition(format!(
                            "no signing key under {}; pass --token or --key-dir",
                            self.key_data_dir.display()
                        ))
                    },
                )?;
                let signer = Signer::load(&key, auth::DEFAULT_ISSUER, auth::DEFAULT_ISSUER)?;
                signer.sign(
                    &format!("service:{service}"),
                    Some(scopes),
                    SystemClock.now(),
                    chrono::Duration::minutes(15),
                )?
            }
        };
        let channel = Channel::from_shared(self.server.clone())
            .map_err(|e| Error::invalid("server", e.to_string()))?
            .connect()
            .await
            .map_err(|e| Error::Unavailable(format!("cannot reach {}: {e}", self.server)))?;
        Ok(InterceptedService::new(channel, Bearer::new(&token)?))
    }
}

/// How an offline subcommand opens the log directly.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Data directory of the embedded log.
    #[arg(long, default_value = "./onbehalf-data", env = "ONBEHALF_DATA_DIR")]
    pub data_dir: PathBuf,
    /// PostgreSQL URL; when given, the log is read there instead.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
}

impl StoreArgs {
    /// Opens an existing log (running migrations, as the server does); a data directory that
    /// holds no log is an error, so that a mistyped path creates nothing.
    pub async fn open(&self) -> Result<Arc<dyn EventStore>> {
        require_log(&self.data_dir, self.database_url.as_deref())?;
        Ok(match &self.database_url {
            Some(url) => Arc::new(PostgresStore::connect(url).await?),
            None => Arc::new(SqliteStore::open(&self.data_dir).await?),
        })
    }
}

/// Fails unless a log is there to open: the PostgreSQL URL given, or an embedded log in
/// `data_dir`, so that a process beside the server on a mistyped path creates nothing.
pub fn require_log(data_dir: &Path, database_url: Option<&str>) -> Result<()> {
    let file = data_dir.join(crate::store::sqlite::DATABASE_FILE);
    if database_url.is_none() && !file.is_file() {
        return Err(Error::FailedPrecondition(format!(
            "no log at {}; give the server's --data-dir, or --database-url",
            file.display()
        )));
    }
    Ok(())
}
