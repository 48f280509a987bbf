//! The listener speaks TLS, optionally mutual TLS, with certificates the test makes; plain text
//! is for loopback only.

use std::path::Path;

use onbehalf::server::{spawn, RunningServer, ServerConfig, TlsConfig};
use onbehalf::testing::TempDataDir;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A CA, a server certificate for `localhost` and a client certificate, as PEM files in `dir`.
struct Pki {
    ca: String,
    client_cert: String,
    client_key: String,
}

fn write(dir: &Path, name: &str, pem: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write pem");
    path
}

fn make_pki(dir: &Path) -> (Pki, TlsConfig) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");

    let server_key = KeyPair::generate().expect("server key");
    let server = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("server params")
        .signed_by(&server_key, &ca)
        .expect("server cert");
    let client_key = KeyPair::generate().expect("client key");
    let client = CertificateParams::new(vec!["billing.internal".to_owned()])
        .expect("client params")
        .signed_by(&client_key, &ca)
        .expect("client cert");

    let tls = TlsConfig {
        cert: write(dir, "server.pem", &server.pem()),
        key: write(dir, "server.key", &server_key.serialize_pem()),
        client_ca: None,
    };
    let pki = Pki {
        ca: ca.pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    };
    (pki, tls)
}

async fn start(dir: &TempDataDir, tls: Option<TlsConfig>) -> RunningServer {
    let mut config = ServerConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse().expect("address");
    config.tls = tls;
    spawn(config).await.expect("server starts")
}

async fn health(channel: Channel) -> Result<i32, tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status)
}

fn tls_endpoint(server: &RunningServer, tls: ClientTlsConfig) -> tonic::transport::Endpoint {
    Channel::from_shared(format!("https://localhost:{}", server.addr.port()))
        .expect("url")
        .tls_config(tls)
        .expect("client tls")
}

#[tokio::test]
async fn a_client_trusting_the_ca_talks_tls_and_a_plain_text_client_is_refused() {
    let dir = TempDataDir::new();
    let (pki, tls) = make_pki(dir.path());
    let server = start(&dir, Some(tls)).await;

    let trusted = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    let channel = tls_endpoint(&server, trusted)
        .connect()
        .await
        .expect("TLS handshake");
    assert_eq!(health(channel).await.expect("answers"), 1);

    let plain =
        Channel::from_shared(format!("http://127.0.0.1:{}", server.addr.port())).expect("url");
    let refused = match plain.connect().await {
        Ok(channel) => health(channel).await.is_err(),
        Err(_) => true,
    };
    assert!(
        refused,
        "a plain-text client must not get an answer from a TLS listener"
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn with_a_client_ca_only_clients_presenting_its_certificate_get_in() {
    let dir = TempDataDir::new();
    let (pki, mut tls) = make_pki(dir.path());
    tls.client_ca = Some(write(dir.path(), "client-ca.pem", &pki.ca));
    let server = start(&dir, Some(tls)).await;

    let base = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    let with_cert = base
        .clone()
        .identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
    let channel = tls_endpoint(&server, with_cert)
        .connect()
        .await
        .expect("mutual TLS handshake");
    assert_eq!(health(channel).await.expect("answers"), 1);

    let without = match tls_endpoint(&server, base).connect().await {
        Ok(channel) => health(channel).await.is_err(),
        Err(_) => true,
    };
    assert!(without, "a client without a certificate must be refused");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn plain_text_on_a_non_loopback_address_is_refused_before_listening() {
    let dir = TempDataDir::new();
    let mut config = ServerConfig::new(dir.path());
    config.listen = "0.0.0.0:0".parse().expect("address");
    let err = spawn(config).await.expect_err("refused");
    assert_eq!(
        err.to_string(),
        "refusing to listen in plain text on 0.0.0.0:0: plain text is for loopback only; give --tls-cert and --tls-key"
    );
}
