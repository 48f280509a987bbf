//! Hostile input for request validation, through the real server over gRPC.
//!
//! Generated field values (arbitrary strings, strings built from the characters that trip
//! parsers, arbitrary permission numbers, request ids, UUID spellings and page tokens) go through
//! `RegisterUser`, `InviteUser` and `ListMembers`; arbitrary bytes and corrupted encodings of valid requests go
//! as the raw protobuf body of every command that carries names or emails.
//!
//! A field the value parsers of `onbehalf-events` accept is accepted and answered exactly as
//! parsed; the first invalid field, in the order the handler reads them, is named in an
//! `INVALID_ARGUMENT`; a body that is not a protobuf message is refused as such; and nothing is
//! ever half done: a refused request leaves the log's head where it was, an accepted one moves it
//! by its events. The server never drops a connection, so no handler panicked.
//!
//! The case count follows `PROPTEST_CASES` when it is set.

use std::collections::BTreeSet;
use std::sync::Arc;

use onbehalf::auth::{self, Signer};
use onbehalf::server::{self, RunningServer, ServerConfig};
use onbehalf::store::EventStore;
use onbehalf::testing::TempDataDir;
use onbehalf_events::values::{Email, Name};
use onbehalf_proto::v1 as pb;
use pb::account_service_client::AccountServiceClient;
use pb::invitation_service_client::InvitationServiceClient;
use pb::user_service_client::UserServiceClient;
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestRunner};
use prost::bytes::{Buf, BufMut};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The real server on a free port, with what the properties need to talk to it.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
    signer: Signer,
    store: Arc<dyn EventStore>,
    _server: RunningServer,
    _dir: TempDataDir,
}

impl Fixture {
    fn start() -> Fixture {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = TempDataDir::new();
        let mut config = ServerConfig::new(dir.path());
        config.listen = "127.0.0.1:0".parse().expect("an address");
        let (server, store, channel) = runtime.block_on(async {
            let server = server::spawn(config.clone())
                .await
                .expect("the server starts");
            let store = server::open_store(&config).await.expect("the log opens");
            let channel = Channel::from_shared(format!("http://{}", server.addr))
                .expect("a URI")
                .connect()
                .await
                .expect("the server accepts connections");
            (server, store, channel)
        });
        let key = auth::find_signing_key(&auth::keys_dir(dir.path()))
            .expect("the key directory reads")
            .expect("the server made a key");
        let signer =
            Signer::load(&key, auth::DEFAULT_ISSUER, auth::DEFAULT_ISSUER).expect("the key loads");
        Fixture {
            runtime,
            channel,
            signer,
            store,
            _server: server,
            _dir: dir,
        }
    }

    fn token(&self, sub: &str, scope: Option<&str>) -> String {
        self.signer
            .sign(sub, scope, chrono::Utc::now(), chrono::Duration::hours(1))
            .expect("a token")
    }

    fn registrar(&self) -> String {
        self.token("service:fuzz", Some("users:register"))
    }

    async fn head(&self) -> u64 {
        self.store.head_position().await.expect("the head reads")
    }

    /// A registered user who owns a fresh client account; returns (user token, account id).
    async fn owner_with_account(&self, n: u64) -> (String, String) {
        let registered = UserServiceClient::new(self.channel.clone())
            .register_user(authed(
                pb::RegisterUserRequest {
                    email: format!("owner-{n}-{}@abc.co.tz", uuid::Uuid::new_v4().simple()),
                    display_name: "Owner".into(),
                    request_id: String::new(),
                },
                &self.registrar(),
            ))
            .await
            .expect("the owner registers")
            .into_inner();
        let token = self.token(&registered.user.expect("a user").user_id, None);
        let account = AccountServiceClient::new(self.channel.clone())
            .create_account(authed(
                pb::CreateAccountRequest {
                    name: "ABC Company".into(),
                    email: "billing@abc.co.tz".into(),
                    request_id: String::new(),
                },
                &token,
            ))
            .await
            .expect("the account is created")
            .into_inner();
        (token, account.account.expect("an account").account_id)
    }
}

fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().expect("an ASCII token");
    request.metadata_mut().insert("authorization", value);
    request
}

fn violated_field(status: &Status) -> Option<String> {
    use tonic_types::StatusExt;
    let fields: Vec<String> = status
        .get_details_bad_request()?
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields.len(), 1, "one field is named: {status:?}");
    fields.into_iter().next()
}

/// Characters that parsers of names and emails must think about.
const TRICKY: &[char] = &[
    'a',
    'Z',
    '0',
    '@',
    '.',
    '-',
    '\'',
    '"',
    ';',
    ' ',
    '\t',
    '\n',
    '\0',
    '\u{7}',
    '\u{85}',
    '\u{AD}',
    '\u{200B}',
    '\u{200F}',
    '\u{202E}',
    '\u{2066}',
    '\u{FEFF}',
    '\u{0301}',
    '\u{0430}',
    '\u{212A}',
    'ü',
    'é',
    '\u{E000}',
    '\u{1F600}',
];

fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(prop::sample::select(TRICKY), 0..24)
            .prop_map(|cs| cs.into_iter().collect()),
        any::<String>(),
        (
            prop::collection::vec(prop::sample::select(TRICKY), 1..10),
            prop::collection::vec(prop::sample::select(TRICKY), 1..10),
        )
            .prop_map(|(local, domain)| {
                let local: String = local.into_iter().collect();
                let domain: String = domain.into_iter().collect();
                format!("{local}@{domain}.example")
            }),
        Just("designer@yourcompany.com".to_owned()),
        Just("ABC Company".to_owned()),
    ]
}

/// Mostly valid emails, with now and then a character that breaks them.
fn email_like() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9._'+-]{1,12}@[a-z0-9-]{1,10}\\.(com|co\\.tz|example)",
        1 => ("[a-z]{1,8}", prop::sample::select(TRICKY), "[a-z]{1,8}")
            .prop_map(|(a, c, b)| format!("{a}{c}{b}@abc.co.tz")),
        1 => "[a-z]{1,8}@(b\u{fc}cher|\u{0430}bc|xn--bcher-kva)\\.example",
        2 => tricky_string(),
    ]
}

/// Mostly valid names, with now and then a character that breaks them.
fn name_like() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[A-Za-z0-9 '\";,.-]{1,30}",
        1 => ("[A-Za-z]{1,8}", prop::sample::select(TRICKY), "[A-Za-z]{1,8}")
            .prop_map(|(a, c, b)| format!("{a}{c}{b}")),
        2 => tricky_string(),
    ]
}

fn request_id() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(String::new()),
        3 => "[a-z0-9-]{1,20}".prop_map(|s| format!("req-{s}")),
        1 => "[ -~]{0,140}",
        1 => any::<String>(),
    ]
}

/// The request id rule of the API: empty, or at most 128 printable ASCII characters.
fn request_id_is_valid(raw: &str) -> bool {
    raw.is_empty() || (raw.len() <= 128 && raw.bytes().all(|b| b.is_ascii_graphic()))
}

fn config(default_cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    };
    // Runs driven by `TestRunner` directly name their file here, so regressions are kept
    // beside it.
    config.source_file = Some(file!());
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = default_cases;
    }
    config
}

#[test]
fn register_user_accepts_exactly_what_the_value_parsers_accept() {
    let fixture = Fixture::start();
    let mut runner = TestRunner::new(config(256));
    let taken = std::sync::Mutex::new(BTreeSet::new());
    let case = std::sync::atomic::AtomicU64::new(0);
    let outcomes = Outcomes::default();
    runner
        .run(
            &(email_like(), name_like(), request_id()),
            |(email, name, rid)| {
                // Request ids are scoped to the actor: a registrar of its own per case keeps a
                // repeated id from being taken for a retry.
                let n = case.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let registrar = fixture.token(&format!("service:fuzz-{n}"), Some("users:register"));
                fixture.runtime.block_on(async {
                    let before = fixture.head().await;
                    let answer = UserServiceClient::new(fixture.channel.clone())
                        .register_user(authed(
                            pb::RegisterUserRequest {
                                email: email.clone(),
                                display_name: name.clone(),
                                request_id: rid.clone(),
                            },
                            &registrar,
                        ))
                        .await;
                    let after = fixture.head().await;
                    let parsed_email = Email::parse(&email);
                    let parsed_name = Name::parse(&name);
                    let first_invalid = match (&parsed_email, &parsed_name) {
                        (Err(_), _) => Some("email"),
                        (_, Err(_)) => Some("display_name"),
                        _ if !request_id_is_valid(&rid) => Some("request_id"),
                        _ => None,
                    };
                    match (answer, first_invalid) {
                        (Ok(answer), None) => {
                            let answer = answer.into_inner();
                            let user = answer.user.expect("a user");
                            let email = parsed_email.expect("valid");
                            assert_eq!(user.email, email.as_str());
                            assert_eq!(user.display_name, parsed_name.expect("valid").as_str());
                            assert!(
                                taken.lock().expect("lock").insert(email.key()),
                                "{email:?} registered twice"
                            );
                            assert_eq!(after, before + 1);
                            assert_eq!(answer.position, after);
                            outcomes.accepted();
                        }
                        (Err(status), None) => {
                            let key = parsed_email.expect("valid").key();
                            assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
                            assert!(taken.lock().expect("lock").contains(&key), "{status:?}");
                            assert_eq!(after, before);
                        }
                        (Err(status), Some(field)) => {
                            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
                            assert_eq!(violated_field(&status).as_deref(), Some(field));
                            assert_eq!(after, before, "a refusal appends nothing");
                            outcomes.refused();
                        }
                        (Ok(answer), Some(field)) => {
                            panic!("{field} is invalid but the request was accepted: {answer:?}")
                        }
                    }
                });
                Ok(())
            },
        )
        .unwrap_or_else(|failure| panic!("{failure}"));
    outcomes.saw_both();
}

/// How many cases were accepted and refused: a property that only ever saw one side proved
/// little.
#[derive(Default)]
struct Outcomes {
    accepted: std::sync::atomic::AtomicUsize,
    refused: std::sync::atomic::AtomicUsize,
}

impl Outcomes {
    fn accepted(&self) {
        self.accepted
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn refused(&self) {
        self.refused
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn saw_both(&self) {
        let accepted = self.accepted.load(std::sync::atomic::Ordering::SeqCst);
        let refused = self.refused.load(std::sync::atomic::Ordering::SeqCst);
        println!("{accepted} accepted, {refused} refused");
        assert!(
            accepted > 0 && refused > 0,
            "{accepted} accepted, {refused} refused"
        );
    }
}

fn account_id_spelling() -> impl Strategy<Value = u8> {
    0u8..6
}

#[test]
fn invite_user_checks_account_email_permissions_and_request_id_in_order() {
    let fixture = Fixture::start();
    let mut runner = TestRunner::new(config(128));
    let case = std::sync::atomic::AtomicU64::new(0);
    let outcomes = Outcomes::default();
    let strategy = (
        account_id_spelling(),
        any::<String>(),
        email_like(),
        prop_oneof![
            1 => Just(Vec::new()),
            3 => prop::collection::vec(1i32..=13, 1..4),
            1 => prop::collection::vec(prop_oneof![0i32..16, any::<i32>()], 0..5),
        ],
        prop::bool::weighted(0.3),
        request_id(),
    );
    runner
        .run(
            &strategy,
            |(spelling, junk_id, email, permissions, full_access, rid)| {
                let n = case.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                fixture.runtime.block_on(async {
                    let (owner, account) = fixture.owner_with_account(n).await;
                    let real: uuid::Uuid = account.parse().expect("a UUID");
                    let account_id = match spelling {
                        0 | 1 => account.clone(),
                        2 => real.braced().to_string(),
                        3 => real.simple().to_string().to_uppercase(),
                        4 => junk_id,
                        _ => uuid::Uuid::nil().to_string(),
                    };
                    let before = fixture.head().await;
                    let answer = InvitationServiceClient::new(fixture.channel.clone())
                        .invite_user(authed(
                            pb::InviteUserRequest {
                                account_id: account_id.clone(),
                                email: email.clone(),
                                permissions: permissions.clone(),
                                full_access,
                                request_id: rid.clone(),
                            },
                            &owner,
                        ))
                        .await;
                    let after = fixture.head().await;

                    let parsed_id = uuid::Uuid::parse_str(&account_id)
                        .ok()
                        .filter(|id| !id.is_nil());
                    let parsed_email = Email::parse(&email);
                    let known: Option<BTreeSet<i32>> = permissions
                        .iter()
                        .all(|p| (1..=13).contains(p))
                        .then(|| permissions.iter().copied().collect());
                    let first_invalid = if parsed_id.is_none() {
                        Some("account_id")
                    } else if parsed_email.is_err() {
                        Some("email")
                    } else if full_access && !permissions.is_empty() {
                        Some("full_access")
                    } else if !full_access && (permissions.is_empty() || known.is_none()) {
                        Some("permissions")
                    } else if !request_id_is_valid(&rid) {
                        Some("request_id")
                    } else {
                        None
                    };
                    match (answer, first_invalid) {
                        (Err(status), Some(field)) => {
                            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
                            assert_eq!(violated_field(&status).as_deref(), Some(field));
                            assert_eq!(after, before, "a refusal appends nothing");
                            outcomes.refused();
                        }
                        (Ok(answer), None) => {
                            outcomes.accepted();
                            assert_eq!(parsed_id, Some(real), "only the owner's account accepts");
                            let answer = answer.into_inner();
                            let invitation = answer.invitation.expect("an invitation");
                            assert_eq!(invitation.email, parsed_email.expect("valid").as_str());
                            let granted: BTreeSet<i32> =
                                invitation.permissions.into_iter().collect();
                            let expected = if full_access {
                                (1..=13).collect()
                            } else {
                                known.expect("known permissions")
                            };
                            assert_eq!(granted, expected);
                            assert_eq!(after, before + 1);
                            assert_eq!(answer.position, after);
                        }
                        (Err(status), None) => {
                            // Valid fields, but the account is not the caller's (or not there).
                            assert_ne!(parsed_id, Some(real), "{status:?}");
                            assert!(
                                matches!(status.code(), Code::NotFound | Code::PermissionDenied),
                                "{status:?}"
                            );
                            assert_eq!(after, before);
                        }
                        (Ok(answer), Some(field)) => {
                            panic!("{field} is invalid but the request was accepted: {answer:?}")
                        }
                    }
                });
                Ok(())
            },
        )
        .unwrap_or_else(|failure| panic!("{failure}"));
    outcomes.saw_both();
}

/// The page token rule of name-sorted lists: empty, or `o` and an offset in canonical decimal.
fn page_token_is_valid(raw: &str) -> bool {
    raw.is_empty()
        || raw.strip_prefix('o').is_some_and(|n| {
            !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
                && (n == "0" || !n.starts_with('0'))
                && n.parse::<u64>().is_ok_and(|n| usize::try_from(n).is_ok())
        })
}

#[test]
fn page_tokens_are_offsets_this_server_issued_or_an_invalid_argument() {
    let fixture = Fixture::start();
    let (owner, account) = fixture.runtime.block_on(fixture.owner_with_account(0));
    let mut runner = TestRunner::new(config(256));
    let outcomes = Outcomes::default();
    let strategy = (
        prop_oneof![
            2 => "o[0-9]{0,22}",
            1 => "[o+0-9 -]{0,6}",
            1 => any::<String>(),
            1 => Just(String::new()),
        ],
        0u32..4,
    );
    runner
        .run(&strategy, |(page_token, page_size)| {
            fixture.runtime.block_on(async {
                let answer = AccountServiceClient::new(fixture.channel.clone())
                    .list_members(authed(
                        pb::ListMembersRequest {
                            account_id: account.clone(),
                            page_size,
                            page_token: page_token.clone(),
                            min_position: 0,
                        },
                        &owner,
                    ))
                    .await;
                match (answer, page_token_is_valid(&page_token)) {
                    (Ok(page), true) => {
                        let page = page.into_inner();
                        // The account has one member, its owner: only offset 0 shows it.
                        let expected = usize::from(page_token.is_empty() || page_token == "o0");
                        assert_eq!(page.members.len(), expected, "{page_token:?}");
                        assert_eq!(page.next_page_token, "");
                        outcomes.accepted();
                    }
                    (Err(status), false) => {
                        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
                        assert_eq!(violated_field(&status).as_deref(), Some("page_token"));
                        outcomes.refused();
                    }
                    (answer, valid) => {
                        panic!("{page_token:?} (valid: {valid}) answered {answer:?}")
                    }
                }
            });
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    outcomes.saw_both();
}

/// Sends raw bytes as a request body and hands back the raw response body.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// The commands that carry names or emails, with a valid request of each to corrupt.
fn commands(account_id: &str) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "/onbehalf.v1.UserService/RegisterUser",
            pb::RegisterUserRequest {
                email: "designer@yourcompany.com".into(),
                display_name: "Designer".into(),
                request_id: "req-1".into(),
            }
            .encode_to_vec(),
        ),
        (
            "/onbehalf.v1.AccountService/CreateAccount",
            pb::CreateAccountRequest {
                name: "ABC Company".into(),
                email: "admin@abc.co.tz".into(),
                request_id: "req-2".into(),
            }
            .encode_to_vec(),
        ),
        (
            "/onbehalf.v1.AccountService/UpdateAccountProfile",
            pb::UpdateAccountProfileRequest {
                account_id: account_id.into(),
                name: "ABC Company".into(),
                email: "admin@abc.co.tz".into(),
                request_id: "req-3".into(),
            }
            .encode_to_vec(),
        ),
        (
            "/onbehalf.v1.InvitationService/InviteUser",
            pb::InviteUserRequest {
                account_id: account_id.into(),
                email: "designer@yourcompany.com".into(),
                permissions: vec![pb::Permission::Invoices as i32],
                full_access: false,
                request_id: "req-4".into(),
            }
            .encode_to_vec(),
        ),
    ]
}

#[test]
fn arbitrary_request_bodies_are_refused_or_judged_and_never_break_the_server() {
    let fixture = Fixture::start();
    let (owner, account) = fixture.runtime.block_on(fixture.owner_with_account(0));
    let registrar = fixture.registrar();
    let bodies = commands(&account);
    let mut runner = TestRunner::new(config(256));
    let outcomes = Outcomes::default();
    let strategy = (
        0..bodies.len(),
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200).prop_map(|b| (Some(b), Vec::new())),
            // Zero edits keep the valid body, so accepted requests are always among the cases.
            prop::collection::vec((any::<usize>(), any::<u8>()), 0..6)
                .prop_map(|edits| (None, edits)),
        ],
        any::<bool>(),
    );
    runner
        .run(&strategy, |(which, (random, edits), truncate)| {
            let (path, valid) = &bodies[which];
            let body = if let Some(random) = random {
                random
            } else {
                let mut body = valid.clone();
                for (at, byte) in edits {
                    let at = at % body.len();
                    body[at] = byte;
                }
                if truncate {
                    body.truncate(body.len() / 2);
                }
                body
            };
            let token = if path.contains("UserService") {
                &registrar
            } else {
                &owner
            };
            fixture.runtime.block_on(async {
                let before = fixture.head().await;
                let mut grpc = tonic::client::Grpc::new(fixture.channel.clone());
                grpc.ready().await.expect("the connection is ready");
                let answer = grpc
                    .unary(
                        authed(body.clone(), token),
                        http::uri::PathAndQuery::from_static(path),
                        RawCodec,
                    )
                    .await;
                let after = fixture.head().await;
                match answer {
                    // An accepted body may be a retry of an earlier one, which appends nothing.
                    Ok(_) => {
                        assert!(after >= before);
                        outcomes.accepted();
                    }
                    Err(status) => {
                        let decoding = status.code() == Code::Internal
                            && status.message().contains("failed to decode");
                        assert!(
                            decoding
                                || matches!(
                                    status.code(),
                                    Code::InvalidArgument
                                        | Code::NotFound
                                        | Code::AlreadyExists
                                        | Code::PermissionDenied
                                        | Code::FailedPrecondition
                                ),
                            "{path} with {body:?}: {status:?}"
                        );
                        assert_eq!(after, before, "a refusal appends nothing");
                        outcomes.refused();
                    }
                }
            });
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    outcomes.saw_both();

    // The server still serves ordinary requests on the same connection.
    fixture.runtime.block_on(async {
        UserServiceClient::new(fixture.channel.clone())
            .register_user(authed(
                pb::RegisterUserRequest {
                    email: "after-the-fuzz@abc.co.tz".into(),
                    display_name: "After".into(),
                    request_id: String::new(),
                },
                &registrar,
            ))
            .await
            .expect("the server still registers users");
    });
}
