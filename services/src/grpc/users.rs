//! `UserService`.

use onbehalf_events::user_stream;
use onbehalf_projections::{Role, UserView};
use onbehalf_proto::v1 as pb;
use onbehalf_proto::v1::user_service_server::UserService;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{convert, idempotency, respond, App};
use crate::domain::{User, UserCommand};
use crate::error::{Error, Result};
use crate::executor::EMAIL_SCOPE;
use crate::store::Reservation;

/// The `UserService` implementation.
#[derive(Debug, Clone)]
pub(crate) struct Users(pub(crate) App);

#[tonic::async_trait]
impl UserService for Users {
    async fn register_user(
        &self,
        request: Request<pb::RegisterUserRequest>,
    ) -> Result<Response<pb::RegisterUserResponse>, Status> {
        respond(self.register(request).await)
    }

    async fn erase_user(
        &self,
        request: Request<pb::EraseUserRequest>,
    ) -> Result<Response<pb::EraseUserResponse>, Status> {
        respond(self.erase(request).await)
    }
}

impl Users {
    async fn register(
        &self,
        request: Request<pb::RegisterUserRequest>,
    ) -> Result<pb::RegisterUserResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        if !call.caller.has_scope("users:register") {
            return Err(Error::PermissionDenied(
                "needs a service token with scope users:register".into(),
            ));
        }
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let email = convert::email("email", &req.email)?;
        let display_name = convert::name("display_name", &req.display_name)?;
        let key = idempotency("RegisterUser", &request_id, &req)?;

        let user_id = Uuid::new_v4();
        let reservation = Reservation {
            scope: EMAIL_SCOPE.into(),
            key: email.key(),
        };
        let done = app
            .execute::<User, Uuid, _>(
                &call,
                user_stream(user_id),
                UserCommand::Register {
                    user_id,
                    email,
                    display_name,
                },
                call.metadata.clone(),
                key,
                vec![reservation],
                |user| {
                    user.user_id
                        .ok_or_else(|| Error::Internal("user has no id".into()))
                },
            )
            .await?;

        let user_id = done.value;
        let user = app
            .read(&call, done.position, |m| m.accounts.user(user_id).cloned())
            .await?
            .ok_or_else(|| Error::Internal("registered user missing from the read model".into()))?;
        Ok(pb::RegisterUserResponse {
            user: Some(user_message(&user)),
            position: done.position,
        })
    }

    async fn erase(&self, request: Request<pb::EraseUserRequest>) -> Result<pb::EraseUserResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let user_id = convert::uuid("user_id", &req.user_id)?;
        let itself = call.caller.actor.user_id() == Some(user_id);
        if !itself && !call.caller.has_scope("users:erase") {
            return Err(Error::PermissionDenied(
                "only the user itself or a service token with scope users:erase may erase a user"
                    .into(),
            ));
        }
        let key = idempotency("EraseUser", &request_id, &req)?;

        // Who owns what is read from the account tree caught up with the whole log, and the
        // aggregate refuses the erasure while the list is not empty.
        // LIMITATION: an ownership transfer to the user or an acceptance by it committed while the erasure runs is not seen, and can leave a client account with an erased owner or member.
        let head = app.executor().store().head_position().await?;
        let (owned_accounts, member_accounts) = app
            .read(&call, head, |m| {
                let mut owned = Vec::new();
                let mut member = Vec::new();
                for access in m.accounts.accessible_accounts(user_id) {
                    match access.role {
                        Role::Owner => owned.push(access.account_id),
                        Role::Member => member.push(access.account_id),
                    }
                }
                (owned, member)
            })
            .await?;

        let done = app
            .execute::<User, Uuid, _>(
                &call,
                user_stream(user_id),
                UserCommand::Erase {
                    owned_accounts,
                    member_accounts,
                },
                call.metadata.clone(),
                key,
                vec![],
                |user| {
                    user.user_id
                        .ok_or_else(|| Error::Internal("erased user has no id".into()))
                },
            )
            .await?;

        let user = app
            .read(&call, done.position, |m| m.accounts.user(user_id).cloned())
            .await?
            .ok_or_else(|| Error::Internal("erased user missing from the read model".into()))?;
        tracing::info!(user_id = %user_id, position = done.position, "user erased");
        Ok(pb::EraseUserResponse {
            user: Some(user_message(&user)),
            position: done.position,
        })
    }
}

/// A user as the read model shows it; an erased user's fields hold the erased placeholders.
fn user_message(user: &UserView) -> pb::User {
    pb::User {
        user_id: user.user_id.to_string(),
        email: user.email.to_string(),
        display_name: user.display_name.to_string(),
        erased: user.is_erased(),
    }
}
