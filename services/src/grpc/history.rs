//! `HistoryService`: client accounts as they were at a point of the log, and the log itself.
//!
//! `GetAccountAsOf` and `CheckPermissionAsOf` fold the account's own stream up to the point (see
//! [`crate::history`]); they read the log directly, so they need no `min_position`. Who may ask
//! is decided on the account's current state: its current owner, or a service with
//! `audit:read`.
//!
//! `StreamEvents` reads the log by position in batches. Without `follow` it ends at the head the
//! log had when the call began; with `follow` it waits for appends (woken at once by this
//! process's own appends, and by polling for other processes') until the client goes away.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use onbehalf_events::{account_stream, stream_type, Actor, PermissionSet, StoredEvent};
use onbehalf_projections::ReadModels;
use onbehalf_proto::v1 as pb;
use onbehalf_proto::v1::history_service_server::HistoryService;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use uuid::Uuid;

use super::{convert, respond, App, Call};
use crate::domain::account::InvoiceStatus;
use crate::error::{Error, Result};
use crate::history::{self, AccountAt, Point};

/// The `HistoryService` implementation.
#[derive(Debug, Clone)]
pub(crate) struct History(pub(crate) App);

/// How many events `StreamEvents` reads from the log at a time.
const BATCH: usize = 500;
/// How many envelopes may wait for a slow client before reading pauses.
const BUFFERED: usize = 64;
/// How often a following stream looks at the log when no append was announced in this process.
const POLL: Duration = Duration::from_millis(250);
/// Most event types one `StreamEvents` call may filter on.
const MAX_EVENT_TYPES: usize = 64;

/// The stream of `StreamEvents` responses.
type EnvelopeStream = Pin<Box<dyn Stream<Item = Result<pb::StreamEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl HistoryService for History {
    async fn get_account_as_of(
        &self,
        request: Request<pb::GetAccountAsOfRequest>,
    ) -> Result<Response<pb::GetAccountAsOfResponse>, Status> {
        respond(self.account_as_of(request).await)
    }

    async fn check_permission_as_of(
        &self,
        request: Request<pb::CheckPermissionAsOfRequest>,
    ) -> Result<Response<pb::CheckPermissionAsOfResponse>, Status> {
        respond(self.permission_as_of(request).await)
    }

    type StreamEventsStream = EnvelopeStream;

    async fn stream_events(
        &self,
        request: Request<pb::StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        respond(self.stream(request).await)
    }
}

/// The point of a request's `point` oneof: exactly one of a position and a time.
fn point(position: Option<u64>, time: Option<&prost_types::Timestamp>) -> Result<Point> {
    match (position, time) {
        (Some(p), None) => Ok(Point::Position(p)),
        (None, Some(t)) => convert::parse_timestamp("time", t).map(Point::Time),
        // The wire format keeps only the last member of a oneof, so this is unreachable from a
        // protobuf client; it is refused all the same.
        (Some(_), Some(_)) => Err(Error::invalid(
            "point",
            "give one of position and time, not both",
        )),
        (None, None) => Err(Error::invalid(
            "point",
            "is required: give a position or a time",
        )),
    }
}

impl History {
    /// Reads the account's stream, checks on its current state that the caller may look back
    /// at it, and folds it up to `point`, which must be a moment the log has reached.
    async fn fold(
        &self,
        call: &Call,
        account_id: Uuid,
        point: Point,
    ) -> Result<(AccountAt, DateTime<Utc>)> {
        let app = &self.0;
        tracing::Span::current().record("account_id", tracing::field::display(account_id));
        let store = app.executor().store();
        let stream = store.read_stream(&account_stream(account_id), 0).await?;
        // LIMITATION: both folds start at the stream's first event; no snapshot at or before the point is used, so the cost grows with the account's history.
        let now = history::fold_account(&stream, |_| true)?;
        if !now.state.exists() {
            return Err(Error::NotFound("account not found".into()));
        }
        let caller_user = call.caller.actor.user_id();
        let is_owner = caller_user.is_some() && caller_user == now.state.owner;
        if !(is_owner || call.caller.has_scope("audit:read")) {
            return Err(Error::PermissionDenied(
                "only the account's current owner or a service with audit:read may look back"
                    .into(),
            ));
        }

        let moment = history::moment_of(&**store, point, app.executor().clock().now()).await?;
        let at = history::fold_account(&stream, |e| point.includes(e))?;
        Ok((at, moment))
    }

    async fn account_as_of(
        &self,
        request: Request<pb::GetAccountAsOfRequest>,
    ) -> Result<pb::GetAccountAsOfResponse> {
        use pb::get_account_as_of_request::Point as P;
        let app = &self.0;
        let call = app.call(&request)?;
        let req = request.into_inner();
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let point = match &req.point {
            Some(P::Position(p)) => point(Some(*p), None)?,
            Some(P::Time(t)) => point(None, Some(t))?,
            None => point(None, None)?,
        };

        let (at, moment) = self.fold(&call, account_id, point).await?;
        if !at.state.exists() {
            return Err(Error::NotFound(
                "account did not exist yet at that point".into(),
            ));
        }
        // Emails and invoice numbers come from the read models, which must have reached the
        // account's last included event for its invoices to be numbered.
        let response = app
            .read(&call, at.position, |m| {
                account_message(m, account_id, &at, moment)
            })
            .await??;
        Ok(response)
    }

    async fn permission_as_of(
        &self,
        request: Request<pb::CheckPermissionAsOfRequest>,
    ) -> Result<pb::CheckPermissionAsOfResponse> {
        use pb::check_permission_as_of_request::Point as P;
        let app = &self.0;
        let call = app.call(&request)?;
        let req = request.into_inner();
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let user_id = convert::uuid("user_id", &req.user_id)?;
        let permission = convert::permission("permission", req.permission)?;
        let point = match &req.point {
            Some(P::Position(p)) => point(Some(*p), None)?,
            Some(P::Time(t)) => point(None, Some(t))?,
            None => point(None, None)?,
        };

        let (at, moment) = self.fold(&call, account_id, point).await?;
        Ok(pb::CheckPermissionAsOfResponse {
            allowed: at.state.allows(user_id, permission),
            as_of: Some(convert::timestamp(moment)),
            position: at.position,
        })
    }

    async fn stream(&self, request: Request<pb::StreamEventsRequest>) -> Result<EnvelopeStream> {
        let app = &self.0;
        let call = app.call(&request)?;
        if !call.caller.has_scope("events:read") {
            return Err(Error::PermissionDenied(
                "needs a service token with scope events:read".into(),
            ));
        }
        let req = request.into_inner();
        let filter = Filter::parse(&req)?;
        let store = app.executor().store().clone();
        // Subscribe before reading the head, so no append between the two goes unnoticed.
        let mut appended = app.executor().appended();
        let end = if req.follow {
            filter.to
        } else {
            let head = store.head_position().await?;
            Some(filter.to.map_or(head, |to| to.min(head)))
        };
        let follow = req.follow;
        let mut after = req.from_position.saturating_sub(1);

        let (tx, rx) = mpsc::channel(BUFFERED);
        let feed = async move {
            loop {
                if end.is_some_and(|end| after >= end) {
                    return;
                }
                let batch = match store.read_all(after, BATCH).await {
                    Ok(batch) => batch,
                    Err(e) => {
                        tracing::warn!(error = %e, after, "event stream cannot read the log");
                        let _ = tx.send(Err(Status::from(Error::from(e)))).await;
                        return;
                    }
                };
                if batch.is_empty() {
                    if !follow {
                        return;
                    }
                    tokio::select! {
                        changed = appended.changed() => {
                            if changed.is_err() {
                                tokio::time::sleep(POLL).await;
                            }
                        }
                        () = tokio::time::sleep(POLL) => {}
                        () = tx.closed() => return,
                    }
                    continue;
                }
                for event in batch {
                    if end.is_some_and(|end| event.position > end) {
                        return;
                    }
                    after = event.position;
                    if !filter.matches(&event) {
                        continue;
                    }
                    let message = history::upcast(event)
                        .and_then(|event| envelope_message(&event))
                        .map(|envelope| pb::StreamEventsResponse {
                            event: Some(envelope),
                        });
                    let failed = message.is_err();
                    if tx.send(message.map_err(Status::from)).await.is_err() || failed {
                        return;
                    }
                }
            }
        };
        tokio::spawn(feed.instrument(tracing::Span::current()));
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// What a `StreamEvents` call asked for, parsed.
#[derive(Debug)]
struct Filter {
    account: Option<Uuid>,
    actor: Option<Uuid>,
    stream_type: Option<String>,
    event_types: BTreeSet<String>,
    to: Option<u64>,
}

impl Filter {
    fn parse(req: &pb::StreamEventsRequest) -> Result<Filter> {
        let account = convert::optional_uuid("account_id", &req.account_id)?;
        let actor = convert::optional_uuid("actor_user_id", &req.actor_user_id)?;
        let stream_type = match req.stream_type.as_str() {
            "" => None,
            t @ (stream_type::USER | stream_type::CLIENT_ACCOUNT | stream_type::CATALOG) => {
                Some(t.to_owned())
            }
            _ => {
                return Err(Error::invalid(
                    "stream_type",
                    "must be one of user, client_account and catalog",
                ))
            }
        };
        if req.event_types.len() > MAX_EVENT_TYPES {
            return Err(Error::invalid(
                "event_types",
                format!("may name at most {MAX_EVENT_TYPES} types"),
            ));
        }
        let event_types = req
            .event_types
            .iter()
            .map(|t| {
                let valid = !t.is_empty()
                    && t.len() <= 100
                    && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if valid {
                    Ok(t.clone())
                } else {
                    Err(Error::invalid(
                        "event_types",
                        format!("`{t}` is not an event type name"),
                    ))
                }
            })
            .collect::<Result<BTreeSet<_>>>()?;
        let to = (req.to_position > 0).then_some(req.to_position);
        if to.is_some_and(|to| to < req.from_position) {
            return Err(Error::invalid(
                "to_position",
                "must not be before from_position",
            ));
        }
        Ok(Filter {
            account,
            actor,
            stream_type,
            event_types,
            to,
        })
    }

    // LIMITATION: filters are applied to events already read, so a sparse filter over a long log reads all of it; the store has no index by account, actor or type.
    fn matches(&self, event: &StoredEvent) -> bool {
        let account = self.account.is_none_or(|a| {
            event.metadata.on_behalf_of == Some(a) || event.stream_id == account_stream(a)
        });
        let actor = self
            .actor
            .is_none_or(|u| event.metadata.actor == Actor::User(u));
        let stream = self
            .stream_type
            .as_ref()
            .is_none_or(|t| *t == event.stream_type);
        let kind = self.event_types.is_empty() || self.event_types.contains(&event.event_type);
        account && actor && stream && kind
    }
}

/// An event of the log as its envelope message, with the payload and version as given: callers
/// pass events upcast to the current version of their type, so `hash` is the stored row's.
pub(crate) fn envelope_message(e: &StoredEvent) -> Result<pb::EventEnvelope> {
    let payload_json = serde_json::to_string(&e.payload).map_err(|err| {
        Error::Internal(format!(
            "payload at position {} cannot be encoded: {err}",
            e.position
        ))
    })?;
    let m = &e.metadata;
    Ok(pb::EventEnvelope {
        event_id: e.event_id.to_string(),
        position: e.position,
        stream_id: e.stream_id.clone(),
        stream_type: e.stream_type.clone(),
        version: e.version,
        occurred_at: Some(convert::timestamp(e.occurred_at)),
        event_type: e.event_type.clone(),
        event_version: e.event_version.clone(),
        payload_json,
        actor_kind: convert::actor_kind_to_pb(&m.actor),
        actor_user_id: m.actor.user_id().map(|u| u.to_string()).unwrap_or_default(),
        actor_name: match &m.actor {
            Actor::Service(name) | Actor::Staff(name) => name.clone(),
            Actor::User(_) | Actor::System => String::new(),
        },
        on_behalf_of_account_id: m.on_behalf_of.map(|a| a.to_string()).unwrap_or_default(),
        permission: m
            .permission
            .map(convert::permission_to_pb)
            .unwrap_or_default(),
        request_id: m.request_id.clone().unwrap_or_default(),
        correlation_id: m.correlation_id.to_string(),
        causation_id: m.causation_id.map(|c| c.to_string()).unwrap_or_default(),
        client_address: m.client_address.clone().unwrap_or_default(),
        user_agent: m.user_agent.clone().unwrap_or_default(),
        key_id: e.key_id.clone().unwrap_or_default(),
        hash: e.hash.clone().unwrap_or_default(),
    })
}

/// The account folded to a point as a response; emails and invoice numbers from `models`.
fn account_message(
    models: &ReadModels,
    account_id: Uuid,
    at: &AccountAt,
    moment: DateTime<Utc>,
) -> Result<pb::GetAccountAsOfResponse> {
    let state = &at.state;
    let missing = || Error::Internal("a created account lacks its profile".into());
    let name = state.name.as_ref().ok_or_else(missing)?;
    let email = state.email.as_ref().ok_or_else(missing)?;
    let owner = state.owner.ok_or_else(missing)?;

    // LIMITATION: emails and display names are the users' current ones; that is exact while registration is the only event that sets them, and needs the user's own stream folded to the point once users can change them.
    let member = |user_id: Uuid, role: pb::Role, permissions: &PermissionSet| {
        let user = models.accounts.user(user_id);
        pb::Member {
            user_id: user_id.to_string(),
            email: user.map(|u| u.email.to_string()).unwrap_or_default(),
            role: role as i32,
            permissions: convert::permissions_to_pb(permissions),
            display_name: user.map(|u| u.display_name.to_string()).unwrap_or_default(),
        }
    };
    let mut members: Vec<pb::Member> = state
        .members
        .iter()
        .map(|(user_id, permissions)| member(*user_id, pb::Role::Member, permissions))
        .collect();
    members.sort_by_cached_key(|m| (m.email.to_lowercase(), m.user_id.clone()));
    members.insert(0, member(owner, pb::Role::Owner, &PermissionSet::full()));

    let invitations = at
        .invitation_order
        .iter()
        .filter_map(|id| state.invitations.get(id).map(|i| (id, i)))
        .filter(|(_, i)| i.status == crate::domain::account::InvitationStatus::Pending)
        .map(|(id, i)| pb::Invitation {
            invitation_id: id.to_string(),
            email: i.email.to_string(),
            permissions: convert::permissions_to_pb(&i.permissions),
            expires_at: Some(convert::timestamp(i.expires_at)),
            state: if moment < i.expires_at {
                pb::InvitationState::Pending
            } else {
                pb::InvitationState::Expired
            } as i32,
            account_id: account_id.to_string(),
            account_name: name.to_string(),
            invited_by_user_id: i.invited_by.to_string(),
        })
        .collect();

    let services = at
        .services
        .iter()
        .filter_map(|record| {
            let s = state.services.get(&record.service_id)?;
            Some(pb::Service {
                service_id: record.service_id.to_string(),
                kind: convert::product_kind_to_pb(s.kind),
                product_id: record.product_id.to_string(),
                domain: s.domain.as_ref().map(|d| d.to_string()).unwrap_or_default(),
                status: if s.cancelled {
                    pb::ServiceStatus::ServiceCancelled
                } else if s.suspended_for.is_some() {
                    pb::ServiceStatus::ServiceSuspended
                } else {
                    pb::ServiceStatus::ServiceActive
                } as i32,
                next_due_date: Some(convert::date(s.next_due_date)),
                billing_cycle: convert::billing_cycle_to_pb(s.billing_cycle),
                product_name: s.product_name.to_string(),
                nameservers: record.nameservers.iter().map(|n| n.to_string()).collect(),
                account_id: account_id.to_string(),
            })
        })
        .collect();

    let mut balance_minor = 0i64;
    let mut invoices = Vec::with_capacity(at.invoices.len());
    for record in &at.invoices {
        let Some(i) = state.invoices.get(&record.invoice_id) else {
            continue;
        };
        let number = models
            .billing
            .invoice(account_id, record.invoice_id)
            .map(|v| v.number)
            .ok_or_else(|| Error::Internal("an issued invoice has no number yet".into()))?;
        if i.status == InvoiceStatus::Unpaid {
            balance_minor = balance_minor.saturating_add((i.total_minor - i.paid_minor).max(0));
        }
        invoices.push(pb::Invoice {
            invoice_id: record.invoice_id.to_string(),
            number,
            status: match i.status {
                InvoiceStatus::Unpaid => pb::InvoiceStatus::Unpaid,
                InvoiceStatus::Paid => pb::InvoiceStatus::Paid,
                InvoiceStatus::Cancelled => pb::InvoiceStatus::InvoiceCancelled,
            } as i32,
            total_minor: i.total_minor,
            paid_minor: i.paid_minor,
            currency: i.currency.to_string(),
            due_date: Some(convert::date(record.due_date)),
            lines: record
                .lines
                .iter()
                .map(|l| pb::InvoiceLine {
                    description: l.description.clone(),
                    amount_minor: l.amount_minor,
                })
                .collect(),
            service_id: i.service_id.to_string(),
            account_id: account_id.to_string(),
            issued_on: Some(convert::date(record.issued_on)),
        });
    }

    Ok(pb::GetAccountAsOfResponse {
        account: Some(pb::Account {
            account_id: account_id.to_string(),
            name: name.to_string(),
            email: email.to_string(),
            owner_user_id: owner.to_string(),
        }),
        members,
        invitations,
        services,
        invoices,
        balance_minor,
        as_of: Some(convert::timestamp(moment)),
        position: at.position,
    })
}
