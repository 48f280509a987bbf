//! `AccessService`.

use onbehalf_events::PermissionSet;
use onbehalf_proto::v1 as pb;
use onbehalf_proto::v1::access_service_server::AccessService;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{convert, idempotency, respond, App};
use crate::domain::{AccountCommand, ClientAccount};
use crate::error::{Error, Result};

/// The `AccessService` implementation.
#[derive(Debug, Clone)]
pub(crate) struct Access(pub(crate) App);

/// A member's access as decided on the write model.
#[derive(serde::Serialize, serde::Deserialize)]
struct MemberAccess {
    permissions: PermissionSet,
    owner: bool,
}

fn member_access(account: &ClientAccount, user_id: Uuid) -> Result<MemberAccess> {
    Ok(MemberAccess {
        permissions: account.permissions_of(user_id).unwrap_or_default(),
        owner: account.owner == Some(user_id),
    })
}

fn member_message(user_id: Uuid, access: MemberAccess) -> pb::MemberAccess {
    pb::MemberAccess {
        user_id: user_id.to_string(),
        role: if access.owner {
            pb::Role::Owner
        } else {
            pb::Role::Member
        } as i32,
        permissions: convert::permissions_to_pb(&access.permissions),
    }
}

#[tonic::async_trait]
impl AccessService for Access {
    async fn grant_permission(
        &self,
        request: Request<pb::GrantPermissionRequest>,
    ) -> Result<Response<pb::GrantPermissionResponse>, Status> {
        let request = request.map(|r| pb::RevokePermissionRequest {
            account_id: r.account_id,
            user_id: r.user_id,
            permissions: r.permissions,
            request_id: r.request_id,
        });
        respond(self.change(request, true).await.map(|(member, position)| {
            pb::GrantPermissionResponse {
                member: Some(member),
                position,
            }
        }))
    }

    async fn revoke_permission(
        &self,
        request: Request<pb::RevokePermissionRequest>,
    ) -> Result<Response<pb::RevokePermissionResponse>, Status> {
        respond(self.change(request, false).await.map(|(member, position)| {
            pb::RevokePermissionResponse {
                member: Some(member),
                position,
            }
        }))
    }

    async fn revoke_access(
        &self,
        request: Request<pb::RevokeAccessRequest>,
    ) -> Result<Response<pb::RevokeAccessResponse>, Status> {
        respond(self.revoke_access_inner(request).await)
    }

    async fn leave_account(
        &self,
        request: Request<pb::LeaveAccountRequest>,
    ) -> Result<Response<pb::LeaveAccountResponse>, Status> {
        respond(self.leave(request).await)
    }

    async fn check_permission(
        &self,
        request: Request<pb::CheckPermissionRequest>,
    ) -> Result<Response<pb::CheckPermissionResponse>, Status> {
        respond(self.check(request).await)
    }
}

impl Access {
    async fn change(
        &self,
        request: Request<pb::RevokePermissionRequest>,
        grant: bool,
    ) -> Result<(pb::MemberAccess, u64)> {
        let app = &self.0;
        let call = app.call(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let user_id = convert::uuid("user_id", &req.user_id)?;
        let permissions = convert::permissions("permissions", &req.permissions)?;
        let method = if grant {
            "GrantPermission"
        } else {
            "RevokePermission"
        };
        let key = idempotency(method, &request_id, &req)?;
        let body = if grant {
            AccountCommand::GrantPermissions {
                user_id,
                permissions,
            }
        } else {
            AccountCommand::RevokePermissions {
                user_id,
                permissions,
            }
        };
        let done = app
            .execute_account(&call, account_id, body, key, |a| member_access(a, user_id))
            .await?;
        Ok((member_message(user_id, done.value), done.position))
    }

    async fn revoke_access_inner(
        &self,
        request: Request<pb::RevokeAccessRequest>,
    ) -> Result<pb::RevokeAccessResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let user_id = convert::uuid("user_id", &req.user_id)?;
        let key = idempotency("RevokeAccess", &request_id, &req)?;
        let done = app
            .execute_account(
                &call,
                account_id,
                AccountCommand::RevokeAccess { user_id },
                key,
                |_| Ok(()),
            )
            .await?;
        Ok(pb::RevokeAccessResponse {
            position: done.position,
        })
    }

    async fn leave(
        &self,
        request: Request<pb::LeaveAccountRequest>,
    ) -> Result<pb::LeaveAccountResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let key = idempotency("LeaveAccount", &request_id, &req)?;
        let done = app
            .execute_account(&call, account_id, AccountCommand::Leave, key, |_| Ok(()))
            .await?;
        Ok(pb::LeaveAccountResponse {
            position: done.position,
        })
    }

    /// Decided on the account's current state in the log, so a revocation is effective at once.
    /// A `min_position` is waited for as by every read, so that a position the log has not
    /// reached fails with `DEADLINE_EXCEEDED` instead of being answered.
    async fn check(
        &self,
        request: Request<pb::CheckPermissionRequest>,
    ) -> Result<pb::CheckPermissionResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let req = request.into_inner();
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let user_id = convert::uuid("user_id", &req.user_id)?;
        let permission = convert::permission("permission", req.permission)?;
        if req.min_position > 0 {
            app.read(&call, req.min_position, |_| ()).await?;
        }
        let loaded = app.load_account(account_id).await?;
        let account = &loaded.aggregate;
        let caller_user = call.caller.actor.user_id();
        let may_ask = call.caller.has_scope("access:check")
            || caller_user == Some(user_id)
            || (caller_user.is_some() && caller_user == account.owner);
        if !may_ask {
            return Err(Error::PermissionDenied(
                "only the owner, the user itself or a service with access:check may ask".into(),
            ));
        }
        Ok(pb::CheckPermissionResponse {
            allowed: account.allows(user_id, permission),
            position: loaded.position,
        })
    }
}
