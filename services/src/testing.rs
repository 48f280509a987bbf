//! Helpers shared by the test suites of every crate: a throwaway PostgreSQL database, a
//! throwaway data directory, and NATS servers (the shared one, or a private one to stop at will).
//!
//! These are for tests only. They panic on setup failures a test cannot recover from, because a
//! test that silently ran against the wrong place could not fail.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::NoTls;

/// The environment variable naming the PostgreSQL server tests may create databases on.
pub const DATABASE_URL_ENV: &str = "ONBEHALF_TEST_DATABASE_URL";

/// The server used when [`DATABASE_URL_ENV`] is not set: the local one, user `postgres`.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The environment variable that, set to `1`, turns a missing service into a test failure.
pub const REQUIRE_SERVICES_ENV: &str = "ONBEHALF_REQUIRE_SERVICES";

/// How long the helpers wait for the server before calling it unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether tests must fail rather than skip when a service they need is not reachable.
pub fn require_services() -> bool {
    std::env::var(REQUIRE_SERVICES_ENV).is_ok_and(|value| value == "1")
}

/// A fresh, empty PostgreSQL database created for one test.
///
/// [`TestDatabase::drop_database`] removes it; dropping the value without calling it removes
/// the database too, best effort, so a failing test leaves nothing behind.
#[derive(Debug)]
pub struct TestDatabase {
    /// The URL of the new database, for [`crate::store::postgres::PostgresStore::connect`].
    pub url: String,
    name: String,
    admin_url: String,
    dropped: bool,
}

/// Creates a database `onbehalf_test_<random>` on the server named by
/// `ONBEHALF_TEST_DATABASE_URL` (default [`DEFAULT_DATABASE_URL`]).
///
/// When the server cannot be reached it prints `skipped: PostgreSQL not reachable at <url>`
/// and returns `None`, so a machine without PostgreSQL still runs the other tests; with
/// `ONBEHALF_REQUIRE_SERVICES=1` it panics instead. It panics if the server is reachable but
/// refuses to create the database.
pub async fn postgres_test_database() -> Option<TestDatabase> {
    let admin_url =
        std::env::var(DATABASE_URL_ENV).unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());

    let admin = match connect(&admin_url).await {
        Ok(client) => client,
        Err(err) => {
            if require_services() {
                panic!(
                    "PostgreSQL not reachable at {admin_url} and {REQUIRE_SERVICES_ENV}=1: {err:?}"
                );
            }
            println!("skipped: PostgreSQL not reachable at {admin_url}");
            return None;
        }
    };

    let name = format!("onbehalf_test_{}", uuid::Uuid::new_v4().simple());
    // template0 never has sessions, so concurrent tests cannot trip over one another the way
    // they can when copying template1 while someone is connected to it.
    if let Err(err) = admin
        .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0"))
        .await
    {
        panic!("cannot create test database {name} at {admin_url}: {err}");
    }

    Some(TestDatabase {
        url: with_database(&admin_url, &name),
        name,
        admin_url,
        dropped: false,
    })
}

impl TestDatabase {
    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Opens a plain connection to the test database, for tests that need raw SQL beside a
    /// store. The connection runs on a spawned task until the client is dropped.
    pub async fn client(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        connect(&self.url).await
    }

    /// Drops the database, ending any session still connected to it.
    pub async fn drop_database(mut self) -> Result<(), tokio_postgres::Error> {
        self.dropped = true;
        drop_database(&self.admin_url, &self.name).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // Drop cannot await, and may run inside a runtime that must not be blocked on, so the
        // cleanup gets a small runtime of its own on its own thread.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let cleanup = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = runtime.block_on(drop_database(&admin_url, &name));
            }
        });
        let _ = cleanup.join();
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.connect_timeout(CONNECT_TIMEOUT);
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        // The connection ends when the client is dropped; an error then has no one to go to.
        let _ = connection.await;
    });
    Ok(client)
}

async fn drop_database(admin_url: &str, name: &str) -> Result<(), tokio_postgres::Error> {
    let admin = connect(admin_url).await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
}

/// `url` with its database replaced by `name`, for both URL and key=value connection strings.
fn with_database(url: &str, name: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return format!("{url} dbname={name}");
    };
    let rest_start = scheme_end + 3;
    let query_start = url[rest_start..]
        .find('?')
        .map_or(url.len(), |i| rest_start + i);
    let path_start = url[rest_start..query_start]
        .find('/')
        .map_or(query_start, |i| rest_start + i);
    format!("{}/{name}{}", &url[..path_start], &url[query_start..])
}

/// A directory under the system's temporary directory, removed with everything in it when the
/// value is dropped.
#[derive(Debug)]
pub struct TempDataDir {
    path: PathBuf,
}

impl TempDataDir {
    /// Creates a fresh, empty directory `onbehalf-test-<random>`.
    ///
    /// Panics if the directory cannot be created: no test can run without it.
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(format!("onbehalf-test-{}", uuid::Uuid::new_v4()));
        if let Err(err) = std::fs::create_dir_all(&path) {
            panic!(
                "cannot create test data directory {}: {err}",
                path.display()
            );
        }
        Self { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for TempDataDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDataDir {
    fn drop(&mut self) {
        // Best effort: a leftover directory in the temporary directory harms nothing.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The environment variable naming a NATS server (with JetStream) that tests may use, each with
/// stream names of its own.
pub const NATS_URL_ENV: &str = "ONBEHALF_TEST_NATS_URL";

/// The NATS server used when [`NATS_URL_ENV`] is not set: the local one.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// The environment variable naming the `nats-server` binary [`NatsTestServer`] runs.
pub const NATS_SERVER_ENV: &str = "ONBEHALF_NATS_SERVER";

/// The shared NATS server's URL (`ONBEHALF_TEST_NATS_URL`, default [`DEFAULT_NATS_URL`]), once a
/// client could connect to it.
///
/// When it cannot be reached it prints `skipped: NATS not reachable at <url>` and returns `None`;
/// with `ONBEHALF_REQUIRE_SERVICES=1` it panics instead. Tests on the shared server must never
/// stop or reconfigure it, and must use stream names and subjects of their own; a test that
/// takes the broker down runs a [`NatsTestServer`] instead.
pub async fn nats_test_url() -> Option<String> {
    let url = std::env::var(NATS_URL_ENV).unwrap_or_else(|_| DEFAULT_NATS_URL.to_owned());
    let connected = async_nats::ConnectOptions::new()
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(url.as_str())
        .await;
    match connected {
        Ok(client) => {
            drop(client);
            Some(url)
        }
        Err(err) => {
            if require_services() {
                panic!("NATS not reachable at {url} and {REQUIRE_SERVICES_ENV}=1: {err}");
            }
            println!("skipped: NATS not reachable at {url}");
            None
        }
    }
}

/// A private `nats-server` with JetStream, on a free loopback port, storing into a directory of
/// its own; tests may stop and restart it at will. Dropping it kills the server and removes the
/// directory.
#[derive(Debug)]
pub struct NatsTestServer {
    binary: PathBuf,
    port: u16,
    dir: TempDataDir,
    child: Option<std::process::Child>,
}

/// How long a private server may take to accept connections.
const NATS_START_TIMEOUT: Duration = Duration::from_secs(10);

impl NatsTestServer {
    /// Starts a server: `nats-server -js -a 127.0.0.1 -p <free port> -sd <temp dir>`.
    ///
    /// The binary is `ONBEHALF_NATS_SERVER`, or `nats-server` on the `PATH`, or
    /// `/usr/sbin/nats-server`. Without one it prints `skipped: nats-server not found` and returns
    /// `None`; with `ONBEHALF_REQUIRE_SERVICES=1` it panics instead. It panics if the server does
    /// not come up.
    pub async fn start() -> Option<NatsTestServer> {
        let Some(binary) = find_nats_server() else {
            if require_services() {
                panic!("nats-server not found and {REQUIRE_SERVICES_ENV}=1");
            }
            println!("skipped: nats-server not found");
            return None;
        };
        // A free port can be taken between probing and binding; try a few.
        for _ in 0..3 {
            let port = match std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
            {
                Ok(addr) => addr.port(),
                Err(err) => panic!("cannot find a free loopback port: {err}"),
            };
            let mut server = NatsTestServer {
                binary: binary.clone(),
                port,
                dir: TempDataDir::new(),
                child: None,
            };
            if server.launch().await {
                return Some(server);
            }
        }
        panic!("nats-server {} did not start", binary.display());
    }

    /// The server's URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (SIGKILL), as a crash would; what it stored stays on disk.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store directory. Panics if it does not
    /// come up.
    pub async fn restart(&mut self) {
        self.stop();
        if !self.launch().await {
            panic!("nats-server did not restart on port {}", self.port);
        }
    }

    /// Spawns the server and waits until it accepts connections; `false` if it exited first or
    /// did not come up in time.
    async fn launch(&mut self) -> bool {
        let store = self.dir.path().join("jetstream");
        let log = self.dir.path().join("nats-server.log");
        let spawned = std::process::Command::new(&self.binary)
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(&store)
            .arg("-l")
            .arg(&log)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(err) => panic!("cannot run {}: {err}", self.binary.display()),
        };
        let deadline = std::time::Instant::now() + NATS_START_TIMEOUT;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                self.child = Some(child);
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for NatsTestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn find_nats_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(NATS_SERVER_ENV) {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("nats-server"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin/nats-server")])
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_is_replaced_in_urls_and_key_value_strings() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@127.0.0.1:5432/db?sslmode=disable", "t1"),
            "postgres://u:p@127.0.0.1:5432/t1?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://127.0.0.1", "t1"),
            "postgres://127.0.0.1/t1"
        );
        assert_eq!(
            with_database("host=127.0.0.1 user=postgres", "t1"),
            "host=127.0.0.1 user=postgres dbname=t1"
        );
    }
}
