//! The executor decides a command on the state it last folded for the stream without reading
//! the log first. These tests prove that this never lets a decision on a state the log has left
//! behind stand: two executors over one store play two API replicas, and the second one changes
//! a client account behind the first one's back.
//!
//! - an accepted decision is refused by the store (the stream moved) and decided again on the
//!   events read from the log;
//! - a refusal and a no-op, which append nothing the store could check, are answered only after
//!   the log confirms the stream did not move;
//! - a retry of an accepted request is answered with its first outcome by the append, with no
//!   lookup before deciding.
//!
//! The PostgreSQL cases skip without a server, unless `ONBEHALF_REQUIRE_SERVICES=1`.

use std::sync::Arc;

use onbehalf::clock::SystemClock;
use onbehalf::domain::{AccountCommand, ClientAccount, Command, CommandContext};
use onbehalf::error::Error;
use onbehalf::executor::{Executed, Execution, Executor, Idempotency};
use onbehalf::store::postgres::PostgresStore;
use onbehalf::store::sqlite::SqliteStore;
use onbehalf::store::EventStore;
use onbehalf::testing::{postgres_test_database, TempDataDir};
use onbehalf_events::values::{Email, Name};
use onbehalf_events::{account_stream, Actor, Metadata, Permission, PermissionSet};
use tokio::sync::watch;
use uuid::Uuid;

const OWNER: Uuid = Uuid::from_u128(0x0a01);
const DESIGNER: Uuid = Uuid::from_u128(0x0a02);
const ABC: Uuid = Uuid::from_u128(0x0abc);
const INVITATION: Uuid = Uuid::from_u128(0x1a01);

fn executor(store: &Arc<dyn EventStore>) -> Executor {
    let (appended, _) = watch::channel(0);
    Executor::new(store.clone(), Arc::new(SystemClock), appended)
}

fn permissions(list: &[Permission]) -> PermissionSet {
    list.iter().copied().collect()
}

async fn run(
    executor: &Executor,
    actor: Uuid,
    body: AccountCommand,
    request_id: Option<&str>,
) -> Result<Executed<()>, Error> {
    let actor = Actor::User(actor);
    let mut metadata = Metadata::new(actor.clone());
    metadata.on_behalf_of = Some(ABC);
    let execution = Execution {
        stream_id: account_stream(ABC),
        command: Command {
            context: CommandContext {
                actor,
                now: executor.clock().now(),
            },
            body,
        },
        metadata,
        idempotency: request_id.map(|id| Idempotency {
            request_id: id.to_owned(),
            request_hash: format!("hash-{id}"),
        }),
        reservations: Vec::new(),
    };
    executor
        .execute::<ClientAccount, (), _>(execution, |_| Ok(()))
        .await
}

fn profile(name: &str) -> AccountCommand {
    AccountCommand::UpdateProfile {
        name: Name::parse(name).unwrap(),
        email: Email::parse("billing@abc.co.tz").unwrap(),
    }
}

fn grant(list: &[Permission]) -> AccountCommand {
    AccountCommand::GrantPermissions {
        user_id: DESIGNER,
        permissions: permissions(list),
    }
}

fn revoke(list: &[Permission]) -> AccountCommand {
    AccountCommand::RevokePermissions {
        user_id: DESIGNER,
        permissions: permissions(list),
    }
}

/// Event types of the log from `after` on, in position order.
async fn types_after(store: &Arc<dyn EventStore>, after: u64) -> Vec<String> {
    store
        .read_all(after, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect()
}

async fn head(store: &Arc<dyn EventStore>) -> u64 {
    store.head_position().await.unwrap()
}

/// ABC Company with its owner, and the designer a member holding PRODUCTS, all through `a`,
/// which therefore holds the account's folded state.
async fn abc_with_designer(a: &Executor) {
    let create = AccountCommand::Create {
        account_id: ABC,
        name: Name::parse("ABC Company").unwrap(),
        email: Email::parse("admin@abc.co.tz").unwrap(),
    };
    run(a, OWNER, create, None).await.unwrap();
    let invite = AccountCommand::Invite {
        invitation_id: INVITATION,
        email: Email::parse("designer@yourcompany.com").unwrap(),
        invitee_user_id: None,
        permissions: permissions(&[Permission::Products]),
        ttl: chrono::Duration::days(7),
    };
    run(a, OWNER, invite, None).await.unwrap();
    let accept = AccountCommand::AcceptInvitation {
        invitation_id: INVITATION,
        generation: 0,
    };
    run(a, DESIGNER, accept, None).await.unwrap();
}

async fn a_refusal_on_a_folded_state_is_decided_again_once_the_log_moved(
    store: Arc<dyn EventStore>,
) {
    let (a, b) = (executor(&store), executor(&store));
    abc_with_designer(&a).await;

    // Behind A's back, B grants PROFILE. A's folded state says the designer lacks it.
    run(&b, OWNER, grant(&[Permission::Profile]), None)
        .await
        .unwrap();
    let before = head(&store).await;

    let done = run(&a, DESIGNER, profile("ABC Company Ltd"), None)
        .await
        .expect("the designer holds PROFILE in the log");
    assert_eq!(done.position, before + 1);
    assert_eq!(types_after(&store, before).await, ["AccountProfileUpdated"]);
}

async fn an_acceptance_on_a_folded_state_is_refused_once_the_log_revoked_it(
    store: Arc<dyn EventStore>,
) {
    let (a, b) = (executor(&store), executor(&store));
    abc_with_designer(&a).await;
    run(&a, OWNER, grant(&[Permission::Profile]), None)
        .await
        .unwrap();

    // Behind A's back, B removes the designer. A's folded state still lists a member with
    // PROFILE, so A's first decision accepts; the store refuses it and A decides again.
    run(
        &b,
        OWNER,
        AccountCommand::RevokeAccess { user_id: DESIGNER },
        None,
    )
    .await
    .unwrap();
    let before = head(&store).await;

    let refused = run(&a, DESIGNER, profile("Taken Over Ltd"), None).await;
    assert!(
        matches!(refused, Err(Error::PermissionDenied(_))),
        "{refused:?}"
    );
    assert_eq!(head(&store).await, before, "nothing appended");
}

async fn a_no_op_on_a_folded_state_is_decided_again_once_the_log_moved(store: Arc<dyn EventStore>) {
    let (a, b) = (executor(&store), executor(&store));
    abc_with_designer(&a).await;
    run(&a, OWNER, grant(&[Permission::Profile]), None)
        .await
        .unwrap();

    // Behind A's back, B revokes PROFILE. Granting it again is a no-op on A's folded state, but
    // not on the log's.
    run(&b, OWNER, revoke(&[Permission::Profile]), None)
        .await
        .unwrap();
    let before = head(&store).await;

    let done = run(&a, OWNER, grant(&[Permission::Profile]), None)
        .await
        .unwrap();
    assert_eq!(done.position, before + 1);
    assert_eq!(types_after(&store, before).await, ["PermissionsGranted"]);

    // On a state the log confirms, a no-op appends nothing and answers the stream's position.
    let again = run(&a, OWNER, grant(&[Permission::Profile]), None)
        .await
        .unwrap();
    assert_eq!(again.position, before + 1);
    assert_eq!(head(&store).await, before + 1);
}

async fn a_retry_whose_decision_would_append_again_gets_its_first_outcome(
    store: Arc<dyn EventStore>,
) {
    let (a, b) = (executor(&store), executor(&store));
    abc_with_designer(&a).await;
    let first = run(&a, OWNER, grant(&[Permission::Profile]), Some("grant-1"))
        .await
        .unwrap();
    assert!(!first.replayed);

    // The grant is undone by B; a retry of the same request would grant again if decided
    // afresh, but the request id was accepted once and is answered as it was then.
    run(&b, OWNER, revoke(&[Permission::Profile]), None)
        .await
        .unwrap();
    let before = head(&store).await;

    for retrying in [&a, &b] {
        let retry = run(
            retrying,
            OWNER,
            grant(&[Permission::Profile]),
            Some("grant-1"),
        )
        .await
        .unwrap();
        assert!(retry.replayed);
        assert_eq!(retry.position, first.position);
    }
    assert_eq!(head(&store).await, before, "nothing appended");
}

async fn sqlite() -> (Arc<dyn EventStore>, TempDataDir) {
    let dir = TempDataDir::new();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    (Arc::new(store), dir)
}

macro_rules! on_both_stores {
    ($case:ident => $on_sqlite:ident, $on_postgres:ident) => {
        #[tokio::test]
        async fn $on_sqlite() {
            let (store, _dir) = sqlite().await;
            $case(store).await;
        }

        #[tokio::test]
        async fn $on_postgres() {
            let Some(db) = postgres_test_database().await else {
                return;
            };
            let store = PostgresStore::connect(&db.url).await.unwrap();
            $case(Arc::new(store)).await;
            db.drop_database().await.unwrap();
        }
    };
}

on_both_stores!(a_refusal_on_a_folded_state_is_decided_again_once_the_log_moved
    => a_refusal_on_a_folded_state_is_decided_again_once_the_log_moved_on_sqlite,
       a_refusal_on_a_folded_state_is_decided_again_once_the_log_moved_on_postgres);
on_both_stores!(an_acceptance_on_a_folded_state_is_refused_once_the_log_revoked_it
    => an_acceptance_on_a_folded_state_is_refused_once_the_log_revoked_it_on_sqlite,
       an_acceptance_on_a_folded_state_is_refused_once_the_log_revoked_it_on_postgres);
on_both_stores!(a_no_op_on_a_folded_state_is_decided_again_once_the_log_moved
    => a_no_op_on_a_folded_state_is_decided_again_once_the_log_moved_on_sqlite,
       a_no_op_on_a_folded_state_is_decided_again_once_the_log_moved_on_postgres);
on_both_stores!(a_retry_whose_decision_would_append_again_gets_its_first_outcome
    => a_retry_whose_decision_would_append_again_gets_its_first_outcome_on_sqlite,
       a_retry_whose_decision_would_append_again_gets_its_first_outcome_on_postgres);
