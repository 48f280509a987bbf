//! `onbehalf mailer`: the mailer as a process of its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use onbehalf_projections::ReadModels;

use super::state::{PostgresDeliveryState, SqliteDeliveryState};
use super::{DeliveryState, Mailer, MailerConfig, SmtpSecurity, SmtpSettings, Templates};
use crate::read::ReadSide;
use crate::tokens::InvitationTokens;

/// Settings of `onbehalf mailer`.
#[derive(Debug, Clone, clap::Args)]
pub struct MailerArgs {
    /// Data directory of the embedded log; also holds the invitation secret and, for the
    /// embedded log, the delivery state (`mailer.db`).
    #[arg(long, default_value = "./onbehalf-data", env = "ONBEHALF_DATA_DIR")]
    pub data_dir: PathBuf,
    /// PostgreSQL URL of the log; the delivery state lives there too.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// The invitation secret the server signs links with; default `<data dir>/invitation.secret`.
    #[arg(long, env = "ONBEHALF_INVITATION_SECRET_FILE")]
    pub invitation_secret_file: Option<PathBuf>,
    /// The client-area page that accepts invitations, as the server is configured.
    #[arg(
        long,
        default_value = "http://localhost:8080/invitations/accept",
        env = "ONBEHALF_ACCEPT_URL_BASE"
    )]
    pub accept_url_base: String,
    /// A file holding the current time as an RFC 3339 instant, read on every use (for tests);
    /// without it, the system clock.
    #[arg(long, env = "ONBEHALF_CLOCK_FILE")]
    pub clock_file: Option<PathBuf>,
    /// The SMTP relay's host.
    #[arg(long, default_value = "localhost", env = "ONBEHALF_SMTP_HOST")]
    pub smtp_host: String,
    /// The relay's port; default 25, 587 or 465 by `--smtp-security`.
    #[arg(long, env = "ONBEHALF_SMTP_PORT")]
    pub smtp_port: Option<u16>,
    /// How the connection to the relay is secured.
    #[arg(
        long,
        value_enum,
        default_value = "starttls",
        env = "ONBEHALF_SMTP_SECURITY"
    )]
    pub smtp_security: SmtpSecurity,
    /// User name for the relay, when it wants one.
    #[arg(long, env = "ONBEHALF_SMTP_USERNAME", requires = "smtp_password_file")]
    pub smtp_username: Option<String>,
    /// A file whose first line is the relay password.
    #[arg(long, env = "ONBEHALF_SMTP_PASSWORD_FILE", requires = "smtp_username")]
    pub smtp_password_file: Option<PathBuf>,
    /// An extra CA certificate (PEM) the relay's certificate may chain to.
    #[arg(long, env = "ONBEHALF_SMTP_CA_FILE")]
    pub smtp_ca_file: Option<PathBuf>,
    /// The sender of every mail, e.g. `Billing <billing@provider.example>`.
    #[arg(long, env = "ONBEHALF_MAIL_FROM")]
    pub from: String,
    /// Seconds one conversation with the relay may take.
    #[arg(long, default_value_t = 30, env = "ONBEHALF_SMTP_TIMEOUT_SECS")]
    pub smtp_timeout_secs: u64,
    /// Directory of mail templates (`<kind>.txt`); kinds without a file use the built-in ones.
    #[arg(long, env = "ONBEHALF_MAIL_TEMPLATES")]
    pub templates: Option<PathBuf>,
    /// Milliseconds between passes.
    #[arg(long, default_value_t = 5000, env = "ONBEHALF_MAILER_INTERVAL_MS")]
    pub interval_ms: u64,
    /// Seconds of the first retry pause after a temporary failure; it doubles each time.
    #[arg(long, default_value_t = 30, env = "ONBEHALF_MAILER_RETRY_BASE_SECS",
          value_parser = clap::value_parser!(i64).range(1..=86_400))]
    pub retry_base_secs: i64,
    /// Attempts before a notification that keeps failing temporarily is given up.
    #[arg(long, default_value_t = 10, env = "ONBEHALF_MAILER_MAX_ATTEMPTS")]
    pub max_attempts: u32,
    /// Never send notifications of events before this position.
    #[arg(long, default_value_t = 0, env = "ONBEHALF_MAILER_FROM_POSITION")]
    pub from_position: u64,
    /// This mailer's name in its claims; default a fresh one per start.
    #[arg(long, env = "ONBEHALF_MAILER_NAME")]
    pub name: Option<String>,
}

/// Runs `onbehalf mailer` until interrupted.
pub async fn run_cli(args: MailerArgs) -> Result<(), String> {
    let clock = crate::clock::from_file(args.clock_file.as_deref())?;
    let templates = match &args.templates {
        Some(dir) => Templates::load(dir).map_err(|e| e.to_string())?,
        None => Templates::built_in(),
    };
    let credentials = match (&args.smtp_username, &args.smtp_password_file) {
        (Some(user), Some(file)) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let password = text.lines().next().unwrap_or_default().to_owned();
            Some((user.clone(), password))
        }
        _ => None,
    };
    let smtp = SmtpSettings {
        host: args.smtp_host.clone(),
        port: args
            .smtp_port
            .unwrap_or_else(|| args.smtp_security.default_port()),
        security: args.smtp_security,
        credentials,
        ca_file: args.smtp_ca_file.clone(),
        from: args.from.clone(),
        timeout: Duration::from_secs(args.smtp_timeout_secs.max(1)),
    };

    let secret_path = args
        .invitation_secret_file
        .clone()
        .unwrap_or_else(|| args.data_dir.join("invitation.secret"));
    // A mailer must sign links with the server's secret; one it created itself would not work.
    let secret = std::fs::read(&secret_path).map_err(|e| {
        format!(
            "cannot read the invitation secret {}: {e}; start the server first or pass --invitation-secret-file",
            secret_path.display()
        )
    })?;
    let tokens =
        Arc::new(InvitationTokens::new(secret, &args.accept_url_base).map_err(|e| e.to_string())?);

    let mut server = crate::server::ServerConfig::new(args.data_dir.clone());
    server.database_url = args.database_url.clone();
    let store = crate::server::open_store(&server)
        .await
        .map_err(|e| e.to_string())?;
    let state: Arc<dyn DeliveryState> = match &args.database_url {
        Some(url) => Arc::new(
            PostgresDeliveryState::connect(url)
                .await
                .map_err(|e| e.to_string())?,
        ),
        None => Arc::new(
            SqliteDeliveryState::open(&args.data_dir)
                .await
                .map_err(|e| e.to_string())?,
        ),
    };
    let (_appended, appended_rx) = tokio::sync::watch::channel(0);
    let read = ReadSide::start(store.clone(), ReadModels::new(tokens), appended_rx)
        .await
        .map_err(|e| e.to_string())?;
    let mut config = MailerConfig {
        interval: Duration::from_millis(args.interval_ms.max(10)),
        retry_base: chrono::Duration::seconds(args.retry_base_secs.max(1)),
        max_attempts: args.max_attempts.max(1),
        from_position: args.from_position,
        ..MailerConfig::default()
    };
    if let Some(name) = &args.name {
        config.name = name.clone();
    }
    let mailer = Mailer::new(store, read, state, &smtp, templates, clock, config)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(relay = %smtp.host, port = smtp.port, "mailer running");
    let task = mailer.spawn();
    let _ = tokio::signal::ctrl_c().await;
    task.abort();
    tracing::info!("mailer stopped");
    Ok(())
}
