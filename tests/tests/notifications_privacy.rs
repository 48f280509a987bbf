//! Invitation tokens reach only their invitee: an account's own readers (the owner, a member
//! with EMAILS) see the invitation notice without the link that would let them join as someone
//! else.

use onbehalf_proto::v1 as pb;
use onbehalf_tests::{on_both_backends, TestServer};

async fn an_emails_member_sees_invitation_notices_without_their_tokens(server: &TestServer) {
    let owner = server.register("admin@abc.co.tz", "ABC Company").await;
    let account = owner.create_account("ABC Company", "admin@abc.co.tz").await;
    let clerk = server.register("clerk@abc.co.tz", "ABC Clerk").await;
    owner
        .bring_in(&account.account_id, &clerk, &[pb::Permission::Emails])
        .await;
    let sent = owner
        .invite_full_access(&account.account_id, "newstaff@abc.co.tz")
        .await;

    let listed = clerk
        .notifications()
        .list_notifications(pb::ListNotificationsRequest {
            account_id: account.account_id.clone(),
            page_size: 500,
            min_position: sent.position,
            ..Default::default()
        })
        .await
        .expect("an EMAILS member reads the account's notifications")
        .into_inner()
        .notifications;
    let invitation = listed
        .iter()
        .find(|n| n.recipient_email == "newstaff@abc.co.tz")
        .expect("the invitation notice is listed");
    assert_eq!(
        invitation.category,
        pb::NotificationCategory::Invitation as i32
    );
    assert_eq!(invitation.action_token, "");
    assert!(!invitation.body.contains("token="), "{}", invitation.body);
    assert!(
        invitation
            .body
            .contains("[link withheld: only the invitee sees it]"),
        "{}",
        invitation.body
    );

    // The invitee, reading its own email's notices, still gets the token and the link.
    let newstaff = server.register("newstaff@abc.co.tz", "New Staff").await;
    let token = newstaff
        .invitation_token(&account.account_id, newstaff.registered_at)
        .await;
    assert!(!token.is_empty());
    let joined = newstaff.accept(&token).await;
    assert_eq!(joined.account_id, account.account_id);
    assert_eq!(joined.permissions.len(), 13);
}

on_both_backends!(an_emails_member_sees_invitation_notices_without_their_tokens
    => an_emails_member_sees_invitation_notices_without_their_tokens_on_sqlite,
       an_emails_member_sees_invitation_notices_without_their_tokens_on_postgres);
