//! The authorisation table, cell by cell: every RPC of the contract called by every role against
//! the running server answers with the code `onbehalf_tests::authz::TABLE` states, a refused
//! call leaves the log as it was, and the table has a row for every RPC the contract declares.

use std::collections::BTreeSet;

use onbehalf_proto::v1 as pb;
use onbehalf_tests::authz::{Kind, Role, Rule, ROLES, TABLE};
use onbehalf_tests::{full_access, request_id, Catalogue, Clients, Person, TestServer, ALL_SCOPES};
use prost::Message;
use tonic::{Code, Status};

/// The five users every fixture gives a role; registered once per server.
struct Cast {
    owner: Person,
    with: Person,
    without: Person,
    former: Person,
    stranger: Person,
}

/// One client account set up for a row: the owner, a member holding the row's permission, a
/// member holding everything else, a member whose access was removed, a hosting service with an
/// unpaid invoice, a domain, and a pending invitation to someone who is not registered.
struct Fixture {
    /// The permissions the members were given, to know when a fixture fits another row.
    shape: (Vec<i32>, Vec<i32>),
    account_id: String,
    hosting_product_id: String,
    hosting_service_id: String,
    hosting_invoice_id: String,
    domain_service_id: String,
    invitation_id: String,
    invitation_token: String,
    contact_id: String,
    /// A user of its own, in no client account, for `EraseUser` to erase.
    erasable_user_id: String,
}

/// The RPCs whose success leaves a fixture as every other cell of the row expects it, so the
/// next role can use the same fixture.
const LEAVE_FIXTURE_USABLE: &[&str] = &[
    "RegisterUser",
    "CreateAccount",
    "UpdateAccountProfile",
    "InviteUser",
    "PutProduct",
    "OrderService",
    "RenewService",
    "UpdateNameservers",
    "PayInvoice",
];

fn permissions_with(rule: &Rule) -> Vec<i32> {
    match rule.permissions.first() {
        Some(p) => vec![*p as i32],
        None => full_access(),
    }
}

fn permissions_without(rule: &Rule) -> Vec<i32> {
    if rule.permissions.is_empty() {
        return vec![pb::Permission::Quotes as i32];
    }
    full_access()
        .into_iter()
        .filter(|p| !rule.permissions.iter().any(|needed| *needed as i32 == *p))
        .collect()
}

fn as_permissions(raw: &[i32]) -> Vec<pb::Permission> {
    raw.iter()
        .map(|p| pb::Permission::try_from(*p).expect("a known permission"))
        .collect()
}

/// Brings `member` in with `permissions`, full access being spelled as such.
async fn bring_in(owner: &Person, account_id: &str, member: &Person, permissions: &[i32]) {
    if permissions.len() == full_access().len() {
        owner.bring_in(account_id, member, &[]).await;
    } else {
        owner
            .bring_in(account_id, member, &as_permissions(permissions))
            .await;
    }
}

async fn fixture(
    server: &TestServer,
    cast: &Cast,
    catalogue: &Catalogue,
    rule: &Rule,
    n: u64,
) -> Fixture {
    let (with, without) = (permissions_with(rule), permissions_without(rule));
    let owner = &cast.owner;
    let account_id = owner
        .create_account(&format!("ABC Company {n}"), "admin@abc.co.tz")
        .await
        .account_id;
    bring_in(owner, &account_id, &cast.with, &with).await;
    bring_in(owner, &account_id, &cast.without, &without).await;
    owner.bring_in(&account_id, &cast.former, &[]).await;
    owner
        .access()
        .revoke_access(pb::RevokeAccessRequest {
            account_id: account_id.clone(),
            user_id: cast.former.user_id.clone(),
            request_id: request_id(),
        })
        .await
        .expect("the owner removes the former member");

    let order = |product_id: &str, domain: String| pb::OrderServiceRequest {
        account_id: account_id.clone(),
        product_id: product_id.into(),
        domain,
        billing_cycle: pb::BillingCycle::Annually as i32,
        request_id: request_id(),
    };
    let hosting = owner
        .hosting()
        .order_service(order(&catalogue.hosting_product_id, String::new()))
        .await
        .expect("the owner orders hosting")
        .into_inner();
    let domain = owner
        .hosting()
        .order_service(order(
            &catalogue.domain_product_id,
            format!("abc-{n}.co.tz"),
        ))
        .await
        .expect("the owner orders a domain")
        .into_inner();

    let invitee = format!("invitee-{n}@abc.co.tz");
    let sent = owner.invite_full_access(&account_id, &invitee).await;
    let notices = server
        .admin()
        .notifications()
        .list_notifications(pb::ListNotificationsRequest {
            recipient_email: invitee.clone(),
            page_size: 500,
            min_position: sent.position,
            ..Default::default()
        })
        .await
        .expect("the mailer reads the invitation")
        .into_inner()
        .notifications;
    let invitation_token = notices
        .into_iter()
        .find(|n| n.category == pb::NotificationCategory::Invitation as i32)
        .map(|n| n.action_token)
        .expect("the invitee has an invitation notice");

    let contact = owner
        .accounts()
        .add_contact(pb::AddContactRequest {
            account_id: account_id.clone(),
            name: "ABC Accounts".into(),
            email: format!("accounts-{n}@abc.co.tz"),
            categories: vec![pb::ContactCategory::ContactInvoice as i32],
            request_id: request_id(),
        })
        .await
        .expect("the owner adds a contact")
        .into_inner()
        .contact
        .expect("AddContact returns the contact");

    let erasable = server
        .register(&format!("leaving-{n}@yourcompany.com"), "Leaving User")
        .await;
    Fixture {
        erasable_user_id: erasable.user_id,
        contact_id: contact.contact_id,
        shape: (with, without),
        account_id,
        hosting_product_id: catalogue.hosting_product_id.clone(),
        hosting_service_id: hosting.service_id,
        hosting_invoice_id: hosting.invoice_id,
        domain_service_id: domain.service_id,
        invitation_id: sent.invitation.invitation_id,
        invitation_token,
    }
}

fn clients(server: &TestServer, cast: &Cast, rule: &Rule, role: Role) -> Clients {
    let service = |scopes: Vec<&str>| server.service("authz-probe", &scopes);
    match role {
        Role::Owner => cast.owner.clients.clone(),
        Role::MemberWith => cast.with.clients.clone(),
        Role::MemberWithout => cast.without.clients.clone(),
        Role::FormerMember => cast.former.clients.clone(),
        Role::Stranger => cast.stranger.clients.clone(),
        Role::ServiceScoped => match rule.scope {
            Some(scope) => service(vec![scope]),
            None => service(ALL_SCOPES.to_vec()),
        },
        Role::ServiceUnscoped => match rule.scope {
            Some(scope) => service(ALL_SCOPES.iter().copied().filter(|s| *s != scope).collect()),
            None => service(Vec::new()),
        },
        Role::Staff => server.staff("support-desk", Some("authorisation table probe")),
    }
}

/// Drops an accepted call's response: only its code matters here.
fn ok<T>(_: T) {}

/// Reads a server stream to its end, answering its first error.
async fn drain<T>(
    stream: Result<tonic::Response<tonic::Streaming<T>>, Status>,
) -> Result<(), Status> {
    let mut stream = stream?.into_inner();
    while stream.message().await?.is_some() {}
    Ok(())
}

/// Calls `rule`'s RPC as `c` with a request that is valid in every respect but who calls it.
async fn call(
    server: &TestServer,
    cast: &Cast,
    fx: &Fixture,
    rule: &Rule,
    c: &Clients,
    n: u64,
) -> Result<(), Status> {
    let account_id = fx.account_id.clone();
    let head = server.log_head().await;
    match (rule.service, rule.method) {
        ("UserService", "RegisterUser") => c
            .users()
            .register_user(pb::RegisterUserRequest {
                email: format!("new-{n}@abc.co.tz"),
                display_name: "New User".into(),
                request_id: request_id(),
            })
            .await
            .map(ok),

        ("UserService", "EraseUser") => c
            .users()
            .erase_user(pb::EraseUserRequest {
                user_id: fx.erasable_user_id.clone(),
                request_id: request_id(),
            })
            .await
            .map(ok),

        ("AccountService", "CreateAccount") => c
            .accounts()
            .create_account(pb::CreateAccountRequest {
                name: format!("Star Logistics {n}"),
                email: "support@starlogistics.co.tz".into(),
                request_id: request_id(),
            })
            .await
            .map(ok),
        ("AccountService", "GetAccount") => c
            .accounts()
            .get_account(pb::GetAccountRequest {
                account_id,
                min_position: 0,
            })
            .await
            .map(ok),
        ("AccountService", "UpdateAccountProfile") => c
            .accounts()
            .update_account_profile(pb::UpdateAccountProfileRequest {
                account_id,
                name: format!("ABC Company Ltd {n}"),
                email: "billing@abc.co.tz".into(),
                request_id: request_id(),
            })
            .await
            .map(ok),
        ("AccountService", "TransferOwnership") => c
            .accounts()
            .transfer_ownership(pb::TransferOwnershipRequest {
                account_id,
                new_owner_user_id: cast.with.user_id.clone(),
                request_id: request_id(),
            })
            .await
            .map(ok),
        ("AccountService", "ListAccessibleAccounts") => c
            .accounts()
            .list_accessible_accounts(pb::ListAccessibleAccountsRequest::default())
            .await
            .map(ok),
        ("AccountService", "ListMembers") => c
            .accounts()
            .list_members(pb::ListMembersRequest {
                account_id,
                ..Default::default()
            })
            .await
            .map(ok),

        ("AccountService", "AddContact") => c
            .accounts()
            .add_contact(pb::AddContactRequest {
                account_id,
                name: "Another Contact".into(),
                email: format!("contact-{n}@abc.co.tz"),
                categories: vec![pb::ContactCategory::ContactProduct as i32],
                request_id: request_id(),
            })
            .await
            .map(ok),
        ("AccountService", "RemoveContact") => c
            .accounts()
            .remove_contact(pb::RemoveContactRequest {
                account_id,
                contact_id: fx.contact_id.clone(),
                request_id: request_id(),
            })
            .await
            .map(ok),
        ("AccountService", "ListContacts") => c
            .accounts()
            .list_contacts(pb::ListContactsRequest {
                account_id,
                ..Default::default()
            })
            .await
            .map(ok),
        ("NotificationService", "SetNotificationOptIns") => c
            .notifications()
            .set_notification_opt_ins(pb::SetNotificationOptInsRequest {
                account_id,
                categories: vec![pb::ContactCategory::ContactGeneral as i32],
                request_id: request_id(),
            })
            .await
            .map(ok),
        ("NotificationService", "GetNotificationOptIns") => c
            .notifications()
            .get_notification_opt_ins(pb::GetNotificationOptInsRequest {
                account_id,
                min_position: 0,
            })
            .await
            .map(ok),

        ("InvitationService", "InviteUser") => c
            .invitations()
            .invite_user(pb::InviteUserRequest {
                account_id,
                email: format!("guest-{n}@abc.co.tz"),
                permissions: vec![],
                full_access: true,
                request_id: request_id(),
            })
            .await
            .map(ok),
        ("InvitationService", "ResendInvitation") => c
            .invitations()
            .resend_invitation(pb::ResendInvitationRequest {
                account_id,
                invitation_id: fx.invitation_id.clone(),
                request_id: request_id(),
            })
            .await
            .map(ok),
        ("InvitationService", "CancelInvitation") => c
            .invitations()
            .cancel_invitation(pb::CancelInvitationRequest {
                account_id,
                invitation_id: fx.invitation_id.clone(),
                request_id: request_id(),
            })
            .await
            .map(ok),
        ("InvitationService", "ListInvitations") => c
            .invitations()
            .list_invitations(pb::ListInvitationsRequest {
                account_id,
                ..Default::default()
            })
            .await
            .map(ok),
        ("InvitationService", "ListMyInvitations") => c
            .invitations()
            .list_my_invitations(pb::ListMyInvitationsRequest::default())
            .await
            .map(ok),
        ("InvitationService", "AcceptInvitation") => c
            .invitations()
            .accept_invitation(pb::AcceptInvitationRequest {
                token: fx.invitation_token.clone(),
                request_id: request_id(),
            })
            .await
            .map(ok),
        ("InvitationService", "DeclineInvitation") => c
            .invitations()
            .decline_invitation(pb::DeclineInvitationRequest {
                token: fx.invitation_token.clone(),
                request_id: request_id(),
            })
            .await
            .map(ok),

        ("AccessService", "GrantPermission") => c
            .access()
            .grant_permission(pb::GrantPermissionRequest {
                account_id,
                user_id: cast.without.user_id.clone(),
                permissions: vec![pb::Permission::Tickets as i32],
                request_id: request_id(),
            })
            .await
            .map(ok),
        ("AccessService", "RevokePermission") => c
            .access()
            .revoke_permission(pb::RevokePermissionRequest {
                account_id,
                user_id: cast.with.user_id.clone(),
                permissions: vec![pb::Permission::Quotes as i32],
                request_id: request_id(),
            })
            .await
            .map(ok),
        ("AccessService", "RevokeAccess") => c
            .access()
            .revoke_access(pb::RevokeAccessRequest {
                account_id,
                user_id: cast.without.user_id.clone(),
                request_id: request_id(),
            })
            .await
            .map(ok),
        ("AccessService", "LeaveAccount") => c
            .access()
            .leave_account(pb::LeaveAccountRequest {
                account_id,
                request_id: request_id(),
            })
            .await
            .map(ok),
        ("AccessService", "CheckPermission") => c
            .access()
            .check_permission(pb::CheckPermissionRequest {
                account_id,
                user_id: cast.with.user_id.clone(),
                permission: pb::Permission::Profile as i32,
                min_position: 0,
            })
            .await
            .map(ok),

        ("CatalogService", "PutProduct") => c
            .catalog()
            .put_product(pb::PutProductRequest {
                product: Some(pb::Product {
                    product_id: String::new(),
                    name: format!("Business Hosting {n}"),
                    kind: pb::ProductKind::Hosting as i32,
                    tld: String::new(),
                    prices: vec![pb::Price {
                        billing_cycle: pb::BillingCycle::Monthly as i32,
                        amount_minor: 2_500_000,
                        currency: onbehalf_tests::CURRENCY.into(),
                    }],
                }),
                request_id: request_id(),
            })
            .await
            .map(ok),
        ("CatalogService", "ListProducts") => c
            .catalog()
            .list_products(pb::ListProductsRequest::default())
            .await
            .map(ok),

        ("HostingService", "OrderService") => c
            .hosting()
            .order_service(pb::OrderServiceRequest {
                account_id,
                product_id: fx.hosting_product_id.clone(),
                domain: String::new(),
                billing_cycle: pb::BillingCycle::Monthly as i32,
                request_id: request_id(),
            })
            .await
            .map(ok),
        ("HostingService", "RenewService") => c
            .hosting()
            .renew_service(pb::RenewServiceRequest {
                account_id,
                service_id: fx.hosting_service_id.clone(),
                request_id: request_id(),
            })
            .await
            .map(ok),
        ("HostingService", "CancelService") => c
            .hosting()
            .cancel_service(pb::CancelServiceRequest {
                account_id,
                service_id: fx.hosting_service_id.clone(),
                request_id: request_id(),
            })
            .await
            .map(ok),
        ("HostingService", "UpdateNameservers") => c
            .hosting()
            .update_nameservers(pb::UpdateNameserversRequest {
                account_id,
                service_id: fx.domain_service_id.clone(),
                nameservers: vec!["ns1.abc.co.tz".into(), "ns2.abc.co.tz".into()],
                request_id: request_id(),
            })
            .await
            .map(ok),
        ("HostingService", "ListServices") => c
            .hosting()
            .list_services(pb::ListServicesRequest {
                account_id,
                ..Default::default()
            })
            .await
            .map(ok),

        ("BillingService", "ListInvoices") => c
            .billing()
            .list_invoices(pb::ListInvoicesRequest {
                account_id,
                ..Default::default()
            })
            .await
            .map(ok),
        ("BillingService", "PayInvoice") => c
            .billing()
            .pay_invoice(pb::PayInvoiceRequest {
                account_id,
                invoice_id: fx.hosting_invoice_id.clone(),
                amount_minor: 100,
                reference: format!("MPESA-{n}"),
                request_id: request_id(),
            })
            .await
            .map(ok),

        ("NotificationService", "ListNotifications") => c
            .notifications()
            .list_notifications(pb::ListNotificationsRequest {
                account_id,
                ..Default::default()
            })
            .await
            .map(ok),

        ("AuditService", "ListAuditTrail") => c
            .audit()
            .list_audit_trail(pb::ListAuditTrailRequest {
                account_id,
                ..Default::default()
            })
            .await
            .map(ok),
        ("AuditService", "ExportAuditTrail") => {
            drain(
                c.audit()
                    .export_audit_trail(pb::ExportAuditTrailRequest {
                        account_id,
                        ..Default::default()
                    })
                    .await,
            )
            .await
        }
        ("AuditService", "VerifyAuditTrail") => c
            .audit()
            .verify_audit_trail(pb::VerifyAuditTrailRequest {})
            .await
            .map(ok),

        ("HistoryService", "GetAccountAsOf") => c
            .history()
            .get_account_as_of(pb::GetAccountAsOfRequest {
                account_id,
                point: Some(pb::get_account_as_of_request::Point::Position(head)),
            })
            .await
            .map(ok),
        ("HistoryService", "CheckPermissionAsOf") => c
            .history()
            .check_permission_as_of(pb::CheckPermissionAsOfRequest {
                account_id,
                user_id: cast.with.user_id.clone(),
                permission: pb::Permission::Profile as i32,
                point: Some(pb::check_permission_as_of_request::Point::Position(head)),
            })
            .await
            .map(ok),
        ("HistoryService", "StreamEvents") => {
            drain(
                c.history()
                    .stream_events(pb::StreamEventsRequest::default())
                    .await,
            )
            .await
        }

        ("HostingService", "ActivateService") => c
            .hosting()
            .activate_service(pb::ActivateServiceRequest {
                account_id,
                service_id: fx.hosting_service_id.clone(),
                server: "cp1".into(),
                panel_username: "abccotz".into(),
                request_id: request_id(),
            })
            .await
            .map(ok),
        ("HostingService", "CreateServiceLogin") => c
            .hosting()
            .create_service_login(pb::CreateServiceLoginRequest {
                account_id,
                service_id: fx.hosting_service_id.clone(),
            })
            .await
            .map(ok),

        (service, method) => panic!("no request is written for {service}/{method}"),
    }
}

async fn every_rpc_answers_every_role_as_the_table_says(server: &TestServer) {
    let catalogue = server.seed_catalogue().await;
    let cast = Cast {
        owner: server.register("admin@abc.co.tz", "ABC Company").await,
        with: server
            .register("designer@yourcompany.com", "Web Designer")
            .await,
        without: server
            .register("assistant@yourcompany.com", "Assistant")
            .await,
        former: server
            .register("old-agency@example.co.tz", "Old Agency")
            .await,
        stranger: server
            .register("support@starlogistics.co.tz", "Star Logistics")
            .await,
    };

    let mut n = 0u64;
    let mut current: Option<(Fixture, u64)> = None;
    let mut mismatches = Vec::new();
    let mut cells = 0;
    for rule in TABLE {
        let shape = (permissions_with(rule), permissions_without(rule));
        for role in ROLES {
            n += 1;
            let usable = match &current {
                Some((fx, head)) => fx.shape == shape && *head == server.log_head().await,
                None => false,
            };
            if !usable {
                let fx = fixture(server, &cast, &catalogue, rule, n).await;
                current = Some((fx, server.log_head().await));
            }
            let (fx, _) = current.as_ref().expect("a fixture was just made");

            let clients = clients(server, &cast, rule, role);
            let before = server.log_head().await;
            let answer = call(server, &cast, fx, rule, &clients, n).await;
            let after = server.log_head().await;
            cells += 1;

            let code = answer.as_ref().err().map_or(Code::Ok, Status::code);
            let expected = rule.answer(role);
            if code != expected {
                mismatches.push(format!(
                    "{} as {role:?}: expected {expected:?}, got {code:?} ({:?})",
                    rule.path(),
                    answer.err().map(|s| s.message().to_owned()),
                ));
            }
            if (code != Code::Ok || rule.kind == Kind::Read) && after != before {
                mismatches.push(format!(
                    "{} as {role:?} answered {code:?} and moved the log from {before} to {after}",
                    rule.path()
                ));
            }
            if code == Code::Ok
                && rule.kind == Kind::Mutating
                && LEAVE_FIXTURE_USABLE.contains(&rule.method)
            {
                // The fixture still holds what every cell of the row relies on.
                if let Some((_, head)) = current.as_mut() {
                    *head = after;
                }
            }
        }
    }
    assert_eq!(cells, TABLE.len() * ROLES.len());
    assert!(
        mismatches.is_empty(),
        "{} of {cells} cells differ from the table:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// A panel configuration naming `cp1`, so that ActivateService names a configured server. No
/// row opens a panel: the probe's hosting service is never activated when CreateServiceLogin
/// runs, so nothing connects to the (closed) loopback port it names.
fn probe_panel_servers(dir: &std::path::Path) -> onbehalf::panel::PanelServers {
    std::fs::write(dir.join("cp1.token"), "AUTHZPROBETOKEN").expect("the token is written");
    onbehalf::panel::PanelServers::parse(
        "[servers.cp1]\nhostname = \"localhost\"\nport = 9\ntoken_file = \"cp1.token\"\n",
        dir,
    )
    .expect("a valid panel configuration")
}

#[tokio::test]
async fn every_rpc_answers_every_role_as_the_table_says_on_sqlite() {
    let dir = onbehalf::testing::TempDataDir::new();
    let panels = probe_panel_servers(dir.path());
    let server = TestServer::sqlite_with(|config| config.settings.panel_servers = panels).await;
    every_rpc_answers_every_role_as_the_table_says(&server).await;
}

#[tokio::test]
async fn every_rpc_answers_every_role_as_the_table_says_on_postgres() {
    let dir = onbehalf::testing::TempDataDir::new();
    let panels = probe_panel_servers(dir.path());
    let Some(server) =
        TestServer::postgres_with(|config| config.settings.panel_servers = panels).await
    else {
        return;
    };
    every_rpc_answers_every_role_as_the_table_says(&server).await;
}

/// Every RPC of every service the contract declares, as `(service, method)`.
fn contract_rpcs() -> BTreeSet<(String, String)> {
    let set = prost_types::FileDescriptorSet::decode(onbehalf_proto::FILE_DESCRIPTOR_SET)
        .expect("the contract's descriptor set decodes");
    let mut rpcs = BTreeSet::new();
    for file in set.file {
        if file.package() != "onbehalf.v1" {
            continue;
        }
        for service in &file.service {
            for method in &service.method {
                rpcs.insert((service.name().to_owned(), method.name().to_owned()));
            }
        }
    }
    rpcs
}

#[test]
fn the_table_has_one_row_for_every_rpc_of_the_contract_and_no_other() {
    let contract = contract_rpcs();
    let table: BTreeSet<(String, String)> = TABLE
        .iter()
        .map(|r| (r.service.to_owned(), r.method.to_owned()))
        .collect();
    assert_eq!(table.len(), TABLE.len(), "the table names an RPC twice");
    let missing: Vec<_> = contract.difference(&table).collect();
    let unknown: Vec<_> = table.difference(&contract).collect();
    assert!(missing.is_empty(), "RPCs without a row: {missing:?}");
    assert!(
        unknown.is_empty(),
        "rows for RPCs the contract lacks: {unknown:?}"
    );
    assert!(!contract.is_empty(), "the descriptor set declares no RPC");
}

#[test]
fn a_row_opened_by_a_scope_or_a_permission_names_a_real_one() {
    for rule in TABLE {
        if let Some(scope) = rule.scope {
            assert!(
                ALL_SCOPES.contains(&scope),
                "{}: unknown scope {scope}",
                rule.path()
            );
            assert_eq!(
                rule.answer(Role::ServiceScoped),
                Code::Ok,
                "{}",
                rule.path()
            );
            assert_ne!(
                rule.answer(Role::ServiceUnscoped),
                Code::Ok,
                "{}",
                rule.path()
            );
        }
        if !rule.permissions.is_empty() {
            assert_eq!(rule.answer(Role::MemberWith), Code::Ok, "{}", rule.path());
            assert_ne!(
                rule.answer(Role::MemberWithout),
                Code::Ok,
                "{}",
                rule.path()
            );
        }
    }
}
