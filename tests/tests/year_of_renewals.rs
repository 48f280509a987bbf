//! A year of the agency walkthrough's four client accounts, driven by the test's clock: the
//! scheduler (two replicas, one restarted mid-year) issues renewals, reminders and one
//! suspension; the clients and the designer pay, some late; the mailer (restarted mid-year)
//! delivers to a real SMTP receiver. Each mailbox ends up holding exactly its own mail.

use std::collections::BTreeMap;

use chrono::{Months, NaiveDate};
use onbehalf::mailer::Templates;
use onbehalf::scheduler::SchedulerConfig;
use onbehalf_proto::v1 as pb;
use onbehalf_tests::mail::{self, MailSink};
use onbehalf_tests::{
    on_both_backends, request_id, Person, TestServer, DESIGNER, DOMAIN_ANNUAL_MINOR,
    HOSTING_ANNUAL_MINOR, HOSTING_MONTHLY_MINOR,
};

const ABC: (&str, &str) = ("ABC Company", "admin@abc.co.tz");
const NEW_LIFE: (&str, &str) = ("New Life Church", "info@newlife.or.tz");
const STAR: (&str, &str) = ("Star Logistics", "support@starlogistics.co.tz");
const GREEN_FARM: (&str, &str) = ("Green Farm Ltd", "info@greenfarm.co.tz");
const PASTOR: &str = "pastor@newlife.or.tz";
const GREEN_ACCOUNTS: &str = "accounts@greenfarm.co.tz";

/// Reminder offsets and suspension as the scheduler is configured.
const REMIND: [i32; 3] = [-7, 3, 10];
const SUSPEND_AFTER: i64 = 14;
const LEAD: i64 = 14;

fn day(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("a date")
}

fn to_date(d: &pb::Date) -> NaiveDate {
    day(d.year, d.month as u32, d.day as u32)
}

/// One client account as the test drives it.
struct Client {
    name: &'static str,
    account_id: String,
    /// Who pays its invoices.
    payer: Person,
    service_id: String,
    label: String,
    monthly: bool,
}

/// What the test expects one cycle of a service to produce, in time order.
#[derive(Debug, Clone, PartialEq)]
enum Fact {
    Issued,
    Reminder(i32),
    Suspended,
    Paid,
    Restored,
    Renewed,
}

/// The billing facts of one renewal cycle due on `due`, issued no earlier than `not_before`
/// and paid on the first day at or after `pay_on`: what the configured scheduler must do on
/// its daily passes (which run before the day's payments). Returns the facts and the day paid.
fn cycle(due: NaiveDate, not_before: NaiveDate, pay_on: NaiveDate) -> (Vec<Fact>, NaiveDate) {
    let issued = (due - chrono::Duration::days(LEAD)).max(not_before);
    let paid = pay_on.max(issued);
    let mut facts = vec![Fact::Issued];
    let mut reminded: Vec<i32> = Vec::new();
    let mut suspended = false;
    let mut t = issued + chrono::Duration::days(1);
    while t <= paid {
        let applicable = REMIND
            .iter()
            .rev()
            .copied()
            .find(|o| t >= due + chrono::Duration::days(i64::from(*o)) && (*o >= 0 || t < due));
        if let Some(o) = applicable.filter(|o| !reminded.contains(o)) {
            reminded.push(o);
            facts.push(Fact::Reminder(o));
        }
        if !suspended && t >= due + chrono::Duration::days(SUSPEND_AFTER) {
            suspended = true;
            facts.push(Fact::Suspended);
        }
        t += chrono::Duration::days(1);
    }
    facts.push(Fact::Paid);
    if suspended {
        facts.push(Fact::Restored);
    }
    facts.push(Fact::Renewed);
    (facts, paid)
}

/// The mail subject of a fact, for `client`'s invoice `number`.
fn subject(client: &Client, fact: &Fact, number: u64) -> String {
    let (name, label) = (client.name, &client.label);
    match fact {
        Fact::Issued => format!("Invoice #{number} for {name}"),
        Fact::Reminder(o) if *o < 0 => {
            format!("Reminder: invoice #{number} is due in {} days", o.abs())
        }
        Fact::Reminder(o) => format!("Reminder: invoice #{number} is {o} days overdue"),
        Fact::Suspended => format!("Service suspended for {name}: {label}"),
        Fact::Paid => format!("Payment received for invoice #{number}"),
        Fact::Restored => format!("Service restored for {name}: {label}"),
        Fact::Renewed => format!("Service renewed for {name}: {label}"),
    }
}

fn is_invoice_mail(fact: &Fact) -> bool {
    matches!(fact, Fact::Issued | Fact::Reminder(_) | Fact::Paid)
}

async fn invoices(payer: &Person, account_id: &str) -> Vec<pb::Invoice> {
    payer
        .billing()
        .list_invoices(pb::ListInvoicesRequest {
            account_id: account_id.into(),
            page_size: 500,
            ..Default::default()
        })
        .await
        .expect("the payer lists invoices")
        .into_inner()
        .invoices
}

/// The fields of an unpaid invoice a payment needs.
fn unpaid_invoice(invoice: &onbehalf_projections::InvoiceView) -> pb::Invoice {
    use chrono::Datelike;
    pb::Invoice {
        invoice_id: invoice.invoice_id.to_string(),
        number: invoice.number,
        total_minor: invoice.total_minor,
        paid_minor: invoice.paid_minor,
        due_date: Some(pb::Date {
            year: invoice.due_date.year(),
            month: invoice.due_date.month() as i32,
            day: invoice.due_date.day() as i32,
        }),
        ..Default::default()
    }
}

async fn pay(payer: &Person, account_id: &str, invoice: &pb::Invoice, reference: String) {
    payer
        .billing()
        .pay_invoice(pb::PayInvoiceRequest {
            account_id: account_id.into(),
            invoice_id: invoice.invoice_id.clone(),
            amount_minor: invoice.total_minor - invoice.paid_minor,
            reference,
            request_id: request_id(),
        })
        .await
        .expect("the payment is accepted");
}

on_both_backends!(
    year_of_renewals => a_year_of_renewals_fills_each_mailbox_with_exactly_its_own_mail_on_sqlite,
    a_year_of_renewals_fills_each_mailbox_with_exactly_its_own_mail_on_postgres
);

async fn year_of_renewals(server: &TestServer) {
    let catalogue = server.seed_catalogue().await;
    let designer = server.register(DESIGNER, "Web Designer").await;

    // The four clients invite the designer with full access; it accepts each.
    let mut owners = Vec::new();
    for (name, email) in [ABC, NEW_LIFE, STAR, GREEN_FARM] {
        let owner = server.register(email, name).await;
        let account = owner.create_account(name, email).await;
        owner.bring_in(&account.account_id, &designer, &[]).await;
        owners.push((owner, account.account_id));
    }
    let [(abc_owner, abc_id), (new_life_owner, new_life_id), (star_owner, star_id), (green_owner, green_id)]: [(Person, String); 4] =
        owners.try_into().expect("four clients");
    drop((abc_owner, star_owner));

    // The designer pays Star Logistics' bills and wants their invoices; of the others it wants
    // nothing. New Life's pastor follows its hosting, Green Farm's accountant its invoices.
    designer
        .notifications()
        .set_notification_opt_ins(pb::SetNotificationOptInsRequest {
            account_id: star_id.clone(),
            categories: vec![pb::ContactCategory::ContactInvoice as i32],
            request_id: request_id(),
        })
        .await
        .expect("the designer opts into Star's invoices");
    for (owner, account_id, name, email, category) in [
        (
            &new_life_owner,
            &new_life_id,
            "Pastor",
            PASTOR,
            pb::ContactCategory::ContactProduct,
        ),
        (
            &green_owner,
            &green_id,
            "Accounts",
            GREEN_ACCOUNTS,
            pb::ContactCategory::ContactInvoice,
        ),
    ] {
        owner
            .accounts()
            .add_contact(pb::AddContactRequest {
                account_id: account_id.clone(),
                name: name.into(),
                email: email.into(),
                categories: vec![category as i32],
                request_id: request_id(),
            })
            .await
            .expect("the owner adds a contact");
    }

    // The designer orders a service for each client; the order invoices are paid at once.
    let order = |account_id: &String, product: &String, domain: &str, cycle: pb::BillingCycle| {
        let mut hosting = designer.hosting();
        let request = pb::OrderServiceRequest {
            account_id: account_id.clone(),
            product_id: product.clone(),
            domain: domain.into(),
            billing_cycle: cycle as i32,
            request_id: request_id(),
        };
        async move {
            hosting
                .order_service(request)
                .await
                .expect("the designer orders")
                .into_inner()
        }
    };
    let hosting = &catalogue.hosting_product_id;
    let abc_order = order(&abc_id, hosting, "abc.co.tz", pb::BillingCycle::Annually).await;
    let new_life_order = order(
        &new_life_id,
        hosting,
        "newlife.or.tz",
        pb::BillingCycle::Monthly,
    )
    .await;
    let star_order = order(
        &star_id,
        &catalogue.domain_product_id,
        "starlogistics.co.tz",
        pb::BillingCycle::Annually,
    )
    .await;
    let green_order = order(
        &green_id,
        hosting,
        "greenfarm.co.tz",
        pb::BillingCycle::Monthly,
    )
    .await;

    let clients = [
        Client {
            name: ABC.0,
            account_id: abc_id.clone(),
            payer: designer.clone(),
            service_id: abc_order.service_id,
            label: "Starter Hosting (abc.co.tz)".into(),
            monthly: false,
        },
        Client {
            name: NEW_LIFE.0,
            account_id: new_life_id.clone(),
            payer: new_life_owner.clone(),
            service_id: new_life_order.service_id,
            label: "Starter Hosting (newlife.or.tz)".into(),
            monthly: true,
        },
        Client {
            name: STAR.0,
            account_id: star_id.clone(),
            payer: designer.clone(),
            service_id: star_order.service_id,
            label: ".co.tz Domain (starlogistics.co.tz)".into(),
            monthly: false,
        },
        Client {
            name: GREEN_FARM.0,
            account_id: green_id.clone(),
            payer: green_owner.clone(),
            service_id: green_order.service_id,
            label: "Starter Hosting (greenfarm.co.tz)".into(),
            monthly: true,
        },
    ];
    for client in &clients {
        let unpaid = invoices(&client.payer, &client.account_id).await;
        assert_eq!(unpaid.len(), 1);
        pay(
            &client.payer,
            &client.account_id,
            &unpaid[0],
            format!("MPESA-{}-0", client.name),
        )
        .await;
    }

    // When each client pays a renewal, as days from its due date: on time, except New Life
    // once (5 days late) and Green Farm once (20 days late, past the suspension).
    let start = day(2025, 3, 3);
    let delay = |client: &Client, due: NaiveDate| -> i64 {
        match client.name {
            n if n == NEW_LIFE.0 && due == day(2025, 7, 3) => 5,
            n if n == GREEN_FARM.0 && due == day(2025, 9, 3) => 20,
            n if n == STAR.0 => 1,
            _ => -10,
        }
    };

    // ABC's designer asks for the annual renewal itself before the scheduler would, and pays it.
    let abc_early_renewal = day(2026, 2, 10);
    let abc_pays = day(2026, 2, 12);

    let config = SchedulerConfig {
        renewal_lead_days: LEAD as u32,
        remind_days_before: vec![7],
        remind_days_after: vec![3, 10],
        suspend_after_days: Some(SUSPEND_AFTER as u32),
        ..SchedulerConfig::default()
    };
    let first = mail::scheduler(server, config.clone()).await;
    let mut second = mail::scheduler(server, config.clone()).await;
    let sink = MailSink::start().await;
    let end = day(2026, 3, 31);
    let mut today = start;
    let mut mid_year_sent = 0;
    while today < end {
        server.clock.advance(chrono::Duration::days(1));
        today += chrono::Duration::days(1);

        // Two replicas pass at the same moment; one of them is restarted in the middle.
        if today == day(2025, 9, 15) {
            second = mail::scheduler(server, config.clone()).await;
        }
        let (a, b) = tokio::join!(first.scheduler.pass(), second.scheduler.pass());
        assert_eq!(a.expect("a pass").failed, 0);
        assert_eq!(b.expect("a pass").failed, 0);

        if today == abc_early_renewal {
            designer
                .hosting()
                .renew_service(pb::RenewServiceRequest {
                    account_id: abc_id.clone(),
                    service_id: clients[0].service_id.clone(),
                    request_id: request_id(),
                })
                .await
                .expect("the designer renews ABC's hosting");
        }
        // What is unpaid, as a replica's read models show it at the head of the log.
        let unpaid: Vec<(usize, pb::Invoice)> = first
            .models(|m| {
                let mut unpaid = Vec::new();
                for (index, client) in clients.iter().enumerate() {
                    let account_id = client.account_id.parse().expect("a uuid");
                    for invoice in m.billing.invoices(account_id) {
                        if invoice.status == onbehalf_projections::InvoiceStatus::Unpaid {
                            unpaid.push((index, unpaid_invoice(&invoice)));
                        }
                    }
                }
                unpaid
            })
            .await;
        for (index, invoice) in unpaid {
            let client = &clients[index];
            {
                let due = to_date(invoice.due_date.as_ref().expect("a due date"));
                let pay_on = if client.name == ABC.0 {
                    abc_pays
                } else {
                    due + chrono::Duration::days(delay(client, due))
                };
                if today >= pay_on {
                    pay(
                        &client.payer,
                        &client.account_id,
                        &invoice,
                        format!("MPESA-{}-{due}", client.name),
                    )
                    .await;
                }
            }
        }

        // The mailer runs once in the middle of the year, then a new one at the end.
        if today == day(2025, 10, 1) {
            let mailer = mail::mailer(server, &sink, "mailer-1", Templates::built_in()).await;
            mid_year_sent = mailer.pass().await.expect("a pass").sent;
        }
    }
    let mailer = mail::mailer(server, &sink, "mailer-2", Templates::built_in()).await;
    let final_report = mailer.pass().await.expect("a pass");
    assert_eq!(final_report.failed, 0);
    assert!(mid_year_sent > 0);
    assert_eq!(mid_year_sent + final_report.sent, sink.received().len());

    // What the year must have produced, cycle by cycle, from the rules alone.
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut push = |to: &str, subject: String| {
        expected.entry(to.to_owned()).or_default().push(subject);
    };
    for (name, email) in [ABC, NEW_LIFE, STAR, GREEN_FARM] {
        push(DESIGNER, format!("Invitation to manage {name}"));
        let joined = format!("Web Designer <{DESIGNER}> joined {name}");
        push(email, joined.clone());
        push(DESIGNER, joined);
    }
    let mut suspensions = 0;
    for (client, email) in clients
        .iter()
        .zip([ABC.1, NEW_LIFE.1, STAR.1, GREEN_FARM.1])
    {
        let numbers: Vec<u64> = invoices(&client.payer, &client.account_id)
            .await
            .iter()
            .map(|i| i.number)
            .collect();
        let mut cycles: Vec<Vec<Fact>> = vec![vec![Fact::Issued, Fact::Paid]];
        if client.monthly {
            let mut paid = start;
            for k in 1..=13 {
                let due = start + Months::new(k);
                let pay_on = due + chrono::Duration::days(delay(client, due));
                let (facts, paid_on) = cycle(due, paid + chrono::Duration::days(1), pay_on);
                paid = paid_on;
                suspensions += facts.iter().filter(|f| **f == Fact::Suspended).count();
                cycles.push(facts);
            }
        } else if client.name == ABC.0 {
            cycles.push(vec![Fact::Issued, Fact::Paid, Fact::Renewed]);
        } else {
            let due = start + Months::new(12);
            let (facts, _) = cycle(due, start, due + chrono::Duration::days(1));
            cycles.push(facts);
        }
        assert_eq!(
            numbers.len(),
            cycles.len(),
            "{}: one invoice per cycle, never two",
            client.name
        );

        push(
            email,
            format!("New service for {}: {}", client.name, client.label),
        );
        if client.name == NEW_LIFE.0 {
            push(
                PASTOR,
                format!("New service for {}: {}", client.name, client.label),
            );
        }
        for (facts, number) in cycles.iter().zip(&numbers) {
            for fact in facts {
                let subject = subject(client, fact, *number);
                push(email, subject.clone());
                let invoice_mail = is_invoice_mail(fact);
                if client.name == NEW_LIFE.0 && !invoice_mail {
                    push(PASTOR, subject.clone());
                }
                if client.name == GREEN_FARM.0 && invoice_mail {
                    push(GREEN_ACCOUNTS, subject.clone());
                }
                if client.name == STAR.0 && invoice_mail {
                    push(DESIGNER, subject.clone());
                }
            }
        }
    }
    assert_eq!(suspensions, 1, "the scenario holds one suspension");

    let mailboxes = sink.mailboxes();
    for (recipient, subjects) in &expected {
        assert_eq!(
            mailboxes.get(recipient),
            Some(subjects),
            "the mailbox of {recipient}"
        );
    }
    assert_eq!(
        mailboxes.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "nobody else received mail"
    );

    // The log agrees: one suspension and its lifting, renewals issued by the system actor
    // except ABC's, which its designer asked for.
    let events = server.stored_events().await;
    let count = |t: &str| events.iter().filter(|e| e.event_type == t).count();
    assert_eq!(
        (count("ServiceSuspended"), count("ServiceUnsuspended")),
        (1, 1)
    );
    let system_issued = events
        .iter()
        .filter(|e| {
            e.event_type == "InvoiceIssued" && e.metadata.actor == onbehalf_events::Actor::System
        })
        .count();
    assert_eq!(system_issued, 13 + 13 + 1);
    let abc_renewal = invoices(&designer, &abc_id).await;
    assert_eq!(abc_renewal.len(), 2);
    assert_eq!(
        abc_renewal[1].issued_on.as_ref().map(to_date),
        Some(abc_early_renewal)
    );
    let _ = (
        HOSTING_ANNUAL_MINOR,
        HOSTING_MONTHLY_MINOR,
        DOMAIN_ANNUAL_MINOR,
    );
}
