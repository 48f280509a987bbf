//! Keys rotate without a restart: a public key added to the key directory is accepted, and one
//! removed is refused, once the server has read its keys again.

use std::time::Duration;

use chrono::Utc;
use onbehalf::auth::{ensure_dev_keypair, keys_dir, Signer, DEFAULT_ISSUER};
use onbehalf::server::{spawn, ServerConfig};
use onbehalf::testing::TempDataDir;
use onbehalf_proto::v1::catalog_service_client::CatalogServiceClient;
use onbehalf_proto::v1::ListProductsRequest;
use tonic::transport::Channel;
use tonic::Code;

async fn list_products(channel: &Channel, token: &str) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(ListProductsRequest::default());
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    CatalogServiceClient::new(channel.clone())
        .list_products(request)
        .await
        .map(|_| ())
}

/// Waits up to two seconds for `call` to give `expected`.
async fn eventually(channel: &Channel, token: &str, expected: Option<Code>) -> Option<Code> {
    let mut last = None;
    for _ in 0..40 {
        last = list_products(channel, token).await.err().map(|s| s.code());
        if last == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

#[tokio::test]
async fn a_key_added_is_accepted_and_a_key_removed_is_refused_without_a_restart() {
    let dir = TempDataDir::new();
    let mut config = ServerConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse().expect("address");
    config.key_reload_interval = Duration::from_millis(50);
    let server = spawn(config).await.expect("server starts");
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .expect("url")
        .connect()
        .await
        .expect("connects");
    let sign = |path: &std::path::Path| {
        Signer::load(path, DEFAULT_ISSUER, DEFAULT_ISSUER)
            .expect("key")
            .sign(
                "service:ops",
                Some("audit:read"),
                Utc::now(),
                chrono::Duration::minutes(5),
            )
            .expect("token")
    };
    let (old_key, _) = ensure_dev_keypair(dir.path()).expect("the server's key");
    let old_token = sign(&old_key);
    assert_eq!(
        list_products(&channel, &old_token)
            .await
            .err()
            .map(|s| s.code()),
        None
    );

    // A new pair made elsewhere; only its public half is handed to the server.
    let elsewhere = TempDataDir::new();
    let (new_key, _) = ensure_dev_keypair(elsewhere.path()).expect("a new key pair");
    let new_token = sign(&new_key);
    assert_eq!(
        list_products(&channel, &new_token)
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let public = |dir: &std::path::Path| {
        std::fs::read_dir(keys_dir(dir))
            .expect("keys")
            .map(|e| e.expect("entry").path())
            .find(|p| p.to_string_lossy().ends_with(".pub.pem"))
            .expect("a public key")
    };
    let new_public = public(elsewhere.path());
    std::fs::copy(
        &new_public,
        keys_dir(dir.path()).join(new_public.file_name().expect("name")),
    )
    .expect("installed");
    assert_eq!(
        eventually(&channel, &new_token, None).await,
        None,
        "the new key is accepted"
    );

    // Retiring the old key: its public half leaves the directory (the private half goes with it,
    // or the server would write the public half back at its next start).
    std::fs::remove_file(
        public(dir.path()).with_file_name(
            old_key
                .file_name()
                .expect("name")
                .to_string_lossy()
                .replace(".key.pem", ".pub.pem"),
        ),
    )
    .expect("removed");
    assert_eq!(
        eventually(&channel, &old_token, Some(Code::Unauthenticated)).await,
        Some(Code::Unauthenticated),
        "the removed key is refused"
    );
    assert_eq!(
        list_products(&channel, &new_token)
            .await
            .err()
            .map(|s| s.code()),
        None
    );
    server.shutdown().await.expect("clean shutdown");
}
