//! Debugging with the log: `onbehalf events`, `onbehalf replay` and `onbehalf aggregate`.
//!
//! `events` talks to a server through `HistoryService.StreamEvents`; `replay` and `aggregate`
//! open the log directly and change nothing in it.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Args;
use onbehalf_events::account::RemovalReason;
use onbehalf_events::{
    account_stream, stream_type, AccountEvent, CatalogEvent, PermissionSet, StoredEvent, UserEvent,
};
use onbehalf_projections::{
    format_money, InvitationState, InvoiceStatus, ReadModels, Role, ServiceStatus,
};
use onbehalf_proto::v1 as pb;
use pb::history_service_client::HistoryServiceClient;
use serde::Serialize;
use uuid::Uuid;

use super::{AuthedChannel, ServerArgs, StoreArgs};
use crate::error::{Error, Result};
use crate::history::{self, Point};
use crate::store::EventStore;
use crate::tokens::InvitationTokens;

/// `onbehalf events`: the log's events, one line each, through a server.
#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// How to reach the server.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Only events of this client account.
    #[arg(long)]
    pub account: Option<Uuid>,
    /// Only events whose actor is this user.
    #[arg(long)]
    pub actor: Option<Uuid>,
    /// Only events of this type, e.g. `PermissionsRevoked`; repeat for several.
    #[arg(long = "type")]
    pub event_types: Vec<String>,
    /// The first position to show (inclusive).
    #[arg(long)]
    pub from: Option<u64>,
    /// The last position to show (inclusive); positions start at 1.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub to: Option<u64>,
    /// Keep running and show events as they are appended.
    #[arg(long)]
    pub follow: bool,
    /// One JSON object per line instead of a line for people.
    #[arg(long)]
    pub json: bool,
}

/// `onbehalf replay`: the read models rebuilt up to a point, printed.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Where the log is.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The last position to replay, or an RFC 3339 time (every event committed by then).
    #[arg(long, value_parser = history::parse_point)]
    pub until: Point,
    /// Print only this client account.
    #[arg(long)]
    pub account: Option<Uuid>,
}

/// `onbehalf aggregate`: a client account's write model at a stream version.
#[derive(Debug, Clone, Args)]
pub struct AggregateArgs {
    /// Where the log is.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The client account.
    pub account_id: Uuid,
    /// The stream version to stop at; the latest when omitted.
    #[arg(long)]
    pub at_version: Option<u64>,
}

/// Who is who, for lines people read: user emails and account names by id.
#[derive(Debug, Default)]
struct Names {
    users: BTreeMap<Uuid, String>,
    accounts: BTreeMap<Uuid, String>,
    /// The currency of each invoice seen, to show payments in it.
    invoices: BTreeMap<Uuid, onbehalf_events::values::Currency>,
}

impl Names {
    /// Learns from one event; events arrive in log order, so later names win.
    fn learn(&mut self, envelope: &pb::EventEnvelope) {
        match envelope.stream_type.as_str() {
            stream_type::USER => {
                if let Ok(UserEvent::UserRegistered { user_id, email, .. }) =
                    serde_json::from_str(&envelope.payload_json)
                {
                    self.users.insert(user_id, email.to_string());
                }
            }
            stream_type::CLIENT_ACCOUNT => match serde_json::from_str(&envelope.payload_json) {
                Ok(AccountEvent::AccountCreated {
                    account_id, name, ..
                }) => {
                    self.accounts.insert(account_id, name.to_string());
                }
                Ok(AccountEvent::AccountProfileUpdated { name, .. }) => {
                    if let Some(id) = account_of(&envelope.stream_id) {
                        self.accounts.insert(id, name.to_string());
                    }
                }
                Ok(AccountEvent::InvoiceIssued {
                    invoice_id,
                    currency,
                    ..
                }) => {
                    self.invoices.insert(invoice_id, currency);
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn user(&self, user_id: Uuid) -> String {
        self.users
            .get(&user_id)
            .cloned()
            .unwrap_or_else(|| user_id.to_string())
    }

    fn user_text(&self, raw: &str) -> String {
        Uuid::parse_str(raw).map_or_else(|_| raw.to_owned(), |id| self.user(id))
    }

    fn account_text(&self, raw: &str) -> String {
        Uuid::parse_str(raw).map_or_else(
            |_| raw.to_owned(),
            |id| {
                self.accounts
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| id.to_string())
            },
        )
    }
}

fn account_of(stream_id: &str) -> Option<Uuid> {
    stream_id
        .strip_prefix("account-")
        .and_then(|id| Uuid::parse_str(id).ok())
}

/// Streams every envelope `request` selects, handing each to `each`.
async fn stream(
    client: &mut HistoryServiceClient<AuthedChannel>,
    request: pb::StreamEventsRequest,
    mut each: impl FnMut(pb::EventEnvelope) -> Result<()>,
) -> Result<()> {
    let mut stream = client
        .stream_events(request)
        .await
        .map_err(status_error)?
        .into_inner();
    while let Some(message) = stream.message().await.map_err(status_error)? {
        if let Some(envelope) = message.event {
            each(envelope)?;
        }
    }
    Ok(())
}

fn status_error(status: tonic::Status) -> Error {
    let message = status.message().to_owned();
    match status.code() {
        tonic::Code::Unauthenticated => Error::Unauthenticated(message),
        tonic::Code::PermissionDenied => Error::PermissionDenied(message),
        tonic::Code::InvalidArgument => Error::invalid("request", message),
        tonic::Code::NotFound => Error::NotFound(message),
        tonic::Code::Unavailable => Error::Unavailable(message),
        _ => Error::Internal(format!("{:?}: {message}", status.code())),
    }
}

/// Runs `onbehalf events`: writes one line per event to `out`, flushing after each.
///
/// Lines for people name users by email and accounts by name, learnt from the log's
/// registrations and account profiles first; `--json` writes every envelope field instead.
pub async fn events(args: &EventsArgs, out: &mut impl Write) -> Result<()> {
    let channel = args.server.connect("cli", "events:read").await?;
    let mut client = HistoryServiceClient::new(channel).max_decoding_message_size(16 << 20);

    // LIMITATION: names are learnt by streaming every registration and account profile first, which reads the whole log once more before the first line.
    let mut names = Names::default();
    if !args.json {
        for (stream_type, types) in [
            (stream_type::USER, vec!["UserRegistered"]),
            (
                stream_type::CLIENT_ACCOUNT,
                vec!["AccountCreated", "AccountProfileUpdated"],
            ),
        ] {
            let request = pb::StreamEventsRequest {
                stream_type: stream_type.into(),
                event_types: types.into_iter().map(String::from).collect(),
                ..Default::default()
            };
            stream(&mut client, request, |e| {
                names.learn(&e);
                Ok(())
            })
            .await?;
        }
    }

    let request = pb::StreamEventsRequest {
        from_position: args.from.unwrap_or(0),
        to_position: args.to.unwrap_or(0),
        account_id: args.account.map(|a| a.to_string()).unwrap_or_default(),
        actor_user_id: args.actor.map(|a| a.to_string()).unwrap_or_default(),
        stream_type: String::new(),
        event_types: args.event_types.clone(),
        follow: args.follow,
    };
    let json = args.json;
    stream(&mut client, request, |envelope| {
        let line = if json {
            json_line(&envelope)?
        } else {
            names.learn(&envelope);
            event_line(&envelope, &names)
        };
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|e| Error::Internal(format!("cannot write the output: {e}")))
    })
    .await
}

/// The `--json` form of an envelope: every field, absent ones as `null`, the payload as JSON.
#[derive(Serialize)]
struct JsonEvent {
    position: u64,
    event_id: String,
    occurred_at: String,
    stream_id: String,
    stream_type: String,
    version: u64,
    event_type: String,
    event_version: String,
    actor_kind: &'static str,
    actor_user_id: Option<String>,
    actor_name: Option<String>,
    on_behalf_of: Option<String>,
    permission: Option<String>,
    request_id: Option<String>,
    correlation_id: String,
    causation_id: Option<String>,
    client_address: Option<String>,
    user_agent: Option<String>,
    key_id: Option<String>,
    hash: Option<String>,
    payload: serde_json::Value,
}

fn present(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn occurred_at(envelope: &pb::EventEnvelope) -> Option<DateTime<Utc>> {
    envelope
        .occurred_at
        .as_ref()
        .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?))
}

fn actor_kind(raw: i32) -> &'static str {
    match pb::ActorKind::try_from(raw) {
        Ok(pb::ActorKind::ActorUser) => "user",
        Ok(pb::ActorKind::ActorService) => "service",
        Ok(pb::ActorKind::ActorStaff) => "staff",
        Ok(pb::ActorKind::ActorSystem) => "system",
        _ => "unknown",
    }
}

fn json_line(e: &pb::EventEnvelope) -> Result<String> {
    let payload = serde_json::from_str(&e.payload_json).map_err(|err| {
        Error::Internal(format!(
            "the payload at position {} is not JSON: {err}",
            e.position
        ))
    })?;
    let permission = pb::Permission::try_from(e.permission)
        .ok()
        .filter(|p| *p != pb::Permission::Unspecified)
        .map(|p| p.as_str_name().to_owned());
    let line = JsonEvent {
        position: e.position,
        event_id: e.event_id.clone(),
        occurred_at: occurred_at(e).map(history::rfc3339).unwrap_or_default(),
        stream_id: e.stream_id.clone(),
        stream_type: e.stream_type.clone(),
        version: e.version,
        event_type: e.event_type.clone(),
        event_version: e.event_version.clone(),
        actor_kind: actor_kind(e.actor_kind),
        actor_user_id: present(&e.actor_user_id),
        actor_name: present(&e.actor_name),
        on_behalf_of: present(&e.on_behalf_of_account_id),
        permission,
        request_id: present(&e.request_id),
        correlation_id: e.correlation_id.clone(),
        causation_id: present(&e.causation_id),
        client_address: present(&e.client_address),
        user_agent: present(&e.user_agent),
        key_id: present(&e.key_id),
        hash: present(&e.hash),
        payload,
    };
    serde_json::to_string(&line)
        .map_err(|err| Error::Internal(format!("cannot encode the line: {err}")))
}

/// One line for people: position, time, actor, on behalf of, event type and a summary.
fn event_line(e: &pb::EventEnvelope, names: &Names) -> String {
    let actor = match actor_kind(e.actor_kind) {
        "user" => names.user_text(&e.actor_user_id),
        "system" => "system".to_owned(),
        kind => format!("{kind}:{}", e.actor_name),
    };
    let on_behalf = if e.on_behalf_of_account_id.is_empty() {
        "-".to_owned()
    } else {
        names.account_text(&e.on_behalf_of_account_id)
    };
    let summary = summary(e, names);
    let line = format!(
        "{:>6}  {}  {:<26}  {:<18}  {:<22}  {}",
        format!("#{}", e.position),
        occurred_at(e).map(secs).unwrap_or_default(),
        actor,
        on_behalf,
        e.event_type,
        summary
    );
    line.trim_end().to_owned()
}

/// An instant for people: RFC 3339 in UTC to the whole second; `--json` keeps full precision.
fn secs(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn permissions_text(set: &PermissionSet) -> String {
    if set.is_full() {
        "full access".to_owned()
    } else if set.is_empty() {
        "no permissions".to_owned()
    } else {
        set.iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn short(id: Uuid) -> String {
    id.simple().to_string()[..8].to_owned()
}

/// What an event says, in a few words; empty for a payload this release cannot read.
fn summary(e: &pb::EventEnvelope, names: &Names) -> String {
    match e.stream_type.as_str() {
        stream_type::USER => match serde_json::from_str(&e.payload_json) {
            Ok(UserEvent::UserRegistered {
                email,
                display_name,
                ..
            }) => format!("{email} ({display_name})"),
            Ok(UserEvent::UserErased { user_id }) => format!("user {} erased", short(user_id)),
            Err(_) => String::new(),
        },
        stream_type::CATALOG => match serde_json::from_str(&e.payload_json) {
            Ok(CatalogEvent::ProductPut { product }) => {
                format!("{} ({})", product.name, short(product.product_id))
            }
            Err(_) => String::new(),
        },
        stream_type::CLIENT_ACCOUNT => serde_json::from_str(&e.payload_json)
            .map(|event| account_summary(&event, names))
            .unwrap_or_default(),
        _ => String::new(),
    }
}

fn account_summary(event: &AccountEvent, names: &Names) -> String {
    use AccountEvent as E;
    match event {
        E::AccountCreated {
            name,
            email,
            owner_user_id,
            ..
        } => format!(
            "{name}, billing {email}, owner {}",
            names.user(*owner_user_id)
        ),
        E::AccountProfileUpdated { name, email } => format!("{name}, billing {email}"),
        E::UserInvited {
            email,
            permissions,
            expires_at,
            ..
        } => format!(
            "{email} with {} until {}",
            permissions_text(permissions),
            secs(*expires_at)
        ),
        E::InvitationResent {
            invitation_id,
            expires_at,
            ..
        } => format!(
            "invitation {} until {}",
            short(*invitation_id),
            secs(*expires_at)
        ),
        E::InvitationCancelled { invitation_id } => {
            format!("invitation {}", short(*invitation_id))
        }
        E::InvitationAccepted {
            user_id,
            permissions,
            ..
        } => format!(
            "{} joined with {}",
            names.user(*user_id),
            permissions_text(permissions)
        ),
        E::InvitationDeclined { user_id, .. } => format!("{} declined", names.user(*user_id)),
        E::PermissionsGranted {
            user_id,
            granted,
            permissions,
        } => format!(
            "{} gained {}; now {}",
            names.user(*user_id),
            permissions_text(granted),
            permissions_text(permissions)
        ),
        E::PermissionsRevoked {
            user_id,
            revoked,
            permissions,
        } => format!(
            "{} lost {}; now {}",
            names.user(*user_id),
            permissions_text(revoked),
            permissions_text(permissions)
        ),
        E::MemberRemoved { user_id, reason } => format!(
            "{} {}",
            names.user(*user_id),
            match reason {
                RemovalReason::Revoked => "removed by the owner",
                RemovalReason::Left => "left",
            }
        ),
        E::OwnershipTransferred {
            from_user_id,
            to_user_id,
        } => format!(
            "from {} to {}",
            names.user(*from_user_id),
            names.user(*to_user_id)
        ),
        E::ServiceOrdered {
            product_name,
            domain,
            billing_cycle,
            amount_minor,
            currency,
            ..
        } => {
            let domain = domain.as_ref().map(|d| format!(" {d}")).unwrap_or_default();
            format!(
                "{product_name}{domain}, {} {}",
                billing_cycle.as_str(),
                format_money(*amount_minor, currency)
            )
        }
        E::InvoiceIssued {
            invoice_id,
            total_minor,
            currency,
            due_date,
            ..
        } => format!(
            "invoice {} {} due {due_date}",
            short(*invoice_id),
            format_money(*total_minor, currency)
        ),
        E::PaymentReceived {
            invoice_id,
            amount_minor,
            reference,
            ..
        } => {
            let amount = names.invoices.get(invoice_id).map_or_else(
                || format!("{amount_minor} minor units"),
                |currency| format_money(*amount_minor, currency),
            );
            format!(
                "{amount} on invoice {}, ref {reference}",
                short(*invoice_id)
            )
        }
        E::InvoicePaid { invoice_id } | E::InvoiceCancelled { invoice_id } => {
            format!("invoice {}", short(*invoice_id))
        }
        E::ServiceRenewed {
            service_id,
            next_due_date,
        } => format!("service {} next due {next_due_date}", short(*service_id)),
        E::ServiceCancelled { service_id } => format!("service {}", short(*service_id)),
        E::NameserversUpdated {
            service_id,
            nameservers,
        } => format!(
            "service {}: {}",
            short(*service_id),
            nameservers
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        E::ContactAdded {
            email, categories, ..
        } => format!("{email} receives {}", categories_text(categories)),
        E::ContactRemoved { contact_id } => format!("contact {}", short(*contact_id)),
        E::NotificationOptInsSet {
            user_id,
            categories,
        } => format!(
            "{} receives {}",
            names.user(*user_id),
            categories_text(categories)
        ),
        E::PaymentReminderSent {
            invoice_id,
            days_from_due,
        } => format!(
            "invoice {}, {days_from_due:+} days from due",
            short(*invoice_id)
        ),
        E::ServiceSuspended {
            service_id,
            invoice_id,
        } => format!(
            "service {} for invoice {}",
            short(*service_id),
            short(*invoice_id)
        ),
        E::ServiceUnsuspended { service_id } => format!("service {}", short(*service_id)),
        E::ServiceActivated {
            service_id,
            server,
            panel_username,
        } => format!(
            "service {} on {server} as {panel_username}",
            short(*service_id)
        ),
        E::ServiceLoginOpened { service_id, server } => {
            format!("service {} on {server}", short(*service_id))
        }
        E::ServiceLoginFailed {
            service_id,
            server,
            failure,
        } => format!(
            "service {} on {server}: {}",
            short(*service_id),
            failure.as_str()
        ),
    }
}

fn categories_text(categories: &onbehalf_events::ContactCategories) -> String {
    if categories.is_empty() {
        return "nothing".into();
    }
    categories
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// How often the replay's progress bar is redrawn.
const PROGRESS_TICK: Duration = Duration::from_millis(100);
/// How many events the replay reads at a time.
const REPLAY_BATCH: usize = 1000;

/// The progress of a replay on stderr, drawn only when stderr is a terminal.
fn progress(total: u64) -> indicatif::ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} position {pos}/{len}  {per_sec}  ETA {eta}",
    ) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(PROGRESS_TICK);
    bar
}

/// The invitation links a replay recomputes: the data directory's secret when there is one.
fn replay_links(store: &StoreArgs, notes: &mut impl Write) -> Result<InvitationTokens> {
    const ACCEPT_URL_BASE: &str = "http://localhost:8080/invitations/accept";
    let path = store.data_dir.join("invitation.secret");
    let secret = match std::fs::read(&path) {
        Ok(secret) => secret,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let _ = writeln!(
                notes,
                "note: no invitation secret at {}; replaying with a throwaway one, so \
                 invitation links would differ from the server's",
                path.display()
            );
            let mut secret = vec![0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
            secret
        }
        Err(e) => {
            return Err(Error::Internal(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    InvitationTokens::new(secret, ACCEPT_URL_BASE)
}

/// Runs `onbehalf replay`: rebuilds the read models in memory up to `--until` and writes the
/// state of every client account (or `--account`) to `out`; notes go to `notes`.
///
/// Nothing is written to the log. A position of 0 or beyond the head, or a time later than
/// now, is refused, as `GetAccountAsOf` refuses it.
pub async fn replay(args: &ReplayArgs, out: &mut impl Write, notes: &mut impl Write) -> Result<()> {
    let store = args.store.open().await?;
    let moment = history::moment_of(&*store, args.until, Utc::now()).await?;
    let links = Arc::new(replay_links(&args.store, notes)?);
    let mut models = ReadModels::new(links);

    let head = store.head_position().await?;
    let total = match args.until {
        Point::Position(p) => p.min(head),
        Point::Time(_) => head,
    };
    let bar = progress(total);
    let mut accounts = Vec::new();
    let mut after = 0;
    'log: loop {
        let batch = store.read_all(after, REPLAY_BATCH).await?;
        if batch.is_empty() {
            break;
        }
        for event in batch {
            if !args.until.includes(&event) {
                break 'log;
            }
            let event = history::upcast(event)?;
            if event.stream_type == stream_type::CLIENT_ACCOUNT
                && event.event_type == "AccountCreated"
            {
                accounts.extend(account_of(&event.stream_id));
            }
            models
                .apply(&event)
                .map_err(|e| Error::Internal(format!("the log cannot be replayed: {e}")))?;
            after = event.position;
            bar.set_position(after);
        }
    }
    bar.finish_and_clear();

    let shown: Vec<Uuid> = match args.account {
        Some(id) if accounts.contains(&id) => vec![id],
        Some(id) => {
            return Err(Error::NotFound(format!(
                "account {id} did not exist at that point"
            )))
        }
        None => accounts,
    };
    let mut text = format!(
        "The log as of position {} ({}), replayed in memory.\n",
        models.position(),
        secs(moment)
    );
    let mut shown: Vec<(String, Uuid)> = shown
        .into_iter()
        .filter_map(|id| {
            let name = models.accounts.account(id)?.name.to_string();
            Some((name.to_lowercase(), id))
        })
        .collect();
    shown.sort();
    for (_, id) in shown {
        text.push('\n');
        text.push_str(&account_report(&models, id, moment));
    }
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Error::Internal(format!("cannot write the output: {e}")))
}

fn role_text(role: Role) -> &'static str {
    match role {
        Role::Owner => "OWNER",
        Role::Member => "MEMBER",
    }
}

fn invitation_state_text(state: InvitationState) -> &'static str {
    match state {
        InvitationState::Pending => "PENDING",
        InvitationState::Accepted => "ACCEPTED",
        InvitationState::Declined => "DECLINED",
        InvitationState::Cancelled => "CANCELLED",
        InvitationState::Expired => "EXPIRED",
    }
}

/// One account of a replay, as a block of text ending in a newline.
fn account_report(models: &ReadModels, account_id: Uuid, moment: DateTime<Utc>) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let Some(account) = models.accounts.account(account_id) else {
        return s;
    };
    let owner = models.accounts.user(account.owner_user_id).map_or_else(
        || account.owner_user_id.to_string(),
        |u| u.email.to_string(),
    );
    let _ = writeln!(s, "{}  (account {account_id})", account.name);
    let _ = writeln!(s, "  billing email  {}", account.email);
    let _ = writeln!(s, "  owner          {owner}");

    let members = models.accounts.members(account_id);
    let width = members
        .iter()
        .map(|m| m.email.as_str().len())
        .max()
        .unwrap_or(0);
    let _ = writeln!(s, "  members");
    for m in &members {
        let _ = writeln!(
            s,
            "    {:<6}  {:<width$}  {}",
            role_text(m.role),
            m.email.as_str(),
            permissions_text(&m.permissions)
        );
    }

    let invitations = models.accounts.invitations(account_id, moment);
    let _ = writeln!(s, "  invitations");
    if invitations.is_empty() {
        let _ = writeln!(s, "    none");
    }
    let width = invitations
        .iter()
        .map(|i| i.email.as_str().len())
        .max()
        .unwrap_or(0);
    for i in &invitations {
        let _ = writeln!(
            s,
            "    {:<width$}  {:<9}  {}  expires {}",
            i.email.as_str(),
            invitation_state_text(i.state),
            permissions_text(&i.permissions),
            secs(i.expires_at)
        );
    }

    let services = models.billing.services(account_id);
    let _ = writeln!(s, "  services");
    if services.is_empty() {
        let _ = writeln!(s, "    none");
    }
    for svc in &services {
        let domain = svc.domain.as_ref().map(|d| d.as_str()).unwrap_or("-");
        let status = match svc.status {
            ServiceStatus::Active => "ACTIVE",
            ServiceStatus::Cancelled => "CANCELLED",
            ServiceStatus::Suspended => "SUSPENDED",
        };
        let _ = writeln!(
            s,
            "    {}  {domain}  {}  {status}  next due {}",
            svc.product_name,
            svc.billing_cycle.as_str(),
            svc.next_due_date
        );
    }

    let invoices = models.billing.invoices(account_id);
    let _ = writeln!(s, "  invoices");
    if invoices.is_empty() {
        let _ = writeln!(s, "    none");
    }
    for i in &invoices {
        let status = match i.status {
            InvoiceStatus::Unpaid => "UNPAID",
            InvoiceStatus::Paid => "PAID",
            InvoiceStatus::Cancelled => "CANCELLED",
        };
        let _ = writeln!(
            s,
            "    #{:<4} {:<9}  total {}  paid {}  due {}",
            i.number,
            status,
            format_money(i.total_minor, &i.currency),
            format_money(i.paid_minor, &i.currency),
            i.due_date
        );
    }
    let balance = models.billing.balance_minor(account_id);
    let balance = match invoices.first() {
        Some(i) => format_money(balance, &i.currency),
        None => balance.to_string(),
    };
    let _ = writeln!(s, "  balance  {balance}");
    s
}

/// Runs `onbehalf aggregate`: writes the `ClientAccount` state at `--at-version` (or the latest)
/// as pretty JSON, then the events that led there, one per line, to `out`.
pub async fn aggregate(args: &AggregateArgs, out: &mut impl Write) -> Result<()> {
    let store = args.store.open().await?;
    let text = aggregate_report(&*store, args.account_id, args.at_version).await?;
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Error::Internal(format!("cannot write the output: {e}")))
}

async fn aggregate_report(
    store: &dyn EventStore,
    account_id: Uuid,
    at_version: Option<u64>,
) -> Result<String> {
    let stream_id = account_stream(account_id);
    let stream = store.read_stream(&stream_id, 0).await?;
    let latest = stream.last().map_or(0, |e| e.version);
    if latest == 0 {
        return Err(Error::NotFound(format!("account {account_id} not found")));
    }
    let version = at_version.unwrap_or(latest);
    if version == 0 || version > latest {
        return Err(Error::invalid(
            "at-version",
            format!("must be between 1 and {latest}, the stream's latest version"),
        ));
    }
    let at = history::fold_account(&stream, |e| e.version <= version)?;
    let last: &StoredEvent = at
        .events
        .last()
        .ok_or_else(|| Error::Internal("a folded stream has no events".into()))?;
    let state = serde_json::to_string_pretty(&at.state)
        .map_err(|e| Error::Internal(format!("cannot encode the state: {e}")))?;

    let mut text = format!(
        "{stream_id} at version {version} of {latest} (position {}, {})\n{state}\n\nevents\n",
        last.position,
        secs(last.occurred_at)
    );
    for e in &at.events {
        let payload = serde_json::to_string(&e.payload)
            .map_err(|err| Error::Internal(format!("cannot encode a payload: {err}")))?;
        text.push_str(&format!(
            "  v{}  #{}  {}  {}  {payload}\n",
            e.version,
            e.position,
            secs(e.occurred_at),
            e.event_type
        ));
    }
    Ok(text)
}
