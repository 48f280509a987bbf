//! cPanel & WHM: a session opened with WHM API 1 `create_user_session` (service `cpaneld`).
//!
//! One HTTPS request per login: `GET /json-api/create_user_session?api.version=1&user=<panel
//! user>&service=cpaneld` on the WHM port, authenticated by `Authorization: whm <user>:<API
//! token>`. WHM answers `{"data": {"url", "expires", ...}, "metadata": {"result", "reason"}}`;
//! `metadata.result` is 1 when the session was created.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::DateTime;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::{ControlPanel, PanelConfigError, PanelError, PanelLogin};

/// WHM's secure port.
pub const DEFAULT_PORT: u16 = 2087;
/// How long a login may take, from connecting to the whole answer, unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read; WHM's is well under 2 KiB.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The longest reason from the panel kept for the log and the error.
const MAX_REASON_CHARS: usize = 200;

/// One server's table in the panel configuration file. Holds no secret: the token is named by
/// file or variable, and read by [`CpanelServer::new`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpanelSettings {
    /// The server's host name: where to connect, the name its certificate must carry, and the
    /// host of every login URL.
    pub hostname: String,
    /// WHM's port (default 2087).
    #[serde(default = "default_port")]
    pub port: u16,
    /// The WHM user the API token belongs to (default `root`).
    #[serde(default = "default_whm_user")]
    pub whm_user: String,
    /// A file holding the API token (surrounding whitespace ignored).
    pub token_file: Option<PathBuf>,
    /// An environment variable holding the API token.
    pub token_env: Option<String>,
    /// Whether the server's certificate is verified (default true).
    #[serde(default = "default_true")]
    pub verify_tls: bool,
    /// A PEM file of CA certificates to trust instead of the system's, for a private CA.
    pub ca_file: Option<PathBuf>,
    /// Seconds a login may take in all (default 10).
    pub timeout_seconds: Option<u64>,
}

fn default_port() -> u16 {
    DEFAULT_PORT
}

fn default_whm_user() -> String {
    "root".into()
}

fn default_true() -> bool {
    true
}

/// A WHM API token. `Debug` never prints it.
#[derive(Clone)]
struct ApiToken(String);

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A cPanel & WHM server, ready to open sessions. `Debug` shows where it is, never its token.
#[derive(Clone)]
pub struct CpanelServer {
    name: String,
    hostname: String,
    port: u16,
    whm_user: String,
    token: ApiToken,
    verify_tls: bool,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl fmt::Debug for CpanelServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpanelServer")
            .field("name", &self.name)
            .field("hostname", &self.hostname)
            .field("port", &self.port)
            .field("whm_user", &self.whm_user)
            .field("token", &self.token)
            .field("verify_tls", &self.verify_tls)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl CpanelServer {
    /// The server `name` from its settings; relative file paths are taken from `base`. Reads
    /// the token and the CA file now.
    pub fn new(
        name: &str,
        settings: CpanelSettings,
        base: &Path,
    ) -> Result<Self, PanelConfigError> {
        let invalid = |message: String| PanelConfigError::Invalid {
            server: name.to_owned(),
            message,
        };
        let hostname = settings.hostname.trim().to_ascii_lowercase();
        if ServerName::try_from(hostname.clone()).is_err() {
            return Err(invalid(format!(
                "`{}` is not a host name or IP address",
                settings.hostname
            )));
        }
        if settings.port == 0 {
            return Err(invalid("port must not be 0".into()));
        }
        if settings.whm_user.is_empty()
            || !settings
                .whm_user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(invalid("whm_user must be a WHM user name".into()));
        }
        let token = match (&settings.token_file, &settings.token_env) {
            (Some(file), None) => {
                let path = base.join(file);
                let text =
                    std::fs::read_to_string(&path).map_err(|source| PanelConfigError::Read {
                        path: path.clone(),
                        source,
                    })?;
                text.trim().to_owned()
            }
            (None, Some(var)) => std::env::var(var)
                .map_err(|_| invalid(format!("the environment variable `{var}` is not set")))?
                .trim()
                .to_owned(),
            _ => {
                return Err(invalid(
                    "give exactly one of token_file and token_env".into(),
                ))
            }
        };
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "the API token must be printable ASCII without spaces".into(),
            ));
        }
        let timeout = match settings.timeout_seconds {
            None => DEFAULT_TIMEOUT,
            Some(0) => return Err(invalid("timeout_seconds must be at least 1".into())),
            Some(s) => Duration::from_secs(s),
        };
        let ca_file = settings.ca_file.as_ref().map(|f| base.join(f));
        let tls = tls_config(settings.verify_tls, ca_file.as_deref()).map_err(|e| match e {
            TlsSetup::Read(path, source) => PanelConfigError::Read { path, source },
            TlsSetup::Invalid(message) => invalid(message),
        })?;
        if !settings.verify_tls {
            tracing::warn!(
                server = name,
                "TLS verification is off for this panel server"
            );
        }
        Ok(Self {
            name: name.to_owned(),
            hostname,
            port: settings.port,
            whm_user: settings.whm_user,
            token: ApiToken(token),
            verify_tls: settings.verify_tls,
            tls,
            timeout,
        })
    }

    /// The configured host name.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The host as it appears in a URL authority (IPv6 addresses in brackets).
    fn url_host(&self) -> String {
        match self.hostname.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => self.hostname.clone(),
        }
    }

    async fn request(&self, panel_username: &str) -> Result<PanelLogin, PanelError> {
        let tcp = tokio::net::TcpStream::connect((self.hostname.as_str(), self.port))
            .await
            .map_err(|e| PanelError::Unreachable(e.to_string()))?;
        let server_name = ServerName::try_from(self.hostname.clone())
            .map_err(|e| PanelError::Tls(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(server_name, tcp)
            .await
            .map_err(classify_handshake)?;

        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
                .await
                .map_err(|e| PanelError::Unreachable(e.to_string()))?;
        // The connection is driven beside the request and ends with it, also on a timeout.
        let driver = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));

        let path = format!(
            "/json-api/create_user_session?api.version=1&user={}&service=cpaneld",
            query_escape(panel_username)
        );
        let mut authorization =
            http::HeaderValue::from_str(&format!("whm {}:{}", self.whm_user, self.token.0))
                .map_err(|_| PanelError::Unauthorized(0))?;
        authorization.set_sensitive(true);
        let request = http::Request::get(path)
            .header(
                http::header::HOST,
                format!("{}:{}", self.url_host(), self.port),
            )
            .header(http::header::AUTHORIZATION, authorization)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| PanelError::InvalidResponse(format!("cannot build the request: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| PanelError::Unreachable(format!("the connection failed: {e}")))?;

        let status = response.status();
        if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
            return Err(PanelError::Unauthorized(status.as_u16()));
        }
        if !status.is_success() {
            return Err(PanelError::HttpStatus(status.as_u16()));
        }
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|_| {
                PanelError::InvalidResponse("the answer is cut short or too large".into())
            })?
            .to_bytes();
        drop(driver);
        self.read_answer(&body)
    }

    /// The login of a WHM answer, with the URL's host rewritten to the configured one.
    fn read_answer(&self, body: &[u8]) -> Result<PanelLogin, PanelError> {
        let answer: Answer = serde_json::from_slice(body)
            .map_err(|_| PanelError::InvalidResponse("the answer is not WHM API 1 JSON".into()))?;
        let metadata = answer
            .metadata
            .ok_or_else(|| PanelError::InvalidResponse("the answer has no `metadata`".into()))?;
        if as_integer(&metadata.result) != Some(1) {
            let reason = metadata.reason.unwrap_or_default();
            let reason: String = reason
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_REASON_CHARS)
                .collect();
            return Err(PanelError::Refused(if reason.is_empty() {
                "no reason given".into()
            } else {
                reason
            }));
        }
        let data = answer
            .data
            .ok_or_else(|| PanelError::InvalidResponse("the answer has no `data`".into()))?;
        let url = data
            .url
            .ok_or_else(|| PanelError::InvalidResponse("the answer has no `data.url`".into()))?;
        let expires = data
            .expires
            .as_ref()
            .and_then(as_integer)
            .and_then(|secs| DateTime::from_timestamp(secs, 0))
            .ok_or_else(|| {
                PanelError::InvalidResponse("`data.expires` is not a time in seconds".into())
            })?;
        Ok(PanelLogin::new(self.rewrite_host(&url)?, expires))
    }

    /// `url` with its host replaced by the configured host name, keeping its port, path and
    /// query: WHM may spell its own address as an IP, which would not match its certificate.
    fn rewrite_host(&self, url: &str) -> Result<String, PanelError> {
        let bad = |what: &str| PanelError::InvalidResponse(format!("`data.url` {what}"));
        let uri: http::Uri = url.parse().map_err(|_| bad("is not a URL"))?;
        if uri.scheme() != Some(&http::uri::Scheme::HTTPS) {
            return Err(bad("is not an https URL"));
        }
        let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("carries user information"));
        }
        let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
        let host = self.url_host();
        Ok(match authority.port_u16() {
            Some(port) => format!("https://{host}:{port}{path_and_query}"),
            None => format!("https://{host}{path_and_query}"),
        })
    }
}

#[async_trait::async_trait]
impl ControlPanel for CpanelServer {
    fn kind(&self) -> &'static str {
        "cpanel"
    }

    async fn create_login(&self, panel_username: &str) -> Result<PanelLogin, PanelError> {
        match tokio::time::timeout(self.timeout, self.request(panel_username)).await {
            Ok(result) => result,
            Err(_) => Err(PanelError::Timeout(self.timeout)),
        }
    }
}

/// WHM API 1's answer, as far as a login needs it.
#[derive(Deserialize)]
struct Answer {
    metadata: Option<AnswerMetadata>,
    data: Option<SessionData>,
}

#[derive(Deserialize)]
struct AnswerMetadata {
    #[serde(default)]
    result: serde_json::Value,
    reason: Option<String>,
}

#[derive(Deserialize)]
struct SessionData {
    url: Option<String>,
    expires: Option<serde_json::Value>,
}

/// A JSON number or a string of digits, as WHM writes flags and times.
fn as_integer(value: &serde_json::Value) -> Option<i64> {
    match value {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for a query value.
fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Aborts the task when dropped, so no connection outlives its request.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A failed handshake: a TLS fault when rustls says so, otherwise the connection's.
fn classify_handshake(e: std::io::Error) -> PanelError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => PanelError::Tls(tls.to_string()),
        None => PanelError::Unreachable(format!("the connection failed during TLS: {e}")),
    }
}

enum TlsSetup {
    Read(PathBuf, std::io::Error),
    Invalid(String),
}

/// The TLS client settings of one server: the system's roots or the given CA file, or no
/// verification at all when `verify` is off.
fn tls_config(verify: bool, ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsSetup> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetup::Invalid(e.to_string()))?;
    if !verify {
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth();
        return Ok(Arc::new(config));
    }
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| TlsSetup::Read(path.to_owned(), e))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    TlsSetup::Invalid(format!("{} is not PEM certificates: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    TlsSetup::Invalid(format!("{} holds an unusable CA: {e}", path.display()))
                })?;
            }
            if roots.is_empty() {
                return Err(TlsSetup::Invalid(format!(
                    "{} holds no certificate",
                    path.display()
                )));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                tracing::warn!(
                    "no system CA certificates found; panel servers without ca_file will fail TLS"
                );
            }
        }
    }
    Ok(Arc::new(
        builder.with_root_certificates(roots).with_no_client_auth(),
    ))
}

/// Accepts any certificate; only for `verify_tls = false`. Handshake signatures are still
/// checked, so the peer must hold the key of the certificate it shows.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(hostname: &str) -> CpanelServer {
        CpanelServer {
            name: "cp1".into(),
            hostname: hostname.into(),
            port: DEFAULT_PORT,
            whm_user: "root".into(),
            token: ApiToken("SECRETTOKEN".into()),
            verify_tls: true,
            tls: tls_config(false, None).unwrap_or_else(|_| panic!("tls config")),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    #[test]
    fn the_login_url_takes_the_configured_host_and_keeps_port_path_and_query() {
        let url = server("cp1.example.net")
            .rewrite_host("https://192.0.2.10:2083/cpsess0123456789/login/?session=u%3ax%2cy")
            .unwrap();
        assert_eq!(
            url,
            "https://cp1.example.net:2083/cpsess0123456789/login/?session=u%3ax%2cy"
        );
        assert_eq!(
            server("2001:db8::1")
                .rewrite_host("https://h/x?y=1")
                .unwrap(),
            "https://[2001:db8::1]/x?y=1"
        );
    }

    #[test]
    fn a_login_url_that_is_not_https_is_refused() {
        assert_eq!(
            server("cp1.example.net").rewrite_host("http://192.0.2.10:2082/login/?session=x"),
            Err(PanelError::InvalidResponse(
                "`data.url` is not an https URL".into()
            ))
        );
    }

    #[test]
    fn debug_never_prints_the_token() {
        let shown = format!("{:?}", server("cp1.example.net"));
        assert!(!shown.contains("SECRETTOKEN"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_escape("abc123"), "abc123");
        assert_eq!(query_escape("a&b=c d"), "a%26b%3Dc%20d");
    }
}
