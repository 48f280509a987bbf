//! The scheduler: renewal invoices before due dates, payment reminders, suspension of services
//! left unpaid, all as the system actor.
//!
//! The scheduler only proposes. It reads the billing ledger to find what may be due, and sends
//! each proposal as a command that the client account decides on its own state: a renewal is
//! issued only for the cycle that is still the next one and has no invoice yet (whoever asked
//! first, a member or the scheduler), a reminder only once per invoice and day offset, a
//! suspension only for an invoice still unpaid past its grace days. Every proposal carries a
//! request id derived from what it is about, and renewal invoice ids are derived the same way,
//! so any number of replicas, restarted any number of times, append each decision once: the
//! loser of a race finds the winner's record or decides again on the new state and appends
//! nothing. Timing never matters for exactness, only for how soon things happen.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use onbehalf_events::{account_stream, Actor, Metadata};
use onbehalf_projections::{InvoiceStatus, ReadModels, ServiceStatus};
use sha2::Digest;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::domain::account::InvoiceStatus as WriteInvoiceStatus;
use crate::domain::{AccountCommand, ClientAccount, Command, CommandContext};
use crate::error::Result;
use crate::executor::{Execution, Executor, Idempotency};
use crate::read::ReadSide;

/// The namespace of renewal invoice ids: an invoice id is the UUID v5 of the service id and
/// cycle under it, so every replica proposes the same id for the same cycle.
const RENEWAL_NAMESPACE: Uuid = Uuid::from_u128(0x6f6e_6265_6861_6c66_8000_0000_0000_0001);

/// What the scheduler does and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Days before a service's due date its renewal invoice is issued.
    pub renewal_lead_days: u32,
    /// Days before an unpaid invoice's due date a reminder goes out (each once).
    pub remind_days_before: Vec<u32>,
    /// Days after an unpaid invoice's due date a reminder goes out (each once; 0 is the day).
    pub remind_days_after: Vec<u32>,
    /// Days after an unpaid due date the service is suspended; `None`: never.
    pub suspend_after_days: Option<u32>,
    /// How long the scheduler waits between passes.
    pub interval: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            renewal_lead_days: 14,
            remind_days_before: vec![7],
            remind_days_after: vec![3, 10],
            suspend_after_days: Some(14),
            interval: Duration::from_secs(60),
        }
    }
}

impl SchedulerConfig {
    /// The reminder offsets from the due date, ascending: negative before it.
    fn offsets(&self) -> Vec<i32> {
        let before = self
            .remind_days_before
            .iter()
            .map(|d| -i32::try_from(*d).unwrap_or(i32::MAX));
        let after = self
            .remind_days_after
            .iter()
            .map(|d| i32::try_from(*d).unwrap_or(i32::MAX));
        let mut offsets: Vec<i32> = before.chain(after).collect();
        offsets.sort_unstable();
        offsets.dedup();
        offsets
    }
}

/// What one pass proposed and what the accounts decided.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Proposals sent as commands.
    pub proposed: usize,
    /// Proposals whose outcome now holds (issued now, earlier, or by another replica).
    pub settled: usize,
    /// Proposals that failed (store unavailable, a lost race after retries); tried again next
    /// pass.
    pub failed: usize,
}

/// One proposal: a command, its deterministic request id, and the key it is remembered by.
#[derive(Debug)]
struct Proposal {
    account_id: Uuid,
    request_id: String,
    body: AccountCommand,
}

/// The scheduler of one process. Several may run against the same log.
#[derive(Debug)]
pub struct Scheduler {
    executor: Executor,
    read: ReadSide,
    config: SchedulerConfig,
    /// Request ids whose outcome holds, so that later passes skip them.
    settled: std::sync::Mutex<HashSet<String>>,
}

impl Scheduler {
    /// A scheduler deciding through `executor`, finding candidates in `read`.
    pub fn new(executor: Executor, read: ReadSide, config: SchedulerConfig) -> Self {
        Self {
            executor,
            read,
            config,
            settled: std::sync::Mutex::default(),
        }
    }

    /// Runs passes every [`SchedulerConfig::interval`] until the task is aborted.
    pub fn spawn(self) -> JoinHandle<()> {
        let scheduler = Arc::new(self);
        tokio::spawn(async move {
            loop {
                match scheduler.pass().await {
                    Ok(report) if report.proposed > 0 => {
                        tracing::debug!(?report, "scheduler pass");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "scheduler pass failed; retrying"),
                }
                tokio::time::sleep(scheduler.config.interval).await;
            }
        })
    }

    /// One pass at the clock's current date: waits for the read models to reach the head of
    /// the log, proposes everything due, and reports.
    pub async fn pass(&self) -> Result<PassReport> {
        let today = self.executor.clock().now().date_naive();
        let head = self.executor.store().head_position().await?;
        // Other processes' appends wake the read models now rather than at their next poll.
        self.executor.announce(head);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let proposals = self
            .read
            .read(head, deadline, |models| self.proposals(models, today))
            .await?;

        let mut report = PassReport::default();
        let mut live = HashSet::new();
        for proposal in proposals {
            live.insert(proposal.request_id.clone());
            if self.is_settled(&proposal.request_id) {
                continue;
            }
            report.proposed += 1;
            match self.propose(&proposal).await {
                Ok(true) => {
                    report.settled += 1;
                    self.settle(&proposal.request_id);
                }
                Ok(false) => {}
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(
                        account_id = %proposal.account_id,
                        request_id = %proposal.request_id,
                        error = %e,
                        "scheduled command failed"
                    );
                }
            }
        }
        // What is no longer a candidate (paid, cancelled, renewed) is never proposed again.
        self.settled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id| live.contains(id));
        Ok(report)
    }

    fn is_settled(&self, request_id: &str) -> bool {
        self.settled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(request_id)
    }

    fn settle(&self, request_id: &str) {
        self.settled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request_id.to_owned());
    }

    /// Everything that may be due on `today`, from the read models; the accounts decide.
    fn proposals(&self, models: &ReadModels, today: NaiveDate) -> Vec<Proposal> {
        let config = &self.config;
        let lead = chrono::Duration::days(i64::from(config.renewal_lead_days));
        let offsets = config.offsets();
        let mut proposals = Vec::new();
        for account_id in models.billing.billed_accounts() {
            let services = models.billing.services(account_id);
            let invoices = models.billing.invoices(account_id);
            for service in services
                .iter()
                .filter(|s| s.status != ServiceStatus::Cancelled)
            {
                let period_start = service.next_due_date;
                let billed = invoices.iter().any(|i| {
                    i.service_id == service.service_id
                        && i.kind
                            == (onbehalf_events::account::InvoiceKind::Renewal { period_start })
                });
                if !billed && today >= period_start - lead {
                    proposals.push(Proposal {
                        account_id,
                        request_id: format!(
                            "scheduler/renewal/{}/{period_start}",
                            service.service_id
                        ),
                        body: AccountCommand::IssueRenewal {
                            service_id: service.service_id,
                            period_start,
                            invoice_id: renewal_invoice_id(service.service_id, period_start),
                            lead_days: config.renewal_lead_days,
                        },
                    });
                }
                for invoice in invoices.iter().filter(|i| {
                    i.service_id == service.service_id && i.status == InvoiceStatus::Unpaid
                }) {
                    let due = invoice.due_date;
                    // Only the latest reminder that applies: one missed while the scheduler
                    // was down is not sent late, and none before the due date once it passed.
                    let reminder = offsets.iter().rev().copied().find(|d| {
                        today >= due + chrono::Duration::days(i64::from(*d))
                            && (*d >= 0 || today < due)
                    });
                    if let Some(days_from_due) = reminder {
                        proposals.push(Proposal {
                            account_id,
                            request_id: format!(
                                "scheduler/reminder/{}/{days_from_due}",
                                invoice.invoice_id
                            ),
                            body: AccountCommand::RemindInvoice {
                                invoice_id: invoice.invoice_id,
                                days_from_due,
                            },
                        });
                    }
                    if let Some(grace) = config.suspend_after_days {
                        if today >= due + chrono::Duration::days(i64::from(grace)) {
                            proposals.push(Proposal {
                                account_id,
                                request_id: format!(
                                    "scheduler/suspension/{}/{}",
                                    service.service_id, invoice.invoice_id
                                ),
                                body: AccountCommand::SuspendService {
                                    service_id: service.service_id,
                                    invoice_id: invoice.invoice_id,
                                    grace_days: grace,
                                },
                            });
                        }
                    }
                }
            }
        }
        proposals
    }

    /// Sends one proposal; `true` when what it asks for now holds on the account.
    async fn propose(&self, proposal: &Proposal) -> Result<bool> {
        let mut metadata = Metadata::new(Actor::System);
        metadata.on_behalf_of = Some(proposal.account_id);
        // The request id names the decision; its digest is the same for every replica whatever
        // their configured days, so a replica never sees another's record as a different request.
        let request_hash = sha2::Sha256::digest(proposal.request_id.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let execution = Execution::<ClientAccount> {
            stream_id: account_stream(proposal.account_id),
            command: Command {
                context: CommandContext {
                    actor: Actor::System,
                    now: self.executor.clock().now(),
                },
                body: proposal.body.clone(),
            },
            metadata,
            idempotency: Some(Idempotency {
                request_id: proposal.request_id.clone(),
                request_hash,
            }),
            reservations: Vec::new(),
        };
        let body = proposal.body.clone();
        let done = self
            .executor
            .execute(execution, move |account: &ClientAccount| {
                Ok(holds(account, &body))
            })
            .await?;
        Ok(done.value)
    }
}

/// Whether what `body` asks for holds on `account` (or can never be asked again).
fn holds(account: &ClientAccount, body: &AccountCommand) -> bool {
    match body {
        AccountCommand::IssueRenewal {
            service_id,
            period_start,
            ..
        } => account.services.get(service_id).is_none_or(|s| {
            s.cancelled || s.next_due_date != *period_start || s.renewals.contains_key(period_start)
        }),
        AccountCommand::RemindInvoice {
            invoice_id,
            days_from_due,
        } => account.invoices.get(invoice_id).is_none_or(|i| {
            i.status != WriteInvoiceStatus::Unpaid || i.reminders.contains(days_from_due)
        }),
        AccountCommand::SuspendService {
            service_id,
            invoice_id,
            ..
        } => {
            let unpaid = account
                .invoices
                .get(invoice_id)
                .is_some_and(|i| i.status == WriteInvoiceStatus::Unpaid);
            account
                .services
                .get(service_id)
                .is_none_or(|s| s.cancelled || !unpaid || s.suspended_for == Some(*invoice_id))
        }
        _ => true,
    }
}

/// The id of the renewal invoice of `service_id` for the cycle starting at `period_start`.
pub fn renewal_invoice_id(service_id: Uuid, period_start: NaiveDate) -> Uuid {
    let name = format!("{service_id}/{period_start}");
    Uuid::new_v5(&RENEWAL_NAMESPACE, name.as_bytes())
}

/// The scheduler's command-line settings, shared by `onbehalf scheduler` and
/// `onbehalf serve --scheduler`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScheduleArgs {
    /// Days before a service's due date its renewal invoice is issued.
    #[arg(long, default_value_t = 14, env = "ONBEHALF_RENEWAL_LEAD_DAYS")]
    pub renewal_lead_days: u32,
    /// Days before an unpaid invoice's due date reminders go out, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "7",
        env = "ONBEHALF_REMIND_DAYS_BEFORE"
    )]
    pub remind_days_before: Vec<u32>,
    /// Days after an unpaid invoice's due date reminders go out, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "3,10",
        env = "ONBEHALF_REMIND_DAYS_AFTER"
    )]
    pub remind_days_after: Vec<u32>,
    /// Days after an unpaid due date the service is suspended; 0 turns suspension off.
    #[arg(long, default_value_t = 14, env = "ONBEHALF_SUSPEND_AFTER_DAYS")]
    pub suspend_after_days: u32,
    /// Milliseconds between passes.
    #[arg(long, default_value_t = 60_000, env = "ONBEHALF_SCHEDULER_INTERVAL_MS")]
    pub scheduler_interval_ms: u64,
}

impl ScheduleArgs {
    /// The configuration these arguments describe.
    pub fn config(&self) -> SchedulerConfig {
        SchedulerConfig {
            renewal_lead_days: self.renewal_lead_days,
            remind_days_before: self.remind_days_before.clone(),
            remind_days_after: self.remind_days_after.clone(),
            suspend_after_days: (self.suspend_after_days > 0).then_some(self.suspend_after_days),
            interval: Duration::from_millis(self.scheduler_interval_ms.max(10)),
        }
    }
}

/// `onbehalf scheduler`: the scheduler alone, on the log a server uses.
#[derive(Debug, Clone, clap::Args)]
pub struct SchedulerArgs {
    /// Data directory of the embedded log.
    #[arg(long, default_value = "./onbehalf-data", env = "ONBEHALF_DATA_DIR")]
    pub data_dir: std::path::PathBuf,
    /// PostgreSQL URL of the log, instead of the data directory's.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// A file holding the current time as an RFC 3339 instant, read on every pass (for tests);
    /// without it, the system clock.
    #[arg(long, env = "ONBEHALF_CLOCK_FILE")]
    pub clock_file: Option<std::path::PathBuf>,
    /// What to schedule.
    #[command(flatten)]
    pub schedule: ScheduleArgs,
}

/// A renewal scheduler reads no invitation link, so its read models get none.
#[derive(Debug)]
struct NoLinks;

impl onbehalf_projections::InvitationLinks for NoLinks {
    fn token(&self, _account_id: Uuid, _invitation_id: Uuid, _generation: u32) -> String {
        String::new()
    }

    fn accept_url(&self, _token: &str) -> String {
        String::new()
    }
}

/// Runs `onbehalf scheduler` until interrupted.
pub async fn run_cli(args: SchedulerArgs) -> std::result::Result<(), String> {
    let clock = crate::clock::from_file(args.clock_file.as_deref())?;
    crate::cli::require_log(&args.data_dir, args.database_url.as_deref())
        .map_err(|e| e.to_string())?;
    let mut server = crate::server::ServerConfig::new(args.data_dir);
    server.database_url = args.database_url;
    let store = crate::server::open_store(&server)
        .await
        .map_err(|e| e.to_string())?;
    let (appended_tx, appended_rx) = tokio::sync::watch::channel(0);
    let executor = Executor::new(store.clone(), clock, appended_tx);
    let read = ReadSide::start(store, ReadModels::new(Arc::new(NoLinks)), appended_rx)
        .await
        .map_err(|e| e.to_string())?;
    let task = Scheduler::new(executor, read, args.schedule.config()).spawn();
    tracing::info!("scheduler running");
    let _ = tokio::signal::ctrl_c().await;
    task.abort();
    tracing::info!("scheduler stopped");
    Ok(())
}
