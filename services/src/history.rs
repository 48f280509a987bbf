//! Time travel: a client account as it was at a point of the log.
//!
//! The answer is the `ClientAccount` aggregate, the write model every decision is made on,
//! folded from the first event of its stream up to the point and no further. Folding the
//! aggregate rather than replaying the read models means that "could this user pay invoices
//! then?" is answered by the very rules that decided commands then, and that only the account's
//! own stream is read, however long the rest of the log is.
//!
//! The aggregate keeps what decisions need, not everything a person wants to see, so the fold
//! also records the few immutable facts the aggregate drops (a service's product, an invoice's
//! lines and dates) and the nameservers as they stood. Invoice numbers and user emails come from
//! the current read models: a number never changes once assigned, and a user's email is only
//! ever set by its registration.

use chrono::{DateTime, NaiveDate, Utc};
use cqrs_es::Aggregate;
use onbehalf_events::account::InvoiceLine;
use onbehalf_events::values::DomainName;
use onbehalf_events::{AccountEvent, StoredEvent};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::domain::ClientAccount;
use crate::error::{Error, Result};
use crate::store::EventStore;

/// A point of the log to look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// Every event at or before this global position (at least 1).
    Position(u64),
    /// Every event of the stream up to the first one committed after this time.
    ///
    /// Commit times follow the log's order except when writers' clocks disagree; the fold
    /// stops at the first event later than the time, so it always describes a prefix of the
    /// stream.
    // LIMITATION: commit times are taken from the writer's clock before the append, so a time within moments of now may not yet see an append still in flight with an earlier time.
    Time(DateTime<Utc>),
}

impl Point {
    /// Whether `event`, read in stream or log order, still belongs to the prefix this point
    /// names.
    pub fn includes(&self, event: &StoredEvent) -> bool {
        match *self {
            Point::Position(p) => event.position <= p,
            Point::Time(t) => event.occurred_at <= t,
        }
    }
}

/// A service as the aggregate does not keep it: its product and nameservers at the point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRecord {
    /// The service.
    pub service_id: Uuid,
    /// The catalogue product it was ordered from.
    pub product_id: Uuid,
    /// The nameservers set last at or before the point; empty until set.
    pub nameservers: Vec<DomainName>,
}

/// An invoice's immutable facts that the aggregate does not keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvoiceRecord {
    /// The invoice.
    pub invoice_id: Uuid,
    /// The lines.
    pub lines: Vec<InvoiceLine>,
    /// The issue date.
    pub issued_on: NaiveDate,
    /// The due date.
    pub due_date: NaiveDate,
}

/// A client account folded up to a point.
#[derive(Clone, Debug, Default)]
pub struct AccountAt {
    /// The aggregate's state after the last event at or before the point.
    pub state: ClientAccount,
    /// The stream version of that event; 0 when no event is included.
    pub version: u64,
    /// The global position of that event; 0 when no event is included.
    pub position: u64,
    /// The included events, in stream order.
    pub events: Vec<StoredEvent>,
    /// Invitation ids in the order first sent.
    pub invitation_order: Vec<Uuid>,
    /// Services in the order ordered.
    pub services: Vec<ServiceRecord>,
    /// Invoices in the order issued.
    pub invoices: Vec<InvoiceRecord>,
}

/// Brings a stored event to the current version of its type (see `onbehalf_events::upcast`).
///
/// The stored row is untouched; the copy has the current version's payload and `event_version`.
pub fn upcast(event: StoredEvent) -> Result<StoredEvent> {
    onbehalf_events::upcast(event).map_err(|e| Error::Internal(e.to_string()))
}

/// Decodes a stored event's payload, upcast first, into the event type of its stream.
///
/// This is the one place the history code turns stored payloads into events.
pub fn decode<E: DeserializeOwned>(event: &StoredEvent) -> Result<E> {
    if !onbehalf_events::upcast::is_current(event) {
        return decode(&upcast(event.clone())?);
    }
    event.decode().map_err(|e| {
        Error::Internal(format!(
            "event at position {} cannot be decoded: {e}",
            event.position
        ))
    })
}

/// Folds a client account's stream, given in version order, for as long as `include` holds.
///
/// The fold stops at the first event `include` refuses, so the result is always a prefix of
/// the stream (use [`Point::includes`], or a test of the stream version).
pub fn fold_account(
    stream: &[StoredEvent],
    include: impl FnMut(&&StoredEvent) -> bool,
) -> Result<AccountAt> {
    let mut at = AccountAt::default();
    for stored in stream.iter().take_while(include) {
        let stored = &upcast(stored.clone())?;
        let event: AccountEvent = decode(stored)?;
        record_extras(&mut at, &event);
        at.state.apply(event);
        at.version = stored.version;
        at.position = stored.position;
        at.events.push(stored.clone());
    }
    Ok(at)
}

fn record_extras(at: &mut AccountAt, event: &AccountEvent) {
    match event {
        AccountEvent::UserInvited { invitation_id, .. } => at.invitation_order.push(*invitation_id),
        AccountEvent::ServiceOrdered {
            service_id,
            product_id,
            ..
        } => at.services.push(ServiceRecord {
            service_id: *service_id,
            product_id: *product_id,
            nameservers: Vec::new(),
        }),
        AccountEvent::NameserversUpdated {
            service_id,
            nameservers,
        } => {
            if let Some(service) = at.services.iter_mut().find(|s| s.service_id == *service_id) {
                service.nameservers = nameservers.clone();
            }
        }
        AccountEvent::InvoiceIssued {
            invoice_id,
            lines,
            issued_on,
            due_date,
            ..
        } => at.invoices.push(InvoiceRecord {
            invoice_id: *invoice_id,
            lines: lines.clone(),
            issued_on: *issued_on,
            due_date: *due_date,
        }),
        _ => {}
    }
}

/// Checks that `point` names a moment the log has reached, and returns that moment: the time
/// itself, or the commit time of the event at the position.
///
/// A position of 0 or beyond the log's head, and a time later than `now` (the server's clock),
/// are `INVALID_ARGUMENT` on `position` or `time`: the log holds nothing about them yet.
pub async fn moment_of(
    store: &dyn EventStore,
    point: Point,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>> {
    match point {
        Point::Time(t) if t > now => Err(Error::invalid(
            "time",
            format!("is later than now ({})", rfc3339(now)),
        )),
        Point::Time(t) => Ok(t),
        Point::Position(0) => Err(Error::invalid("position", "must be at least 1")),
        Point::Position(p) => {
            let head = store.head_position().await?;
            if p > head {
                return Err(Error::invalid(
                    "position",
                    format!("is beyond the head of the log, position {head}"),
                ));
            }
            let event = store.read_all(p - 1, 1).await?.into_iter().next();
            event
                .map(|e| e.occurred_at)
                .ok_or_else(|| Error::Internal(format!("the log has no event at position {p}")))
        }
    }
}

/// An instant as RFC 3339 in UTC with a `Z`, whole seconds unless it has a fraction.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Parses `--until` style input: a position (digits) or an RFC 3339 time.
pub fn parse_point(raw: &str) -> std::result::Result<Point, String> {
    let raw = raw.trim();
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        return raw
            .parse()
            .map(Point::Position)
            .map_err(|_| format!("`{raw}` is too large for a position"));
    }
    DateTime::parse_from_rfc3339(raw)
        .map(|t| Point::Time(t.with_timezone(&Utc)))
        .map_err(|_| {
            format!(
                "`{raw}` is neither a position nor an RFC 3339 time such as 2025-03-05T12:00:00Z"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_takes_a_position_or_an_rfc3339_time() {
        assert_eq!(parse_point("42"), Ok(Point::Position(42)));
        let t = DateTime::parse_from_rfc3339("2025-03-05T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_point("2025-03-05T12:00:00Z"), Ok(Point::Time(t)));
        assert_eq!(parse_point("2025-03-05T15:00:00+03:00"), Ok(Point::Time(t)));
        assert_eq!(
            parse_point("yesterday"),
            Err("`yesterday` is neither a position nor an RFC 3339 time such as 2025-03-05T12:00:00Z".into())
        );
    }

    #[test]
    fn instants_print_in_utc_with_a_z() {
        let t = DateTime::parse_from_rfc3339("2025-03-05T15:00:00+03:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(rfc3339(t), "2025-03-05T12:00:00Z");
    }
}
