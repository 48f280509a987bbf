//! `UserService`.

use onbehalf_events::user_stream;
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
            user: Some(pb::User {
                user_id: user_id.to_string(),
                email: user.email.to_string(),
                display_name: user.display_name.to_string(),
            }),
            position: done.position,
        })
    }
}
