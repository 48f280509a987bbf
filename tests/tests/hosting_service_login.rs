//! One-click login into cPanel over gRPC, against a WHM-compatible server on loopback: who may
//! open a service's panel, what the log records of it, and when the panel stays closed.

use onbehalf::scheduler::SchedulerConfig;
use onbehalf_proto::v1 as pb;
use onbehalf_tests::whm::{FakeWhm, SESSION_PATH, SESSION_SECRET, WHM_TOKEN};
use onbehalf_tests::{request_id, violated_fields, Person, TestServer, HOSTING_ANNUAL_MINOR};
use tonic::Code;

/// The provisioning system's scope.
const PROVISION: &str = "services:provision";

/// The walkthrough's first client account with an annual hosting plan, paid.
struct Abc {
    owner: Person,
    designer: Person,
    viewer: Person,
    account_id: String,
    service_id: String,
    invoice_id: String,
}

async fn abc(server: &TestServer, pay: bool) -> Abc {
    let catalogue = server.seed_catalogue().await;
    let owner = server.register("owner@abc.co.tz", "Asha Mwakyusa").await;
    let designer = server
        .register(onbehalf_tests::DESIGNER, "Web Designer")
        .await;
    let viewer = server
        .register("viewer@yourcompany.com", "Junior Designer")
        .await;
    let account = owner
        .create_account("ABC Company Ltd", "billing@abc.co.tz")
        .await;
    let account_id = account.account_id;
    owner.bring_in(&account_id, &designer, &[]).await;
    owner
        .bring_in(&account_id, &viewer, &[pb::Permission::Products])
        .await;
    let ordered = owner
        .hosting()
        .order_service(pb::OrderServiceRequest {
            account_id: account_id.clone(),
            product_id: catalogue.hosting_product_id,
            domain: "abc.co.tz".into(),
            billing_cycle: pb::BillingCycle::Annually as i32,
            request_id: request_id(),
        })
        .await
        .expect("the owner orders hosting")
        .into_inner();
    if pay {
        owner
            .billing()
            .pay_invoice(pb::PayInvoiceRequest {
                account_id: account_id.clone(),
                invoice_id: ordered.invoice_id.clone(),
                amount_minor: HOSTING_ANNUAL_MINOR,
                reference: "M-PESA QK71".into(),
                request_id: request_id(),
            })
            .await
            .expect("the owner pays the order");
    }
    Abc {
        owner,
        designer,
        viewer,
        account_id,
        service_id: ordered.service_id,
        invoice_id: ordered.invoice_id,
    }
}

fn activation(abc: &Abc, server: &str, panel_username: &str) -> pb::ActivateServiceRequest {
    pb::ActivateServiceRequest {
        account_id: abc.account_id.clone(),
        service_id: abc.service_id.clone(),
        server: server.into(),
        panel_username: panel_username.into(),
        request_id: request_id(),
    }
}

fn login(abc: &Abc) -> pb::CreateServiceLoginRequest {
    pb::CreateServiceLoginRequest {
        account_id: abc.account_id.clone(),
        service_id: abc.service_id.clone(),
    }
}

async fn activate(server: &TestServer, abc: &Abc) -> u64 {
    server
        .service("provisioning", &[PROVISION])
        .hosting()
        .activate_service(activation(abc, "cp1", "abccotz"))
        .await
        .expect("the provisioning system activates the service")
        .into_inner()
        .position
}

async fn with_whm<F, Fut>(whm: &FakeWhm, on_postgres: bool, scenario: F)
where
    F: FnOnce(TestServer) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let servers = whm.panel_servers("cp1");
    let configure = |config: &mut onbehalf::server::ServerConfig| {
        config.settings.panel_servers = servers;
    };
    let server = if on_postgres {
        match TestServer::postgres_with(configure).await {
            Some(server) => server,
            None => return,
        }
    } else {
        TestServer::sqlite_with(configure).await
    };
    scenario(server).await;
}

async fn owner_and_full_access_member_open_the_panel(server: TestServer, whm: &FakeWhm) {
    let abc = abc(&server, true).await;
    activate(&server, &abc).await;

    let opened = abc
        .owner
        .hosting()
        .create_service_login(login(&abc))
        .await
        .expect("the owner opens the panel")
        .into_inner();
    assert_eq!(opened.url, format!("https://localhost:2083{SESSION_PATH}"));
    assert_eq!(
        opened.expires_at,
        Some(prost_types::Timestamp {
            seconds: onbehalf_tests::whm::EXPIRES,
            nanos: 0
        })
    );
    let by_designer = abc
        .designer
        .hosting()
        .create_service_login(login(&abc))
        .await
        .expect("the full-access member opens the panel")
        .into_inner();
    assert_eq!(by_designer.url, opened.url);
    assert!(by_designer.position > opened.position);

    let requests = whm.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(
            request.path_and_query,
            "/json-api/create_user_session?api.version=1&user=abccotz&service=cpaneld"
        );
        assert_eq!(
            request.authorization.as_deref(),
            Some(format!("whm root:{WHM_TOKEN}").as_str())
        );
    }

    // The owner's audit view shows who opened the panel, relying on PRODUCT_SSO.
    let entries = abc
        .owner
        .audit()
        .list_audit_trail(pb::ListAuditTrailRequest {
            account_id: abc.account_id.clone(),
            action: "ServiceLoginOpened".into(),
            min_position: by_designer.position,
            ..Default::default()
        })
        .await
        .expect("the owner reads its trail")
        .into_inner()
        .entries;
    let who: Vec<(&str, &str, &str, i32, i32)> = entries
        .iter()
        .map(|e| {
            (
                e.actor_user_id.as_str(),
                e.actor_email.as_str(),
                e.on_behalf_of_account_id.as_str(),
                e.permission,
                e.actor_kind,
            )
        })
        .collect();
    assert_eq!(
        who,
        vec![
            (
                abc.owner.user_id.as_str(),
                "owner@abc.co.tz",
                abc.account_id.as_str(),
                pb::Permission::ProductSso as i32,
                pb::ActorKind::ActorUser as i32
            ),
            (
                abc.designer.user_id.as_str(),
                onbehalf_tests::DESIGNER,
                abc.account_id.as_str(),
                pb::Permission::ProductSso as i32,
                pb::ActorKind::ActorUser as i32
            ),
        ]
    );
    assert_eq!(
        entries.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![opened.position, by_designer.position]
    );

    // The log holds the opening, never the session.
    let events = server.stored_events().await;
    let opened_events: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == "ServiceLoginOpened")
        .collect();
    assert_eq!(opened_events.len(), 2);
    assert_eq!(
        opened_events[0].payload,
        serde_json::json!({"ServiceLoginOpened": {"service_id": abc.service_id, "server": "cp1"}})
    );
    for event in &events {
        let text = format!("{} {:?}", event.payload, event.metadata);
        assert!(!text.contains(SESSION_SECRET), "{text}");
        assert!(!text.contains("cpsess"), "{text}");
        assert!(!text.contains(WHM_TOKEN), "{text}");
    }
}

#[tokio::test]
async fn owner_and_full_access_member_open_the_panel_on_sqlite() {
    let whm = FakeWhm::start().await;
    with_whm(&whm, false, |server| {
        owner_and_full_access_member_open_the_panel(server, &whm)
    })
    .await;
}

#[tokio::test]
async fn owner_and_full_access_member_open_the_panel_on_postgres() {
    let whm = FakeWhm::start().await;
    with_whm(&whm, true, |server| {
        owner_and_full_access_member_open_the_panel(server, &whm)
    })
    .await;
}

async fn refused_logins_ask_no_panel_and_write_nothing(server: TestServer, whm: &FakeWhm) {
    let abc = abc(&server, true).await;
    let stranger = server.register("someone@elsewhere.co.tz", "Stranger").await;

    // Before activation, the service lives nowhere.
    let status = server
        .rejects(
            Code::FailedPrecondition,
            abc.owner.hosting().create_service_login(login(&abc)),
        )
        .await;
    assert_eq!(
        status.message(),
        "service is not activated on a panel server yet"
    );
    activate(&server, &abc).await;

    let status = server
        .rejects(
            Code::PermissionDenied,
            abc.viewer.hosting().create_service_login(login(&abc)),
        )
        .await;
    assert_eq!(status.message(), "caller lacks the PRODUCT_SSO permission");
    server
        .rejects(
            Code::PermissionDenied,
            stranger.hosting().create_service_login(login(&abc)),
        )
        .await;
    server
        .rejects(
            Code::PermissionDenied,
            server.admin().hosting().create_service_login(login(&abc)),
        )
        .await;
    server
        .rejects(
            Code::Unauthenticated,
            server
                .anonymous()
                .hosting()
                .create_service_login(login(&abc)),
        )
        .await;
    let unknown = pb::CreateServiceLoginRequest {
        service_id: uuid::Uuid::new_v4().to_string(),
        ..login(&abc)
    };
    server
        .rejects(
            Code::NotFound,
            abc.owner.hosting().create_service_login(unknown),
        )
        .await;
    let malformed = pb::CreateServiceLoginRequest {
        service_id: "abc".into(),
        ..login(&abc)
    };
    let status = server
        .rejects(
            Code::InvalidArgument,
            abc.owner.hosting().create_service_login(malformed),
        )
        .await;
    assert_eq!(violated_fields(&status), vec!["service_id".to_owned()]);

    assert_eq!(whm.requests(), vec![], "no refused call reached the panel");

    // A cancelled service stays closed.
    abc.owner
        .hosting()
        .cancel_service(pb::CancelServiceRequest {
            account_id: abc.account_id.clone(),
            service_id: abc.service_id.clone(),
            request_id: request_id(),
        })
        .await
        .expect("the owner cancels");
    let status = server
        .rejects(
            Code::FailedPrecondition,
            abc.designer.hosting().create_service_login(login(&abc)),
        )
        .await;
    assert_eq!(status.message(), "service is cancelled");
    assert_eq!(whm.requests(), vec![]);
}

#[tokio::test]
async fn refused_logins_ask_no_panel_and_write_nothing_on_sqlite() {
    let whm = FakeWhm::start().await;
    with_whm(&whm, false, |server| {
        refused_logins_ask_no_panel_and_write_nothing(server, &whm)
    })
    .await;
}

#[tokio::test]
async fn refused_logins_ask_no_panel_and_write_nothing_on_postgres() {
    let whm = FakeWhm::start().await;
    with_whm(&whm, true, |server| {
        refused_logins_ask_no_panel_and_write_nothing(server, &whm)
    })
    .await;
}

#[tokio::test]
async fn only_a_provisioning_service_places_a_service_and_only_on_a_configured_server() {
    let whm = FakeWhm::start().await;
    with_whm(&whm, false, |server| async move {
        let abc = abc(&server, true).await;
        let provisioning = server.service("provisioning", &[PROVISION]).hosting();

        server
            .rejects(
                Code::PermissionDenied,
                abc.owner
                    .hosting()
                    .activate_service(activation(&abc, "cp1", "abccotz")),
            )
            .await;
        server
            .rejects(
                Code::PermissionDenied,
                server
                    .service("billing", &["billing:write"])
                    .hosting()
                    .activate_service(activation(&abc, "cp1", "abccotz")),
            )
            .await;
        let status = server
            .rejects_field(
                "server",
                provisioning
                    .clone()
                    .activate_service(activation(&abc, "cp9", "abccotz")),
            )
            .await;
        assert_eq!(
            status.message(),
            "server: `cp9` is not a configured panel server"
        );
        for bad in ["", "1abc", "ABCcotz", "abc-cotz", "abccotzabccotzabc"] {
            server
                .rejects_field(
                    "panel_username",
                    provisioning
                        .clone()
                        .activate_service(activation(&abc, "cp1", bad)),
                )
                .await;
        }

        let first = activate(&server, &abc).await;
        // The same placement again changes nothing.
        let again = activate(&server, &abc).await;
        assert_eq!(again, first);
        let events = server.stored_events().await;
        let activated: Vec<_> = events
            .iter()
            .filter(|e| e.event_type == "ServiceActivated")
            .map(|e| e.payload.clone())
            .collect();
        assert_eq!(
            activated,
            vec![serde_json::json!({"ServiceActivated": {
                "service_id": abc.service_id,
                "server": "cp1",
                "panel_username": "abccotz",
            }})]
        );
    })
    .await;
}

#[tokio::test]
async fn a_panel_out_of_reach_is_unavailable_and_the_failure_is_recorded() {
    // A port nothing listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let dir = onbehalf::testing::TempDataDir::new();
    std::fs::write(dir.path().join("t"), WHM_TOKEN).expect("token");
    let servers = onbehalf::panel::PanelServers::parse(
        &format!("[servers.cp1]\nhostname = \"localhost\"\nport = {port}\ntoken_file = \"t\"\n"),
        dir.path(),
    )
    .expect("valid");
    let server = TestServer::sqlite_with(|config| config.settings.panel_servers = servers).await;
    let abc = abc(&server, true).await;
    activate(&server, &abc).await;

    let head = server.log_head().await;
    let status = abc
        .designer
        .hosting()
        .create_service_login(login(&abc))
        .await
        .expect_err("the panel is out of reach");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("control panel server `cp1`: the control panel cannot be reached"),
        "{status:?}"
    );

    let events = server.stored_events().await;
    let failed: Vec<_> = events.iter().filter(|e| e.position > head).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].event_type, "ServiceLoginFailed");
    assert_eq!(
        failed[0].payload,
        serde_json::json!({"ServiceLoginFailed": {
            "service_id": abc.service_id,
            "server": "cp1",
            "failure": "unreachable",
        }})
    );
    assert_eq!(
        failed[0].metadata.actor,
        onbehalf_events::Actor::User(abc.designer.user_id.parse().expect("a uuid"))
    );
}

#[tokio::test]
async fn a_suspended_service_cannot_be_logged_into() {
    let whm = FakeWhm::start().await;
    let servers = whm.panel_servers("cp1");
    let server = TestServer::sqlite_with(|config| {
        config.settings.panel_servers = servers;
        config.scheduler = Some(SchedulerConfig {
            remind_days_before: vec![],
            remind_days_after: vec![],
            suspend_after_days: Some(1),
            interval: std::time::Duration::from_millis(50),
            ..SchedulerConfig::default()
        });
    })
    .await;
    // The order is left unpaid past its grace day.
    let abc = abc(&server, false).await;
    activate(&server, &abc).await;
    server.clock.advance(chrono::Duration::days(2));
    let mut suspended = false;
    for _ in 0..200 {
        let events = server.stored_events().await;
        if events.iter().any(|e| e.event_type == "ServiceSuspended") {
            suspended = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(suspended, "the scheduler suspends the unpaid service");
    assert_eq!(
        service_status(&server, &abc).await,
        pb::ServiceStatus::ServiceSuspended
    );

    let status = server
        .rejects(
            Code::FailedPrecondition,
            abc.owner.hosting().create_service_login(login(&abc)),
        )
        .await;
    assert_eq!(status.message(), "service is suspended");
    assert_eq!(whm.requests(), vec![]);

    // Paid, it runs again and opens.
    abc.owner
        .billing()
        .pay_invoice(pb::PayInvoiceRequest {
            account_id: abc.account_id.clone(),
            invoice_id: abc.invoice_id.clone(),
            amount_minor: HOSTING_ANNUAL_MINOR,
            reference: "late".into(),
            request_id: request_id(),
        })
        .await
        .expect("the owner pays late");
    assert_eq!(
        service_status(&server, &abc).await,
        pb::ServiceStatus::ServiceActive
    );
    abc.owner
        .hosting()
        .create_service_login(login(&abc))
        .await
        .expect("the unsuspended service opens");
}

/// The status `ListServices` shows for ABC Company's one service, once the read models have
/// caught up with the log.
async fn service_status(server: &TestServer, abc: &Abc) -> pb::ServiceStatus {
    let listed = abc
        .owner
        .hosting()
        .list_services(pb::ListServicesRequest {
            account_id: abc.account_id.clone(),
            min_position: server.log_head().await,
            ..Default::default()
        })
        .await
        .expect("the owner lists services")
        .into_inner();
    let [service] = listed.services.as_slice() else {
        panic!("one service, not {:?}", listed.services);
    };
    pb::ServiceStatus::try_from(service.status).expect("a known status")
}
