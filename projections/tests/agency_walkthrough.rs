//! The agency walkthrough: one designer manages four client accounts without their passwords.

mod support;

use onbehalf_events::account::RemovalReason;
use onbehalf_events::{AccountEvent, Permission, PermissionSet};
use onbehalf_projections::{
    AccessibleAccount, InvoiceStatus, MemberView, NotificationCategory, Role, ServiceStatus,
};
use support::{email, fold, name, Agency, Ctx};
use uuid::Uuid;

#[test]
fn account_switcher_shows_the_own_account_first_then_clients_by_name_with_full_access() {
    let (agency, log) = Agency::walkthrough();
    let models = fold(&log.events);

    let switcher = models.accounts.accessible_accounts(agency.designer);

    let entry = |account_id, account_name: &str, role| AccessibleAccount {
        account_id,
        name: name(account_name),
        role,
        permissions: PermissionSet::full(),
    };
    assert_eq!(
        switcher,
        vec![
            entry(agency.designer_account, "Your Company", Role::Owner),
            entry(agency.abc, "ABC Company", Role::Member),
            entry(agency.greenfarm, "Green Farm Ltd", Role::Member),
            entry(agency.newlife, "New Life Church", Role::Member),
            entry(agency.star, "Star Logistics", Role::Member),
        ]
    );
    assert_eq!(switcher.iter().filter(|a| a.role == Role::Owner).count(), 1);
    assert!(switcher.iter().all(|a| a.permissions.len() == 13));
}

#[test]
fn a_client_owner_sees_only_their_own_account() {
    let (agency, log) = Agency::walkthrough();
    let models = fold(&log.events);

    let switcher = models.accounts.accessible_accounts(agency.abc_owner);

    assert_eq!(
        switcher,
        vec![AccessibleAccount {
            account_id: agency.abc,
            name: name("ABC Company"),
            role: Role::Owner,
            permissions: PermissionSet::full(),
        }]
    );
}

#[test]
fn client_members_list_the_owner_first_then_the_designer() {
    let (agency, log) = Agency::walkthrough();
    let models = fold(&log.events);

    assert_eq!(
        models.accounts.members(agency.abc),
        vec![
            MemberView {
                user_id: agency.abc_owner,
                email: email("admin@abc.co.tz"),
                display_name: name("Amina"),
                role: Role::Owner,
                permissions: PermissionSet::full(),
            },
            MemberView {
                user_id: agency.designer,
                email: email("designer@yourcompany.com"),
                display_name: name("Designer"),
                role: Role::Member,
                permissions: PermissionSet::full(),
            },
        ]
    );
    let account = models.accounts.account(agency.abc).unwrap();
    assert_eq!(account.owner_user_id, agency.abc_owner);
    assert_eq!(
        account.members.keys().copied().collect::<Vec<_>>(),
        vec![agency.designer]
    );
}

#[test]
fn users_are_found_by_email_whatever_its_case() {
    let (agency, log) = Agency::walkthrough();
    let models = fold(&log.events);

    let user = models
        .accounts
        .user_by_email("Designer@YourCompany.com")
        .unwrap();
    assert_eq!(user.user_id, agency.designer);
    assert_eq!(models.accounts.user(agency.designer), Some(user));
    assert_eq!(
        models.accounts.user_by_email("nobody@yourcompany.com"),
        None
    );
}

#[test]
fn an_order_by_the_designer_bills_and_notifies_the_client_account_not_the_designer() {
    let (agency, mut log) = Agency::walkthrough();
    let (service, invoice) = (Uuid::from_u128(0x5001), Uuid::from_u128(0x6001));
    let on_behalf = Ctx::user(agency.designer)
        .for_account(agency.abc)
        .relying_on(Permission::Orders);
    log.order_hosting(&on_behalf, agency.abc, service, invoice, "abc.co.tz");
    let models = fold(&log.events);

    let services = models.billing.services(agency.abc);
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].service_id, service);
    assert_eq!(services[0].account_id, agency.abc);
    assert_eq!(services[0].status, ServiceStatus::Active);
    let invoices = models.billing.invoices(agency.abc);
    assert_eq!(invoices.len(), 1);
    assert_eq!(invoices[0].account_id, agency.abc);
    assert_eq!(invoices[0].status, InvoiceStatus::Unpaid);
    assert_eq!(models.billing.balance_minor(agency.abc), 12_000_000);
    assert_eq!(models.billing.invoices(agency.designer_account), vec![]);
    assert_eq!(models.billing.balance_minor(agency.designer_account), 0);

    let billing: Vec<_> = models
        .notifications
        .for_account(agency.abc)
        .into_iter()
        .filter(|n| {
            matches!(
                n.category,
                NotificationCategory::Billing | NotificationCategory::Service
            )
        })
        .map(|n| {
            (
                n.category,
                n.recipient_email.as_str(),
                n.event_type.as_str(),
            )
        })
        .collect();
    assert_eq!(
        billing,
        vec![
            (
                NotificationCategory::Service,
                "admin@abc.co.tz",
                "ServiceOrdered"
            ),
            (
                NotificationCategory::Billing,
                "admin@abc.co.tz",
                "InvoiceIssued"
            ),
        ]
    );
    let designer_mail: Vec<_> = models
        .notifications
        .for_recipient("designer@yourcompany.com")
        .into_iter()
        .map(|n| n.category)
        .collect();
    assert!(
        designer_mail.iter().all(|c| matches!(
            c,
            NotificationCategory::Invitation | NotificationCategory::Security
        )),
        "the designer received {designer_mail:?}"
    );
}

#[test]
fn the_client_removing_the_agency_keeps_its_services_and_invoices() {
    let (agency, mut log) = Agency::walkthrough();
    let (service, invoice) = (Uuid::from_u128(0x5001), Uuid::from_u128(0x6001));
    let on_behalf = Ctx::user(agency.designer)
        .for_account(agency.star)
        .relying_on(Permission::Orders);
    log.order_hosting(
        &on_behalf,
        agency.star,
        service,
        invoice,
        "starlogistics.co.tz",
    );
    log.account(
        &Ctx::user(agency.star_owner).for_account(agency.star),
        agency.star,
        AccountEvent::MemberRemoved {
            user_id: agency.designer,
            reason: RemovalReason::Revoked,
        },
    );
    let models = fold(&log.events);

    let remaining: Vec<Uuid> = models
        .accounts
        .accessible_accounts(agency.designer)
        .into_iter()
        .map(|a| a.account_id)
        .collect();
    assert_eq!(
        remaining,
        vec![
            agency.designer_account,
            agency.abc,
            agency.greenfarm,
            agency.newlife
        ]
    );
    assert_eq!(models.accounts.access(agency.star, agency.designer), None);
    assert_eq!(
        models
            .accounts
            .members(agency.star)
            .iter()
            .map(|m| m.user_id)
            .collect::<Vec<_>>(),
        vec![agency.star_owner]
    );
    assert_eq!(models.billing.services(agency.star).len(), 1);
    assert_eq!(models.billing.invoices(agency.star)[0].invoice_id, invoice);
}
