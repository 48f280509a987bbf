//! Erasing a user (the right to be forgotten) end to end, on both backends: the designer of
//! the walkthrough leaves ABC Company and is erased. Every audit entry of its work stays, with
//! its actor shown as erased; the hash chain still verifies, online and offline; a restarted
//! server rebuilds the same read models; time travel shows the erased values; the email can be
//! registered again; no stored byte holds the email any more; and every refusal has its code.

use onbehalf::store::postgres::PostgresStore;
use onbehalf::store::sqlite::SqliteStore;
use onbehalf::store::{verify_chain, ChainReport, EventReader};
use onbehalf_events::personal::{ERASED_EMAIL, ERASED_NAME};
use onbehalf_proto::v1 as pb;
use onbehalf_tests::{on_both_backends, request_id, Backend, Person, TestServer, DESIGNER};
use tonic::Code;

const ERASER: &str = "privacy-desk";

/// ABC Company brought the designer in with full access; the designer renamed the account.
struct Story {
    designer: Person,
    abc_owner: Person,
    abc: String,
    /// The position right after ABC invited the designer, before it accepted.
    invited_at: u64,
    /// The position of the designer's acceptance.
    accepted_at: u64,
}

async fn story(server: &TestServer) -> Story {
    let designer = server.register(DESIGNER, "Web Designer").await;
    let abc_owner = server.register("admin@abc.co.tz", "ABC Company").await;
    let abc = abc_owner
        .create_account("ABC Company", "billing@abc.co.tz")
        .await
        .account_id;
    let sent = abc_owner.invite_full_access(&abc, DESIGNER).await;
    let token = designer.invitation_token(&abc, sent.position).await;
    let accepted = designer.accept(&token).await;
    designer
        .accounts()
        .update_account_profile(pb::UpdateAccountProfileRequest {
            account_id: abc.clone(),
            name: "ABC Company Ltd".into(),
            email: "billing@abc.co.tz".into(),
            request_id: request_id(),
        })
        .await
        .expect("the designer renames ABC Company");
    Story {
        designer,
        abc_owner,
        abc,
        invited_at: sent.position,
        accepted_at: accepted.position,
    }
}

fn erase(user_id: &str) -> pb::EraseUserRequest {
    pb::EraseUserRequest {
        user_id: user_id.into(),
        request_id: request_id(),
    }
}

async fn leave(person: &Person, account_id: &str) -> u64 {
    person
        .access()
        .leave_account(pb::LeaveAccountRequest {
            account_id: account_id.into(),
            request_id: request_id(),
        })
        .await
        .expect("the member leaves")
        .into_inner()
        .position
}

async fn account_trail(
    server: &TestServer,
    account_id: &str,
    min_position: u64,
) -> Vec<pb::AuditEntry> {
    server
        .admin()
        .audit()
        .list_audit_trail(pb::ListAuditTrailRequest {
            account_id: account_id.into(),
            page_size: 500,
            min_position,
            ..Default::default()
        })
        .await
        .expect("the account's trail is readable")
        .into_inner()
        .entries
}

async fn all_notifications(
    clients: &onbehalf_tests::Clients,
    min_position: u64,
) -> Vec<pb::Notification> {
    clients
        .notifications()
        .list_notifications(pb::ListNotificationsRequest {
            page_size: 500,
            min_position,
            ..Default::default()
        })
        .await
        .expect("the notifications are readable")
        .into_inner()
        .notifications
}

async fn full_trail(clients: &onbehalf_tests::Clients, min_position: u64) -> Vec<pb::AuditEntry> {
    clients
        .audit()
        .list_audit_trail(pb::ListAuditTrailRequest {
            page_size: 500,
            min_position,
            ..Default::default()
        })
        .await
        .expect("the trail is readable")
        .into_inner()
        .entries
}

async fn verify_online(server: &TestServer) -> u64 {
    let response = server
        .admin()
        .audit()
        .verify_audit_trail(pb::VerifyAuditTrailRequest {})
        .await
        .expect("the chain is verified")
        .into_inner();
    match response.outcome {
        Some(pb::verify_audit_trail_response::Outcome::Intact(intact)) => intact.head,
        other => panic!("the chain does not verify: {other:?}"),
    }
}

async fn verify_offline(server: &TestServer) -> ChainReport {
    match server.backend {
        Backend::Sqlite => {
            let store = SqliteStore::open(server.data_dir()).await.unwrap();
            verify_chain(&store, 7).await.unwrap()
        }
        Backend::Postgres => {
            let url = &server.database().unwrap().url;
            let store = PostgresStore::connect(url).await.unwrap();
            verify_chain(&store, 7).await.unwrap()
        }
    }
}

/// Every text the store keeps about events, reservations and data keys, read from its tables
/// directly, and (SQLite) the database file's bytes after a checkpoint.
async fn stored_text(server: &TestServer) -> Vec<String> {
    match server.backend {
        Backend::Sqlite => {
            let path = server
                .data_dir()
                .join(onbehalf::store::sqlite::DATABASE_FILE);
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .unwrap();
            let mut texts = Vec::new();
            for sql in [
                "SELECT payload || metadata || COALESCE(key_id, '') FROM events",
                "SELECT scope || ':' || key || ':' || stream_id FROM reservations",
                "SELECT key_id || ':' || subject FROM data_keys",
                "SELECT actor || ':' || request_id || ':' || outcome FROM requests",
            ] {
                let mut stmt = conn.prepare(sql).unwrap();
                let rows = stmt.query_map([], |row| row.get::<_, String>(0)).unwrap();
                texts.extend(rows.map(Result::unwrap));
            }
            // Everything the file holds, deleted rows included, once the WAL is written back.
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
            let bytes = std::fs::read(&path).unwrap();
            texts.push(String::from_utf8_lossy(&bytes).into_owned());
            texts
        }
        Backend::Postgres => {
            let client = server.database().unwrap().client().await.unwrap();
            let mut texts = Vec::new();
            for sql in [
                "SELECT payload::text || metadata::text || COALESCE(key_id, '') FROM events",
                "SELECT scope || ':' || key || ':' || stream_id FROM reservations",
                "SELECT key_id || ':' || subject FROM data_keys",
                "SELECT actor || ':' || request_id || ':' || outcome::text FROM requests",
            ] {
                for row in client.query(sql, &[]).await.unwrap() {
                    texts.push(row.get::<_, String>(0));
                }
            }
            texts
        }
    }
}

async fn data_key_subjects(server: &TestServer) -> Vec<String> {
    match server.backend {
        Backend::Sqlite => {
            let path = server
                .data_dir()
                .join(onbehalf::store::sqlite::DATABASE_FILE);
            let conn = rusqlite::Connection::open(&path).unwrap();
            let mut stmt = conn
                .prepare("SELECT subject FROM data_keys ORDER BY subject")
                .unwrap();
            let rows = stmt.query_map([], |row| row.get::<_, String>(0)).unwrap();
            rows.map(Result::unwrap).collect()
        }
        Backend::Postgres => {
            let client = server.database().unwrap().client().await.unwrap();
            client
                .query("SELECT subject FROM data_keys ORDER BY subject", &[])
                .await
                .unwrap()
                .iter()
                .map(|row| row.get::<_, String>(0))
                .collect()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The walkthrough

async fn the_designer_is_erased_after_leaving_and_abc_keeps_its_trail(server: &TestServer) {
    let Story {
        designer,
        abc_owner,
        abc,
        invited_at,
        accepted_at,
    } = story(server).await;

    // Before erasure the email is stored only sealed: the log holds no plain address.
    let sealed = stored_text(server).await;
    let events_text = sealed[..sealed.len() - usize::from(server.backend == Backend::Sqlite)]
        .iter()
        .filter(|t| !t.starts_with("user_email:"))
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!events_text.contains(DESIGNER), "{events_text}");
    assert!(!events_text.contains("Web Designer"), "{events_text}");

    let left_at = leave(&designer, &abc).await;
    let before = account_trail(server, &abc, left_at).await;
    let designer_actions: Vec<&str> = before
        .iter()
        .filter(|e| e.actor_user_id == designer.user_id)
        .map(|e| e.action.as_str())
        .collect();
    assert_eq!(
        designer_actions,
        [
            "InvitationAccepted",
            "AccountProfileUpdated",
            "MemberRemoved"
        ]
    );
    assert!(before
        .iter()
        .filter(|e| e.actor_user_id == designer.user_id)
        .all(|e| e.actor_email == DESIGNER));

    let erased = designer
        .users()
        .erase_user(erase(&designer.user_id))
        .await
        .expect("the designer erases itself")
        .into_inner();
    assert_eq!(
        erased.user,
        Some(pb::User {
            user_id: designer.user_id.clone(),
            email: ERASED_EMAIL.into(),
            display_name: ERASED_NAME.into(),
            erased: true,
        })
    );
    assert_eq!(erased.position, server.log_head().await);

    // The trail keeps every entry, each as it was, with the actor shown as erased.
    let after = account_trail(server, &abc, erased.position).await;
    let expected: Vec<pb::AuditEntry> = before
        .iter()
        .cloned()
        .map(|mut e| {
            if e.actor_user_id == designer.user_id {
                e.actor_email = ERASED_EMAIL.into();
            }
            e
        })
        .collect();
    assert_eq!(after, expected);
    let whole = server.audit_trail(erased.position).await;
    let erasure = whole.last().expect("the erasure is audited");
    assert_eq!(erasure.action, "UserErased");
    assert_eq!(erasure.actor_user_id, designer.user_id);
    assert_eq!(erasure.actor_email, ERASED_EMAIL);
    assert_eq!(erasure.on_behalf_of_account_id, "");

    // The chain covers the rows as stored, which the erasure did not change.
    let head = server.log_head().await;
    assert_eq!(verify_online(server).await, head);
    match verify_offline(server).await {
        ChainReport::Intact { head: verified, .. } => assert_eq!(verified, head),
        broken => panic!("the offline walk found {broken:?}"),
    }

    // Nothing routed to the designer is left, and nobody else's notice names it any more.
    let notices = all_notifications(&server.admin(), head).await;
    assert!(!notices.is_empty());
    for notice in &notices {
        assert_ne!(notice.recipient_email, DESIGNER);
        assert!(!notice.subject.contains(DESIGNER), "{notice:?}");
        assert!(!notice.body.contains(DESIGNER), "{notice:?}");
        assert!(!notice.body.contains("Web Designer"), "{notice:?}");
    }
    let left_notice = notices
        .iter()
        .find(|n| n.position == left_at && n.recipient_email == abc_owner.email)
        .expect("the owner heard the designer left");
    assert_eq!(
        left_notice.subject,
        format!("{ERASED_NAME} <{ERASED_EMAIL}> no longer has access to ABC Company Ltd")
    );

    // Time travel reads the same log: the invitation and the member as they were, erased.
    let mut history = server.admin().history();
    let as_invited = history
        .get_account_as_of(pb::GetAccountAsOfRequest {
            account_id: abc.clone(),
            point: Some(pb::get_account_as_of_request::Point::Position(invited_at)),
        })
        .await
        .expect("ABC as invited")
        .into_inner();
    let emails: Vec<&str> = as_invited
        .invitations
        .iter()
        .map(|i| i.email.as_str())
        .collect();
    assert_eq!(emails, [ERASED_EMAIL]);
    let as_member = history
        .get_account_as_of(pb::GetAccountAsOfRequest {
            account_id: abc.clone(),
            point: Some(pb::get_account_as_of_request::Point::Position(accepted_at)),
        })
        .await
        .expect("ABC as joined")
        .into_inner();
    let member = as_member
        .members
        .iter()
        .find(|m| m.user_id == designer.user_id)
        .expect("the designer was a member then");
    assert_eq!(
        (member.email.as_str(), member.display_name.as_str()),
        (ERASED_EMAIL, ERASED_NAME)
    );

    // The events tool's source, the log as read, shows erased values as erased.
    let registered = server
        .stored_events()
        .await
        .into_iter()
        .find(|e| e.stream_id == format!("user-{}", designer.user_id) && e.version == 1)
        .expect("the registration is in the log");
    assert_eq!(registered.payload["UserRegistered"]["email"], ERASED_EMAIL);
    assert_eq!(
        registered.payload["UserRegistered"]["display_name"],
        ERASED_NAME
    );

    // The keys of the designer and of its email are gone; ABC's and its owner's are not.
    let subjects = data_key_subjects(server).await;
    assert!(!subjects.contains(&format!("user-{}", designer.user_id)));
    let email = onbehalf_events::values::Email::parse(DESIGNER).unwrap();
    assert!(!subjects.contains(&onbehalf_events::personal::email_subject(&email)));
    assert!(subjects.contains(&format!("user-{}", abc_owner.user_id)));
    assert!(subjects.contains(&format!("account-{abc}")));

    // No stored byte names the address any more: not the log, not the reservations.
    for text in stored_text(server).await {
        assert!(!text.contains(DESIGNER), "the store still holds the email");
        assert!(
            !text.contains("Web Designer"),
            "the store still holds the name"
        );
    }

    // A restarted server folds the same read models from the log.
    let (_restarted, clients) = server.restarted().await;
    assert_eq!(
        full_trail(&clients, head).await,
        full_trail(&server.admin(), head).await
    );
    assert_eq!(all_notifications(&clients, head).await, notices);
    let members = abc_owner
        .accounts()
        .list_members(pb::ListMembersRequest {
            account_id: abc.clone(),
            page_size: 100,
            page_token: String::new(),
            min_position: head,
        })
        .await
        .expect("the owner lists ABC's members")
        .into_inner()
        .members;
    let member_ids: Vec<&str> = members.iter().map(|m| m.user_id.as_str()).collect();
    assert_eq!(member_ids, [abc_owner.user_id.as_str()]);

    // The address is free again: a new user registers it and is not erased.
    let again = server.register(DESIGNER, "Web Designer").await;
    assert_ne!(again.user_id, designer.user_id);
    assert_eq!(again.email, DESIGNER);
    let trail = server.audit_trail(again.registered_at).await;
    let old_entries: Vec<&pb::AuditEntry> = trail
        .iter()
        .filter(|e| e.actor_user_id == designer.user_id)
        .collect();
    assert_eq!(old_entries.len(), 4);
    assert!(old_entries.iter().all(|e| e.actor_email == ERASED_EMAIL));
    // An invitation to the address now reaches the new user under a key of its own.
    let sent = abc_owner.invite_full_access(&abc, DESIGNER).await;
    let token = again.invitation_token(&abc, sent.position).await;
    again.accept(&token).await;
    assert_eq!(verify_online(server).await, server.log_head().await);
}

on_both_backends!(the_designer_is_erased_after_leaving_and_abc_keeps_its_trail
    => the_designer_is_erased_after_leaving_and_abc_keeps_its_trail_on_sqlite,
       the_designer_is_erased_after_leaving_and_abc_keeps_its_trail_on_postgres);

// ---------------------------------------------------------------------------------------------
// Refusals

async fn erasure_is_refused_with_exact_codes(server: &TestServer) {
    let Story {
        designer,
        abc_owner,
        abc,
        ..
    } = story(server).await;
    let eraser = server.service(ERASER, &["users:erase"]);

    // Another user, and a service without the scope, may not erase anyone.
    server
        .rejects(
            Code::PermissionDenied,
            abc_owner.users().erase_user(erase(&designer.user_id)),
        )
        .await;
    server
        .rejects(
            Code::PermissionDenied,
            server
                .service(ERASER, &["users:register"])
                .users()
                .erase_user(erase(&designer.user_id)),
        )
        .await;
    server
        .rejects(
            Code::Unauthenticated,
            server
                .anonymous()
                .users()
                .erase_user(erase(&designer.user_id)),
        )
        .await;

    // A member must leave first, an owner must hand its account over first.
    let member = server
        .rejects(
            Code::FailedPrecondition,
            designer.users().erase_user(erase(&designer.user_id)),
        )
        .await;
    assert_eq!(
        member.message(),
        format!("user is still a member of client account {abc}: leave it first")
    );
    let owner = server
        .rejects(
            Code::FailedPrecondition,
            eraser.users().erase_user(erase(&abc_owner.user_id)),
        )
        .await;
    assert_eq!(
        owner.message(),
        format!("user still owns client account {abc}: transfer its ownership first")
    );

    // Nobody to erase, and an id that is not one.
    server
        .rejects(
            Code::NotFound,
            eraser
                .users()
                .erase_user(erase("7c9e6679-7425-40de-944b-e07fc1f90ae7")),
        )
        .await;
    server
        .rejects_field("user_id", eraser.users().erase_user(erase("not-a-user")))
        .await;

    // The service erases the designer once it left; a second erasure is refused.
    leave(&designer, &abc).await;
    let retry = erase(&designer.user_id);
    let first = eraser
        .users()
        .erase_user(retry.clone())
        .await
        .expect("the service erases the designer")
        .into_inner();
    let replayed = eraser
        .users()
        .erase_user(retry)
        .await
        .expect("a retry of the same request gets the first outcome")
        .into_inner();
    assert_eq!(replayed.position, first.position);
    let again = server
        .rejects(
            Code::FailedPrecondition,
            eraser.users().erase_user(erase(&designer.user_id)),
        )
        .await;
    assert_eq!(again.message(), "user is already erased");

    // An erased user's token no longer opens anything.
    server
        .rejects(
            Code::PermissionDenied,
            designer
                .accounts()
                .create_account(pb::CreateAccountRequest {
                    name: "Designer Studio".into(),
                    email: "studio@yourcompany.com".into(),
                    request_id: request_id(),
                }),
        )
        .await;
    // Nor can anyone give the erased placeholder as an address.
    server
        .rejects_field(
            "email",
            server
                .admin()
                .users()
                .register_user(pb::RegisterUserRequest {
                    email: ERASED_EMAIL.into(),
                    display_name: "Somebody".into(),
                    request_id: request_id(),
                }),
        )
        .await;
}

on_both_backends!(erasure_is_refused_with_exact_codes
    => erasure_is_refused_with_exact_codes_on_sqlite,
       erasure_is_refused_with_exact_codes_on_postgres);

// ---------------------------------------------------------------------------------------------
// The store, read directly

async fn a_log_written_before_sealing_still_reads_as_plain(server: &TestServer) {
    // Events appended without a seal (as every log before sealing holds them) read as stored
    // and are not touched by an erasure.
    use onbehalf::store::{AppendBatch, EventAppender, NewEvent};
    use onbehalf_events::{Actor, Metadata};
    let payload = serde_json::json!({ "UserRegistered": {
        "user_id": "6a1e9f0c-7d2b-4e3a-8c4d-1b2a3c4d5e6f",
        "email": "old@yourcompany.com",
        "display_name": "Old Timer",
    }});
    let batch = AppendBatch {
        stream_id: "user-6a1e9f0c-7d2b-4e3a-8c4d-1b2a3c4d5e6f".into(),
        stream_type: "user".into(),
        expected_version: 0,
        occurred_at: onbehalf_tests::start_time(),
        events: vec![NewEvent::new(
            "UserRegistered",
            "1",
            payload.clone(),
            Metadata::new(Actor::System),
        )],
        reservations: Vec::new(),
        releases: Vec::new(),
        request: None,
    };
    let appended = match server.backend {
        Backend::Sqlite => {
            let store = SqliteStore::open(server.data_dir()).await.unwrap();
            store.append(batch).await.unwrap()
        }
        Backend::Postgres => {
            let store = PostgresStore::connect(&server.database().unwrap().url)
                .await
                .unwrap();
            store.append(batch).await.unwrap()
        }
    };
    let read = server.stored_events().await;
    let event = read
        .iter()
        .find(|e| e.position == appended.last_position)
        .unwrap();
    assert_eq!(event.payload, payload);
    assert_eq!(event.key_id, None);
    // A server folding the log from the start reads it like any other registration.
    let (_restarted, clients) = server.restarted().await;
    let trail = full_trail(&clients, appended.last_position).await;
    assert_eq!(
        trail.last().map(|e| e.action.as_str()),
        Some("UserRegistered")
    );
}

on_both_backends!(a_log_written_before_sealing_still_reads_as_plain
    => a_log_written_before_sealing_still_reads_as_plain_on_sqlite,
       a_log_written_before_sealing_still_reads_as_plain_on_postgres);

// The sealed row and the opened event differ exactly in the personal fields.
async fn the_store_keeps_personal_fields_sealed_and_reads_them_opened(server: &TestServer) {
    let designer = server.register(DESIGNER, "Web Designer").await;
    let (opened, sealed) = match server.backend {
        Backend::Sqlite => {
            let store = SqliteStore::open(server.data_dir()).await.unwrap();
            (
                store.read_all(0, 10).await.unwrap(),
                store.read_all_sealed(0, 10).await.unwrap(),
            )
        }
        Backend::Postgres => {
            let store = PostgresStore::connect(&server.database().unwrap().url)
                .await
                .unwrap();
            (
                store.read_all(0, 10).await.unwrap(),
                store.read_all_sealed(0, 10).await.unwrap(),
            )
        }
    };
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].payload["UserRegistered"]["email"], DESIGNER);
    assert_eq!(
        opened[0].payload["UserRegistered"]["display_name"],
        "Web Designer"
    );
    assert_eq!(
        opened[0].payload["UserRegistered"]["user_id"],
        designer.user_id.as_str()
    );
    let stored = &sealed[0];
    assert!(
        stored.payload["UserRegistered"]["email"]["$sealed"].is_string(),
        "{}",
        stored.payload
    );
    assert!(stored.payload["UserRegistered"]["display_name"]["$sealed"].is_string());
    assert_eq!(
        stored.payload["UserRegistered"]["user_id"],
        designer.user_id.as_str()
    );
    assert_eq!(stored.key_id, opened[0].key_id);
    assert!(stored
        .key_id
        .as_deref()
        .is_some_and(|k| k.starts_with("dk-")));
    assert_eq!(stored.hash, opened[0].hash);
}

on_both_backends!(the_store_keeps_personal_fields_sealed_and_reads_them_opened
    => the_store_keeps_personal_fields_sealed_and_reads_them_opened_on_sqlite,
       the_store_keeps_personal_fields_sealed_and_reads_them_opened_on_postgres);
