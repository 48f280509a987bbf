//! The `onbehalf` command: run the server, mint development tokens, run the demo.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use onbehalf::auth::{self, Signer};
use onbehalf::clock::{Clock, SystemClock};
use onbehalf::grpc::Settings;
use onbehalf::server::{self, ServerConfig};

/// onbehalf: an event-sourced delegation service for agencies acting on their clients' behalf.
#[derive(Debug, Parser)]
#[command(name = "onbehalf", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC server.
    Serve(ServeArgs),
    /// Print a bearer token signed with the data directory's key or a given key.
    Token(TokenArgs),
    /// Run the agency walkthrough against a running server and print a report.
    Demo(DemoArgs),
    /// Export the audit trail or verify the log's hash chain through a server (scope
    /// `audit:read`).
    Audit(onbehalf::cli::audit::AuditArgs),
    /// Print the log's events, one line each, through a server (scope `events:read`).
    Events(onbehalf::cli::history::EventsArgs),
    /// Rebuild the read models offline up to a position or time and print the accounts.
    Replay(onbehalf::cli::history::ReplayArgs),
    /// Print a client account's write model at a stream version, and the events that led there.
    Aggregate(onbehalf::cli::history::AggregateArgs),
    /// Carry committed events from the PostgreSQL log to NATS JetStream.
    Relay(onbehalf::relay::RelayArgs),
    /// Issue renewal invoices, payment reminders and suspensions as their dates come.
    Scheduler(onbehalf::scheduler::SchedulerArgs),
    /// Deliver routed notifications over SMTP, each once.
    Mailer(onbehalf::mailer::cli::MailerArgs),
    /// Fold the events stream from NATS JetStream into the read models in PostgreSQL.
    Project(onbehalf::project::ProjectArgs),
    /// Status and rebuild of the read models persisted in PostgreSQL.
    Projections(onbehalf::cli::projections::ProjectionsArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051", env = "ONBEHALF_LISTEN")]
    listen: SocketAddr,
    /// Data directory: the embedded log, development keys and the invitation secret.
    #[arg(long, default_value = "./onbehalf-data", env = "ONBEHALF_DATA_DIR")]
    data_dir: PathBuf,
    /// PostgreSQL URL; when given, the log lives in PostgreSQL instead of the data directory.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Expected issuer (`iss`) of bearer tokens.
    #[arg(long, default_value = auth::DEFAULT_ISSUER, env = "ONBEHALF_ISSUER")]
    issuer: String,
    /// Expected audience (`aud`) of bearer tokens.
    #[arg(long, default_value = auth::DEFAULT_ISSUER, env = "ONBEHALF_AUDIENCE")]
    audience: String,
    /// An extra verification key, a file named `<kid>.pub.pem`; repeat for several (in the
    /// environment, separate them with commas).
    #[arg(
        long = "verification-key",
        env = "ONBEHALF_VERIFICATION_KEYS",
        value_delimiter = ','
    )]
    verification_keys: Vec<PathBuf>,
    /// File with the invitation MAC secret (created if missing); default `<data dir>/invitation.secret`.
    #[arg(long, env = "ONBEHALF_INVITATION_SECRET_FILE")]
    invitation_secret_file: Option<PathBuf>,
    /// The client-area page that accepts invitations; the token is appended as `?token=`.
    #[arg(
        long,
        default_value = "http://localhost:8080/invitations/accept",
        env = "ONBEHALF_ACCEPT_URL_BASE"
    )]
    accept_url_base: String,
    /// Days an invitation stays acceptable (1 to 365).
    #[arg(
        long,
        default_value_t = 7,
        value_parser = clap::value_parser!(u32).range(1..=365),
        env = "ONBEHALF_INVITATION_TTL_DAYS"
    )]
    invitation_ttl_days: u32,
    /// Longest wait, in milliseconds, for a read's `min_position`.
    #[arg(long, default_value_t = 5000, env = "ONBEHALF_MAX_WAIT_MS")]
    max_wait_ms: u64,
    /// Largest request message accepted, in bytes.
    #[arg(long, default_value_t = 64 * 1024, env = "ONBEHALF_MAX_MESSAGE_BYTES")]
    max_message_bytes: usize,
    /// The server's TLS certificate chain (PEM); with `--tls-key`, the listener speaks TLS.
    #[arg(long, env = "ONBEHALF_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The server's TLS private key (PEM).
    #[arg(long, env = "ONBEHALF_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A CA (PEM) whose certificates clients must present: mutual TLS.
    #[arg(long, env = "ONBEHALF_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// A file holding the current time as an RFC 3339 instant, read on every use (for tests
    /// that move time); without it, the system clock.
    #[arg(long, env = "ONBEHALF_CLOCK_FILE")]
    clock_file: Option<PathBuf>,
    /// Also run the renewal and reminder scheduler in this process (safe on every replica).
    #[arg(long, env = "ONBEHALF_SCHEDULER")]
    scheduler: bool,
    /// What the scheduler does, with `--scheduler`.
    #[command(flatten)]
    schedule: onbehalf::scheduler::ScheduleArgs,
    /// A TOML file naming the control-panel servers hosting services live on.
    #[arg(long, env = "ONBEHALF_PANEL_SERVERS")]
    panel_servers: Option<PathBuf>,
    /// Where reads are answered from: `log` folds the log in this process; `postgres` mirrors
    /// the read models that `onbehalf project` workers keep in PostgreSQL (needs
    /// `--database-url`), for any number of replicas.
    #[arg(long, env = "ONBEHALF_READ_MODELS", value_enum, default_value_t = ReadModelsFrom::Log)]
    read_models: ReadModelsFrom,
}

/// `--read-models`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ReadModelsFrom {
    /// Fold the log in this process.
    Log,
    /// Mirror the PostgreSQL read models.
    Postgres,
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// Mint a token for this user id.
    #[arg(
        long,
        conflicts_with_all = ["service", "staff"],
        required_unless_present_any = ["service", "staff"],
        value_parser = parse_user_id
    )]
    user: Option<uuid::Uuid>,
    /// Mint a token for the provider staff member `staff:<name>`, with the `staff` role.
    #[arg(long, conflicts_with = "service")]
    staff: Option<String>,
    /// Mint a token for the service `service:<name>`.
    #[arg(long)]
    service: Option<String>,
    /// Space-separated scopes, for a service token.
    #[arg(long, requires = "service")]
    scope: Option<String>,
    /// Data directory whose development key signs the token.
    #[arg(long, default_value = "./onbehalf-data", env = "ONBEHALF_DATA_DIR")]
    data_dir: PathBuf,
    /// A private key file `<kid>.key.pem` to sign with instead.
    #[arg(long, env = "ONBEHALF_SIGNING_KEY")]
    signing_key: Option<PathBuf>,
    /// How long the token is valid, from 1 second to 366 days: seconds, or a number with `s`,
    /// `m`, `h` or `d`.
    #[arg(long, default_value = "1h", value_parser = parse_ttl, env = "ONBEHALF_TOKEN_TTL")]
    ttl: chrono::Duration,
    /// Issuer (`iss`).
    #[arg(long, default_value = auth::DEFAULT_ISSUER, env = "ONBEHALF_ISSUER")]
    issuer: String,
    /// Audience (`aud`).
    #[arg(long, default_value = auth::DEFAULT_ISSUER, env = "ONBEHALF_AUDIENCE")]
    audience: String,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// The server, e.g. `http://127.0.0.1:50051`.
    #[arg(
        long,
        default_value = "http://127.0.0.1:50051",
        env = "ONBEHALF_SERVER"
    )]
    server: String,
    /// The server's data directory, whose development key signs the demo's tokens.
    #[arg(long, default_value = "./onbehalf-data", env = "ONBEHALF_DATA_DIR")]
    data_dir: PathBuf,
}

/// A user id as the server accepts one in a token's subject: a UUID other than the nil one.
fn parse_user_id(raw: &str) -> Result<uuid::Uuid, String> {
    match uuid::Uuid::parse_str(raw) {
        Ok(id) if id.is_nil() => Err("the nil UUID names no user".into()),
        Ok(id) => Ok(id),
        Err(e) => Err(format!("`{raw}` is not a user id: {e}")),
    }
}

fn parse_ttl(raw: &str) -> Result<chrono::Duration, String> {
    let (digits, unit) = match raw.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&raw[..i], c),
        _ => (raw, 's'),
    };
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("`{raw}` is not a duration such as 90s, 15m, 1h or 2d"))?;
    if n <= 0 {
        return Err("the duration must be positive".into());
    }
    let ttl = match unit {
        's' => chrono::Duration::try_seconds(n),
        'm' => chrono::Duration::try_minutes(n),
        'h' => chrono::Duration::try_hours(n),
        'd' => chrono::Duration::try_days(n),
        _ => return Err(format!("unknown unit `{unit}`; use s, m, h or d")),
    };
    // A token outliving a year is a credential nobody will remember to retire.
    match ttl {
        Some(ttl) if ttl <= chrono::Duration::days(MAX_TTL_DAYS) => Ok(ttl),
        _ => Err(format!("the duration must be at most {MAX_TTL_DAYS}d")),
    }
}

/// The longest lifetime `token --ttl` signs.
const MAX_TTL_DAYS: i64 = 366;

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // The NATS client logs every reconnect attempt at `info`; the relay logs an outage once.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let mut config = ServerConfig::new(args.data_dir);
    config.listen = args.listen;
    config.database_url = args.database_url;
    if args.read_models == ReadModelsFrom::Postgres {
        if config.database_url.is_none() {
            return Err("--read-models postgres needs --database-url".into());
        }
        config.read_models = server::ReadModelSource::Postgres;
    }
    config.issuer = args.issuer;
    config.audience = args.audience;
    config.verification_keys = args.verification_keys;
    config.invitation_secret_file = args.invitation_secret_file;
    config.accept_url_base = args.accept_url_base;
    config.max_message_bytes = args.max_message_bytes;
    config.clock = onbehalf::clock::from_file(args.clock_file.as_deref())?;
    config.scheduler = args.scheduler.then(|| args.schedule.config());
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(server::TlsConfig {
            cert,
            key,
            client_ca: args.tls_client_ca,
        });
    }
    let panel_servers = match &args.panel_servers {
        Some(path) => {
            let servers = onbehalf::panel::PanelServers::load(path).map_err(|e| e.to_string())?;
            tracing::info!(servers = ?servers.names().collect::<Vec<_>>(), "control-panel servers configured");
            servers
        }
        None => onbehalf::panel::PanelServers::default(),
    };
    config.settings = Settings {
        invitation_ttl: chrono::Duration::days(i64::from(args.invitation_ttl_days)),
        max_wait: std::time::Duration::from_millis(args.max_wait_ms),
        panel_servers,
        ..Settings::default()
    };
    let running = server::spawn(config).await.map_err(|e| e.to_string())?;
    running
        .run_until(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down");
        })
        .await
        .map_err(|e| e.to_string())
}

fn token(args: TokenArgs) -> Result<(), String> {
    let path = match args.signing_key {
        Some(path) => path,
        None => auth::find_signing_key(&auth::keys_dir(&args.data_dir))
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "no signing key in {}; start `onbehalf serve --data-dir {}` once, or pass --signing-key",
                    auth::keys_dir(&args.data_dir).display(),
                    args.data_dir.display()
                )
            })?,
    };
    let signer = Signer::load(&path, &args.issuer, &args.audience).map_err(|e| e.to_string())?;
    if let Some(staff) = &args.staff {
        let token = signer
            .sign_staff(staff, SystemClock.now(), args.ttl)
            .map_err(|_| {
                format!("`{staff}` is not a staff name: 1 to 64 letters, digits, `-`, `_` or `.`")
            })?;
        println!("{token}");
        return Ok(());
    }
    let (sub, scope) = match (args.user, args.service) {
        (Some(user), _) => (user.to_string(), None),
        (None, Some(service)) => {
            let valid = !service.is_empty()
                && service.len() <= 64
                && service
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid {
                return Err(format!(
                    "`{service}` is not a service name: 1 to 64 letters, digits, `-`, `_` or `.`"
                ));
            }
            (format!("service:{service}"), args.scope)
        }
        (None, None) => return Err("give --user, --service or --staff".into()),
    };
    let token = signer
        .sign(
            &sub,
            scope.as_deref().filter(|s| !s.is_empty()),
            SystemClock.now(),
            args.ttl,
        )
        .map_err(|e| e.to_string())?;
    println!("{token}");
    Ok(())
}

/// The exit status of `audit verify` when the hash chain is broken (1 is any other failure).
const BROKEN_CHAIN: u8 = 3;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            init_tracing();
            serve(args).await
        }
        Command::Token(args) => token(args),
        Command::Demo(args) => onbehalf::demo::run(&args.server, &args.data_dir)
            .await
            .map_err(|e| e.to_string()),
        Command::Audit(args) => {
            match onbehalf::cli::audit::run(&args, &mut std::io::stdout()).await {
                // A broken chain is a finding, not a failure to run: scripts tell them apart.
                Err(e @ onbehalf::cli::audit::AuditCliError::Broken { .. }) => {
                    eprintln!("onbehalf: {e}");
                    return ExitCode::from(BROKEN_CHAIN);
                }
                other => other.map_err(|e| e.to_string()),
            }
        }
        Command::Events(args) => onbehalf::cli::history::events(&args, &mut std::io::stdout())
            .await
            .map_err(|e| e.to_string()),
        Command::Replay(args) => {
            onbehalf::cli::history::replay(&args, &mut std::io::stdout(), &mut std::io::stderr())
                .await
                .map_err(|e| e.to_string())
        }
        Command::Aggregate(args) => {
            onbehalf::cli::history::aggregate(&args, &mut std::io::stdout())
                .await
                .map_err(|e| e.to_string())
        }
        Command::Scheduler(args) => {
            init_tracing();
            onbehalf::scheduler::run_cli(args).await
        }
        Command::Mailer(args) => {
            init_tracing();
            onbehalf::mailer::cli::run_cli(args).await
        }
        Command::Relay(args) => {
            init_tracing();
            onbehalf::relay::run_cli(args)
                .await
                .map_err(|e| e.to_string())
        }
        Command::Project(args) => {
            init_tracing();
            onbehalf::project::run_cli(args)
                .await
                .map_err(|e| e.to_string())
        }
        Command::Projections(args) => {
            init_tracing();
            onbehalf::cli::projections::run(&args, &mut std::io::stdout())
                .await
                .map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("onbehalf: {message}");
            ExitCode::FAILURE
        }
    }
}
