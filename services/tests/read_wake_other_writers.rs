//! On a PostgreSQL log, the read models a server folds from the log are woken by the commits of
//! another server process, which cannot announce its appends in this process: a read with that
//! server's `min_position` answers as soon as the commit's notification arrives, not at the next
//! poll.

use std::time::Duration;

use onbehalf::testing::postgres_test_database;
use onbehalf_proto::v1 as pb;

#[path = "support/two_servers.rs"]
mod two_servers;

use two_servers::connect;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_by_another_server_wakes_the_read_models_long_before_their_poll() {
    let Some(database) = postgres_test_database().await else {
        return;
    };
    let servers = two_servers::spawn(Some(database.url.clone()), |config| {
        // Only a notification can bring the other server's append here within the test's
        // deadline.
        config.log_poll_interval = Duration::from_secs(600);
    })
    .await;
    let (reader, writer, signer) = (&servers.reader, &servers.writer, &servers.signer);

    let registered = pb::user_service_client::UserServiceClient::new(
        connect(
            writer.addr,
            signer,
            "service:signup",
            Some("users:register"),
        )
        .await,
    )
    .register_user(pb::RegisterUserRequest {
        email: "admin@abc.co.tz".into(),
        display_name: "ABC Company".into(),
        request_id: "register-abc".into(),
    })
    .await
    .expect("the writing server registers the user")
    .into_inner();
    let user_id = registered.user.expect("the user").user_id;
    let created = pb::account_service_client::AccountServiceClient::new(
        connect(writer.addr, signer, &user_id, None).await,
    )
    .create_account(pb::CreateAccountRequest {
        name: "ABC Company".into(),
        email: "admin@abc.co.tz".into(),
        request_id: "create-abc".into(),
    })
    .await
    .expect("the writing server creates the account")
    .into_inner();
    let account_id = created.account.expect("the account").account_id;

    let mut request = tonic::Request::new(pb::ListAccessibleAccountsRequest {
        page_size: 10,
        page_token: String::new(),
        min_position: created.position,
    });
    request.set_timeout(Duration::from_secs(10));
    let listed = pb::account_service_client::AccountServiceClient::new(
        connect(reader.addr, signer, &user_id, None).await,
    )
    .list_accessible_accounts(request)
    .await
    .expect("the reading server answers well before its 600 s poll")
    .into_inner();
    let accounts: Vec<_> = listed
        .accounts
        .iter()
        .map(|a| (a.account_id.as_str(), a.name.as_str(), a.role))
        .collect();
    assert_eq!(
        accounts,
        vec![(account_id.as_str(), "ABC Company", pb::Role::Owner as i32)]
    );

    servers
        .reader
        .shutdown()
        .await
        .expect("the reading server stops");
    servers
        .writer
        .shutdown()
        .await
        .expect("the writing server stops");
}
