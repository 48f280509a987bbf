//! Health and reflection answer without a bearer token; every onbehalf service needs one.

use std::sync::Arc;

use onbehalf::clock::SystemClock;
use onbehalf::server::{spawn, ServerConfig};
use onbehalf::testing::TempDataDir;
use onbehalf_proto::v1::catalog_service_client::CatalogServiceClient;
use onbehalf_proto::v1::ListProductsRequest;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

async fn start(dir: &TempDataDir) -> (onbehalf::server::RunningServer, Channel) {
    let mut config = ServerConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse().expect("address");
    config.clock = Arc::new(SystemClock);
    let server = spawn(config).await.expect("server starts");
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .expect("url")
        .connect()
        .await
        .expect("connects");
    (server, channel)
}

#[tokio::test]
async fn health_reports_the_server_and_every_service_serving_without_a_token() {
    let dir = TempDataDir::new();
    let (server, channel) = start(&dir).await;
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    for service in onbehalf::server::SERVICE_NAMES {
        let status = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: (*service).to_owned(),
            })
            .await
            .unwrap_or_else(|s| panic!("health of {service}: {s:?}"))
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");
    }
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn reflection_lists_every_onbehalf_service_while_the_request_stream_is_open() {
    let dir = TempDataDir::new();
    let (server, channel) = start(&dir).await;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    // The request stream stays open while the answer is awaited, as interactive clients do.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(request).await.expect("queued");
    let answer = async {
        let mut responses = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("reflection answers")
            .into_inner();
        responses.next().await
    };
    let response = tokio::time::timeout(std::time::Duration::from_secs(5), answer)
        .await
        .expect("answered while the request stream is still open")
        .expect("one response")
        .expect("no error");
    drop(tx);
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let mut names: Vec<String> = list
        .service
        .into_iter()
        .map(|s| s.name)
        .filter(|n| n.starts_with("onbehalf."))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "onbehalf.v1.AccessService",
            "onbehalf.v1.AccountService",
            "onbehalf.v1.AuditService",
            "onbehalf.v1.BillingService",
            "onbehalf.v1.CatalogService",
            "onbehalf.v1.HistoryService",
            "onbehalf.v1.HostingService",
            "onbehalf.v1.InvitationService",
            "onbehalf.v1.NotificationService",
            "onbehalf.v1.UserService",
        ]
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn an_onbehalf_service_without_a_token_is_unauthenticated() {
    let dir = TempDataDir::new();
    let (server, channel) = start(&dir).await;
    let status = CatalogServiceClient::new(channel)
        .list_products(ListProductsRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(status.message(), "missing bearer token");
    server.shutdown().await.expect("clean shutdown");
}
