//! The gRPC API, package `onbehalf.v1`.
//!
//! API Boundary: requests are parsed here into domain values; nothing below this module sees a
//! protobuf message or a bearer token.

use std::sync::Arc;
use std::time::Duration;

use cqrs_es::Aggregate;
use onbehalf_events::{account_stream, EventSchema, Metadata, Permission};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::Digest;
use tokio::time::Instant;
use tonic::Request;
use uuid::Uuid;

use crate::auth::{Caller, Verifier};
use crate::domain::{AccountCommand, ClientAccount, Command, CommandContext, DomainError};
use crate::error::{Error, Result};
use crate::executor::{Executed, Execution, Executor, Idempotency, Loaded};
use crate::read::ReadSide;
use crate::store::Reservation;
use crate::tokens::InvitationTokens;

pub(crate) mod access;
pub(crate) mod accounts;
pub(crate) mod audit;
pub(crate) mod billing;
pub(crate) mod catalog;
pub(crate) mod convert;
pub(crate) mod history;
pub(crate) mod hosting;
pub(crate) mod invitations;
pub(crate) mod notifications;
pub(crate) mod status;
pub(crate) mod users;

/// Behaviour settings of the API.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long an invitation stays acceptable.
    pub invitation_ttl: chrono::Duration,
    /// The longest a read waits for its `min_position`, whatever the caller's deadline.
    pub max_wait: Duration,
    /// How many invitation tokens that name no invitation a caller may present within
    /// [`Settings::token_failure_window`] before its answers are refused.
    pub token_failures_allowed: usize,
    /// The window over which failed invitation tokens are counted.
    pub token_failure_window: Duration,
    /// The control-panel servers hosting services may be placed on, by name.
    pub panel_servers: crate::panel::PanelServers,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            invitation_ttl: chrono::Duration::days(7),
            max_wait: Duration::from_secs(5),
            token_failures_allowed: 10,
            token_failure_window: Duration::from_secs(15 * 60),
            panel_servers: crate::panel::PanelServers::default(),
        }
    }
}

/// Failed invitation-token attempts per caller, to make guessing costly.
#[derive(Debug, Default)]
pub(crate) struct TokenFailures(std::sync::Mutex<std::collections::HashMap<String, Vec<Instant>>>);

impl TokenFailures {
    /// Refuses the caller once it has reached `allowed` failures within `window`.
    // LIMITATION: counted per process; behind several replicas a caller gets `allowed` failures per replica.
    pub(crate) fn check(&self, caller: &str, allowed: usize, window: Duration) -> Result<()> {
        let mut failures = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Some(times) = failures.get_mut(caller) {
            times.retain(|t| now.duration_since(*t) < window);
            if times.len() >= allowed {
                return Err(Error::ResourceExhausted(
                    "too many invitation tokens that name no invitation; try again later".into(),
                ));
            }
        }
        Ok(())
    }

    /// Counts one failed attempt by `caller`.
    pub(crate) fn record(&self, caller: &str) {
        let mut failures = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Bound the table: forget callers whose failures have all aged out is done on check;
        // a flood of distinct callers only keeps the newest entries.
        if failures.len() > 100_000 {
            failures.clear();
        }
        failures
            .entry(caller.to_owned())
            .or_default()
            .push(Instant::now());
    }
}

/// Everything an RPC handler needs, shared by every service.
#[derive(Debug, Clone)]
pub struct App(Arc<AppInner>);

#[derive(Debug)]
struct AppInner {
    executor: Executor,
    read: ReadSide,
    tokens: Arc<InvitationTokens>,
    settings: Settings,
    token_failures: TokenFailures,
}

/// One authenticated call: who, with what envelope metadata, until when.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) caller: Caller,
    pub(crate) metadata: Metadata,
    pub(crate) deadline: Instant,
}

impl App {
    /// The API state over an executor and the read side.
    pub fn new(
        executor: Executor,
        read: ReadSide,
        tokens: Arc<InvitationTokens>,
        settings: Settings,
    ) -> Self {
        Self(Arc::new(AppInner {
            executor,
            read,
            tokens,
            settings,
            token_failures: TokenFailures::default(),
        }))
    }

    pub(crate) fn executor(&self) -> &Executor {
        &self.0.executor
    }

    pub(crate) fn tokens(&self) -> &InvitationTokens {
        &self.0.tokens
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.0.settings
    }

    /// Verifies an invitation token for `call`'s caller, refusing a caller that has presented
    /// too many tokens naming no invitation lately.
    pub(crate) fn verify_invitation_token(
        &self,
        call: &Call,
        token: &str,
    ) -> Result<crate::tokens::TokenClaims> {
        let caller = call.caller.actor.to_string();
        let settings = &self.0.settings;
        self.0
            .token_failures
            .check(&caller, settings.token_failures_allowed, settings.token_failure_window)
            .inspect_err(|_| {
                tracing::warn!(actor = %caller, "refusing a caller that presented many invalid invitation tokens");
            })?;
        self.0
            .tokens
            .verify(token)
            .inspect_err(|_| self.0.token_failures.record(&caller))
    }

    /// Authenticates a request (the interceptor has verified the token) and reads its context.
    pub(crate) fn call<T>(&self, request: &Request<T>) -> Result<Call> {
        let caller = request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Error::Unauthenticated("missing bearer token".into()))?;
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(256).collect::<String>())
                .filter(|v| !v.is_empty())
        };
        tracing::Span::current().record("actor", tracing::field::display(&caller.actor));
        let mut metadata = Metadata::new(caller.actor.clone());
        metadata.client_address = header("x-client-address")
            .map(|raw| {
                let ip = raw
                    .parse::<std::net::IpAddr>()
                    .ok()
                    .or_else(|| raw.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()));
                ip.map(|ip| ip.to_string()).ok_or_else(|| {
                    Error::invalid(
                        "x-client-address",
                        "must be one IP address, as `203.0.113.7`",
                    )
                })
            })
            .transpose()?;
        metadata.user_agent = header("x-end-user-agent");
        if matches!(caller.actor, onbehalf_events::Actor::Staff(_)) {
            metadata.reason = Some(staff_reason(request.metadata())?);
        }
        // tonic cancels the call when the caller's own deadline passes, so the wait ends a
        // little earlier, leaving time to answer DEADLINE_EXCEEDED before that.
        let wait = grpc_timeout(request.metadata()).map_or(self.0.settings.max_wait, |t| {
            let margin = (t / 10).clamp(Duration::from_millis(5), Duration::from_millis(200));
            t.saturating_sub(margin).min(self.0.settings.max_wait)
        });
        Ok(Call {
            caller,
            metadata,
            deadline: Instant::now() + wait,
        })
    }

    /// Waits for the read models to reach `min_position`, then reads them.
    pub(crate) async fn read<T>(
        &self,
        call: &Call,
        min_position: u64,
        read: impl FnOnce(&onbehalf_projections::ReadModels) -> T,
    ) -> Result<T> {
        self.0.read.read(min_position, call.deadline, read).await
    }

    /// Loads a client account from the log; `NOT_FOUND` if it does not exist.
    pub(crate) async fn load_account(&self, account_id: Uuid) -> Result<Loaded<ClientAccount>> {
        let loaded: Loaded<ClientAccount> =
            self.0.executor.load(&account_stream(account_id)).await?;
        if !loaded.aggregate.exists() {
            return Err(Error::NotFound("account not found".into()));
        }
        Ok(loaded)
    }

    /// Loads an account and checks, on its current state, that the caller is its owner or a
    /// member holding `permission` (`None`: any member).
    pub(crate) async fn authorize_read(
        &self,
        call: &Call,
        account_id: Uuid,
        permission: Option<Permission>,
    ) -> Result<Loaded<ClientAccount>> {
        let loaded = self.load_account(account_id).await?;
        let account = &loaded.aggregate;
        let user_id = call.caller.actor.user_id().ok_or_else(|| {
            Error::PermissionDenied("caller is not the owner or a member of this account".into())
        })?;
        match (account.permissions_of(user_id), permission) {
            (None, _) => Err(Error::PermissionDenied(
                "caller is not the owner or a member of this account".into(),
            )),
            (Some(_), None) => Ok(loaded),
            (Some(held), Some(p)) if held.contains(p) => Ok(loaded),
            (Some(_), Some(p)) => Err(Error::PermissionDenied(format!(
                "caller lacks the {p} permission"
            ))),
        }
    }

    /// Loads an account and checks, on its current state, that the caller is its owner.
    pub(crate) async fn authorize_owner(
        &self,
        call: &Call,
        account_id: Uuid,
        what: &str,
    ) -> Result<Loaded<ClientAccount>> {
        let loaded = self.load_account(account_id).await?;
        match call.caller.actor.user_id() {
            Some(user_id) if loaded.aggregate.owner == Some(user_id) => Ok(loaded),
            _ => Err(Error::PermissionDenied(format!(
                "only the account owner {what}"
            ))),
        }
    }

    /// Executes a command on a client account's stream.
    pub(crate) async fn execute_account<T, F>(
        &self,
        call: &Call,
        account_id: Uuid,
        body: AccountCommand,
        idempotency: Option<Idempotency>,
        outcome: F,
    ) -> Result<Executed<T>>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(&ClientAccount) -> Result<T>,
    {
        let span = tracing::Span::current();
        span.record("account_id", tracing::field::display(account_id));
        if let Some(key) = &idempotency {
            span.record("request_id", key.request_id.as_str());
        }
        let mut metadata = call.metadata.clone();
        metadata.on_behalf_of = Some(account_id);
        metadata.permission = body
            .required_permission()
            .filter(|_| call.caller.actor.user_id().is_some());
        self.execute::<ClientAccount, T, F>(
            call,
            account_stream(account_id),
            body,
            metadata,
            idempotency,
            vec![],
            outcome,
        )
        .await
    }

    /// Executes a command on any stream.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn execute<A, T, F>(
        &self,
        call: &Call,
        stream_id: String,
        body: <A::Command as CommandBody>::Body,
        metadata: Metadata,
        idempotency: Option<Idempotency>,
        reservations: Vec<Reservation>,
        outcome: F,
    ) -> Result<Executed<T>>
    where
        A: Aggregate<Error = DomainError, Services = ()>
            + crate::domain::UniqueKeys
            + Clone
            + 'static,
        A::Command: CommandBody + Clone,
        A::Event: EventSchema,
        T: Serialize + DeserializeOwned,
        F: Fn(&A) -> Result<T>,
    {
        let context = CommandContext {
            actor: call.caller.actor.clone(),
            now: self.0.executor.clock().now(),
        };
        let command = <A::Command as CommandBody>::wrap(context, body);
        let execution = Execution {
            stream_id,
            command,
            metadata,
            idempotency,
            reservations,
        };
        self.0.executor.execute(execution, outcome).await
    }
}

/// A command type built from a context and a body.
pub(crate) trait CommandBody {
    type Body;
    fn wrap(context: CommandContext, body: Self::Body) -> Self;
}

impl<C> CommandBody for Command<C> {
    type Body = C;
    fn wrap(context: CommandContext, body: C) -> Self {
        Command { context, body }
    }
}

/// The idempotency key of a request: its request id and a digest of the rest of it.
///
/// `message` must be the request with its `request_id` field cleared.
pub(crate) fn idempotency<M: prost::Message>(
    method: &str,
    request_id: &str,
    message: &M,
) -> Result<Option<Idempotency>> {
    let Some(request_id) = convert::request_id(request_id)? else {
        return Ok(None);
    };
    let mut digest = sha2::Sha256::new();
    digest.update(method.as_bytes());
    digest.update([0u8]);
    digest.update(message.encode_to_vec());
    let request_hash = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Some(Idempotency {
        request_id,
        request_hash,
    }))
}

/// The metadata key in which provider staff state why they act.
pub const REASON_HEADER: &str = "x-onbehalf-reason";

/// The longest stated reason, in characters.
const MAX_REASON_CHARS: usize = 256;

/// The reason a staff caller states for its call: required, printable ASCII (gRPC metadata),
/// 1 to 256 characters once trimmed.
// LIMITATION: the reason is free text kept in the envelope as stated, so it is not sealed like personal fields; staff must not write personal data into it.
fn staff_reason(metadata: &tonic::metadata::MetadataMap) -> Result<String> {
    let refuse = |why: &str| Error::invalid(REASON_HEADER, why.to_owned());
    let raw = metadata
        .get(REASON_HEADER)
        .ok_or_else(|| refuse("provider staff must state a reason for acting on an account"))?;
    let text = raw
        .to_str()
        .map_err(|_| refuse("must be printable ASCII"))?
        .trim();
    if text.is_empty() {
        return Err(refuse(
            "provider staff must state a reason for acting on an account",
        ));
    }
    if text.chars().count() > MAX_REASON_CHARS || text.chars().any(|c| c.is_ascii_control()) {
        return Err(refuse("must be at most 256 printable characters"));
    }
    Ok(text.to_owned())
}

/// The caller's deadline from the `grpc-timeout` header, if it sent one.
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let raw = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = raw.split_at(raw.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The verifier in force, swapped whole when the keys are reloaded.
pub type SharedVerifier = Arc<std::sync::RwLock<Arc<Verifier>>>;

/// Builds the interceptor that authenticates every request with a bearer token.
pub fn authenticator(
    verifier: SharedVerifier,
) -> impl Fn(Request<()>) -> std::result::Result<Request<()>, tonic::Status> + Clone {
    move |mut request: Request<()>| {
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| tonic::Status::unauthenticated("missing bearer token"))?;
        let value = header
            .to_str()
            .map_err(|_| tonic::Status::unauthenticated("malformed authorization header"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                tonic::Status::unauthenticated("authorization must be `Bearer <token>`")
            })?;
        let current = verifier.read().unwrap_or_else(|p| p.into_inner()).clone();
        let caller = current.verify(token.trim()).map_err(tonic::Status::from)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// Turns a service-level result into a tonic response.
pub(crate) fn respond<T>(
    result: Result<T>,
) -> std::result::Result<tonic::Response<T>, tonic::Status> {
    result
        .map(tonic::Response::new)
        .map_err(tonic::Status::from)
}
