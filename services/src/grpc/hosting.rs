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
}

impl Hosting {
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
