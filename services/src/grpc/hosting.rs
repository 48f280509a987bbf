//! `HostingService`.

use onbehalf_events::values::ProductKind;
use onbehalf_events::{Permission, CATALOG_STREAM};
use onbehalf_projections::{ServiceStatus, ServiceView};
use onbehalf_proto::v1 as pb;
use onbehalf_proto::v1::hosting_service_server::HostingService;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{convert, idempotency, respond, App};
use crate::domain::{AccountCommand, Catalog};
use crate::error::{Error, Result};
use crate::panel::{is_valid_server_name, PanelError};

/// The `HostingService` implementation.
#[derive(Debug, Clone)]
pub(crate) struct Hosting(pub(crate) App);

/// Most nameservers a domain takes.
const MAX_NAMESERVERS: usize = 13;

pub(crate) fn service_message(s: &ServiceView) -> pb::Service {
    pb::Service {
        service_id: s.service_id.to_string(),
        kind: convert::product_kind_to_pb(s.kind),
        product_id: s.product_id.to_string(),
        domain: s.domain.as_ref().map(|d| d.to_string()).unwrap_or_default(),
        status: match s.status {
            ServiceStatus::Active => pb::ServiceStatus::ServiceActive,
            ServiceStatus::Cancelled => pb::ServiceStatus::ServiceCancelled,
            ServiceStatus::Suspended => pb::ServiceStatus::ServiceSuspended,
        } as i32,
        next_due_date: Some(convert::date(s.next_due_date)),
        billing_cycle: convert::billing_cycle_to_pb(s.billing_cycle),
        product_name: s.product_name.to_string(),
        nameservers: s.nameservers.iter().map(|n| n.to_string()).collect(),
        account_id: s.account_id.to_string(),
    }
}

/// What an order created.
#[derive(serde::Serialize, serde::Deserialize)]
struct Ordered {
    service_id: Uuid,
    invoice_id: Uuid,
}

#[tonic::async_trait]
impl HostingService for Hosting {
    async fn order_service(
        &self,
        request: Request<pb::OrderServiceRequest>,
    ) -> Result<Response<pb::OrderServiceResponse>, Status> {
        respond(self.order(request).await)
    }

    async fn renew_service(
        &self,
        request: Request<pb::RenewServiceRequest>,
    ) -> Result<Response<pb::RenewServiceResponse>, Status> {
        respond(self.renew(request).await)
    }

    async fn cancel_service(
        &self,
        request: Request<pb::CancelServiceRequest>,
    ) -> Result<Response<pb::CancelServiceResponse>, Status> {
        respond(self.cancel(request).await)
    }

    async fn update_nameservers(
        &self,
        request: Request<pb::UpdateNameserversRequest>,
    ) -> Result<Response<pb::UpdateNameserversResponse>, Status> {
        respond(self.nameservers(request).await)
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        respond(self.list(request).await)
    }

    async fn activate_service(
        &self,
        request: Request<pb::ActivateServiceRequest>,
    ) -> Result<Response<pb::ActivateServiceResponse>, Status> {
        respond(self.activate(request).await)
    }

    async fn create_service_login(
        &self,
        request: Request<pb::CreateServiceLoginRequest>,
    ) -> Result<Response<pb::CreateServiceLoginResponse>, Status> {
        respond(self.login(request).await)
    }
}

/// The longest panel user name: cPanel's limit.
const MAX_PANEL_USERNAME: usize = 16;

/// A panel user name as cPanel allows it: a lowercase ASCII letter, then lowercase letters or
/// digits, at most 16 in all. Being plain, it needs no escaping in a panel's URL.
fn panel_username(raw: &str) -> Result<String> {
    let mut chars = raw.chars();
    let valid = raw.len() <= MAX_PANEL_USERNAME
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !valid {
        return Err(Error::invalid(
            "panel_username",
            "must be a lowercase letter followed by up to 15 lowercase letters or digits",
        ));
    }
    Ok(raw.to_owned())
}

/// The gRPC error of a panel that did not open a session, by meaning: the panel out of reach
/// (network, timeout, TLS, a server error) is `UNAVAILABLE`, a panel declining the login is
/// `FAILED_PRECONDITION`, and a panel refusing the provider's credentials or answering
/// nonsense needs an operator: `INTERNAL`.
fn panel_status(server: &str, e: &PanelError) -> Error {
    match e {
        PanelError::Unreachable(_) | PanelError::Timeout(_) | PanelError::Tls(_) => {
            Error::Unavailable(format!("control panel server `{server}`: {e}"))
        }
        PanelError::HttpStatus(status) if *status >= 500 => {
            Error::Unavailable(format!("control panel server `{server}`: {e}"))
        }
        PanelError::Refused(_) => Error::FailedPrecondition(format!(
            "the control panel of server `{server}` declined to open a session for this service"
        )),
        _ => Error::Internal(format!("control panel server `{server}`: {e}")),
    }
}

impl Hosting {
    async fn activate(
        &self,
        request: Request<pb::ActivateServiceRequest>,
    ) -> Result<pb::ActivateServiceResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        if !call.caller.has_scope("services:provision") {
            return Err(Error::PermissionDenied(
                "activating a service needs a service token with scope services:provision".into(),
            ));
        }
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let service_id = convert::uuid("service_id", &req.service_id)?;
        if !is_valid_server_name(&req.server) {
            return Err(Error::invalid(
                "server",
                "must be 1 to 64 letters, digits, `-`, `_` or `.`",
            ));
        }
        if !app.settings().panel_servers.contains(&req.server) {
            return Err(Error::invalid(
                "server",
                format!("`{}` is not a configured panel server", req.server),
            ));
        }
        let panel_username = panel_username(&req.panel_username)?;
        let key = idempotency("ActivateService", &request_id, &req)?;
        let body = AccountCommand::ActivateService {
            service_id,
            server: req.server.clone(),
            panel_username,
        };
        let done = app
            .execute_account(&call, account_id, body, key, |_| Ok(()))
            .await?;
        Ok(pb::ActivateServiceResponse {
            position: done.position,
        })
    }

    /// Decides on the account, asks the panel, then records the outcome with the decision made
    /// again on the account as it is then: a member revoked while the panel answered gets no
    /// URL. A refused call asks no panel and writes nothing.
    async fn login(
        &self,
        request: Request<pb::CreateServiceLoginRequest>,
    ) -> Result<pb::CreateServiceLoginResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let req = request.into_inner();
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let service_id = convert::uuid("service_id", &req.service_id)?;
        tracing::Span::current().record("account_id", tracing::field::display(account_id));

        let loaded = app.load_account(account_id).await?;
        let placement = loaded
            .aggregate
            .service_login(&call.caller.actor, service_id)?
            .clone();
        let panel = app
            .settings()
            .panel_servers
            .get(&placement.server)
            .cloned()
            .ok_or_else(|| {
                tracing::warn!(server = %placement.server, %service_id, "a service names a panel server that is not configured");
                Error::FailedPrecondition(format!(
                    "the service's panel server `{}` is not configured",
                    placement.server
                ))
            })?;

        let outcome = panel.create_login(&placement.panel_username).await;

        let failure = outcome.as_ref().err().map(PanelError::failure);
        let body = AccountCommand::RecordServiceLogin {
            service_id,
            failure,
        };
        let recorded = app
            .execute_account(&call, account_id, body, None, |_| Ok(()))
            .await;
        match (outcome, recorded) {
            (Ok(login), Ok(done)) => {
                tracing::info!(server = %placement.server, %service_id, "control panel session opened");
                Ok(pb::CreateServiceLoginResponse {
                    url: login.url().to_owned(),
                    expires_at: Some(convert::timestamp(login.expires_at)),
                    position: done.position,
                })
            }
            // The session is not handed out unless its opening is in the log.
            // LIMITATION: the panel's session is left to expire (WHM ends it after 15 idle minutes), not destroyed, when the record is refused.
            (Ok(_), Err(e)) => Err(e),
            (Err(e), recorded) => {
                tracing::warn!(
                    server = %placement.server,
                    %service_id,
                    kind = e.failure().as_str(),
                    error = %e,
                    "the control panel did not open a session"
                );
                if let Err(unrecorded) = recorded {
                    tracing::warn!(error = %unrecorded, "the failed login could not be recorded");
                }
                Err(panel_status(&placement.server, &e))
            }
        }
    }

    async fn order(
        &self,
        request: Request<pb::OrderServiceRequest>,
    ) -> Result<pb::OrderServiceResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let product_id = convert::uuid("product_id", &req.product_id)?;
        let billing_cycle = convert::billing_cycle("billing_cycle", req.billing_cycle)?;
        let domain = if req.domain.is_empty() {
            None
        } else {
            Some(convert::domain("domain", &req.domain)?)
        };
        let key = idempotency("OrderService", &request_id, &req)?;

        // The price comes from the catalogue as the log holds it now, never from the caller.
        let catalog = app.executor().load::<Catalog>(CATALOG_STREAM).await?;
        let product = catalog
            .aggregate
            .products
            .get(&product_id)
            .cloned()
            .ok_or_else(|| Error::NotFound("product not found".into()))?;
        let ids = Ordered {
            service_id: Uuid::new_v4(),
            invoice_id: Uuid::new_v4(),
        };
        let (service_id, invoice_id) = (ids.service_id, ids.invoice_id);
        let body = AccountCommand::OrderService {
            service_id,
            invoice_id,
            product,
            domain,
            billing_cycle,
        };
        let done = app
            .execute_account(&call, account_id, body, key, |_| {
                Ok(Ordered {
                    service_id,
                    invoice_id,
                })
            })
            .await?;
        Ok(pb::OrderServiceResponse {
            service_id: done.value.service_id.to_string(),
            invoice_id: done.value.invoice_id.to_string(),
            position: done.position,
        })
    }

    async fn renew(
        &self,
        request: Request<pb::RenewServiceRequest>,
    ) -> Result<pb::RenewServiceResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let service_id = convert::uuid("service_id", &req.service_id)?;
        let key = idempotency("RenewService", &request_id, &req)?;
        let invoice_id = Uuid::new_v4();
        let body = AccountCommand::RenewService {
            service_id,
            invoice_id,
        };
        let done = app
            .execute_account(&call, account_id, body, key, |account| {
                // A free renewal is settled as it is issued and moves the next due date on, so
                // the invoice it issued is no longer the pending one: name it by its id.
                if account.invoices.contains_key(&invoice_id) {
                    return Ok(invoice_id);
                }
                account
                    .pending_renewal(service_id)
                    .ok_or_else(|| Error::Internal("renewal left no invoice".into()))
            })
            .await?;
        Ok(pb::RenewServiceResponse {
            invoice_id: done.value.to_string(),
            position: done.position,
        })
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelServiceRequest>,
    ) -> Result<pb::CancelServiceResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let service_id = convert::uuid("service_id", &req.service_id)?;
        let key = idempotency("CancelService", &request_id, &req)?;
        let done = app
            .execute_account(
                &call,
                account_id,
                AccountCommand::CancelService { service_id },
                key,
                |_| Ok(()),
            )
            .await?;
        Ok(pb::CancelServiceResponse {
            position: done.position,
        })
    }

    async fn nameservers(
        &self,
        request: Request<pb::UpdateNameserversRequest>,
    ) -> Result<pb::UpdateNameserversResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let service_id = convert::uuid("service_id", &req.service_id)?;
        if req.nameservers.len() < 2 || req.nameservers.len() > MAX_NAMESERVERS {
            return Err(Error::invalid(
                "nameservers",
                format!("give 2 to {MAX_NAMESERVERS} nameservers"),
            ));
        }
        let mut nameservers = Vec::with_capacity(req.nameservers.len());
        for raw in &req.nameservers {
            let ns = convert::domain("nameservers", raw)?;
            if nameservers.contains(&ns) {
                return Err(Error::invalid(
                    "nameservers",
                    format!("`{ns}` is listed twice"),
                ));
            }
            nameservers.push(ns);
        }
        let key = idempotency("UpdateNameservers", &request_id, &req)?;
        let body = AccountCommand::UpdateNameservers {
            service_id,
            nameservers,
        };
        let done = app
            .execute_account(&call, account_id, body, key, |_| Ok(()))
            .await?;
        let service = app
            .read(&call, done.position, |m| {
                m.billing
                    .service(account_id, service_id)
                    .map(service_message)
            })
            .await?
            .ok_or_else(|| Error::Internal("service missing from the read model".into()))?;
        Ok(pb::UpdateNameserversResponse {
            service: Some(service),
            position: done.position,
        })
    }

    async fn list(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<pb::ListServicesResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let req = request.into_inner();
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let loaded = app.authorize_read(&call, account_id, None).await?;
        let user_id = call.caller.user_id()?;
        let sees_hosting = loaded.aggregate.allows(user_id, Permission::Products);
        let sees_domains = loaded.aggregate.allows(user_id, Permission::Domains);
        if !sees_hosting && !sees_domains {
            return Err(Error::PermissionDenied(
                "caller lacks the PRODUCTS and DOMAINS permissions".into(),
            ));
        }
        let min = req.min_position.max(loaded.position);
        let services = app
            .read(&call, min, |m| {
                m.billing
                    .services(account_id)
                    .iter()
                    .filter(|s| match s.kind {
                        ProductKind::Hosting => sees_hosting,
                        ProductKind::Domain => sees_domains,
                    })
                    .map(service_message)
                    .collect()
            })
            .await?;
        let (services, next_page_token) = convert::page(services, req.page_size, &req.page_token)?;
        Ok(pb::ListServicesResponse {
            services,
            next_page_token,
        })
    }
}
