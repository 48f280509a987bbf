//! Bearer tokens built to slip past verification: algorithm confusion (an HMAC token keyed with
//! the server's own public key), a missing or unknown `kid`, missing registered claims, and a
//! missing or malformed `sub`. Each is `UNAUTHENTICATED` on a command and on a read, and no
//! command reaches the log; the same claims, signed properly, are accepted.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use onbehalf::auth;
use onbehalf::server::{self, ServerConfig};
use onbehalf::testing::TempDataDir;
use onbehalf_proto::v1 as pb;
use pb::account_service_client::AccountServiceClient;
use pb::catalog_service_client::CatalogServiceClient;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().expect("an ASCII token");
    request.metadata_mut().insert("authorization", value);
    request
}

/// Valid claims for `sub`, issued now for an hour.
fn claims(sub: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "iss": auth::DEFAULT_ISSUER,
        "aud": auth::DEFAULT_ISSUER,
        "sub": sub,
        "iat": now,
        "exp": now + 3600,
    })
}

fn without(mut claims: Value, field: &str) -> Value {
    claims
        .as_object_mut()
        .expect("claims are an object")
        .remove(field);
    claims
}

#[tokio::test]
async fn forged_and_malformed_bearer_tokens_are_unauthenticated_and_append_nothing() {
    let dir = TempDataDir::new();
    let mut config = ServerConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse().expect("an address");
    let running = server::spawn(config.clone())
        .await
        .expect("the server starts");
    let store = server::open_store(&config).await.expect("the log opens");
    let channel = Channel::from_shared(format!("http://{}", running.addr))
        .expect("a URI")
        .connect()
        .await
        .expect("the server accepts connections");

    let key_path = auth::find_signing_key(&auth::keys_dir(dir.path()))
        .expect("the key directory reads")
        .expect("the server made a key");
    let kid = key_path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".key.pem"))
        .expect("a kid")
        .to_owned();
    let private_pem = std::fs::read(&key_path).expect("the private key reads");
    let public_pem = std::fs::read(auth::keys_dir(dir.path()).join(format!("{kid}.pub.pem")))
        .expect("the public key reads");
    let ed = EncodingKey::from_ed_pem(&private_pem).expect("an Ed25519 key");
    let eddsa = |kid: Option<&str>, claims: &Value| {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &ed).expect("a token")
    };

    // A user who exists, so that the valid token below is accepted by the command.
    let registrar = eddsa(
        Some(&kid),
        &json!({
            "iss": auth::DEFAULT_ISSUER, "aud": auth::DEFAULT_ISSUER, "sub": "service:registrar",
            "iat": chrono::Utc::now().timestamp(), "exp": chrono::Utc::now().timestamp() + 3600,
            "scope": "users:register",
        }),
    );
    let user = pb::user_service_client::UserServiceClient::new(channel.clone())
        .register_user(authed(
            pb::RegisterUserRequest {
                email: "owner@abc.co.tz".into(),
                display_name: "Owner".into(),
                request_id: String::new(),
            },
            &registrar,
        ))
        .await
        .expect("the owner registers")
        .into_inner()
        .user
        .expect("a user")
        .user_id;
    let valid = claims(&user);

    // Algorithm confusion: HS256 keyed with the server's public key, under the server's kid.
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some(kid.clone());
    let confused = jsonwebtoken::encode(&hs_header, &valid, &EncodingKey::from_secret(&public_pem))
        .expect("an HMAC token");
    let mut hs384_header = Header::new(Algorithm::HS384);
    hs384_header.kid = Some(kid.clone());
    let confused_384 = jsonwebtoken::encode(
        &hs384_header,
        &valid,
        &EncodingKey::from_secret(&public_pem),
    )
    .expect("an HMAC token");
    // An EdDSA signature moved onto a header that claims another algorithm.
    let eddsa_token = eddsa(Some(&kid), &valid);
    let mut relabelled: Vec<&str> = eddsa_token.split('.').collect();
    let rs256 = base64_url(&serde_json::to_vec(&json!({"alg": "RS256", "kid": kid})).unwrap());
    relabelled[0] = &rs256;
    let relabelled = relabelled.join(".");

    let cases: Vec<(&str, String)> = vec![
        ("HS256 keyed with the public key", confused),
        ("HS384 keyed with the public key", confused_384),
        ("an EdDSA signature under an RS256 header", relabelled),
        ("no kid", eddsa(None, &valid)),
        ("an unknown kid", eddsa(Some("someone-else"), &valid)),
        (
            "a kid with a path in it",
            eddsa(Some(&format!("../{kid}")), &valid),
        ),
        ("no sub", eddsa(Some(&kid), &without(valid.clone(), "sub"))),
        ("no exp", eddsa(Some(&kid), &without(valid.clone(), "exp"))),
        ("no iat", eddsa(Some(&kid), &without(valid.clone(), "iat"))),
        ("no iss", eddsa(Some(&kid), &without(valid.clone(), "iss"))),
        ("no aud", eddsa(Some(&kid), &without(valid.clone(), "aud"))),
        ("an empty sub", eddsa(Some(&kid), &claims(""))),
        (
            "a sub that is no UUID",
            eddsa(Some(&kid), &claims("designer")),
        ),
        (
            "the nil UUID as sub",
            eddsa(Some(&kid), &claims("00000000-0000-0000-0000-000000000000")),
        ),
        (
            "a service without a name",
            eddsa(Some(&kid), &claims("service:")),
        ),
        (
            "a service name with a space",
            eddsa(Some(&kid), &claims("service:bil ling")),
        ),
        (
            "a service name of 65 characters",
            eddsa(Some(&kid), &claims(&format!("service:{}", "s".repeat(65)))),
        ),
        (
            "staff without the staff role",
            eddsa(Some(&kid), &claims("staff:alice")),
        ),
        (
            "an unknown subject kind",
            eddsa(Some(&kid), &claims("admin:root")),
        ),
        (
            "a sub that is a number",
            eddsa(Some(&kid), &{
                let mut c = valid.clone();
                c["sub"] = json!(42);
                c
            }),
        ),
    ];

    for (case, token) in &cases {
        let head = store.head_position().await.expect("the head reads");
        let status = AccountServiceClient::new(channel.clone())
            .create_account(authed(
                pb::CreateAccountRequest {
                    name: "ABC Company".into(),
                    email: "admin@abc.co.tz".into(),
                    request_id: String::new(),
                },
                token,
            ))
            .await
            .expect_err(case);
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
        assert_eq!(
            store.head_position().await.expect("the head reads"),
            head,
            "{case}: the log is untouched"
        );
        let read = CatalogServiceClient::new(channel.clone())
            .list_products(authed(pb::ListProductsRequest::default(), token))
            .await
            .expect_err(case);
        assert_eq!(read.code(), Code::Unauthenticated, "{case}: {read:?}");
    }

    // The same claims, signed as the server expects, are accepted.
    AccountServiceClient::new(channel.clone())
        .create_account(authed(
            pb::CreateAccountRequest {
                name: "ABC Company".into(),
                email: "admin@abc.co.tz".into(),
                request_id: String::new(),
            },
            &eddsa_token,
        ))
        .await
        .expect("a properly signed token is accepted");
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
