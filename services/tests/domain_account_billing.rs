//! Billing rules of the client account: orders, renewals, payments, cancellations, nameservers,
//! and a snapshot round trip of the account's additive state (amounts paid).
//!
//! Dates are written out in full rather than computed, so that a wrong cycle length or a wrong
//! month-end rule shows up as a difference instead of agreeing with itself.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;
use onbehalf::domain::account::InvoiceStatus;
use onbehalf::domain::{AccountCommand, ClientAccount, Command, CommandContext, DomainError};
use onbehalf_events::account::{InvoiceKind, InvoiceLine};
use onbehalf_events::values::{
    BillingCycle, Currency, DomainName, Email, Money, Name, ProductKind, Tld,
};
use onbehalf_events::{AccountEvent, Actor, Permission, PermissionSet, Price, Product};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Test data

const ACCOUNT: Uuid = Uuid::from_u128(0xabc0);
/// The client who created ABC Company's account.
const OWNER: Uuid = Uuid::from_u128(0x0001);
/// The agency's master account, a member of ABC Company's account.
const DESIGNER: Uuid = Uuid::from_u128(0x0002);
const INVITATION: Uuid = Uuid::from_u128(0x1001);

const HOSTING_PRODUCT: Uuid = Uuid::from_u128(0x2001);
const DOMAIN_PRODUCT: Uuid = Uuid::from_u128(0x2002);

const HOSTING: Uuid = Uuid::from_u128(0x3001);
const DOMAIN: Uuid = Uuid::from_u128(0x3002);
const OTHER_HOSTING: Uuid = Uuid::from_u128(0x3003);

// Invoice ids are ordered as the invoices were issued, so events about several invoices come
// out in the same order as the account's invoice map.
const HOSTING_INVOICE: Uuid = Uuid::from_u128(0x4001);
const DOMAIN_INVOICE: Uuid = Uuid::from_u128(0x4002);
const OTHER_HOSTING_INVOICE: Uuid = Uuid::from_u128(0x4003);
const RENEWAL_INVOICE: Uuid = Uuid::from_u128(0x4101);
const NEXT_RENEWAL_INVOICE: Uuid = Uuid::from_u128(0x4102);

const PAYMENT: Uuid = Uuid::from_u128(0x5001);
const SECOND_PAYMENT: Uuid = Uuid::from_u128(0x5002);

fn day(year: i32, month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, day).expect("valid test date")
}

fn at(year: i32, month: u32, day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(year, month, day, 9, 0, 0)
        .single()
        .expect("valid test time")
}

/// The day of the first orders.
fn now() -> DateTime<Utc> {
    at(2026, 3, 3)
}

fn today() -> NaiveDate {
    day(2026, 3, 3)
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

fn tzs_code() -> Currency {
    Currency::parse("TZS").expect("valid currency")
}

fn price(billing_cycle: BillingCycle, amount_minor: i64) -> Price {
    Price {
        billing_cycle,
        amount: Money::new(amount_minor, tzs_code()).expect("valid money"),
    }
}

fn hosting_product() -> Product {
    Product {
        product_id: HOSTING_PRODUCT,
        name: name("Starter Hosting"),
        kind: ProductKind::Hosting,
        tld: None,
        prices: vec![
            price(BillingCycle::Monthly, 1_500_000),
            price(BillingCycle::Annually, 15_000_000),
        ],
    }
}

fn domain_product() -> Product {
    Product {
        product_id: DOMAIN_PRODUCT,
        name: name(".co.tz Domain"),
        kind: ProductKind::Domain,
        tld: Some(Tld::parse(".co.tz").expect("valid tld")),
        prices: vec![
            price(BillingCycle::Annually, 3_000_000),
            price(BillingCycle::Biennially, 5_800_000),
        ],
    }
}

fn by(actor: Actor, now: DateTime<Utc>, body: AccountCommand) -> Command<AccountCommand> {
    Command {
        context: CommandContext { actor, now },
        body,
    }
}

fn owner_at(now: DateTime<Utc>, body: AccountCommand) -> Command<AccountCommand> {
    by(Actor::User(OWNER), now, body)
}

fn owner(body: AccountCommand) -> Command<AccountCommand> {
    owner_at(now(), body)
}

fn account() -> TestFramework<ClientAccount> {
    TestFramework::<ClientAccount>::with(())
}

fn order_hosting(cycle: BillingCycle) -> AccountCommand {
    AccountCommand::OrderService {
        service_id: HOSTING,
        invoice_id: HOSTING_INVOICE,
        product: hosting_product(),
        domain: None,
        billing_cycle: cycle,
    }
}

fn order_domain(name: &str, cycle: BillingCycle) -> AccountCommand {
    AccountCommand::OrderService {
        service_id: DOMAIN,
        invoice_id: DOMAIN_INVOICE,
        product: domain_product(),
        domain: Some(domain(name)),
        billing_cycle: cycle,
    }
}

fn pay(invoice_id: Uuid, payment_id: Uuid, amount_minor: i64) -> AccountCommand {
    AccountCommand::PayInvoice {
        invoice_id,
        payment_id,
        amount_minor,
        reference: format!("MPESA-{payment_id}"),
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

fn designer_joined(permissions: PermissionSet) -> Vec<AccountEvent> {
    vec![
        AccountEvent::UserInvited {
            invitation_id: INVITATION,
            email: email("designer@yourcompany.com"),
            permissions: permissions.clone(),
            expires_at: now() + chrono::Duration::days(7),
            invited_by: OWNER,
        },
        AccountEvent::InvitationAccepted {
            invitation_id: INVITATION,
            user_id: DESIGNER,
            permissions,
        },
    ]
}

fn service_ordered(
    service_id: Uuid,
    product: &Product,
    domain_name: Option<&str>,
    billing_cycle: BillingCycle,
    amount_minor: i64,
    ordered_on: NaiveDate,
    next_due_date: NaiveDate,
) -> AccountEvent {
    AccountEvent::ServiceOrdered {
        service_id,
        product_id: product.product_id,
        product_name: product.name.clone(),
        kind: product.kind,
        domain: domain_name.map(domain),
        billing_cycle,
        amount_minor,
        currency: tzs_code(),
        ordered_on,
        next_due_date,
    }
}

fn invoice_issued(
    invoice_id: Uuid,
    service_id: Uuid,
    kind: InvoiceKind,
    description: &str,
    amount_minor: i64,
    issued_on: NaiveDate,
    due_date: NaiveDate,
) -> AccountEvent {
    AccountEvent::InvoiceIssued {
        invoice_id,
        service_id,
        kind,
        lines: vec![InvoiceLine {
            description: description.into(),
            amount_minor,
        }],
        total_minor: amount_minor,
        currency: tzs_code(),
        issued_on,
        due_date,
    }
}

fn payment_received(invoice_id: Uuid, payment_id: Uuid, amount_minor: i64) -> AccountEvent {
    AccountEvent::PaymentReceived {
        invoice_id,
        payment_id,
        amount_minor,
        reference: format!("MPESA-{payment_id}"),
    }
}

fn renewal(period_start: NaiveDate) -> InvoiceKind {
    InvoiceKind::Renewal { period_start }
}

/// ABC Company with Starter Hosting ordered monthly on 3 March 2026, its first invoice unpaid.
fn hosting_ordered() -> Vec<AccountEvent> {
    vec![
        created(),
        service_ordered(
            HOSTING,
            &hosting_product(),
            None,
            BillingCycle::Monthly,
            1_500_000,
            today(),
            day(2026, 4, 3),
        ),
        invoice_issued(
            HOSTING_INVOICE,
            HOSTING,
            InvoiceKind::Order,
            "Starter Hosting (2026-03-03 - 2026-04-02)",
            1_500_000,
            today(),
            today(),
        ),
    ]
}

/// The hosting's first invoice paid in full.
fn hosting_paid() -> Vec<AccountEvent> {
    let mut events = hosting_ordered();
    events.push(payment_received(HOSTING_INVOICE, PAYMENT, 1_500_000));
    events.push(AccountEvent::InvoicePaid {
        invoice_id: HOSTING_INVOICE,
    });
    events
}

/// The renewal for the cycle from 3 April issued on 25 March, unpaid.
fn renewal_issued() -> Vec<AccountEvent> {
    let mut events = hosting_paid();
    events.push(invoice_issued(
        RENEWAL_INVOICE,
        HOSTING,
        renewal(day(2026, 4, 3)),
        "Starter Hosting (2026-04-03 - 2026-05-02)",
        1_500_000,
        day(2026, 3, 25),
        day(2026, 4, 3),
    ));
    events
}

/// abc.co.tz registered for a year on 3 March 2026, its invoice unpaid.
fn domain_ordered() -> Vec<AccountEvent> {
    vec![
        service_ordered(
            DOMAIN,
            &domain_product(),
            Some("abc.co.tz"),
            BillingCycle::Annually,
            3_000_000,
            today(),
            day(2027, 3, 3),
        ),
        invoice_issued(
            DOMAIN_INVOICE,
            DOMAIN,
            InvoiceKind::Order,
            ".co.tz Domain - abc.co.tz (2026-03-03 - 2027-03-02)",
            3_000_000,
            today(),
            today(),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Ordering hosting

#[test]
fn ordering_hosting_issues_its_first_invoice_due_at_once_at_the_catalogue_price() {
    account()
        .given(vec![created()])
        .when(owner(order_hosting(BillingCycle::Monthly)))
        .then_expect_events(hosting_ordered()[1..].to_vec());
}

#[test]
fn ordering_hosting_yearly_charges_the_yearly_price_for_a_year() {
    account()
        .given(vec![created()])
        .when(owner(order_hosting(BillingCycle::Annually)))
        .then_expect_events(vec![
            service_ordered(
                HOSTING,
                &hosting_product(),
                None,
                BillingCycle::Annually,
                15_000_000,
                today(),
                day(2027, 3, 3),
            ),
            invoice_issued(
                HOSTING_INVOICE,
                HOSTING,
                InvoiceKind::Order,
                "Starter Hosting (2026-03-03 - 2027-03-02)",
                15_000_000,
                today(),
                today(),
            ),
        ]);
}

#[test]
fn hosting_for_a_domain_names_the_domain_on_its_invoice() {
    account()
        .given(vec![created()])
        .when(owner(AccountCommand::OrderService {
            service_id: HOSTING,
            invoice_id: HOSTING_INVOICE,
            product: hosting_product(),
            domain: Some(domain("abc.co.tz")),
            billing_cycle: BillingCycle::Monthly,
        }))
        .then_expect_events(vec![
            service_ordered(
                HOSTING,
                &hosting_product(),
                Some("abc.co.tz"),
                BillingCycle::Monthly,
                1_500_000,
                today(),
                day(2026, 4, 3),
            ),
            invoice_issued(
                HOSTING_INVOICE,
                HOSTING,
                InvoiceKind::Order,
                "Starter Hosting - abc.co.tz (2026-03-03 - 2026-04-02)",
                1_500_000,
                today(),
                today(),
            ),
        ]);
}

#[test]
fn a_monthly_order_on_the_31st_of_january_is_next_due_on_the_28th_of_february() {
    account()
        .given(vec![created()])
        .when(owner_at(
            at(2026, 1, 31),
            order_hosting(BillingCycle::Monthly),
        ))
        .then_expect_events(vec![
            service_ordered(
                HOSTING,
                &hosting_product(),
                None,
                BillingCycle::Monthly,
                1_500_000,
                day(2026, 1, 31),
                day(2026, 2, 28),
            ),
            invoice_issued(
                HOSTING_INVOICE,
                HOSTING,
                InvoiceKind::Order,
                "Starter Hosting (2026-01-31 - 2026-02-27)",
                1_500_000,
                day(2026, 1, 31),
                day(2026, 1, 31),
            ),
        ]);
}

#[test]
fn a_monthly_order_on_the_31st_of_january_of_a_leap_year_is_next_due_on_the_29th_of_february() {
    account()
        .given(vec![created()])
        .when(owner_at(
            at(2028, 1, 31),
            order_hosting(BillingCycle::Monthly),
        ))
        .then_expect_events(vec![
            service_ordered(
                HOSTING,
                &hosting_product(),
                None,
                BillingCycle::Monthly,
                1_500_000,
                day(2028, 1, 31),
                day(2028, 2, 29),
            ),
            invoice_issued(
                HOSTING_INVOICE,
                HOSTING,
                InvoiceKind::Order,
                "Starter Hosting (2028-01-31 - 2028-02-28)",
                1_500_000,
                day(2028, 1, 31),
                day(2028, 1, 31),
            ),
        ]);
}

#[test]
fn a_yearly_order_on_the_29th_of_february_is_next_due_on_the_28th_of_february() {
    account()
        .given(vec![created()])
        .when(owner_at(
            at(2028, 2, 29),
            order_hosting(BillingCycle::Annually),
        ))
        .then_expect_events(vec![
            service_ordered(
                HOSTING,
                &hosting_product(),
                None,
                BillingCycle::Annually,
                15_000_000,
                day(2028, 2, 29),
                day(2029, 2, 28),
            ),
            invoice_issued(
                HOSTING_INVOICE,
                HOSTING,
                InvoiceKind::Order,
                "Starter Hosting (2028-02-29 - 2029-02-27)",
                15_000_000,
                day(2028, 2, 29),
                day(2028, 2, 29),
            ),
        ]);
}

#[test]
fn a_cycle_the_product_is_not_sold_with_is_refused() {
    account()
        .given(vec![created()])
        .when(owner(order_hosting(BillingCycle::Quarterly)))
        .then_expect_error(DomainError::InvalidArgument {
            field: "billing_cycle",
            message: "the product is not sold QUARTERLY".into(),
        });
}

#[test]
fn a_service_or_invoice_id_cannot_be_reused() {
    for (service_id, invoice_id) in [
        (HOSTING, OTHER_HOSTING_INVOICE),
        (OTHER_HOSTING, HOSTING_INVOICE),
    ] {
        account()
            .given(hosting_ordered())
            .when(owner(AccountCommand::OrderService {
                service_id,
                invoice_id,
                product: hosting_product(),
                domain: None,
                billing_cycle: BillingCycle::Monthly,
            }))
            .then_expect_error(DomainError::AlreadyExists(
                "service or invoice id is taken".into(),
            ));
    }
}

// ---------------------------------------------------------------------------------------------
// Ordering a domain

#[test]
fn the_designer_registers_a_domain_for_the_client_for_a_year() {
    let mut given = vec![created()];
    given.extend(designer_joined(PermissionSet::full()));
    account()
        .given(given)
        .when(by(
            Actor::User(DESIGNER),
            now(),
            order_domain("abc.co.tz", BillingCycle::Annually),
        ))
        .then_expect_events(domain_ordered());
}

#[test]
fn a_domain_registered_for_two_years_is_next_due_in_two_years() {
    account()
        .given(vec![created()])
        .when(owner(order_domain("abc.co.tz", BillingCycle::Biennially)))
        .then_expect_events(vec![
            service_ordered(
                DOMAIN,
                &domain_product(),
                Some("abc.co.tz"),
                BillingCycle::Biennially,
                5_800_000,
                today(),
                day(2028, 3, 3),
            ),
            invoice_issued(
                DOMAIN_INVOICE,
                DOMAIN,
                InvoiceKind::Order,
                ".co.tz Domain - abc.co.tz (2026-03-03 - 2028-03-02)",
                5_800_000,
                today(),
                today(),
            ),
        ]);
}

#[test]
fn a_domain_order_without_a_domain_is_refused() {
    account()
        .given(vec![created()])
        .when(owner(AccountCommand::OrderService {
            service_id: DOMAIN,
            invoice_id: DOMAIN_INVOICE,
            product: domain_product(),
            domain: None,
            billing_cycle: BillingCycle::Annually,
        }))
        .then_expect_error(DomainError::InvalidArgument {
            field: "domain",
            message: "a domain order needs a domain".into(),
        });
}

#[test]
fn a_domain_not_directly_under_the_products_tld_is_refused() {
    for name in ["www.abc.co.tz", "starlogistics.com", "xco.tz", "co.tz"] {
        account()
            .given(vec![created()])
            .when(owner(order_domain(name, BillingCycle::Annually)))
            .then_expect_error(DomainError::InvalidArgument {
                field: "domain",
                message: format!("`{name}` is not a name directly under `.co.tz`"),
            });
    }
}

#[test]
fn a_domain_is_registered_for_whole_years_only() {
    for cycle in [
        BillingCycle::Monthly,
        BillingCycle::Quarterly,
        BillingCycle::SemiAnnually,
    ] {
        account()
            .given(vec![created()])
            .when(owner(order_domain("abc.co.tz", cycle)))
            .then_expect_error(DomainError::InvalidArgument {
                field: "billing_cycle",
                message: "domains are registered for whole years only".into(),
            });
    }
}

#[test]
fn a_yearly_cycle_the_domain_is_not_sold_with_is_refused() {
    account()
        .given(vec![created()])
        .when(owner(order_domain("abc.co.tz", BillingCycle::Triennially)))
        .then_expect_error(DomainError::InvalidArgument {
            field: "billing_cycle",
            message: "the product is not sold TRIENNIALLY".into(),
        });
}

#[test]
fn a_domain_product_without_a_tld_cannot_be_ordered() {
    let mut product = domain_product();
    product.tld = None;
    account()
        .given(vec![created()])
        .when(owner(AccountCommand::OrderService {
            service_id: DOMAIN,
            invoice_id: DOMAIN_INVOICE,
            product,
            domain: Some(domain("abc.co.tz")),
            billing_cycle: BillingCycle::Annually,
        }))
        .then_expect_error(DomainError::FailedPrecondition(
            "the domain product has no TLD".into(),
        ));
}

// ---------------------------------------------------------------------------------------------
// Renewing

#[test]
fn renewing_issues_an_invoice_for_the_cycle_starting_at_the_next_due_date() {
    account()
        .given(hosting_paid())
        .when(owner_at(
            at(2026, 3, 25),
            AccountCommand::RenewService {
                service_id: HOSTING,
                invoice_id: RENEWAL_INVOICE,
            },
        ))
        .then_expect_events(renewal_issued()[hosting_paid().len()..].to_vec());
}

#[test]
fn renewing_an_unpaid_first_cycle_still_bills_the_next_cycle() {
    account()
        .given(hosting_ordered())
        .when(owner_at(
            at(2026, 3, 25),
            AccountCommand::RenewService {
                service_id: HOSTING,
                invoice_id: RENEWAL_INVOICE,
            },
        ))
        .then_expect_events(vec![invoice_issued(
            RENEWAL_INVOICE,
            HOSTING,
            renewal(day(2026, 4, 3)),
            "Starter Hosting (2026-04-03 - 2026-05-02)",
            1_500_000,
            day(2026, 3, 25),
            day(2026, 4, 3),
        )]);
}

#[test]
fn asking_again_to_renew_the_same_cycle_emits_nothing() {
    account()
        .given(renewal_issued())
        .when(owner_at(
            at(2026, 4, 1),
            AccountCommand::RenewService {
                service_id: HOSTING,
                invoice_id: NEXT_RENEWAL_INVOICE,
            },
        ))
        .then_expect_events(vec![]);
}

#[test]
fn renewing_after_the_renewal_was_paid_bills_the_following_cycle() {
    let mut given = renewal_issued();
    given.push(payment_received(RENEWAL_INVOICE, SECOND_PAYMENT, 1_500_000));
    given.push(AccountEvent::InvoicePaid {
        invoice_id: RENEWAL_INVOICE,
    });
    given.push(AccountEvent::ServiceRenewed {
        service_id: HOSTING,
        next_due_date: day(2026, 5, 3),
    });
    account()
        .given(given)
        .when(owner_at(
            at(2026, 4, 25),
            AccountCommand::RenewService {
                service_id: HOSTING,
                invoice_id: NEXT_RENEWAL_INVOICE,
            },
        ))
        .then_expect_events(vec![invoice_issued(
            NEXT_RENEWAL_INVOICE,
            HOSTING,
            renewal(day(2026, 5, 3)),
            "Starter Hosting (2026-05-03 - 2026-06-02)",
            1_500_000,
            day(2026, 4, 25),
            day(2026, 5, 3),
        )]);
}

#[test]
fn renewing_a_domain_bills_the_next_year_at_the_ordered_price() {
    let mut given = vec![created()];
    given.extend(domain_ordered());
    account()
        .given(given)
        .when(owner_at(
            at(2027, 2, 1),
            AccountCommand::RenewService {
                service_id: DOMAIN,
                invoice_id: RENEWAL_INVOICE,
            },
        ))
        .then_expect_events(vec![invoice_issued(
            RENEWAL_INVOICE,
            DOMAIN,
            renewal(day(2027, 3, 3)),
            ".co.tz Domain - abc.co.tz (2027-03-03 - 2028-03-02)",
            3_000_000,
            day(2027, 2, 1),
            day(2027, 3, 3),
        )]);
}

#[test]
fn a_renewal_cannot_take_the_id_of_an_existing_invoice() {
    // Issuing under a taken id would replace the paid first invoice with an unpaid one.
    let result = account()
        .given(hosting_paid())
        .when(owner_at(
            at(2026, 3, 25),
            AccountCommand::RenewService {
                service_id: HOSTING,
                invoice_id: HOSTING_INVOICE,
            },
        ))
        .inspect_result();
    assert!(
        matches!(result, Err(DomainError::AlreadyExists(_))),
        "decided {result:?}"
    );
}

#[test]
fn renewing_an_unknown_service_is_not_found() {
    account()
        .given(hosting_paid())
        .when(owner(AccountCommand::RenewService {
            service_id: DOMAIN,
            invoice_id: RENEWAL_INVOICE,
        }))
        .then_expect_error(DomainError::NotFound("service"));
}

// ---------------------------------------------------------------------------------------------
// Paying

#[test]
fn a_part_payment_leaves_the_invoice_unpaid() {
    account()
        .given(hosting_ordered())
        .when(owner(pay(HOSTING_INVOICE, PAYMENT, 1_000_000)))
        .then_expect_events(vec![payment_received(HOSTING_INVOICE, PAYMENT, 1_000_000)]);
}

#[test]
fn the_payment_of_the_rest_pays_the_invoice() {
    let mut given = hosting_ordered();
    given.push(payment_received(HOSTING_INVOICE, PAYMENT, 1_000_000));
    account()
        .given(given)
        .when(owner(pay(HOSTING_INVOICE, SECOND_PAYMENT, 500_000)))
        .then_expect_events(vec![
            payment_received(HOSTING_INVOICE, SECOND_PAYMENT, 500_000),
            AccountEvent::InvoicePaid {
                invoice_id: HOSTING_INVOICE,
            },
        ]);
}

#[test]
fn paying_more_than_the_total_is_refused() {
    account()
        .given(hosting_ordered())
        .when(owner(pay(HOSTING_INVOICE, PAYMENT, 1_500_001)))
        .then_expect_error(DomainError::FailedPrecondition(
            "overpayment: 1500001 exceeds the 1500000 still owed".into(),
        ));
}

#[test]
fn paying_more_than_is_still_owed_after_a_part_payment_is_refused() {
    let mut given = hosting_ordered();
    given.push(payment_received(HOSTING_INVOICE, PAYMENT, 1_000_000));
    account()
        .given(given)
        .when(owner(pay(HOSTING_INVOICE, SECOND_PAYMENT, 600_000)))
        .then_expect_error(DomainError::FailedPrecondition(
            "overpayment: 600000 exceeds the 500000 still owed".into(),
        ));
}

#[test]
fn a_payment_of_nothing_or_less_is_refused() {
    for amount in [0, -1_500_000] {
        account()
            .given(hosting_ordered())
            .when(owner(pay(HOSTING_INVOICE, PAYMENT, amount)))
            .then_expect_error(DomainError::InvalidArgument {
                field: "amount_minor",
                message: "must be greater than zero".into(),
            });
    }
}

#[test]
fn a_paid_invoice_cannot_be_paid_again() {
    account()
        .given(hosting_paid())
        .when(owner(pay(HOSTING_INVOICE, SECOND_PAYMENT, 1)))
        .then_expect_error(DomainError::FailedPrecondition(
            "invoice is already paid".into(),
        ));
}

#[test]
fn a_cancelled_invoice_cannot_be_paid() {
    let mut given = hosting_ordered();
    given.push(AccountEvent::InvoiceCancelled {
        invoice_id: HOSTING_INVOICE,
    });
    given.push(AccountEvent::ServiceCancelled {
        service_id: HOSTING,
    });
    account()
        .given(given)
        .when(owner(pay(HOSTING_INVOICE, PAYMENT, 1_500_000)))
        .then_expect_error(DomainError::FailedPrecondition(
            "invoice is cancelled".into(),
        ));
}

#[test]
fn paying_an_unknown_invoice_is_not_found() {
    account()
        .given(hosting_ordered())
        .when(owner(pay(RENEWAL_INVOICE, PAYMENT, 1_500_000)))
        .then_expect_error(DomainError::NotFound("invoice"));
}

#[test]
fn paying_the_renewal_in_full_renews_the_service_for_one_more_cycle() {
    account()
        .given(renewal_issued())
        .when(owner_at(
            at(2026, 4, 2),
            pay(RENEWAL_INVOICE, SECOND_PAYMENT, 1_500_000),
        ))
        .then_expect_events(vec![
            payment_received(RENEWAL_INVOICE, SECOND_PAYMENT, 1_500_000),
            AccountEvent::InvoicePaid {
                invoice_id: RENEWAL_INVOICE,
            },
            AccountEvent::ServiceRenewed {
                service_id: HOSTING,
                next_due_date: day(2026, 5, 3),
            },
        ]);
}

#[test]
fn a_part_payment_of_the_renewal_does_not_renew_the_service() {
    account()
        .given(renewal_issued())
        .when(owner(pay(RENEWAL_INVOICE, SECOND_PAYMENT, 1_000_000)))
        .then_expect_events(vec![payment_received(
            RENEWAL_INVOICE,
            SECOND_PAYMENT,
            1_000_000,
        )]);
}

#[test]
fn paying_the_rest_of_a_domain_renewal_renews_it_for_a_year() {
    let mut given = vec![created()];
    given.extend(domain_ordered());
    given.push(invoice_issued(
        RENEWAL_INVOICE,
        DOMAIN,
        renewal(day(2027, 3, 3)),
        ".co.tz Domain - abc.co.tz (2027-03-03 - 2028-03-02)",
        3_000_000,
        day(2027, 2, 1),
        day(2027, 3, 3),
    ));
    given.push(payment_received(RENEWAL_INVOICE, PAYMENT, 2_000_000));
    account()
        .given(given)
        .when(owner_at(
            at(2027, 2, 20),
            pay(RENEWAL_INVOICE, SECOND_PAYMENT, 1_000_000),
        ))
        .then_expect_events(vec![
            payment_received(RENEWAL_INVOICE, SECOND_PAYMENT, 1_000_000),
            AccountEvent::InvoicePaid {
                invoice_id: RENEWAL_INVOICE,
            },
            AccountEvent::ServiceRenewed {
                service_id: DOMAIN,
                next_due_date: day(2028, 3, 3),
            },
        ]);
}

// ---------------------------------------------------------------------------------------------
// Cancelling

/// The hosting (first invoice paid, renewal unpaid) beside the domain (unpaid) and a second
/// hosting plan (unpaid).
fn three_services() -> Vec<AccountEvent> {
    let mut events = renewal_issued();
    events.extend(domain_ordered());
    events.push(service_ordered(
        OTHER_HOSTING,
        &hosting_product(),
        None,
        BillingCycle::Monthly,
        1_500_000,
        today(),
        day(2026, 4, 3),
    ));
    events.push(invoice_issued(
        OTHER_HOSTING_INVOICE,
        OTHER_HOSTING,
        InvoiceKind::Order,
        "Starter Hosting (2026-03-03 - 2026-04-02)",
        1_500_000,
        today(),
        today(),
    ));
    events
}

#[test]
fn cancelling_a_service_cancels_only_its_own_unpaid_invoices() {
    account()
        .given(three_services())
        .when(owner(AccountCommand::CancelService {
            service_id: HOSTING,
        }))
        .then_expect_events(vec![
            AccountEvent::InvoiceCancelled {
                invoice_id: RENEWAL_INVOICE,
            },
            AccountEvent::ServiceCancelled {
                service_id: HOSTING,
            },
        ]);
}

#[test]
fn cancelling_a_service_cancels_every_one_of_its_unpaid_invoices() {
    let mut given = hosting_ordered();
    given.push(invoice_issued(
        RENEWAL_INVOICE,
        HOSTING,
        renewal(day(2026, 4, 3)),
        "Starter Hosting (2026-04-03 - 2026-05-02)",
        1_500_000,
        day(2026, 3, 25),
        day(2026, 4, 3),
    ));
    account()
        .given(given)
        .when(owner(AccountCommand::CancelService {
            service_id: HOSTING,
        }))
        .then_expect_events(vec![
            AccountEvent::InvoiceCancelled {
                invoice_id: HOSTING_INVOICE,
            },
            AccountEvent::InvoiceCancelled {
                invoice_id: RENEWAL_INVOICE,
            },
            AccountEvent::ServiceCancelled {
                service_id: HOSTING,
            },
        ]);
}

#[test]
fn cancelling_a_fully_paid_service_cancels_no_invoice() {
    account()
        .given(hosting_paid())
        .when(owner(AccountCommand::CancelService {
            service_id: HOSTING,
        }))
        .then_expect_events(vec![AccountEvent::ServiceCancelled {
            service_id: HOSTING,
        }]);
}

fn hosting_cancelled() -> Vec<AccountEvent> {
    let mut events = renewal_issued();
    events.push(AccountEvent::InvoiceCancelled {
        invoice_id: RENEWAL_INVOICE,
    });
    events.push(AccountEvent::ServiceCancelled {
        service_id: HOSTING,
    });
    events
}

#[test]
fn a_cancelled_service_cannot_be_renewed() {
    account()
        .given(hosting_cancelled())
        .when(owner_at(
            at(2026, 3, 26),
            AccountCommand::RenewService {
                service_id: HOSTING,
                invoice_id: NEXT_RENEWAL_INVOICE,
            },
        ))
        .then_expect_error(DomainError::FailedPrecondition(
            "a cancelled service cannot be renewed".into(),
        ));
}

#[test]
fn the_cancelled_renewal_cannot_be_paid() {
    account()
        .given(hosting_cancelled())
        .when(owner(pay(RENEWAL_INVOICE, SECOND_PAYMENT, 1_500_000)))
        .then_expect_error(DomainError::FailedPrecondition(
            "invoice is cancelled".into(),
        ));
}

#[test]
fn a_service_cannot_be_cancelled_twice() {
    account()
        .given(hosting_cancelled())
        .when(owner(AccountCommand::CancelService {
            service_id: HOSTING,
        }))
        .then_expect_error(DomainError::FailedPrecondition(
            "service is already cancelled".into(),
        ));
}

#[test]
fn cancelling_an_unknown_service_is_not_found() {
    account()
        .given(hosting_ordered())
        .when(owner(AccountCommand::CancelService { service_id: DOMAIN }))
        .then_expect_error(DomainError::NotFound("service"));
}

// ---------------------------------------------------------------------------------------------
// Nameservers

fn nameservers() -> Vec<DomainName> {
    vec![domain("ns1.netpoa.co.tz"), domain("ns2.netpoa.co.tz")]
}

#[test]
fn the_designer_points_a_domain_at_new_nameservers() {
    let mut given = vec![created()];
    given.extend(designer_joined(
        [Permission::Domains, Permission::ManageDomains]
            .into_iter()
            .collect(),
    ));
    given.extend(domain_ordered());
    account()
        .given(given)
        .when(by(
            Actor::User(DESIGNER),
            now(),
            AccountCommand::UpdateNameservers {
                service_id: DOMAIN,
                nameservers: nameservers(),
            },
        ))
        .then_expect_events(vec![AccountEvent::NameserversUpdated {
            service_id: DOMAIN,
            nameservers: nameservers(),
        }]);
}

#[test]
fn hosting_has_no_nameservers() {
    account()
        .given(hosting_ordered())
        .when(owner(AccountCommand::UpdateNameservers {
            service_id: HOSTING,
            nameservers: nameservers(),
        }))
        .then_expect_error(DomainError::FailedPrecondition(
            "only a domain has nameservers".into(),
        ));
}

#[test]
fn a_cancelled_domain_takes_no_nameservers() {
    let mut given = vec![created()];
    given.extend(domain_ordered());
    given.push(AccountEvent::InvoiceCancelled {
        invoice_id: DOMAIN_INVOICE,
    });
    given.push(AccountEvent::ServiceCancelled { service_id: DOMAIN });
    account()
        .given(given)
        .when(owner(AccountCommand::UpdateNameservers {
            service_id: DOMAIN,
            nameservers: nameservers(),
        }))
        .then_expect_error(DomainError::FailedPrecondition(
            "service is cancelled".into(),
        ));
}

#[test]
fn nameservers_of_an_unknown_service_are_not_found() {
    account()
        .given(hosting_ordered())
        .when(owner(AccountCommand::UpdateNameservers {
            service_id: DOMAIN,
            nameservers: nameservers(),
        }))
        .then_expect_error(DomainError::NotFound("service"));
}

// ---------------------------------------------------------------------------------------------
// Snapshot round trip

/// Folds events as the store would: each one read back from its JSON form first.
fn fold(events: &[AccountEvent]) -> ClientAccount {
    let mut state = ClientAccount::default();
    for event in events {
        let stored = serde_json::to_string(event).expect("event serialises");
        state.apply(serde_json::from_str(&stored).expect("event deserialises"));
    }
    state
}

/// Handles `command` on `state` as the executor does, returning the decision and the state
/// the event sink left behind.
async fn handle(
    mut state: ClientAccount,
    command: Command<AccountCommand>,
) -> (Result<Vec<AccountEvent>, DomainError>, ClientAccount) {
    let sink = EventSink::default();
    let decision = match state.handle(command, &(), &sink).await {
        Ok(()) => Ok(sink.collect().await),
        Err(error) => Err(error),
    };
    (decision, state)
}

/// A month of ABC Company: the designer joins, orders hosting and a domain, pays the hosting in
/// two parts, pays part of the domain, and the hosting's renewal is issued and part paid.
fn a_month_of_history() -> Vec<AccountEvent> {
    let mut events = vec![created()];
    events.extend(designer_joined(PermissionSet::full()));
    events.extend(hosting_ordered()[1..].iter().cloned());
    events.extend(domain_ordered());
    events.push(payment_received(HOSTING_INVOICE, PAYMENT, 1_000_000));
    events.push(payment_received(
        HOSTING_INVOICE,
        Uuid::from_u128(0x5003),
        500_000,
    ));
    events.push(AccountEvent::InvoicePaid {
        invoice_id: HOSTING_INVOICE,
    });
    events.push(payment_received(
        DOMAIN_INVOICE,
        Uuid::from_u128(0x5004),
        1_200_000,
    ));
    events.push(invoice_issued(
        RENEWAL_INVOICE,
        HOSTING,
        renewal(day(2026, 4, 3)),
        "Starter Hosting (2026-04-03 - 2026-05-02)",
        1_500_000,
        day(2026, 3, 25),
        day(2026, 4, 3),
    ));
    events.push(payment_received(
        RENEWAL_INVOICE,
        Uuid::from_u128(0x5005),
        400_000,
    ));
    events
}

#[tokio::test]
async fn a_restored_snapshot_holds_the_amounts_paid_and_decides_like_the_full_history() {
    let folded = fold(&a_month_of_history());
    let snapshot = serde_json::to_string(&folded).expect("state serialises");
    let restored: ClientAccount = serde_json::from_str(&snapshot).expect("state deserialises");

    assert_eq!(restored, folded);
    let paid: Vec<(Uuid, i64, InvoiceStatus)> = restored
        .invoices
        .iter()
        .map(|(id, invoice)| (*id, invoice.paid_minor, invoice.status))
        .collect();
    assert_eq!(
        paid,
        vec![
            (HOSTING_INVOICE, 1_500_000, InvoiceStatus::Paid),
            (DOMAIN_INVOICE, 1_200_000, InvoiceStatus::Unpaid),
            (RENEWAL_INVOICE, 400_000, InvoiceStatus::Unpaid),
        ]
    );
    assert_eq!(restored.pending_renewal(HOSTING), Some(RENEWAL_INVOICE));

    // The rest of the renewal, paid by the designer.
    let rest = by(
        Actor::User(DESIGNER),
        at(2026, 4, 1),
        pay(RENEWAL_INVOICE, SECOND_PAYMENT, 1_100_000),
    );
    let (from_history, after_history) = handle(folded.clone(), rest.clone()).await;
    let (from_snapshot, after_snapshot) = handle(restored.clone(), rest).await;
    let expected = vec![
        payment_received(RENEWAL_INVOICE, SECOND_PAYMENT, 1_100_000),
        AccountEvent::InvoicePaid {
            invoice_id: RENEWAL_INVOICE,
        },
        AccountEvent::ServiceRenewed {
            service_id: HOSTING,
            next_due_date: day(2026, 5, 3),
        },
    ];
    assert_eq!(from_history, Ok(expected.clone()));
    assert_eq!(from_snapshot, Ok(expected.clone()));
    assert_eq!(after_snapshot, after_history);

    // The sink applied each new event exactly once: the state equals the snapshot folded with
    // the new events, and the amount paid is the sum of the two payments, not more.
    let mut refolded = restored;
    for event in expected {
        refolded.apply(event);
    }
    assert_eq!(after_snapshot, refolded);
    let renewal_invoice = &after_snapshot.invoices[&RENEWAL_INVOICE];
    assert_eq!(
        (renewal_invoice.paid_minor, renewal_invoice.status),
        (1_500_000, InvoiceStatus::Paid)
    );
    assert_eq!(
        after_snapshot.services[&HOSTING].next_due_date,
        day(2026, 5, 3)
    );
}

#[tokio::test]
async fn a_restored_snapshot_refuses_an_overpayment_on_the_remaining_balance() {
    let folded = fold(&a_month_of_history());
    let snapshot = serde_json::to_vec(&folded).expect("state serialises");
    let restored: ClientAccount = serde_json::from_slice(&snapshot).expect("state deserialises");

    // 1_800_000 of the domain's 3_000_000 is still owed; one minor unit more is refused.
    let too_much = by(
        Actor::Service("billing".into()),
        at(2026, 3, 20),
        pay(DOMAIN_INVOICE, SECOND_PAYMENT, 1_800_001),
    );
    let refusal = Err(DomainError::FailedPrecondition(
        "overpayment: 1800001 exceeds the 1800000 still owed".into(),
    ));
    let (from_history, _) = handle(folded, too_much.clone()).await;
    let (from_snapshot, unchanged) = handle(restored.clone(), too_much).await;
    assert_eq!(from_history, refusal);
    assert_eq!(from_snapshot, refusal);
    assert_eq!(unchanged, restored);
}

#[test]
fn due_dates_count_from_the_order_date_so_the_31st_comes_back_after_february() {
    let ordered_on = day(2026, 1, 31);
    let given = vec![
        created(),
        service_ordered(
            HOSTING,
            &hosting_product(),
            None,
            BillingCycle::Monthly,
            1_500_000,
            ordered_on,
            day(2026, 2, 28),
        ),
        invoice_issued(
            RENEWAL_INVOICE,
            HOSTING,
            renewal(day(2026, 2, 28)),
            "Starter Hosting (2026-02-28 - 2026-03-30)",
            1_500_000,
            day(2026, 2, 20),
            day(2026, 2, 28),
        ),
    ];
    account()
        .given(given)
        .when(owner_at(
            at(2026, 2, 21),
            pay(RENEWAL_INVOICE, PAYMENT, 1_500_000),
        ))
        .then_expect_events(vec![
            payment_received(RENEWAL_INVOICE, PAYMENT, 1_500_000),
            AccountEvent::InvoicePaid {
                invoice_id: RENEWAL_INVOICE,
            },
            AccountEvent::ServiceRenewed {
                service_id: HOSTING,
                next_due_date: day(2026, 3, 31),
            },
        ]);
}

#[test]
fn a_free_product_is_settled_as_it_is_ordered() {
    let mut free = hosting_product();
    free.prices = vec![price(BillingCycle::Monthly, 0)];
    account()
        .given(vec![created()])
        .when(owner(AccountCommand::OrderService {
            service_id: HOSTING,
            invoice_id: HOSTING_INVOICE,
            product: free.clone(),
            domain: None,
            billing_cycle: BillingCycle::Monthly,
        }))
        .then_expect_events(vec![
            service_ordered(
                HOSTING,
                &free,
                None,
                BillingCycle::Monthly,
                0,
                today(),
                day(2026, 4, 3),
            ),
            invoice_issued(
                HOSTING_INVOICE,
                HOSTING,
                InvoiceKind::Order,
                "Starter Hosting (2026-03-03 - 2026-04-02)",
                0,
                today(),
                today(),
            ),
            AccountEvent::InvoicePaid {
                invoice_id: HOSTING_INVOICE,
            },
        ]);
}
