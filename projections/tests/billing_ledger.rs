//! Billing ledger: invoice numbering, payments, cancellation, renewals, billing notices.

mod support;

use onbehalf_events::account::{InvoiceKind, InvoiceLine};
use onbehalf_events::values::BillingCycle;
use onbehalf_events::{AccountEvent, Permission};
use onbehalf_projections::{InvoiceStatus, NotificationCategory, PaymentView, ServiceStatus};
use support::{date, domain, email, fold, name, tzs, Agency, Ctx, Log};
use uuid::Uuid;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

/// Orders for ABC Company, New Life Church and ABC Company again, in that log order.
fn three_orders() -> (Agency, Log) {
    let (agency, mut log) = Agency::walkthrough();
    let ctx = |account| {
        Ctx::user(agency.designer)
            .for_account(account)
            .relying_on(Permission::Orders)
    };
    log.order_hosting(
        &ctx(agency.abc),
        agency.abc,
        id(0x5001),
        id(0x6001),
        "abc.co.tz",
    );
    log.order_hosting(
        &ctx(agency.newlife),
        agency.newlife,
        id(0x5002),
        id(0x6002),
        "newlife.or.tz",
    );
    log.order_hosting(
        &ctx(agency.abc),
        agency.abc,
        id(0x5003),
        id(0x6003),
        "abc-shop.co.tz",
    );
    (agency, log)
}

#[test]
fn invoice_numbers_run_across_accounts_in_log_order() {
    let (agency, log) = three_orders();
    let models = fold(&log.events);

    let numbers = |account| -> Vec<(Uuid, u64)> {
        models
            .billing
            .invoices(account)
            .iter()
            .map(|i| (i.invoice_id, i.number))
            .collect()
    };
    assert_eq!(numbers(agency.abc), vec![(id(0x6001), 1), (id(0x6003), 3)]);
    assert_eq!(numbers(agency.newlife), vec![(id(0x6002), 2)]);
    assert_eq!(models.billing.next_invoice_number(), 4);
    let subjects: Vec<&str> = models
        .notifications
        .for_recipient("admin@abc.co.tz")
        .into_iter()
        .filter(|n| n.category == NotificationCategory::Billing)
        .map(|n| n.subject.as_str())
        .collect();
    assert_eq!(
        subjects,
        vec!["Invoice #1 for ABC Company", "Invoice #3 for ABC Company"]
    );
}

#[test]
fn rebuilding_from_the_same_events_gives_identical_numbers_and_notifications() {
    let (agency, log) = three_orders();
    let first = fold(&log.events);
    let second = fold(&log.events);

    for account in [agency.abc, agency.newlife] {
        assert_eq!(
            first.billing.invoices(account),
            second.billing.invoices(account)
        );
    }
    assert_eq!(first.notifications.all(), second.notifications.all());
    assert_eq!(first.audit.all(), second.audit.all());
    assert_eq!(first.position(), second.position());
}

#[test]
fn the_invoice_notice_names_the_account_number_lines_total_and_due_date() {
    let (agency, log) = three_orders();
    let models = fold(&log.events);

    let notice = models
        .notifications
        .for_account(agency.newlife)
        .into_iter()
        .find(|n| n.event_type == "InvoiceIssued")
        .unwrap();
    assert_eq!(notice.recipient_email, email("info@newlife.or.tz"));
    assert_eq!(notice.subject, "Invoice #2 for New Life Church");
    assert_eq!(
        notice.body,
        "Invoice #2 was issued to New Life Church on 2026-03-01.\n\
         - Starter Hosting - newlife.or.tz (2026-03-01 - 2027-02-28): TZS 120,000.00\n\
         Total: TZS 120,000.00\nDue date: 2026-03-08."
    );
    assert_eq!(notice.action_token, None);
}

#[test]
fn a_partial_then_full_payment_updates_paid_amount_and_status() {
    let (agency, mut log) = three_orders();
    let ctx = Ctx::user(agency.designer)
        .for_account(agency.abc)
        .relying_on(Permission::Invoices);
    let partial = log.pay(
        &ctx,
        agency.abc,
        id(0x6001),
        id(0x7001),
        5_000_000,
        "MPESA-QX12",
    );
    let after_partial = fold(&log.events);
    let rest = log.pay(
        &ctx,
        agency.abc,
        id(0x6001),
        id(0x7002),
        7_000_000,
        "MPESA-QX13",
    );
    log.account(
        &ctx,
        agency.abc,
        AccountEvent::InvoicePaid {
            invoice_id: id(0x6001),
        },
    );
    let after_full = fold(&log.events);

    let invoice = after_partial
        .billing
        .invoice(agency.abc, id(0x6001))
        .unwrap();
    assert_eq!(
        (invoice.paid_minor, invoice.status),
        (5_000_000, InvoiceStatus::Unpaid)
    );
    assert_eq!(invoice.outstanding_minor(), 7_000_000);
    // Invoice #3 of ABC Company is still wholly owed.
    assert_eq!(after_partial.billing.balance_minor(agency.abc), 19_000_000);

    let invoice = after_full.billing.invoice(agency.abc, id(0x6001)).unwrap();
    assert_eq!(
        (invoice.paid_minor, invoice.status),
        (12_000_000, InvoiceStatus::Paid)
    );
    assert_eq!(
        invoice.payments,
        vec![
            PaymentView {
                payment_id: id(0x7001),
                amount_minor: 5_000_000,
                reference: "MPESA-QX12".into(),
                position: partial.position,
                received_at: partial.occurred_at,
            },
            PaymentView {
                payment_id: id(0x7002),
                amount_minor: 7_000_000,
                reference: "MPESA-QX13".into(),
                position: rest.position,
                received_at: rest.occurred_at,
            },
        ]
    );
    assert_eq!(after_full.billing.balance_minor(agency.abc), 12_000_000);

    let payment_notice = after_full
        .notifications
        .for_account(agency.abc)
        .into_iter()
        .find(|n| n.position == partial.position)
        .unwrap();
    assert_eq!(payment_notice.category, NotificationCategory::Billing);
    assert_eq!(payment_notice.recipient_email, email("admin@abc.co.tz"));
    assert_eq!(payment_notice.subject, "Payment received for invoice #1");
    assert_eq!(
        payment_notice.body,
        "A payment of TZS 50,000.00 (reference MPESA-QX12) was received for invoice #1 of \
         ABC Company.\nPaid so far: TZS 50,000.00 of TZS 120,000.00. Still due: TZS 70,000.00."
    );
}

#[test]
fn a_cancelled_invoice_is_no_longer_owed() {
    let (agency, mut log) = three_orders();
    let staff =
        Ctx::by(onbehalf_events::Actor::Staff("billing-desk".into())).for_account(agency.abc);
    log.account(
        &staff,
        agency.abc,
        AccountEvent::InvoiceCancelled {
            invoice_id: id(0x6003),
        },
    );
    let models = fold(&log.events);

    let invoice = models.billing.invoice(agency.abc, id(0x6003)).unwrap();
    assert_eq!(invoice.status, InvoiceStatus::Cancelled);
    assert_eq!(invoice.outstanding_minor(), 0);
    assert_eq!(models.billing.balance_minor(agency.abc), 12_000_000);
    assert_eq!(models.billing.invoice(agency.newlife, id(0x6003)), None);
}

#[test]
fn renewal_moves_the_due_date_and_cancellation_stops_the_service() {
    let (agency, mut log) = three_orders();
    let system = Ctx::system().for_account(agency.abc);
    log.account(
        &system,
        agency.abc,
        AccountEvent::InvoiceIssued {
            invoice_id: id(0x6004),
            service_id: id(0x5001),
            kind: InvoiceKind::Renewal {
                period_start: date(2027, 3, 1),
            },
            lines: vec![InvoiceLine {
                description: "Starter Hosting - abc.co.tz (2027-03-01 - 2028-02-29)".into(),
                amount_minor: 12_000_000,
            }],
            total_minor: 12_000_000,
            currency: tzs(),
            issued_on: date(2027, 2, 15),
            due_date: date(2027, 3, 1),
        },
    );
    log.account(
        &system,
        agency.abc,
        AccountEvent::ServiceRenewed {
            service_id: id(0x5001),
            next_due_date: date(2028, 3, 1),
        },
    );
    log.account(
        &Ctx::user(agency.designer)
            .for_account(agency.abc)
            .relying_on(Permission::ManageDomains),
        agency.abc,
        AccountEvent::NameserversUpdated {
            service_id: id(0x5003),
            nameservers: vec![domain("ns1.netpoa.test"), domain("ns2.netpoa.test")],
        },
    );
    log.account(
        &Ctx::user(agency.designer)
            .for_account(agency.abc)
            .relying_on(Permission::Orders),
        agency.abc,
        AccountEvent::ServiceCancelled {
            service_id: id(0x5003),
        },
    );
    let models = fold(&log.events);

    let renewed = models.billing.service(agency.abc, id(0x5001)).unwrap();
    assert_eq!(renewed.next_due_date, date(2028, 3, 1));
    assert_eq!(renewed.status, ServiceStatus::Active);
    assert_eq!(renewed.billing_cycle, BillingCycle::Annually);
    assert_eq!(renewed.product_name, name("Starter Hosting"));
    let cancelled = models.billing.service(agency.abc, id(0x5003)).unwrap();
    assert_eq!(cancelled.status, ServiceStatus::Cancelled);
    assert_eq!(
        cancelled.nameservers,
        vec![domain("ns1.netpoa.test"), domain("ns2.netpoa.test")]
    );
    assert_eq!(
        models.billing.invoice(agency.abc, id(0x6004)).unwrap().kind,
        InvoiceKind::Renewal {
            period_start: date(2027, 3, 1)
        }
    );
    assert_eq!(
        models
            .billing
            .invoice(agency.abc, id(0x6004))
            .unwrap()
            .number,
        4
    );

    let service_notices: Vec<(&str, &str)> = models
        .notifications
        .for_account(agency.abc)
        .into_iter()
        .filter(|n| n.category == NotificationCategory::Service)
        .map(|n| (n.subject.as_str(), n.recipient_email.as_str()))
        .collect();
    assert_eq!(
        service_notices,
        vec![
            (
                "New service for ABC Company: Starter Hosting (abc.co.tz)",
                "admin@abc.co.tz"
            ),
            (
                "New service for ABC Company: Starter Hosting (abc-shop.co.tz)",
                "admin@abc.co.tz"
            ),
            (
                "Service renewed for ABC Company: Starter Hosting (abc.co.tz)",
                "admin@abc.co.tz"
            ),
            (
                "Service cancelled for ABC Company: Starter Hosting (abc-shop.co.tz)",
                "admin@abc.co.tz"
            ),
        ]
    );
}

#[test]
fn billing_notices_follow_the_billing_email_as_it_was_at_that_moment() {
    let (agency, mut log) = Agency::walkthrough();
    let owner = Ctx::user(agency.abc_owner)
        .for_account(agency.abc)
        .relying_on(Permission::Orders);
    log.order_hosting(&owner, agency.abc, id(0x5001), id(0x6001), "abc.co.tz");
    log.account(
        &Ctx::user(agency.abc_owner)
            .for_account(agency.abc)
            .relying_on(Permission::Profile),
        agency.abc,
        AccountEvent::AccountProfileUpdated {
            name: name("ABC Company Limited"),
            email: email("billing@abc.co.tz"),
        },
    );
    log.pay(
        &owner,
        agency.abc,
        id(0x6001),
        id(0x7001),
        12_000_000,
        "BANK-0042",
    );
    let models = fold(&log.events);

    let routed: Vec<(&str, &str)> = models
        .notifications
        .for_account(agency.abc)
        .into_iter()
        .filter(|n| n.category != NotificationCategory::Invitation)
        .filter(|n| n.category != NotificationCategory::Security)
        .map(|n| (n.event_type.as_str(), n.recipient_email.as_str()))
        .collect();
    assert_eq!(
        routed,
        vec![
            ("ServiceOrdered", "admin@abc.co.tz"),
            ("InvoiceIssued", "admin@abc.co.tz"),
            ("PaymentReceived", "billing@abc.co.tz"),
        ]
    );
    assert_eq!(
        models.accounts.account(agency.abc).unwrap().name,
        name("ABC Company Limited")
    );
}
