//! Access rules of the client account: who may act, invitations, membership and ownership.
//!
//! Each test gives the account's past events, issues one command and states the exact events or
//! error the aggregate decides. The people are those of the agency walkthrough: ABC Company's
//! owner invites the designer's master account.

use chrono::{DateTime, Duration, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use onbehalf::domain::{AccountCommand, ClientAccount, Command, CommandContext, DomainError};
use onbehalf_events::account::{InvoiceKind, InvoiceLine, RemovalReason};
use onbehalf_events::values::{
    BillingCycle, Currency, DomainName, Email, Money, Name, ProductKind,
};
use onbehalf_events::{AccountEvent, Actor, Permission, PermissionSet, Price, Product};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Test data

const ACCOUNT: Uuid = Uuid::from_u128(0xabc0);
/// The client who created ABC Company's account (admin@abc.co.tz).
const OWNER: Uuid = Uuid::from_u128(0x0001);
/// The agency's master account (designer@yourcompany.com).
const DESIGNER: Uuid = Uuid::from_u128(0x0002);
/// Another agency user, never invited.
const STRANGER: Uuid = Uuid::from_u128(0x0003);

const INVITATION: Uuid = Uuid::from_u128(0x1001);
const SECOND_INVITATION: Uuid = Uuid::from_u128(0x1002);

const HOSTING_PRODUCT: Uuid = Uuid::from_u128(0x2001);
const DOMAIN_PRODUCT: Uuid = Uuid::from_u128(0x2002);
const HOSTING: Uuid = Uuid::from_u128(0x3001);
const DOMAIN: Uuid = Uuid::from_u128(0x3002);
const HOSTING_INVOICE: Uuid = Uuid::from_u128(0x4001);
const DOMAIN_INVOICE: Uuid = Uuid::from_u128(0x4002);

fn at(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, day, hour, 0, 0)
        .single()
        .expect("valid test time")
}

/// The moment most commands are issued.
fn now() -> DateTime<Utc> {
    at(3, 9)
}

fn ttl() -> Duration {
    Duration::days(7)
}

fn email(raw: &str) -> Email {
    Email::parse(raw).expect("valid test email")
}

fn name(raw: &str) -> Name {
    Name::parse(raw).expect("valid test name")
}

fn domain(raw: &str) -> DomainName {
    DomainName::parse(raw).expect("valid test domain")
}

fn tzs(amount_minor: i64) -> Money {
    Money::new(
        amount_minor,
        Currency::parse("TZS").expect("valid currency"),
    )
    .expect("valid money")
}

fn set(permissions: &[Permission]) -> PermissionSet {
    permissions.iter().copied().collect()
}

fn full_access_without(missing: Permission) -> PermissionSet {
    PermissionSet::full().difference(&set(&[missing]))
}

fn by(actor: Actor, now: DateTime<Utc>, body: AccountCommand) -> Command<AccountCommand> {
    Command {
        context: CommandContext { actor, now },
        body,
    }
}

fn user(id: Uuid, body: AccountCommand) -> Command<AccountCommand> {
    by(Actor::User(id), now(), body)
}

fn account() -> TestFramework<ClientAccount> {
    TestFramework::<ClientAccount>::with(())
}

fn hosting_product() -> Product {
    Product {
        product_id: HOSTING_PRODUCT,
        name: name("Starter Hosting"),
        kind: ProductKind::Hosting,
        tld: None,
        prices: vec![Price {
            billing_cycle: BillingCycle::Monthly,
            amount: tzs(1_500_000),
        }],
    }
}

// ---------------------------------------------------------------------------------------------
// Past events

fn created() -> AccountEvent {
    AccountEvent::AccountCreated {
        account_id: ACCOUNT,
        name: name("ABC Company"),
        email: email("admin@abc.co.tz"),
        owner_user_id: OWNER,
    }
}

fn invited(invitation_id: Uuid, invitee: &str, permissions: PermissionSet) -> AccountEvent {
    AccountEvent::UserInvited {
        invitation_id,
        email: email(invitee),
        permissions,
        expires_at: now() + ttl(),
        invited_by: OWNER,
    }
}

fn designer_invited(permissions: PermissionSet) -> AccountEvent {
    invited(INVITATION, "designer@yourcompany.com", permissions)
}

fn accepted(user_id: Uuid, permissions: PermissionSet) -> AccountEvent {
    AccountEvent::InvitationAccepted {
        invitation_id: INVITATION,
        user_id,
        permissions,
    }
}

/// ABC Company with the designer as a member holding `permissions`.
fn with_designer(permissions: PermissionSet) -> Vec<AccountEvent> {
    vec![
        created(),
        designer_invited(permissions.clone()),
        accepted(DESIGNER, permissions),
    ]
}

/// The designer was a full-access member until the owner removed the access.
fn with_designer_revoked() -> Vec<AccountEvent> {
    let mut events = with_designer(PermissionSet::full());
    events.push(AccountEvent::MemberRemoved {
        user_id: DESIGNER,
        reason: RemovalReason::Revoked,
    });
    events
}

/// A hosting plan and a domain ordered earlier, both unpaid.
fn services_ordered() -> Vec<AccountEvent> {
    let ordered_on = now().date_naive();
    let hosting_due = BillingCycle::Monthly.advance(ordered_on);
    let domain_due = BillingCycle::Annually.advance(ordered_on);
    let currency = Currency::parse("TZS").expect("valid currency");
    vec![
        AccountEvent::ServiceOrdered {
            service_id: HOSTING,
            product_id: HOSTING_PRODUCT,
            product_name: name("Starter Hosting"),
            kind: ProductKind::Hosting,
            domain: None,
            billing_cycle: BillingCycle::Monthly,
            amount_minor: 1_500_000,
            currency: currency.clone(),
            ordered_on,
            next_due_date: hosting_due,
        },
        AccountEvent::InvoiceIssued {
            invoice_id: HOSTING_INVOICE,
            service_id: HOSTING,
            kind: InvoiceKind::Order,
            lines: vec![InvoiceLine {
                description: "Starter Hosting (2026-03-03 - 2026-04-02)".into(),
                amount_minor: 1_500_000,
            }],
            total_minor: 1_500_000,
            currency: currency.clone(),
            issued_on: ordered_on,
            due_date: ordered_on,
        },
        AccountEvent::ServiceOrdered {
            service_id: DOMAIN,
            product_id: DOMAIN_PRODUCT,
            product_name: name(".co.tz Domain"),
            kind: ProductKind::Domain,
            domain: Some(domain("abc.co.tz")),
            billing_cycle: BillingCycle::Annually,
            amount_minor: 3_000_000,
            currency: currency.clone(),
            ordered_on,
            next_due_date: domain_due,
        },
        AccountEvent::InvoiceIssued {
            invoice_id: DOMAIN_INVOICE,
            service_id: DOMAIN,
            kind: InvoiceKind::Order,
            lines: vec![InvoiceLine {
                description: ".co.tz Domain - abc.co.tz (2026-03-03 - 2027-03-02)".into(),
                amount_minor: 3_000_000,
            }],
            total_minor: 3_000_000,
            currency,
            issued_on: ordered_on,
            due_date: ordered_on,
        },
    ]
}

/// Every command a member needs a permission for, with that permission.
fn guarded_commands() -> Vec<(AccountCommand, Permission)> {
    vec![
        (
            AccountCommand::UpdateProfile {
                name: name("ABC Company Ltd"),
                email: email("billing@abc.co.tz"),
            },
            Permission::Profile,
        ),
        (
            AccountCommand::OrderService {
                service_id: Uuid::from_u128(0x3003),
                invoice_id: Uuid::from_u128(0x4003),
                product: hosting_product(),
                domain: None,
                billing_cycle: BillingCycle::Monthly,
            },
            Permission::Orders,
        ),
        (
            AccountCommand::RenewService {
                service_id: HOSTING,
                invoice_id: Uuid::from_u128(0x4004),
            },
            Permission::Orders,
        ),
        (
            AccountCommand::CancelService {
                service_id: HOSTING,
            },
            Permission::Orders,
        ),
        (
            AccountCommand::UpdateNameservers {
                service_id: DOMAIN,
                nameservers: vec![domain("ns1.netpoa.co.tz"), domain("ns2.netpoa.co.tz")],
            },
            Permission::ManageDomains,
        ),
        (
            AccountCommand::PayInvoice {
                invoice_id: HOSTING_INVOICE,
                payment_id: Uuid::from_u128(0x5001),
                amount_minor: 1_500_000,
                reference: "MPESA-QH7K2L9".into(),
            },
            Permission::Invoices,
        ),
    ]
}

/// Every command only the owner may issue.
fn owner_only_commands() -> Vec<AccountCommand> {
    vec![
        AccountCommand::Invite {
            invitation_id: SECOND_INVITATION,
            email: email("info@newlife.or.tz"),
            invitee_user_id: None,
            permissions: set(&[Permission::Invoices]),
            ttl: ttl(),
        },
        AccountCommand::ResendInvitation {
            invitation_id: INVITATION,
            ttl: ttl(),
        },
        AccountCommand::CancelInvitation {
            invitation_id: INVITATION,
        },
        AccountCommand::GrantPermissions {
            user_id: DESIGNER,
            permissions: set(&[Permission::Quotes]),
        },
        AccountCommand::RevokePermissions {
            user_id: DESIGNER,
            permissions: set(&[Permission::Quotes]),
        },
        AccountCommand::RevokeAccess { user_id: DESIGNER },
        AccountCommand::TransferOwnership {
            new_owner_user_id: DESIGNER,
        },
    ]
}

fn history(parts: &[Vec<AccountEvent>]) -> Vec<AccountEvent> {
    parts.concat()
}

// ---------------------------------------------------------------------------------------------
// Creating the account

#[test]
fn a_user_creates_an_account_and_becomes_its_owner() {
    account()
        .given_no_previous_events()
        .when(user(
            OWNER,
            AccountCommand::Create {
                account_id: ACCOUNT,
                name: name("ABC Company"),
                email: email("admin@abc.co.tz"),
            },
        ))
        .then_expect_events(vec![created()]);
}

#[test]
fn an_account_cannot_be_created_twice() {
    account()
        .given(vec![created()])
        .when(user(
            STRANGER,
            AccountCommand::Create {
                account_id: ACCOUNT,
                name: name("Star Logistics"),
                email: email("support@starlogistics.co.tz"),
            },
        ))
        .then_expect_error(DomainError::AlreadyExists("account already exists".into()));
}

#[test]
fn a_service_cannot_create_an_account() {
    account()
        .given_no_previous_events()
        .when(by(
            Actor::Service("billing".into()),
            now(),
            AccountCommand::Create {
                account_id: ACCOUNT,
                name: name("ABC Company"),
                email: email("admin@abc.co.tz"),
            },
        ))
        .then_expect_error(DomainError::PermissionDenied(
            "only users may do this".into(),
        ));
}

#[test]
fn commands_on_an_account_that_does_not_exist_are_not_found() {
    let mut commands = owner_only_commands();
    commands.extend(guarded_commands().into_iter().map(|(command, _)| command));
    commands.push(AccountCommand::Leave);
    commands.push(AccountCommand::AcceptInvitation {
        invitation_id: INVITATION,
        generation: 0,
    });
    for command in commands {
        account()
            .given_no_previous_events()
            .when(user(OWNER, command))
            .then_expect_error(DomainError::NotFound("account"));
    }
}

// ---------------------------------------------------------------------------------------------
// Only the owner manages users

#[test]
fn a_member_with_full_access_still_cannot_manage_users() {
    for command in owner_only_commands() {
        account()
            .given(with_designer(PermissionSet::full()))
            .when(user(DESIGNER, command.clone()))
            .then_expect_error(DomainError::PermissionDenied(
                "only the account owner manages users".into(),
            ));
    }
}

#[test]
fn a_user_outside_the_account_cannot_manage_users() {
    for command in owner_only_commands() {
        account()
            .given(with_designer(PermissionSet::full()))
            .when(user(STRANGER, command.clone()))
            .then_expect_error(DomainError::PermissionDenied(
                "caller is not the owner of this account".into(),
            ));
    }
}

#[test]
fn services_and_staff_cannot_manage_users() {
    for actor in [
        Actor::Service("billing".into()),
        Actor::Staff("support".into()),
        Actor::System,
    ] {
        for command in owner_only_commands() {
            account()
                .given(with_designer(PermissionSet::full()))
                .when(by(actor.clone(), now(), command))
                .then_expect_error(DomainError::PermissionDenied(
                    "caller is not the owner of this account".into(),
                ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Inviting

#[test]
fn the_owner_invites_the_designer_with_full_access() {
    account()
        .given(vec![created()])
        .when(user(
            OWNER,
            AccountCommand::Invite {
                invitation_id: INVITATION,
                email: email("designer@yourcompany.com"),
                invitee_user_id: Some(DESIGNER),
                permissions: PermissionSet::full(),
                ttl: ttl(),
            },
        ))
        .then_expect_events(vec![AccountEvent::UserInvited {
            invitation_id: INVITATION,
            email: email("designer@yourcompany.com"),
            permissions: PermissionSet::full(),
            expires_at: at(10, 9),
            invited_by: OWNER,
        }]);
}

#[test]
fn the_owner_invites_with_a_chosen_set_of_permissions() {
    let billing_only = set(&[Permission::Invoices, Permission::Emails]);
    account()
        .given(vec![created()])
        .when(user(
            OWNER,
            AccountCommand::Invite {
                invitation_id: INVITATION,
                email: email("accounts@yourcompany.com"),
                invitee_user_id: None,
                permissions: billing_only.clone(),
                ttl: Duration::hours(48),
            },
        ))
        .then_expect_events(vec![AccountEvent::UserInvited {
            invitation_id: INVITATION,
            email: email("accounts@yourcompany.com"),
            permissions: billing_only,
            expires_at: at(5, 9),
            invited_by: OWNER,
        }]);
}

#[test]
fn an_invitation_without_permissions_is_refused() {
    account()
        .given(vec![created()])
        .when(user(
            OWNER,
            AccountCommand::Invite {
                invitation_id: INVITATION,
                email: email("designer@yourcompany.com"),
                invitee_user_id: None,
                permissions: PermissionSet::empty(),
                ttl: ttl(),
            },
        ))
        .then_expect_error(DomainError::InvalidArgument {
            field: "permissions",
            message: "must not be empty".into(),
        });
}

#[test]
fn a_second_invitation_to_a_pending_email_in_another_case_already_exists() {
    account()
        .given(vec![created(), designer_invited(PermissionSet::full())])
        .when(user(
            OWNER,
            AccountCommand::Invite {
                invitation_id: SECOND_INVITATION,
                email: email("Designer@YourCompany.COM"),
                invitee_user_id: None,
                permissions: set(&[Permission::Invoices]),
                ttl: ttl(),
            },
        ))
        .then_expect_error(DomainError::AlreadyExists(
            "a pending invitation for that email exists".into(),
        ));
}

#[test]
fn inviting_a_current_member_already_exists() {
    account()
        .given(with_designer(set(&[Permission::Invoices])))
        .when(user(
            OWNER,
            AccountCommand::Invite {
                invitation_id: SECOND_INVITATION,
                email: email("designer@yourcompany.com"),
                invitee_user_id: Some(DESIGNER),
                permissions: PermissionSet::full(),
                ttl: ttl(),
            },
        ))
        .then_expect_error(DomainError::AlreadyExists(
            "that user is already the owner or a member of this account".into(),
        ));
}

#[test]
fn inviting_the_owner_already_exists() {
    account()
        .given(vec![created()])
        .when(user(
            OWNER,
            AccountCommand::Invite {
                invitation_id: INVITATION,
                email: email("admin@abc.co.tz"),
                invitee_user_id: Some(OWNER),
                permissions: PermissionSet::full(),
                ttl: ttl(),
            },
        ))
        .then_expect_error(DomainError::AlreadyExists(
            "that user is already the owner or a member of this account".into(),
        ));
}

#[test]
fn an_invitation_id_cannot_be_reused() {
    account()
        .given(vec![
            created(),
            designer_invited(PermissionSet::full()),
            AccountEvent::InvitationCancelled {
                invitation_id: INVITATION,
            },
        ])
        .when(user(
            OWNER,
            AccountCommand::Invite {
                invitation_id: INVITATION,
                email: email("info@newlife.or.tz"),
                invitee_user_id: None,
                permissions: PermissionSet::full(),
                ttl: ttl(),
            },
        ))
        .then_expect_error(DomainError::AlreadyExists("invitation id is taken".into()));
}

#[test]
fn an_email_can_be_invited_again_once_its_invitation_has_expired() {
    // At exactly `expires_at` the first invitation is no longer pending.
    account()
        .given(vec![created(), designer_invited(PermissionSet::full())])
        .when(by(
            Actor::User(OWNER),
            at(10, 9),
            AccountCommand::Invite {
                invitation_id: SECOND_INVITATION,
                email: email("designer@yourcompany.com"),
                invitee_user_id: None,
                permissions: PermissionSet::full(),
                ttl: ttl(),
            },
        ))
        .then_expect_events(vec![AccountEvent::UserInvited {
            invitation_id: SECOND_INVITATION,
            email: email("designer@yourcompany.com"),
            permissions: PermissionSet::full(),
            expires_at: at(17, 9),
            invited_by: OWNER,
        }]);
}

#[test]
fn an_email_can_be_invited_again_after_a_decline() {
    account()
        .given(vec![
            created(),
            designer_invited(PermissionSet::full()),
            AccountEvent::InvitationDeclined {
                invitation_id: INVITATION,
                user_id: DESIGNER,
            },
        ])
        .when(user(
            OWNER,
            AccountCommand::Invite {
                invitation_id: SECOND_INVITATION,
                email: email("designer@yourcompany.com"),
                invitee_user_id: Some(DESIGNER),
                permissions: set(&[Permission::Products]),
                ttl: ttl(),
            },
        ))
        .then_expect_events(vec![AccountEvent::UserInvited {
            invitation_id: SECOND_INVITATION,
            email: email("designer@yourcompany.com"),
            permissions: set(&[Permission::Products]),
            expires_at: at(10, 9),
            invited_by: OWNER,
        }]);
}

// ---------------------------------------------------------------------------------------------
// Expiry and resending

#[test]
fn an_invitation_is_accepted_one_second_before_it_expires() {
    account()
        .given(vec![created(), designer_invited(PermissionSet::full())])
        .when(by(
            Actor::User(DESIGNER),
            at(10, 9) - Duration::seconds(1),
            AccountCommand::AcceptInvitation {
                invitation_id: INVITATION,
                generation: 0,
            },
        ))
        .then_expect_events(vec![accepted(DESIGNER, PermissionSet::full())]);
}

#[test]
fn an_invitation_is_expired_exactly_at_its_expiry() {
    account()
        .given(vec![created(), designer_invited(PermissionSet::full())])
        .when(by(
            Actor::User(DESIGNER),
            at(10, 9),
            AccountCommand::AcceptInvitation {
                invitation_id: INVITATION,
                generation: 0,
            },
        ))
        .then_expect_error(DomainError::FailedPrecondition(
            "invitation has expired".into(),
        ));
}

#[test]
fn an_expired_invitation_cannot_be_declined() {
    account()
        .given(vec![created(), designer_invited(PermissionSet::full())])
        .when(by(
            Actor::User(DESIGNER),
            at(11, 9),
            AccountCommand::DeclineInvitation {
                invitation_id: INVITATION,
                generation: 0,
            },
        ))
        .then_expect_error(DomainError::FailedPrecondition(
            "invitation has expired".into(),
        ));
}

#[test]
fn resending_bumps_the_generation_and_restarts_the_expiry() {
    account()
        .given(vec![created(), designer_invited(PermissionSet::full())])
        .when(by(
            Actor::User(OWNER),
            at(9, 9),
            AccountCommand::ResendInvitation {
                invitation_id: INVITATION,
                ttl: ttl(),
            },
        ))
        .then_expect_events(vec![AccountEvent::InvitationResent {
            invitation_id: INVITATION,
            generation: 1,
            expires_at: at(16, 9),
        }]);
}

#[test]
fn resending_twice_counts_every_send() {
    account()
        .given(vec![
            created(),
            designer_invited(PermissionSet::full()),
            AccountEvent::InvitationResent {
                invitation_id: INVITATION,
                generation: 1,
                expires_at: at(11, 9),
            },
        ])
        .when(by(
            Actor::User(OWNER),
            at(5, 9),
            AccountCommand::ResendInvitation {
                invitation_id: INVITATION,
                ttl: ttl(),
            },
        ))
        .then_expect_events(vec![AccountEvent::InvitationResent {
            invitation_id: INVITATION,
            generation: 2,
            expires_at: at(12, 9),
        }]);
}

fn resent_on_the_ninth() -> Vec<AccountEvent> {
    vec![
        created(),
        designer_invited(PermissionSet::full()),
        AccountEvent::InvitationResent {
            invitation_id: INVITATION,
            generation: 1,
            expires_at: at(16, 9),
        },
    ]
}

#[test]
fn the_resent_link_is_accepted_after_the_first_expiry() {
    account()
        .given(resent_on_the_ninth())
        .when(by(
            Actor::User(DESIGNER),
            at(12, 9),
            AccountCommand::AcceptInvitation {
                invitation_id: INVITATION,
                generation: 1,
            },
        ))
        .then_expect_events(vec![accepted(DESIGNER, PermissionSet::full())]);
}

#[test]
fn the_link_of_an_earlier_send_is_refused_after_a_resend() {
    account()
        .given(resent_on_the_ninth())
        .when(by(
            Actor::User(DESIGNER),
            at(9, 10),
            AccountCommand::AcceptInvitation {
                invitation_id: INVITATION,
                generation: 0,
            },
        ))
        .then_expect_error(DomainError::FailedPrecondition(
            "invitation was sent again; only the newest link works".into(),
        ));
}

#[test]
fn the_link_of_an_earlier_send_cannot_decline_either() {
    account()
        .given(resent_on_the_ninth())
        .when(by(
            Actor::User(DESIGNER),
            at(9, 10),
            AccountCommand::DeclineInvitation {
                invitation_id: INVITATION,
                generation: 0,
            },
        ))
        .then_expect_error(DomainError::FailedPrecondition(
            "invitation was sent again; only the newest link works".into(),
        ));
}

#[test]
fn a_generation_not_yet_sent_is_refused() {
    account()
        .given(vec![created(), designer_invited(PermissionSet::full())])
        .when(user(
            DESIGNER,
            AccountCommand::AcceptInvitation {
                invitation_id: INVITATION,
                generation: 1,
            },
        ))
        .then_expect_error(DomainError::FailedPrecondition(
            "invitation was sent again; only the newest link works".into(),
        ));
}

#[test]
fn resending_an_expired_invitation_makes_it_acceptable_again() {
    account()
        .given(vec![created(), designer_invited(PermissionSet::full())])
        .when(by(
            Actor::User(OWNER),
            at(20, 9),
            AccountCommand::ResendInvitation {
                invitation_id: INVITATION,
                ttl: ttl(),
            },
        ))
        .then_expect_events(vec![AccountEvent::InvitationResent {
            invitation_id: INVITATION,
            generation: 1,
            expires_at: at(27, 9),
        }]);
}

#[test]
fn resending_an_expired_invitation_is_refused_while_a_newer_one_to_that_email_is_pending() {
    // Reopening the old invitation would leave two acceptable invitations for one email,
    // which `Invite` refuses.
    let result = account()
        .given(vec![
            created(),
            designer_invited(PermissionSet::full()),
            AccountEvent::UserInvited {
                invitation_id: SECOND_INVITATION,
                email: email("designer@yourcompany.com"),
                permissions: set(&[Permission::Invoices]),
                expires_at: at(19, 9),
                invited_by: OWNER,
            },
        ])
        .when(by(
            Actor::User(OWNER),
            at(13, 9),
            AccountCommand::ResendInvitation {
                invitation_id: INVITATION,
                ttl: ttl(),
            },
        ))
        .inspect_result();
    assert!(
        matches!(result, Err(DomainError::AlreadyExists(_))),
        "decided {result:?}"
    );
}

#[test]
fn an_answered_invitation_cannot_be_resent() {
    for answer in [
        accepted(DESIGNER, PermissionSet::full()),
        AccountEvent::InvitationDeclined {
            invitation_id: INVITATION,
            user_id: DESIGNER,
        },
        AccountEvent::InvitationCancelled {
            invitation_id: INVITATION,
        },
    ] {
        account()
            .given(vec![
                created(),
                designer_invited(PermissionSet::full()),
                answer,
            ])
            .when(user(
                OWNER,
                AccountCommand::ResendInvitation {
                    invitation_id: INVITATION,
                    ttl: ttl(),
                },
            ))
            .then_expect_error(DomainError::FailedPrecondition(
                "only a pending invitation can be sent again".into(),
            ));
    }
}

#[test]
fn resending_an_unknown_invitation_is_not_found() {
    account()
        .given(vec![created()])
        .when(user(
            OWNER,
            AccountCommand::ResendInvitation {
                invitation_id: INVITATION,
                ttl: ttl(),
            },
        ))
        .then_expect_error(DomainError::NotFound("invitation"));
}

// ---------------------------------------------------------------------------------------------
// Cancelling

#[test]
fn the_owner_cancels_a_pending_invitation() {
    account()
        .given(vec![created(), designer_invited(PermissionSet::full())])
        .when(user(
            OWNER,
            AccountCommand::CancelInvitation {
                invitation_id: INVITATION,
            },
        ))
        .then_expect_events(vec![AccountEvent::InvitationCancelled {
            invitation_id: INVITATION,
        }]);
}

#[test]
fn an_answered_invitation_cannot_be_cancelled() {
    for answer in [
        accepted(DESIGNER, PermissionSet::full()),
        AccountEvent::InvitationDeclined {
            invitation_id: INVITATION,
            user_id: DESIGNER,
        },
        AccountEvent::InvitationCancelled {
            invitation_id: INVITATION,
        },
    ] {
        account()
            .given(vec![
                created(),
                designer_invited(PermissionSet::full()),
                answer,
            ])
            .when(user(
                OWNER,
                AccountCommand::CancelInvitation {
                    invitation_id: INVITATION,
                },
            ))
            .then_expect_error(DomainError::FailedPrecondition(
                "only a pending invitation can be cancelled".into(),
            ));
    }
}

#[test]
fn cancelling_an_unknown_invitation_is_not_found() {
    account()
        .given(vec![created()])
        .when(user(
            OWNER,
            AccountCommand::CancelInvitation {
                invitation_id: INVITATION,
            },
        ))
        .then_expect_error(DomainError::NotFound("invitation"));
}

// ---------------------------------------------------------------------------------------------
// Accepting and declining

#[test]
fn accepting_makes_the_designer_a_member_with_the_invited_permissions() {
    let permissions = set(&[
        Permission::Products,
        Permission::ProductSso,
        Permission::Invoices,
    ]);
    account()
        .given(vec![created(), designer_invited(permissions.clone())])
        .when(user(
            DESIGNER,
            AccountCommand::AcceptInvitation {
                invitation_id: INVITATION,
                generation: 0,
            },
        ))
        .then_expect_events(vec![accepted(DESIGNER, permissions)]);
}

#[test]
fn the_designer_declines_an_invitation() {
    account()
        .given(vec![created(), designer_invited(PermissionSet::full())])
        .when(user(
            DESIGNER,
            AccountCommand::DeclineInvitation {
                invitation_id: INVITATION,
                generation: 0,
            },
        ))
        .then_expect_events(vec![AccountEvent::InvitationDeclined {
            invitation_id: INVITATION,
            user_id: DESIGNER,
        }]);
}

#[test]
fn an_answered_invitation_cannot_be_accepted_or_declined() {
    let answers = [
        (
            accepted(DESIGNER, PermissionSet::full()),
            "invitation was already accepted",
        ),
        (
            AccountEvent::InvitationDeclined {
                invitation_id: INVITATION,
                user_id: DESIGNER,
            },
            "invitation was declined",
        ),
        (
            AccountEvent::InvitationCancelled {
                invitation_id: INVITATION,
            },
            "invitation was cancelled",
        ),
    ];
    for (answer, message) in answers {
        let given = vec![created(), designer_invited(PermissionSet::full()), answer];
        // A stranger holding the link answers, so membership cannot be the reason for refusal.
        account()
            .given(given.clone())
            .when(user(
                STRANGER,
                AccountCommand::AcceptInvitation {
                    invitation_id: INVITATION,
                    generation: 0,
                },
            ))
            .then_expect_error(DomainError::FailedPrecondition(message.into()));
        account()
            .given(given)
            .when(user(
                STRANGER,
                AccountCommand::DeclineInvitation {
                    invitation_id: INVITATION,
                    generation: 0,
                },
            ))
            .then_expect_error(DomainError::FailedPrecondition(message.into()));
    }
}

#[test]
fn accepting_an_unknown_invitation_is_not_found() {
    account()
        .given(vec![created()])
        .when(user(
            DESIGNER,
            AccountCommand::AcceptInvitation {
                invitation_id: INVITATION,
                generation: 0,
            },
        ))
        .then_expect_error(DomainError::NotFound("invitation"));
}

#[test]
fn the_owner_cannot_accept_an_invitation_to_its_own_account() {
    account()
        .given(vec![created(), designer_invited(PermissionSet::full())])
        .when(user(
            OWNER,
            AccountCommand::AcceptInvitation {
                invitation_id: INVITATION,
                generation: 0,
            },
        ))
        .then_expect_error(DomainError::AlreadyExists(
            "caller is already the owner or a member of this account".into(),
        ));
}

#[test]
fn a_member_cannot_accept_a_second_invitation() {
    let mut given = with_designer(set(&[Permission::Invoices]));
    given.push(invited(
        SECOND_INVITATION,
        "designer@yourcompany.com",
        PermissionSet::full(),
    ));
    account()
        .given(given)
        .when(user(
            DESIGNER,
            AccountCommand::AcceptInvitation {
                invitation_id: SECOND_INVITATION,
                generation: 0,
            },
        ))
        .then_expect_error(DomainError::AlreadyExists(
            "caller is already the owner or a member of this account".into(),
        ));
}

#[test]
fn only_users_answer_invitations() {
    for body in [
        AccountCommand::AcceptInvitation {
            invitation_id: INVITATION,
            generation: 0,
        },
        AccountCommand::DeclineInvitation {
            invitation_id: INVITATION,
            generation: 0,
        },
    ] {
        account()
            .given(vec![created(), designer_invited(PermissionSet::full())])
            .when(by(Actor::Service("mailer".into()), now(), body))
            .then_expect_error(DomainError::PermissionDenied(
                "only users may do this".into(),
            ));
    }
}

// ---------------------------------------------------------------------------------------------
// Granting and revoking permissions

#[test]
fn granting_records_only_the_permissions_the_member_lacked() {
    account()
        .given(with_designer(set(&[
            Permission::Invoices,
            Permission::Products,
        ])))
        .when(user(
            OWNER,
            AccountCommand::GrantPermissions {
                user_id: DESIGNER,
                permissions: set(&[Permission::Invoices, Permission::Orders]),
            },
        ))
        .then_expect_events(vec![AccountEvent::PermissionsGranted {
            user_id: DESIGNER,
            granted: set(&[Permission::Orders]),
            permissions: set(&[
                Permission::Invoices,
                Permission::Orders,
                Permission::Products,
            ]),
        }]);
}

#[test]
fn granting_permissions_the_member_holds_emits_nothing() {
    account()
        .given(with_designer(set(&[
            Permission::Invoices,
            Permission::Products,
        ])))
        .when(user(
            OWNER,
            AccountCommand::GrantPermissions {
                user_id: DESIGNER,
                permissions: set(&[Permission::Invoices]),
            },
        ))
        .then_expect_events(vec![]);
}

#[test]
fn revoking_records_only_the_permissions_the_member_held() {
    account()
        .given(with_designer(set(&[
            Permission::Invoices,
            Permission::Orders,
        ])))
        .when(user(
            OWNER,
            AccountCommand::RevokePermissions {
                user_id: DESIGNER,
                permissions: set(&[Permission::Orders, Permission::Tickets]),
            },
        ))
        .then_expect_events(vec![AccountEvent::PermissionsRevoked {
            user_id: DESIGNER,
            revoked: set(&[Permission::Orders]),
            permissions: set(&[Permission::Invoices]),
        }]);
}

#[test]
fn revoking_permissions_the_member_lacks_emits_nothing() {
    account()
        .given(with_designer(set(&[Permission::Invoices])))
        .when(user(
            OWNER,
            AccountCommand::RevokePermissions {
                user_id: DESIGNER,
                permissions: set(&[Permission::Orders, Permission::Tickets]),
            },
        ))
        .then_expect_events(vec![]);
}

#[test]
fn the_owners_permissions_cannot_be_changed() {
    for body in [
        AccountCommand::GrantPermissions {
            user_id: OWNER,
            permissions: set(&[Permission::Orders]),
        },
        AccountCommand::RevokePermissions {
            user_id: OWNER,
            permissions: set(&[Permission::Orders]),
        },
    ] {
        account()
            .given(with_designer(PermissionSet::full()))
            .when(user(OWNER, body))
            .then_expect_error(DomainError::FailedPrecondition(
                "the owner holds every permission and cannot be changed".into(),
            ));
    }
}

#[test]
fn permissions_of_someone_who_is_not_a_member_are_not_found() {
    for body in [
        AccountCommand::GrantPermissions {
            user_id: STRANGER,
            permissions: set(&[Permission::Orders]),
        },
        AccountCommand::RevokePermissions {
            user_id: STRANGER,
            permissions: set(&[Permission::Orders]),
        },
    ] {
        account()
            .given(with_designer(PermissionSet::full()))
            .when(user(OWNER, body))
            .then_expect_error(DomainError::NotFound("member"));
    }
}

#[test]
fn a_permission_revoked_earlier_is_refused_at_once() {
    let mut given = with_designer(set(&[Permission::Invoices, Permission::Orders]));
    given.push(AccountEvent::PermissionsRevoked {
        user_id: DESIGNER,
        revoked: set(&[Permission::Orders]),
        permissions: set(&[Permission::Invoices]),
    });
    account()
        .given(given)
        .when(user(
            DESIGNER,
            AccountCommand::OrderService {
                service_id: HOSTING,
                invoice_id: HOSTING_INVOICE,
                product: hosting_product(),
                domain: None,
                billing_cycle: BillingCycle::Monthly,
            },
        ))
        .then_expect_error(DomainError::PermissionDenied(
            "caller lacks the ORDERS permission".into(),
        ));
}

#[test]
fn a_permission_granted_earlier_is_honoured_at_once() {
    let mut given = with_designer(set(&[Permission::Invoices]));
    given.push(AccountEvent::PermissionsGranted {
        user_id: DESIGNER,
        granted: set(&[Permission::ManageDomains]),
        permissions: set(&[Permission::Invoices, Permission::ManageDomains]),
    });
    given.extend(services_ordered());
    let nameservers = vec![domain("ns1.netpoa.co.tz"), domain("ns2.netpoa.co.tz")];
    account()
        .given(given)
        .when(user(
            DESIGNER,
            AccountCommand::UpdateNameservers {
                service_id: DOMAIN,
                nameservers: nameservers.clone(),
            },
        ))
        .then_expect_events(vec![AccountEvent::NameserversUpdated {
            service_id: DOMAIN,
            nameservers,
        }]);
}

// ---------------------------------------------------------------------------------------------
// Removing access and leaving

#[test]
fn the_owner_revokes_the_designers_access() {
    account()
        .given(with_designer(PermissionSet::full()))
        .when(user(
            OWNER,
            AccountCommand::RevokeAccess { user_id: DESIGNER },
        ))
        .then_expect_events(vec![AccountEvent::MemberRemoved {
            user_id: DESIGNER,
            reason: RemovalReason::Revoked,
        }]);
}

#[test]
fn revoking_access_of_someone_who_is_not_a_member_is_not_found() {
    account()
        .given(with_designer_revoked())
        .when(user(
            OWNER,
            AccountCommand::RevokeAccess { user_id: DESIGNER },
        ))
        .then_expect_error(DomainError::NotFound("member"));
}

#[test]
fn the_owner_cannot_be_removed() {
    account()
        .given(with_designer(PermissionSet::full()))
        .when(user(OWNER, AccountCommand::RevokeAccess { user_id: OWNER }))
        .then_expect_error(DomainError::FailedPrecondition(
            "the owner cannot be removed".into(),
        ));
}

#[test]
fn a_member_leaves_the_account() {
    account()
        .given(with_designer(set(&[Permission::Invoices])))
        .when(user(DESIGNER, AccountCommand::Leave))
        .then_expect_events(vec![AccountEvent::MemberRemoved {
            user_id: DESIGNER,
            reason: RemovalReason::Left,
        }]);
}

#[test]
fn the_owner_cannot_leave() {
    account()
        .given(with_designer(PermissionSet::full()))
        .when(user(OWNER, AccountCommand::Leave))
        .then_expect_error(DomainError::FailedPrecondition(
            "the owner cannot leave; transfer ownership first".into(),
        ));
}

#[test]
fn someone_who_is_not_a_member_cannot_leave() {
    for who in [STRANGER, DESIGNER] {
        account()
            .given(with_designer_revoked())
            .when(user(who, AccountCommand::Leave))
            .then_expect_error(DomainError::PermissionDenied(
                "caller is not a member of this account".into(),
            ));
    }
}

#[test]
fn a_removed_member_can_be_invited_again() {
    account()
        .given(with_designer_revoked())
        .when(user(
            OWNER,
            AccountCommand::Invite {
                invitation_id: SECOND_INVITATION,
                email: email("designer@yourcompany.com"),
                invitee_user_id: Some(DESIGNER),
                permissions: set(&[Permission::Invoices]),
                ttl: ttl(),
            },
        ))
        .then_expect_events(vec![invited(
            SECOND_INVITATION,
            "designer@yourcompany.com",
            set(&[Permission::Invoices]),
        )]);
}

// ---------------------------------------------------------------------------------------------
// Transferring ownership

fn transferred() -> Vec<AccountEvent> {
    let mut events = with_designer(set(&[Permission::Products]));
    events.push(AccountEvent::OwnershipTransferred {
        from_user_id: OWNER,
        to_user_id: DESIGNER,
    });
    events
}

#[test]
fn the_owner_transfers_ownership_to_a_member() {
    account()
        .given(with_designer(set(&[Permission::Products])))
        .when(user(
            OWNER,
            AccountCommand::TransferOwnership {
                new_owner_user_id: DESIGNER,
            },
        ))
        .then_expect_events(vec![AccountEvent::OwnershipTransferred {
            from_user_id: OWNER,
            to_user_id: DESIGNER,
        }]);
}

#[test]
fn ownership_cannot_move_to_someone_who_is_not_a_member() {
    for (given, who) in [
        (with_designer(PermissionSet::full()), STRANGER),
        (with_designer_revoked(), DESIGNER),
        (
            vec![created(), designer_invited(PermissionSet::full())],
            DESIGNER,
        ),
    ] {
        account()
            .given(given)
            .when(user(
                OWNER,
                AccountCommand::TransferOwnership {
                    new_owner_user_id: who,
                },
            ))
            .then_expect_error(DomainError::FailedPrecondition(
                "ownership can only move to a current member".into(),
            ));
    }
}

#[test]
fn ownership_cannot_move_to_the_owner() {
    account()
        .given(with_designer(PermissionSet::full()))
        .when(user(
            OWNER,
            AccountCommand::TransferOwnership {
                new_owner_user_id: OWNER,
            },
        ))
        .then_expect_error(DomainError::FailedPrecondition(
            "caller already owns this account".into(),
        ));
}

#[test]
fn the_new_owner_manages_users() {
    account()
        .given(transferred())
        .when(user(
            DESIGNER,
            AccountCommand::RevokePermissions {
                user_id: OWNER,
                permissions: set(&[Permission::Orders]),
            },
        ))
        .then_expect_events(vec![AccountEvent::PermissionsRevoked {
            user_id: OWNER,
            revoked: set(&[Permission::Orders]),
            // Revoking one permission leaves the other twelve: the former owner held all 13.
            permissions: full_access_without(Permission::Orders),
        }]);
}

#[test]
fn the_former_owner_no_longer_manages_users() {
    account()
        .given(transferred())
        .when(user(
            OWNER,
            AccountCommand::RevokeAccess { user_id: DESIGNER },
        ))
        .then_expect_error(DomainError::PermissionDenied(
            "only the account owner manages users".into(),
        ));
}

#[test]
fn the_former_owner_keeps_full_access_as_a_member() {
    let mut given = transferred();
    given.extend(services_ordered());
    for (body, _) in guarded_commands() {
        let result = account()
            .given(given.clone())
            .when(user(OWNER, body.clone()))
            .inspect_result();
        assert!(
            matches!(&result, Ok(events) if !events.is_empty()),
            "{body:?} decided {result:?}"
        );
    }
}

#[test]
fn the_former_owner_can_leave_after_the_transfer() {
    account()
        .given(transferred())
        .when(user(OWNER, AccountCommand::Leave))
        .then_expect_events(vec![AccountEvent::MemberRemoved {
            user_id: OWNER,
            reason: RemovalReason::Left,
        }]);
}

#[test]
fn the_new_owner_cannot_leave() {
    account()
        .given(transferred())
        .when(user(DESIGNER, AccountCommand::Leave))
        .then_expect_error(DomainError::FailedPrecondition(
            "the owner cannot leave; transfer ownership first".into(),
        ));
}

// ---------------------------------------------------------------------------------------------
// Permission-guarded commands

#[test]
fn every_guarded_command_names_the_permission_it_needs() {
    for (body, permission) in guarded_commands() {
        assert_eq!(body.required_permission(), Some(permission), "{body:?}");
    }
}

#[test]
fn a_member_with_full_access_passes_every_guarded_command() {
    let given = history(&[with_designer(PermissionSet::full()), services_ordered()]);
    for (body, _) in guarded_commands() {
        let result = account()
            .given(given.clone())
            .when(user(DESIGNER, body.clone()))
            .inspect_result();
        assert!(
            matches!(&result, Ok(events) if !events.is_empty()),
            "{body:?} decided {result:?}"
        );
    }
}

#[test]
fn a_member_lacking_a_permission_is_denied_with_its_name() {
    for (body, permission) in guarded_commands() {
        let given = history(&[
            with_designer(full_access_without(permission)),
            services_ordered(),
        ]);
        account()
            .given(given)
            .when(user(DESIGNER, body))
            .then_expect_error(DomainError::PermissionDenied(format!(
                "caller lacks the {} permission",
                permission.as_str()
            )));
    }
}

#[test]
fn a_revoked_member_is_denied_every_guarded_command() {
    let given = history(&[with_designer_revoked(), services_ordered()]);
    for (body, _) in guarded_commands() {
        account()
            .given(given.clone())
            .when(user(DESIGNER, body))
            .then_expect_error(DomainError::PermissionDenied(
                "caller is not the owner or a member of this account".into(),
            ));
    }
}

#[test]
fn a_member_who_left_is_denied_every_guarded_command() {
    let mut given = with_designer(PermissionSet::full());
    given.push(AccountEvent::MemberRemoved {
        user_id: DESIGNER,
        reason: RemovalReason::Left,
    });
    given.extend(services_ordered());
    for (body, _) in guarded_commands() {
        account()
            .given(given.clone())
            .when(user(DESIGNER, body))
            .then_expect_error(DomainError::PermissionDenied(
                "caller is not the owner or a member of this account".into(),
            ));
    }
}

#[test]
fn a_revoked_member_cannot_manage_users() {
    for command in owner_only_commands() {
        account()
            .given(with_designer_revoked())
            .when(user(DESIGNER, command))
            .then_expect_error(DomainError::PermissionDenied(
                "caller is not the owner of this account".into(),
            ));
    }
}

#[test]
fn a_billing_service_records_a_payment() {
    let given = history(&[vec![created()], services_ordered()]);
    account()
        .given(given)
        .when(by(
            Actor::Service("billing".into()),
            now(),
            AccountCommand::PayInvoice {
                invoice_id: HOSTING_INVOICE,
                payment_id: Uuid::from_u128(0x5001),
                amount_minor: 1_500_000,
                reference: "MPESA-QH7K2L9".into(),
            },
        ))
        .then_expect_events(vec![
            AccountEvent::PaymentReceived {
                invoice_id: HOSTING_INVOICE,
                payment_id: Uuid::from_u128(0x5001),
                amount_minor: 1_500_000,
                reference: "MPESA-QH7K2L9".into(),
            },
            AccountEvent::InvoicePaid {
                invoice_id: HOSTING_INVOICE,
            },
        ]);
}

#[test]
fn services_are_denied_every_guarded_command_but_payment() {
    let given = history(&[vec![created()], services_ordered()]);
    for (body, permission) in guarded_commands() {
        if permission == Permission::Invoices {
            continue;
        }
        account()
            .given(given.clone())
            .when(by(Actor::Service("billing".into()), now(), body))
            .then_expect_error(DomainError::PermissionDenied(
                "caller is not the owner or a member of this account".into(),
            ));
    }
}

#[test]
fn staff_record_a_payment_as_a_member_holding_invoices_would() {
    // The API lets staff in only with a stated reason, which the envelope records.
    let given = history(&[vec![created()], services_ordered()]);
    account()
        .given(given)
        .when(by(
            Actor::Staff("support".into()),
            now(),
            AccountCommand::PayInvoice {
                invoice_id: HOSTING_INVOICE,
                payment_id: Uuid::from_u128(0x5001),
                amount_minor: 1_500_000,
                reference: "MPESA-QH7K2L9".into(),
            },
        ))
        .then_expect_events(vec![
            AccountEvent::PaymentReceived {
                invoice_id: HOSTING_INVOICE,
                payment_id: Uuid::from_u128(0x5001),
                amount_minor: 1_500_000,
                reference: "MPESA-QH7K2L9".into(),
            },
            AccountEvent::InvoicePaid {
                invoice_id: HOSTING_INVOICE,
            },
        ]);
}

#[test]
fn a_user_outside_the_account_is_denied_every_guarded_command() {
    let given = history(&[with_designer(PermissionSet::full()), services_ordered()]);
    for (body, _) in guarded_commands() {
        account()
            .given(given.clone())
            .when(user(STRANGER, body))
            .then_expect_error(DomainError::PermissionDenied(
                "caller is not the owner or a member of this account".into(),
            ));
    }
}

// ---------------------------------------------------------------------------------------------
// Profile

#[test]
fn a_member_with_profile_updates_the_profile() {
    account()
        .given(with_designer(set(&[Permission::Profile])))
        .when(user(
            DESIGNER,
            AccountCommand::UpdateProfile {
                name: name("ABC Company Ltd"),
                email: email("billing@abc.co.tz"),
            },
        ))
        .then_expect_events(vec![AccountEvent::AccountProfileUpdated {
            name: name("ABC Company Ltd"),
            email: email("billing@abc.co.tz"),
        }]);
}

#[test]
fn an_unchanged_profile_emits_nothing() {
    account()
        .given(vec![created()])
        .when(user(
            OWNER,
            AccountCommand::UpdateProfile {
                name: name("ABC Company"),
                email: email("admin@abc.co.tz"),
            },
        ))
        .then_expect_events(vec![]);
}
