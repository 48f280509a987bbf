//! Placing a hosting service on a panel server and recording panel logins, decided by the
//! client account on its own state: given events, when a command, then events or an error.

use chrono::{TimeZone, Utc};
use cqrs_es::test::TestFramework;
use onbehalf::domain::{AccountCommand, ClientAccount, Command, CommandContext, DomainError};
use onbehalf_events::account::{InvoiceKind, InvoiceLine, PanelFailure};
use onbehalf_events::values::{BillingCycle, Currency, DomainName, Email, Name, ProductKind};
use onbehalf_events::{AccountEvent, Actor, Permission, PermissionSet};
use uuid::Uuid;

const ACCOUNT: Uuid = Uuid::from_u128(0xabc0);
const OWNER: Uuid = Uuid::from_u128(0x0001);
const DESIGNER: Uuid = Uuid::from_u128(0x0002);
const HOSTING: Uuid = Uuid::from_u128(0x3001);
const DOMAIN: Uuid = Uuid::from_u128(0x3002);

fn account() -> TestFramework<ClientAccount> {
    TestFramework::with(())
}

fn by(actor: Actor, body: AccountCommand) -> Command<AccountCommand> {
    Command {
        context: CommandContext {
            actor,
            now: Utc
                .with_ymd_and_hms(2026, 3, 3, 9, 0, 0)
                .single()
                .expect("a valid time"),
        },
        body,
    }
}

fn ordered(service_id: Uuid, kind: ProductKind) -> Vec<AccountEvent> {
    let day = chrono::NaiveDate::from_ymd_opt(2026, 3, 3).expect("a valid date");
    let currency = Currency::parse("TZS").expect("a currency");
    vec![
        AccountEvent::ServiceOrdered {
            service_id,
            product_id: Uuid::from_u128(0x2001),
            product_name: Name::parse("Starter Hosting").expect("a name"),
            kind,
            domain: Some(DomainName::parse("abc.co.tz").expect("a domain")),
            billing_cycle: BillingCycle::Annually,
            amount_minor: 15_000_000,
            currency: currency.clone(),
            ordered_on: day,
            next_due_date: BillingCycle::Annually.advance(day),
        },
        AccountEvent::InvoiceIssued {
            invoice_id: Uuid::from_u128(service_id.as_u128() + 0x1000),
            service_id,
            kind: InvoiceKind::Order,
            lines: vec![InvoiceLine {
                description: "Starter Hosting".into(),
                amount_minor: 15_000_000,
            }],
            total_minor: 15_000_000,
            currency,
            issued_on: day,
            due_date: day,
        },
    ]
}

/// ABC Company with the designer holding `permissions`, a hosting service placed on `cp1`,
/// and a domain.
fn placed(permissions: &[Permission]) -> Vec<AccountEvent> {
    let mut events = vec![
        AccountEvent::AccountCreated {
            account_id: ACCOUNT,
            name: Name::parse("ABC Company Ltd").expect("a name"),
            email: Email::parse("billing@abc.co.tz").expect("an email"),
            owner_user_id: OWNER,
        },
        AccountEvent::InvitationAccepted {
            invitation_id: Uuid::from_u128(0x1001),
            user_id: DESIGNER,
            permissions: permissions.iter().copied().collect(),
        },
    ];
    events.extend(ordered(HOSTING, ProductKind::Hosting));
    events.extend(ordered(DOMAIN, ProductKind::Domain));
    events.push(activated("cp1", "abccotz"));
    events
}

fn activated(server: &str, panel_username: &str) -> AccountEvent {
    AccountEvent::ServiceActivated {
        service_id: HOSTING,
        server: server.into(),
        panel_username: panel_username.into(),
    }
}

fn activate(service_id: Uuid, server: &str) -> AccountCommand {
    AccountCommand::ActivateService {
        service_id,
        server: server.into(),
        panel_username: "abccotz".into(),
    }
}

fn record(failure: Option<PanelFailure>) -> AccountCommand {
    AccountCommand::RecordServiceLogin {
        service_id: HOSTING,
        failure,
    }
}

fn opened() -> AccountEvent {
    AccountEvent::ServiceLoginOpened {
        service_id: HOSTING,
        server: "cp1".into(),
    }
}

fn provisioning() -> Actor {
    Actor::Service("provisioning".into())
}

#[test]
fn the_provisioning_system_places_a_service_once_and_moves_it() {
    let mut given = placed(&[]);
    given.pop();
    account()
        .given(given.clone())
        .when(by(provisioning(), activate(HOSTING, "cp1")))
        .then_expect_events(vec![activated("cp1", "abccotz")]);
    given.push(activated("cp1", "abccotz"));
    account()
        .given(given.clone())
        .when(by(provisioning(), activate(HOSTING, "cp1")))
        .then_expect_events(vec![]);
    account()
        .given(given)
        .when(by(provisioning(), activate(HOSTING, "cp2")))
        .then_expect_events(vec![activated("cp2", "abccotz")]);
}

#[test]
fn only_a_service_places_a_hosting_service_that_is_not_cancelled() {
    for actor in [
        Actor::User(OWNER),
        Actor::Staff("support".into()),
        Actor::System,
    ] {
        account()
            .given(placed(&[]))
            .when(by(actor, activate(HOSTING, "cp1")))
            .then_expect_error(DomainError::PermissionDenied(
                "only the provisioning system activates services".into(),
            ));
    }
    account()
        .given(placed(&[]))
        .when(by(provisioning(), activate(DOMAIN, "cp1")))
        .then_expect_error(DomainError::FailedPrecondition(
            "only a hosting service lives on a panel server".into(),
        ));
    let mut cancelled = placed(&[]);
    cancelled.push(AccountEvent::ServiceCancelled {
        service_id: HOSTING,
    });
    account()
        .given(cancelled)
        .when(by(provisioning(), activate(HOSTING, "cp2")))
        .then_expect_error(DomainError::FailedPrecondition(
            "service is cancelled".into(),
        ));
}

#[test]
fn the_owner_a_member_with_products_and_sso_and_staff_record_a_login() {
    let sso = [Permission::Products, Permission::ProductSso];
    for actor in [
        Actor::User(OWNER),
        Actor::User(DESIGNER),
        Actor::Staff("support".into()),
    ] {
        account()
            .given(placed(&sso))
            .when(by(actor, record(None)))
            .then_expect_events(vec![opened()]);
    }
    account()
        .given(placed(&sso))
        .when(by(
            Actor::User(DESIGNER),
            record(Some(PanelFailure::Timeout)),
        ))
        .then_expect_events(vec![AccountEvent::ServiceLoginFailed {
            service_id: HOSTING,
            server: "cp1".into(),
            failure: PanelFailure::Timeout,
        }]);
}

#[test]
fn a_login_needs_both_products_and_product_sso() {
    for (held, missing) in [
        (Permission::Products, Permission::ProductSso),
        (Permission::ProductSso, Permission::Products),
    ] {
        account()
            .given(placed(&[held]))
            .when(by(Actor::User(DESIGNER), record(None)))
            .then_expect_error(DomainError::PermissionDenied(format!(
                "caller lacks the {missing} permission"
            )));
    }
    account()
        .given(placed(&[]))
        .when(by(provisioning(), record(None)))
        .then_expect_error(DomainError::PermissionDenied(
            "only users and provider staff open control panels".into(),
        ));
}

#[test]
fn a_permission_revoked_before_the_record_refuses_the_login() {
    let sso: PermissionSet = [Permission::Products, Permission::ProductSso]
        .into_iter()
        .collect();
    let mut given = placed(&[Permission::Products, Permission::ProductSso]);
    given.push(AccountEvent::PermissionsRevoked {
        user_id: DESIGNER,
        revoked: [Permission::ProductSso].into_iter().collect(),
        permissions: sso.difference(&[Permission::ProductSso].into_iter().collect()),
    });
    account()
        .given(given)
        .when(by(Actor::User(DESIGNER), record(None)))
        .then_expect_error(DomainError::PermissionDenied(
            "caller lacks the PRODUCT_SSO permission".into(),
        ));
}

#[test]
fn a_service_not_placed_suspended_or_cancelled_cannot_be_logged_into() {
    let mut not_placed = placed(&[]);
    not_placed.pop();
    account()
        .given(not_placed)
        .when(by(Actor::User(OWNER), record(None)))
        .then_expect_error(DomainError::FailedPrecondition(
            "service is not activated on a panel server yet".into(),
        ));

    let mut suspended = placed(&[]);
    suspended.push(AccountEvent::ServiceSuspended {
        service_id: HOSTING,
        invoice_id: Uuid::from_u128(HOSTING.as_u128() + 0x1000),
    });
    account()
        .given(suspended.clone())
        .when(by(Actor::User(OWNER), record(None)))
        .then_expect_error(DomainError::FailedPrecondition(
            "service is suspended".into(),
        ));
    suspended.push(AccountEvent::ServiceUnsuspended {
        service_id: HOSTING,
    });
    account()
        .given(suspended)
        .when(by(Actor::User(OWNER), record(None)))
        .then_expect_events(vec![opened()]);

    let mut cancelled = placed(&[]);
    cancelled.push(AccountEvent::ServiceCancelled {
        service_id: HOSTING,
    });
    account()
        .given(cancelled)
        .when(by(Actor::Staff("support".into()), record(None)))
        .then_expect_error(DomainError::FailedPrecondition(
            "service is cancelled".into(),
        ));

    account()
        .given(placed(&[]))
        .when(by(
            Actor::User(OWNER),
            AccountCommand::RecordServiceLogin {
                service_id: DOMAIN,
                failure: None,
            },
        ))
        .then_expect_error(DomainError::FailedPrecondition(
            "only a hosting service has a control panel".into(),
        ));
}
