//! `AuditService`.

use onbehalf_projections::AuditEntry;
use onbehalf_proto::v1 as pb;
use onbehalf_proto::v1::audit_service_server::AuditService;
use tonic::{Request, Response, Status};

use super::{convert, respond, App};
use crate::error::{Error, Result};

/// The `AuditService` implementation.
#[derive(Debug, Clone)]
pub(crate) struct Audit(pub(crate) App);

fn entry_message(e: &AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        position: e.position,
        occurred_at: Some(convert::timestamp(e.occurred_at)),
        actor_kind: convert::actor_kind_to_pb(&e.actor),
        actor_user_id: e.actor_user_id.map(|u| u.to_string()).unwrap_or_default(),
        actor_email: e
            .actor_email
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default(),
        on_behalf_of_account_id: e.on_behalf_of.map(|a| a.to_string()).unwrap_or_default(),
        action: e.action.clone(),
        request_id: e.request_id.clone().unwrap_or_default(),
        permission: e
            .permission
            .map(convert::permission_to_pb)
            .unwrap_or_default(),
        actor_name: match &e.actor {
            onbehalf_events::Actor::Service(name) | onbehalf_events::Actor::Staff(name) => {
                name.clone()
            }
            _ => String::new(),
        },
        client_address: e.client_address.clone().unwrap_or_default(),
        event_id: e.event_id.to_string(),
        event_version: e.event_version.clone(),
    }
}

#[tonic::async_trait]
impl AuditService for Audit {
    async fn list_audit_trail(
        &self,
        request: Request<pb::ListAuditTrailRequest>,
    ) -> Result<Response<pb::ListAuditTrailResponse>, Status> {
        respond(self.list(request).await)
    }
}

impl Audit {
    async fn list(
        &self,
        request: Request<pb::ListAuditTrailRequest>,
    ) -> Result<pb::ListAuditTrailResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let req = request.into_inner();
        let account_id = convert::optional_uuid("account_id", &req.account_id)?;
        let actor = convert::optional_uuid("actor_user_id", &req.actor_user_id)?;
        let service = call.caller.has_scope("audit:read");
        let mut min = req.min_position;

        // Who may read what: a service with audit:read everything; the owner its account's
        // whole trail; a member only its own actions there.
        let actor_filter = match (service, account_id) {
            (true, _) => actor,
            (false, None) => return Err(Error::invalid("account_id", "is required")),
            (false, Some(account_id)) => {
                let loaded = app.authorize_read(&call, account_id, None).await?;
                min = min.max(loaded.position);
                let user_id = call.caller.user_id()?;
                if loaded.aggregate.owner == Some(user_id) {
                    actor
                } else if actor.is_none() || actor == Some(user_id) {
                    Some(user_id)
                } else {
                    return Err(Error::PermissionDenied(
                        "a member reads only its own actions".into(),
                    ));
                }
            }
        };
        if service {
            if let Some(account_id) = account_id {
                app.load_account(account_id).await?;
            }
        }
        let entries = app
            .read(&call, min, |m| {
                let entries: Vec<&AuditEntry> = match (account_id, actor_filter) {
                    (Some(a), _) => m.audit.for_account(a),
                    (None, Some(u)) => m.audit.for_actor(u),
                    (None, None) => m.audit.all().iter().collect(),
                };
                entries
                    .into_iter()
                    .filter(|e| actor_filter.is_none() || e.actor_user_id == actor_filter)
                    .map(entry_message)
                    .collect()
            })
            .await?;
        let (entries, next_page_token) = convert::page(entries, req.page_size, &req.page_token)?;
        Ok(pb::ListAuditTrailResponse {
            entries,
            next_page_token,
        })
    }
}
