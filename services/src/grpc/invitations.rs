//! `InvitationService`.

use chrono::{DateTime, Utc};
use onbehalf_projections::{InvitationState, InvitationView};
use onbehalf_proto::v1 as pb;
use onbehalf_proto::v1::invitation_service_server::InvitationService;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::accounts::require_registered;
use super::{convert, idempotency, respond, App};
use crate::domain::{AccountCommand, ClientAccount};
use crate::error::{Error, Result};
use crate::executor::EMAIL_SCOPE;

/// The `InvitationService` implementation.
#[derive(Debug, Clone)]
pub(crate) struct Invitations(pub(crate) App);

fn state_to_pb(state: InvitationState) -> i32 {
    (match state {
        InvitationState::Pending => pb::InvitationState::Pending,
        InvitationState::Accepted => pb::InvitationState::Accepted,
        InvitationState::Declined => pb::InvitationState::Declined,
        InvitationState::Cancelled => pb::InvitationState::Cancelled,
        InvitationState::Expired => pb::InvitationState::Expired,
    }) as i32
}

fn invitation_message(view: &InvitationView) -> pb::Invitation {
    pb::Invitation {
        invitation_id: view.invitation_id.to_string(),
        email: view.email.to_string(),
        permissions: convert::permissions_to_pb(&view.permissions),
        expires_at: Some(convert::timestamp(view.expires_at)),
        state: state_to_pb(view.state),
        account_id: view.account_id.to_string(),
        account_name: view.account_name.to_string(),
        invited_by_user_id: view.invited_by.to_string(),
    }
}

/// An invitation as a command left it, remembered with the command so that a retry gets the
/// same answer.
#[derive(serde::Serialize, serde::Deserialize)]
struct InvitationOutcome {
    invitation_id: Uuid,
    account_id: Uuid,
    account_name: String,
    email: String,
    permissions: Vec<i32>,
    expires_at: DateTime<Utc>,
    state: i32,
    invited_by: Uuid,
}

impl InvitationOutcome {
    fn of(account: &ClientAccount, invitation_id: Uuid, now: DateTime<Utc>) -> Result<Self> {
        use crate::domain::account::InvitationStatus;
        let invitation = account
            .invitations
            .get(&invitation_id)
            .ok_or_else(|| Error::Internal("the command left no invitation".into()))?;
        let state = match invitation.status {
            InvitationStatus::Pending if now >= invitation.expires_at => InvitationState::Expired,
            InvitationStatus::Pending => InvitationState::Pending,
            InvitationStatus::Accepted => InvitationState::Accepted,
            InvitationStatus::Declined => InvitationState::Declined,
            InvitationStatus::Cancelled => InvitationState::Cancelled,
        };
        Ok(Self {
            invitation_id,
            account_id: account.account_id.unwrap_or_default(),
            account_name: account
                .name
                .as_ref()
                .map(|n| n.to_string())
                .unwrap_or_default(),
            email: invitation.email.to_string(),
            permissions: convert::permissions_to_pb(&invitation.permissions),
            expires_at: invitation.expires_at,
            state: state_to_pb(state),
            invited_by: invitation.invited_by,
        })
    }

    fn message(self) -> pb::Invitation {
        pb::Invitation {
            invitation_id: self.invitation_id.to_string(),
            email: self.email,
            permissions: self.permissions,
            expires_at: Some(convert::timestamp(self.expires_at)),
            state: self.state,
            account_id: self.account_id.to_string(),
            account_name: self.account_name,
            invited_by_user_id: self.invited_by.to_string(),
        }
    }
}

/// Executes a command on an invitation and answers with the invitation as the command left
/// it, and the command's position.
async fn invitation_after(
    app: &App,
    call: &super::Call,
    account_id: Uuid,
    invitation_id: Uuid,
    body: AccountCommand,
    key: Option<crate::executor::Idempotency>,
) -> Result<(pb::Invitation, u64)> {
    let now = app.executor().clock().now();
    let done = app
        .execute_account(call, account_id, body, key, |a| {
            InvitationOutcome::of(a, invitation_id, now)
        })
        .await?;
    Ok((done.value.message(), done.position))
}

#[tonic::async_trait]
impl InvitationService for Invitations {
    async fn invite_user(
        &self,
        request: Request<pb::InviteUserRequest>,
    ) -> Result<Response<pb::InviteUserResponse>, Status> {
        respond(self.invite(request).await)
    }

    async fn resend_invitation(
        &self,
        request: Request<pb::ResendInvitationRequest>,
    ) -> Result<Response<pb::ResendInvitationResponse>, Status> {
        respond(self.resend(request).await)
    }

    async fn cancel_invitation(
        &self,
        request: Request<pb::CancelInvitationRequest>,
    ) -> Result<Response<pb::CancelInvitationResponse>, Status> {
        respond(self.cancel(request).await)
    }

    async fn list_invitations(
        &self,
        request: Request<pb::ListInvitationsRequest>,
    ) -> Result<Response<pb::ListInvitationsResponse>, Status> {
        respond(self.list(request).await)
    }

    async fn list_my_invitations(
        &self,
        request: Request<pb::ListMyInvitationsRequest>,
    ) -> Result<Response<pb::ListMyInvitationsResponse>, Status> {
        respond(self.list_mine(request).await)
    }

    async fn accept_invitation(
        &self,
        request: Request<pb::AcceptInvitationRequest>,
    ) -> Result<Response<pb::AcceptInvitationResponse>, Status> {
        respond(
            self.answer(request, true)
                .await
                .map(
                    |(account_id, permissions, position)| pb::AcceptInvitationResponse {
                        account_id,
                        permissions,
                        position,
                    },
                ),
        )
    }

    async fn decline_invitation(
        &self,
        request: Request<pb::DeclineInvitationRequest>,
    ) -> Result<Response<pb::DeclineInvitationResponse>, Status> {
        let request = request.map(|r| pb::AcceptInvitationRequest {
            token: r.token,
            request_id: r.request_id,
        });
        respond(
            self.answer(request, false)
                .await
                .map(
                    |(account_id, permissions, position)| pb::DeclineInvitationResponse {
                        account_id,
                        permissions,
                        position,
                    },
                ),
        )
    }
}

/// What an answer to an invitation returns: the account, the permissions offered, the position.
#[derive(serde::Serialize, serde::Deserialize)]
struct Answer {
    account_id: Uuid,
    permissions: Vec<i32>,
}

impl Invitations {
    async fn invite(
        &self,
        request: Request<pb::InviteUserRequest>,
    ) -> Result<pb::InviteUserResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let email = convert::email("email", &req.email)?;
        let permissions = match (req.full_access, req.permissions.is_empty()) {
            (true, true) => onbehalf_events::PermissionSet::full(),
            (false, false) => convert::permissions("permissions", &req.permissions)?,
            (true, false) => {
                return Err(Error::invalid(
                    "full_access",
                    "give either full_access or permissions, not both",
                ))
            }
            (false, true) => {
                return Err(Error::invalid(
                    "permissions",
                    "give either full_access or at least one permission",
                ))
            }
        };
        let key = idempotency("InviteUser", &request_id, &req)?;

        let invitee_user_id = app
            .executor()
            .store()
            .find_reservation(EMAIL_SCOPE, &email.key())
            .await?
            .and_then(|stream| {
                stream
                    .strip_prefix("user-")
                    .and_then(|id| Uuid::parse_str(id).ok())
            });
        let invitation_id = Uuid::new_v4();
        let ttl = app.settings().invitation_ttl;
        let body = AccountCommand::Invite {
            invitation_id,
            email,
            invitee_user_id,
            permissions,
            ttl,
        };
        let (invitation, position) =
            invitation_after(app, &call, account_id, invitation_id, body, key).await?;
        Ok(pb::InviteUserResponse {
            invitation: Some(invitation),
            position,
        })
    }

    async fn resend(
        &self,
        request: Request<pb::ResendInvitationRequest>,
    ) -> Result<pb::ResendInvitationResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let invitation_id = convert::uuid("invitation_id", &req.invitation_id)?;
        let key = idempotency("ResendInvitation", &request_id, &req)?;
        let ttl = app.settings().invitation_ttl;
        let (invitation, position) = invitation_after(
            app,
            &call,
            account_id,
            invitation_id,
            AccountCommand::ResendInvitation { invitation_id, ttl },
            key,
        )
        .await?;
        Ok(pb::ResendInvitationResponse {
            invitation: Some(invitation),
            position,
        })
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelInvitationRequest>,
    ) -> Result<pb::CancelInvitationResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let invitation_id = convert::uuid("invitation_id", &req.invitation_id)?;
        let key = idempotency("CancelInvitation", &request_id, &req)?;
        let (invitation, position) = invitation_after(
            app,
            &call,
            account_id,
            invitation_id,
            AccountCommand::CancelInvitation { invitation_id },
            key,
        )
        .await?;
        Ok(pb::CancelInvitationResponse {
            invitation: Some(invitation),
            position,
        })
    }

    async fn list(
        &self,
        request: Request<pb::ListInvitationsRequest>,
    ) -> Result<pb::ListInvitationsResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let req = request.into_inner();
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let loaded = app
            .authorize_owner(&call, account_id, "lists its invitations")
            .await?;
        let now = app.executor().clock().now();
        let min = req.min_position.max(loaded.position);
        let invitations = app
            .read(&call, min, |m| {
                m.accounts
                    .invitations(account_id, now)
                    .iter()
                    .map(invitation_message)
                    .collect()
            })
            .await?;
        let (invitations, next_page_token) =
            convert::page(invitations, req.page_size, &req.page_token)?;
        Ok(pb::ListInvitationsResponse {
            invitations,
            next_page_token,
        })
    }

    async fn list_mine(
        &self,
        request: Request<pb::ListMyInvitationsRequest>,
    ) -> Result<pb::ListMyInvitationsResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let user_id = call.caller.user_id()?;
        let req = request.into_inner();
        let now = app.executor().clock().now();
        let invitations = app
            .read(&call, req.min_position, |m| {
                let Some(user) = m.accounts.user(user_id) else {
                    return Vec::new();
                };
                m.accounts
                    .pending_invitations_for_email(&user.email.key(), now)
                    .iter()
                    .map(invitation_message)
                    .collect()
            })
            .await?;
        let (invitations, next_page_token) =
            convert::page(invitations, req.page_size, &req.page_token)?;
        Ok(pb::ListMyInvitationsResponse {
            invitations,
            next_page_token,
        })
    }

    async fn answer(
        &self,
        request: Request<pb::AcceptInvitationRequest>,
        accept: bool,
    ) -> Result<(String, Vec<i32>, u64)> {
        let app = &self.0;
        let call = app.call(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        if req.token.is_empty() {
            return Err(Error::invalid("token", "is required"));
        }
        if req.token.len() > 512 {
            return Err(Error::invalid(
                "token",
                "is longer than any token this server issues",
            ));
        }
        let key = idempotency(
            if accept {
                "AcceptInvitation"
            } else {
                "DeclineInvitation"
            },
            &request_id,
            &req,
        )?;
        let claims = app.verify_invitation_token(&call, &req.token)?;
        require_registered(app, &call).await?;

        let (invitation_id, generation) = (claims.invitation_id, claims.generation);
        let body = if accept {
            AccountCommand::AcceptInvitation {
                invitation_id,
                generation,
            }
        } else {
            AccountCommand::DeclineInvitation {
                invitation_id,
                generation,
            }
        };
        let done = app
            .execute_account(&call, claims.account_id, body, key, |account| {
                let permissions = account
                    .invitations
                    .get(&invitation_id)
                    .map(|i| convert::permissions_to_pb(&i.permissions))
                    .unwrap_or_default();
                Ok(Answer {
                    account_id: claims.account_id,
                    permissions,
                })
            })
            .await
            .map_err(|e| match e {
                // An unknown account behind a verified token means the token names nothing.
                Error::NotFound(_) => Error::NotFound("invitation not found for this token".into()),
                other => other,
            })?;
        Ok((
            done.value.account_id.to_string(),
            done.value.permissions,
            done.position,
        ))
    }
}
