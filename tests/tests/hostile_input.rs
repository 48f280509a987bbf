//! Hostile names and emails over gRPC: control characters, NUL bytes, right-to-left and
//! invisible marks, homoglyphs, internationalised domains, quotes, SQL-like text and very long
//! strings, in users' display names and emails and in client accounts' names and billing emails.
//!
//! Each case has one decision written in a table: accepted and stored exactly as the table
//! says (read back through the read models, byte for byte), or refused with `INVALID_ARGUMENT`
//! naming the field and leaving the log untouched. Messages over the configured size are
//! refused with `RESOURCE_EXHAUSTED` before they are decoded, one byte past the limit, on every
//! command that carries names or emails.

use std::future::Future;

use onbehalf_proto::v1 as pb;
use onbehalf_tests::{on_both_backends, request_id, Person, TestServer, MAX_MESSAGE_BYTES};
use tonic::{Code, Response, Status};

/// What the server must do with one value.
#[derive(Clone, Copy, Debug)]
enum Decision {
    /// Accepted and read back as exactly this string.
    Stored(&'static str),
    /// Refused with `INVALID_ARGUMENT` naming the field.
    Refused,
}
use Decision::{Refused, Stored};

/// Names: users' display names and client accounts' names follow the same rules.
const NAMES: &[(&str, &str, Decision)] = &[
    ("plain", "ABC Company", Stored("ABC Company")),
    ("NUL byte", "ABC\0Company", Refused),
    ("NUL at the end", "ABC Company\0", Refused),
    ("bell", "ABC\u{7} Company", Refused),
    ("tab", "ABC\tCompany", Refused),
    ("line feed", "ABC\nCompany", Refused),
    ("carriage return", "ABC Company\r", Stored("ABC Company")),
    ("delete", "ABC\u{7F}Company", Refused),
    ("C1 control", "ABC\u{85}Company", Refused),
    ("right-to-left override", "\u{202E}ynapmoC CBA", Refused),
    ("right-to-left mark", "ABC\u{200F} Company", Refused),
    (
        "left-to-right isolate",
        "ABC \u{2066}Company\u{2069}",
        Refused,
    ),
    ("zero-width space", "ABC\u{200B} Company", Refused),
    ("byte order mark", "\u{FEFF}ABC Company", Refused),
    ("soft hyphen", "ABC Com\u{AD}pany", Refused),
    (
        "Cyrillic homoglyph",
        "\u{0410}BC Company",
        Stored("\u{0410}BC Company"),
    ),
    ("Arabic script", "شركة النور", Stored("شركة النور")),
    ("Japanese", "株式会社ABC", Stored("株式会社ABC")),
    ("emoji", "Star Logistics 🚚", Stored("Star Logistics 🚚")),
    (
        "combining accent",
        "Cafe\u{301} Bar",
        Stored("Cafe\u{301} Bar"),
    ),
    ("quotes", "O'Brien \"Ltd\"", Stored("O'Brien \"Ltd\"")),
    (
        "SQL",
        "'; DROP TABLE events; --",
        Stored("'; DROP TABLE events; --"),
    ),
    (
        "SQL with a comment",
        "x' OR '1'='1' /*",
        Stored("x' OR '1'='1' /*"),
    ),
    (
        "HTML",
        "<script>alert(1)</script>",
        Stored("<script>alert(1)</script>"),
    ),
    (
        "padded with spaces",
        "   ABC Company   ",
        Stored("ABC Company"),
    ),
    ("only spaces", "    ", Refused),
    ("empty", "", Refused),
];

/// Emails: users' login emails and client accounts' billing emails follow the same rules.
const EMAILS: &[(&str, &str, Decision)] = &[
    ("plain", "admin@abc.co.tz", Stored("admin@abc.co.tz")),
    (
        "upper case kept",
        "Admin@ABC.co.tz",
        Stored("Admin@ABC.co.tz"),
    ),
    ("NUL byte", "admin\0@abc.co.tz", Refused),
    ("NUL in the domain", "admin@abc\0.co.tz", Refused),
    ("control character", "admin\u{7}@abc.co.tz", Refused),
    ("line feed", "admin@abc.co.tz\nBcc: x@y.z", Refused),
    ("space inside", "ad min@abc.co.tz", Refused),
    ("right-to-left override", "admin\u{202E}@abc.co.tz", Refused),
    ("right-to-left mark", "admin@abc\u{200F}.co.tz", Refused),
    ("zero-width joiner", "ad\u{200D}min@abc.co.tz", Refused),
    (
        "Cyrillic homoglyph domain",
        "user@\u{0430}bc.com",
        Stored("user@\u{0430}bc.com"),
    ),
    ("Latin look-alike", "user@abc.com", Stored("user@abc.com")),
    (
        "internationalised domain",
        "user@bücher.example",
        Stored("user@bücher.example"),
    ),
    (
        "punycode domain",
        "user@xn--bcher-kva.example",
        Stored("user@xn--bcher-kva.example"),
    ),
    ("decomposed accent", "jose\u{301}@abc.co.tz", Refused),
    (
        "composed accent",
        "jos\u{E9}@abc.co.tz",
        Stored("jos\u{E9}@abc.co.tz"),
    ),
    ("Kelvin sign", "\u{212A}im@abc.co.tz", Refused),
    (
        "apostrophe",
        "o'brien@abc.co.tz",
        Stored("o'brien@abc.co.tz"),
    ),
    (
        "double quotes",
        "\"boss\"@abc.co.tz",
        Stored("\"boss\"@abc.co.tz"),
    ),
    (
        "SQL",
        "x';DROP-TABLE-events;--@abc.co.tz",
        Stored("x';DROP-TABLE-events;--@abc.co.tz"),
    ),
    (
        "SQL with spaces",
        "'; DROP TABLE events; --@abc.co.tz",
        Refused,
    ),
    ("two at signs", "a@b@abc.co.tz", Refused),
    ("no at sign", "admin.abc.co.tz", Refused),
    ("no dot in the domain", "admin@localhost", Refused),
    ("empty label", "admin@abc..tz", Refused),
    ("hyphen-led label", "admin@-abc.co.tz", Refused),
    (
        "padded with spaces",
        "  admin@abc.co.tz  ",
        Stored("admin@abc.co.tz"),
    ),
    ("empty", "", Refused),
];

/// Lengths at the edges of the rules: 200 characters for names, 64 for an email's local part,
/// 254 for a whole email.
fn long_names() -> Vec<(String, bool)> {
    vec![
        ("n".repeat(200), true),
        ("n".repeat(201), false),
        ("é".repeat(200), true),
        ("é".repeat(201), false),
        ("x".repeat(10_000), false),
    ]
}

fn long_emails() -> Vec<(String, bool)> {
    let domain = format!(
        "{}.{}.{}.example",
        "d".repeat(63),
        "e".repeat(63),
        "f".repeat(63)
    );
    vec![
        (format!("{}@abc.co.tz", "l".repeat(64)), true),
        (format!("{}@abc.co.tz", "l".repeat(65)), false),
        (
            format!("{}@{domain}", "l".repeat(254 - 1 - domain.len())),
            true,
        ),
        (
            format!("{}@{domain}", "l".repeat(255 - 1 - domain.len())),
            false,
        ),
        (format!("{}@abc.co.tz", "x".repeat(10_000)), false),
    ]
}

/// The case's value made unique by `n`, so that emails never collide across cases, keeping
/// the rule the case is about.
fn unique_email(raw: &str, n: usize) -> String {
    match raw.split_once('@') {
        Some((local, domain)) if !local.is_empty() => format!("{local}{n}@{domain}"),
        _ => raw.to_owned(),
    }
}

fn unique_stored_email(stored: &str, n: usize) -> String {
    unique_email(stored, n)
}

/// Registers a user as the registration service. The call is made when the future is first
/// polled, so the harness's `rejects` sees the log's head before it.
fn register(
    server: &TestServer,
    email: &str,
    display_name: &str,
) -> impl Future<Output = Result<Response<pb::RegisterUserResponse>, Status>> {
    register_with_id(server, email, display_name, &request_id())
}

fn register_with_id(
    server: &TestServer,
    email: &str,
    display_name: &str,
    rid: &str,
) -> impl Future<Output = Result<Response<pb::RegisterUserResponse>, Status>> {
    let mut users = server.admin().users();
    let request = pb::RegisterUserRequest {
        email: email.into(),
        display_name: display_name.into(),
        request_id: rid.into(),
    };
    async move { users.register_user(request).await }
}

fn create_account_call(
    owner: &Person,
    name: &str,
    email: &str,
) -> impl Future<Output = Result<Response<pb::CreateAccountResponse>, Status>> {
    let mut accounts = owner.accounts();
    let request = pb::CreateAccountRequest {
        name: name.into(),
        email: email.into(),
        request_id: request_id(),
    };
    async move { accounts.create_account(request).await }
}

/// The display name and email the read models hold for `user` as the owner of a new account.
async fn read_back_user(server: &TestServer, user_id: &str) -> (String, String) {
    let owner = server.user(user_id);
    let account = owner
        .accounts()
        .create_account(pb::CreateAccountRequest {
            name: "Read Back Ltd".into(),
            email: "readback@abc.co.tz".into(),
            request_id: request_id(),
        })
        .await
        .expect("the user creates an account")
        .into_inner();
    let members = owner
        .accounts()
        .list_members(pb::ListMembersRequest {
            account_id: account.account.expect("the account").account_id,
            min_position: account.position,
            ..Default::default()
        })
        .await
        .expect("the members are readable")
        .into_inner()
        .members;
    assert_eq!(members.len(), 1);
    (members[0].display_name.clone(), members[0].email.clone())
}

/// Creates an account as `owner`, then reads it back through the read models.
async fn create_account(owner: &Person, name: &str, email: &str) -> Result<pb::Account, Status> {
    let created = create_account_call(owner, name, email).await?.into_inner();
    let answered = created.account.expect("the account");
    let read = owner
        .accounts()
        .get_account(pb::GetAccountRequest {
            account_id: answered.account_id.clone(),
            min_position: created.position,
        })
        .await
        .expect("the account is readable")
        .into_inner()
        .account
        .expect("the account");
    assert_eq!(
        read, answered,
        "the read model holds what the command answered"
    );
    Ok(read)
}

async fn display_names_are_stored_exactly_or_refused_naming_the_field(server: &TestServer) {
    let mut decided = Vec::new();
    let mut cases: Vec<(String, String, Option<String>)> = NAMES
        .iter()
        .map(|(what, raw, decision)| {
            let stored = match decision {
                Stored(s) => Some((*s).to_owned()),
                Refused => None,
            };
            ((*what).to_owned(), (*raw).to_owned(), stored)
        })
        .collect();
    for (i, (raw, ok)) in long_names().into_iter().enumerate() {
        cases.push((format!("long name {i}"), raw.clone(), ok.then_some(raw)));
    }
    for (n, (what, raw, stored)) in cases.into_iter().enumerate() {
        let email = format!("display{n}@abc.co.tz");
        match stored {
            Some(expected) => {
                let user = register(server, &email, &raw)
                    .await
                    .map(Response::into_inner)
                    .unwrap_or_else(|s| panic!("{what}: {raw:?} was refused: {s:?}"))
                    .user
                    .expect("the user");
                assert_eq!(user.display_name, expected, "{what}: as answered");
                let (display_name, stored_email) = read_back_user(server, &user.user_id).await;
                assert_eq!(
                    display_name.as_bytes(),
                    expected.as_bytes(),
                    "{what}: as read"
                );
                assert_eq!(stored_email, email, "{what}");
            }
            None => {
                server
                    .rejects_field("display_name", register(server, &email, &raw))
                    .await;
            }
        }
        decided.push(what);
    }
    assert_eq!(decided.len(), NAMES.len() + long_names().len());
}

async fn user_emails_are_stored_exactly_or_refused_naming_the_field(server: &TestServer) {
    let mut cases: Vec<(String, String, Option<String>)> = EMAILS
        .iter()
        .enumerate()
        .map(|(n, (what, raw, decision))| {
            let stored = match decision {
                Stored(s) => Some(unique_stored_email(s, n)),
                Refused => None,
            };
            ((*what).to_owned(), unique_email(raw, n), stored)
        })
        .collect();
    for (i, (raw, ok)) in long_emails().into_iter().enumerate() {
        cases.push((format!("long email {i}"), raw.clone(), ok.then_some(raw)));
    }
    for (what, raw, stored) in cases {
        match stored {
            Some(expected) => {
                let user = register(server, &raw, "Designer")
                    .await
                    .map(Response::into_inner)
                    .unwrap_or_else(|s| panic!("{what}: {raw:?} was refused: {s:?}"))
                    .user
                    .expect("the user");
                assert_eq!(user.email, expected, "{what}: as answered");
                let (_, email) = read_back_user(server, &user.user_id).await;
                assert_eq!(email.as_bytes(), expected.as_bytes(), "{what}: as read");
            }
            None => {
                server
                    .rejects_field("email", register(server, &raw, "Designer"))
                    .await;
            }
        }
    }
}

async fn a_homoglyph_email_is_a_different_login_from_the_one_it_imitates(server: &TestServer) {
    let latin = register(server, "designer@yourcompany.com", "Designer")
        .await
        .map(Response::into_inner)
        .expect("the Latin address registers")
        .user
        .expect("the user");
    let cyrillic = register(server, "designer@y\u{043E}urcompany.com", "Impostor")
        .await
        .map(Response::into_inner)
        .expect("the Cyrillic address registers as a login of its own")
        .user
        .expect("the user");
    assert_ne!(latin.user_id, cyrillic.user_id);
    assert_eq!(cyrillic.email, "designer@y\u{043E}urcompany.com");

    // Case folding is ASCII only: the upper-case Latin address is the same login.
    server
        .rejects(
            Code::AlreadyExists,
            register(server, "DESIGNER@YourCompany.com", "Designer"),
        )
        .await;
}

async fn account_names_and_emails_are_stored_exactly_or_refused_naming_the_field(
    server: &TestServer,
) {
    let owner = server.register("owner@abc.co.tz", "Owner").await;
    for (what, raw, decision) in NAMES {
        match decision {
            Stored(expected) => {
                let account = create_account(&owner, raw, "billing@abc.co.tz")
                    .await
                    .unwrap_or_else(|s| panic!("{what}: {raw:?} was refused: {s:?}"));
                assert_eq!(account.name.as_bytes(), expected.as_bytes(), "{what}");
            }
            Refused => {
                server
                    .rejects_field(
                        "name",
                        create_account_call(&owner, raw, "billing@abc.co.tz"),
                    )
                    .await;
            }
        }
    }
    for (what, raw, decision) in EMAILS {
        match decision {
            Stored(expected) => {
                let account = create_account(&owner, "ABC Company", raw)
                    .await
                    .unwrap_or_else(|s| panic!("{what}: {raw:?} was refused: {s:?}"));
                assert_eq!(account.email.as_bytes(), expected.as_bytes(), "{what}");
            }
            Refused => {
                server
                    .rejects_field("email", create_account_call(&owner, "ABC Company", raw))
                    .await;
            }
        }
    }
}

/// The encoded size of a string field with a one-byte tag.
fn string_field_len(len: usize) -> usize {
    let mut varint = 1;
    let mut n = len >> 7;
    while n > 0 {
        varint += 1;
        n >>= 7;
    }
    1 + varint + len
}

async fn messages_one_byte_over_the_limit_are_resource_exhausted_on_every_command_with_names(
    server: &TestServer,
) {
    let owner = server.register("owner@abc.co.tz", "Owner").await;
    let email = "sized@abc.co.tz";
    let rid = "req-sized";
    // RegisterUser { email = 1, display_name = 2, request_id = 15 } sized to the byte.
    let fixed = string_field_len(email.len()) + string_field_len(rid.len());
    let name_len = |total: usize| {
        (0..total)
            .rev()
            .find(|n| fixed + string_field_len(*n) == total)
            .expect("a name length that makes the total")
    };

    let at_limit = name_len(MAX_MESSAGE_BYTES);
    let over = name_len(MAX_MESSAGE_BYTES + 1);
    // At the limit the message is decoded and judged on its content.
    server
        .rejects_field(
            "display_name",
            register_with_id(server, email, &"n".repeat(at_limit), rid),
        )
        .await;
    let status = server
        .rejects(
            Code::ResourceExhausted,
            register_with_id(server, email, &"n".repeat(over), rid),
        )
        .await;
    assert_eq!(
        status.message(),
        format!("request message exceeds the limit of {MAX_MESSAGE_BYTES} bytes")
    );

    // The same limit guards every other command that carries a name or an email.
    let huge = "x".repeat(MAX_MESSAGE_BYTES + 1);
    server
        .rejects(
            Code::ResourceExhausted,
            owner.accounts().create_account(pb::CreateAccountRequest {
                name: huge.clone(),
                email: "billing@abc.co.tz".into(),
                request_id: request_id(),
            }),
        )
        .await;
    let account = owner
        .create_account("ABC Company", "billing@abc.co.tz")
        .await;
    server
        .rejects(
            Code::ResourceExhausted,
            owner
                .accounts()
                .update_account_profile(pb::UpdateAccountProfileRequest {
                    account_id: account.account_id.clone(),
                    name: "ABC Company".into(),
                    email: format!("{huge}@abc.co.tz"),
                    request_id: request_id(),
                }),
        )
        .await;
    server
        .rejects(
            Code::ResourceExhausted,
            owner.invitations().invite_user(pb::InviteUserRequest {
                account_id: account.account_id,
                email: format!("{huge}@abc.co.tz"),
                full_access: true,
                request_id: request_id(),
                ..Default::default()
            }),
        )
        .await;
}

on_both_backends!(
    display_names_are_stored_exactly_or_refused_naming_the_field
        => display_names_are_stored_exactly_or_refused_naming_the_field_on_sqlite,
           display_names_are_stored_exactly_or_refused_naming_the_field_on_postgres
);

on_both_backends!(
    user_emails_are_stored_exactly_or_refused_naming_the_field
        => user_emails_are_stored_exactly_or_refused_naming_the_field_on_sqlite,
           user_emails_are_stored_exactly_or_refused_naming_the_field_on_postgres
);

on_both_backends!(
    a_homoglyph_email_is_a_different_login_from_the_one_it_imitates
        => a_homoglyph_email_is_a_different_login_from_the_one_it_imitates_on_sqlite,
           a_homoglyph_email_is_a_different_login_from_the_one_it_imitates_on_postgres
);

on_both_backends!(
    account_names_and_emails_are_stored_exactly_or_refused_naming_the_field
        => account_names_and_emails_are_stored_exactly_or_refused_naming_the_field_on_sqlite,
           account_names_and_emails_are_stored_exactly_or_refused_naming_the_field_on_postgres
);

on_both_backends!(
    messages_one_byte_over_the_limit_are_resource_exhausted_on_every_command_with_names
        => messages_one_byte_over_the_limit_are_resource_exhausted_on_every_command_with_names_on_sqlite,
           messages_one_byte_over_the_limit_are_resource_exhausted_on_every_command_with_names_on_postgres
);
