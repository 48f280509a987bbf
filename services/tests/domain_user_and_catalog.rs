//! Rules of the user and catalogue aggregates, and a snapshot round trip of each.

use chrono::{TimeZone, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;
use onbehalf::domain::{
    Catalog, CatalogCommand, Command, CommandContext, DomainError, User, UserCommand,
};
use onbehalf_events::values::{BillingCycle, Currency, Email, Money, Name, ProductKind, Tld};
use onbehalf_events::{Actor, CatalogEvent, Price, Product, UserEvent};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Test data

const DESIGNER: Uuid = Uuid::from_u128(0x0002);
const HOSTING_PRODUCT: Uuid = Uuid::from_u128(0x2001);
const DOMAIN_PRODUCT: Uuid = Uuid::from_u128(0x2002);

fn command<C>(body: C) -> Command<C> {
    let now = Utc
        .with_ymd_and_hms(2026, 3, 3, 9, 0, 0)
        .single()
        .expect("valid test time");
    Command {
        context: CommandContext {
            actor: Actor::Service("demo".into()),
            now,
        },
        body,
    }
}

fn email(raw: &str) -> Email {
    Email::parse(raw).expect("valid test email")
}

fn name(raw: &str) -> Name {
    Name::parse(raw).expect("valid test name")
}

fn price(billing_cycle: BillingCycle, amount_minor: i64) -> Price {
    let currency = Currency::parse("TZS").expect("valid currency");
    Price {
        billing_cycle,
        amount: Money::new(amount_minor, currency).expect("valid money"),
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

fn put(product: Product) -> CatalogEvent {
    CatalogEvent::ProductPut { product }
}

fn register_designer() -> UserCommand {
    UserCommand::Register {
        user_id: DESIGNER,
        email: email("designer@yourcompany.com"),
        display_name: name("Your Company Design"),
    }
}

fn designer_registered() -> UserEvent {
    UserEvent::UserRegistered {
        user_id: DESIGNER,
        email: email("designer@yourcompany.com"),
        display_name: name("Your Company Design"),
    }
}

/// Folds events after a trip through their stored JSON form, serialises the state and reads it
/// back, as a snapshot store would.
fn snapshot_round_trip<A: Aggregate + PartialEq>(events: &[A::Event]) -> (A, A) {
    let mut folded = A::default();
    for event in events {
        let stored = serde_json::to_string(event).expect("event serialises");
        folded.apply(serde_json::from_str(&stored).expect("event deserialises"));
    }
    let snapshot = serde_json::to_string(&folded).expect("state serialises");
    let restored: A = serde_json::from_str(&snapshot).expect("state deserialises");
    (folded, restored)
}

/// Handles `command` as the executor does: the decision and the state the sink left behind.
async fn handle<A: Aggregate<Services = ()>>(
    mut state: A,
    command: A::Command,
) -> (Result<Vec<A::Event>, A::Error>, A) {
    let sink = EventSink::default();
    let decision = match state.handle(command, &(), &sink).await {
        Ok(()) => Ok(sink.collect().await),
        Err(error) => Err(error),
    };
    (decision, state)
}

// ---------------------------------------------------------------------------------------------
// User

#[test]
fn a_user_is_registered_with_its_email_and_display_name() {
    TestFramework::<User>::with(())
        .given_no_previous_events()
        .when(command(register_designer()))
        .then_expect_events(vec![designer_registered()]);
}

#[test]
fn a_user_is_registered_only_once() {
    TestFramework::<User>::with(())
        .given(vec![designer_registered()])
        .when(command(UserCommand::Register {
            user_id: DESIGNER,
            email: email("studio@yourcompany.com"),
            display_name: name("Your Company Studio"),
        }))
        .then_expect_error(DomainError::AlreadyExists(
            "user is already registered".into(),
        ));
}

#[tokio::test]
async fn a_restored_user_snapshot_still_refuses_a_second_registration() {
    let (folded, restored) = snapshot_round_trip::<User>(&[designer_registered()]);
    assert_eq!(restored, folded);
    assert_eq!(restored.user_id, Some(DESIGNER));
    assert_eq!(restored.email, Some(email("designer@yourcompany.com")));

    let refusal = Err(DomainError::AlreadyExists(
        "user is already registered".into(),
    ));
    let (from_history, _) = handle(folded, command(register_designer())).await;
    let (from_snapshot, unchanged) = handle(restored.clone(), command(register_designer())).await;
    assert_eq!(from_history, refusal);
    assert_eq!(from_snapshot, refusal);
    assert_eq!(unchanged, restored);
}

// ---------------------------------------------------------------------------------------------
// Catalogue

#[test]
fn a_new_product_is_put_into_the_catalogue() {
    TestFramework::<Catalog>::with(())
        .given_no_previous_events()
        .when(command(CatalogCommand::PutProduct(domain_product())))
        .then_expect_events(vec![put(domain_product())]);
}

#[test]
fn putting_an_identical_product_emits_nothing() {
    TestFramework::<Catalog>::with(())
        .given(vec![put(hosting_product()), put(domain_product())])
        .when(command(CatalogCommand::PutProduct(hosting_product())))
        .then_expect_events(vec![]);
}

#[test]
fn a_new_price_replaces_the_product() {
    let mut repriced = hosting_product();
    repriced.prices = vec![
        price(BillingCycle::Monthly, 1_800_000),
        price(BillingCycle::Quarterly, 5_100_000),
    ];
    TestFramework::<Catalog>::with(())
        .given(vec![put(hosting_product())])
        .when(command(CatalogCommand::PutProduct(repriced.clone())))
        .then_expect_events(vec![put(repriced)]);
}

#[test]
fn a_products_kind_cannot_change() {
    let mut as_domain = hosting_product();
    as_domain.kind = ProductKind::Domain;
    as_domain.tld = Some(Tld::parse(".co.tz").expect("valid tld"));
    TestFramework::<Catalog>::with(())
        .given(vec![put(hosting_product())])
        .when(command(CatalogCommand::PutProduct(as_domain)))
        .then_expect_error(DomainError::InvalidArgument {
            field: "product.kind",
            message: "a product's kind cannot change".into(),
        });
}

#[tokio::test]
async fn a_restored_catalogue_snapshot_decides_like_its_history() {
    let mut renamed = domain_product();
    renamed.name = name(".co.tz Domain Registration");
    let history = vec![
        put(hosting_product()),
        put(domain_product()),
        put(renamed.clone()),
    ];
    let (folded, restored) = snapshot_round_trip::<Catalog>(&history);
    assert_eq!(restored, folded);
    assert_eq!(
        restored.products.values().cloned().collect::<Vec<_>>(),
        vec![hosting_product(), renamed.clone()]
    );

    // The latest version of a product is the one an identical put is compared with.
    let (from_history, _) = handle(
        folded.clone(),
        command(CatalogCommand::PutProduct(renamed.clone())),
    )
    .await;
    let (from_snapshot, _) = handle(
        restored.clone(),
        command(CatalogCommand::PutProduct(renamed)),
    )
    .await;
    assert_eq!(from_history, Ok(vec![]));
    assert_eq!(from_snapshot, Ok(vec![]));

    // The kind survives the round trip and still cannot change.
    let mut as_hosting = domain_product();
    as_hosting.kind = ProductKind::Hosting;
    as_hosting.tld = None;
    let refusal = Err(DomainError::InvalidArgument {
        field: "product.kind",
        message: "a product's kind cannot change".into(),
    });
    let (from_history, _) = handle(
        folded,
        command(CatalogCommand::PutProduct(as_hosting.clone())),
    )
    .await;
    let (from_snapshot, _) =
        handle(restored, command(CatalogCommand::PutProduct(as_hosting))).await;
    assert_eq!(from_history, refusal);
    assert_eq!(from_snapshot, refusal);
}
