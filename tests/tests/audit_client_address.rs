//! The end user's address a front end passes in `x-client-address` is recorded when it is one
//! IP address, and refused otherwise, before anything is written.

use onbehalf_proto::v1 as pb;
use onbehalf_tests::{on_both_backends, request_id, violated_fields, TestServer};
use tonic::Code;

fn create(name: &str, address: &str) -> tonic::Request<pb::CreateAccountRequest> {
    let mut request = tonic::Request::new(pb::CreateAccountRequest {
        name: name.into(),
        email: "admin@abc.co.tz".into(),
        request_id: request_id(),
    });
    request
        .metadata_mut()
        .insert("x-client-address", address.parse().expect("ascii"));
    request
}

async fn the_client_address_is_recorded_when_it_is_an_ip_and_refused_otherwise(
    server: &TestServer,
) {
    let owner = server.register("admin@abc.co.tz", "ABC Company").await;
    let head = server.log_head().await;
    for bad in [
        "not an ip; DROP TABLE events",
        "1.2.3.4, 5.6.7.8",
        "example.com",
    ] {
        let status = owner
            .accounts()
            .create_account(create("ABC Company", bad))
            .await
            .expect_err(bad);
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        assert_eq!(
            violated_fields(&status),
            vec!["x-client-address".to_owned()],
            "{bad}"
        );
    }
    assert_eq!(server.log_head().await, head, "refused calls wrote nothing");

    let created = owner
        .accounts()
        .create_account(create("ABC Company", "[2001:db8::7]:443"))
        .await
        .expect("an IPv6 address with a port is accepted")
        .into_inner();
    let entries = server.audit_trail(created.position).await;
    let entry = entries
        .iter()
        .find(|e| e.position == created.position)
        .expect("audited");
    assert_eq!(entry.client_address, "2001:db8::7");
}

on_both_backends!(the_client_address_is_recorded_when_it_is_an_ip_and_refused_otherwise
    => the_client_address_is_recorded_when_it_is_an_ip_and_refused_otherwise_on_sqlite,
       the_client_address_is_recorded_when_it_is_an_ip_and_refused_otherwise_on_postgres);
