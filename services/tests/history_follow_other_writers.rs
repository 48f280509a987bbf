//! A following `StreamEvents` also delivers events appended by another server process on the same
//! log, which cannot wake it: it finds them by polling.

use std::time::Duration;

use onbehalf::testing::postgres_test_database;
use onbehalf_proto::v1 as pb;

#[path = "support/two_servers.rs"]
mod two_servers;

use two_servers::connect;

async fn an_append_by_another_server_reaches_a_following_stream(database_url: Option<String>) {
    let servers = two_servers::spawn(database_url, |_| {}).await;
    let (reader, writer, signer) = (&servers.reader, &servers.writer, &servers.signer);

    let mut following = pb::history_service_client::HistoryServiceClient::new(
        connect(reader.addr, signer, "service:follower", Some("events:read")).await,
    )
    .stream_events(pb::StreamEventsRequest {
        follow: true,
        ..Default::default()
    })
    .await
    .expect("the stream opens")
    .into_inner();

    let registered = pb::user_service_client::UserServiceClient::new(
        connect(
            writer.addr,
            signer,
            "service:follower",
            Some("users:register"),
        )
        .await,
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
