//! A retried request gets the first outcome: the resource as that command left it, with its
//! position, however the resource changed since.

use onbehalf_proto::v1 as pb;
use onbehalf_tests::{on_both_backends, TestServer, HOSTING_MONTHLY_MINOR};

async fn a_retry_answers_with_what_the_first_attempt_did(server: &TestServer) {
    let catalogue = server.seed_catalogue().await;
    let owner = server.register("admin@abc.co.tz", "ABC Company").await;
    let abc = owner
        .create_account("ABC Company", "admin@abc.co.tz")
        .await
        .account_id;
    let rename = |name: &str, request_id: &str| pb::UpdateAccountProfileRequest {
        account_id: abc.clone(),
        name: name.into(),
        email: "admin@abc.co.tz".into(),
        request_id: request_id.into(),
    };
    let first = owner
        .accounts()
        .update_account_profile(rename("ABC Company Ltd", "rename-1"))
        .await
        .unwrap()
        .into_inner();
    owner
        .accounts()
        .update_account_profile(rename("ABC Holdings", "rename-2"))
        .await
        .unwrap();
    let retried = owner
        .accounts()
        .update_account_profile(rename("ABC Company Ltd", "rename-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.position, first.position);
    assert_eq!(
        retried.account.as_ref().map(|a| a.name.as_str()),
        Some("ABC Company Ltd")
    );
    assert_eq!(retried.account, first.account);

    let ordered = owner
        .hosting()
        .order_service(pb::OrderServiceRequest {
            account_id: abc.clone(),
            product_id: catalogue.hosting_product_id.clone(),
            domain: String::new(),
            billing_cycle: pb::BillingCycle::Monthly as i32,
            request_id: "order-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let pay = |amount_minor: i64, request_id: &str| pb::PayInvoiceRequest {
        account_id: abc.clone(),
        invoice_id: ordered.invoice_id.clone(),
        amount_minor,
        reference: "MPESA".into(),
        request_id: request_id.into(),
    };
    let part = owner
        .billing()
        .pay_invoice(pay(500_000, "pay-1"))
        .await
        .unwrap()
        .into_inner();
    owner
        .billing()
        .pay_invoice(pay(HOSTING_MONTHLY_MINOR - 500_000, "pay-2"))
        .await
        .unwrap();
    let again = owner
        .billing()
        .pay_invoice(pay(500_000, "pay-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.position, part.position);
    let invoice = again.invoice.expect("the invoice");
    assert_eq!(
        (invoice.paid_minor, invoice.status),
        (500_000, pb::InvoiceStatus::Unpaid as i32)
    );
    assert_eq!(Some(invoice), part.invoice);
}

on_both_backends!(a_retry_answers_with_what_the_first_attempt_did
    => a_retry_answers_with_what_the_first_attempt_did_on_sqlite,
       a_retry_answers_with_what_the_first_attempt_did_on_postgres);

async fn concurrent_retries_of_one_request_append_once_and_share_its_outcome(server: &TestServer) {
    let catalogue = server.seed_catalogue().await;
    let owner = server.register("admin@abc.co.tz", "ABC Company").await;
    let abc = owner
        .create_account("ABC Company", "admin@abc.co.tz")
        .await
        .account_id;
    let head = server.log_head().await;
    let attempts = (0..20).map(|_| {
        let mut hosting = owner.hosting();
        let request = pb::OrderServiceRequest {
            account_id: abc.clone(),
            product_id: catalogue.hosting_product_id.clone(),
            domain: "abc.co.tz".into(),
            billing_cycle: pb::BillingCycle::Monthly as i32,
            request_id: "order-abc-hosting".into(),
        };
        async move { hosting.order_service(request).await.map(|r| r.into_inner()) }
    });
    let outcomes: Vec<pb::OrderServiceResponse> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.expect("every attempt is answered"))
        .collect();
    assert!(outcomes.iter().all(|o| *o == outcomes[0]), "{outcomes:?}");
    assert_eq!(outcomes[0].position, head + 2);
    assert_eq!(
        server.log_head().await,
        head + 2,
        "one order: ServiceOrdered and InvoiceIssued"
    );
}

on_both_backends!(concurrent_retries_of_one_request_append_once_and_share_its_outcome
    => concurrent_retries_of_one_request_append_once_and_share_its_outcome_on_sqlite,
       concurrent_retries_of_one_request_append_once_and_share_its_outcome_on_postgres);

/// A command the account would refuse once the first attempt's effect is in (a second pending
/// invitation for one email, a payment of a paid invoice) still answers the first outcome when
/// its retries race that attempt.
async fn concurrent_retries_of_a_command_that_cannot_repeat_share_the_first_outcome(
    server: &TestServer,
) {
    let owner = server.register("admin@abc.co.tz", "ABC Company").await;
    let abc = owner
        .create_account("ABC Company", "admin@abc.co.tz")
        .await
        .account_id;
    let head = server.log_head().await;
    let attempts = (0..20).map(|_| {
        let mut invitations = owner.invitations();
        let request = pb::InviteUserRequest {
            account_id: abc.clone(),
            email: "designer@yourcompany.com".into(),
            permissions: vec![],
            full_access: true,
            request_id: "invite-designer".into(),
        };
        async move {
            invitations
                .invite_user(request)
                .await
                .map(|r| r.into_inner())
        }
    });
    let outcomes: Vec<pb::InviteUserResponse> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.expect("every attempt answers the first outcome"))
        .collect();
    assert!(outcomes.iter().all(|o| *o == outcomes[0]), "{outcomes:?}");
    assert_eq!(outcomes[0].position, head + 1);
    assert_eq!(server.log_head().await, head + 1, "one UserInvited");
}

on_both_backends!(concurrent_retries_of_a_command_that_cannot_repeat_share_the_first_outcome
    => concurrent_retries_of_a_command_that_cannot_repeat_share_the_first_outcome_on_sqlite,
       concurrent_retries_of_a_command_that_cannot_repeat_share_the_first_outcome_on_postgres);
