//! The mailer against a real SMTP receiver on loopback: exact mails, once each, across
//! concurrent mailers and restarts; temporary refusals retried after their pause; permanent
//! ones recorded; operator templates used.

use onbehalf::mailer::{DeliveryStatus, Templates};
use onbehalf_proto::v1 as pb;
use onbehalf_tests::mail::{self, MailSink, ReceivedMail};
use onbehalf_tests::{on_both_backends, request_id, Person, TestServer, HOSTING_ANNUAL_MINOR};

/// ABC Company with its owner, an annual hosting order for abc.co.tz and the order's invoice.
struct Abc {
    owner: Person,
    account_id: String,
    invoice_id: String,
}

async fn abc_with_contacts(server: &TestServer, contacts: &[(&str, &str)]) -> Abc {
    let catalogue = server.seed_catalogue().await;
    let owner = server.register("admin@abc.co.tz", "ABC Company").await;
    let account = owner.create_account("ABC Company", "admin@abc.co.tz").await;
    for (name, email) in contacts {
        owner
            .accounts()
            .add_contact(pb::AddContactRequest {
                account_id: account.account_id.clone(),
                name: (*name).into(),
                email: (*email).into(),
                categories: vec![pb::ContactCategory::ContactInvoice as i32],
                request_id: request_id(),
            })
            .await
            .expect("the owner adds a contact");
    }
    let ordered = owner
        .hosting()
        .order_service(pb::OrderServiceRequest {
            account_id: account.account_id.clone(),
            product_id: catalogue.hosting_product_id.clone(),
            domain: "abc.co.tz".into(),
            billing_cycle: pb::BillingCycle::Annually as i32,
            request_id: request_id(),
        })
        .await
        .expect("the owner orders hosting")
        .into_inner();
    Abc {
        owner,
        account_id: account.account_id,
        invoice_id: ordered.invoice_id,
    }
}

const INVOICE_1_BODY: &str = "Invoice #1 was issued to ABC Company on 2025-03-03.\n\
     - Starter Hosting - abc.co.tz (2025-03-03 - 2026-03-02): TZS 150,000.00\n\
     Total: TZS 150,000.00\n\
     Due date: 2025-03-03.";

fn sorted(mut mails: Vec<ReceivedMail>) -> Vec<(Vec<String>, String, String)> {
    let mut out: Vec<_> = mails
        .drain(..)
        .map(|m| (m.rcpt_to, m.subject, m.body))
        .collect();
    out.sort();
    out
}

on_both_backends!(mailed_once => every_notification_is_mailed_once_across_concurrent_mailers_and_restarts_on_sqlite, every_notification_is_mailed_once_across_concurrent_mailers_and_restarts_on_postgres);

async fn mailed_once(server: &TestServer) {
    let abc = abc_with_contacts(server, &[("ABC Accounts", "accounts@abc.co.tz")]).await;
    abc.owner
        .billing()
        .pay_invoice(pb::PayInvoiceRequest {
            account_id: abc.account_id.clone(),
            invoice_id: abc.invoice_id.clone(),
            amount_minor: HOSTING_ANNUAL_MINOR,
            reference: "MPESA-ABC-0001".into(),
            request_id: request_id(),
        })
        .await
        .expect("the owner pays");
    let sink = MailSink::start().await;

    let first = mail::mailer(server, &sink, "mailer-a", Templates::built_in()).await;
    let second = mail::mailer(server, &sink, "mailer-b", Templates::built_in()).await;
    let (a, b) = tokio::join!(first.pass(), second.pass());
    let (a, b) = (a.expect("a pass"), b.expect("a pass"));

    let service = "Starter Hosting (abc.co.tz)";
    let paid = "A payment of TZS 150,000.00 (reference MPESA-ABC-0001) was received for invoice #1 \
                of ABC Company.\nPaid so far: TZS 150,000.00 of TZS 150,000.00. Still due: TZS 0.00.";
    let expected = sorted(vec![
        ReceivedMail {
            rcpt_to: vec!["admin@abc.co.tz".into()],
            subject: format!("New service for ABC Company: {service}"),
            message_id: String::new(),
            body: format!(
                "{service} was ordered for ABC Company.\nPrice: TZS 150,000.00 per cycle, \
                 billed annually.\nNext due date: 2026-03-03."
            ),
        },
        ReceivedMail {
            rcpt_to: vec!["admin@abc.co.tz".into()],
            subject: "Invoice #1 for ABC Company".into(),
            message_id: String::new(),
            body: INVOICE_1_BODY.into(),
        },
        ReceivedMail {
            rcpt_to: vec!["accounts@abc.co.tz".into()],
            subject: "Invoice #1 for ABC Company".into(),
            message_id: String::new(),
            body: INVOICE_1_BODY.into(),
        },
        ReceivedMail {
            rcpt_to: vec!["admin@abc.co.tz".into()],
            subject: "Payment received for invoice #1".into(),
            message_id: String::new(),
            body: paid.into(),
        },
        ReceivedMail {
            rcpt_to: vec!["accounts@abc.co.tz".into()],
            subject: "Payment received for invoice #1".into(),
            message_id: String::new(),
            body: paid.into(),
        },
    ]);
    assert_eq!(sorted(sink.received()), expected);
    assert_eq!(
        a.sent + b.sent,
        5,
        "each mail was sent by exactly one mailer"
    );

    // Each Message-ID names its notification, so the five are distinct.
    let mut ids: Vec<String> = sink.received().into_iter().map(|m| m.message_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5);
    assert!(ids.iter().all(|id| id.ends_with("@onbehalf.notification>")));

    // A mailer started again on the same log sends nothing more.
    drop((first, second));
    let restarted = mail::mailer(server, &sink, "mailer-c", Templates::built_in()).await;
    let again = restarted.pass().await.expect("a pass");
    assert_eq!((again.sent, again.retried, again.failed), (0, 0, 0));
    assert_eq!(sink.received().len(), 5);
}

on_both_backends!(refusals => a_temporary_refusal_is_retried_after_its_pause_and_a_permanent_one_is_recorded_on_sqlite, a_temporary_refusal_is_retried_after_its_pause_and_a_permanent_one_is_recorded_on_postgres);

async fn refusals(server: &TestServer) {
    let abc = abc_with_contacts(
        server,
        &[("Later", "later@abc.co.tz"), ("Nobody", "nobody@abc.co.tz")],
    )
    .await;
    let sink = MailSink::start().await;
    sink.refuse(
        "later@abc.co.tz",
        "451 4.3.0 mailbox busy, try later",
        Some(1),
    );
    sink.refuse("nobody@abc.co.tz", "550 5.1.1 no such mailbox", None);
    let mailer = mail::mailer(server, &sink, "mailer-a", Templates::built_in()).await;

    let first = mailer.pass().await.expect("a pass");
    assert_eq!((first.sent, first.retried, first.failed), (2, 1, 1));
    assert_eq!(
        sink.mailboxes(),
        [(
            "admin@abc.co.tz".to_owned(),
            vec![
                "New service for ABC Company: Starter Hosting (abc.co.tz)".to_owned(),
                "Invoice #1 for ABC Company".to_owned()
            ]
        )]
        .into_iter()
        .collect()
    );

    // Before the pause is over nothing is attempted again.
    let early = mailer.pass().await.expect("a pass");
    assert_eq!((early.sent, early.retried, early.failed), (0, 0, 0));
    assert_eq!(sink.refused(), 2);

    server.clock.advance(chrono::Duration::seconds(61));
    let retried = mailer.pass().await.expect("a pass");
    assert_eq!((retried.sent, retried.retried, retried.failed), (1, 0, 0));
    let later: Vec<ReceivedMail> = sink
        .received()
        .into_iter()
        .filter(|m| m.rcpt_to == ["later@abc.co.tz"])
        .collect();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].subject, "Invoice #1 for ABC Company");
    assert_eq!(later[0].body, INVOICE_1_BODY);
    assert_eq!(sink.refused(), 2, "the failed one is never tried again");

    let notifications = server
        .admin()
        .notifications()
        .list_notifications(pb::ListNotificationsRequest {
            account_id: abc.account_id.clone(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("the notifications")
        .into_inner()
        .notifications;
    let id_of = |email: &str| {
        notifications
            .iter()
            .find(|n| n.recipient_email == email)
            .map(|n| n.notification_id.parse().expect("a uuid"))
            .expect("a notification for the recipient")
    };
    let state = mail::delivery_state(server).await;
    let later = state
        .delivery(id_of("later@abc.co.tz"))
        .await
        .expect("readable")
        .expect("recorded");
    assert_eq!((later.status, later.attempts), (DeliveryStatus::Sent, 2));
    assert!(later
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("451")));
    let nobody = state
        .delivery(id_of("nobody@abc.co.tz"))
        .await
        .expect("readable")
        .expect("recorded");
    assert_eq!(
        (nobody.status, nobody.attempts),
        (DeliveryStatus::Failed, 1)
    );
    assert!(
        nobody
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("550")),
        "{:?}",
        nobody.last_error
    );
}

#[tokio::test]
async fn an_operator_template_replaces_the_built_in_one_of_its_kind_only() {
    let server = TestServer::sqlite().await;
    abc_with_contacts(&server, &[]).await;
    let dir = onbehalf::testing::TempDataDir::new();
    std::fs::write(
        dir.path().join("invoice_issued.txt"),
        "Subject: {{account_name}}: invoice {{invoice_number}} ({{total}})\n\n\
         Dear {{account_name}},\n{{lines}}\nPay by {{due_date}}. {{unknown}}\n",
    )
    .expect("the template is written");
    let templates = Templates::load(dir.path()).expect("the templates load");
    let sink = MailSink::start().await;
    let mailer = mail::mailer(&server, &sink, "mailer-a", templates).await;
    mailer.pass().await.expect("a pass");

    let invoice = sink
        .received()
        .into_iter()
        .find(|m| m.subject.contains("invoice 1"))
        .expect("the invoice mail");
    assert_eq!(invoice.subject, "ABC Company: invoice 1 (TZS 150,000.00)");
    assert_eq!(
        invoice.body,
        "Dear ABC Company,\n- Starter Hosting - abc.co.tz (2025-03-03 - 2026-03-02): \
         TZS 150,000.00\nPay by 2025-03-03. {{unknown}}"
    );
    let others: Vec<String> = sink
        .received()
        .into_iter()
        .map(|m| m.subject)
        .filter(|s| !s.contains("invoice 1"))
        .collect();
    assert_eq!(
        others,
        ["New service for ABC Company: Starter Hosting (abc.co.tz)"]
    );
}
