//! PostgreSQL restarted under load: `onbehalf serve` (the real binary) keeps running while its
//! database crashes and comes back. Commands fail with `UNAVAILABLE` while the database is down,
//! succeed again once it is back without restarting the server, and every acknowledged command
//! is in the log.
//!
//! The test runs a PostgreSQL server of its own (`initdb` and `pg_ctl` in a temporary directory,
//! on a free loopback port), never the machine's shared one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onbehalf::auth::{self, Signer};
use onbehalf::testing::{require_services, TempDataDir, REQUIRE_SERVICES_ENV};
use onbehalf_proto::v1::user_service_client::UserServiceClient;
use onbehalf_proto::v1::RegisterUserRequest;
use tonic::transport::Channel;
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_onbehalf");

/// The longest a single command may take, up or down: connecting and waiting for a pooled
/// connection are each bounded by 5 s in the store, so anything past this is a hang.
const CALL_BOUND: Duration = Duration::from_secs(15);

/// Concurrent clients putting load on the server.
const CLIENTS: usize = 4;

// ---------------------------------------------------------------------------------------------
// A private PostgreSQL server
// ---------------------------------------------------------------------------------------------

/// A PostgreSQL cluster of this test's own, in a temporary directory, on a free loopback port.
///
/// PostgreSQL refuses to run as root, so when the test runs as root the server's programs run as
/// the `postgres` system user through `runuser`. Dropping the value stops the server.
struct PrivatePostgres {
    bin: PathBuf,
    dir: TempDataDir,
    port: u16,
    run_as_postgres: bool,
}

impl PrivatePostgres {
    /// Initialises and starts a cluster; `None` (after printing why) when no PostgreSQL
    /// installation is found, a panic instead under `ONBEHALF_REQUIRE_SERVICES=1`.
    fn start() -> Option<PrivatePostgres> {
        let Some(bin) = find_postgres_bin() else {
            if require_services() {
                panic!("initdb not found under /usr/lib/postgresql and {REQUIRE_SERVICES_ENV}=1");
            }
            println!("skipped: initdb not found under /usr/lib/postgresql");
            return None;
        };
        let dir = TempDataDir::new();
        let run_as_postgres = owner_uid(dir.path()) == 0;
        if run_as_postgres {
            let status = Command::new("chown")
                .args(["postgres:"])
                .arg(dir.path())
                .status()
                .expect("chown runs");
            assert!(status.success(), "cannot hand {:?} to postgres", dir.path());
        }
        let port = free_port();
        let server = PrivatePostgres {
            bin,
            dir,
            port,
            run_as_postgres,
        };
        server.run(
            "initdb",
            &[
                "-D",
                &server.data(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        server.start_again();
        Some(server)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// The URL of the cluster's `postgres` database.
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server on its port and waits until it accepts connections.
    fn start_again(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Stops the server with `mode` (`fast` or `immediate`) and waits until it is gone.
    fn stop(&self, mode: &str) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", mode, "-w", "-t", "60", "stop"],
        );
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the postmaster and every backend: the host
    /// still accepts connections and acknowledges data, but no PostgreSQL process answers.
    fn signal_all(&self, signal: &str) {
        let pid_file = self.dir.path().join("data").join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file).expect("postmaster.pid");
        let postmaster: u32 = text
            .lines()
            .next()
            .expect("pid line")
            .trim()
            .parse()
            .expect("pid");
        // The postmaster first, so that it forks nothing while its children are collected.
        kill(signal, postmaster);
        for child in children_of(postmaster) {
            kill(signal, child);
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let mut command = if self.run_as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        let output = command
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        assert!(
            output.status.success(),
            "{} {args:?} failed: {}{}",
            program.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // Best effort: the server may already be down.
        let program = self.bin.join("pg_ctl");
        let data = self.data();
        let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
        let _ = if self.run_as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&program)
                .args(args)
                .output()
        } else {
            Command::new(&program).args(args).output()
        };
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` that holds `initdb` and `pg_ctl`.
fn find_postgres_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn kill(signal: &str, pid: u32) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .expect("kill runs");
    // A backend may end on its own between being listed and being signalled.
    let gone = !Path::new(&format!("/proc/{pid}")).exists();
    assert!(status.success() || gone, "kill {signal} {pid}");
}

/// The processes whose parent is `pid`, from `/proc/<pid>/stat`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // The command name is in parentheses and may hold spaces; the parent follows the
            // state field after it.
            let after = &stat[stat.rfind(')')? + 1..];
            let parent: u32 = after.split_whitespace().nth(1)?.parse().ok()?;
            (parent == pid).then_some(child)
        })
        .collect()
}

/// The owner of `path`, which this process just created: its effective user id.
fn owner_uid(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("metadata").uid()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

// ---------------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------------

/// `onbehalf serve --database-url <url>` as a child process, its log in a file.
struct Serve {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Serve {
    fn start(data_dir: &Path, database_url: &str) -> Serve {
        let log = data_dir.join("serve.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(["--database-url", database_url])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("the binary starts");
        let mut serve = Serve {
            child,
            addr: String::new(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(addr) = serve.log_text().lines().find_map(|line| {
                let rest = line.split("addr=").nth(1)?;
                Some(rest.split_whitespace().next()?.to_owned())
            }) {
                serve.addr = addr;
                return serve;
            }
            if let Ok(Some(status)) = serve.child.try_wait() {
                panic!("serve exited with {status}: {}", serve.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("serve did not report its address: {}", serve.log_text());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics, with the server's log, if the process has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("serve exited with {status}: {}", self.log_text());
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------------

/// Where the database is, as the load sees it when a call starts.
const UP: u8 = 0;
const STOPPING: u8 = 1;
const DOWN: u8 = 2;
const STARTING: u8 = 3;

/// One RegisterUser call.
#[derive(Clone, Debug)]
struct Call {
    email: String,
    request_id: String,
    /// The database's state when the call started and when it returned.
    phase: (u8, u8),
    took: Duration,
    /// The user id and position, or the status code.
    outcome: Result<(String, u64), (Code, String)>,
}

async fn register(
    client: &mut UserServiceClient<Channel>,
    token: &str,
    email: &str,
    request_id: &str,
) -> Result<(String, u64), (Code, String)> {
    let mut request = tonic::Request::new(RegisterUserRequest {
        email: email.to_owned(),
        display_name: "Load Test".to_owned(),
        request_id: request_id.to_owned(),
    });
    let bearer = format!("Bearer {token}").parse().expect("header value");
    request.metadata_mut().insert("authorization", bearer);
    match tokio::time::timeout(CALL_BOUND, client.register_user(request)).await {
        Err(_) => Err((Code::DeadlineExceeded, "no answer within the bound".into())),
        Ok(Err(status)) => Err((status.code(), status.message().to_owned())),
        Ok(Ok(response)) => {
            let response = response.into_inner();
            let user = response.user.expect("a registered user");
            Ok((user.user_id, response.position))
        }
    }
}

fn successes_of(calls: &[Call]) -> usize {
    calls.iter().filter(|c| c.outcome.is_ok()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_fail_as_unavailable_while_postgres_is_down_and_none_acknowledged_is_lost() {
    let Some(postgres) = PrivatePostgres::start() else {
        return;
    };
    let data_dir = TempDataDir::new();
    let mut serve = Serve::start(data_dir.path(), &postgres.url());

    let (token, channel) = connect(&serve, data_dir.path()).await;

    let phase = Arc::new(AtomicU8::new(UP));
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut loaders = Vec::new();
    for client_no in 0..CLIENTS {
        let (phase, calls, stop) = (phase.clone(), calls.clone(), stop.clone());
        let (token, mut client) = (token.clone(), UserServiceClient::new(channel.clone()));
        loaders.push(tokio::spawn(async move {
            let stopped = stop.notified();
            tokio::pin!(stopped);
            for n in 0.. {
                let email = format!("load{client_no}-{n}@restart.example");
                let request_id = format!("load-{client_no}-{n}");
                let before = phase.load(Ordering::SeqCst);
                let started = Instant::now();
                let outcome = register(&mut client, &token, &email, &request_id).await;
                let took = started.elapsed();
                let failed = outcome.is_err();
                calls.lock().unwrap().push(Call {
                    email,
                    request_id,
                    phase: (before, phase.load(Ordering::SeqCst)),
                    took,
                    outcome,
                });
                // A refused connection fails at once; a short pause keeps the loop from spinning.
                let pause = if failed { 50 } else { 0 };
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
                }
            }
        }));
    }
    let successes = |calls: &Arc<Mutex<Vec<Call>>>| successes_of(&calls.lock().unwrap());

    // Load on a healthy database first.
    let deadline = Instant::now() + Duration::from_secs(60);
    while successes(&calls) < 40 {
        assert!(Instant::now() < deadline, "the load never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A crash: every backend is killed mid-transaction, and recovery runs on the next start.
    phase.store(STOPPING, Ordering::SeqCst);
    tokio::task::block_in_place(|| postgres.stop("immediate"));
    phase.store(DOWN, Ordering::SeqCst);
    let down_since = Instant::now();

    // While it is down, each command is refused as UNAVAILABLE, promptly, by a server that
    // keeps running.
    let mut probe = UserServiceClient::new(channel.clone());
    for n in 0..3 {
        let started = Instant::now();
        let outcome = register(
            &mut probe,
            &token,
            &format!("probe-down-{n}@restart.example"),
            &format!("probe-down-{n}"),
        )
        .await;
        let took = started.elapsed();
        let Err((code, message)) = outcome else {
            panic!("a command succeeded with the database down: {outcome:?}");
        };
        assert_eq!(code, Code::Unavailable, "{message}");
        assert!(took < CALL_BOUND, "a refusal took {took:?}");
    }
    // Long enough for every loader to have met the outage, and for pooled connections to be
    // found broken.
    let until = down_since + Duration::from_secs(3);
    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
    serve.assert_running();

    phase.store(STARTING, Ordering::SeqCst);
    tokio::task::block_in_place(|| postgres.start_again());
    phase.store(UP, Ordering::SeqCst);

    // Back up: the same server process answers commands again, within the pool's bounds.
    let back = Instant::now();
    let mut n = 0;
    loop {
        let outcome = register(
            &mut probe,
            &token,
            &format!("probe-up-{n}@restart.example"),
            &format!("probe-up-{n}"),
        )
        .await;
        match outcome {
            Ok(_) => break,
            Err((code, message)) => {
                assert_eq!(code, Code::Unavailable, "while recovering: {message}");
                assert!(
                    back.elapsed() < Duration::from_secs(30),
                    "commands still fail 30 s after the database came back: {message}"
                );
            }
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovery = back.elapsed();
    let recovered = successes(&calls);
    let deadline = Instant::now() + Duration::from_secs(60);
    while successes(&calls) < recovered + 40 {
        assert!(Instant::now() < deadline, "the load did not resume");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.notify_waiters();
    for loader in loaders {
        loader.await.expect("loader");
    }
    serve.assert_running();
    let calls = calls.lock().unwrap().clone();

    // Every failure, whenever it happened, was UNAVAILABLE, and no call hung.
    for call in &calls {
        assert!(call.took < CALL_BOUND, "{call:?}");
        if let Err((code, message)) = &call.outcome {
            assert_eq!(*code, Code::Unavailable, "{call:?}: {message}");
        }
    }
    // A call that started and ended while the database was down cannot have succeeded.
    for call in calls.iter().filter(|c| c.phase == (DOWN, DOWN)) {
        assert!(call.outcome.is_err(), "{call:?}");
    }
    let during_outage = calls.iter().filter(|c| c.phase == (DOWN, DOWN)).count();
    assert!(
        during_outage >= CLIENTS,
        "each loader met the outage: {during_outage}"
    );

    // A failed command's outcome is unknown to its client; retried with its request id, it
    // lands exactly once.
    let failed: Vec<&Call> = calls.iter().filter(|c| c.outcome.is_err()).collect();
    let mut retried = BTreeMap::new();
    for call in &failed {
        let outcome = register(&mut probe, &token, &call.email, &call.request_id).await;
        let (user_id, position) = outcome.unwrap_or_else(|e| panic!("retry of {call:?}: {e:?}"));
        retried.insert(call.request_id.clone(), (user_id, position));
    }

    // Read the log directly: each acknowledged command is there, once, where it was reported.
    let log = read_log(&postgres.url()).await;
    let positions: Vec<u64> = log.keys().copied().collect();
    let expected: Vec<u64> = (1..=log.len() as u64).collect();
    assert_eq!(positions, expected, "positions are gap-free from 1");
    let acknowledged: Vec<(&str, &str, u64)> = calls
        .iter()
        .filter_map(|c| {
            let (user, position) = c.outcome.as_ref().ok()?;
            Some((c.request_id.as_str(), user.as_str(), *position))
        })
        .chain(
            retried
                .iter()
                .map(|(request, (user, position))| (request.as_str(), user.as_str(), *position)),
        )
        .collect();
    let mut seen_positions = BTreeSet::new();
    for (request_id, user_id, position) in &acknowledged {
        assert!(
            seen_positions.insert(*position),
            "position {position} reported twice"
        );
        assert_eq!(
            log.get(position),
            Some(&(format!("user-{user_id}"), "UserRegistered".to_owned())),
            "{request_id} at {position}"
        );
    }
    // Every load call landed exactly once: one request record each, at its reported position,
    // and no UserRegistered event without one.
    let requests = read_requests(&postgres.url()).await;
    let mut load_requests = 0;
    for call in &calls {
        let position = requests.get(&call.request_id);
        assert!(position.is_some(), "{call:?} is not in the log");
        let reported = match &call.outcome {
            Ok((_, position)) => *position,
            Err(_) => retried[&call.request_id].1,
        };
        assert_eq!(position, Some(&reported), "{call:?}");
        load_requests += 1;
    }
    let probes = requests.keys().filter(|r| r.starts_with("probe-")).count();
    assert_eq!(requests.len(), load_requests + probes, "{requests:?}");
    assert_eq!(
        log.len(),
        requests.len(),
        "one event per command, each with its record"
    );
    let slowest_refusal = calls
        .iter()
        .filter(|c| c.outcome.is_err())
        .map(|c| c.took)
        .max();
    println!(
        "{} commands acknowledged, {} refused as UNAVAILABLE (slowest {slowest_refusal:?}), \
         {} retried after the restart; commands succeeded again {recovery:?} after it",
        successes_of(&calls),
        failed.len(),
        retried.len()
    );
    assert!(
        successes_of(&calls) >= 80 && !failed.is_empty(),
        "the load met both states: {} acknowledged, {} failed",
        successes_of(&calls),
        failed.len()
    );
    serve.assert_running();
    drop(serve);
    drop(postgres);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_fail_as_unavailable_within_a_bound_while_postgres_is_frozen() {
    let Some(postgres) = PrivatePostgres::start() else {
        return;
    };
    let data_dir = TempDataDir::new();
    let mut serve = Serve::start(data_dir.path(), &postgres.url());
    let (token, channel) = connect(&serve, data_dir.path()).await;

    // Several commands at once, so that the pool holds several connections.
    let mut acknowledged = Vec::new();
    for round in 0..5 {
        let calls: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (token, mut client) = (token.clone(), UserServiceClient::new(channel.clone()));
                tokio::spawn(async move {
                    let email = format!("load{c}-{round}@frozen.example");
                    let outcome = register(&mut client, &token, &email, &email).await;
                    (email, outcome)
                })
            })
            .collect();
        for call in calls {
            let (email, outcome) = call.await.expect("call");
            let (user, position) = outcome.unwrap_or_else(|e| panic!("{email}: {e:?}"));
            acknowledged.push((email, user, position));
        }
    }

    // The host still acknowledges everything; no PostgreSQL process answers.
    postgres.signal_all("-STOP");
    let calls: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (token, mut client) = (token.clone(), UserServiceClient::new(channel.clone()));
            tokio::spawn(async move {
                let email = format!("frozen{c}@frozen.example");
                let started = Instant::now();
                let outcome = register(&mut client, &token, &email, &email).await;
                (outcome, started.elapsed())
            })
        })
        .collect();
    let mut frozen = Vec::new();
    for call in calls {
        frozen.push(call.await.expect("call"));
    }
    postgres.signal_all("-CONT");
    let slowest = frozen.iter().map(|(_, took)| *took).max();
    println!("against a frozen server, the slowest refusal took {slowest:?}");
    for (outcome, took) in &frozen {
        let Err((code, message)) = outcome else {
            panic!("a command succeeded against a frozen database: {outcome:?}");
        };
        assert_eq!(*code, Code::Unavailable, "after {took:?}: {message}");
        assert!(*took < CALL_BOUND, "a refusal took {took:?}");
    }

    // Thawed, the same server process takes commands again.
    let back = Instant::now();
    let mut probe = UserServiceClient::new(channel.clone());
    for n in 0.. {
        let email = format!("probe-up-{n}@frozen.example");
        match register(&mut probe, &token, &email, &email).await {
            Ok((user, position)) => {
                acknowledged.push((email, user, position));
                break;
            }
            Err((code, message)) => {
                assert_eq!(code, Code::Unavailable, "while recovering: {message}");
                assert!(back.elapsed() < Duration::from_secs(30), "{message}");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    serve.assert_running();
    let log = read_log(&postgres.url()).await;
    for (email, user_id, position) in &acknowledged {
        assert_eq!(
            log.get(position),
            Some(&(format!("user-{user_id}"), "UserRegistered".to_owned())),
            "{email} at {position}"
        );
    }
}

/// A signed service token for `users:register` and a channel to `serve`.
async fn connect(serve: &Serve, data_dir: &Path) -> (String, Channel) {
    let key = auth::find_signing_key(&auth::keys_dir(data_dir))
        .expect("keys directory")
        .expect("serve created a signing key");
    let signer = Signer::load(&key, auth::DEFAULT_ISSUER, auth::DEFAULT_ISSUER).expect("signer");
    let token = signer
        .sign(
            "service:loadtest",
            Some("users:register"),
            chrono::Utc::now(),
            chrono::Duration::hours(1),
        )
        .expect("token");
    let channel = Channel::from_shared(format!("http://{}", serve.addr))
        .expect("url")
        .connect()
        .await
        .expect("connects");
    (token, channel)
}

/// The log, read directly: position to (stream id, event type).
async fn read_log(url: &str) -> BTreeMap<u64, (String, String)> {
    let db = private_client(url).await;
    let rows = db
        .query(
            "SELECT position, stream_id, event_type FROM events ORDER BY position",
            &[],
        )
        .await
        .expect("log read");
    rows.iter()
        .map(|r| (r.get::<_, i64>(0) as u64, (r.get(1), r.get(2))))
        .collect()
}

/// The idempotency records, read directly: request id to the position of its command.
async fn read_requests(url: &str) -> BTreeMap<String, u64> {
    let db = private_client(url).await;
    let rows = db
        .query("SELECT request_id, position FROM requests", &[])
        .await
        .expect("requests read");
    rows.iter()
        .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
        .collect()
}

async fn private_client(url: &str) -> tokio_postgres::Client {
    let (db, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connects to the private server");
    tokio::spawn(connection);
    db
}
