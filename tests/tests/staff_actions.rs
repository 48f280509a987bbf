//! Provider staff act on any client account, only with a stated reason, and the account's
//! owner sees who acted, why and on what in its audit trail.

use onbehalf_events::Actor;
use onbehalf_proto::v1 as pb;
use onbehalf_tests::whm::{FakeWhm, SESSION_PATH};
use onbehalf_tests::{on_both_backends, request_id, violated_fields, TestServer};
use tonic::Code;

const REASON: &str = "the client asked by phone to correct its billing email";

fn profile(account_id: &str, n: u32) -> pb::UpdateAccountProfileRequest {
    pb::UpdateAccountProfileRequest {
        account_id: account_id.into(),
        name: "ABC Company Ltd".into(),
        email: format!("accounts{n}@abc.co.tz"),
        request_id: request_id(),
    }
}

async fn staff_act_with_a_reason_and_the_owner_sees_it(server: &TestServer) {
    let owner = server.register("owner@abc.co.tz", "Asha Mwakyusa").await;
    let designer = server
        .register(onbehalf_tests::DESIGNER, "Web Designer")
        .await;
    let account = owner
        .create_account("ABC Company Ltd", "billing@abc.co.tz")
        .await;
    let account_id = account.account_id.clone();
    owner.bring_in(&account_id, &designer, &[]).await;

    // Without a reason, or with a blank one, staff are refused before anything is decided.
    let status = server
        .rejects(
            Code::InvalidArgument,
            server
                .staff("amina", None)
                .accounts()
                .update_account_profile(profile(&account_id, 1)),
        )
        .await;
    assert_eq!(
        violated_fields(&status),
        vec!["x-onbehalf-reason".to_owned()]
    );
    assert_eq!(
        status.message(),
        "x-onbehalf-reason: provider staff must state a reason for acting on an account"
    );
    server
        .rejects_field(
            "x-onbehalf-reason",
            server
                .staff("amina", Some("   "))
                .accounts()
                .update_account_profile(profile(&account_id, 1)),
        )
        .await;
    // A `staff:` subject without the staff role is no staff token.
    server
        .rejects(
            Code::Unauthenticated,
            server
                .with_token(&server.token("staff:amina", None))
                .accounts()
                .update_account_profile(profile(&account_id, 1)),
        )
        .await;

    let staff = server.staff("amina", Some(REASON));
    let done = staff
        .accounts()
        .update_account_profile(profile(&account_id, 2))
        .await
        .expect("staff with a reason act on any account")
        .into_inner();
    assert_eq!(
        done.account.expect("the account").email,
        "accounts2@abc.co.tz"
    );

    // Owner-only management and reads are not theirs.
    server
        .rejects(
            Code::PermissionDenied,
            staff.invitations().invite_user(pb::InviteUserRequest {
                account_id: account_id.clone(),
                email: "intruder@elsewhere.co.tz".into(),
                permissions: vec![],
                full_access: true,
                request_id: request_id(),
            }),
        )
        .await;
    server
        .rejects(
            Code::PermissionDenied,
            staff.accounts().get_account(pb::GetAccountRequest {
                account_id: account_id.clone(),
                min_position: 0,
            }),
        )
        .await;

    // The envelope says who, why and for whom.
    let events = server.stored_events().await;
    let event = events
        .iter()
        .find(|e| e.position == done.position)
        .expect("the staff member's event");
    assert_eq!(event.event_type, "AccountProfileUpdated");
    assert_eq!(event.metadata.actor, Actor::Staff("amina".into()));
    assert_eq!(event.metadata.reason.as_deref(), Some(REASON));
    assert_eq!(
        event.metadata.on_behalf_of.map(|a| a.to_string()),
        Some(account_id.clone())
    );
    assert_eq!(event.metadata.permission, None);

    // A reason sent by anyone else is not recorded.
    let mut by_owner = tonic::Request::new(profile(&account_id, 3));
    by_owner.metadata_mut().insert(
        onbehalf::grpc::REASON_HEADER,
        "because I say so".parse().expect("ascii"),
    );
    let owners = owner
        .accounts()
        .update_account_profile(by_owner)
        .await
        .expect("the owner updates its profile")
        .into_inner();

    // The owner's audit view shows the staff member, the reason and the account.
    let entries = owner
        .audit()
        .list_audit_trail(pb::ListAuditTrailRequest {
            account_id: account_id.clone(),
            action: "AccountProfileUpdated".into(),
            min_position: owners.position,
            ..Default::default()
        })
        .await
        .expect("the owner reads its trail")
        .into_inner()
        .entries;
    let seen: Vec<(i32, &str, &str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e.actor_kind,
                e.actor_name.as_str(),
                e.actor_user_id.as_str(),
                e.reason.as_str(),
                e.on_behalf_of_account_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                pb::ActorKind::ActorStaff as i32,
                "amina",
                "",
                REASON,
                account_id.as_str()
            ),
            (
                pb::ActorKind::ActorUser as i32,
                "",
                owner.user_id.as_str(),
                "",
                account_id.as_str()
            ),
        ]
    );

    // A member reads only its own actions there, so not the staff member's.
    let designers = designer
        .audit()
        .list_audit_trail(pb::ListAuditTrailRequest {
            account_id: account_id.clone(),
            action: "AccountProfileUpdated".into(),
            min_position: owners.position,
            ..Default::default()
        })
        .await
        .expect("the member reads its own actions")
        .into_inner()
        .entries;
    assert_eq!(designers, vec![]);
}

on_both_backends!(staff_act_with_a_reason_and_the_owner_sees_it
    => staff_act_with_a_reason_and_the_owner_sees_it_on_sqlite,
       staff_act_with_a_reason_and_the_owner_sees_it_on_postgres);

#[tokio::test]
async fn staff_open_a_clients_panel_with_a_reason_on_record() {
    let whm = FakeWhm::start().await;
    let servers = whm.panel_servers("cp1");
    let server = TestServer::sqlite_with(|config| config.settings.panel_servers = servers).await;
    let catalogue = server.seed_catalogue().await;
    let owner = server.register("owner@abc.co.tz", "Asha Mwakyusa").await;
    let account = owner
        .create_account("ABC Company Ltd", "billing@abc.co.tz")
        .await;
    let ordered = owner
        .hosting()
        .order_service(pb::OrderServiceRequest {
            account_id: account.account_id.clone(),
            product_id: catalogue.hosting_product_id,
            domain: "abc.co.tz".into(),
            billing_cycle: pb::BillingCycle::Annually as i32,
            request_id: request_id(),
        })
        .await
        .expect("the owner orders hosting")
        .into_inner();
    server
        .service("provisioning", &["services:provision"])
        .hosting()
        .activate_service(pb::ActivateServiceRequest {
            account_id: account.account_id.clone(),
            service_id: ordered.service_id.clone(),
            server: "cp1".into(),
            panel_username: "abccotz".into(),
            request_id: request_id(),
        })
        .await
        .expect("activated");
    let login = pb::CreateServiceLoginRequest {
        account_id: account.account_id.clone(),
        service_id: ordered.service_id.clone(),
    };

    server
        .rejects_field(
            "x-onbehalf-reason",
            server
                .staff("juma", None)
                .hosting()
                .create_service_login(login.clone()),
        )
        .await;
    assert_eq!(whm.requests(), vec![]);

    let reason = "site down, checking error logs";
    let opened = server
        .staff("juma", Some(reason))
        .hosting()
        .create_service_login(login)
        .await
        .expect("staff open the client's panel")
        .into_inner();
    assert_eq!(opened.url, format!("https://localhost:2083{SESSION_PATH}"));

    let entries = owner
        .audit()
        .list_audit_trail(pb::ListAuditTrailRequest {
            account_id: account.account_id.clone(),
            action: "ServiceLoginOpened".into(),
            min_position: opened.position,
            ..Default::default()
        })
        .await
        .expect("the owner reads its trail")
        .into_inner()
        .entries;
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (
            entries[0].actor_kind,
            entries[0].actor_name.as_str(),
            entries[0].reason.as_str(),
            entries[0].on_behalf_of_account_id.as_str(),
            entries[0].position,
        ),
        (
            pb::ActorKind::ActorStaff as i32,
            "juma",
            reason,
            account.account_id.as_str(),
            opened.position,
        )
    );
}
