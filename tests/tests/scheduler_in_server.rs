//! `serve --scheduler`: the scheduler running inside the server issues renewals on its own.

use std::time::Duration;

use onbehalf::scheduler::SchedulerConfig;
use onbehalf_proto::v1 as pb;
use onbehalf_tests::{date, request_id, TestServer};

#[tokio::test]
async fn a_server_with_the_scheduler_issues_a_renewal_when_its_clock_reaches_the_lead_days() {
    let server = TestServer::sqlite_with(|config| {
        config.scheduler = Some(SchedulerConfig {
            interval: Duration::from_millis(20),
            ..SchedulerConfig::default()
        });
    })
    .await;
    let catalogue = server.seed_catalogue().await;
    let owner = server
        .register("info@greenfarm.co.tz", "Green Farm Ltd")
        .await;
    let account = owner
        .create_account("Green Farm Ltd", "info@greenfarm.co.tz")
        .await;
    let ordered = owner
        .hosting()
        .order_service(pb::OrderServiceRequest {
            account_id: account.account_id.clone(),
            product_id: catalogue.hosting_product_id.clone(),
            domain: "greenfarm.co.tz".into(),
            billing_cycle: pb::BillingCycle::Monthly as i32,
            request_id: request_id(),
        })
        .await
        .expect("the owner orders monthly hosting")
        .into_inner();
    let invoices = |min_position| {
        let mut billing = owner.billing();
        let account_id = account.account_id.clone();
        async move {
            billing
                .list_invoices(pb::ListInvoicesRequest {
                    account_id,
                    page_size: 100,
                    min_position,
                    ..Default::default()
                })
                .await
                .expect("the owner lists invoices")
                .into_inner()
                .invoices
        }
    };

    // Ordered 2025-03-03, due again 2025-04-03: fifteen days before, nothing is issued.
    server.clock.advance(chrono::Duration::days(16));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(invoices(server.log_head().await).await.len(), 1);

    server.clock.advance(chrono::Duration::days(1));
    let mut renewal = None;
    for _ in 0..100 {
        let found = invoices(server.log_head().await).await;
        if found.len() > 1 {
            renewal = Some(found[1].clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let renewal = renewal.expect("the scheduler issued the renewal");
    assert_eq!(renewal.service_id, ordered.service_id);
    assert_eq!(renewal.due_date, Some(date(2025, 4, 3)));
    assert_eq!(renewal.issued_on, Some(date(2025, 3, 20)));
    assert_eq!(
        renewal
            .lines
            .iter()
            .map(|l| l.description.clone())
            .collect::<Vec<_>>(),
        ["Starter Hosting - greenfarm.co.tz (2025-04-03 - 2025-05-02)"]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(invoices(server.log_head().await).await.len(), 2);
}
