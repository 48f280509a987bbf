//! The cPanel provider against a WHM-compatible HTTPS server started on loopback: the exact
//! request it sends, the host it writes into login URLs, and every way a login can fail.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::DateTime;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use onbehalf::panel::{ControlPanel, PanelConfigError, PanelError, PanelServers};
use onbehalf::testing::TempDataDir;
use onbehalf_events::account::PanelFailure;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const TOKEN: &str = "9Q2XK7TESTTOKENW3ZB8";
const SESSION_PATH: &str =
    "/cpsess3816402954/login/?session=abccotz%3aN7zKqM2v%3acreate_user_session%2c5dc61983";

/// A CA and a certificate it signed for `localhost`.
struct Pki {
    ca_pem: String,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("server params")
        .signed_by(&key, &ca)
        .expect("server cert");
    Pki {
        ca_pem: ca.pem(),
        cert: cert.der().clone(),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

/// What the test server answers.
#[derive(Clone)]
enum Reply {
    /// This status and body.
    With(u16, String),
    /// Nothing, ever.
    Hang,
}

/// One request as the test server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    path_and_query: String,
    authorization: Option<String>,
    host: Option<String>,
}

/// A WHM-compatible HTTPS server on `127.0.0.1`, recording what it receives.
struct Whm {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Whm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Whm {
    async fn start(pki: &Pki, reply: Reply) -> Whm {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![pki.cert.clone()], pki.key.clone_key())
        .expect("server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let record = record.clone();
                let reply = reply.clone();
                tokio::spawn(async move {
                    // A client that refuses the certificate ends the handshake here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |request: hyper::Request<Incoming>| {
                        let record = record.clone();
                        let reply = reply.clone();
                        async move {
                            let header = |name: &str| {
                                request
                                    .headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned)
                            };
                            record.lock().unwrap().push(Seen {
                                method: request.method().to_string(),
                                path_and_query: request
                                    .uri()
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                authorization: header("authorization"),
                                host: header("host"),
                            });
                            match reply {
                                Reply::With(status, body) => Ok::<_, Infallible>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from(body)))
                                        .unwrap(),
                                ),
                                Reply::Hang => {
                                    std::future::pending::<()>().await;
                                    unreachable!()
                                }
                            }
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Whm { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A WHM answer that created a session, with the URL on the server's IP address as WHM writes
/// it when its own hostname does not resolve.
fn created(expires: i64) -> String {
    serde_json::json!({
        "data": {
            "cp_security_token": "/cpsess3816402954",
            "expires": expires,
            "session": "abccotz:N7zKqM2v:create_user_session,5dc61983",
            "url": format!("https://127.0.0.1:2083{SESSION_PATH}"),
            "service": "cpaneld",
        },
        "metadata": {
            "version": 1,
            "reason": "Created session",
            "result": 1,
            "command": "create_user_session",
        },
    })
    .to_string()
}

/// The configuration files of one server `cp1` in `dir`: the CA (when given), the token file
/// and the TOML itself, with `extra` lines appended to the server's table.
fn config(dir: &Path, port: u16, ca_pem: Option<&str>, extra: &str) -> PanelServers {
    std::fs::write(dir.join("cp1.token"), format!("{TOKEN}\n")).unwrap();
    let ca_line = match ca_pem {
        Some(pem) => {
            std::fs::write(dir.join("ca.pem"), pem).unwrap();
            "ca_file = \"ca.pem\"\n"
        }
        None => "",
    };
    let text = format!(
        "[servers.cp1]\nhostname = \"localhost\"\nport = {port}\ntoken_file = \"cp1.token\"\n{ca_line}{extra}"
    );
    PanelServers::parse(&text, dir).expect("the configuration is valid")
}

fn cp1(servers: &PanelServers) -> Arc<dyn ControlPanel> {
    servers.get("cp1").expect("cp1 is configured").clone()
}

async fn login_with(
    reply: Reply,
    extra: &str,
) -> (Result<onbehalf::panel::PanelLogin, PanelError>, Vec<Seen>) {
    let pki = pki();
    let whm = Whm::start(&pki, reply).await;
    let dir = TempDataDir::new();
    let servers = config(dir.path(), whm.addr.port(), Some(&pki.ca_pem), extra);
    let result = cp1(&servers).create_login("abccotz").await;
    (result, whm.seen())
}

#[tokio::test]
async fn a_login_sends_the_documented_request_and_names_the_configured_host() {
    let pki = pki();
    let whm = Whm::start(&pki, Reply::With(200, created(1_741_000_000))).await;
    let dir = TempDataDir::new();
    let servers = config(dir.path(), whm.addr.port(), Some(&pki.ca_pem), "");

    let login = cp1(&servers)
        .create_login("abccotz")
        .await
        .expect("the panel opens a session");

    assert_eq!(login.url(), format!("https://localhost:2083{SESSION_PATH}"));
    assert_eq!(
        login.expires_at,
        DateTime::from_timestamp(1_741_000_000, 0).unwrap()
    );
    assert_eq!(
        whm.seen(),
        vec![Seen {
            method: "GET".into(),
            path_and_query:
                "/json-api/create_user_session?api.version=1&user=abccotz&service=cpaneld".into(),
            authorization: Some(format!("whm root:{TOKEN}")),
            host: Some(format!("localhost:{}", whm.addr.port())),
        }]
    );
}

#[tokio::test]
async fn the_api_token_can_come_from_an_environment_variable_and_never_shows_in_debug() {
    let pki = pki();
    let whm = Whm::start(&pki, Reply::With(200, created(1_741_000_000))).await;
    let dir = TempDataDir::new();
    std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
    let var = format!("ONBEHALF_TEST_WHM_TOKEN_{}", whm.addr.port());
    std::env::set_var(&var, "ENVTOKEN5150");
    let text = format!(
        "[servers.cp1]\nhostname = \"localhost\"\nport = {}\ntoken_env = \"{var}\"\nwhm_user = \"reseller1\"\nca_file = \"ca.pem\"\n",
        whm.addr.port()
    );
    let servers = PanelServers::parse(&text, dir.path()).expect("valid");

    cp1(&servers)
        .create_login("abccotz")
        .await
        .expect("a session");

    assert_eq!(
        whm.seen()[0].authorization.as_deref(),
        Some("whm reseller1:ENVTOKEN5150")
    );
    let shown = format!("{servers:?}");
    assert!(!shown.contains("ENVTOKEN5150"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
}

#[tokio::test]
async fn a_session_whm_declines_is_refused_with_its_reason() {
    let body = serde_json::json!({
        "metadata": {
            "version": 1,
            "result": 0,
            "reason": "The user \u{201c}abccotz\u{201d} does not exist.",
            "command": "create_user_session",
        },
    })
    .to_string();
    let (result, seen) = login_with(Reply::With(200, body), "").await;
    let error = result.unwrap_err();
    assert_eq!(
        error,
        PanelError::Refused("The user \u{201c}abccotz\u{201d} does not exist.".into())
    );
    assert_eq!(error.failure(), PanelFailure::Refused);
    assert_eq!(seen.len(), 1);
}

#[tokio::test]
async fn a_refused_api_token_is_unauthorized() {
    let (result, _) = login_with(Reply::With(401, "Access denied".into()), "").await;
    assert_eq!(result.unwrap_err(), PanelError::Unauthorized(401));
    let (result, _) = login_with(Reply::With(403, String::new()), "").await;
    assert_eq!(result.unwrap_err(), PanelError::Unauthorized(403));
}

#[tokio::test]
async fn a_server_error_is_reported_with_its_status() {
    let (result, _) = login_with(Reply::With(500, "<html>oops</html>".into()), "").await;
    let error = result.unwrap_err();
    assert_eq!(error, PanelError::HttpStatus(500));
    assert_eq!(error.failure(), PanelFailure::HttpStatus);
}

#[tokio::test]
async fn an_answer_that_is_not_whm_json_is_an_invalid_response() {
    let (result, _) = login_with(Reply::With(200, "{\"data\": {\"url\": ".into()), "").await;
    assert_eq!(
        result.unwrap_err(),
        PanelError::InvalidResponse("the answer is not WHM API 1 JSON".into())
    );

    let no_url = r#"{"data": {"expires": 1741000000}, "metadata": {"result": 1}}"#;
    let (result, _) = login_with(Reply::With(200, no_url.into()), "").await;
    assert_eq!(
        result.unwrap_err(),
        PanelError::InvalidResponse("the answer has no `data.url`".into())
    );

    let plain = serde_json::json!({
        "data": {"url": format!("http://127.0.0.1:2082{SESSION_PATH}"), "expires": 1741000000},
        "metadata": {"result": 1},
    })
    .to_string();
    let (result, _) = login_with(Reply::With(200, plain), "").await;
    assert_eq!(
        result.unwrap_err(),
        PanelError::InvalidResponse("`data.url` is not an https URL".into())
    );
}

#[tokio::test]
async fn a_panel_that_does_not_answer_in_time_times_out() {
    let (result, seen) = login_with(Reply::Hang, "timeout_seconds = 1\n").await;
    let error = result.unwrap_err();
    assert_eq!(error, PanelError::Timeout(Duration::from_secs(1)));
    assert_eq!(error.failure(), PanelFailure::Timeout);
    assert_eq!(seen.len(), 1, "the request reached the panel");
}

#[tokio::test]
async fn an_untrusted_certificate_fails_tls_while_verification_is_on() {
    let pki = pki();
    let whm = Whm::start(&pki, Reply::With(200, created(1_741_000_000))).await;
    let dir = TempDataDir::new();

    // The system's roots do not know the test CA.
    let servers = config(dir.path(), whm.addr.port(), None, "");
    let error = cp1(&servers).create_login("abccotz").await.unwrap_err();
    assert!(
        matches!(&error, PanelError::Tls(m) if m.contains("UnknownIssuer")),
        "{error:?}"
    );
    assert_eq!(error.failure(), PanelFailure::Tls);

    // Another CA is no better.
    let other = pki_other_ca();
    let servers = config(dir.path(), whm.addr.port(), Some(&other), "");
    let error = cp1(&servers).create_login("abccotz").await.unwrap_err();
    assert!(matches!(error, PanelError::Tls(_)), "{error:?}");

    assert_eq!(whm.seen(), vec![], "no request crossed a refused handshake");

    // With verification off the same server is accepted.
    let servers = config(dir.path(), whm.addr.port(), None, "verify_tls = false\n");
    let login = cp1(&servers)
        .create_login("abccotz")
        .await
        .expect("a session");
    assert_eq!(login.url(), format!("https://localhost:2083{SESSION_PATH}"));
}

fn pki_other_ca() -> String {
    pki().ca_pem
}

#[tokio::test]
async fn a_certificate_for_another_name_fails_tls() {
    let pki = pki();
    let whm = Whm::start(&pki, Reply::With(200, created(1_741_000_000))).await;
    let dir = TempDataDir::new();
    std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(dir.path().join("cp1.token"), TOKEN).unwrap();
    // The certificate names `localhost`, not the address.
    let text = format!(
        "[servers.cp1]\nhostname = \"127.0.0.1\"\nport = {}\ntoken_file = \"cp1.token\"\nca_file = \"ca.pem\"\n",
        whm.addr.port()
    );
    let servers = PanelServers::parse(&text, dir.path()).expect("valid");
    let error = cp1(&servers).create_login("abccotz").await.unwrap_err();
    assert!(
        matches!(&error, PanelError::Tls(m) if m.contains("not valid for name")),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let dir = TempDataDir::new();
    let servers = config(dir.path(), port, Some(&pki().ca_pem), "");
    let error = cp1(&servers).create_login("abccotz").await.unwrap_err();
    assert!(matches!(error, PanelError::Unreachable(_)), "{error:?}");
    assert_eq!(error.failure(), PanelFailure::Unreachable);
}

fn parse_error(text: &str, dir: &Path) -> String {
    match PanelServers::parse(text, dir) {
        Ok(servers) => panic!("accepted: {servers:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_server_needs_exactly_one_token_source_and_known_settings() {
    let dir = TempDataDir::new();
    std::fs::write(dir.path().join("t"), TOKEN).unwrap();
    assert_eq!(
        parse_error(
            "[servers.cp1]\nhostname = \"cp1.example.net\"\n",
            dir.path()
        ),
        "panel server `cp1`: give exactly one of token_file and token_env"
    );
    assert_eq!(
        parse_error(
            "[servers.cp1]\nhostname = \"cp1.example.net\"\ntoken_file = \"t\"\ntoken_env = \"X\"\n",
            dir.path()
        ),
        "panel server `cp1`: give exactly one of token_file and token_env"
    );
    assert!(parse_error(
        "[servers.cp1]\nhostname = \"cp1.example.net\"\ntoken_file = \"t\"\nverify = false\n",
        dir.path()
    )
    .starts_with("panel server `cp1`: unknown field `verify`"));
    assert_eq!(
        parse_error(
            "[servers.cp1]\nkind = \"plesk\"\nhostname = \"cp1.example.net\"\ntoken_file = \"t\"\n",
            dir.path()
        ),
        "panel server `cp1`: unknown panel kind `plesk`; the known kind is `cpanel`"
    );
    assert_eq!(
        parse_error(
            "[servers.cp1]\nhostname = \"https://cp1.example.net/\"\ntoken_file = \"t\"\n",
            dir.path()
        ),
        "panel server `cp1`: `https://cp1.example.net/` is not a host name or IP address"
    );
    assert!(matches!(
        PanelServers::parse(
            "[servers.cp1]\nhostname = \"cp1.example.net\"\ntoken_file = \"missing\"\n",
            dir.path()
        ),
        Err(PanelConfigError::Read { path, .. }) if path == dir.path().join("missing")
    ));
}

#[test]
fn a_configuration_file_names_its_servers_and_defaults_to_cpanel_on_2087() {
    let dir = TempDataDir::new();
    std::fs::write(dir.path().join("t"), TOKEN).unwrap();
    let path: PathBuf = dir.path().join("panels.toml");
    std::fs::write(
        &path,
        "[servers.cp1]\nhostname = \"cp1.example.net\"\ntoken_file = \"t\"\n\n[servers.cp2]\nhostname = \"cp2.example.net\"\ntoken_file = \"t\"\n",
    )
    .unwrap();
    let servers = PanelServers::load(&path).expect("valid");
    assert_eq!(servers.names().collect::<Vec<_>>(), vec!["cp1", "cp2"]);
    let cp1 = servers.get("cp1").unwrap();
    assert_eq!(cp1.kind(), "cpanel");
    let shown = format!("{cp1:?}");
    assert!(shown.contains("port: 2087"), "{shown}");
    assert!(!shown.contains(TOKEN), "{shown}");
}
