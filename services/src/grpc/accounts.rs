//! `AccountService`.

use onbehalf_events::{user_stream, ContactCategories, ContactCategory};
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

    async fn add_contact(
        &self,
        request: Request<pb::AddContactRequest>,
    ) -> Result<Response<pb::AddContactResponse>, Status> {
        respond(self.add_contact(request).await)
    }

    async fn remove_contact(
        &self,
        request: Request<pb::RemoveContactRequest>,
    ) -> Result<Response<pb::RemoveContactResponse>, Status> {
        respond(self.remove_contact(request).await)
    }

    async fn list_contacts(
        &self,
        request: Request<pb::ListContactsRequest>,
    ) -> Result<Response<pb::ListContactsResponse>, Status> {
        respond(self.contacts(request).await)
    }
}

/// Parses a list of contact categories; an unknown or unspecified one is `INVALID_ARGUMENT`.
pub(crate) fn contact_categories(field: &'static str, raw: &[i32]) -> Result<ContactCategories> {
    raw.iter()
        .map(|value| match pb::ContactCategory::try_from(*value) {
            Ok(pb::ContactCategory::ContactGeneral) => Ok(ContactCategory::General),
            Ok(pb::ContactCategory::ContactInvoice) => Ok(ContactCategory::Invoice),
            Ok(pb::ContactCategory::ContactProduct) => Ok(ContactCategory::Product),
            Ok(pb::ContactCategory::ContactDomain) => Ok(ContactCategory::Domain),
            Ok(pb::ContactCategory::ContactSupport) => Ok(ContactCategory::Support),
            _ => Err(Error::invalid(
                field,
                format!("{value} is not a contact category"),
            )),
        })
        .collect()
}

/// The wire form of a set of categories, in order.
pub(crate) fn contact_categories_to_pb(categories: &ContactCategories) -> Vec<i32> {
    categories
        .iter()
        .map(|c| match c {
            ContactCategory::General => pb::ContactCategory::ContactGeneral,
            ContactCategory::Invoice => pb::ContactCategory::ContactInvoice,
            ContactCategory::Product => pb::ContactCategory::ContactProduct,
            ContactCategory::Domain => pb::ContactCategory::ContactDomain,
            ContactCategory::Support => pb::ContactCategory::ContactSupport,
        } as i32)
        .collect()
}

/// A contact as a command left it, remembered with the command.
#[derive(serde::Serialize, serde::Deserialize)]
struct ContactOutcome {
    contact_id: Uuid,
    name: String,
    email: String,
    categories: ContactCategories,
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
        return Err(Error::PermissionDenied(
            "the calling user was erased".into(),
        ));
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

    async fn add_contact(
        &self,
        request: Request<pb::AddContactRequest>,
    ) -> Result<pb::AddContactResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let name = convert::name("name", &req.name)?;
        let email = convert::email("email", &req.email)?;
        let categories = contact_categories("categories", &req.categories)?;
        let key = idempotency("AddContact", &request_id, &req)?;

        let contact_id = Uuid::new_v4();
        let body = AccountCommand::AddContact {
            contact_id,
            name,
            email,
            categories,
        };
        let done = app
            .execute_account(&call, account_id, body, key, move |account| {
                let contact = account
                    .contacts
                    .get(&contact_id)
                    .ok_or_else(|| Error::Internal("the command left no contact".into()))?;
                Ok(ContactOutcome {
                    contact_id,
                    name: contact.name.to_string(),
                    email: contact.email.to_string(),
                    categories: contact.categories.clone(),
                })
            })
            .await?;
        let contact = done.value;
        Ok(pb::AddContactResponse {
            contact: Some(pb::Contact {
                contact_id: contact.contact_id.to_string(),
                name: contact.name,
                email: contact.email,
                categories: contact_categories_to_pb(&contact.categories),
            }),
            position: done.position,
        })
    }

    async fn remove_contact(
        &self,
        request: Request<pb::RemoveContactRequest>,
    ) -> Result<pb::RemoveContactResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let contact_id = convert::uuid("contact_id", &req.contact_id)?;
        let key = idempotency("RemoveContact", &request_id, &req)?;
        let done = app
            .execute_account(
                &call,
                account_id,
                AccountCommand::RemoveContact { contact_id },
                key,
                |_| Ok(()),
            )
            .await?;
        Ok(pb::RemoveContactResponse {
            position: done.position,
        })
    }

    async fn contacts(
        &self,
        request: Request<pb::ListContactsRequest>,
    ) -> Result<pb::ListContactsResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let req = request.into_inner();
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let loaded = app
            .authorize_read(
                &call,
                account_id,
                Some(onbehalf_events::Permission::Contacts),
            )
            .await?;
        let min = req.min_position.max(loaded.position);
        let contacts = app
            .read(&call, min, |m| {
                m.notifications
                    .contacts(account_id)
                    .into_iter()
                    .map(|c| pb::Contact {
                        contact_id: c.contact_id.to_string(),
                        name: c.name.to_string(),
                        email: c.email.to_string(),
                        categories: contact_categories_to_pb(&c.categories),
                    })
                    .collect::<Vec<_>>()
            })
            .await?;
        let (contacts, next_page_token) = convert::page(contacts, req.page_size, &req.page_token)?;
        Ok(pb::ListContactsResponse {
            contacts,
            next_page_token,
        })
    }
}
