//! The error contract, row by row: every refusal has its exact gRPC code (and, for invalid
//! arguments, the field it names), and no refused call leaves anything in the log.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Utc;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use onbehalf::auth::{self, Claims, Signer};
use onbehalf::testing::{TempDataDir, DATABASE_URL_ENV, DEFAULT_DATABASE_URL};
use onbehalf_proto::v1 as pb;
use onbehalf_tests::{
    on_both_backends, request_id, Catalogue, Person, TestServer, DESIGNER, DOMAIN_ANNUAL_MINOR,
    HOSTING_ANNUAL_MINOR, MAX_MESSAGE_BYTES, MAX_WAIT,
};
use tonic::Code;

/// ABC Company with its owner, the designer as a full-access member, and a registered user
/// who has nothing to do with ABC.
struct Abc {
    catalogue: Catalogue,
    owner: Person,
    account_id: String,
    designer: Person,
    stranger: Person,
}

async fn abc_with_designer(server: &TestServer) -> Abc {
    let catalogue = server.seed_catalogue().await;
    let owner = server.register("admin@abc.co.tz", "ABC Company").await;
    let account_id = owner
        .create_account("ABC Company", "admin@abc.co.tz")
        .await
        .account_id;
    let designer = server.register(DESIGNER, "Web Designer").await;
    owner.bring_in(&account_id, &designer, &[]).await;
    let stranger = server
        .register("support@starlogistics.co.tz", "Star Logistics")
        .await;
    Abc {
        catalogue,
        owner,
        account_id,
        designer,
        stranger,
    }
}

fn create_account(name: &str, email: &str, request_id: &str) -> pb::CreateAccountRequest {
    pb::CreateAccountRequest {
        name: name.into(),
        email: email.into(),
        request_id: request_id.into(),
    }
}

fn order(
    account_id: &str,
    product_id: &str,
    domain: &str,
    cycle: pb::BillingCycle,
) -> pb::OrderServiceRequest {
    pb::OrderServiceRequest {
        account_id: account_id.into(),
        product_id: product_id.into(),
        domain: domain.into(),
        billing_cycle: cycle as i32,
        request_id: request_id(),
    }
}

fn pay(account_id: &str, invoice_id: &str, amount_minor: i64) -> pb::PayInvoiceRequest {
    pb::PayInvoiceRequest {
        account_id: account_id.into(),
        invoice_id: invoice_id.into(),
        amount_minor,
        reference: "MPESA-TEST".into(),
        request_id: request_id(),
    }
}

fn accept(token: &str) -> pb::AcceptInvitationRequest {
    pb::AcceptInvitationRequest {
        token: token.into(),
        request_id: request_id(),
    }
}

fn get_account(account_id: &str) -> pb::GetAccountRequest {
    pb::GetAccountRequest {
        account_id: account_id.into(),
        min_position: 0,
    }
}

fn claims(sub: &str, iss: &str, aud: &str, exp_in: i64, nbf_in: Option<i64>) -> Claims {
    let now = Utc::now().timestamp();
    Claims {
        iss: iss.into(),
        aud: aud.into(),
        sub: sub.into(),
        exp: now + exp_in,
        // Issued an hour before it expires when it is already expired, otherwise now.
        iat: if exp_in < 0 { now + exp_in - 3600 } else { now },
        nbf: nbf_in.map(|n| now + n),
        scope: None,
    }
}

/// An `alg: none` token: a header and claims, and an empty signature.
fn unsigned_token(claims: &Claims) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialise"));
    format!("{header}.{payload}.")
}

/// A fresh Ed25519 private key in PKCS#8 PEM, as the server's development keys are made.
fn foreign_private_key_pem() -> String {
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    key.to_pkcs8_pem(LineEnding::LF)
        .expect("the key encodes")
        .to_string()
}

// UNAUTHENTICATED

async fn refused_bearer_tokens_are_unauthenticated(server: &TestServer) {
    let owner = server.register("admin@abc.co.tz", "ABC Company").await;
    let sub = owner.user_id.as_str();
    let (issuer, hour) = (auth::DEFAULT_ISSUER, 3600);

    // A key pair the server does not know, kept in a data directory of its own.
    let elsewhere = TempDataDir::new();
    let foreign_key = auth::keys_dir(elsewhere.path()).join("foreign.key.pem");
    std::fs::create_dir_all(foreign_key.parent().expect("a keys directory"))
        .expect("the directory is created");
    std::fs::write(&foreign_key, foreign_private_key_pem()).expect("the key is written");
    let foreign = Signer::load(&foreign_key, issuer, issuer).expect("the foreign key loads");
    // The same foreign key presented under the server's own key id.
    let impostor = Signer::from_pem(
        &server.kid(),
        foreign_private_key_pem().as_bytes(),
        issuer,
        issuer,
    )
    .expect("the impostor key loads");
    Signer::load(server.signing_key(), issuer, "another-audience").expect("the key loads");
    let valid = claims(sub, issuer, issuer, hour, None);

    let signed = |claims: Claims| server.with_token(&server.sign_claims(&claims));
    let basic = format!("Basic {}", server.token(sub, None));
    let cases = [
        ("no authorization header", server.anonymous()),
        ("a token that is no JWT", server.with_token("not-a-token")),
        ("three empty segments", server.with_token("..")),
        (
            "a scheme other than Bearer",
            server.with_authorization(&basic),
        ),
        (
            "an expired token",
            signed(claims(sub, issuer, issuer, -hour, None)),
        ),
        (
            "a token whose nbf is in the future",
            signed(claims(sub, issuer, issuer, 2 * hour, Some(hour))),
        ),
        (
            "a token with the wrong issuer",
            signed(claims(sub, "another-issuer", issuer, hour, None)),
        ),
        (
            "a token with the wrong audience",
            signed(claims(sub, issuer, "another-audience", hour, None)),
        ),
        (
            "a token signed by an unknown key",
            server.with_token(&foreign.sign_claims(&valid).expect("signed")),
        ),
        (
            "a token signed by another key under the server's key id",
            server.with_token(&impostor.sign_claims(&valid).expect("signed")),
        ),
        (
            "an alg none token",
            server.with_token(&unsigned_token(&valid)),
        ),
    ];
    for (case, clients) in cases {
        let head = server.log_head().await;
        let command = clients
            .accounts()
            .create_account(create_account(
                "ABC Company",
                "admin@abc.co.tz",
                &request_id(),
            ))
            .await;
        let status = command.expect_err(case);
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
        assert!(!status.message().is_empty(), "{case}: the refusal says why");
        let read = clients
            .catalog()
            .list_products(pb::ListProductsRequest::default())
            .await;
        let status = read.expect_err(case);
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
        assert_eq!(
            server.log_head().await,
            head,
            "{case}: the log is untouched"
        );
    }

    // The same claims, properly signed, are accepted: the refusals above are the tokens' own.
    server
        .with_token(&server.sign_claims(&valid))
        .accounts()
        .create_account(create_account(
            "ABC Company",
            "admin@abc.co.tz",
            &request_id(),
        ))
        .await
        .expect("a valid token is accepted");
}

on_both_backends!(
    refused_bearer_tokens_are_unauthenticated
        => refused_bearer_tokens_are_unauthenticated_on_sqlite,
           refused_bearer_tokens_are_unauthenticated_on_postgres
);

// INVALID_ARGUMENT

async fn malformed_fields_are_invalid_arguments_naming_the_field(server: &TestServer) {
    let Abc {
        catalogue,
        owner,
        account_id,
        ..
    } = abc_with_designer(server).await;
    let invite = |email: &str, permissions: Vec<i32>, full_access: bool| pb::InviteUserRequest {
        account_id: account_id.clone(),
        email: email.into(),
        permissions,
        full_access,
        request_id: request_id(),
    };

    // Malformed ids, on a read and on a command.
    server
        .rejects_field(
            "account_id",
            owner.accounts().get_account(get_account("abc-company")),
        )
        .await;
    server
        .rejects_field("account_id", owner.accounts().get_account(get_account("")))
        .await;
    let mut bad_account = invite("info@newlife.or.tz", vec![], true);
    bad_account.account_id = "42".into();
    server
        .rejects_field("account_id", owner.invitations().invite_user(bad_account))
        .await;

    // Malformed emails.
    for email in ["info.newlife.or.tz", "info@", "info @newlife.or.tz", ""] {
        server
            .rejects_field(
                "email",
                owner.invitations().invite_user(invite(email, vec![], true)),
            )
            .await;
        server
            .rejects_field(
                "email",
                server
                    .admin()
                    .users()
                    .register_user(pb::RegisterUserRequest {
                        email: email.into(),
                        display_name: "New Life Church".into(),
                        request_id: request_id(),
                    }),
            )
            .await;
    }

    // Unknown enum values.
    for unknown in [0, 14, 99, -1] {
        let permissions = vec![pb::Permission::Invoices as i32, unknown];
        server
            .rejects_field(
                "permissions",
                owner
                    .invitations()
                    .invite_user(invite("info@newlife.or.tz", permissions, false)),
            )
            .await;
    }
    for unknown in [0, 7, 42] {
        let mut request = order(
            &account_id,
            &catalogue.hosting_product_id,
            "abc.co.tz",
            pb::BillingCycle::Annually,
        );
        request.billing_cycle = unknown;
        server
            .rejects_field("billing_cycle", owner.hosting().order_service(request))
            .await;
    }

    // Empty names.
    for name in ["", "   "] {
        server
            .rejects_field(
                "name",
                owner.accounts().create_account(create_account(
                    name,
                    "admin@abc.co.tz",
                    &request_id(),
                )),
            )
            .await;
    }

    // Exactly one of full_access and permissions.
    let both = invite(
        "info@newlife.or.tz",
        vec![pb::Permission::Invoices as i32],
        true,
    );
    server
        .rejects_field("full_access", owner.invitations().invite_user(both))
        .await;
    let neither = invite("info@newlife.or.tz", vec![], false);
    server
        .rejects_field("permissions", owner.invitations().invite_user(neither))
        .await;

    // A domain that is not a name directly under the product's TLD.
    for domain in ["abc.com", "shop.abc.co.tz", "abc.co.ke", ".co.tz"] {
        let request = order(
            &account_id,
            &catalogue.domain_product_id,
            domain,
            pb::BillingCycle::Annually,
        );
        server
            .rejects_field("domain", owner.hosting().order_service(request))
            .await;
    }
    let no_domain = order(
        &account_id,
        &catalogue.domain_product_id,
        "",
        pb::BillingCycle::Annually,
    );
    server
        .rejects_field("domain", owner.hosting().order_service(no_domain))
        .await;
}

on_both_backends!(
    malformed_fields_are_invalid_arguments_naming_the_field
        => malformed_fields_are_invalid_arguments_naming_the_field_on_sqlite,
           malformed_fields_are_invalid_arguments_naming_the_field_on_postgres
);

async fn a_request_id_reused_for_another_request_is_an_invalid_argument(server: &TestServer) {
    let owner = server
        .register("info@newlife.or.tz", "New Life Church")
        .await;
    let first = owner
        .accounts()
        .create_account(create_account(
            "New Life Church",
            "info@newlife.or.tz",
            "create-new-life",
        ))
        .await
        .expect("the account is created")
        .into_inner();

    let other = create_account(
        "New Life Church Youth",
        "info@newlife.or.tz",
        "create-new-life",
    );
    let status = server
        .rejects_field("request_id", owner.accounts().create_account(other))
        .await;
    assert_eq!(
        status.message(),
        "request_id: this request id was already used for a different request"
    );

    // The identical request is still answered with its first outcome.
    let retried = owner
        .accounts()
        .create_account(create_account(
            "New Life Church",
            "info@newlife.or.tz",
            "create-new-life",
        ))
        .await
        .expect("the retry succeeds")
        .into_inner();
    assert_eq!(retried, first);

    // A rejected command is not remembered: its request id is decided afresh next time.
    server
        .rejects(
            Code::InvalidArgument,
            owner.accounts().create_account(create_account(
                "",
                "info@newlife.or.tz",
                "create-second",
            )),
        )
        .await;
    let second = owner
        .accounts()
        .create_account(create_account(
            "New Life Kids",
            "info@newlife.or.tz",
            "create-second",
        ))
        .await
        .expect("the request id of a rejected command is free")
        .into_inner();
    assert_eq!(
        second.account.map(|a| a.name),
        Some("New Life Kids".to_owned())
    );
}

on_both_backends!(
    a_request_id_reused_for_another_request_is_an_invalid_argument
        => a_request_id_reused_for_another_request_is_an_invalid_argument_on_sqlite,
           a_request_id_reused_for_another_request_is_an_invalid_argument_on_postgres
);

// PERMISSION_DENIED

async fn callers_without_the_right_are_permission_denied(server: &TestServer) {
    let Abc {
        catalogue,
        owner,
        account_id,
        designer,
        stranger,
    } = abc_with_designer(server).await;
    let ordered = owner
        .hosting()
        .order_service(order(
            &account_id,
            &catalogue.hosting_product_id,
            "abc.co.tz",
            pb::BillingCycle::Annually,
        ))
        .await
        .expect("the owner orders hosting")
        .into_inner();

    // A stranger reads nothing of ABC and decides nothing there.
    server
        .rejects(
            Code::PermissionDenied,
            stranger.accounts().get_account(get_account(&account_id)),
        )
        .await;
    server
        .rejects(
            Code::PermissionDenied,
            stranger.billing().list_invoices(pb::ListInvoicesRequest {
                account_id: account_id.clone(),
                ..Default::default()
            }),
        )
        .await;
    server
        .rejects(
            Code::PermissionDenied,
            stranger
                .billing()
                .pay_invoice(pay(&account_id, &ordered.invoice_id, 1)),
        )
        .await;
    let unregistered = server.user(&uuid::Uuid::new_v4().to_string());
    server
        .rejects(
            Code::PermissionDenied,
            unregistered
                .accounts()
                .get_account(get_account(&account_id)),
        )
        .await;

    // A member who may see products but not invoices.
    let church = server
        .register("info@newlife.or.tz", "New Life Church")
        .await;
    owner
        .bring_in(&account_id, &church, &[pb::Permission::Products])
        .await;
    let status = server
        .rejects(
            Code::PermissionDenied,
            church.billing().list_invoices(pb::ListInvoicesRequest {
                account_id: account_id.clone(),
                ..Default::default()
            }),
        )
        .await;
    assert_eq!(status.message(), "caller lacks the INVOICES permission");
    server
        .rejects(
            Code::PermissionDenied,
            church
                .billing()
                .pay_invoice(pay(&account_id, &ordered.invoice_id, 1)),
        )
        .await;

    // A member, even with full access, does not manage users.
    let invite = pb::InviteUserRequest {
        account_id: account_id.clone(),
        email: "info@greenfarm.co.tz".into(),
        full_access: true,
        request_id: request_id(),
        ..Default::default()
    };
    let status = server
        .rejects(
            Code::PermissionDenied,
            designer.invitations().invite_user(invite),
        )
        .await;
    assert_eq!(status.message(), "only the account owner manages users");
    let revoke = pb::RevokeAccessRequest {
        account_id: account_id.clone(),
        user_id: church.user_id.clone(),
        request_id: request_id(),
    };
    server
        .rejects(
            Code::PermissionDenied,
            designer.access().revoke_access(revoke),
        )
        .await;

    // Registering users takes a service with users:register.
    let register = || pb::RegisterUserRequest {
        email: "info@greenfarm.co.tz".into(),
        display_name: "Green Farm Ltd".into(),
        request_id: request_id(),
    };
    server
        .rejects(
            Code::PermissionDenied,
            owner.users().register_user(register()),
        )
        .await;
    let mailer = server.service("mailer", &["notifications:read"]);
    server
        .rejects(
            Code::PermissionDenied,
            mailer.users().register_user(register()),
        )
        .await;
}

on_both_backends!(
    callers_without_the_right_are_permission_denied
        => callers_without_the_right_are_permission_denied_on_sqlite,
           callers_without_the_right_are_permission_denied_on_postgres
);

// NOT_FOUND

async fn unknown_things_are_not_found(server: &TestServer) {
    let Abc {
        catalogue,
        owner,
        account_id,
        ..
    } = abc_with_designer(server).await;
    let unknown = || uuid::Uuid::new_v4().to_string();

    let status = server
        .rejects(
            Code::NotFound,
            owner.accounts().get_account(get_account(&unknown())),
        )
        .await;
    assert_eq!(status.message(), "account not found");
    server
        .rejects(
            Code::NotFound,
            owner.hosting().order_service(order(
                &unknown(),
                &catalogue.hosting_product_id,
                "",
                pb::BillingCycle::Monthly,
            )),
        )
        .await;

    let cancel = pb::CancelInvitationRequest {
        account_id: account_id.clone(),
        invitation_id: unknown(),
        request_id: request_id(),
    };
    let status = server
        .rejects(
            Code::NotFound,
            owner.invitations().cancel_invitation(cancel),
        )
        .await;
    assert_eq!(status.message(), "invitation not found");

    let renew = pb::RenewServiceRequest {
        account_id: account_id.clone(),
        service_id: unknown(),
        request_id: request_id(),
    };
    let status = server
        .rejects(Code::NotFound, owner.hosting().renew_service(renew))
        .await;
    assert_eq!(status.message(), "service not found");

    let status = server
        .rejects(
            Code::NotFound,
            owner
                .billing()
                .pay_invoice(pay(&account_id, &unknown(), 100)),
        )
        .await;
    assert_eq!(status.message(), "invoice not found");

    let status = server
        .rejects(
            Code::NotFound,
            owner.hosting().order_service(order(
                &account_id,
                &unknown(),
                "",
                pb::BillingCycle::Monthly,
            )),
        )
        .await;
    assert_eq!(status.message(), "product not found");

    // An invitation token whose MAC does not verify names no invitation.
    let church = server
        .register("info@newlife.or.tz", "New Life Church")
        .await;
    let sent = owner.invite_full_access(&account_id, &church.email).await;
    let token = church.invitation_token(&account_id, sent.position).await;
    let mut forged: Vec<char> = token.chars().collect();
    let at = forged.len() - 10;
    forged[at] = if forged[at] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    let status = server
        .rejects(
            Code::NotFound,
            church.invitations().accept_invitation(accept(&forged)),
        )
        .await;
    assert_eq!(status.message(), "invitation not found for this token");
    church.accept(&token).await;
}

on_both_backends!(
    unknown_things_are_not_found => unknown_things_are_not_found_on_sqlite, unknown_things_are_not_found_on_postgres
);

// ALREADY_EXISTS

async fn what_exists_already_cannot_be_created_again(server: &TestServer) {
    let Abc {
        owner, account_id, ..
    } = abc_with_designer(server).await;

    for email in ["admin@abc.co.tz", "ADMIN@ABC.CO.TZ", "  Admin@Abc.Co.Tz  "] {
        let register = pb::RegisterUserRequest {
            email: email.into(),
            display_name: "ABC Company again".into(),
            request_id: request_id(),
        };
        let status = server
            .rejects(
                Code::AlreadyExists,
                server.admin().users().register_user(register),
            )
            .await;
        assert_eq!(status.message(), "email is already registered");
    }

    // The designer is a member already, and the owner is the owner.
    for email in [DESIGNER, "Designer@YourCompany.com", "admin@abc.co.tz"] {
        let invite = pb::InviteUserRequest {
            account_id: account_id.clone(),
            email: email.into(),
            full_access: true,
            request_id: request_id(),
            ..Default::default()
        };
        server
            .rejects(Code::AlreadyExists, owner.invitations().invite_user(invite))
            .await;
    }

    // An email with a pending invitation, however it is spelt.
    owner
        .invite_full_access(&account_id, "info@newlife.or.tz")
        .await;
    for email in ["info@newlife.or.tz", "INFO@NewLife.or.tz"] {
        let invite = pb::InviteUserRequest {
            account_id: account_id.clone(),
            email: email.into(),
            permissions: vec![pb::Permission::Invoices as i32],
            request_id: request_id(),
            ..Default::default()
        };
        let status = server
            .rejects(Code::AlreadyExists, owner.invitations().invite_user(invite))
            .await;
        assert_eq!(
            status.message(),
            "a pending invitation for that email exists"
        );
    }
}

on_both_backends!(
    what_exists_already_cannot_be_created_again
        => what_exists_already_cannot_be_created_again_on_sqlite,
           what_exists_already_cannot_be_created_again_on_postgres
);

// FAILED_PRECONDITION

async fn invitations_no_longer_pending_cannot_be_answered(server: &TestServer) {
    let owner = server.register("admin@abc.co.tz", "ABC Company").await;
    let account_id = owner
        .create_account("ABC Company", "admin@abc.co.tz")
        .await
        .account_id;
    let invitee = |email: &'static str, name: &'static str| server.register(email, name);
    let (designer, church, star, farm, late) = (
        invitee(DESIGNER, "Web Designer").await,
        invitee("info@newlife.or.tz", "New Life Church").await,
        invitee("support@starlogistics.co.tz", "Star Logistics").await,
        invitee("info@greenfarm.co.tz", "Green Farm Ltd").await,
        invitee("late@yourcompany.com", "Late Designer").await,
    );

    // Accepted twice.
    let sent = owner.invite_full_access(&account_id, &designer.email).await;
    let token = designer.invitation_token(&account_id, sent.position).await;
    designer.accept(&token).await;
    let status = server
        .rejects(
            Code::FailedPrecondition,
            designer.invitations().accept_invitation(accept(&token)),
        )
        .await;
    assert_eq!(status.message(), "invitation was already accepted");

    // Declined, then accepted.
    let sent = owner.invite_full_access(&account_id, &church.email).await;
    let token = church.invitation_token(&account_id, sent.position).await;
    church
        .invitations()
        .decline_invitation(pb::DeclineInvitationRequest {
            token: token.clone(),
            request_id: request_id(),
        })
        .await
        .expect("the church declines");
    let status = server
        .rejects(
            Code::FailedPrecondition,
            church.invitations().accept_invitation(accept(&token)),
        )
        .await;
    assert_eq!(status.message(), "invitation was declined");

    // Cancelled by the owner, then accepted.
    let sent = owner.invite_full_access(&account_id, &star.email).await;
    let token = star.invitation_token(&account_id, sent.position).await;
    owner
        .invitations()
        .cancel_invitation(pb::CancelInvitationRequest {
            account_id: account_id.clone(),
            invitation_id: sent.invitation.invitation_id.clone(),
            request_id: request_id(),
        })
        .await
        .expect("the owner cancels");
    let status = server
        .rejects(
            Code::FailedPrecondition,
            star.invitations().accept_invitation(accept(&token)),
        )
        .await;
    assert_eq!(status.message(), "invitation was cancelled");

    // Sent again: the earlier token stops working, the newest one works.
    let sent = owner.invite_full_access(&account_id, &farm.email).await;
    let old_token = farm.invitation_token(&account_id, sent.position).await;
    let resent = owner
        .invitations()
        .resend_invitation(pb::ResendInvitationRequest {
            account_id: account_id.clone(),
            invitation_id: sent.invitation.invitation_id.clone(),
            request_id: request_id(),
        })
        .await
        .expect("the owner sends the invitation again")
        .into_inner();
    let new_token = farm.invitation_token(&account_id, resent.position).await;
    assert_ne!(new_token, old_token);
    let status = server
        .rejects(
            Code::FailedPrecondition,
            farm.invitations().accept_invitation(accept(&old_token)),
        )
        .await;
    assert_eq!(
        status.message(),
        "invitation was sent again; only the newest link works"
    );
    farm.accept(&new_token).await;

    // Expired: seven days pass.
    let sent = owner.invite_full_access(&account_id, &late.email).await;
    let token = late.invitation_token(&account_id, sent.position).await;
    server
        .clock
        .advance(chrono::Duration::days(7) + chrono::Duration::seconds(1));
    let status = server
        .rejects(
            Code::FailedPrecondition,
            late.invitations().accept_invitation(accept(&token)),
        )
        .await;
    assert_eq!(status.message(), "invitation has expired");
    server
        .rejects(
            Code::FailedPrecondition,
            late.invitations()
                .decline_invitation(pb::DeclineInvitationRequest {
                    token,
                    request_id: request_id(),
                }),
        )
        .await;
}

on_both_backends!(
    invitations_no_longer_pending_cannot_be_answered
        => invitations_no_longer_pending_cannot_be_answered_on_sqlite,
           invitations_no_longer_pending_cannot_be_answered_on_postgres
);

async fn the_owner_cannot_be_removed(server: &TestServer) {
    let Abc {
        owner, account_id, ..
    } = abc_with_designer(server).await;
    let revoke = pb::RevokeAccessRequest {
        account_id: account_id.clone(),
        user_id: owner.user_id.clone(),
        request_id: request_id(),
    };
    let status = server
        .rejects(
            Code::FailedPrecondition,
            owner.access().revoke_access(revoke),
        )
        .await;
    assert_eq!(status.message(), "the owner cannot be removed");
    let leave = pb::LeaveAccountRequest {
        account_id: account_id.clone(),
        request_id: request_id(),
    };
    server
        .rejects(
            Code::FailedPrecondition,
            owner.access().leave_account(leave),
        )
        .await;
}

on_both_backends!(
    the_owner_cannot_be_removed => the_owner_cannot_be_removed_on_sqlite, the_owner_cannot_be_removed_on_postgres
);

async fn invoices_take_no_payment_once_paid_or_cancelled_nor_more_than_is_owed(
    server: &TestServer,
) {
    let Abc {
        catalogue,
        account_id,
        designer,
        ..
    } = abc_with_designer(server).await;
    let hosting = designer
        .hosting()
        .order_service(order(
            &account_id,
            &catalogue.hosting_product_id,
            "abc.co.tz",
            pb::BillingCycle::Annually,
        ))
        .await
        .expect("the designer orders hosting")
        .into_inner();

    // More than is owed.
    let status = server
        .rejects(
            Code::FailedPrecondition,
            designer.billing().pay_invoice(pay(
                &account_id,
                &hosting.invoice_id,
                HOSTING_ANNUAL_MINOR + 1,
            )),
        )
        .await;
    assert_eq!(
        status.message(),
        format!(
            "overpayment: {} exceeds the {HOSTING_ANNUAL_MINOR} still owed",
            HOSTING_ANNUAL_MINOR + 1
        )
    );
    designer
        .billing()
        .pay_invoice(pay(
            &account_id,
            &hosting.invoice_id,
            HOSTING_ANNUAL_MINOR - 1,
        ))
        .await
        .expect("a part payment is taken");
    server
        .rejects(
            Code::FailedPrecondition,
            designer
                .billing()
                .pay_invoice(pay(&account_id, &hosting.invoice_id, 2)),
        )
        .await;

    // Paid in full, then paid again.
    designer
        .billing()
        .pay_invoice(pay(&account_id, &hosting.invoice_id, 1))
        .await
        .expect("the rest is paid");
    let status = server
        .rejects(
            Code::FailedPrecondition,
            designer
                .billing()
                .pay_invoice(pay(&account_id, &hosting.invoice_id, 1)),
        )
        .await;
    assert_eq!(status.message(), "invoice is already paid");

    // The invoice of a cancelled service.
    let domain = designer
        .hosting()
        .order_service(order(
            &account_id,
            &catalogue.domain_product_id,
            "abc.co.tz",
            pb::BillingCycle::Annually,
        ))
        .await
        .expect("the designer orders a domain")
        .into_inner();
    designer
        .hosting()
        .cancel_service(pb::CancelServiceRequest {
            account_id: account_id.clone(),
            service_id: domain.service_id.clone(),
            request_id: request_id(),
        })
        .await
        .expect("the designer cancels the domain");
    let status = server
        .rejects(
            Code::FailedPrecondition,
            designer.billing().pay_invoice(pay(
                &account_id,
                &domain.invoice_id,
                DOMAIN_ANNUAL_MINOR,
            )),
        )
        .await;
    assert_eq!(status.message(), "invoice is cancelled");
}

on_both_backends!(
    invoices_take_no_payment_once_paid_or_cancelled_nor_more_than_is_owed
        => invoices_take_no_payment_once_paid_or_cancelled_nor_more_than_is_owed_on_sqlite,
           invoices_take_no_payment_once_paid_or_cancelled_nor_more_than_is_owed_on_postgres
);

async fn a_cancelled_service_cannot_be_renewed(server: &TestServer) {
    let Abc {
        catalogue,
        account_id,
        designer,
        ..
    } = abc_with_designer(server).await;
    let domain = designer
        .hosting()
        .order_service(order(
            &account_id,
            &catalogue.domain_product_id,
            "abc.co.tz",
            pb::BillingCycle::Annually,
        ))
        .await
        .expect("the designer orders a domain")
        .into_inner();
    let service = |request_id: String| (account_id.clone(), domain.service_id.clone(), request_id);
    let (account, service_id, rid) = service(request_id());
    designer
        .hosting()
        .cancel_service(pb::CancelServiceRequest {
            account_id: account,
            service_id,
            request_id: rid,
        })
        .await
        .expect("the designer cancels the domain");

    let (account, service_id, rid) = service(request_id());
    let status = server
        .rejects(
            Code::FailedPrecondition,
            designer.hosting().renew_service(pb::RenewServiceRequest {
                account_id: account,
                service_id,
                request_id: rid,
            }),
        )
        .await;
    assert_eq!(status.message(), "a cancelled service cannot be renewed");
    let (account, service_id, rid) = service(request_id());
    server
        .rejects(
            Code::FailedPrecondition,
            designer.hosting().cancel_service(pb::CancelServiceRequest {
                account_id: account,
                service_id,
                request_id: rid,
            }),
        )
        .await;
}

on_both_backends!(
    a_cancelled_service_cannot_be_renewed
        => a_cancelled_service_cannot_be_renewed_on_sqlite,
           a_cancelled_service_cannot_be_renewed_on_postgres
);

// DEADLINE_EXCEEDED

fn waiting_for(position: u64, timeout: Duration) -> tonic::Request<pb::ListProductsRequest> {
    let mut request = tonic::Request::new(pb::ListProductsRequest {
        min_position: position,
        ..Default::default()
    });
    request.set_timeout(timeout);
    request
}

async fn a_read_for_an_unreached_position_fails_at_the_callers_deadline(server: &TestServer) {
    let owner = server.register("admin@abc.co.tz", "ABC Company").await;
    let far_beyond = server.log_head().await + 1_000_000;

    let started = Instant::now();
    server
        .rejects(
            Code::DeadlineExceeded,
            owner
                .catalog()
                .list_products(waiting_for(far_beyond, Duration::from_millis(200))),
        )
        .await;
    let waited = started.elapsed();
    // The server may answer somewhat before the deadline, so that its answer reaches the
    // caller while the caller still waits for it; it must not answer at once.
    assert!(
        waited >= Duration::from_millis(150),
        "answered after {waited:?}, well before the deadline"
    );
    assert!(
        waited <= MAX_WAIT,
        "answered after {waited:?}, beyond the server's maximum wait"
    );
}

on_both_backends!(
    a_read_for_an_unreached_position_fails_at_the_callers_deadline
        => a_read_for_an_unreached_position_fails_at_the_callers_deadline_on_sqlite,
           a_read_for_an_unreached_position_fails_at_the_callers_deadline_on_postgres
);

async fn a_permission_check_for_an_unreached_position_fails_at_the_callers_deadline(
    server: &TestServer,
) {
    let owner = server.register("admin@abc.co.tz", "ABC Company").await;
    let account = owner
        .create_account("ABC Company", "billing@abc.co.tz")
        .await;
    let head = server.log_head().await;
    let check = |min_position: u64| {
        let mut request = tonic::Request::new(pb::CheckPermissionRequest {
            account_id: account.account_id.clone(),
            user_id: owner.user_id.clone(),
            permission: pb::Permission::Invoices as i32,
            min_position,
        });
        request.set_timeout(Duration::from_millis(200));
        request
    };

    server
        .rejects(
            Code::DeadlineExceeded,
            owner.access().check_permission(check(head + 1_000_000)),
        )
        .await;
    let answer = owner
        .access()
        .check_permission(check(head))
        .await
        .expect("a reached position is answered")
        .into_inner();
    assert!(answer.allowed);
    assert_eq!(answer.position, head);
}

on_both_backends!(
    a_permission_check_for_an_unreached_position_fails_at_the_callers_deadline
        => a_permission_check_for_an_unreached_position_fails_at_the_callers_deadline_on_sqlite,
           a_permission_check_for_an_unreached_position_fails_at_the_callers_deadline_on_postgres
);

async fn a_read_waits_no_longer_than_the_servers_maximum_whatever_the_deadline(
    server: &TestServer,
) {
    let owner = server.register("admin@abc.co.tz", "ABC Company").await;
    let far_beyond = server.log_head().await + 1_000_000;

    let without_deadline = tonic::Request::new(pb::ListProductsRequest {
        min_position: far_beyond,
        ..Default::default()
    });
    for request in [
        waiting_for(far_beyond, Duration::from_secs(30)),
        without_deadline,
    ] {
        let started = Instant::now();
        let status = server
            .rejects(
                Code::DeadlineExceeded,
                owner.catalog().list_products(request),
            )
            .await;
        let waited = started.elapsed();
        assert!(waited >= MAX_WAIT, "answered after {waited:?}: {status:?}");
        assert!(
            waited < MAX_WAIT + Duration::from_millis(500),
            "answered after {waited:?}"
        );
    }

    // A position already reached is answered at once.
    let started = Instant::now();
    owner
        .catalog()
        .list_products(waiting_for(owner.registered_at, Duration::from_millis(200)))
        .await
        .expect("a reached position is answered");
    assert!(started.elapsed() < Duration::from_millis(200));
}

on_both_backends!(
    a_read_waits_no_longer_than_the_servers_maximum_whatever_the_deadline
        => a_read_waits_no_longer_than_the_servers_maximum_whatever_the_deadline_on_sqlite,
           a_read_waits_no_longer_than_the_servers_maximum_whatever_the_deadline_on_postgres
);

// RESOURCE_EXHAUSTED

async fn a_message_over_the_size_limit_is_resource_exhausted(server: &TestServer) {
    let Abc {
        owner, account_id, ..
    } = abc_with_designer(server).await;
    let huge_email = format!("{}@newlife.or.tz", "a".repeat(100 * 1024));
    assert!(huge_email.len() > MAX_MESSAGE_BYTES);
    let invite = pb::InviteUserRequest {
        account_id: account_id.clone(),
        email: huge_email,
        full_access: true,
        request_id: request_id(),
        ..Default::default()
    };
    server
        .rejects(
            Code::ResourceExhausted,
            owner.invitations().invite_user(invite),
        )
        .await;

    // A message just under the limit is decoded and judged on its content.
    let long_email = format!("{}@newlife.or.tz", "a".repeat(MAX_MESSAGE_BYTES - 1024));
    let invite = pb::InviteUserRequest {
        account_id,
        email: long_email,
        full_access: true,
        request_id: request_id(),
        ..Default::default()
    };
    server
        .rejects_field("email", owner.invitations().invite_user(invite))
        .await;
}

on_both_backends!(
    a_message_over_the_size_limit_is_resource_exhausted
        => a_message_over_the_size_limit_is_resource_exhausted_on_sqlite,
           a_message_over_the_size_limit_is_resource_exhausted_on_postgres
);

// UNAVAILABLE

/// Opens a connection to the PostgreSQL server's maintenance database, as the test databases'
/// creator does.
async fn postgres_admin() -> tokio_postgres::Client {
    let url = std::env::var(DATABASE_URL_ENV).unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("the PostgreSQL server is reachable");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Refuses new sessions to `database` and ends the open ones, or lets sessions in again.
///
/// Once refused, it waits until the server has no session left there and the server's side of
/// each has had time to see its socket close, so that the next call must open a new session.
async fn set_reachable(admin: &tokio_postgres::Client, database: &str, reachable: bool) {
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {database} ALLOW_CONNECTIONS {reachable}"
        ))
        .await
        .expect("the database's connection setting changes");
    if reachable {
        return;
    }
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&database],
        )
        .await
        .expect("the database's sessions end");
    for _ in 0..100 {
        let row = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                &[&database],
            )
            .await
            .expect("the sessions are counted");
        if row.get::<_, i64>(0) == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("sessions to {database} did not end");
}

#[tokio::test]
async fn a_command_while_the_log_is_unreachable_is_unavailable_and_succeeds_once_it_is_back_on_postgres(
) {
    let Some(server) = TestServer::postgres().await else {
        return;
    };
    let owner = server.register("admin@abc.co.tz", "ABC Company").await;
    let database = server
        .database()
        .expect("a PostgreSQL server")
        .name()
        .to_owned();
    let head = server.log_head().await;
    let admin = postgres_admin().await;

    set_reachable(&admin, &database, false).await;
    let refused = owner
        .accounts()
        .create_account(create_account(
            "ABC Company",
            "admin@abc.co.tz",
            "create-abc",
        ))
        .await;
    set_reachable(&admin, &database, true).await;
    let status = refused.expect_err("the store is unreachable");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        server.log_head().await,
        head,
        "the refused command appended nothing"
    );

    // The same server, without a restart, takes the retry.
    let created = owner
        .accounts()
        .create_account(create_account(
            "ABC Company",
            "admin@abc.co.tz",
            "create-abc",
        ))
        .await
        .expect("the store is back")
        .into_inner();
    assert_eq!(
        created.account.map(|a| a.name),
        Some("ABC Company".to_owned())
    );
    assert_eq!(server.log_head().await, created.position);
    assert_eq!(created.position, head + 1);
}
