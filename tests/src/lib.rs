//! End-to-end test harness: the real onbehalf server, spawned on a free loopback port, driven
//! over gRPC with signed bearer tokens.
//!
//! Each [`TestServer`] owns everything it runs on: a fresh data directory, a fresh PostgreSQL
//! database when the log lives there, and a [`ManualClock`] that stands still until a test moves
//! it. Nothing is shared between two servers, so tests never see each other's events.
//!
//! Scenarios are written once as `async fn scenario(server: &TestServer)` and run on every store
//! backend with [`on_both_backends!`].

#![warn(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    rust_2018_idioms
)]

pub mod authz;
pub mod mail;
pub mod whm;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use onbehalf::auth::{self, Signer};
use onbehalf::clock::ManualClock;
use onbehalf::server::{self, RunningServer, ServerConfig};
use onbehalf::store::EventStore;
use onbehalf::testing::{postgres_test_database, TempDataDir, TestDatabase};
use onbehalf_proto::v1 as pb;
use pb::access_service_client::AccessServiceClient;
use pb::account_service_client::AccountServiceClient;
use pb::audit_service_client::AuditServiceClient;
use pb::billing_service_client::BillingServiceClient;
use pb::catalog_service_client::CatalogServiceClient;
use pb::history_service_client::HistoryServiceClient;
use pb::hosting_service_client::HostingServiceClient;
use pb::invitation_service_client::InvitationServiceClient;
use pb::notification_service_client::NotificationServiceClient;
use pb::user_service_client::UserServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Response, Status};
use tonic_types::StatusExt;

/// The agency's master login in the walkthrough.
pub const DESIGNER: &str = "designer@yourcompany.com";

/// The longest a read waits for its `min_position` on a test server.
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// The largest request message a test server accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Every scope a service token can carry.
pub const ALL_SCOPES: &[&str] = &[
    "users:register",
    "users:erase",
    "catalog:write",
    "billing:write",
    "notifications:read",
    "audit:read",
    "access:check",
    "events:read",
    "services:provision",
];

/// The currency of the test catalogue.
pub const CURRENCY: &str = "TZS";
/// One year of the catalogue's hosting plan, in minor units.
pub const HOSTING_ANNUAL_MINOR: i64 = 15_000_000;
/// One month of the catalogue's hosting plan, in minor units.
pub const HOSTING_MONTHLY_MINOR: i64 = 1_500_000;
/// One year of a `.co.tz` registration, in minor units.
pub const DOMAIN_ANNUAL_MINOR: i64 = 3_000_000;

/// What the [`ManualClock`] of every test server shows when it starts: Monday 3 March 2025,
/// 09:00 UTC.
pub fn start_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 3, 9, 0, 0)
        .single()
        .expect("a valid date")
}

/// A calendar date as the API spells it.
pub fn date(year: i32, month: i32, day: i32) -> pb::Date {
    pb::Date { year, month, day }
}

/// All 13 permissions in their proto order: what "full access" grants.
pub fn full_access() -> Vec<i32> {
    (pb::Permission::Profile as i32..=pb::Permission::Orders as i32).collect()
}

/// A fresh request id, unique across every test.
pub fn request_id() -> String {
    format!("req-{}", uuid::Uuid::new_v4())
}

/// Which event store a test server keeps its log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite store in the data directory.
    Sqlite,
    /// A PostgreSQL database of the test's own.
    Postgres,
}

/// The real server on `127.0.0.1:<free port>`, with its own log, keys and clock.
///
/// Dropping it removes its data directory and its database (ending the server's sessions
/// there); the server task itself ends with the test's runtime.
pub struct TestServer {
    /// The clock every decision of the server reads; tests move it with `advance`.
    pub clock: ManualClock,
    /// A connection to the server, shared by every client the harness hands out.
    pub channel: Channel,
    /// Where the log lives.
    pub backend: Backend,
    signer: Signer,
    signing_key: PathBuf,
    observer: Arc<dyn EventStore>,
    _running: RunningServer,
    database: Option<TestDatabase>,
    data_dir: TempDataDir,
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServer")
            .field("backend", &self.backend)
            .field("data_dir", &self.data_dir.path())
            .field("database", &self.database.as_ref().map(TestDatabase::name))
            .finish_non_exhaustive()
    }
}

impl TestServer {
    /// A server whose log is an SQLite database in a fresh data directory.
    ///
    /// Panics if it cannot start: no test can run without it.
    pub async fn sqlite() -> TestServer {
        Self::start(Backend::Sqlite, None).await
    }

    /// A server whose log is a fresh PostgreSQL database, or `None` (after printing
    /// `skipped: ...`) when PostgreSQL cannot be reached and `ONBEHALF_REQUIRE_SERVICES` is not
    /// `1`.
    pub async fn postgres() -> Option<TestServer> {
        let database = postgres_test_database().await?;
        Some(Self::start(Backend::Postgres, Some(database)).await)
    }

    /// As [`TestServer::sqlite`], with the configuration changed by `configure` before the
    /// server starts (e.g. to give it control-panel servers).
    pub async fn sqlite_with(configure: impl FnOnce(&mut ServerConfig)) -> TestServer {
        Self::start_with(Backend::Sqlite, None, configure).await
    }

    /// As [`TestServer::postgres`], with the configuration changed by `configure`.
    pub async fn postgres_with(configure: impl FnOnce(&mut ServerConfig)) -> Option<TestServer> {
        let database = postgres_test_database().await?;
        Some(Self::start_with(Backend::Postgres, Some(database), configure).await)
    }

    async fn start(backend: Backend, database: Option<TestDatabase>) -> TestServer {
        Self::start_with(backend, database, |_| {}).await
    }

    async fn start_with(
        backend: Backend,
        database: Option<TestDatabase>,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        let data_dir = TempDataDir::new();
        let clock = ManualClock::new(start_time());
        let mut config = ServerConfig::new(data_dir.path());
        config.listen = "127.0.0.1:0".parse().expect("a socket address");
        config.database_url = database.as_ref().map(|db| db.url.clone());
        config.clock = Arc::new(clock.clone());
        config.settings.max_wait = MAX_WAIT;
        config.max_message_bytes = MAX_MESSAGE_BYTES;
        configure(&mut config);

        let running = server::spawn(config.clone())
            .await
            .expect("the server starts");
        // A second handle on the same log, to see what was durably appended independently of
        // the server's read models.
        let observer = server::open_store(&config)
            .await
            .expect("the log opens a second time");
        let signing_key = auth::find_signing_key(&auth::keys_dir(data_dir.path()))
            .expect("the key directory is readable")
            .expect("the server created a signing key");
        let signer = Signer::load(&signing_key, auth::DEFAULT_ISSUER, auth::DEFAULT_ISSUER)
            .expect("the signing key loads");
        let channel = Channel::from_shared(format!("http://{}", running.addr))
            .expect("a valid URI")
            .connect()
            .await
            .expect("the server accepts connections");

        TestServer {
            clock,
            channel,
            backend,
            signer,
            signing_key,
            observer,
            _running: running,
            database,
            data_dir,
        }
    }

    /// The PostgreSQL database of this server, if its log lives there.
    pub fn database(&self) -> Option<&TestDatabase> {
        self.database.as_ref()
    }

    /// The server's data directory: its SQLite log (`events.db`), keys and secrets.
    pub fn data_dir(&self) -> &std::path::Path {
        self.data_dir.path()
    }

    /// Starts a second server on this server's log, data directory and clock, as a restart
    /// does: it rebuilds every read model from the log. Returns it with clients acting there as
    /// a service that holds every scope.
    pub async fn restarted(&self) -> (RunningServer, Clients) {
        let mut config = ServerConfig::new(self.data_dir.path());
        config.listen = "127.0.0.1:0".parse().expect("a socket address");
        config.database_url = self.database.as_ref().map(|db| db.url.clone());
        config.clock = Arc::new(self.clock.clone());
        config.settings.max_wait = MAX_WAIT;
        config.max_message_bytes = MAX_MESSAGE_BYTES;
        let running = server::spawn(config)
            .await
            .expect("the server starts again");
        let channel = Channel::from_shared(format!("http://{}", running.addr))
            .expect("a valid URI")
            .connect()
            .await
            .expect("the restarted server accepts connections");
        let token = self.token("service:test-admin", Some(&ALL_SCOPES.join(" ")));
        let value = format!("Bearer {token}")
            .parse()
            .expect("an ASCII header value");
        (running, Clients::new(&channel, Bearer(Some(value), None)))
    }

    /// The server's private signing key file (`<kid>.key.pem`).
    pub fn signing_key(&self) -> &std::path::Path {
        &self.signing_key
    }

    /// The `kid` the server's own key is known by.
    pub fn kid(&self) -> String {
        let name = self
            .signing_key
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        name.strip_suffix(".key.pem").unwrap_or_default().to_owned()
    }

    /// A valid token for `sub` (a user id or `service:<name>`), signed with the server's key.
    ///
    /// Tokens are checked against the machine's real time, not the server's [`ManualClock`], so
    /// they are issued now and stay valid for an hour.
    pub fn token(&self, sub: &str, scope: Option<&str>) -> String {
        self.signer
            .sign(sub, scope, Utc::now(), chrono::Duration::hours(1))
            .expect("the token is signed")
    }

    /// Signs arbitrary claims with the server's key, for tokens the server must refuse.
    pub fn sign_claims(&self, claims: &auth::Claims) -> String {
        self.signer
            .sign_claims(claims)
            .expect("the token is signed")
    }

    /// Clients acting as the user `user_id`.
    pub fn user(&self, user_id: &str) -> Clients {
        self.with_token(&self.token(user_id, None))
    }

    /// Clients acting as the internal service `service:<name>` holding `scopes`.
    pub fn service(&self, name: &str, scopes: &[&str]) -> Clients {
        self.with_token(&self.token(&format!("service:{name}"), Some(&scopes.join(" "))))
    }

    /// Clients acting as a service that holds every scope.
    pub fn admin(&self) -> Clients {
        self.service("test-admin", ALL_SCOPES)
    }

    /// Clients that send `Bearer <token>` whatever the token is.
    pub fn with_token(&self, token: &str) -> Clients {
        self.with_authorization(&format!("Bearer {token}"))
    }

    /// Clients that send this exact `authorization` header.
    pub fn with_authorization(&self, value: &str) -> Clients {
        let value = value.parse().expect("an ASCII header value");
        Clients::new(&self.channel, Bearer(Some(value), None))
    }

    /// Clients acting as the provider staff member `staff:<name>` (a token with the `staff`
    /// role), stating `reason` in `x-onbehalf-reason` on every call when one is given.
    pub fn staff(&self, name: &str, reason: Option<&str>) -> Clients {
        let token = self
            .signer
            .sign_staff(name, Utc::now(), chrono::Duration::hours(1))
            .expect("the token is signed");
        let authorization = format!("Bearer {token}")
            .parse()
            .expect("an ASCII header value");
        let reason = reason.map(|r| r.parse().expect("an ASCII reason"));
        Clients::new(&self.channel, Bearer(Some(authorization), reason))
    }

    /// Clients that send no `authorization` header at all.
    pub fn anonymous(&self) -> Clients {
        Clients::new(&self.channel, Bearer(None, None))
    }

    /// The position of the last event durably in the log (0 for an empty log), read from the
    /// store itself rather than from the server's read models.
    pub async fn log_head(&self) -> u64 {
        self.observer
            .head_position()
            .await
            .expect("the log's head is readable")
    }

    /// Every event durably in the log, in position order, read from the store itself rather
    /// than from the server's read models.
    pub async fn stored_events(&self) -> Vec<onbehalf_events::StoredEvent> {
        self.observer
            .read_all(0, usize::MAX)
            .await
            .expect("the log is readable")
    }

    /// Registers a user through a service with `users:register` and returns clients acting
    /// as that user.
    pub async fn register(&self, email: &str, display_name: &str) -> Person {
        let response = self
            .admin()
            .users()
            .register_user(pb::RegisterUserRequest {
                email: email.into(),
                display_name: display_name.into(),
                request_id: request_id(),
            })
            .await
            .unwrap_or_else(|s| panic!("registering {email} failed: {s:?}"))
            .into_inner();
        let user = response.user.expect("RegisterUser returns the user");
        Person {
            clients: self.user(&user.user_id),
            user_id: user.user_id,
            email: user.email,
            registered_at: response.position,
        }
    }

    /// Seeds the catalogue as the provider's catalogue service does: a hosting plan sold
    /// monthly and yearly, and yearly `.co.tz` registrations.
    pub async fn seed_catalogue(&self) -> Catalogue {
        let catalog = self.service("catalogue", &["catalog:write"]).catalog();
        let put = |product: pb::Product| {
            let mut catalog = catalog.clone();
            async move {
                catalog
                    .put_product(pb::PutProductRequest {
                        product: Some(product),
                        request_id: request_id(),
                    })
                    .await
                    .expect("PutProduct succeeds")
                    .into_inner()
            }
        };
        let price = |cycle: pb::BillingCycle, amount_minor| pb::Price {
            billing_cycle: cycle as i32,
            amount_minor,
            currency: CURRENCY.into(),
        };
        let hosting = put(pb::Product {
            product_id: String::new(),
            name: "Starter Hosting".into(),
            kind: pb::ProductKind::Hosting as i32,
            tld: String::new(),
            prices: vec![
                price(pb::BillingCycle::Monthly, HOSTING_MONTHLY_MINOR),
                price(pb::BillingCycle::Annually, HOSTING_ANNUAL_MINOR),
            ],
        })
        .await;
        let domain = put(pb::Product {
            product_id: String::new(),
            name: ".co.tz Domain".into(),
            kind: pb::ProductKind::Domain as i32,
            tld: ".co.tz".into(),
            prices: vec![price(pb::BillingCycle::Annually, DOMAIN_ANNUAL_MINOR)],
        })
        .await;
        Catalogue {
            hosting_product_id: hosting.product.expect("the hosting product").product_id,
            domain_product_id: domain.product.expect("the domain product").product_id,
            position: domain.position,
        }
    }

    /// Every audit entry of the whole log, read as a service with `audit:read` once the read
    /// models have reached `min_position`, across all pages.
    pub async fn audit_trail(&self, min_position: u64) -> Vec<pb::AuditEntry> {
        let mut audit = self.admin().audit();
        let mut entries = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = audit
                .list_audit_trail(pb::ListAuditTrailRequest {
                    page_size: 500,
                    page_token,
                    min_position,
                    ..Default::default()
                })
                .await
                .expect("the audit trail is readable")
                .into_inner();
            entries.extend(page.entries);
            if page.next_page_token.is_empty() {
                return entries;
            }
            page_token = page.next_page_token;
        }
    }

    /// Awaits `call` and asserts it failed with `code` and left the log exactly as it was.
    #[track_caller]
    pub fn rejects<'a, T, F>(&'a self, code: Code, call: F) -> impl Future<Output = Status> + 'a
    where
        T: fmt::Debug,
        F: Future<Output = Result<Response<T>, Status>> + 'a,
    {
        let caller = std::panic::Location::caller();
        async move {
            let head = self.log_head().await;
            let status = match call.await {
                Ok(response) => panic!(
                    "{caller}: expected {code:?}, the call succeeded with {:?}",
                    response.into_inner()
                ),
                Err(status) => status,
            };
            assert_eq!(
                status.code(),
                code,
                "{caller}: unexpected status {status:?}"
            );
            assert_eq!(
                self.log_head().await,
                head,
                "{caller}: a rejected call appended to the log"
            );
            status
        }
    }

    /// As [`TestServer::rejects`] with `INVALID_ARGUMENT`, also asserting that the status names
    /// `field` in its `BadRequest` details.
    #[track_caller]
    pub fn rejects_field<'a, T, F>(
        &'a self,
        field: &'a str,
        call: F,
    ) -> impl Future<Output = Status> + 'a
    where
        T: fmt::Debug,
        F: Future<Output = Result<Response<T>, Status>> + 'a,
    {
        let caller = std::panic::Location::caller();
        let rejected = self.rejects(Code::InvalidArgument, call);
        async move {
            let status = rejected.await;
            assert_eq!(
                violated_fields(&status),
                vec![field.to_owned()],
                "{caller}: {status:?}"
            );
            status
        }
    }
}

/// The fields a status's `BadRequest` details name, in order.
pub fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|bad| bad.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// The products [`TestServer::seed_catalogue`] created.
#[derive(Debug, Clone)]
pub struct Catalogue {
    /// "Starter Hosting", sold monthly and annually.
    pub hosting_product_id: String,
    /// ".co.tz Domain", sold annually.
    pub domain_product_id: String,
    /// The position of the last product put.
    pub position: u64,
}

/// Sets the `authorization` header of every request, and the staff reason
/// (`x-onbehalf-reason`) when given; `None` sends none.
///
/// `Debug` never prints the token.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>, Option<MetadataValue<Ascii>>);

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Bearer(<redacted>)"
        } else {
            "Bearer(none)"
        })
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        if let Some(reason) = &self.1 {
            request
                .metadata_mut()
                .insert(onbehalf::grpc::REASON_HEADER, reason.clone());
        }
        Ok(request)
    }
}

/// A channel whose requests carry one caller's credentials.
pub type Authed = InterceptedService<Channel, Bearer>;

/// Clients of every service, all acting as the same caller. Each accessor hands out a fresh
/// clone, so calls need no `mut` binding.
#[derive(Debug, Clone)]
pub struct Clients {
    channel: Channel,
    bearer: Bearer,
}

impl Clients {
    fn new(channel: &Channel, bearer: Bearer) -> Self {
        Self {
            channel: channel.clone(),
            bearer,
        }
    }

    fn authed(&self) -> Authed {
        InterceptedService::new(self.channel.clone(), self.bearer.clone())
    }

    /// `UserService`.
    pub fn users(&self) -> UserServiceClient<Authed> {
        UserServiceClient::new(self.authed())
    }

    /// `AccountService`.
    pub fn accounts(&self) -> AccountServiceClient<Authed> {
        AccountServiceClient::new(self.authed())
    }

    /// `InvitationService`, allowed to send messages of any size (to test the server's limit).
    pub fn invitations(&self) -> InvitationServiceClient<Authed> {
        InvitationServiceClient::new(self.authed()).max_encoding_message_size(usize::MAX)
    }

    /// `AccessService`.
    pub fn access(&self) -> AccessServiceClient<Authed> {
        AccessServiceClient::new(self.authed())
    }

    /// `CatalogService`.
    pub fn catalog(&self) -> CatalogServiceClient<Authed> {
        CatalogServiceClient::new(self.authed())
    }

    /// `HostingService`.
    pub fn hosting(&self) -> HostingServiceClient<Authed> {
        HostingServiceClient::new(self.authed())
    }

    /// `BillingService`.
    pub fn billing(&self) -> BillingServiceClient<Authed> {
        BillingServiceClient::new(self.authed())
    }

    /// `NotificationService`.
    pub fn notifications(&self) -> NotificationServiceClient<Authed> {
        NotificationServiceClient::new(self.authed())
    }

    /// `AuditService`.
    pub fn audit(&self) -> AuditServiceClient<Authed> {
        AuditServiceClient::new(self.authed())
    }

    /// `HistoryService`.
    pub fn history(&self) -> HistoryServiceClient<Authed> {
        HistoryServiceClient::new(self.authed())
    }
}

/// A registered user and clients acting as it. Derefs to its [`Clients`].
#[derive(Debug, Clone)]
pub struct Person {
    /// The user's id.
    pub user_id: String,
    /// The email the user registered with, as the server stored it.
    pub email: String,
    /// The position of the registration.
    pub registered_at: u64,
    /// Clients acting as this user.
    pub clients: Clients,
}

impl std::ops::Deref for Person {
    type Target = Clients;

    fn deref(&self) -> &Clients {
        &self.clients
    }
}

/// An invitation as sent: what InviteUser returned.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The invitation.
    pub invitation: pb::Invitation,
    /// The position of the invitation's event.
    pub position: u64,
}

impl Person {
    /// Creates a client account owned by this user; panics if refused.
    pub async fn create_account(&self, name: &str, email: &str) -> pb::Account {
        self.accounts()
            .create_account(pb::CreateAccountRequest {
                name: name.into(),
                email: email.into(),
                request_id: request_id(),
            })
            .await
            .unwrap_or_else(|s| panic!("creating {name} failed: {s:?}"))
            .into_inner()
            .account
            .expect("CreateAccount returns the account")
    }

    /// Invites `email` into `account_id` with full access; panics if refused.
    pub async fn invite_full_access(&self, account_id: &str, email: &str) -> Sent {
        self.invite(account_id, email, Vec::new(), true).await
    }

    /// Invites `email` into `account_id` with `permissions`; panics if refused.
    pub async fn invite_with(
        &self,
        account_id: &str,
        email: &str,
        permissions: &[pb::Permission],
    ) -> Sent {
        let permissions = permissions.iter().map(|p| *p as i32).collect();
        self.invite(account_id, email, permissions, false).await
    }

    async fn invite(
        &self,
        account_id: &str,
        email: &str,
        permissions: Vec<i32>,
        full_access: bool,
    ) -> Sent {
        let response = self
            .invitations()
            .invite_user(pb::InviteUserRequest {
                account_id: account_id.into(),
                email: email.into(),
                permissions,
                full_access,
                request_id: request_id(),
            })
            .await
            .unwrap_or_else(|s| panic!("inviting {email} failed: {s:?}"))
            .into_inner();
        Sent {
            invitation: response
                .invitation
                .expect("InviteUser returns the invitation"),
            position: response.position,
        }
    }

    /// This user's own notifications once the read models have reached `min_position`.
    pub async fn my_notifications(&self, min_position: u64) -> Vec<pb::Notification> {
        self.notifications()
            .list_notifications(pb::ListNotificationsRequest {
                recipient_email: self.email.clone(),
                page_size: 500,
                min_position,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("listing notifications of {} failed: {s:?}", self.email))
            .into_inner()
            .notifications
    }

    /// The acceptance token of the newest invitation notice this user received for
    /// `account_id`, once the read models have reached `min_position`.
    ///
    /// Also checks that the notice's body carries the same token in its link.
    pub async fn invitation_token(&self, account_id: &str, min_position: u64) -> String {
        let notice = self
            .my_notifications(min_position)
            .await
            .into_iter()
            .filter(|n| {
                n.account_id == account_id
                    && n.category == pb::NotificationCategory::Invitation as i32
            })
            .max_by_key(|n| n.position)
            .unwrap_or_else(|| panic!("{} has no invitation notice for {account_id}", self.email));
        assert!(
            !notice.action_token.is_empty(),
            "an invitation notice carries its token"
        );
        assert!(
            notice
                .body
                .contains(&format!("?token={}", notice.action_token)),
            "the notice's link carries its token: {:?}",
            notice.body
        );
        notice.action_token
    }

    /// Accepts an invitation by its token; panics if refused.
    pub async fn accept(&self, token: &str) -> pb::AcceptInvitationResponse {
        self.invitations()
            .accept_invitation(pb::AcceptInvitationRequest {
                token: token.into(),
                request_id: request_id(),
            })
            .await
            .unwrap_or_else(|s| panic!("{} accepting an invitation failed: {s:?}", self.email))
            .into_inner()
    }

    /// Invites `member` into `account_id` with `permissions` (full access when empty), and
    /// has it accept with the token from its notifications; returns the acceptance.
    pub async fn bring_in(
        &self,
        account_id: &str,
        member: &Person,
        permissions: &[pb::Permission],
    ) -> pb::AcceptInvitationResponse {
        let sent = if permissions.is_empty() {
            self.invite_full_access(account_id, &member.email).await
        } else {
            self.invite_with(account_id, &member.email, permissions)
                .await
        };
        let token = member.invitation_token(account_id, sent.position).await;
        member.accept(&token).await
    }
}

/// Runs one scenario `async fn(&TestServer)` as two tests, one per store backend; the
/// PostgreSQL test returns early when PostgreSQL is not reachable (see
/// [`TestServer::postgres`]).
#[macro_export]
macro_rules! on_both_backends {
    ($scenario:ident => $on_sqlite:ident, $on_postgres:ident) => {
        #[tokio::test]
        async fn $on_sqlite() {
            let server = $crate::TestServer::sqlite().await;
            $scenario(&server).await;
        }

        #[tokio::test]
        async fn $on_postgres() {
            let Some(server) = $crate::TestServer::postgres().await else {
                return;
            };
            $scenario(&server).await;
        }
    };
}
