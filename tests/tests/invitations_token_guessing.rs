//! Guessing invitation tokens is cut short: a caller that presents too many tokens naming no
//! invitation is refused for a while, even with a valid one, and other callers are unaffected.

use onbehalf_proto::v1 as pb;
use onbehalf_tests::{on_both_backends, request_id, TestServer};
use tonic::Code;

async fn a_caller_guessing_tokens_is_refused_after_ten_misses(server: &TestServer) {
    let owner = server.register("admin@abc.co.tz", "ABC Company").await;
    let abc = owner
        .create_account("ABC Company", "admin@abc.co.tz")
        .await
        .account_id;
    let sent = owner
        .invite_full_access(&abc, "designer@yourcompany.com")
        .await;
    let designer = server
        .register("designer@yourcompany.com", "Web Designer")
        .await;
    let token = designer.invitation_token(&abc, sent.position).await;
    let guesser = server.register("guesser@example.com", "Guesser").await;

    let accept = |token: String| pb::AcceptInvitationRequest {
        token,
        request_id: request_id(),
    };
    // Flipping one character keeps the token's shape but breaks its MAC.
    let mut forged = token.clone().into_bytes();
    forged[10] = if forged[10] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ASCII");
    for attempt in 1..=10 {
        let status = guesser
            .invitations()
            .accept_invitation(accept(forged.clone()))
            .await
            .expect_err("forged");
        assert_eq!(status.code(), Code::NotFound, "attempt {attempt}");
    }
    let status = guesser
        .invitations()
        .accept_invitation(accept(token.clone()))
        .await
        .expect_err("cut short");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        "too many invitation tokens that name no invitation; try again later"
    );

    let joined = designer.accept(&token).await;
    assert_eq!(joined.account_id, abc);
}

on_both_backends!(a_caller_guessing_tokens_is_refused_after_ten_misses
    => a_caller_guessing_tokens_is_refused_after_ten_misses_on_sqlite,
       a_caller_guessing_tokens_is_refused_after_ten_misses_on_postgres);
