//! `AccountService`.

use onbehalf_events::user_stream;
use onbehalf_projections::ReadModels;
use onbehalf_proto::v1 as pb;
use onbehalf_proto::v1::account_service_server::AccountService;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{convert, idempotency, respond, App, Call};
use crate::domain::{AccountCommand, ClientAccount, User};
use crate::error::{Error, Result};

/// The `AccountService` implementation.
#[derive(Debug, Clone)]
pub(crate) struct Accounts(pub(crate) App);

pub(crate) fn account_message(models: &ReadModels, account_id: Uuid) -> Result<pb::Account> {
    let view = models
        .accounts
        .account(account_id)
        .ok_or_else(|| Error::Internal("account missing from the read model".into()))?;
    Ok(pb::Account {
        account_id: account_id.to_string(),
        name: view.name.to_string(),
        email: view.email.to_string(),
        owner_user_id: view.owner_user_id.to_string(),
    })
}

pub(crate) fn role_to_pb(role: onbehalf_projections::Role) -> i32 {
    match role {
        onbehalf_projections::Role::Owner => pb::Role::Owner as i32,
        onbehalf_projections::Role::Member => pb::Role::Member as i32,
    }
}

#[tonic::async_trait]
impl AccountService for Accounts {
    async fn create_account(
        &self,
        request: Request<pb::CreateAccountRequest>,
    ) -> Result<Response<pb::CreateAccountResponse>, Status> {
        respond(self.create(request).await)
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        respond(self.get(request).await)
    }

    async fn update_account_profile(
        &self,
        request: Request<pb::UpdateAccountProfileRequest>,
    ) -> Result<Response<pb::UpdateAccountProfileResponse>, Status> {
        respond(self.update_profile(request).await)
    }

    async fn transfer_ownership(
        &self,
        request: Request<pb::TransferOwnershipRequest>,
    ) -> Result<Response<pb::TransferOwnershipResponse>, Status> {
        respond(self.transfer(request).await)
    }

    async fn list_accessible_accounts(
        &self,
        request: Request<pb::ListAccessibleAccountsRequest>,
    ) -> Result<Response<pb::ListAccessibleAccountsResponse>, Status> {
        respond(self.accessible(request).await)
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        respond(self.members(request).await)
    }
}

/// An account as a command left it: remembered with the command, so that a retry gets the
/// same answer however the account changed since.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct AccountOutcome {
    account_id: Uuid,
    name: String,
    email: String,
    owner_user_id: Uuid,
}

impl AccountOutcome {
    pub(crate) fn of(account: &ClientAccount) -> Result<Self> {
        match (
            account.account_id,
            &account.name,
            &account.email,
            account.owner,
        ) {
            (Some(account_id), Some(name), Some(email), Some(owner_user_id)) => Ok(Self {
                account_id,
                name: name.to_string(),
                email: email.to_string(),
                owner_user_id,
            }),
            _ => Err(Error::Internal("the command left no account".into())),
        }
    }

    pub(crate) fn message(self) -> pb::Account {
        pb::Account {
            account_id: self.account_id.to_string(),
            name: self.name,
            email: self.email,
            owner_user_id: self.owner_user_id.to_string(),
        }
    }
}

/// Executes a command on an account and answers with the account as the command left it, and
/// the command's position.
async fn account_after(
    app: &App,
    call: &Call,
    account_id: Uuid,
    body: AccountCommand,
    key: Option<crate::executor::Idempotency>,
) -> Result<(pb::Account, u64)> {
    let done = app
        .execute_account(call, account_id, body, key, AccountOutcome::of)
        .await?;
    Ok((done.value.message(), done.position))
}

/// Checks that the calling user is registered, on its own stream.
pub(crate) async fn require_registered(app: &App, call: &Call) -> Result<Uuid> {
    let user_id = call.caller.user_id()?;
    let user = app.executor().load::<User>(&user_stream(user_id)).await?;
    if user.aggregate.user_id.is_none() {
        return Err(Error::PermissionDenied(
            "the calling user is not registered".into(),
        ));
    }
    if !user.aggregate.is_active() {
        return Err(Error::PermissionDenied("the calling user was erased".into()));
    }
    Ok(user_id)
}

impl Accounts {
    async fn create(
        &self,
        request: Request<pb::CreateAccountRequest>,
    ) -> Result<pb::CreateAccountResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let name = convert::name("name", &req.name)?;
        let email = convert::email("email", &req.email)?;
        let key = idempotency("CreateAccount", &request_id, &req)?;
        require_registered(app, &call).await?;

        let account_id = Uuid::new_v4();
        let body = AccountCommand::Create {
            account_id,
            name,
            email,
        };
        let (account, position) = account_after(app, &call, account_id, body, key).await?;
        Ok(pb::CreateAccountResponse {
            account: Some(account),
            position,
        })
    }

    async fn get(&self, request: Request<pb::GetAccountRequest>) -> Result<pb::GetAccountResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let req = request.into_inner();
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let loaded = app.authorize_read(&call, account_id, None).await?;
        let min = req.min_position.max(loaded.position);
        let account = app
            .read(&call, min, |m| account_message(m, account_id))
            .await??;
        Ok(pb::GetAccountResponse {
            account: Some(account),
        })
    }

    async fn update_profile(
        &self,
        request: Request<pb::UpdateAccountProfileRequest>,
    ) -> Result<pb::UpdateAccountProfileResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let name = convert::name("name", &req.name)?;
        let email = convert::email("email", &req.email)?;
        let key = idempotency("UpdateAccountProfile", &request_id, &req)?;
        let (account, position) = account_after(
            app,
            &call,
            account_id,
            AccountCommand::UpdateProfile { name, email },
            key,
        )
        .await?;
        Ok(pb::UpdateAccountProfileResponse {
            account: Some(account),
            position,
        })
    }

    async fn transfer(
        &self,
        request: Request<pb::TransferOwnershipRequest>,
    ) -> Result<pb::TransferOwnershipResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let new_owner_user_id = convert::uuid("new_owner_user_id", &req.new_owner_user_id)?;
        let key = idempotency("TransferOwnership", &request_id, &req)?;
        let (account, position) = account_after(
            app,
            &call,
            account_id,
            AccountCommand::TransferOwnership { new_owner_user_id },
            key,
        )
        .await?;
        Ok(pb::TransferOwnershipResponse {
            account: Some(account),
            position,
        })
    }

    async fn accessible(
        &self,
        request: Request<pb::ListAccessibleAccountsRequest>,
    ) -> Result<pb::ListAccessibleAccountsResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let user_id = call.caller.user_id()?;
        let req = request.into_inner();
        let accounts = app
            .read(&call, req.min_position, |m| {
                m.accounts
                    .accessible_accounts(user_id)
                    .into_iter()
                    .map(|a| pb::AccessibleAccount {
                        account_id: a.account_id.to_string(),
                        name: a.name.to_string(),
                        role: role_to_pb(a.role),
                        permissions: convert::permissions_to_pb(&a.permissions),
                    })
                    .collect::<Vec<_>>()
            })
            .await?;
        let (accounts, next_page_token) = convert::page(accounts, req.page_size, &req.page_token)?;
        Ok(pb::ListAccessibleAccountsResponse {
            accounts,
            next_page_token,
        })
    }

    async fn members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<pb::ListMembersResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let req = request.into_inner();
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let loaded = app
            .authorize_owner(&call, account_id, "lists its members")
            .await?;
        let min = req.min_position.max(loaded.position);
        let members = app
            .read(&call, min, |m| {
                m.accounts
                    .members(account_id)
                    .into_iter()
                    .map(|v| pb::Member {
                        user_id: v.user_id.to_string(),
                        email: v.email.to_string(),
                        role: role_to_pb(v.role),
                        permissions: convert::permissions_to_pb(&v.permissions),
                        display_name: v.display_name.to_string(),
                    })
                    .collect::<Vec<_>>()
            })
            .await?;
        let (members, next_page_token) = convert::page(members, req.page_size, &req.page_token)?;
        Ok(pb::ListMembersResponse {
            members,
            next_page_token,
        })
    }
}
