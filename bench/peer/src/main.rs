//! `onbehalf-bench-peer`: the command mix of `onbehalf-bench throughput`, as a cqrs-es user would
//! write it with the stock PostgreSQL repository.
//!
//! The aggregate below keeps the same rules for the mix's five commands as onbehalf's
//! `ClientAccount` (owner-only invitations, acceptance of a pending and unexpired invitation,
//! owner-only grants, ORDERS to order, INVOICES to pay, no overpayment) and emits the very same
//! event types, so the payloads written are the same as onbehalf's. It is driven through
//! `CqrsFramework::execute_with_metadata` over `postgres_es::postgres_cqrs`, which loads every
//! event of the stream for each command, decides, and inserts the new events in one transaction
//! whose primary key on (aggregate type, id, sequence) is the optimistic check.
//!
//! It prints one JSON line per client count on stdout for `onbehalf-bench` to read.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Months, Utc};
use clap::Parser;
use cqrs_es::{Aggregate, AggregateError, CqrsFramework};
use onbehalf_events::account::{InvoiceKind, InvoiceLine};
use onbehalf_events::values::{BillingCycle, Currency, Email, Name, ProductKind};
use onbehalf_events::{AccountEvent, Permission, PermissionSet};
use postgres_es::PostgresEventRepository;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

/// The schema `postgres-es` expects (its `db/init.sql`, events and snapshots tables).
const SCHEMA: &str = "
CREATE TABLE events (
    aggregate_type text NOT NULL,
    aggregate_id   text NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text NOT NULL,
    event_version  text NOT NULL,
    payload        json NOT NULL,
    metadata       json NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);
CREATE TABLE snapshots (
    aggregate_type   text NOT NULL,
    aggregate_id     text NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0) NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);";

const HOSTING_PRODUCT: Uuid = Uuid::from_u128(0x5000_0001);
const HOSTING_MONTHLY_MINOR: i64 = 1_500_000;

#[derive(Debug, Parser)]
struct Args {
    /// The (empty) database to run in.
    #[arg(long)]
    database_url: String,
    /// Client counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    clients: Vec<usize>,
    /// Client accounts created before measuring; each client works on its own share of them.
    #[arg(long, default_value_t = 2048)]
    accounts: usize,
    /// Agency users that can be invited; bounds how many mix cycles one account goes through.
    #[arg(long, default_value_t = 64)]
    designers: usize,
    /// Seconds per round.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds run first and not counted.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Rounds whose median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Connections in the pool (onbehalf's PostgreSQL store opens 16).
    #[arg(long, default_value_t = 16)]
    connections: u32,
}

#[derive(Debug, thiserror::Error)]
enum PeerError {
    #[error("PostgreSQL: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("command refused: {0}")]
    Command(String),
    #[error("{0}")]
    Setup(String),
}

/// Why the peer aggregate refused a command.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("{0}")]
    Denied(&'static str),
    #[error("{0}")]
    Precondition(&'static str),
    #[error("{0}")]
    Invalid(&'static str),
}

/// Who issues a command and when, as onbehalf's command context carries it.
#[derive(Debug, Clone)]
struct Context {
    user: Uuid,
    now: DateTime<Utc>,
}

#[derive(Debug, Clone)]
enum PeerCommand {
    Create {
        account_id: Uuid,
        name: Name,
        email: Email,
    },
    Invite {
        invitation_id: Uuid,
        email: Email,
        permissions: PermissionSet,
    },
    Accept {
        invitation_id: Uuid,
    },
    Grant {
        user_id: Uuid,
        permissions: PermissionSet,
    },
    Order {
        service_id: Uuid,
        invoice_id: Uuid,
    },
    Pay {
        invoice_id: Uuid,
        payment_id: Uuid,
        amount_minor: i64,
        reference: String,
    },
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Invitation {
    email: String,
    permissions: PermissionSet,
    expires_at: Option<DateTime<Utc>>,
    pending: bool,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Invoice {
    total_minor: i64,
    paid_minor: i64,
    paid: bool,
}

/// The client account as the peer folds it: what the mix's rules read.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct PeerAccount {
    exists: bool,
    owner: Option<Uuid>,
    members: BTreeMap<Uuid, PermissionSet>,
    invitations: BTreeMap<Uuid, Invitation>,
    services: BTreeMap<Uuid, ()>,
    invoices: BTreeMap<Uuid, Invoice>,
}

impl PeerAccount {
    fn allows(&self, user: Uuid, permission: Permission) -> bool {
        self.owner == Some(user)
            || self
                .members
                .get(&user)
                .is_some_and(|p| p.contains(permission))
    }

    fn decide(&self, ctx: &Context, command: PeerCommand) -> Result<Vec<AccountEvent>, Refused> {
        if !self.exists && !matches!(command, PeerCommand::Create { .. }) {
            return Err(Refused::Precondition("account not found"));
        }
        let owner_only = || {
            if self.owner == Some(ctx.user) {
                Ok(())
            } else {
                Err(Refused::Denied("only the account owner manages users"))
            }
        };
        match command {
            PeerCommand::Create {
                account_id,
                name,
                email,
            } => {
                if self.exists {
                    return Err(Refused::Precondition("account already exists"));
                }
                Ok(vec![AccountEvent::AccountCreated {
                    account_id,
                    name,
                    email,
                    owner_user_id: ctx.user,
                }])
            }
            PeerCommand::Invite {
                invitation_id,
                email,
                permissions,
            } => {
                owner_only()?;
                if permissions.is_empty() {
                    return Err(Refused::Invalid("permissions must not be empty"));
                }
                let key = email.key();
                if self.invitations.values().any(|i| {
                    i.pending && i.email == key && i.expires_at.is_some_and(|e| ctx.now < e)
                }) {
                    return Err(Refused::Precondition(
                        "a pending invitation for that email exists",
                    ));
                }
                if self.invitations.contains_key(&invitation_id) {
                    return Err(Refused::Precondition("invitation id is taken"));
                }
                Ok(vec![AccountEvent::UserInvited {
                    invitation_id,
                    email,
                    permissions,
                    expires_at: ctx.now + chrono::Duration::days(7),
                    invited_by: ctx.user,
                }])
            }
            PeerCommand::Accept { invitation_id } => {
                let invitation = self
                    .invitations
                    .get(&invitation_id)
                    .ok_or(Refused::Precondition("invitation not found"))?;
                if !invitation.pending || invitation.expires_at.is_none_or(|e| ctx.now >= e) {
                    return Err(Refused::Precondition("invitation is not open"));
                }
                if self.owner == Some(ctx.user) || self.members.contains_key(&ctx.user) {
                    return Err(Refused::Precondition("caller is already a party"));
                }
                Ok(vec![AccountEvent::InvitationAccepted {
                    invitation_id,
                    user_id: ctx.user,
                    permissions: invitation.permissions.clone(),
                }])
            }
            PeerCommand::Grant {
                user_id,
                permissions,
            } => {
                owner_only()?;
                let held = self
                    .members
                    .get(&user_id)
                    .ok_or(Refused::Precondition("member not found"))?;
                let granted = permissions.difference(held);
                if granted.is_empty() {
                    return Ok(vec![]);
                }
                Ok(vec![AccountEvent::PermissionsGranted {
                    user_id,
                    permissions: held.union(&granted),
                    granted,
                }])
            }
            PeerCommand::Order {
                service_id,
                invoice_id,
            } => {
                if !self.allows(ctx.user, Permission::Orders) {
                    return Err(Refused::Denied("caller lacks the ORDERS permission"));
                }
                if self.services.contains_key(&service_id)
                    || self.invoices.contains_key(&invoice_id)
                {
                    return Err(Refused::Precondition("service or invoice id is taken"));
                }
                let today = ctx.now.date_naive();
                let next_due = today
                    .checked_add_months(Months::new(1))
                    .ok_or(Refused::Invalid("due date out of range"))?;
                let currency = tzs();
                let name = product_name();
                let last_day = next_due.pred_opt().unwrap_or(next_due);
                Ok(vec![
                    AccountEvent::ServiceOrdered {
                        service_id,
                        product_id: HOSTING_PRODUCT,
                        product_name: name.clone(),
                        kind: ProductKind::Hosting,
                        domain: None,
                        billing_cycle: BillingCycle::Monthly,
                        amount_minor: HOSTING_MONTHLY_MINOR,
                        currency: currency.clone(),
                        ordered_on: today,
                        next_due_date: next_due,
                    },
                    AccountEvent::InvoiceIssued {
                        invoice_id,
                        service_id,
                        kind: InvoiceKind::Order,
                        lines: vec![InvoiceLine {
                            description: format!("{name} ({today} - {last_day})"),
                            amount_minor: HOSTING_MONTHLY_MINOR,
                        }],
                        total_minor: HOSTING_MONTHLY_MINOR,
                        currency,
                        issued_on: today,
                        due_date: today,
                    },
                ])
            }
            PeerCommand::Pay {
                invoice_id,
                payment_id,
                amount_minor,
                reference,
            } => {
                if !self.allows(ctx.user, Permission::Invoices) {
                    return Err(Refused::Denied("caller lacks the INVOICES permission"));
                }
                let invoice = self
                    .invoices
                    .get(&invoice_id)
                    .ok_or(Refused::Precondition("invoice not found"))?;
                if invoice.paid {
                    return Err(Refused::Precondition("invoice is already paid"));
                }
                if amount_minor <= 0 {
                    return Err(Refused::Invalid("amount must be greater than zero"));
                }
                let outstanding = invoice.total_minor - invoice.paid_minor;
                if amount_minor > outstanding {
                    return Err(Refused::Precondition("overpayment"));
                }
                let mut events = vec![AccountEvent::PaymentReceived {
                    invoice_id,
                    payment_id,
                    amount_minor,
                    reference,
                }];
                if amount_minor == outstanding {
                    events.push(AccountEvent::InvoicePaid { invoice_id });
                }
                Ok(events)
            }
        }
    }
}

impl Aggregate for PeerAccount {
    const TYPE: &'static str = "client_account";
    type Command = (Context, PeerCommand);
    type Event = AccountEvent;
    type Error = Refused;
    type Services = ();

    async fn handle(
        &mut self,
        (ctx, command): Self::Command,
        _services: &Self::Services,
        sink: &cqrs_es::event_sink::EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(&ctx, command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            AccountEvent::AccountCreated { owner_user_id, .. } => {
                self.exists = true;
                self.owner = Some(owner_user_id);
            }
            AccountEvent::UserInvited {
                invitation_id,
                email,
                permissions,
                expires_at,
                ..
            } => {
                self.invitations.insert(
                    invitation_id,
                    Invitation {
                        email: email.key(),
                        permissions,
                        expires_at: Some(expires_at),
                        pending: true,
                    },
                );
            }
            AccountEvent::InvitationAccepted {
                invitation_id,
                user_id,
                permissions,
            } => {
                if let Some(i) = self.invitations.get_mut(&invitation_id) {
                    i.pending = false;
                }
                self.members.insert(user_id, permissions);
            }
            AccountEvent::PermissionsGranted {
                user_id,
                permissions,
                ..
            } => {
                self.members.insert(user_id, permissions);
            }
            AccountEvent::ServiceOrdered { service_id, .. } => {
                self.services.insert(service_id, ());
            }
            AccountEvent::InvoiceIssued {
                invoice_id,
                total_minor,
                ..
            } => {
                self.invoices.insert(
                    invoice_id,
                    Invoice {
                        total_minor,
                        paid_minor: 0,
                        paid: false,
                    },
                );
            }
            AccountEvent::PaymentReceived {
                invoice_id,
                amount_minor,
                ..
            } => {
                if let Some(i) = self.invoices.get_mut(&invoice_id) {
                    i.paid_minor += amount_minor;
                }
            }
            AccountEvent::InvoicePaid { invoice_id } => {
                if let Some(i) = self.invoices.get_mut(&invoice_id) {
                    i.paid = true;
                }
            }
            _ => {}
        }
    }
}

fn tzs() -> Currency {
    // A constant that parses; checked once at start by `check_values`.
    Currency::parse("TZS").unwrap_or_else(|_| unreachable!("TZS is a currency"))
}

fn product_name() -> Name {
    Name::parse("Starter Hosting").unwrap_or_else(|_| unreachable!("a valid name"))
}

fn check_values() -> Result<(), PeerError> {
    Currency::parse("TZS").map_err(|e| PeerError::Setup(e.to_string()))?;
    Name::parse("Starter Hosting").map_err(|e| PeerError::Setup(e.to_string()))?;
    Ok(())
}

type Cqrs = CqrsFramework<
    PeerAccount,
    cqrs_es::persist::PersistedEventStore<PostgresEventRepository, PeerAccount>,
>;

/// Ids of the mix, the same scheme `onbehalf-bench` uses for onbehalf.
fn account_id(a: usize) -> Uuid {
    Uuid::from_u128(0xac00_0000_0000 | a as u128)
}
fn owner_id(a: usize) -> Uuid {
    Uuid::from_u128(0x0a00_0000_0000 | a as u128)
}
fn designer_id(d: usize) -> Uuid {
    Uuid::from_u128(0xd000_0000_0000 | d as u128)
}

async fn execute(
    cqrs: &Cqrs,
    account: usize,
    ctx: Context,
    permission: Option<Permission>,
    command: PeerCommand,
) -> Result<(), PeerError> {
    let aggregate_id = account_id(account).to_string();
    // What a cqrs-es user passes along: who, for whom, with which permission, which request.
    let mut metadata = HashMap::new();
    metadata.insert("actor".to_owned(), format!("user:{}", ctx.user));
    metadata.insert("on_behalf_of".to_owned(), aggregate_id.clone());
    if let Some(p) = permission {
        metadata.insert("permission".to_owned(), p.as_str().to_owned());
    }
    metadata.insert("request_id".to_owned(), Uuid::new_v4().to_string());
    cqrs.execute_with_metadata(&aggregate_id, (ctx, command), metadata)
        .await
        .map_err(|e: AggregateError<Refused>| PeerError::Command(e.to_string()))
}

/// One pass of the mix over one account: invite, accept, grant, order, pay. Returns the
/// latency of each command.
async fn cycle(
    cqrs: &Cqrs,
    account: usize,
    designer: usize,
    cycle: usize,
    latencies: &mut Vec<Duration>,
) -> Result<(), PeerError> {
    let owner = owner_id(account);
    let user = designer_id(designer);
    let seq = (account as u128) << 32 | cycle as u128;
    let invitation_id = Uuid::from_u128(0x1 << 120 | seq);
    let service_id = Uuid::from_u128(0x2 << 120 | seq);
    let invoice_id = Uuid::from_u128(0x3 << 120 | seq);
    let payment_id = Uuid::from_u128(0x4 << 120 | seq);
    let email = Email::parse(&format!("designer{designer}@yourcompany.com"))
        .map_err(|e| PeerError::Setup(e.to_string()))?;
    let steps: [(Uuid, Option<Permission>, PeerCommand); 5] = [
        (
            owner,
            None,
            PeerCommand::Invite {
                invitation_id,
                email,
                permissions: [Permission::Products].into_iter().collect(),
            },
        ),
        (user, None, PeerCommand::Accept { invitation_id }),
        (
            owner,
            None,
            PeerCommand::Grant {
                user_id: user,
                permissions: [Permission::Orders, Permission::Invoices]
                    .into_iter()
                    .collect(),
            },
        ),
        (
            user,
            Some(Permission::Orders),
            PeerCommand::Order {
                service_id,
                invoice_id,
            },
        ),
        (
            user,
            Some(Permission::Invoices),
            PeerCommand::Pay {
                invoice_id,
                payment_id,
                amount_minor: HOSTING_MONTHLY_MINOR,
                reference: format!("card-{payment_id}"),
            },
        ),
    ];
    for (actor, permission, command) in steps {
        let started = Instant::now();
        let ctx = Context {
            user: actor,
            now: Utc::now(),
        };
        execute(cqrs, account, ctx, permission, command).await?;
        latencies.push(started.elapsed());
    }
    Ok(())
}

/// Events one cycle writes: invite 1, accept 1, grant 1, order 2, pay 2.
const EVENTS_PER_CYCLE: u64 = 7;
const COMMANDS_PER_CYCLE: u64 = 5;

#[derive(Debug, Serialize)]
struct Report {
    clients: usize,
    commands_per_s: Vec<f64>,
    events_per_s: Vec<f64>,
    p50_us: f64,
    p99_us: f64,
    commands: u64,
}

struct Progress {
    /// Cycles done so far per account, to pick each account's next designer.
    cycles: Vec<std::sync::atomic::AtomicUsize>,
}

async fn round(
    cqrs: &Arc<Cqrs>,
    progress: &Arc<Progress>,
    clients: usize,
    seconds: f64,
    designers: usize,
) -> Result<(f64, u64, Vec<Duration>), PeerError> {
    let accounts = progress.cycles.len();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let cqrs = cqrs.clone();
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut cycles = 0u64;
            let mut k = 0usize;
            let own = (accounts.saturating_sub(client)).div_ceil(clients);
            while Instant::now() < deadline {
                let account = client + clients * (k % own.max(1));
                k += 1;
                let n = progress.cycles[account].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= designers {
                    return Err(PeerError::Setup(format!(
                        "account {account} ran out of designers to invite; give more accounts"
                    )));
                }
                cycle(&cqrs, account, (account + n) % designers, n, &mut latencies).await?;
                cycles += 1;
            }
            Ok::<_, PeerError>((cycles, latencies))
        }));
    }
    let mut cycles = 0;
    let mut latencies = Vec::new();
    for task in tasks {
        let (c, l) = task
            .await
            .map_err(|e| PeerError::Setup(format!("client task failed: {e}")))??;
        cycles += c;
        latencies.extend(l);
    }
    Ok((started.elapsed().as_secs_f64(), cycles, latencies))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e6
}

async fn run(args: Args) -> Result<(), PeerError> {
    check_values()?;
    let pool = PgPoolOptions::new()
        .max_connections(args.connections)
        .connect(&args.database_url)
        .await?;
    sqlx::raw_sql(SCHEMA).execute(&pool).await?;
    let cqrs = Arc::new(postgres_es::postgres_cqrs::<PeerAccount>(
        pool.clone(),
        vec![],
        (),
    ));

    // Every account is created through the framework, as its owner would.
    let started = Instant::now();
    let mut creating = Vec::new();
    let per_task = args.accounts.div_ceil(16);
    for t in 0..16 {
        let cqrs = cqrs.clone();
        let range = t * per_task..((t + 1) * per_task).min(args.accounts);
        creating.push(tokio::spawn(async move {
            for a in range {
                let ctx = Context {
                    user: owner_id(a),
                    now: Utc::now(),
                };
                let command = PeerCommand::Create {
                    account_id: account_id(a),
                    name: Name::parse(&format!("Client {a} Ltd"))
                        .map_err(|e| PeerError::Setup(e.to_string()))?,
                    email: Email::parse(&format!("billing@client{a}.co.tz"))
                        .map_err(|e| PeerError::Setup(e.to_string()))?,
                };
                execute(&cqrs, a, ctx, None, command).await?;
            }
            Ok::<_, PeerError>(())
        }));
    }
    for task in creating {
        task.await
            .map_err(|e| PeerError::Setup(format!("setup task failed: {e}")))??;
    }
    eprintln!(
        "peer: created {} client accounts in {:.1} s",
        args.accounts,
        started.elapsed().as_secs_f64()
    );

    let progress = Arc::new(Progress {
        cycles: (0..args.accounts)
            .map(|_| std::sync::atomic::AtomicUsize::new(0))
            .collect(),
    });
    for &clients in &args.clients {
        let mut commands_per_s = Vec::new();
        let mut events_per_s = Vec::new();
        let mut latencies = Vec::new();
        let mut commands = 0;
        for r in 0..args.warmup + args.rounds {
            let (seconds, cycles, lat) =
                round(&cqrs, &progress, clients, args.seconds, args.designers).await?;
            if r >= args.warmup {
                commands_per_s.push((cycles * COMMANDS_PER_CYCLE) as f64 / seconds);
                events_per_s.push((cycles * EVENTS_PER_CYCLE) as f64 / seconds);
                commands += cycles * COMMANDS_PER_CYCLE;
                latencies.extend(lat);
            }
        }
        latencies.sort_unstable();
        let report = Report {
            clients,
            p50_us: percentile(&latencies, 0.50),
            p99_us: percentile(&latencies, 0.99),
            commands_per_s: vec![median(commands_per_s)],
            events_per_s: vec![median(events_per_s)],
            commands,
        };
        let line = serde_json::to_string(&report).map_err(|e| PeerError::Setup(e.to_string()))?;
        println!("{line}");
    }
    pool.close().await;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
