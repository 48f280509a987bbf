//! `BillingService`.

use onbehalf_events::Permission;
use onbehalf_projections::{InvoiceStatus, InvoiceView};
use onbehalf_proto::v1 as pb;
use onbehalf_proto::v1::billing_service_server::BillingService;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{convert, idempotency, respond, App};
use crate::domain::AccountCommand;
use crate::error::{Error, Result};

/// The `BillingService` implementation.
#[derive(Debug, Clone)]
pub(crate) struct Billing(pub(crate) App);

/// Longest payment reference accepted.
const MAX_REFERENCE: usize = 200;

pub(crate) fn invoice_message(i: &InvoiceView) -> pb::Invoice {
    pb::Invoice {
        invoice_id: i.invoice_id.to_string(),
        number: i.number,
        status: match i.status {
            InvoiceStatus::Unpaid => pb::InvoiceStatus::Unpaid,
            InvoiceStatus::Paid => pb::InvoiceStatus::Paid,
            InvoiceStatus::Cancelled => pb::InvoiceStatus::InvoiceCancelled,
        } as i32,
        total_minor: i.total_minor,
        paid_minor: i.paid_minor,
        currency: i.currency.to_string(),
        due_date: Some(convert::date(i.due_date)),
        lines: i
            .lines
            .iter()
            .map(|l| pb::InvoiceLine {
                description: l.description.clone(),
                amount_minor: l.amount_minor,
            })
            .collect(),
        service_id: i.service_id.to_string(),
        account_id: i.account_id.to_string(),
        issued_on: Some(convert::date(i.issued_on)),
    }
}

/// An invoice's state as a payment left it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Settled {
    status: i32,
    paid_minor: i64,
}

fn status_to_pb(status: crate::domain::account::InvoiceStatus) -> i32 {
    use crate::domain::account::InvoiceStatus as S;
    (match status {
        S::Unpaid => pb::InvoiceStatus::Unpaid,
        S::Paid => pb::InvoiceStatus::Paid,
        S::Cancelled => pb::InvoiceStatus::InvoiceCancelled,
    }) as i32
}

#[tonic::async_trait]
impl BillingService for Billing {
    async fn list_invoices(
        &self,
        request: Request<pb::ListInvoicesRequest>,
    ) -> Result<Response<pb::ListInvoicesResponse>, Status> {
        respond(self.list(request).await)
    }

    async fn pay_invoice(
        &self,
        request: Request<pb::PayInvoiceRequest>,
    ) -> Result<Response<pb::PayInvoiceResponse>, Status> {
        respond(self.pay(request).await)
    }
}

impl Billing {
    async fn list(
        &self,
        request: Request<pb::ListInvoicesRequest>,
    ) -> Result<pb::ListInvoicesResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let req = request.into_inner();
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let loaded = app
            .authorize_read(&call, account_id, Some(Permission::Invoices))
            .await?;
        let min = req.min_position.max(loaded.position);
        let (invoices, balance_minor) = app
            .read(&call, min, |m| {
                let invoices: Vec<pb::Invoice> = m
                    .billing
                    .invoices(account_id)
                    .iter()
                    .map(invoice_message)
                    .collect();
                (invoices, m.billing.balance_minor(account_id))
            })
            .await?;
        let (invoices, next_page_token) = convert::page(invoices, req.page_size, &req.page_token)?;
        Ok(pb::ListInvoicesResponse {
            invoices,
            next_page_token,
            balance_minor,
        })
    }

    async fn pay(&self, request: Request<pb::PayInvoiceRequest>) -> Result<pb::PayInvoiceResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let service_caller = matches!(call.caller.actor, onbehalf_events::Actor::Service(_));
        if service_caller && !call.caller.has_scope("billing:write") {
            return Err(Error::PermissionDenied(
                "needs a service token with scope billing:write".into(),
            ));
        }
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let account_id = convert::uuid("account_id", &req.account_id)?;
        let invoice_id = convert::uuid("invoice_id", &req.invoice_id)?;
        if req.amount_minor <= 0 {
            return Err(Error::invalid("amount_minor", "must be greater than zero"));
        }
        let reference = req.reference.trim().to_owned();
        if reference.chars().count() > MAX_REFERENCE || reference.chars().any(char::is_control) {
            return Err(Error::invalid(
                "reference",
                format!("must be at most {MAX_REFERENCE} characters without control characters"),
            ));
        }
        let key = idempotency("PayInvoice", &request_id, &req)?;
        let body = AccountCommand::PayInvoice {
            invoice_id,
            payment_id: Uuid::new_v4(),
            amount_minor: req.amount_minor,
            reference,
        };
        let done = app
            .execute_account(&call, account_id, body, key, |account| {
                let invoice = account
                    .invoices
                    .get(&invoice_id)
                    .ok_or_else(|| Error::Internal("the payment left no invoice".into()))?;
                Ok(Settled {
                    status: status_to_pb(invoice.status),
                    paid_minor: invoice.paid_minor,
                })
            })
            .await?;
        // Number, lines and dates never change once issued; status and amount paid are the
        // command's own, so a retry answers as the first attempt did.
        let mut invoice = app
            .read(&call, done.position, |m| {
                m.billing
                    .invoice(account_id, invoice_id)
                    .map(invoice_message)
            })
            .await?
            .ok_or_else(|| Error::Internal("invoice missing from the read model".into()))?;
        invoice.status = done.value.status;
        invoice.paid_minor = done.value.paid_minor;
        Ok(pb::PayInvoiceResponse {
            invoice: Some(invoice),
            position: done.position,
        })
    }
}
