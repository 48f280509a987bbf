//! A domain name is registered to one service at a time across the whole provider, whatever
//! the case or trailing dot it is written with; cancelling the registration frees the name.

use onbehalf_proto::v1 as pb;
use onbehalf_tests::{on_both_backends, request_id, TestServer};
use tonic::Code;

fn order(account_id: &str, product_id: &str, domain: &str) -> pb::OrderServiceRequest {
    pb::OrderServiceRequest {
        account_id: account_id.into(),
        product_id: product_id.into(),
        domain: domain.into(),
        billing_cycle: pb::BillingCycle::Annually as i32,
        request_id: request_id(),
    }
}

async fn a_domain_is_registered_once_until_its_service_is_cancelled(server: &TestServer) {
    let catalogue = server.seed_catalogue().await;
    let star = server
        .register("support@starlogistics.co.tz", "Star Logistics")
        .await;
    let star_account = star
        .create_account("Star Logistics", "support@starlogistics.co.tz")
        .await
        .account_id;
    let other = server
        .register("info@newlife.or.tz", "New Life Church")
        .await;
    let other_account = other
        .create_account("New Life Church", "info@newlife.or.tz")
        .await
        .account_id;

    let first = star
        .hosting()
        .order_service(order(
            &star_account,
            &catalogue.domain_product_id,
            "starlogistics.co.tz",
        ))
        .await
        .expect("the first registration is accepted")
        .into_inner();
    // The hosting plan for the same name is not a registration and stays possible.
    star.hosting()
        .order_service(pb::OrderServiceRequest {
            billing_cycle: pb::BillingCycle::Monthly as i32,
            ..order(
                &star_account,
                &catalogue.hosting_product_id,
                "starlogistics.co.tz",
            )
        })
        .await
        .expect("hosting for a registered domain is accepted");

    for (who, account, written) in [
        (&star, &star_account, "StarLogistics.co.tz"),
        (&other, &other_account, "starlogistics.co.tz."),
    ] {
        let head = server.log_head().await;
        let status = who
            .hosting()
            .order_service(order(account, &catalogue.domain_product_id, written))
            .await
            .expect_err("a second registration is refused");
        assert_eq!(status.code(), Code::AlreadyExists, "{written}");
        assert_eq!(
            status.message(),
            "the domain `starlogistics.co.tz` is already registered"
        );
        assert_eq!(server.log_head().await, head, "the refusal wrote nothing");
    }

    star.hosting()
        .cancel_service(pb::CancelServiceRequest {
            account_id: star_account.clone(),
            service_id: first.service_id.clone(),
            request_id: request_id(),
        })
        .await
        .expect("the owner cancels the registration");
    other
        .hosting()
        .order_service(order(
            &other_account,
            &catalogue.domain_product_id,
            "starlogistics.co.tz",
        ))
        .await
        .expect("a cancelled domain can be registered again");
}

on_both_backends!(a_domain_is_registered_once_until_its_service_is_cancelled
    => a_domain_is_registered_once_until_its_service_is_cancelled_on_sqlite,
       a_domain_is_registered_once_until_its_service_is_cancelled_on_postgres);
