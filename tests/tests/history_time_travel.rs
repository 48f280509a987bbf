//! Time travel over gRPC: a client account and a member's permissions as they were at a
//! position or a time, and the log itself as a filtered, resumable, followable stream.
//!
//! The story: on Monday 3 March ABC Company orders hosting, brings in the designer with
//! INVOICES and PRODUCTS, and the designer pays the invoice; ABC also invites its bookkeeper,
//! who never answers. On Monday 10 March ABC's owner revokes INVOICES. On 12 March support asks
//! what the designer could do on 5 and on 11 March.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use onbehalf_proto::v1 as pb;
use onbehalf_tests::{
    on_both_backends, request_id, start_time, violated_fields, Clients, Person, TestServer,
    DESIGNER, HOSTING_ANNUAL_MINOR,
};
use pb::check_permission_as_of_request::Point as CheckPoint;
use pb::get_account_as_of_request::Point as AccountPoint;
use tonic::Code;

const BOOKKEEPER: &str = "accounts@abc.co.tz";

/// What the story leaves behind, with the positions of its milestones.
struct Story {
    owner: Person,
    designer: Person,
    abc: String,
    bookkeeper_invitation: String,
    /// The designer's acceptance: from here it holds INVOICES and PRODUCTS.
    accepted_at: u64,
    /// The designer's payment of invoice #1, the account's last event of 3 March.
    paid_at: u64,
    /// The revocation of INVOICES on 10 March.
    revoked_at: u64,
}

fn at(month: u32, day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, month, day, hour, 0, 0)
        .single()
        .expect("a valid date")
}

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

fn permissions(list: &[pb::Permission]) -> Vec<i32> {
    list.iter().map(|p| *p as i32).collect()
}

async fn tell_the_story(server: &TestServer) -> Story {
    let catalogue = server.seed_catalogue().await;
    let owner = server.register("admin@abc.co.tz", "ABC Company").await;
    let designer = server.register(DESIGNER, "Web Designer").await;
    let abc = owner
        .create_account("ABC Company", "admin@abc.co.tz")
        .await
        .account_id;

    let ordered = owner
        .hosting()
        .order_service(pb::OrderServiceRequest {
            account_id: abc.clone(),
            product_id: catalogue.hosting_product_id.clone(),
            domain: "abc.co.tz".into(),
            billing_cycle: pb::BillingCycle::Annually as i32,
            request_id: request_id(),
        })
        .await
        .expect("the owner orders hosting")
        .into_inner();
    let accepted_at = owner
        .bring_in(
            &abc,
            &designer,
            &[pb::Permission::Invoices, pb::Permission::Products],
        )
        .await
        .position;
    let bookkeeper_invitation = owner
        .invite_with(&abc, BOOKKEEPER, &[pb::Permission::Emails])
        .await
        .invitation
        .invitation_id;
    let paid_at = designer
        .billing()
        .pay_invoice(pb::PayInvoiceRequest {
            account_id: abc.clone(),
            invoice_id: ordered.invoice_id.clone(),
            amount_minor: HOSTING_ANNUAL_MINOR,
            reference: "M-PESA QX7".into(),
            request_id: request_id(),
        })
        .await
        .expect("the designer pays invoice #1 on 3 March")
        .into_inner()
        .position;

    server.clock.advance(chrono::Duration::days(7));
    let revoked_at = owner
        .access()
        .revoke_permission(pb::RevokePermissionRequest {
            account_id: abc.clone(),
            user_id: designer.user_id.clone(),
            permissions: permissions(&[pb::Permission::Invoices]),
            request_id: "revoke-designer-invoices".into(),
        })
        .await
        .expect("the owner revokes INVOICES on 10 March")
        .into_inner()
        .position;
    server.clock.advance(chrono::Duration::days(2));

    Story {
        owner,
        designer,
        abc,
        bookkeeper_invitation,
        accepted_at,
        paid_at,
        revoked_at,
    }
}

async fn could_pay(story: &Story, caller: &Clients, point: CheckPoint) -> (bool, u64, i64) {
    let answer = caller
        .history()
        .check_permission_as_of(pb::CheckPermissionAsOfRequest {
            account_id: story.abc.clone(),
            user_id: story.designer.user_id.clone(),
            permission: pb::Permission::Invoices as i32,
            point: Some(point),
        })
        .await
        .expect("the owner may look back")
        .into_inner();
    let as_of = answer.as_of.expect("the answer says its moment").seconds;
    (answer.allowed, answer.position, as_of)
}

async fn the_designer_could_pay_invoices_on_5_march_but_not_on_11_march(server: &TestServer) {
    let story = tell_the_story(server).await;
    let owner = &story.owner.clients;

    assert_eq!(
        could_pay(&story, owner, CheckPoint::Time(ts(at(3, 5, 12)))).await,
        (true, story.paid_at, at(3, 5, 12).timestamp())
    );
    assert_eq!(
        could_pay(&story, owner, CheckPoint::Time(ts(at(3, 11, 12)))).await,
        (false, story.revoked_at, at(3, 11, 12).timestamp())
    );
    // The same by position: up to the event before the revocation, then at the revocation.
    assert_eq!(
        could_pay(&story, owner, CheckPoint::Position(story.revoked_at - 1)).await,
        (true, story.paid_at, start_time().timestamp())
    );
    assert_eq!(
        could_pay(&story, owner, CheckPoint::Position(story.revoked_at)).await,
        (false, story.revoked_at, at(3, 10, 9).timestamp())
    );
    // Before the acceptance the designer held nothing; before the account existed neither.
    assert_eq!(
        could_pay(&story, owner, CheckPoint::Position(story.accepted_at - 1)).await,
        (false, story.accepted_at - 1, start_time().timestamp())
    );
    assert_eq!(
        could_pay(&story, owner, CheckPoint::Time(ts(at(3, 1, 0)))).await,
        (false, 0, at(3, 1, 0).timestamp())
    );
    // A service with audit:read gets the same answers.
    let auditor = server.service("support-desk", &["audit:read"]);
    assert_eq!(
        could_pay(&story, &auditor, CheckPoint::Time(ts(at(3, 5, 12)))).await,
        (true, story.paid_at, at(3, 5, 12).timestamp())
    );
}

on_both_backends!(
    the_designer_could_pay_invoices_on_5_march_but_not_on_11_march
        => the_designer_could_pay_invoices_on_5_march_but_not_on_11_march_on_sqlite,
           the_designer_could_pay_invoices_on_5_march_but_not_on_11_march_on_postgres
);

async fn account_as_of(story: &Story, point: AccountPoint) -> pb::GetAccountAsOfResponse {
    story
        .owner
        .history()
        .get_account_as_of(pb::GetAccountAsOfRequest {
            account_id: story.abc.clone(),
            point: Some(point),
        })
        .await
        .expect("the owner may look back")
        .into_inner()
}

async fn the_account_as_of_a_point_lists_members_invitations_services_and_invoices_as_they_were(
    server: &TestServer,
) {
    let story = tell_the_story(server).await;
    let now_services = story
        .owner
        .hosting()
        .list_services(pb::ListServicesRequest {
            account_id: story.abc.clone(),
            min_position: story.revoked_at,
            ..Default::default()
        })
        .await
        .expect("the owner lists services")
        .into_inner()
        .services;
    let now_invoices = story
        .owner
        .billing()
        .list_invoices(pb::ListInvoicesRequest {
            account_id: story.abc.clone(),
            min_position: story.revoked_at,
            ..Default::default()
        })
        .await
        .expect("the owner lists invoices")
        .into_inner()
        .invoices;
    let now_invitations = story
        .owner
        .invitations()
        .list_invitations(pb::ListInvitationsRequest {
            account_id: story.abc.clone(),
            min_position: story.revoked_at,
            ..Default::default()
        })
        .await
        .expect("the owner lists invitations")
        .into_inner()
        .invitations;
    let bookkeeper_now = now_invitations
        .into_iter()
        .find(|i| i.invitation_id == story.bookkeeper_invitation)
        .expect("the bookkeeper's invitation is listed");
    assert_eq!(bookkeeper_now.state, pb::InvitationState::Expired as i32);
    let paid_invoice = now_invoices[0].clone();
    assert_eq!(paid_invoice.status, pb::InvoiceStatus::Paid as i32);

    let account = pb::Account {
        account_id: story.abc.clone(),
        name: "ABC Company".into(),
        email: "admin@abc.co.tz".into(),
        owner_user_id: story.owner.user_id.clone(),
    };
    let owner = pb::Member {
        user_id: story.owner.user_id.clone(),
        email: "admin@abc.co.tz".into(),
        role: pb::Role::Owner as i32,
        permissions: onbehalf_tests::full_access(),
        display_name: "ABC Company".into(),
    };
    let designer = |held: &[pb::Permission]| pb::Member {
        user_id: story.designer.user_id.clone(),
        email: DESIGNER.into(),
        role: pb::Role::Member as i32,
        permissions: permissions(held),
        display_name: "Web Designer".into(),
    };
    let pending_bookkeeper = pb::Invitation {
        state: pb::InvitationState::Pending as i32,
        ..bookkeeper_now.clone()
    };
    let unpaid_invoice = pb::Invoice {
        status: pb::InvoiceStatus::Unpaid as i32,
        paid_minor: 0,
        ..paid_invoice.clone()
    };

    // 5 March: the designer holds INVOICES and PRODUCTS, the bookkeeper's invitation is still
    // pending, and invoice #1 is paid.
    assert_eq!(
        account_as_of(&story, AccountPoint::Time(ts(at(3, 5, 12)))).await,
        pb::GetAccountAsOfResponse {
            account: Some(account.clone()),
            members: vec![
                owner.clone(),
                designer(&[pb::Permission::Products, pb::Permission::Invoices]),
            ],
            invitations: vec![pending_bookkeeper.clone()],
            services: now_services.clone(),
            invoices: vec![paid_invoice.clone()],
            balance_minor: 0,
            as_of: Some(ts(at(3, 5, 12))),
            position: story.paid_at,
        }
    );
    // Just before the payment (its two events), by position: the same, but invoice #1 is still
    // owed.
    assert_eq!(
        account_as_of(&story, AccountPoint::Position(story.paid_at - 2)).await,
        pb::GetAccountAsOfResponse {
            account: Some(account.clone()),
            members: vec![
                owner.clone(),
                designer(&[pb::Permission::Products, pb::Permission::Invoices]),
            ],
            invitations: vec![pending_bookkeeper.clone()],
            services: now_services.clone(),
            invoices: vec![unpaid_invoice],
            balance_minor: HOSTING_ANNUAL_MINOR,
            as_of: Some(ts(start_time())),
            position: story.paid_at - 2,
        }
    );
    // 11 March, after the revocation: the designer keeps PRODUCTS only, and the bookkeeper's
    // invitation expired on 10 March at 09:00.
    let after = pb::GetAccountAsOfResponse {
        account: Some(account.clone()),
        members: vec![owner.clone(), designer(&[pb::Permission::Products])],
        invitations: vec![bookkeeper_now.clone()],
        services: now_services.clone(),
        invoices: vec![paid_invoice.clone()],
        balance_minor: 0,
        as_of: Some(ts(at(3, 11, 12))),
        position: story.revoked_at,
    };
    assert_eq!(
        account_as_of(&story, AccountPoint::Time(ts(at(3, 11, 12)))).await,
        after
    );
    assert_eq!(
        account_as_of(&story, AccountPoint::Position(story.revoked_at)).await,
        pb::GetAccountAsOfResponse {
            as_of: Some(ts(at(3, 10, 9))),
            // At the revocation's own instant the invitation had just expired.
            ..after.clone()
        }
    );
}

on_both_backends!(
    the_account_as_of_a_point_lists_members_invitations_services_and_invoices_as_they_were
        => the_account_as_of_a_point_lists_members_invitations_services_and_invoices_as_they_were_on_sqlite,
           the_account_as_of_a_point_lists_members_invitations_services_and_invoices_as_they_were_on_postgres
);

async fn looking_back_is_for_the_owner_and_auditors_and_only_at_points_the_log_has_reached(
    server: &TestServer,
) {
    let story = tell_the_story(server).await;
    let head = server.log_head().await;
    let ask = |point: Option<AccountPoint>| pb::GetAccountAsOfRequest {
        account_id: story.abc.clone(),
        point,
    };

    // Neither point, position 0, a position beyond the head and a time after the clock.
    let status = server
        .rejects_field("point", story.owner.history().get_account_as_of(ask(None)))
        .await;
    assert_eq!(
        status.message(),
        "point: is required: give a position or a time"
    );
    server
        .rejects_field(
            "position",
            story
                .owner
                .history()
                .get_account_as_of(ask(Some(AccountPoint::Position(0)))),
        )
        .await;
    let status = server
        .rejects_field(
            "position",
            story
                .owner
                .history()
                .get_account_as_of(ask(Some(AccountPoint::Position(head + 1)))),
        )
        .await;
    assert_eq!(
        status.message(),
        format!("position: is beyond the head of the log, position {head}")
    );
    let status = server
        .rejects_field(
            "time",
            story
                .owner
                .history()
                .get_account_as_of(ask(Some(AccountPoint::Time(ts(at(3, 12, 10)))))),
        )
        .await;
    assert_eq!(
        status.message(),
        "time: is later than now (2025-03-12T09:00:00Z)"
    );
    // A second before year 1 is no timestamp protobuf can carry back.
    let before_year_one = prost_types::Timestamp {
        seconds: -62_135_596_801,
        nanos: 0,
    };
    let status = server
        .rejects_field(
            "time",
            story
                .owner
                .history()
                .get_account_as_of(ask(Some(AccountPoint::Time(before_year_one)))),
        )
        .await;
    assert_eq!(
        status.message(),
        "time: is not a valid timestamp (years 1 to 9999)"
    );
    server
        .rejects_field(
            "point",
            story
                .owner
                .history()
                .check_permission_as_of(pb::CheckPermissionAsOfRequest {
                    account_id: story.abc.clone(),
                    user_id: story.designer.user_id.clone(),
                    permission: pb::Permission::Invoices as i32,
                    point: None,
                }),
        )
        .await;

    // Before the account existed there is nothing to show.
    let status = server
        .rejects(
            Code::NotFound,
            story
                .owner
                .history()
                .get_account_as_of(ask(Some(AccountPoint::Position(1)))),
        )
        .await;
    assert_eq!(status.message(), "account did not exist yet at that point");

    // A member, even one with full access then, and a service without audit:read may not look.
    for caller in [
        story.designer.clients.clone(),
        server.service("billing", &["billing:write", "events:read"]),
    ] {
        server
            .rejects(
                Code::PermissionDenied,
                caller
                    .history()
                    .get_account_as_of(ask(Some(AccountPoint::Position(head)))),
            )
            .await;
        server
            .rejects(
                Code::PermissionDenied,
                caller
                    .history()
                    .check_permission_as_of(pb::CheckPermissionAsOfRequest {
                        account_id: story.abc.clone(),
                        user_id: story.designer.user_id.clone(),
                        permission: pb::Permission::Invoices as i32,
                        point: Some(CheckPoint::Position(head)),
                    }),
            )
            .await;
    }
    server
        .rejects(
            Code::NotFound,
            story
                .owner
                .history()
                .get_account_as_of(pb::GetAccountAsOfRequest {
                    account_id: uuid::Uuid::new_v4().to_string(),
                    point: Some(AccountPoint::Position(head)),
                }),
        )
        .await;
}

on_both_backends!(
    looking_back_is_for_the_owner_and_auditors_and_only_at_points_the_log_has_reached
        => looking_back_is_for_the_owner_and_auditors_and_only_at_points_the_log_has_reached_on_sqlite,
           looking_back_is_for_the_owner_and_auditors_and_only_at_points_the_log_has_reached_on_postgres
);

/// Reads a stream to its end: (position, event type) of every envelope.
async fn collect(server: &TestServer, request: pb::StreamEventsRequest) -> Vec<(u64, String)> {
    let mut stream = server
        .service("exporter", &["events:read"])
        .history()
        .stream_events(request)
        .await
        .expect("a service with events:read may stream")
        .into_inner();
    let mut seen = Vec::new();
    while let Some(message) = stream.message().await.expect("the stream does not fail") {
        let event = message.event.expect("every message carries an event");
        seen.push((event.position, event.event_type));
    }
    seen
}

fn types(seen: &[(u64, String)]) -> Vec<&str> {
    seen.iter().map(|(_, t)| t.as_str()).collect()
}

async fn the_event_stream_filters_resumes_and_follows_the_log(server: &TestServer) {
    let story = tell_the_story(server).await;
    let head = server.log_head().await;

    let abc = collect(
        server,
        pb::StreamEventsRequest {
            account_id: story.abc.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        types(&abc),
        [
            "AccountCreated",
            "ServiceOrdered",
            "InvoiceIssued",
            "UserInvited",
            "InvitationAccepted",
            "UserInvited",
            "PaymentReceived",
            "InvoicePaid",
            "PermissionsRevoked",
        ]
    );
    assert!(abc.windows(2).all(|w| w[0].0 < w[1].0), "{abc:?}");
    assert_eq!(abc.last().map(|(p, _)| *p), Some(story.revoked_at));

    let by_designer = collect(
        server,
        pb::StreamEventsRequest {
            actor_user_id: story.designer.user_id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        types(&by_designer),
        ["InvitationAccepted", "PaymentReceived", "InvoicePaid"]
    );
    let users = collect(
        server,
        pb::StreamEventsRequest {
            stream_type: "user".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(types(&users), ["UserRegistered", "UserRegistered"]);
    let invitations = collect(
        server,
        pb::StreamEventsRequest {
            account_id: story.abc.clone(),
            event_types: vec!["UserInvited".into(), "InvitationAccepted".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        types(&invitations),
        ["UserInvited", "InvitationAccepted", "UserInvited"]
    );

    // Resuming: `from_position` is the first position sent, so a client passes the last
    // position it saw plus one; 0 and 1 both start at the beginning.
    let everything = collect(server, pb::StreamEventsRequest::default()).await;
    assert_eq!(everything.len() as u64, head);
    assert_eq!(
        everything.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>()
    );
    let from_one = collect(
        server,
        pb::StreamEventsRequest {
            from_position: 1,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(from_one, everything);
    let resumed = collect(
        server,
        pb::StreamEventsRequest {
            account_id: story.abc.clone(),
            from_position: abc[4].0 + 1,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(resumed, abc[5..].to_vec());
    let window = collect(
        server,
        pb::StreamEventsRequest {
            account_id: story.abc.clone(),
            from_position: abc[1].0,
            to_position: abc[3].0,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(window, abc[1..=3].to_vec());

    // The revocation's envelope, field by field.
    let mut stream = server
        .service("exporter", &["events:read"])
        .history()
        .stream_events(pb::StreamEventsRequest {
            event_types: vec!["PermissionsRevoked".into()],
            ..Default::default()
        })
        .await
        .expect("a service with events:read may stream")
        .into_inner();
    let revoked = stream
        .message()
        .await
        .expect("the stream does not fail")
        .and_then(|m| m.event)
        .expect("the revocation is streamed");
    assert_eq!(stream.message().await.expect("the stream ends"), None);
    let payload: serde_json::Value =
        serde_json::from_str(&revoked.payload_json).expect("the payload is JSON");
    assert_eq!(
        payload,
        serde_json::json!({"PermissionsRevoked": {
            "user_id": story.designer.user_id,
            "revoked": ["INVOICES"],
            "permissions": ["PRODUCTS"],
        }})
    );
    assert_eq!(
        (
            revoked.position,
            revoked.stream_id.as_str(),
            revoked.stream_type.as_str(),
            revoked.version,
            revoked.occurred_at,
            revoked.event_version.as_str(),
            revoked.actor_kind,
            revoked.actor_user_id.as_str(),
            revoked.actor_name.as_str(),
            revoked.on_behalf_of_account_id.as_str(),
            revoked.permission,
            revoked.request_id.as_str(),
        ),
        (
            story.revoked_at,
            format!("account-{}", story.abc).as_str(),
            "client_account",
            9,
            Some(ts(at(3, 10, 9))),
            "1",
            pb::ActorKind::ActorUser as i32,
            story.owner.user_id.as_str(),
            "",
            story.abc.as_str(),
            0,
            "revoke-designer-invoices",
        )
    );
    assert!(uuid::Uuid::parse_str(&revoked.event_id).is_ok());
    assert!(uuid::Uuid::parse_str(&revoked.correlation_id).is_ok());

    // Following: the stream stays open at the head and delivers what is appended after it
    // started.
    let mut following = server
        .service("exporter", &["events:read"])
        .history()
        .stream_events(pb::StreamEventsRequest {
            account_id: story.abc.clone(),
            from_position: head + 1,
            follow: true,
            ..Default::default()
        })
        .await
        .expect("a service with events:read may follow")
        .into_inner();
    let nothing_yet = tokio::time::timeout(Duration::from_millis(300), following.message()).await;
    assert!(nothing_yet.is_err(), "nothing is sent before an append");
    let granted_at = story
        .owner
        .access()
        .grant_permission(pb::GrantPermissionRequest {
            account_id: story.abc.clone(),
            user_id: story.designer.user_id.clone(),
            permissions: permissions(&[pb::Permission::Invoices]),
            request_id: request_id(),
        })
        .await
        .expect("the owner grants INVOICES again")
        .into_inner()
        .position;
    let followed = tokio::time::timeout(Duration::from_secs(5), following.message())
        .await
        .expect("the append is delivered within 5 s")
        .expect("the stream does not fail")
        .and_then(|m| m.event)
        .expect("an event");
    assert_eq!(
        (followed.position, followed.event_type.as_str()),
        (granted_at, "PermissionsGranted")
    );
}

on_both_backends!(
    the_event_stream_filters_resumes_and_follows_the_log
        => the_event_stream_filters_resumes_and_follows_the_log_on_sqlite,
           the_event_stream_filters_resumes_and_follows_the_log_on_postgres
);

async fn the_event_stream_is_for_services_with_events_read_and_refuses_bad_filters(
    server: &TestServer,
) {
    let story = tell_the_story(server).await;
    for caller in [
        story.owner.clients.clone(),
        server.service("support-desk", &["audit:read"]),
    ] {
        server
            .rejects(
                Code::PermissionDenied,
                caller
                    .history()
                    .stream_events(pb::StreamEventsRequest::default()),
            )
            .await;
    }
    let exporter = server.service("exporter", &["events:read"]);
    for (field, request) in [
        (
            "stream_type",
            pb::StreamEventsRequest {
                stream_type: "invoice".into(),
                ..Default::default()
            },
        ),
        (
            "account_id",
            pb::StreamEventsRequest {
                account_id: "ABC".into(),
                ..Default::default()
            },
        ),
        (
            "event_types",
            pb::StreamEventsRequest {
                event_types: vec!["Permissions Revoked".into()],
                ..Default::default()
            },
        ),
        (
            "to_position",
            pb::StreamEventsRequest {
                from_position: 5,
                to_position: 4,
                ..Default::default()
            },
        ),
    ] {
        let status = server
            .rejects_field(field, exporter.history().stream_events(request))
            .await;
        assert_eq!(violated_fields(&status), [field]);
    }
}

on_both_backends!(
    the_event_stream_is_for_services_with_events_read_and_refuses_bad_filters
        => the_event_stream_is_for_services_with_events_read_and_refuses_bad_filters_on_sqlite,
           the_event_stream_is_for_services_with_events_read_and_refuses_bad_filters_on_postgres
);
