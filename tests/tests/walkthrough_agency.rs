//! The agency walkthrough end to end: a designer's master login manages four client accounts
//! on their behalf, and each client keeps its own invoices, notifications and services.

use onbehalf_proto::v1 as pb;
use onbehalf_tests::{
    date, full_access, on_both_backends, Catalogue, Person, TestServer, CURRENCY, DESIGNER,
    DOMAIN_ANNUAL_MINOR, HOSTING_ANNUAL_MINOR, HOSTING_MONTHLY_MINOR,
};
use tonic::Code;

/// The walkthrough's client accounts: name and billing email, which is also the owner's login.
const CLIENTS: [(&str, &str); 4] = [
    ("ABC Company", "admin@abc.co.tz"),
    ("New Life Church", "info@newlife.or.tz"),
    ("Star Logistics", "support@starlogistics.co.tz"),
    ("Green Farm Ltd", "info@greenfarm.co.tz"),
];

/// One client account of the walkthrough and its owner.
struct Client {
    name: &'static str,
    account_id: String,
    owner: Person,
}

/// The state the walkthrough builds before the designer starts ordering.
struct Agency {
    catalogue: Catalogue,
    designer: Person,
    own_account_id: String,
    abc: Client,
    new_life: Client,
    star: Client,
    green_farm: Client,
    /// The position after the last acceptance.
    position: u64,
}

/// An account in a switcher, as (name, role, permissions).
type Switched = (String, i32, Vec<i32>);

async fn switcher(person: &Person, min_position: u64) -> Vec<Switched> {
    person
        .accounts()
        .list_accessible_accounts(pb::ListAccessibleAccountsRequest {
            min_position,
            ..Default::default()
        })
        .await
        .expect("the switcher is readable")
        .into_inner()
        .accounts
        .into_iter()
        .map(|a| (a.name, a.role, a.permissions))
        .collect()
}

fn switched(name: &str, role: pb::Role) -> Switched {
    (name.to_owned(), role as i32, full_access())
}

async fn invoices(
    person: &Person,
    account_id: &str,
    min_position: u64,
) -> pb::ListInvoicesResponse {
    person
        .billing()
        .list_invoices(pb::ListInvoicesRequest {
            account_id: account_id.into(),
            min_position,
            ..Default::default()
        })
        .await
        .expect("the invoices are readable")
        .into_inner()
}

async fn services(person: &Person, account_id: &str, min_position: u64) -> Vec<pb::Service> {
    person
        .hosting()
        .list_services(pb::ListServicesRequest {
            account_id: account_id.into(),
            min_position,
            ..Default::default()
        })
        .await
        .expect("the services are readable")
        .into_inner()
        .services
}

async fn account_notifications(
    person: &Person,
    account_id: &str,
    min_position: u64,
) -> Vec<pb::Notification> {
    person
        .notifications()
        .list_notifications(pb::ListNotificationsRequest {
            account_id: account_id.into(),
            page_size: 500,
            min_position,
            ..Default::default()
        })
        .await
        .expect("the account's notifications are readable")
        .into_inner()
        .notifications
}

async fn account_audit_trail(
    person: &Person,
    account_id: &str,
    min_position: u64,
) -> Vec<pb::AuditEntry> {
    person
        .audit()
        .list_audit_trail(pb::ListAuditTrailRequest {
            account_id: account_id.into(),
            page_size: 500,
            min_position,
            ..Default::default()
        })
        .await
        .expect("the account's audit trail is readable")
        .into_inner()
        .entries
}

fn order_abc_hosting(abc: &str, catalogue: &Catalogue) -> pb::OrderServiceRequest {
    pb::OrderServiceRequest {
        account_id: abc.into(),
        product_id: catalogue.hosting_product_id.clone(),
        domain: "abc.co.tz".into(),
        billing_cycle: pb::BillingCycle::Annually as i32,
        request_id: "order-abc-hosting".into(),
    }
}

/// Seeds the catalogue; the designer and the four clients register and create their accounts;
/// each client invites the designer with full access and the designer accepts every
/// invitation with the token from its notifications.
async fn set_up_agency(server: &TestServer) -> Agency {
    let catalogue = server.seed_catalogue().await;
    let designer = server.register(DESIGNER, "Web Designer").await;
    let own = designer.create_account("Your Company", DESIGNER).await;
    assert_eq!(own.owner_user_id, designer.user_id);

    let mut clients = Vec::new();
    let mut invited_at = 0;
    for (name, email) in CLIENTS {
        let owner = server.register(email, name).await;
        let account = owner.create_account(name, email).await;
        assert_eq!(
            (
                account.name.as_str(),
                account.email.as_str(),
                account.owner_user_id.as_str()
            ),
            (name, email, owner.user_id.as_str())
        );
        let sent = owner
            .invite_full_access(&account.account_id, DESIGNER)
            .await;
        let expires_at = onbehalf_tests::start_time() + chrono::Duration::days(7);
        assert_eq!(
            sent.invitation,
            pb::Invitation {
                invitation_id: sent.invitation.invitation_id.clone(),
                email: DESIGNER.into(),
                permissions: full_access(),
                expires_at: Some(prost_types::Timestamp {
                    seconds: expires_at.timestamp(),
                    nanos: 0
                }),
                state: pb::InvitationState::Pending as i32,
                account_id: account.account_id.clone(),
                account_name: name.into(),
                invited_by_user_id: owner.user_id.clone(),
            }
        );
        invited_at = sent.position;
        clients.push(Client {
            name,
            account_id: account.account_id,
            owner,
        });
    }

    // The designer sees all four invitations addressed to it, then accepts each by the token
    // its notification carries.
    let pending = designer
        .invitations()
        .list_my_invitations(pb::ListMyInvitationsRequest {
            min_position: invited_at,
            ..Default::default()
        })
        .await
        .expect("the designer's invitations are readable")
        .into_inner()
        .invitations;
    let mut pending_names: Vec<String> = pending.into_iter().map(|i| i.account_name).collect();
    pending_names.sort();
    assert_eq!(
        pending_names,
        [
            "ABC Company",
            "Green Farm Ltd",
            "New Life Church",
            "Star Logistics"
        ]
    );

    let mut position = 0;
    for client in &clients {
        let token = designer
            .invitation_token(&client.account_id, invited_at)
            .await;
        let accepted = designer
            .invitations()
            .accept_invitation(pb::AcceptInvitationRequest {
                token,
                request_id: format!("accept-{}", client.name.replace(' ', "-")),
            })
            .await
            .unwrap_or_else(|s| panic!("accepting {} failed: {s:?}", client.name))
            .into_inner();
        assert_eq!(
            (accepted.account_id.as_str(), accepted.permissions),
            (client.account_id.as_str(), full_access())
        );
        position = accepted.position;
    }

    let mut clients = clients.into_iter();
    let mut next = || clients.next().expect("four clients");
    Agency {
        catalogue,
        designer,
        own_account_id: own.account_id,
        abc: next(),
        new_life: next(),
        star: next(),
        green_farm: next(),
        position,
    }
}

async fn the_designer_switches_between_its_own_and_four_client_accounts(server: &TestServer) {
    let agency = set_up_agency(server).await;

    assert_eq!(
        switcher(&agency.designer, agency.position).await,
        vec![
            switched("Your Company", pb::Role::Owner),
            switched("ABC Company", pb::Role::Member),
            switched("Green Farm Ltd", pb::Role::Member),
            switched("New Life Church", pb::Role::Member),
            switched("Star Logistics", pb::Role::Member),
        ]
    );
    // Each client still sees only its own account, as owner.
    assert_eq!(
        switcher(&agency.star.owner, agency.position).await,
        vec![switched("Star Logistics", pb::Role::Owner)]
    );
    assert_eq!(
        agency
            .abc
            .owner
            .accounts()
            .list_members(pb::ListMembersRequest {
                account_id: agency.abc.account_id.clone(),
                min_position: agency.position,
                ..Default::default()
            })
            .await
            .expect("the owner lists its members")
            .into_inner()
            .members,
        vec![
            pb::Member {
                user_id: agency.abc.owner.user_id.clone(),
                email: "admin@abc.co.tz".into(),
                role: pb::Role::Owner as i32,
                permissions: full_access(),
                display_name: "ABC Company".into(),
            },
            pb::Member {
                user_id: agency.designer.user_id.clone(),
                email: DESIGNER.into(),
                role: pb::Role::Member as i32,
                permissions: full_access(),
                display_name: "Web Designer".into(),
            },
        ]
    );
}

on_both_backends!(
    the_designer_switches_between_its_own_and_four_client_accounts
        => the_designer_switches_between_its_own_and_four_client_accounts_on_sqlite,
           the_designer_switches_between_its_own_and_four_client_accounts_on_postgres
);

async fn hosting_ordered_for_abc_is_billed_and_notified_to_abc_and_paid_by_the_designer(
    server: &TestServer,
) {
    let Agency {
        catalogue,
        designer,
        own_account_id,
        abc,
        ..
    } = set_up_agency(server).await;

    let ordered = designer
        .hosting()
        .order_service(order_abc_hosting(&abc.account_id, &catalogue))
        .await
        .expect("the designer orders hosting for ABC")
        .into_inner();

    // The invoice is ABC's, in ABC's ledger; the designer's own ledger stays empty.
    let expected_invoice = pb::Invoice {
        invoice_id: ordered.invoice_id.clone(),
        number: 1,
        status: pb::InvoiceStatus::Unpaid as i32,
        total_minor: HOSTING_ANNUAL_MINOR,
        paid_minor: 0,
        currency: CURRENCY.into(),
        due_date: Some(date(2025, 3, 3)),
        lines: vec![pb::InvoiceLine {
            description: "Starter Hosting - abc.co.tz (2025-03-03 - 2026-03-02)".into(),
            amount_minor: HOSTING_ANNUAL_MINOR,
        }],
        service_id: ordered.service_id.clone(),
        account_id: abc.account_id.clone(),
        issued_on: Some(date(2025, 3, 3)),
    };
    let ledger = invoices(&designer, &abc.account_id, ordered.position).await;
    assert_eq!(ledger.invoices, vec![expected_invoice.clone()]);
    assert_eq!(ledger.balance_minor, HOSTING_ANNUAL_MINOR);
    let own_ledger = invoices(&designer, &own_account_id, ordered.position).await;
    assert_eq!((own_ledger.invoices, own_ledger.balance_minor), (vec![], 0));

    // The service and billing notices go to ABC's billing email, never to the designer.
    let notices: Vec<(i32, String, String)> =
        account_notifications(&abc.owner, &abc.account_id, ordered.position)
            .await
            .into_iter()
            .filter(|n| {
                n.category == pb::NotificationCategory::Service as i32
                    || n.category == pb::NotificationCategory::Billing as i32
            })
            .map(|n| (n.category, n.recipient_email, n.subject))
            .collect();
    assert_eq!(
        notices,
        vec![
            (
                pb::NotificationCategory::Service as i32,
                "admin@abc.co.tz".to_owned(),
                "New service for ABC Company: Starter Hosting (abc.co.tz)".to_owned()
            ),
            (
                pb::NotificationCategory::Billing as i32,
                "admin@abc.co.tz".to_owned(),
                "Invoice #1 for ABC Company".to_owned()
            ),
        ]
    );
    let designer_categories: Vec<i32> = designer
        .my_notifications(ordered.position)
        .await
        .into_iter()
        .map(|n| n.category)
        .collect();
    assert!(
        !designer_categories
            .iter()
            .any(|c| *c == pb::NotificationCategory::Billing as i32
                || *c == pb::NotificationCategory::Service as i32),
        "the designer received a client's billing or service notice: {designer_categories:?}"
    );

    // The designer pays ABC's invoice on ABC's behalf.
    let paid = designer
        .billing()
        .pay_invoice(pb::PayInvoiceRequest {
            account_id: abc.account_id.clone(),
            invoice_id: ordered.invoice_id.clone(),
            amount_minor: HOSTING_ANNUAL_MINOR,
            reference: "MPESA-ABC-0001".into(),
            request_id: "pay-abc-hosting".into(),
        })
        .await
        .expect("the designer pays ABC's invoice")
        .into_inner();
    let paid_invoice = pb::Invoice {
        status: pb::InvoiceStatus::Paid as i32,
        paid_minor: HOSTING_ANNUAL_MINOR,
        ..expected_invoice
    };
    assert_eq!(paid.invoice, Some(paid_invoice.clone()));
    let ledger = invoices(&abc.owner, &abc.account_id, paid.position).await;
    assert_eq!(
        (ledger.invoices, ledger.balance_minor),
        (vec![paid_invoice], 0)
    );
}

on_both_backends!(
    hosting_ordered_for_abc_is_billed_and_notified_to_abc_and_paid_by_the_designer
        => hosting_ordered_for_abc_is_billed_and_notified_to_abc_and_paid_by_the_designer_on_sqlite,
           hosting_ordered_for_abc_is_billed_and_notified_to_abc_and_paid_by_the_designer_on_postgres
);

async fn a_domain_renewal_is_due_at_the_next_due_date_and_paying_it_moves_that_date_a_cycle(
    server: &TestServer,
) {
    let Agency {
        catalogue,
        designer,
        star,
        ..
    } = set_up_agency(server).await;

    let ordered = designer
        .hosting()
        .order_service(pb::OrderServiceRequest {
            account_id: star.account_id.clone(),
            product_id: catalogue.domain_product_id.clone(),
            domain: "starlogistics.co.tz".into(),
            billing_cycle: pb::BillingCycle::Annually as i32,
            request_id: "order-star-domain".into(),
        })
        .await
        .expect("the designer orders a domain for Star Logistics")
        .into_inner();
    let domain_service = |next_due_date| pb::Service {
        service_id: ordered.service_id.clone(),
        kind: pb::ProductKind::Domain as i32,
        product_id: catalogue.domain_product_id.clone(),
        domain: "starlogistics.co.tz".into(),
        status: pb::ServiceStatus::ServiceActive as i32,
        next_due_date: Some(next_due_date),
        billing_cycle: pb::BillingCycle::Annually as i32,
        product_name: ".co.tz Domain".into(),
        nameservers: vec![],
        account_id: star.account_id.clone(),
    };
    assert_eq!(
        services(&designer, &star.account_id, ordered.position).await,
        vec![domain_service(date(2026, 3, 3))]
    );

    let renew = |request_id: &str| {
        let mut hosting = designer.hosting();
        let request = pb::RenewServiceRequest {
            account_id: star.account_id.clone(),
            service_id: ordered.service_id.clone(),
            request_id: request_id.into(),
        };
        async move {
            hosting
                .renew_service(request)
                .await
                .expect("the designer renews the domain")
                .into_inner()
        }
    };
    let renewed = renew("renew-star-domain").await;
    let head = server.log_head().await;
    let renewed_again = renew("renew-star-domain-again").await;
    assert_eq!(
        renewed_again.invoice_id, renewed.invoice_id,
        "asking again returns the same invoice"
    );
    assert_eq!(renewed_again.position, renewed.position);
    assert_eq!(
        server.log_head().await,
        head,
        "asking again appends nothing"
    );

    let renewal_invoice = pb::Invoice {
        invoice_id: renewed.invoice_id.clone(),
        number: 2,
        status: pb::InvoiceStatus::Unpaid as i32,
        total_minor: DOMAIN_ANNUAL_MINOR,
        paid_minor: 0,
        currency: CURRENCY.into(),
        due_date: Some(date(2026, 3, 3)),
        lines: vec![pb::InvoiceLine {
            description: ".co.tz Domain - starlogistics.co.tz (2026-03-03 - 2027-03-02)".into(),
            amount_minor: DOMAIN_ANNUAL_MINOR,
        }],
        service_id: ordered.service_id.clone(),
        account_id: star.account_id.clone(),
        issued_on: Some(date(2025, 3, 3)),
    };
    let ledger = invoices(&designer, &star.account_id, renewed.position).await;
    assert_eq!(
        ledger
            .invoices
            .iter()
            .map(|i| (i.invoice_id.as_str(), i.number))
            .collect::<Vec<_>>(),
        vec![
            (ordered.invoice_id.as_str(), 1),
            (renewed.invoice_id.as_str(), 2)
        ]
    );
    assert_eq!(ledger.invoices[1], renewal_invoice);
    assert_eq!(ledger.balance_minor, 2 * DOMAIN_ANNUAL_MINOR);

    let paid = designer
        .billing()
        .pay_invoice(pb::PayInvoiceRequest {
            account_id: star.account_id.clone(),
            invoice_id: renewed.invoice_id.clone(),
            amount_minor: DOMAIN_ANNUAL_MINOR,
            reference: "MPESA-STAR-0002".into(),
            request_id: "pay-star-renewal".into(),
        })
        .await
        .expect("the designer pays the renewal")
        .into_inner();
    assert_eq!(
        paid.invoice.map(|i| (i.status, i.paid_minor)),
        Some((pb::InvoiceStatus::Paid as i32, DOMAIN_ANNUAL_MINOR))
    );
    assert_eq!(
        services(&star.owner, &star.account_id, paid.position).await,
        vec![domain_service(date(2027, 3, 3))]
    );

    // The next renewal bills the cycle after the one just paid, with a new invoice.
    let next = renew("renew-star-domain-2027").await;
    assert_ne!(next.invoice_id, renewed.invoice_id);
    let ledger = invoices(&star.owner, &star.account_id, next.position).await;
    assert_eq!(
        ledger.invoices.last().map(|i| (i.number, i.due_date)),
        Some((3, Some(date(2027, 3, 3))))
    );
}

on_both_backends!(
    a_domain_renewal_is_due_at_the_next_due_date_and_paying_it_moves_that_date_a_cycle
        => a_domain_renewal_is_due_at_the_next_due_date_and_paying_it_moves_that_date_a_cycle_on_sqlite,
           a_domain_renewal_is_due_at_the_next_due_date_and_paying_it_moves_that_date_a_cycle_on_postgres
);

async fn abc_sees_the_designer_act_on_its_behalf_then_removes_it_and_keeps_everything(
    server: &TestServer,
) {
    let Agency {
        catalogue,
        designer,
        abc,
        new_life,
        star,
        ..
    } = set_up_agency(server).await;

    let ordered = designer
        .hosting()
        .order_service(order_abc_hosting(&abc.account_id, &catalogue))
        .await
        .expect("the designer orders hosting for ABC")
        .into_inner();
    let paid = designer
        .billing()
        .pay_invoice(pb::PayInvoiceRequest {
            account_id: abc.account_id.clone(),
            invoice_id: ordered.invoice_id.clone(),
            amount_minor: HOSTING_ANNUAL_MINOR,
            reference: "MPESA-ABC-0001".into(),
            request_id: "pay-abc-hosting".into(),
        })
        .await
        .expect("the designer pays ABC's invoice")
        .into_inner();

    // The owner's view of ABC's trail: who acted, as whom, on whose behalf, under which request.
    let trail = account_audit_trail(&abc.owner, &abc.account_id, paid.position).await;
    let rows: Vec<(&str, &str, i32, &str, i32)> = trail
        .iter()
        .map(|e| {
            (
                e.action.as_str(),
                e.actor_email.as_str(),
                e.actor_kind,
                e.on_behalf_of_account_id.as_str(),
                e.permission,
            )
        })
        .collect();
    let (admin, user, abc_id) = (
        "admin@abc.co.tz",
        pb::ActorKind::ActorUser as i32,
        abc.account_id.as_str(),
    );
    let (none, orders, invoices_p) = (
        0,
        pb::Permission::Orders as i32,
        pb::Permission::Invoices as i32,
    );
    assert_eq!(
        rows,
        vec![
            ("AccountCreated", admin, user, abc_id, none),
            ("UserInvited", admin, user, abc_id, none),
            ("InvitationAccepted", DESIGNER, user, abc_id, none),
            ("ServiceOrdered", DESIGNER, user, abc_id, orders),
            ("InvoiceIssued", DESIGNER, user, abc_id, orders),
            ("PaymentReceived", DESIGNER, user, abc_id, invoices_p),
            ("InvoicePaid", DESIGNER, user, abc_id, invoices_p),
        ]
    );
    let designer_requests: Vec<(&str, &str)> = trail
        .iter()
        .filter(|e| e.actor_user_id == designer.user_id)
        .map(|e| (e.action.as_str(), e.request_id.as_str()))
        .collect();
    assert_eq!(
        designer_requests,
        vec![
            ("InvitationAccepted", "accept-ABC-Company"),
            ("ServiceOrdered", "order-abc-hosting"),
            ("InvoiceIssued", "order-abc-hosting"),
            ("PaymentReceived", "pay-abc-hosting"),
            ("InvoicePaid", "pay-abc-hosting"),
        ]
    );
    assert!(
        trail.windows(2).all(|w| w[0].position < w[1].position),
        "the trail is in log order"
    );
    assert_eq!(trail.last().map(|e| e.position), Some(paid.position));

    // ABC's owner removes the designer.
    let revoked = abc
        .owner
        .access()
        .revoke_access(pb::RevokeAccessRequest {
            account_id: abc.account_id.clone(),
            user_id: designer.user_id.clone(),
            request_id: "remove-designer".into(),
        })
        .await
        .expect("the owner removes the designer")
        .into_inner();

    // The designer's next command on ABC is refused, decided on ABC's current state.
    let mut renewal = order_abc_hosting(&abc.account_id, &catalogue);
    renewal.request_id = "order-abc-hosting-after-removal".into();
    server
        .rejects(
            Code::PermissionDenied,
            designer.hosting().order_service(renewal),
        )
        .await;
    server
        .rejects(
            Code::PermissionDenied,
            designer.accounts().get_account(pb::GetAccountRequest {
                account_id: abc.account_id.clone(),
                min_position: 0,
            }),
        )
        .await;
    server
        .rejects(
            Code::PermissionDenied,
            designer.billing().list_invoices(pb::ListInvoicesRequest {
                account_id: abc.account_id.clone(),
                ..Default::default()
            }),
        )
        .await;

    // Its commands on the other client accounts still work.
    let new_life_order = designer
        .hosting()
        .order_service(pb::OrderServiceRequest {
            account_id: new_life.account_id.clone(),
            product_id: catalogue.hosting_product_id.clone(),
            domain: "newlife.or.tz".into(),
            billing_cycle: pb::BillingCycle::Monthly as i32,
            request_id: "order-new-life-hosting".into(),
        })
        .await
        .expect("the designer still orders for New Life Church")
        .into_inner();
    let new_life_ledger = invoices(
        &new_life.owner,
        &new_life.account_id,
        new_life_order.position,
    )
    .await;
    assert_eq!(
        new_life_ledger
            .invoices
            .iter()
            .map(|i| (i.invoice_id.as_str(), i.total_minor))
            .collect::<Vec<_>>(),
        vec![(new_life_order.invoice_id.as_str(), HOSTING_MONTHLY_MINOR)]
    );
    let star_domain = designer
        .hosting()
        .order_service(pb::OrderServiceRequest {
            account_id: star.account_id.clone(),
            product_id: catalogue.domain_product_id.clone(),
            domain: "starlogistics.co.tz".into(),
            billing_cycle: pb::BillingCycle::Annually as i32,
            request_id: "order-star-domain".into(),
        })
        .await
        .expect("the designer still orders for Star Logistics")
        .into_inner();
    let head = star_domain.position;
    assert_eq!(
        switcher(&designer, head)
            .await
            .into_iter()
            .map(|(name, ..)| name)
            .collect::<Vec<_>>(),
        [
            "Your Company",
            "Green Farm Ltd",
            "New Life Church",
            "Star Logistics"
        ]
    );

    // ABC keeps its service and its paid invoice.
    let abc_services = services(&abc.owner, &abc.account_id, revoked.position).await;
    assert_eq!(
        abc_services
            .iter()
            .map(|s| (s.service_id.as_str(), s.status, s.next_due_date))
            .collect::<Vec<_>>(),
        vec![(
            ordered.service_id.as_str(),
            pb::ServiceStatus::ServiceActive as i32,
            Some(date(2026, 3, 3))
        )]
    );
    let abc_ledger = invoices(&abc.owner, &abc.account_id, revoked.position).await;
    assert_eq!(
        abc_ledger
            .invoices
            .iter()
            .map(|i| (i.invoice_id.as_str(), i.status, i.paid_minor))
            .collect::<Vec<_>>(),
        vec![(
            ordered.invoice_id.as_str(),
            pb::InvoiceStatus::Paid as i32,
            HOSTING_ANNUAL_MINOR
        )]
    );
    let trail = account_audit_trail(&abc.owner, &abc.account_id, head).await;
    let last = trail.last().expect("the trail is not empty");
    assert_eq!(
        (
            last.action.as_str(),
            last.actor_email.as_str(),
            last.request_id.as_str(),
            last.position
        ),
        (
            "MemberRemoved",
            "admin@abc.co.tz",
            "remove-designer",
            revoked.position
        )
    );
    assert_eq!(
        trail.len(),
        8,
        "nothing the designer tried after its removal is in ABC's trail"
    );
}

on_both_backends!(
    abc_sees_the_designer_act_on_its_behalf_then_removes_it_and_keeps_everything
        => abc_sees_the_designer_act_on_its_behalf_then_removes_it_and_keeps_everything_on_sqlite,
           abc_sees_the_designer_act_on_its_behalf_then_removes_it_and_keeps_everything_on_postgres
);

async fn green_farm_transfers_ownership_and_its_former_owner_stays_a_full_access_member(
    server: &TestServer,
) {
    let Agency {
        designer,
        green_farm,
        ..
    } = set_up_agency(server).await;
    let former_owner = &green_farm.owner;

    let transferred = former_owner
        .accounts()
        .transfer_ownership(pb::TransferOwnershipRequest {
            account_id: green_farm.account_id.clone(),
            new_owner_user_id: designer.user_id.clone(),
            request_id: "hand-over-green-farm".into(),
        })
        .await
        .expect("the owner hands Green Farm over")
        .into_inner();
    assert_eq!(
        transferred.account,
        Some(pb::Account {
            account_id: green_farm.account_id.clone(),
            name: "Green Farm Ltd".into(),
            email: "info@greenfarm.co.tz".into(),
            owner_user_id: designer.user_id.clone(),
        })
    );

    assert_eq!(
        switcher(former_owner, transferred.position).await,
        vec![switched("Green Farm Ltd", pb::Role::Member)]
    );
    assert!(switcher(&designer, transferred.position)
        .await
        .contains(&switched("Green Farm Ltd", pb::Role::Owner)));

    // The former owner may still act with full access, but no longer manages users.
    let ledger = invoices(former_owner, &green_farm.account_id, transferred.position).await;
    assert_eq!(ledger.invoices, vec![]);
    server
        .rejects(
            Code::PermissionDenied,
            former_owner
                .invitations()
                .invite_user(pb::InviteUserRequest {
                    account_id: green_farm.account_id.clone(),
                    email: "farm.manager@greenfarm.co.tz".into(),
                    full_access: true,
                    ..Default::default()
                }),
        )
        .await;
    let members = designer
        .accounts()
        .list_members(pb::ListMembersRequest {
            account_id: green_farm.account_id.clone(),
            min_position: transferred.position,
            ..Default::default()
        })
        .await
        .expect("the new owner lists the members")
        .into_inner()
        .members;
    assert_eq!(
        members
            .into_iter()
            .map(|m| (m.email, m.role, m.permissions))
            .collect::<Vec<_>>(),
        vec![
            (DESIGNER.to_owned(), pb::Role::Owner as i32, full_access()),
            (
                "info@greenfarm.co.tz".to_owned(),
                pb::Role::Member as i32,
                full_access()
            ),
        ]
    );
}

on_both_backends!(
    green_farm_transfers_ownership_and_its_former_owner_stays_a_full_access_member
        => green_farm_transfers_ownership_and_its_former_owner_stays_a_full_access_member_on_sqlite,
           green_farm_transfers_ownership_and_its_former_owner_stays_a_full_access_member_on_postgres
);

async fn a_retried_order_returns_its_first_outcome_and_a_reused_request_id_is_refused(
    server: &TestServer,
) {
    let Agency {
        catalogue,
        designer,
        abc,
        ..
    } = set_up_agency(server).await;

    let first = designer
        .hosting()
        .order_service(order_abc_hosting(&abc.account_id, &catalogue))
        .await
        .expect("the designer orders hosting for ABC")
        .into_inner();
    let head = server.log_head().await;
    let trail_length = server.audit_trail(head).await.len();

    let retried = designer
        .hosting()
        .order_service(order_abc_hosting(&abc.account_id, &catalogue))
        .await
        .expect("the retry succeeds")
        .into_inner();
    assert_eq!(retried, first, "same service, invoice and position");
    assert_eq!(server.log_head().await, head, "the retry appended nothing");
    assert_eq!(server.audit_trail(head).await.len(), trail_length);
    assert_eq!(
        invoices(&abc.owner, &abc.account_id, head)
            .await
            .invoices
            .len(),
        1
    );

    // The same request id for a different request is refused and remembered as nothing.
    let mut monthly = order_abc_hosting(&abc.account_id, &catalogue);
    monthly.billing_cycle = pb::BillingCycle::Monthly as i32;
    server
        .rejects_field("request_id", designer.hosting().order_service(monthly))
        .await;

    // Request ids are scoped to the actor: the owner may use the same one for its own order.
    let owners = abc
        .owner
        .hosting()
        .order_service(order_abc_hosting(&abc.account_id, &catalogue))
        .await
        .expect("another actor's identical request id is its own")
        .into_inner();
    assert_ne!(owners.invoice_id, first.invoice_id);
    assert!(owners.position > head);
}

on_both_backends!(
    a_retried_order_returns_its_first_outcome_and_a_reused_request_id_is_refused
        => a_retried_order_returns_its_first_outcome_and_a_reused_request_id_is_refused_on_sqlite,
           a_retried_order_returns_its_first_outcome_and_a_reused_request_id_is_refused_on_postgres
);
