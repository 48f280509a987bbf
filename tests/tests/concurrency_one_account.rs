//! Many writers on one client account at once: every command is accepted or refused on the
//! account's state, none is lost to an optimistic race inside one server, and the log stays
//! gap-free.

use onbehalf_proto::v1 as pb;
use onbehalf_tests::{on_both_backends, request_id, TestServer, DESIGNER, HOSTING_MONTHLY_MINOR};

const WRITERS: usize = 50;

async fn fifty_concurrent_orders_and_payments_on_one_account_all_land(server: &TestServer) {
    let catalogue = server.seed_catalogue().await;
    let owner = server.register("admin@abc.co.tz", "ABC Company").await;
    let abc = owner
        .create_account("ABC Company", "admin@abc.co.tz")
        .await
        .account_id;
    let designer = server.register(DESIGNER, "Web Designer").await;
    owner.bring_in(&abc, &designer, &[]).await;
    let head = server.log_head().await;

    let orders = (0..WRITERS).map(|i| {
        let (hosting, abc) = (designer.hosting(), abc.clone());
        let product_id = catalogue.hosting_product_id.clone();
        async move {
            let mut hosting = hosting;
            hosting
                .order_service(pb::OrderServiceRequest {
                    account_id: abc,
                    product_id,
                    domain: format!("site{i}.abc.co.tz"),
                    billing_cycle: pb::BillingCycle::Monthly as i32,
                    request_id: request_id(),
                })
                .await
                .map(|r| r.into_inner())
        }
    });
    let ordered: Vec<_> = futures::future::join_all(orders).await;
    let ordered: Vec<pb::OrderServiceResponse> = ordered
        .into_iter()
        .map(|r| r.expect("every order is accepted"))
        .collect();

    let payments = ordered.iter().map(|o| {
        let (billing, abc, invoice_id) = (owner.billing(), abc.clone(), o.invoice_id.clone());
        async move {
            let mut billing = billing;
            billing
                .pay_invoice(pb::PayInvoiceRequest {
                    account_id: abc,
                    invoice_id,
                    amount_minor: HOSTING_MONTHLY_MINOR,
                    reference: "MPESA".into(),
                    request_id: request_id(),
                })
                .await
                .map(|r| r.into_inner().position)
        }
    });
    let paid: Vec<u64> = futures::future::join_all(payments)
        .await
        .into_iter()
        .map(|r| r.expect("every payment is accepted"))
        .collect();

    // Each order appends two events and each full payment two: nothing lost, nothing twice.
    let events = server.stored_events().await;
    let positions: Vec<u64> = events.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=events.len() as u64).collect::<Vec<_>>());
    assert_eq!(events.len() as u64, head + 4 * WRITERS as u64);
    assert_eq!(
        *paid.iter().max().expect("payments"),
        head + 4 * WRITERS as u64
    );

    let invoices = owner
        .billing()
        .list_invoices(pb::ListInvoicesRequest {
            account_id: abc.clone(),
            page_size: 500,
            min_position: server.log_head().await,
            ..Default::default()
        })
        .await
        .expect("the owner lists invoices")
        .into_inner();
    assert_eq!(invoices.invoices.len(), WRITERS);
    assert!(invoices
        .invoices
        .iter()
        .all(|i| i.status == pb::InvoiceStatus::Paid as i32));
    let mut numbers: Vec<u64> = invoices.invoices.iter().map(|i| i.number).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=WRITERS as u64).collect::<Vec<_>>());
    assert_eq!(invoices.balance_minor, 0);
}

on_both_backends!(fifty_concurrent_orders_and_payments_on_one_account_all_land
    => fifty_concurrent_orders_and_payments_on_one_account_all_land_on_sqlite,
       fifty_concurrent_orders_and_payments_on_one_account_all_land_on_postgres);
