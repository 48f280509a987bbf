//! The billing ledger: services, invoices and payments of each client account.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use onbehalf_events::account::{InvoiceKind, InvoiceLine};
use onbehalf_events::values::{BillingCycle, Currency, DomainName, Name, ProductKind};
use onbehalf_events::{AccountEvent, StoredEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Whether a service still runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ServiceStatus {
    /// Ordered and not cancelled.
    Active,
    /// Cancelled; it is no longer renewed.
    Cancelled,
    /// Suspended for an unpaid invoice; paying it makes the service active again.
    Suspended,
}

/// A service (hosting plan or domain) of a client account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    /// The service.
    pub service_id: Uuid,
    /// The client account that owns it.
    pub account_id: Uuid,
    /// The catalogue product.
    pub product_id: Uuid,
    /// The product's name at the time of the order.
    pub product_name: Name,
    /// Hosting or domain.
    pub kind: ProductKind,
    /// The domain the service is for.
    pub domain: Option<DomainName>,
    /// How the service is billed.
    pub billing_cycle: BillingCycle,
    /// The price of one cycle at the time of the order, in minor units.
    pub amount_minor: i64,
    /// The price's currency.
    pub currency: Currency,
    /// Active or cancelled.
    pub status: ServiceStatus,
    /// The order date.
    pub ordered_on: NaiveDate,
    /// The date the next cycle starts.
    pub next_due_date: NaiveDate,
    /// The domain's nameservers in order; empty until they are set.
    pub nameservers: Vec<DomainName>,
}

/// Whether an invoice is still owed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InvoiceStatus {
    /// Issued and not yet paid in full.
    Unpaid,
    /// Paid in full.
    Paid,
    /// Cancelled unpaid; nothing is owed any more.
    Cancelled,
}

/// One payment recorded against an invoice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentView {
    /// The payment.
    pub payment_id: Uuid,
    /// The amount in minor units of the invoice's currency.
    pub amount_minor: i64,
    /// The payer's or gateway's reference.
    pub reference: String,
    /// The position of the event that recorded it.
    pub position: u64,
    /// When it was recorded.
    pub received_at: DateTime<Utc>,
}

/// An invoice of a client account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceView {
    /// The invoice.
    pub invoice_id: Uuid,
    /// The provider-wide invoice number: 1, 2, 3, ... in the log order of issue.
    pub number: u64,
    /// The client account billed; invoices never belong to a member.
    pub account_id: Uuid,
    /// The service billed.
    pub service_id: Uuid,
    /// First cycle or renewal.
    pub kind: InvoiceKind,
    /// Unpaid, paid or cancelled.
    pub status: InvoiceStatus,
    /// The lines.
    pub lines: Vec<InvoiceLine>,
    /// Sum of the lines, in minor units.
    pub total_minor: i64,
    /// Sum of the payments, in minor units.
    pub paid_minor: i64,
    /// Currency of every amount.
    pub currency: Currency,
    /// The issue date.
    pub issued_on: NaiveDate,
    /// The due date.
    pub due_date: NaiveDate,
    /// The payments in the order they were recorded.
    pub payments: Vec<PaymentView>,
}

impl InvoiceView {
    /// What is still owed: the unpaid remainder of an unpaid invoice, never below zero; 0 for a
    /// paid or cancelled one.
    pub fn outstanding_minor(&self) -> i64 {
        match self.status {
            InvoiceStatus::Unpaid => self.total_minor.saturating_sub(self.paid_minor).max(0),
            InvoiceStatus::Paid | InvoiceStatus::Cancelled => 0,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AccountBilling {
    /// In the order the services were ordered.
    services: Vec<ServiceView>,
    /// In the order issued, which is also the order of their numbers.
    invoices: Vec<InvoiceView>,
}

impl AccountBilling {
    fn service_mut(&mut self, service_id: Uuid) -> Option<&mut ServiceView> {
        self.services
            .iter_mut()
            .find(|s| s.service_id == service_id)
    }

    fn invoice_mut(&mut self, invoice_id: Uuid) -> Option<&mut InvoiceView> {
        self.invoices
            .iter_mut()
            .find(|i| i.invoice_id == invoice_id)
    }
}

/// Services, invoices and payments, per client account.
///
/// Invoice numbers are assigned here, in the log order of issue across the whole provider, so
/// that a rebuild from the same log assigns the same numbers.
#[derive(Clone, Debug, Default)]
pub struct BillingLedger {
    accounts: BTreeMap<Uuid, AccountBilling>,
    last_number: u64,
}

impl BillingLedger {
    /// Every client account with at least one service or invoice, by id.
    pub fn billed_accounts(&self) -> Vec<Uuid> {
        self.accounts.keys().copied().collect()
    }

    /// The services of a client account in the order they were ordered.
    pub fn services(&self, account_id: Uuid) -> Vec<ServiceView> {
        self.accounts
            .get(&account_id)
            .map(|a| a.services.clone())
            .unwrap_or_default()
    }

    /// One service of a client account; `None` when the service belongs to another account.
    pub fn service(&self, account_id: Uuid, service_id: Uuid) -> Option<&ServiceView> {
        self.accounts
            .get(&account_id)?
            .services
            .iter()
            .find(|s| s.service_id == service_id)
    }

    /// The invoices of a client account by number.
    pub fn invoices(&self, account_id: Uuid) -> Vec<InvoiceView> {
        self.accounts
            .get(&account_id)
            .map(|a| a.invoices.clone())
            .unwrap_or_default()
    }

    /// One invoice of a client account; `None` when the invoice belongs to another account.
    pub fn invoice(&self, account_id: Uuid, invoice_id: Uuid) -> Option<&InvoiceView> {
        self.accounts
            .get(&account_id)?
            .invoices
            .iter()
            .find(|i| i.invoice_id == invoice_id)
    }

    /// What the client account still owes: the sum of [`InvoiceView::outstanding_minor`] over
    /// its invoices.
    // LIMITATION: amounts are summed whatever their currency; the ledger assumes one
    // provider currency.
    pub fn balance_minor(&self, account_id: Uuid) -> i64 {
        self.accounts
            .get(&account_id)
            .into_iter()
            .flat_map(|a| a.invoices.iter())
            .fold(0i64, |sum, invoice| {
                sum.saturating_add(invoice.outstanding_minor())
            })
    }

    /// The number the next issued invoice will receive.
    pub fn next_invoice_number(&self) -> u64 {
        self.last_number + 1
    }

    pub(crate) fn apply(&mut self, account_id: Uuid, event: &AccountEvent, stored: &StoredEvent) {
        match event {
            AccountEvent::ServiceOrdered {
                service_id,
                product_id,
                product_name,
                kind,
                domain,
                billing_cycle,
                amount_minor,
                currency,
                ordered_on,
                next_due_date,
            } => {
                let billing = self.accounts.entry(account_id).or_default();
                if billing.service_mut(*service_id).is_some() {
                    return;
                }
                billing.services.push(ServiceView {
                    service_id: *service_id,
                    account_id,
                    product_id: *product_id,
                    product_name: product_name.clone(),
                    kind: *kind,
                    domain: domain.clone(),
                    billing_cycle: *billing_cycle,
                    amount_minor: *amount_minor,
                    currency: currency.clone(),
                    status: ServiceStatus::Active,
                    ordered_on: *ordered_on,
                    next_due_date: *next_due_date,
                    nameservers: Vec::new(),
                });
            }
            AccountEvent::InvoiceIssued {
                invoice_id,
                service_id,
                kind,
                lines,
                total_minor,
                currency,
                issued_on,
                due_date,
            } => {
                let billing = self.accounts.entry(account_id).or_default();
                // A repeated issue of the same invoice keeps its first number rather than
                // consuming another one.
                if billing.invoice_mut(*invoice_id).is_some() {
                    return;
                }
                self.last_number += 1;
                billing.invoices.push(InvoiceView {
                    invoice_id: *invoice_id,
                    number: self.last_number,
                    account_id,
                    service_id: *service_id,
                    kind: kind.clone(),
                    status: InvoiceStatus::Unpaid,
                    lines: lines.clone(),
                    total_minor: *total_minor,
                    paid_minor: 0,
                    currency: currency.clone(),
                    issued_on: *issued_on,
                    due_date: *due_date,
                    payments: Vec::new(),
                });
            }
            AccountEvent::PaymentReceived {
                invoice_id,
                payment_id,
                amount_minor,
                reference,
            } => {
                if let Some(invoice) = self.invoice_mut(account_id, *invoice_id) {
                    invoice.paid_minor = invoice.paid_minor.saturating_add(*amount_minor);
                    invoice.payments.push(PaymentView {
                        payment_id: *payment_id,
                        amount_minor: *amount_minor,
                        reference: reference.clone(),
                        position: stored.position,
                        received_at: stored.occurred_at,
                    });
                }
            }
            AccountEvent::InvoicePaid { invoice_id } => {
                if let Some(invoice) = self.invoice_mut(account_id, *invoice_id) {
                    invoice.status = InvoiceStatus::Paid;
                }
            }
            AccountEvent::InvoiceCancelled { invoice_id } => {
                if let Some(invoice) = self.invoice_mut(account_id, *invoice_id) {
                    invoice.status = InvoiceStatus::Cancelled;
                }
            }
            AccountEvent::ServiceRenewed {
                service_id,
                next_due_date,
            } => {
                if let Some(service) = self.service_mut(account_id, *service_id) {
                    service.next_due_date = *next_due_date;
                }
            }
            AccountEvent::ServiceCancelled { service_id } => {
                if let Some(service) = self.service_mut(account_id, *service_id) {
                    service.status = ServiceStatus::Cancelled;
                }
            }
            AccountEvent::ServiceSuspended { service_id, .. } => {
                if let Some(service) = self.service_mut(account_id, *service_id) {
                    if service.status == ServiceStatus::Active {
                        service.status = ServiceStatus::Suspended;
                    }
                }
            }
            AccountEvent::ServiceUnsuspended { service_id } => {
                if let Some(service) = self.service_mut(account_id, *service_id) {
                    if service.status == ServiceStatus::Suspended {
                        service.status = ServiceStatus::Active;
                    }
                }
            }
            AccountEvent::NameserversUpdated {
                service_id,
                nameservers,
            } => {
                if let Some(service) = self.service_mut(account_id, *service_id) {
                    service.nameservers = nameservers.clone();
                }
            }
            AccountEvent::AccountCreated { .. }
            | AccountEvent::AccountProfileUpdated { .. }
            | AccountEvent::UserInvited { .. }
            | AccountEvent::InvitationResent { .. }
            | AccountEvent::InvitationCancelled { .. }
            | AccountEvent::InvitationAccepted { .. }
            | AccountEvent::InvitationDeclined { .. }
            | AccountEvent::PermissionsGranted { .. }
            | AccountEvent::PermissionsRevoked { .. }
            | AccountEvent::MemberRemoved { .. }
            | AccountEvent::OwnershipTransferred { .. }
            | AccountEvent::ContactAdded { .. }
            | AccountEvent::ContactRemoved { .. }
            | AccountEvent::NotificationOptInsSet { .. }
            | AccountEvent::PaymentReminderSent { .. }
            | AccountEvent::ServiceActivated { .. }
            | AccountEvent::ServiceLoginOpened { .. }
            | AccountEvent::ServiceLoginFailed { .. } => {}
        }
    }

    /// The services and invoices of one account, as a persisted document holds them.
    pub(crate) fn account_part(&self, account_id: Uuid) -> AccountBilling {
        self.accounts.get(&account_id).cloned().unwrap_or_default()
    }

    /// Replaces the services and invoices of one account.
    pub(crate) fn put_account_part(&mut self, account_id: Uuid, billing: AccountBilling) {
        if billing == AccountBilling::default() {
            self.accounts.remove(&account_id);
        } else {
            self.accounts.insert(account_id, billing);
        }
    }

    /// Every account with services or invoices.
    pub(crate) fn account_ids(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.accounts.keys().copied()
    }

    /// The number of the last issued invoice; 0 before the first.
    pub(crate) fn last_invoice_number(&self) -> u64 {
        self.last_number
    }

    pub(crate) fn set_last_invoice_number(&mut self, number: u64) {
        self.last_number = number;
    }

    fn service_mut(&mut self, account_id: Uuid, service_id: Uuid) -> Option<&mut ServiceView> {
        self.accounts.get_mut(&account_id)?.service_mut(service_id)
    }

    fn invoice_mut(&mut self, account_id: Uuid, invoice_id: Uuid) -> Option<&mut InvoiceView> {
        self.accounts.get_mut(&account_id)?.invoice_mut(invoice_id)
    }
}
