//! The audit trail: who did what, when, on whose behalf, under which request.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use onbehalf_events::values::Email;
use onbehalf_events::{Actor, Permission, StoredEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::accounts::AccountTree;

/// One event of the log as the audit trail shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Why a provider staff member acted, as it stated; `None` for every other actor.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Which entries a query of the trail selects; `None` fields select everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Entries that concern this client account ([`AuditTrail::for_account`]).
    pub account_id: Option<Uuid>,
    /// Entries whose actor is this user.
    pub actor_user_id: Option<Uuid>,
    /// Entries of this action (event type name), compared exactly.
    pub action: Option<String>,
    /// Entries committed at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Entries committed strictly before this time.
    pub to: Option<DateTime<Utc>>,
}

impl AuditFilter {
    /// Whether `entry` passes every field of the filter except `account_id`, which selects the
    /// account's index rather than a field of the entry.
    fn admits(&self, entry: &AuditEntry) -> bool {
        self.actor_user_id
            .is_none_or(|user| entry.actor_user_id == Some(user))
            && self
                .action
                .as_deref()
                .is_none_or(|action| entry.action == action)
            && self.from.is_none_or(|from| entry.occurred_at >= from)
            && self.to.is_none_or(|to| entry.occurred_at < to)
    }
}

/// The order of a query's entries, by position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuditOrder {
    /// Ascending positions.
    #[default]
    OldestFirst,
    /// Descending positions.
    NewestFirst,
}

/// One page of a query of the trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditPage<'a> {
    /// The entries, in the query's order.
    pub entries: Vec<&'a AuditEntry>,
    /// The cursor of the next page: the position of the last entry returned, when at least one
    /// more entry matches beyond it; `None` on the last page.
    pub next: Option<u64>,
}

/// One [`AuditEntry`] per event of every stream, in position order.
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

    /// Up to `limit` entries matching `filter`, in `order`, that come strictly after the cursor
    /// `after` in that order (greater positions oldest first, smaller positions newest first)
    /// and lie at or below position `until`.
    ///
    /// Cursors are positions, not offsets, so entries folded in between two calls never shift a
    /// later page: oldest first they can only come after it, newest first they lie before the
    /// first page's cursor. A `limit` of 0 returns no entries and no cursor.
    pub fn page(
        &self,
        filter: &AuditFilter,
        order: AuditOrder,
        after: Option<u64>,
        until: u64,
        limit: usize,
    ) -> AuditPage<'_> {
        let index = match (filter.account_id, filter.actor_user_id) {
            (Some(account_id), _) => Some(self.by_account.get(&account_id)),
            (None, Some(user_id)) => Some(self.by_actor.get(&user_id)),
            (None, None) => None,
        };
        let candidates: Box<dyn Iterator<Item = &AuditEntry> + '_> = match index {
            None => {
                let (start, end) = window(&self.entries, |e| e.position, order, after, until);
                match order {
                    AuditOrder::OldestFirst => Box::new(self.entries[start..end].iter()),
                    AuditOrder::NewestFirst => Box::new(self.entries[start..end].iter().rev()),
                }
            }
            Some(None) => Box::new(std::iter::empty()),
            Some(Some(indexes)) => {
                let position = |i: &usize| self.entries.get(*i).map_or(u64::MAX, |e| e.position);
                let (start, end) = window(indexes, position, order, after, until);
                let entry = move |i: &usize| self.entries.get(*i);
                match order {
                    AuditOrder::OldestFirst => {
                        Box::new(indexes[start..end].iter().filter_map(entry))
                    }
                    AuditOrder::NewestFirst => {
                        Box::new(indexes[start..end].iter().rev().filter_map(entry))
                    }
                }
            }
        };
        let mut matching = candidates.filter(|entry| filter.admits(entry));
        let entries: Vec<&AuditEntry> = matching.by_ref().take(limit).collect();
        let next = match entries.last() {
            Some(last) if matching.next().is_some() => Some(last.position),
            _ => None,
        };
        AuditPage { entries, next }
    }

    /// Appends an entry recorded elsewhere (a persisted one), indexing it like a recorded one:
    /// under its `on_behalf_of` account and the account of its own stream.
    pub(crate) fn push_recorded(&mut self, entry: AuditEntry) {
        let stream_account = entry
            .stream_id
            .strip_prefix("account-")
            .and_then(|id| Uuid::parse_str(id).ok());
        let concerned: Vec<Uuid> = entry
            .on_behalf_of
            .into_iter()
            .chain(stream_account)
            .collect();
        self.index(entry, concerned);
    }

    /// Takes every entry out, leaving the trail empty.
    pub(crate) fn drain(&mut self) -> Vec<AuditEntry> {
        self.by_account.clear();
        self.by_actor.clear();
        std::mem::take(&mut self.entries)
    }

    fn index(&mut self, entry: AuditEntry, mut concerned: Vec<Uuid>) {
        let index = self.entries.len();
        let actor_user_id = entry.actor_user_id;
        self.entries.push(entry);
        concerned.dedup();
        for account_id in concerned {
            self.by_account.entry(account_id).or_default().push(index);
        }
        if let Some(user_id) = actor_user_id {
            self.by_actor.entry(user_id).or_default().push(index);
        }
    }

    /// Shows an erased user as erased in every entry it acted in: the entries stay, their actor
    /// email becomes the erased placeholder, as a fold of the log after the erasure records it.
    pub(crate) fn erase_actor(&mut self, user_id: Uuid) {
        for &index in self.by_actor.get(&user_id).into_iter().flatten() {
            if let Some(entry) = self.entries.get_mut(index) {
                if entry.actor_email.is_some() {
                    entry.actor_email = Some(Email::erased());
                }
            }
        }
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
            reason: metadata.reason.clone(),
        };

        let concerned: Vec<Uuid> = metadata
            .on_behalf_of
            .into_iter()
            .chain(stream_account)
            .collect();
        self.index(entry, concerned);
    }
}

/// The range of `items` (ascending by `position`) a page may take from: at or below `until`,
/// and beyond the cursor `after` in `order`.
fn window<T>(
    items: &[T],
    position: impl Fn(&T) -> u64,
    order: AuditOrder,
    after: Option<u64>,
    until: u64,
) -> (usize, usize) {
    let end = items.partition_point(|item| position(item) <= until);
    let bounded = &items[..end];
    match (order, after) {
        (_, None) => (0, end),
        (AuditOrder::OldestFirst, Some(cursor)) => (
            bounded.partition_point(|item| position(item) <= cursor),
            end,
        ),
        (AuditOrder::NewestFirst, Some(cursor)) => {
            (0, bounded.partition_point(|item| position(item) < cursor))
        }
    }
}
