//! A command racing the revocation of the permission it needs either committed before the
//! revocation or is refused; none is accepted after it.

use onbehalf_proto::v1 as pb;
use onbehalf_tests::{on_both_backends, request_id, TestServer, DESIGNER};
use tonic::Code;

async fn orders_racing_a_revocation_land_before_it_or_are_refused(server: &TestServer) {
    let catalogue = server.seed_catalogue().await;
    let owner = server.register("admin@abc.co.tz", "ABC Company").await;
    let abc = owner
        .create_account("ABC Company", "admin@abc.co.tz")
        .await
        .account_id;
    let designer = server.register(DESIGNER, "Web Designer").await;
    owner.bring_in(&abc, &designer, &[]).await;

    let orders = (0..30).map(|i| {
        let mut hosting = designer.hosting();
        let request = pb::OrderServiceRequest {
            account_id: abc.clone(),
            product_id: catalogue.hosting_product_id.clone(),
            domain: format!("site{i}.abc.co.tz"),
            billing_cycle: pb::BillingCycle::Monthly as i32,
            request_id: request_id(),
        };
        async move {
            hosting
                .order_service(request)
                .await
                .map(|r| r.into_inner().position)
        }
    });
    let mut access = owner.access();
    let revoke = access.revoke_permission(pb::RevokePermissionRequest {
        account_id: abc.clone(),
        user_id: designer.user_id.clone(),
        permissions: vec![pb::Permission::Orders as i32],
        request_id: request_id(),
    });
    let (outcomes, revoked) = tokio::join!(futures::future::join_all(orders), revoke);
    let revoked_at = revoked
        .expect("the owner revokes ORDERS")
        .into_inner()
        .position;

    let mut accepted = 0;
    for outcome in outcomes {
        match outcome {
            Ok(position) => {
                accepted += 1;
                assert!(
                    position < revoked_at,
                    "an order at {position} after the revocation at {revoked_at}"
                );
            }
            Err(status) => assert_eq!(status.code(), Code::PermissionDenied, "{status:?}"),
        }
    }
    // The log agrees: every order the designer placed precedes the revocation.
    let events = server.stored_events().await;
    let ordered: Vec<u64> = events
        .iter()
        .filter(|e| e.event_type == "ServiceOrdered")
        .map(|e| e.position)
        .collect();
    assert_eq!(ordered.len(), accepted);
    assert!(ordered.iter().all(|p| *p < revoked_at));
}

on_both_backends!(orders_racing_a_revocation_land_before_it_or_are_refused
    => orders_racing_a_revocation_land_before_it_or_are_refused_on_sqlite,
       orders_racing_a_revocation_land_before_it_or_are_refused_on_postgres);
