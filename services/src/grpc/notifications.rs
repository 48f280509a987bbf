//! `NotificationService`.

use onbehalf_events::Permission;
use onbehalf_projections::{InvitationLinks, Notification, NotificationCategory};
use onbehalf_proto::v1 as pb;
use onbehalf_proto::v1::notification_service_server::NotificationService;
use tonic::{Request, Response, Status};

use super::accounts::{contact_categories, contact_categories_to_pb};
use super::{convert, idempotency, respond, App};
use crate::domain::AccountCommand;
use crate::error::{Error, Result};

/// The `NotificationService` implementation.
#[derive(Debug, Clone)]
pub(crate) struct Notifications(pub(crate) App);

/// The placeholder that replaces an invitation's token for readers other than its recipient.
pub(crate) const WITHHELD: &str = "[link withheld: only the invitee sees it]";

/// A notification as its recipient (or the mailer) sees it: with its action token.
fn notification_message(n: &Notification) -> pb::Notification {
    pb::Notification {
        notification_id: n.notification_id.to_string(),
        category: match n.category {
            NotificationCategory::Invitation => pb::NotificationCategory::Invitation,
            NotificationCategory::Billing => pb::NotificationCategory::Billing,
            NotificationCategory::Service => pb::NotificationCategory::Service,
            NotificationCategory::Security => pb::NotificationCategory::Security,
        } as i32,
        recipient_email: n.recipient_email.to_string(),
        account_id: n.account_id.to_string(),
        subject: n.subject.clone(),
        body: n.body.clone(),
        action_token: n.action_token.clone().unwrap_or_default(),
        position: n.position,
        created_at: Some(convert::timestamp(n.created_at)),
    }
}

/// A notification as the account's owner or an EMAILS member sees it: an invitation's token
/// lets whoever holds it join the account, so it is withheld from everyone but the invitee.
fn withheld_message(links: &dyn InvitationLinks, n: &Notification) -> pb::Notification {
    let mut message = notification_message(n);
    if let Some(token) = &n.action_token {
        message.body = message.body.replace(&links.accept_url(token), WITHHELD);
        message.body = message.body.replace(token.as_str(), WITHHELD);
        message.action_token.clear();
    }
    message
}

#[tonic::async_trait]
impl NotificationService for Notifications {
    async fn list_notifications(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Result<Response<pb::ListNotificationsResponse>, Status> {
        respond(self.list(request).await)
    }

    async fn set_notification_opt_ins(
        &self,
        request: Request<pb::SetNotificationOptInsRequest>,
    ) -> Result<Response<pb::SetNotificationOptInsResponse>, Status> {
        respond(self.set_opt_ins(request).await)
    }

    async fn get_notification_opt_ins(
        &self,
        request: Request<pb::GetNotificationOptInsRequest>,
    ) -> Result<Response<pb::GetNotificationOptInsResponse>, Status> {
        respond(self.get_opt_ins(request).await)
    }
}

impl Notifications {
    async fn list(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Result<pb::ListNotificationsResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let req = request.into_inner();
        let service = call.caller.has_scope("notifications:read");
        let notifications = match (req.recipient_email.is_empty(), req.account_id.is_empty()) {
            (false, false) => {
                return Err(Error::invalid(
                    "account_id",
                    "give recipient_email or account_id, not both",
                ))
            }
            (true, true) if service => {
                app.read(&call, req.min_position, |m| {
                    m.notifications
                        .all()
                        .iter()
                        .map(notification_message)
                        .collect()
                })
                .await?
            }
            (true, true) => {
                return Err(Error::invalid(
                    "recipient_email",
                    "give recipient_email or account_id",
                ))
            }
            (false, true) => {
                let email = convert::email("recipient_email", &req.recipient_email)?;
                if !service {
                    let user_id = call.caller.user_id()?;
                    let own = app
                        .read(&call, req.min_position, |m| {
                            m.accounts.user(user_id).map(|u| u.email.key())
                        })
                        .await?;
                    if own.as_deref() != Some(email.key().as_str()) {
                        return Err(Error::PermissionDenied(
                            "a user reads only its own email's notifications".into(),
                        ));
                    }
                }
                app.read(&call, req.min_position, |m| {
                    m.notifications
                        .for_recipient(&email.key())
                        .into_iter()
                        .map(notification_message)
                        .collect()
                })
                .await?
            }
            (true, false) => {
                let account_id = convert::uuid("account_id", &req.account_id)?;
                let mut min = req.min_position;
                if !service {
                    min = min.max(
                        app.authorize_read(&call, account_id, Some(Permission::Emails))
                            .await?
                            .position,
                    );
                } else {
                    app.load_account(account_id).await?;
                }
                let links = app.tokens();
                app.read(&call, min, |m| {
                    m.notifications
                        .for_account(account_id)
                        .into_iter()
                        .map(|n| withheld_message(links, n))
                        .collect()
                })
                .await?
            }
        };
        let (notifications, next_page_token) =
            convert::page(notifications, req.page_size, &req.page_token)?;
        Ok(pb::ListNotificationsResponse {
            notifications,
            next_page_token,
        })
    }

    async fn set_opt_ins(
        &self,
        request: Request<pb::SetNotificationOptInsRequest>,
    ) -> Result<pb::SetNotificationOptInsResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let categories = contact_categories("categories", &req.categories)?;
        let key = idempotency("SetNotificationOptIns", &request_id, &req)?;
        let user_id = call.caller.user_id()?;
        let done = app
            .execute_account(
                &call,
                account_id,
                AccountCommand::SetNotificationOptIns { categories },
                key,
                move |account| Ok(account.opt_ins.get(&user_id).cloned().unwrap_or_default()),
            )
            .await?;
        Ok(pb::SetNotificationOptInsResponse {
            categories: contact_categories_to_pb(&done.value),
            position: done.position,
        })
    }

    async fn get_opt_ins(
        &self,
        request: Request<pb::GetNotificationOptInsRequest>,
    ) -> Result<pb::GetNotificationOptInsResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let req = request.into_inner();
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let user_id = call.caller.user_id()?;
        let loaded = app.authorize_read(&call, account_id, None).await?;
        let min = req.min_position.max(loaded.position);
        let categories = app
            .read(&call, min, |m| m.notifications.opt_ins(account_id, user_id))
            .await?;
        Ok(pb::GetNotificationOptInsResponse {
            categories: contact_categories_to_pb(&categories),
        })
    }
}
