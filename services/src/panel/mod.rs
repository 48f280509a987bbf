//! Control panels: opening a session in the panel of a hosting service, on the server the
//! provisioning system placed it on.
//!
//! A panel is one implementation of [`ControlPanel`]; [`cpanel`] speaks WHM API 1. Servers are
//! configured by name in a TOML file ([`PanelServers::load`]); a service names its server in
//! its `ServiceActivated` event, and the gRPC layer looks the name up here.
//!
//! Architecture Invariant: nothing here writes to the log or decides who may log in; the
//! caller has decided that on the client account before a panel is asked.
//! Session URLs and API tokens never reach a log line, an error message or a `Debug` output.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use onbehalf_events::account::PanelFailure;
use serde::Deserialize;

pub mod cpanel;

/// A session a control panel opened: a one-time login URL and when it stops working.
///
/// `Debug` never prints the URL, which is the session's secret.
#[derive(Clone, PartialEq, Eq)]
pub struct PanelLogin {
    url: String,
    /// When the session expires, as the panel says.
    pub expires_at: DateTime<Utc>,
}

impl PanelLogin {
    /// A login at `url` that expires at `expires_at`.
    pub fn new(url: String, expires_at: DateTime<Utc>) -> Self {
        Self { url, expires_at }
    }

    /// The login URL, to hand to the user's browser and nowhere else.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl fmt::Debug for PanelLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PanelLogin")
            .field("url", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why a panel did not open a session. Messages hold no URL, token or response body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PanelError {
    /// The server could not be reached.
    #[error("the control panel cannot be reached: {0}")]
    Unreachable(String),
    /// The server did not answer within the configured time.
    #[error("the control panel did not answer within {0:?}")]
    Timeout(Duration),
    /// The TLS handshake failed.
    #[error("TLS with the control panel failed: {0}")]
    Tls(String),
    /// The panel refused the provider's API credentials (HTTP 401 or 403).
    #[error("the control panel refused the provider's API token (HTTP {0})")]
    Unauthorized(u16),
    /// The panel answered with another HTTP error status.
    #[error("the control panel answered HTTP {0}")]
    HttpStatus(u16),
    /// The answer is not what the panel's API documents.
    #[error("the control panel's answer is not understood: {0}")]
    InvalidResponse(String),
    /// The panel understood the request and declined it, with its reason.
    #[error("the control panel declined to open a session: {0}")]
    Refused(String),
}

impl PanelError {
    /// The kind the log records for this failure.
    pub fn failure(&self) -> PanelFailure {
        match self {
            PanelError::Unreachable(_) => PanelFailure::Unreachable,
            PanelError::Timeout(_) => PanelFailure::Timeout,
            PanelError::Tls(_) => PanelFailure::Tls,
            PanelError::Unauthorized(_) => PanelFailure::Unauthorized,
            PanelError::HttpStatus(_) => PanelFailure::HttpStatus,
            PanelError::InvalidResponse(_) => PanelFailure::InvalidResponse,
            PanelError::Refused(_) => PanelFailure::Refused,
        }
    }
}

/// One control-panel server, able to open a session for one of its panel users.
#[async_trait::async_trait]
pub trait ControlPanel: Send + Sync + fmt::Debug {
    /// The panel software, as configuration names it (`cpanel`).
    fn kind(&self) -> &'static str;

    /// Opens a session for `panel_username` and returns its login URL, which names the host as
    /// configured, never as the panel chose to spell it.
    async fn create_login(&self, panel_username: &str) -> Result<PanelLogin, PanelError>;
}

/// Why the panel configuration cannot be used. Messages never include a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PanelConfigError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML of the expected shape.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// One server's settings are unusable.
    #[error("panel server `{server}`: {message}")]
    Invalid {
        /// The server's name.
        server: String,
        /// What is wrong.
        message: String,
    },
}

/// Whether `name` can name a panel server: 1 to 64 ASCII letters, digits, `-`, `_` or `.`.
pub fn is_valid_server_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The configured panel servers by name. Empty by default: no service can be activated.
#[derive(Clone, Default)]
pub struct PanelServers {
    servers: BTreeMap<String, Arc<dyn ControlPanel>>,
}

impl fmt::Debug for PanelServers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.servers.iter()).finish()
    }
}

/// The configuration file: a table of servers by name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    servers: BTreeMap<String, ServerEntry>,
}

/// One server's table: the panel kind and its own settings.
#[derive(Debug, Deserialize)]
struct ServerEntry {
    #[serde(default = "default_kind")]
    kind: String,
    #[serde(flatten)]
    settings: toml::Table,
}

fn default_kind() -> String {
    "cpanel".into()
}

impl PanelServers {
    /// No servers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the servers of a TOML file (see `docs/api.md`). Relative paths in it are taken
    /// from the file's directory; tokens are read now, from their files or environment
    /// variables, so that a missing token stops the server at start rather than at a login.
    pub fn load(path: &Path) -> Result<Self, PanelConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| PanelConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::parse(&text, base).map_err(|e| match e {
            PanelConfigError::Parse { message, .. } => PanelConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Reads servers from TOML text; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, PanelConfigError> {
        let parse_error = |message: String| PanelConfigError::Parse {
            path: PathBuf::from("<panel servers>"),
            message,
        };
        let file: ConfigFile = toml::from_str(text).map_err(|e| parse_error(e.to_string()))?;
        let mut servers = Self::new();
        for (name, entry) in file.servers {
            if !is_valid_server_name(&name) {
                return Err(PanelConfigError::Invalid {
                    server: name,
                    message: "a server name is 1 to 64 letters, digits, `-`, `_` or `.`".into(),
                });
            }
            let panel: Arc<dyn ControlPanel> = match entry.kind.as_str() {
                "cpanel" => {
                    let settings: cpanel::CpanelSettings = toml::Value::Table(entry.settings)
                        .try_into()
                        .map_err(|e: toml::de::Error| PanelConfigError::Invalid {
                            server: name.clone(),
                            message: e.message().to_owned(),
                        })?;
                    Arc::new(cpanel::CpanelServer::new(&name, settings, base)?)
                }
                other => {
                    return Err(PanelConfigError::Invalid {
                        server: name,
                        message: format!(
                            "unknown panel kind `{other}`; the known kind is `cpanel`"
                        ),
                    })
                }
            };
            servers.insert(&name, panel);
        }
        Ok(servers)
    }

    /// Adds or replaces the server `name`.
    pub fn insert(&mut self, name: &str, panel: Arc<dyn ControlPanel>) {
        self.servers.insert(name.to_owned(), panel);
    }

    /// The server `name`, if configured.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn ControlPanel>> {
        self.servers.get(name)
    }

    /// Whether `name` is configured.
    pub fn contains(&self, name: &str) -> bool {
        self.servers.contains_key(name)
    }

    /// The configured names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.servers.keys().map(String::as_str)
    }

    /// Whether no server is configured.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }
}
