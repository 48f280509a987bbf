//! Contacts and members' opt-ins: who receives a client account's invoice and service notices.

use onbehalf_proto::v1 as pb;
use onbehalf_tests::{on_both_backends, request_id, violated_fields, TestServer, DESIGNER};
use tonic::Code;

fn add(account_id: &str, email: &str, categories: &[pb::ContactCategory]) -> pb::AddContactRequest {
    pb::AddContactRequest {
        account_id: account_id.into(),
        name: "ABC Accounts".into(),
        email: email.into(),
        categories: categories.iter().map(|c| *c as i32).collect(),
        request_id: request_id(),
    }
}

/// The recipients of every notice of `kind` on the account, in position order.
async fn recipients(server: &TestServer, account_id: &str, subject: &str) -> Vec<String> {
    let head = server.log_head().await;
    server
        .admin()
        .notifications()
        .list_notifications(pb::ListNotificationsRequest {
            account_id: account_id.into(),
            page_size: 500,
            min_position: head,
            ..Default::default()
        })
        .await
        .expect("the notifications")
        .into_inner()
        .notifications
        .into_iter()
        .filter(|n| n.subject == subject)
        .map(|n| n.recipient_email)
        .collect()
}

async fn contacts_and_opt_ins_route_invoices(server: &TestServer) {
    let catalogue = server.seed_catalogue().await;
    let owner = server.register("admin@abc.co.tz", "ABC Company").await;
    let account = owner.create_account("ABC Company", "admin@abc.co.tz").await;
    let account_id = account.account_id.clone();
    let designer = server.register(DESIGNER, "Web Designer").await;
    owner.bring_in(&account_id, &designer, &[]).await;
    let viewer = server.register("viewer@yourcompany.com", "Viewer").await;
    owner
        .bring_in(&account_id, &viewer, &[pb::Permission::Products])
        .await;

    // A contact needs a category, and one email is one contact.
    let empty = owner
        .accounts()
        .add_contact(add(&account_id, "accounts@abc.co.tz", &[]))
        .await
        .expect_err("a contact without categories is refused");
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&empty), ["categories"]);
    let accounts = owner
        .accounts()
        .add_contact(add(
            &account_id,
            "accounts@abc.co.tz",
            &[pb::ContactCategory::ContactInvoice],
        ))
        .await
        .expect("the owner adds a contact")
        .into_inner()
        .contact
        .expect("the contact");
    let again = owner
        .accounts()
        .add_contact(add(
            &account_id,
            "Accounts@ABC.co.tz",
            &[pb::ContactCategory::ContactProduct],
        ))
        .await
        .expect_err("a second contact with the same email is refused");
    assert_eq!(again.code(), Code::AlreadyExists);
    let hosting = owner
        .accounts()
        .add_contact(add(
            &account_id,
            "it@abc.co.tz",
            &[pb::ContactCategory::ContactProduct],
        ))
        .await
        .expect("the owner adds a second contact")
        .into_inner()
        .contact
        .expect("the contact");

    // A member opts into what its permissions show, and nothing else.
    let refused = viewer
        .notifications()
        .set_notification_opt_ins(pb::SetNotificationOptInsRequest {
            account_id: account_id.clone(),
            categories: vec![pb::ContactCategory::ContactInvoice as i32],
            request_id: request_id(),
        })
        .await
        .expect_err("invoices need INVOICES");
    assert_eq!(refused.code(), Code::PermissionDenied);
    for (member, category) in [
        (&viewer, pb::ContactCategory::ContactProduct),
        (&designer, pb::ContactCategory::ContactInvoice),
    ] {
        let set = member
            .notifications()
            .set_notification_opt_ins(pb::SetNotificationOptInsRequest {
                account_id: account_id.clone(),
                categories: vec![category as i32],
                request_id: request_id(),
            })
            .await
            .expect("the member opts in")
            .into_inner();
        assert_eq!(set.categories, [category as i32]);
    }
    let mine = viewer
        .notifications()
        .get_notification_opt_ins(pb::GetNotificationOptInsRequest {
            account_id: account_id.clone(),
            min_position: 0,
        })
        .await
        .expect("the viewer reads its choice")
        .into_inner();
    assert_eq!(
        mine.categories,
        [pb::ContactCategory::ContactProduct as i32]
    );

    let order = |domain: &str| pb::OrderServiceRequest {
        account_id: account_id.clone(),
        product_id: catalogue.hosting_product_id.clone(),
        domain: domain.into(),
        billing_cycle: pb::BillingCycle::Annually as i32,
        request_id: request_id(),
    };
    owner
        .hosting()
        .order_service(order("abc.co.tz"))
        .await
        .expect("the owner orders");
    assert_eq!(
        recipients(server, &account_id, "Invoice #1 for ABC Company").await,
        ["admin@abc.co.tz", "accounts@abc.co.tz", DESIGNER]
    );
    assert_eq!(
        recipients(
            server,
            &account_id,
            "New service for ABC Company: Starter Hosting (abc.co.tz)"
        )
        .await,
        ["admin@abc.co.tz", "it@abc.co.tz", "viewer@yourcompany.com"]
    );

    // The owner takes INVOICES from the designer and removes the invoice contact: both hear
    // of nothing more, while the change itself reaches the owner and the designer.
    owner
        .access()
        .revoke_permission(pb::RevokePermissionRequest {
            account_id: account_id.clone(),
            user_id: designer.user_id.clone(),
            permissions: vec![pb::Permission::Invoices as i32],
            request_id: request_id(),
        })
        .await
        .expect("the owner revokes INVOICES");
    owner
        .accounts()
        .remove_contact(pb::RemoveContactRequest {
            account_id: account_id.clone(),
            contact_id: accounts.contact_id.clone(),
            request_id: request_id(),
        })
        .await
        .expect("the owner removes the contact");
    let listed = owner
        .accounts()
        .list_contacts(pb::ListContactsRequest {
            account_id: account_id.clone(),
            min_position: server.log_head().await,
            ..Default::default()
        })
        .await
        .expect("the owner lists contacts")
        .into_inner()
        .contacts;
    assert_eq!(listed, [hosting]);
    assert_eq!(
        recipients(
            server,
            &account_id,
            "Permissions of Web Designer <designer@yourcompany.com> on ABC Company changed"
        )
        .await,
        ["admin@abc.co.tz", DESIGNER]
    );
    owner
        .hosting()
        .order_service(order("abc2.co.tz"))
        .await
        .expect("the owner orders again");
    assert_eq!(
        recipients(server, &account_id, "Invoice #2 for ABC Company").await,
        ["admin@abc.co.tz"]
    );
}

on_both_backends!(
    contacts_and_opt_ins_route_invoices =>
        contacts_and_members_opt_ins_decide_who_receives_invoices_on_sqlite,
    contacts_and_members_opt_ins_decide_who_receives_invoices_on_postgres
);
