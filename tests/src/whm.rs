//! A WHM-compatible HTTPS server on loopback that opens cPanel sessions, and the panel
//! configuration that points a test server at it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use onbehalf::panel::PanelServers;
use onbehalf::testing::TempDataDir;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// The API token the fake WHM expects.
pub const WHM_TOKEN: &str = "W7K2QTESTWHMTOKEN9Z";

/// The path and query of every login URL the fake WHM hands out; the session part is the
/// secret that must never reach the log.
pub const SESSION_PATH: &str =
    "/cpsess7420113598/login/?session=abccotz%3aQm8Zr2Lk%3acreate_user_session%2c9b1e44d0";

/// The session secret inside [`SESSION_PATH`].
pub const SESSION_SECRET: &str = "Qm8Zr2Lk";

/// When the fake WHM's sessions expire, in seconds since the epoch.
pub const EXPIRES: i64 = 1_741_000_000;

/// One request as the fake WHM received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhmRequest {
    /// The path and query.
    pub path_and_query: String,
    /// The `authorization` header.
    pub authorization: Option<String>,
}

/// A fake WHM on `127.0.0.1` with a certificate for `localhost` from a CA of its own, answering
/// every `create_user_session` with a session on `https://127.0.0.1:2083`, as a WHM whose
/// hostname does not resolve does. Stops when dropped.
pub struct FakeWhm {
    /// Where it listens.
    pub addr: SocketAddr,
    ca_pem: String,
    seen: Arc<Mutex<Vec<WhmRequest>>>,
    task: tokio::task::JoinHandle<()>,
    dir: TempDataDir,
}

impl std::fmt::Debug for FakeWhm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeWhm")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeWhm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn session_answer() -> String {
    serde_json::json!({
        "data": {
            "cp_security_token": "/cpsess7420113598",
            "expires": EXPIRES,
            "session": format!("abccotz:{SESSION_SECRET}:create_user_session,9b1e44d0"),
            "url": format!("https://127.0.0.1:2083{SESSION_PATH}"),
            "service": "cpaneld",
        },
        "metadata": {"version": 1, "reason": "Created session", "result": 1,
                     "command": "create_user_session"},
    })
    .to_string()
}

impl FakeWhm {
    /// Starts it; panics if it cannot.
    pub async fn start() -> FakeWhm {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
            .expect("ca");
        let key = KeyPair::generate().expect("server key");
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .expect("server params")
            .signed_by(&key, &ca)
            .expect("server cert");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let record = record.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |request: hyper::Request<Incoming>| {
                        let record = record.clone();
                        async move {
                            record
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(WhmRequest {
                                    path_and_query: request
                                        .uri()
                                        .path_and_query()
                                        .map(|p| p.to_string())
                                        .unwrap_or_default(),
                                    authorization: request
                                        .headers()
                                        .get("authorization")
                                        .and_then(|v| v.to_str().ok())
                                        .map(str::to_owned),
                                });
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(
                                session_answer(),
                            ))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        FakeWhm {
            addr,
            ca_pem: ca.pem(),
            seen,
            task,
            dir: TempDataDir::new(),
        }
    }

    /// The requests received so far, in order.
    pub fn requests(&self) -> Vec<WhmRequest> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A panel configuration naming this server `name`, at `localhost`, trusting its CA.
    pub fn panel_servers(&self, name: &str) -> PanelServers {
        let dir = self.dir.path();
        std::fs::write(dir.join("whm.token"), WHM_TOKEN).expect("write the token");
        std::fs::write(dir.join("whm-ca.pem"), &self.ca_pem).expect("write the CA");
        let text = format!(
            "[servers.{name}]\nhostname = \"localhost\"\nport = {}\ntoken_file = \"whm.token\"\nca_file = \"whm-ca.pem\"\n",
            self.addr.port()
        );
        PanelServers::parse(&text, dir).expect("a valid panel configuration")
    }
}
