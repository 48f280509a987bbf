//! On a PostgreSQL log, the read models a server folds from the log are woken by the commits of
//! another server process, which cannot announce its appends in this process: a read with that
//! server's `min_position` answers as soon as the commit's notification arrives, not at the next
//! poll.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use onbehalf::auth::{find_signing_key, keys_dir, Signer, DEFAULT_ISSUER};
use onbehalf::cli::{AuthedChannel, Bearer};
use onbehalf::clock::ManualClock;
use onbehalf::server::{self, ServerConfig};
use onbehalf::testing::{postgres_test_database, TempDataDir};
use onbehalf_proto::v1 as pb;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

async fn connect(
    addr: std::net::SocketAddr,
    signer: &Signer,
    subject: &str,
    scope: Option<&str>,
) -> AuthedChannel {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a URI")
        .connect()
        .await
        .expect("the server accepts connections");
    let token = signer
        .sign(subject, scope, Utc::now(), chrono::Duration::hours(1))
        .expect("a token");
    InterceptedService::new(channel, Bearer::new(&token).expect("a header value"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_by_another_server_wakes_the_read_models_long_before_their_poll() {
    let Some(database) = postgres_test_database().await else {
        return;
    };
    let dir = TempDataDir::new();
    let mut config = ServerConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse().expect("a socket address");
    config.database_url = Some(database.url.clone());
    config.clock = Arc::new(ManualClock::new(Utc::now()));
    // Only a notification can bring the other server's append here within the test's deadline.
    config.log_poll_interval = Duration::from_secs(600);
    let reader = server::spawn(config.clone())
        .await
        .expect("the reading server starts");
    let writer = server::spawn(config)
        .await
        .expect("the writing server starts");
    let key = find_signing_key(&keys_dir(dir.path()))
        .expect("the key directory is readable")
        .expect("a key");
    let signer = Signer::load(&key, DEFAULT_ISSUER, DEFAULT_ISSUER).expect("the key loads");

    let registered = pb::user_service_client::UserServiceClient::new(
        connect(
            writer.addr,
            &signer,
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
        connect(writer.addr, &signer, &user_id, None).await,
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
        connect(reader.addr, &signer, &user_id, None).await,
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

    reader.shutdown().await.expect("the reading server stops");
    writer.shutdown().await.expect("the writing server stops");
}
