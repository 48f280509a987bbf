//! Two server processes' worth of `onbehalf` in one test: both spawned on one log and one data
//! directory (so one signing key), on free loopback ports, with a manual clock.

use std::sync::Arc;

use chrono::Utc;
use onbehalf::auth::{find_signing_key, keys_dir, Signer, DEFAULT_ISSUER};
use onbehalf::cli::{AuthedChannel, Bearer};
use onbehalf::clock::ManualClock;
use onbehalf::server::{self, RunningServer, ServerConfig};
use onbehalf::testing::TempDataDir;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The two servers and the signer of their tokens.
pub struct TwoServers {
    pub reader: RunningServer,
    pub writer: RunningServer,
    pub signer: Signer,
    /// Kept so that the data directory outlives the servers.
    _dir: TempDataDir,
}

/// Spawns a reading and a writing server on `database_url` (SQLite in a shared data directory
/// when `None`), each configured by `configure` after the shared settings.
pub async fn spawn(
    database_url: Option<String>,
    configure: impl FnOnce(&mut ServerConfig),
) -> TwoServers {
    let dir = TempDataDir::new();
    let mut config = ServerConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse().expect("a socket address");
    config.database_url = database_url;
    config.clock = Arc::new(ManualClock::new(Utc::now()));
    configure(&mut config);
    let reader = server::spawn(config.clone())
        .await
        .expect("the reading server starts");
    let writer = server::spawn(config)
        .await
        .expect("the writing server starts");
    let key = find_signing_key(&keys_dir(dir.path()))
        .expect("the key directory is readable")
        .expect("a key");
    let signer = Signer::load(&key, DEFAULT_ISSUER, DEFAULT_ISSUER).expect("the key loads");
    TwoServers {
        reader,
        writer,
        signer,
        _dir: dir,
    }
}

/// A channel to `addr` carrying a token for `subject` with `scope`.
pub async fn connect(
    addr: std::net::SocketAddr,
    signer: &Signer,
    subject: &str,
    scope: Option<&str>,
) -> AuthedChannel {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a URI")
        .connect()
        .await
        .expect("the server accepts connections");
    let token = signer
        .sign(subject, scope, Utc::now(), chrono::Duration::hours(1))
        .expect("a token");
    InterceptedService::new(channel, Bearer::new(&token).expect("a header value"))
}
