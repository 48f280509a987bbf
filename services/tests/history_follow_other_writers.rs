//! A following `StreamEvents` also delivers events appended by another server process on the same
//! log, which cannot wake it: it finds them by polling.

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

async fn connect(addr: std::net::SocketAddr, signer: &Signer, scope: &str) -> AuthedChannel {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a URI")
        .connect()
        .await
        .expect("the server accepts connections");
    let token = signer
        .sign(
            "service:follower",
            Some(scope),
            Utc::now(),
            chrono::Duration::hours(1),
        )
        .expect("a token");
    InterceptedService::new(channel, Bearer::new(&token).expect("a header value"))
}

async fn an_append_by_another_server_reaches_a_following_stream(database_url: Option<String>) {
    let dir = TempDataDir::new();
    let mut config = ServerConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse().expect("a socket address");
    config.database_url = database_url;
    config.clock = Arc::new(ManualClock::new(Utc::now()));
    let reader = server::spawn(config.clone())
        .await
        .expect("the first server starts");
    let writer = server::spawn(config)
        .await
        .expect("the second server starts");
    let key = find_signing_key(&keys_dir(dir.path()))
        .expect("the key directory is readable")
        .expect("a key");
    let signer = Signer::load(&key, DEFAULT_ISSUER, DEFAULT_ISSUER).expect("the key loads");

    let mut following = pb::history_service_client::HistoryServiceClient::new(
        connect(reader.addr, &signer, "events:read").await,
    )
    .stream_events(pb::StreamEventsRequest {
        follow: true,
        ..Default::default()
    })
    .await
    .expect("the stream opens")
    .into_inner();

    let registered = pb::user_service_client::UserServiceClient::new(
        connect(writer.addr, &signer, "users:register").await,
    )
    .register_user(pb::RegisterUserRequest {
        email: "designer@yourcompany.com".into(),
        display_name: "Web Designer".into(),
        request_id: "register-designer".into(),
    })
    .await
    .expect("the second server registers the user")
    .into_inner();

    let event = tokio::time::timeout(Duration::from_secs(5), following.message())
        .await
        .expect("the append is found within 5 s")
        .expect("the stream does not fail")
        .and_then(|m| m.event)
        .expect("an event");
    assert_eq!(
        (
            event.position,
            event.event_type.as_str(),
            event.stream_id.as_str()
        ),
        (
            registered.position,
            "UserRegistered",
            format!("user-{}", registered.user.expect("the user").user_id).as_str()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_by_another_server_reaches_a_following_stream_on_sqlite() {
    an_append_by_another_server_reaches_a_following_stream(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_by_another_server_reaches_a_following_stream_on_postgres() {
    let Some(database) = postgres_test_database().await else {
        return;
    };
    an_append_by_another_server_reaches_a_following_stream(Some(database.url.clone())).await;
}
