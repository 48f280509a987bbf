//! The audit trail: who did what, when, on whose behalf, under which request.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use onbehalf_events::values::Email;
use onbehalf_events::{Actor, Permission, StoredEvent};
use serde::Serialize;
use uuid::Uuid;

use crate::accounts::AccountTree;

/// One event of the log as the audit trail shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// The event's position in the log.
    pub position: u64,
    /// When the event was committed.
    pub occurred_at: DateTime<Utc>,
    /// The event's id.
    pub event_id: Uuid,
    /// The stream the event belongs to.
    pub stream_id: String,
    /// What happened: the event's type name, e.g. `InvoiceIssued`.
    pub action: String,
    /// The schema version of the event as the read models folded it: always the current
    /// version of its type, whatever version the stored row was written with.
    pub event_version: String,
    /// Who issued the command.
    pub actor: Actor,
    /// The actor's user id, when the actor is a user.
    pub actor_user_id: Option<Uuid>,
    /// The actor's login email as it was when the event was committed, taken from the user's
    /// own events; `None` for actors that are not registered users.
    pub actor_email: Option<Email>,
    /// The client account the command acted on.
    pub on_behalf_of: Option<Uuid>,
    /// The permission the decision relied on.
    pub permission: Option<Permission>,
    /// The caller's idempotency key.
    pub request_id: Option<String>,
    /// Groups every event caused by one original request.
    pub correlation_id: Uuid,
    /// The event or request that directly caused this one.
    pub causation_id: Option<Uuid>,
    /// The end user's address, when the front end supplied it.
    pub client_address: Option<String>,
    /// The end user's browser or tool, when the front end supplied it.
    pub user_agent: Option<String>,
}

/// One [`AuditEntry`] per event of every stream, in position order.
// LIMITATION: entries are neither paginated nor verified against the event hash chain here;
// callers slice the returned lists themselves.
#[derive(Clone, Debug, Default)]
pub struct AuditTrail {
    entries: Vec<AuditEntry>,
    by_account: BTreeMap<Uuid, Vec<usize>>,
    by_actor: BTreeMap<Uuid, Vec<usize>>,
}

impl AuditTrail {
    /// The entries that concern a client account, in position order: those acting on its behalf
    /// and every event of its own stream, each once.
    pub fn for_account(&self, account_id: Uuid) -> Vec<&AuditEntry> {
        self.pick(self.by_account.get(&account_id))
    }

    /// The entries whose actor is this user, in position order.
    pub fn for_actor(&self, user_id: Uuid) -> Vec<&AuditEntry> {
        self.pick(self.by_actor.get(&user_id))
    }

    /// Every entry in position order.
    pub fn all(&self) -> &[AuditEntry] {
        &self.entries
    }

    fn pick(&self, indexes: Option<&Vec<usize>>) -> Vec<&AuditEntry> {
        indexes
            .into_iter()
            .flatten()
            .filter_map(|&i| self.entries.get(i))
            .collect()
    }

    pub(crate) fn record(
        &mut self,
        event: &StoredEvent,
        stream_account: Option<Uuid>,
        accounts: &AccountTree,
    ) {
        let metadata = &event.metadata;
        let actor_user_id = metadata.actor.user_id();
        let entry = AuditEntry {
            position: event.position,
            occurred_at: event.occurred_at,
            event_id: event.event_id,
            stream_id: event.stream_id.clone(),
            action: event.event_type.clone(),
            event_version: event.event_version.clone(),
            actor: metadata.actor.clone(),
            actor_user_id,
            // Copied now, so that a later change of the user's email does not rewrite history.
            actor_email: actor_user_id
                .and_then(|id| accounts.user(id))
                .map(|user| user.email.clone()),
            on_behalf_of: metadata.on_behalf_of,
            permission: metadata.permission,
            request_id: metadata.request_id.clone(),
            correlation_id: metadata.correlation_id,
            causation_id: metadata.causation_id,
            client_address: metadata.client_address.clone(),
            user_agent: metadata.user_agent.clone(),
        };

        let index = self.entries.len();
        self.entries.push(entry);
        let mut concerned: Vec<Uuid> = metadata
            .on_behalf_of
            .into_iter()
            .chain(stream_account)
            .collect();
        concerned.dedup();
        for account_id in concerned {
            self.by_account.entry(account_id).or_default().push(index);
        }
        if let Some(user_id) = actor_user_id {
            self.by_actor.entry(user_id).or_default().push(index);
        }
    }
}
