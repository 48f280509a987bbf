//! The mailer: delivers every routed notification over SMTP, once.
//!
//! A mailer folds the notification read model from the log like the server does, then for
//! each notification it has not seen finished it takes the claim in the delivery state
//! ([`state`]), renders the kind's template ([`templates`]) and hands the message to the relay.
//! The relay's answer decides what is recorded: accepted is `sent`; a temporary refusal (4xx)
//! or a connection failure is retried after a growing pause; a permanent refusal (5xx), or the
//! last allowed attempt failing, is `failed` with the relay's words. Any number of mailers may
//! run on one log: the claim keeps them from sending the same notification twice.
//!
//! The `Message-ID` of each mail is derived from the notification id, so a relay or mailbox
//! that de-duplicates by it also drops the one duplicate a crash can cause (see the limitation
//! below).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use onbehalf_projections::Notification;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::clock::Clock;
use crate::read::ReadSide;
use crate::store::EventStore;

pub mod cli;
pub mod state;
pub mod templates;

pub use state::{Delivery, DeliveryState, DeliveryStatus, StateError};
pub use templates::{TemplateError, Templates};

/// How the connection to the relay is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SmtpSecurity {
    /// Plain text; only for a relay on the same host or a trusted network.
    None,
    /// Plain connection upgraded with STARTTLS, which is required (usually port 587).
    Starttls,
    /// TLS from the first byte (usually port 465).
    Tls,
}

impl SmtpSecurity {
    /// The port relays usually listen on for this kind of connection.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpSecurity::None => 25,
            SmtpSecurity::Starttls => 587,
            SmtpSecurity::Tls => 465,
        }
    }
}

/// Where and how mail is handed over. `Debug` does not print the password.
#[derive(Clone)]
pub struct SmtpSettings {
    /// The relay's host name (also the name its certificate must carry).
    pub host: String,
    /// The relay's port.
    pub port: u16,
    /// How the connection is secured.
    pub security: SmtpSecurity,
    /// User name and password, when the relay wants them.
    pub credentials: Option<(String, String)>,
    /// An extra CA (PEM) the relay's certificate may chain to, besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The sender of every mail, e.g. `Billing <billing@provider.example>`.
    pub from: String,
    /// How long one conversation with the relay may take.
    pub timeout: Duration,
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .field("ca_file", &self.ca_file)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

/// How the mailer paces itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailerConfig {
    /// This mailer's name in the claims it takes; unique per running mailer.
    pub name: String,
    /// The pause between passes.
    pub interval: Duration,
    /// How long a claim holds before another mailer may take the notification over.
    pub claim_ttl: chrono::Duration,
    /// The pause after the first temporary failure; it doubles with each further one.
    pub retry_base: chrono::Duration,
    /// The longest pause between attempts.
    pub retry_max: chrono::Duration,
    /// Attempts after which a notification that keeps failing temporarily is given up.
    pub max_attempts: u32,
    /// Notifications of events before this position are never sent (for a mailer started on a
    /// log whose older notices went out by other means).
    pub from_position: u64,
}

impl Default for MailerConfig {
    fn default() -> Self {
        Self {
            name: format!("mailer-{}", Uuid::new_v4()),
            interval: Duration::from_secs(5),
            claim_ttl: chrono::Duration::minutes(5),
            retry_base: chrono::Duration::seconds(30),
            retry_max: chrono::Duration::hours(1),
            max_attempts: 10,
            from_position: 0,
        }
    }
}

/// What went wrong around the mailer (never one notification's delivery, which is recorded).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MailerError {
    /// The SMTP settings are unusable.
    #[error("SMTP settings: {0}")]
    Settings(String),
    /// The delivery state failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The log or read models failed.
    #[error(transparent)]
    Log(#[from] crate::error::Error),
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MailerReport {
    /// Accepted by the relay.
    pub sent: usize,
    /// Failed temporarily; tried again later.
    pub retried: usize,
    /// Failed for good.
    pub failed: usize,
}

/// The outcome of one attempt.
enum Attempt {
    Sent,
    Temporary(String),
    Permanent(String),
}

/// A mailer over one log and one delivery state.
#[derive(Debug)]
pub struct Mailer {
    store: Arc<dyn EventStore>,
    read: ReadSide,
    state: Arc<dyn DeliveryState>,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    templates: Templates,
    clock: Arc<dyn Clock>,
    config: MailerConfig,
    finished: std::sync::Mutex<HashSet<Uuid>>,
}

impl Mailer {
    /// A mailer delivering what `read` routes, recording in `state`.
    pub async fn new(
        store: Arc<dyn EventStore>,
        read: ReadSide,
        state: Arc<dyn DeliveryState>,
        smtp: &SmtpSettings,
        templates: Templates,
        clock: Arc<dyn Clock>,
        config: MailerConfig,
    ) -> Result<Mailer, MailerError> {
        let from: Mailbox = smtp
            .from
            .parse()
            .map_err(|e| MailerError::Settings(format!("`{}` is not a sender: {e}", smtp.from)))?;
        let transport = transport(smtp)?;
        let finished = state.finished().await?.into_iter().collect();
        Ok(Mailer {
            store,
            read,
            state,
            transport,
            from,
            templates,
            clock,
            config,
            finished: std::sync::Mutex::new(finished),
        })
    }

    /// The delivery state this mailer records in.
    pub fn state(&self) -> &Arc<dyn DeliveryState> {
        &self.state
    }

    /// Runs passes every [`MailerConfig::interval`] until the task is aborted.
    pub fn spawn(self) -> JoinHandle<()> {
        let mailer = Arc::new(self);
        tokio::spawn(async move {
            loop {
                if let Err(e) = mailer.pass().await {
                    tracing::warn!(error = %e, "mailer pass failed; retrying");
                }
                tokio::time::sleep(mailer.config.interval).await;
            }
        })
    }

    /// One pass: waits for the read models to reach the head of the log, then attempts every
    /// notification that is not finished, not claimed by another mailer and due.
    pub async fn pass(&self) -> Result<MailerReport, MailerError> {
        let head = self
            .store
            .head_position()
            .await
            .map_err(crate::error::Error::from)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let from_position = self.config.from_position;
        let pending: Vec<Notification> = {
            let finished = self
                .finished
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            self.read
                .read(head, deadline, move |models| {
                    models
                        .notifications
                        .all()
                        .iter()
                        .filter(|n| n.position >= from_position)
                        .filter(|n| !finished.contains(&n.notification_id))
                        .cloned()
                        .collect()
                })
                .await?
        };

        let mut report = MailerReport::default();
        for notification in pending {
            let now = self.clock.now();
            let id = notification.notification_id;
            let Some(attempt) = self
                .state
                .claim(id, &self.config.name, now, now + self.config.claim_ttl)
                .await?
            else {
                continue;
            };
            // LIMITATION: a mailer that dies after the relay accepted a mail but before recording it sends that mail again once its claim expires; the Message-ID lets the relay or mailbox drop the copy.
            let outcome = self.send(&notification).await;
            let at = self.clock.now();
            let (status, next, error) = match outcome {
                Attempt::Sent => (DeliveryStatus::Sent, None, None),
                Attempt::Permanent(e) => (DeliveryStatus::Failed, None, Some(e)),
                Attempt::Temporary(e) if attempt >= self.config.max_attempts => (
                    DeliveryStatus::Failed,
                    None,
                    Some(format!("gave up after {attempt} attempts: {e}")),
                ),
                Attempt::Temporary(e) => (
                    DeliveryStatus::Retry,
                    Some(at + self.backoff(attempt)),
                    Some(e),
                ),
            };
            self.state
                .finish(id, &self.config.name, status, at, next, error.as_deref())
                .await?;
            match status {
                DeliveryStatus::Sent => {
                    report.sent += 1;
                    tracing::info!(notification_id = %id, attempt, "notification sent");
                }
                DeliveryStatus::Retry => {
                    report.retried += 1;
                    tracing::warn!(notification_id = %id, attempt, error = ?error, "notification not sent; will retry");
                }
                _ => {
                    report.failed += 1;
                    tracing::error!(notification_id = %id, attempt, error = ?error, "notification failed for good");
                }
            }
            if status.is_final() {
                self.finished
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id);
            }
        }
        Ok(report)
    }

    /// The pause after the `attempt`-th temporary failure.
    fn backoff(&self, attempt: u32) -> chrono::Duration {
        let factor = 1i32 << attempt.saturating_sub(1).min(20);
        (self.config.retry_base * factor).min(self.config.retry_max)
    }

    async fn send(&self, notification: &Notification) -> Attempt {
        let (subject, body) = self.templates.render(notification);
        let to: Mailbox = match notification.recipient_email.as_str().parse() {
            Ok(to) => to,
            Err(e) => return Attempt::Permanent(format!("recipient cannot be addressed: {e}")),
        };
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(format!(
                "<{}@onbehalf.notification>",
                notification.notification_id
            )))
            .date(std::time::SystemTime::from(notification_date(notification)))
            .header(ContentType::TEXT_PLAIN)
            .body(body);
        let message = match message {
            Ok(message) => message,
            Err(e) => return Attempt::Permanent(format!("message cannot be built: {e}")),
        };
        match self.transport.send(message).await {
            Ok(_) => Attempt::Sent,
            Err(e) if e.is_permanent() => Attempt::Permanent(e.to_string()),
            Err(e) => Attempt::Temporary(e.to_string()),
        }
    }
}

fn notification_date(notification: &Notification) -> DateTime<Utc> {
    notification.created_at
}

fn transport(smtp: &SmtpSettings) -> Result<AsyncSmtpTransport<Tokio1Executor>, MailerError> {
    let tls = match smtp.security {
        SmtpSecurity::None => Tls::None,
        SmtpSecurity::Starttls | SmtpSecurity::Tls => {
            let mut params = TlsParameters::builder(smtp.host.clone());
            if let Some(path) = &smtp.ca_file {
                let pem = std::fs::read(path).map_err(|e| {
                    MailerError::Settings(format!("cannot read {}: {e}", path.display()))
                })?;
                let ca = Certificate::from_pem(&pem).map_err(|e| {
                    MailerError::Settings(format!(
                        "{} is not a PEM certificate: {e}",
                        path.display()
                    ))
                })?;
                params = params.add_root_certificate(ca);
            }
            let params = params
                .build_rustls()
                .map_err(|e| MailerError::Settings(format!("TLS: {e}")))?;
            if smtp.security == SmtpSecurity::Tls {
                Tls::Wrapper(params)
            } else {
                Tls::Required(params)
            }
        }
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.clone())
        .port(smtp.port)
        .tls(tls)
        .timeout(Some(smtp.timeout));
    if let Some((user, password)) = &smtp.credentials {
        builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
    }
    Ok(builder.build())
}
