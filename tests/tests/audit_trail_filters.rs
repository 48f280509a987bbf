//! The audit trail end to end: filters by actor, account, action and time, both orders, stable
//! position cursors, who may read what, exact JSON Lines and CSV exports, and verification of
//! the log's hash chain, on both backends.

use chrono::{DateTime, Duration, Utc};
use onbehalf_proto::v1 as pb;
use onbehalf_tests::{on_both_backends, request_id, start_time, Person, TestServer, DESIGNER};
use pb::account_service_client::AccountServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::Code;

// ---------------------------------------------------------------------------------------------
// The story

/// Two client accounts that brought the designer in with full access, and a clerk of ABC
/// holding `PROFILE` only.
struct Story {
    designer: Person,
    abc_owner: Person,
    clerk: Person,
    abc: String,
    star: String,
    /// Positions of the designer's acceptances (ABC, Star) and profile updates (ABC, Star).
    designer_accepted: [u64; 2],
    designer_updated: [u64; 2],
    /// Position of the clerk's acceptance and of its profile update of ABC.
    clerk_accepted: u64,
    clerk_updated: u64,
    /// When the designer's and the clerk's updates were committed.
    designer_updated_at: DateTime<Utc>,
    clerk_updated_at: DateTime<Utc>,
    /// The position of the story's last event.
    head: u64,
}

async fn update_profile(person: &Person, account_id: &str, name: &str, email: &str) -> u64 {
    person
        .accounts()
        .update_account_profile(pb::UpdateAccountProfileRequest {
            account_id: account_id.into(),
            name: name.into(),
            email: email.into(),
            request_id: request_id(),
        })
        .await
        .unwrap_or_else(|s| panic!("updating {name} failed: {s:?}"))
        .into_inner()
        .position
}

/// The designer, two clients and a clerk; the clock moves an hour before the designer's
/// updates and another hour before the clerk's.
async fn story(server: &TestServer) -> Story {
    let designer = server.register(DESIGNER, "Web Designer").await;
    let abc_owner = server.register("admin@abc.co.tz", "ABC Company").await;
    let star_owner = server
        .register("support@starlogistics.co.tz", "Star Logistics")
        .await;
    let clerk = server.register("clerk@abc.co.tz", "ABC Clerk").await;
    let abc = abc_owner
        .create_account("ABC Company", "admin@abc.co.tz")
        .await
        .account_id;
    let star = star_owner
        .create_account("Star Logistics", "support@starlogistics.co.tz")
        .await
        .account_id;
    let abc_accepted = abc_owner.bring_in(&abc, &designer, &[]).await.position;
    let star_accepted = star_owner.bring_in(&star, &designer, &[]).await.position;
    let clerk_accepted = abc_owner
        .bring_in(&abc, &clerk, &[pb::Permission::Profile])
        .await
        .position;

    server.clock.advance(Duration::hours(1));
    let designer_updated_at = start_time() + Duration::hours(1);
    let abc_updated = update_profile(&designer, &abc, "ABC Company Ltd", "admin@abc.co.tz").await;
    let star_updated = update_profile(
        &designer,
        &star,
        "Star Logistics Ltd",
        "support@starlogistics.co.tz",
    )
    .await;
    server.clock.advance(Duration::hours(1));
    let clerk_updated_at = start_time() + Duration::hours(2);
    let clerk_updated =
        update_profile(&clerk, &abc, "ABC Company Limited", "admin@abc.co.tz").await;

    Story {
        designer,
        abc_owner,
        clerk,
        abc,
        star,
        designer_accepted: [abc_accepted, star_accepted],
        designer_updated: [abc_updated, star_updated],
        clerk_accepted,
        clerk_updated,
        designer_updated_at,
        clerk_updated_at,
        head: clerk_updated,
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

fn ts(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: 0,
    }
}

/// Every page of a listing, following the tokens to the end.
async fn list_all(
    clients: &onbehalf_tests::Clients,
    mut request: pb::ListAuditTrailRequest,
) -> Vec<pb::AuditEntry> {
    let mut entries = Vec::new();
    loop {
        let page = clients
            .audit()
            .list_audit_trail(request.clone())
            .await
            .unwrap_or_else(|s| panic!("listing {request:?} failed: {s:?}"))
            .into_inner();
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            return entries;
        }
        request.page_token = page.next_page_token;
    }
}

/// (position, action, account, actor email, permission) of each entry.
type Seen = (u64, String, String, String, i32);

fn seen(entries: &[pb::AuditEntry]) -> Vec<Seen> {
    entries
        .iter()
        .map(|e| {
            (
                e.position,
                e.action.clone(),
                e.on_behalf_of_account_id.clone(),
                e.actor_email.clone(),
                e.permission,
            )
        })
        .collect()
}

fn row(
    position: u64,
    action: &str,
    account: &str,
    email: &str,
    permission: pb::Permission,
) -> Seen {
    (
        position,
        action.to_owned(),
        account.to_owned(),
        email.to_owned(),
        permission as i32,
    )
}

fn positions(entries: &[pb::AuditEntry]) -> Vec<u64> {
    entries.iter().map(|e| e.position).collect()
}

/// The designer's four actions across ABC and Star, oldest first.
fn designer_rows(s: &Story) -> Vec<Seen> {
    vec![
        row(
            s.designer_accepted[0],
            "InvitationAccepted",
            &s.abc,
            DESIGNER,
            pb::Permission::Unspecified,
        ),
        row(
            s.designer_accepted[1],
            "InvitationAccepted",
            &s.star,
            DESIGNER,
            pb::Permission::Unspecified,
        ),
        row(
            s.designer_updated[0],
            "AccountProfileUpdated",
            &s.abc,
            DESIGNER,
            pb::Permission::Profile,
        ),
        row(
            s.designer_updated[1],
            "AccountProfileUpdated",
            &s.star,
            DESIGNER,
            pb::Permission::Profile,
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Scenarios

async fn an_auditor_lists_everything_the_designer_did_across_its_client_accounts(
    server: &TestServer,
) {
    let s = story(server).await;

    let entries = list_all(
        &server.service("compliance", &["audit:read"]),
        pb::ListAuditTrailRequest {
            actor_user_id: s.designer.user_id.clone(),
            page_size: 3,
            min_position: s.head,
            ..Default::default()
        },
    )
    .await;

    assert_eq!(seen(&entries), designer_rows(&s));
    assert!(entries.iter().all(|e| e.actor_user_id == s.designer.user_id
        && e.actor_kind == pb::ActorKind::ActorUser as i32));
}

async fn a_user_reads_its_own_actions_across_its_accounts_without_naming_one(server: &TestServer) {
    let s = story(server).await;

    let own = list_all(
        &s.designer,
        pb::ListAuditTrailRequest {
            min_position: s.head,
            ..Default::default()
        },
    )
    .await;
    let named = list_all(
        &s.designer,
        pb::ListAuditTrailRequest {
            actor_user_id: s.designer.user_id.clone(),
            min_position: s.head,
            ..Default::default()
        },
    )
    .await;

    assert_eq!(seen(&own), designer_rows(&s));
    assert_eq!(own, named);
    let status = server
        .rejects(
            Code::PermissionDenied,
            s.designer
                .audit()
                .list_audit_trail(pb::ListAuditTrailRequest {
                    actor_user_id: s.clerk.user_id.clone(),
                    ..Default::default()
                }),
        )
        .await;
    assert_eq!(
        status.message(),
        "without an account, a user reads only its own actions"
    );
}

async fn the_trail_filters_by_account_and_action_and_by_a_half_open_time_range(
    server: &TestServer,
) {
    let s = story(server).await;
    let owner = &s.abc_owner;
    let request = |action: &str, from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>| {
        pb::ListAuditTrailRequest {
            account_id: s.abc.clone(),
            action: action.into(),
            from_time: from.map(ts),
            to_time: to.map(ts),
            min_position: s.head,
            ..Default::default()
        }
    };

    let updates = list_all(owner, request("AccountProfileUpdated", None, None)).await;
    assert_eq!(
        seen(&updates),
        vec![
            row(
                s.designer_updated[0],
                "AccountProfileUpdated",
                &s.abc,
                DESIGNER,
                pb::Permission::Profile
            ),
            row(
                s.clerk_updated,
                "AccountProfileUpdated",
                &s.abc,
                "clerk@abc.co.tz",
                pb::Permission::Profile
            ),
        ]
    );
    let in_the_first_hour = list_all(
        owner,
        request("", Some(s.designer_updated_at), Some(s.clerk_updated_at)),
    )
    .await;
    assert_eq!(positions(&in_the_first_hour), vec![s.designer_updated[0]]);
    let from_the_second_hour = list_all(owner, request("", Some(s.clerk_updated_at), None)).await;
    assert_eq!(positions(&from_the_second_hour), vec![s.clerk_updated]);
    let before_any_update = list_all(
        owner,
        request("AccountProfileUpdated", None, Some(s.designer_updated_at)),
    )
    .await;
    assert_eq!(positions(&before_any_update), Vec::<u64>::new());

    server
        .rejects_field(
            "to_time",
            owner.audit().list_audit_trail(request(
                "",
                Some(s.clerk_updated_at),
                Some(s.designer_updated_at),
            )),
        )
        .await;
    server
        .rejects_field(
            "action",
            owner
                .audit()
                .list_audit_trail(request("Invoice Paid", None, None)),
        )
        .await;
}

async fn newest_first_pages_run_down_from_the_head_and_stay_put_while_events_arrive(
    server: &TestServer,
) {
    let s = story(server).await;
    let owner = &s.abc_owner;
    let request = |order: pb::AuditOrder, page_token: String| pb::ListAuditTrailRequest {
        account_id: s.abc.clone(),
        page_size: 2,
        page_token,
        order: order as i32,
        min_position: s.head,
        ..Default::default()
    };
    let everything = list_all(owner, request(pb::AuditOrder::OldestFirst, String::new())).await;
    let mut expected_newest = positions(&everything);
    expected_newest.reverse();

    let newest = owner
        .audit()
        .list_audit_trail(request(pb::AuditOrder::NewestFirst, String::new()))
        .await
        .unwrap()
        .into_inner();
    let oldest = owner
        .audit()
        .list_audit_trail(request(pb::AuditOrder::OldestFirst, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        positions(&newest.entries),
        vec![s.clerk_updated, s.designer_updated[0]]
    );

    // New events arrive in the account between the first page and the rest.
    let late = update_profile(owner, &s.abc, "ABC Company", "admin@abc.co.tz").await;

    let mut newest_seen = positions(&newest.entries);
    let mut token = newest.next_page_token;
    while !token.is_empty() {
        let page = owner
            .audit()
            .list_audit_trail(pb::ListAuditTrailRequest {
                min_position: late,
                ..request(pb::AuditOrder::NewestFirst, token)
            })
            .await
            .unwrap()
            .into_inner();
        newest_seen.extend(positions(&page.entries));
        token = page.next_page_token;
    }
    assert_eq!(newest_seen, expected_newest);

    let mut oldest_seen = positions(&oldest.entries);
    let mut token = oldest.next_page_token;
    while !token.is_empty() {
        let page = owner
            .audit()
            .list_audit_trail(pb::ListAuditTrailRequest {
                min_position: late,
                ..request(pb::AuditOrder::OldestFirst, token)
            })
            .await
            .unwrap()
            .into_inner();
        oldest_seen.extend(positions(&page.entries));
        token = page.next_page_token;
    }
    let mut expected_oldest = positions(&everything);
    expected_oldest.push(late);
    assert_eq!(oldest_seen, expected_oldest);

    // A token issued for one order does not read back in the other.
    server
        .rejects_field(
            "page_token",
            owner.audit().list_audit_trail(request(
                pb::AuditOrder::OldestFirst,
                format!("b{}", s.clerk_updated),
            )),
        )
        .await;
}

async fn a_member_reads_only_its_own_actions_and_is_refused_another_members(server: &TestServer) {
    let s = story(server).await;

    let own = list_all(
        &s.clerk,
        pb::ListAuditTrailRequest {
            account_id: s.abc.clone(),
            min_position: s.head,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        seen(&own),
        vec![
            row(
                s.clerk_accepted,
                "InvitationAccepted",
                &s.abc,
                "clerk@abc.co.tz",
                pb::Permission::Unspecified
            ),
            row(
                s.clerk_updated,
                "AccountProfileUpdated",
                &s.abc,
                "clerk@abc.co.tz",
                pb::Permission::Profile
            ),
        ]
    );

    let status = server
        .rejects(
            Code::PermissionDenied,
            s.clerk.audit().list_audit_trail(pb::ListAuditTrailRequest {
                account_id: s.abc.clone(),
                actor_user_id: s.designer.user_id.clone(),
                ..Default::default()
            }),
        )
        .await;
    assert_eq!(status.message(), "a member reads only its own actions");
    // Nor may it read an account it does not belong to.
    server
        .rejects(
            Code::PermissionDenied,
            s.clerk.audit().list_audit_trail(pb::ListAuditTrailRequest {
                account_id: s.star.clone(),
                ..Default::default()
            }),
        )
        .await;
}

// ---------------------------------------------------------------------------------------------
// Export

/// Adds a bearer token and the end user's address to every call.
#[derive(Clone)]
struct FrontEnd {
    authorization: MetadataValue<Ascii>,
    client_address: MetadataValue<Ascii>,
}

impl Interceptor for FrontEnd {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let metadata = request.metadata_mut();
        metadata.insert("authorization", self.authorization.clone());
        metadata.insert("x-client-address", self.client_address.clone());
        Ok(request)
    }
}

/// The account service as the client-area front end calls it for `user_id`, passing the end
/// user's address.
fn through_front_end(
    server: &TestServer,
    user_id: &str,
    client_address: &str,
) -> AccountServiceClient<InterceptedService<Channel, FrontEnd>> {
    let front_end = FrontEnd {
        authorization: format!("Bearer {}", server.token(user_id, None))
            .parse()
            .unwrap(),
        client_address: client_address.parse().unwrap(),
    };
    AccountServiceClient::new(InterceptedService::new(server.channel.clone(), front_end))
}

async fn export(clients: &onbehalf_tests::Clients, request: pb::ExportAuditTrailRequest) -> String {
    let mut stream = clients
        .audit()
        .export_audit_trail(request)
        .await
        .expect("the export starts")
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.message().await.expect("the export goes on") {
        data.extend(chunk.data);
    }
    String::from_utf8(data).expect("the export is UTF-8")
}

async fn an_export_of_a_small_log_is_exact_in_json_lines_and_csv(server: &TestServer) {
    let designer = server.register(DESIGNER, "Web Designer").await;
    let owner = server.register("admin@abc.co.tz", "ABC Company").await;
    let abc = owner
        .create_account("ABC Company", "admin@abc.co.tz")
        .await
        .account_id;
    let accepted = owner.bring_in(&abc, &designer, &[]).await.position;
    server.clock.advance(Duration::minutes(90));
    // A front end passing the end user's address, with a request id that needs quoting in CSV.
    let updated = through_front_end(server, &designer.user_id, "203.0.113.7")
        .update_account_profile(pb::UpdateAccountProfileRequest {
            account_id: abc.clone(),
            name: "ABC Company Ltd".into(),
            email: "admin@abc.co.tz".into(),
            request_id: "rename,\"abc\"".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .position;
    let trail = list_all(
        &owner,
        pb::ListAuditTrailRequest {
            account_id: abc.clone(),
            min_position: updated,
            ..Default::default()
        },
    )
    .await;
    let [created, invited, accepted_entry, updated_entry] = &trail[..] else {
        panic!("four entries for ABC: {trail:?}");
    };
    assert_eq!(
        (accepted_entry.position, updated_entry.position),
        (accepted, updated)
    );
    let request = |format: pb::AuditExportFormat| pb::ExportAuditTrailRequest {
        account_id: abc.clone(),
        format: format as i32,
        min_position: updated,
        ..Default::default()
    };

    let jsonl = export(&owner, request(pb::AuditExportFormat::Jsonl)).await;
    let csv = export(&owner, request(pb::AuditExportFormat::Csv)).await;

    let (o, d) = (&owner.user_id, &designer.user_id);
    let json_line = |e: &pb::AuditEntry,
                     at: &str,
                     user: &str,
                     email: &str,
                     permission: &str,
                     request: &str,
                     address: &str| {
        format!(
            "{{\"position\":{},\"occurred_at\":\"{at}\",\"actor_kind\":\"user\",\
             \"actor_user_id\":\"{user}\",\"actor_email\":\"{email}\",\"actor_name\":null,\
             \"account_id\":\"{abc}\",\"permission\":{permission},\"action\":\"{}\",\
             \"request_id\":{request},\"client_address\":{address},\"event_id\":\"{}\"}}\n",
            e.position, e.action, e.event_id
        )
    };
    let start = "2025-03-03T09:00:00.000000Z";
    let later = "2025-03-03T10:30:00.000000Z";
    let quoted_id = |e: &pb::AuditEntry| format!("\"{}\"", e.request_id);
    assert_eq!(
        jsonl,
        [
            json_line(
                created,
                start,
                o,
                "admin@abc.co.tz",
                "null",
                &quoted_id(created),
                "null"
            ),
            json_line(
                invited,
                start,
                o,
                "admin@abc.co.tz",
                "null",
                &quoted_id(invited),
                "null"
            ),
            json_line(
                accepted_entry,
                start,
                d,
                DESIGNER,
                "null",
                &quoted_id(accepted_entry),
                "null"
            ),
            json_line(
                updated_entry,
                later,
                d,
                DESIGNER,
                "\"PROFILE\"",
                "\"rename,\\\"abc\\\"\"",
                "\"203.0.113.7\""
            ),
        ]
        .concat()
    );
    let csv_line = |e: &pb::AuditEntry,
                    at: &str,
                    user: &str,
                    email: &str,
                    permission: &str,
                    request: &str,
                    address: &str| {
        format!(
            "{},{at},user,{user},{email},,{abc},{permission},{},{request},{address},{}\r\n",
            e.position, e.action, e.event_id
        )
    };
    assert_eq!(
        csv,
        [
            "position,occurred_at,actor_kind,actor_user_id,actor_email,actor_name,account_id,\
             permission,action,request_id,client_address,event_id\r\n"
                .to_owned(),
            csv_line(
                created,
                start,
                o,
                "admin@abc.co.tz",
                "",
                &created.request_id,
                ""
            ),
            csv_line(
                invited,
                start,
                o,
                "admin@abc.co.tz",
                "",
                &invited.request_id,
                ""
            ),
            csv_line(
                accepted_entry,
                start,
                d,
                DESIGNER,
                "",
                &accepted_entry.request_id,
                ""
            ),
            csv_line(
                updated_entry,
                later,
                d,
                DESIGNER,
                "PROFILE",
                "\"rename,\"\"abc\"\"\"",
                "203.0.113.7"
            ),
        ]
        .concat()
    );
    // Every entry of the story was made with a request id, so none is empty above.
    assert!(trail.iter().all(|e| !e.request_id.is_empty()));
}

async fn an_export_keeps_the_filters_and_permissions_of_the_listing(server: &TestServer) {
    let s = story(server).await;
    let request =
        |account_id: &str, actor: &str, order: pb::AuditOrder| pb::ExportAuditTrailRequest {
            account_id: account_id.into(),
            actor_user_id: actor.into(),
            action: "AccountProfileUpdated".into(),
            order: order as i32,
            min_position: s.head,
            ..Default::default()
        };

    let newest = export(&s.designer, request("", "", pb::AuditOrder::NewestFirst)).await;
    let exported: Vec<u64> = newest
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            value["position"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(exported, vec![s.designer_updated[1], s.designer_updated[0]]);

    let refused = s
        .clerk
        .audit()
        .export_audit_trail(request(
            &s.abc,
            &s.designer.user_id,
            pb::AuditOrder::OldestFirst,
        ))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let empty_csv = export(
        &server.admin(),
        pb::ExportAuditTrailRequest {
            action: "NoSuchAction".into(),
            format: pb::AuditExportFormat::Csv as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        empty_csv,
        "position,occurred_at,actor_kind,actor_user_id,actor_email,actor_name,account_id,\
         permission,action,request_id,client_address,event_id\r\n"
    );
}

// ---------------------------------------------------------------------------------------------
// Verification

async fn an_auditor_verifies_the_untouched_log_intact_to_its_head(server: &TestServer) {
    let s = story(server).await;
    let stored = server.stored_events().await;
    let head = stored.last().expect("the story wrote events");

    let report = server
        .service("compliance", &["audit:read"])
        .audit()
        .verify_audit_trail(pb::VerifyAuditTrailRequest {})
        .await
        .expect("the log verifies")
        .into_inner();

    assert_eq!(head.position, s.head);
    assert_eq!(
        report.outcome,
        Some(pb::verify_audit_trail_response::Outcome::Intact(
            pb::ChainIntact {
                head: s.head,
                last_hash: head.hash.clone().expect("a hash"),
            }
        ))
    );
    for caller in [
        s.abc_owner.clients.clone(),
        server.service("billing", &["billing:write"]),
    ] {
        server
            .rejects(
                Code::PermissionDenied,
                caller
                    .audit()
                    .verify_audit_trail(pb::VerifyAuditTrailRequest {}),
            )
            .await;
    }
}

on_both_backends!(
    an_auditor_lists_everything_the_designer_did_across_its_client_accounts
        => an_auditor_lists_everything_the_designer_did_across_its_client_accounts_on_sqlite,
           an_auditor_lists_everything_the_designer_did_across_its_client_accounts_on_postgres
);
on_both_backends!(
    a_user_reads_its_own_actions_across_its_accounts_without_naming_one
        => a_user_reads_its_own_actions_across_its_accounts_without_naming_one_on_sqlite,
           a_user_reads_its_own_actions_across_its_accounts_without_naming_one_on_postgres
);
on_both_backends!(
    the_trail_filters_by_account_and_action_and_by_a_half_open_time_range
        => the_trail_filters_by_account_and_action_and_by_a_half_open_time_range_on_sqlite,
           the_trail_filters_by_account_and_action_and_by_a_half_open_time_range_on_postgres
);
on_both_backends!(
    newest_first_pages_run_down_from_the_head_and_stay_put_while_events_arrive
        => newest_first_pages_run_down_from_the_head_and_stay_put_while_events_arrive_on_sqlite,
           newest_first_pages_run_down_from_the_head_and_stay_put_while_events_arrive_on_postgres
);
on_both_backends!(
    a_member_reads_only_its_own_actions_and_is_refused_another_members
        => a_member_reads_only_its_own_actions_and_is_refused_another_members_on_sqlite,
           a_member_reads_only_its_own_actions_and_is_refused_another_members_on_postgres
);
on_both_backends!(
    an_export_of_a_small_log_is_exact_in_json_lines_and_csv
        => an_export_of_a_small_log_is_exact_in_json_lines_and_csv_on_sqlite,
           an_export_of_a_small_log_is_exact_in_json_lines_and_csv_on_postgres
);
on_both_backends!(
    an_export_keeps_the_filters_and_permissions_of_the_listing
        => an_export_keeps_the_filters_and_permissions_of_the_listing_on_sqlite,
           an_export_keeps_the_filters_and_permissions_of_the_listing_on_postgres
);
on_both_backends!(
    an_auditor_verifies_the_untouched_log_intact_to_its_head
        => an_auditor_verifies_the_untouched_log_intact_to_its_head_on_sqlite,
           an_auditor_verifies_the_untouched_log_intact_to_its_head_on_postgres
);
