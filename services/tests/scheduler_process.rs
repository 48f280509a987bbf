//! `onbehalf scheduler` as separate processes on one embedded log, with time from a clock file:
//! the renewal appears when the file's date reaches the lead days before the due date, and two
//! processes started together, then restarted, issue it once.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use onbehalf::clock::{FileClock, ManualClock};
use onbehalf::domain::{AccountCommand, ClientAccount, Command as DomainCommand, CommandContext};
use onbehalf::executor::{Execution, Executor};
use onbehalf::store::sqlite::SqliteStore;
use onbehalf::store::EventStore;
use onbehalf::testing::TempDataDir;
use onbehalf_events::values::{
    BillingCycle, Currency, DomainName, Email, Money, Name, ProductKind,
};
use onbehalf_events::{account_stream, Actor, Metadata, Price, Product};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_onbehalf");
const OWNER: Uuid = Uuid::from_u128(0x0001);
const ACCOUNT: Uuid = Uuid::from_u128(0xabc0);
const SERVICE: Uuid = Uuid::from_u128(0x3001);

fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, 9, 0, 0)
        .single()
        .expect("a time")
}

async fn run(executor: &Executor, body: AccountCommand) {
    let execution = Execution::<ClientAccount> {
        stream_id: account_stream(ACCOUNT),
        command: DomainCommand {
            context: CommandContext {
                actor: Actor::User(OWNER),
                now: executor.clock().now(),
            },
            body,
        },
        metadata: Metadata::new(Actor::User(OWNER)),
        idempotency: None,
        reservations: Vec::new(),
    };
    executor
        .execute(execution, |_| Ok(()))
        .await
        .expect("the command is accepted");
}

/// ABC Company with an annual hosting plan ordered on 2025-03-03 and paid, so that its next
/// due date is 2026-03-03.
async fn seed(data_dir: &std::path::Path) -> Arc<dyn EventStore> {
    let store: Arc<dyn EventStore> =
        Arc::new(SqliteStore::open(data_dir).await.expect("the log opens"));
    let (tx, _rx) = tokio::sync::watch::channel(0);
    let executor = Executor::new(
        store.clone(),
        Arc::new(ManualClock::new(at(2025, 3, 3))),
        tx,
    );
    run(
        &executor,
        AccountCommand::Create {
            account_id: ACCOUNT,
            name: Name::parse("ABC Company").expect("a name"),
            email: Email::parse("admin@abc.co.tz").expect("an email"),
        },
    )
    .await;
    let tzs = Currency::parse("TZS").expect("a currency");
    let invoice_id = Uuid::from_u128(0x4001);
    run(
        &executor,
        AccountCommand::OrderService {
            service_id: SERVICE,
            invoice_id,
            product: Product {
                product_id: Uuid::from_u128(0x2001),
                name: Name::parse("Starter Hosting").expect("a name"),
                kind: ProductKind::Hosting,
                tld: None,
                prices: vec![Price {
                    billing_cycle: BillingCycle::Annually,
                    amount: Money::new(15_000_000, tzs).expect("a price"),
                }],
            },
            domain: Some(DomainName::parse("abc.co.tz").expect("a domain")),
            billing_cycle: BillingCycle::Annually,
        },
    )
    .await;
    run(
        &executor,
        AccountCommand::PayInvoice {
            invoice_id,
            payment_id: Uuid::from_u128(0x5001),
            amount_minor: 15_000_000,
            reference: "MPESA-ABC-0001".into(),
        },
    )
    .await;
    store
}

fn scheduler(data_dir: &std::path::Path, clock_file: &std::path::Path) -> Child {
    Command::new(BIN)
        .args(["scheduler", "--scheduler-interval-ms", "50"])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--clock-file")
        .arg(clock_file)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the scheduler starts")
}

/// The renewal invoices in the log: (actor, due date).
async fn renewals(store: &dyn EventStore) -> Vec<(String, String)> {
    store
        .read_all(0, 10_000)
        .await
        .expect("the log reads")
        .into_iter()
        .filter(|e| e.event_type == "InvoiceIssued")
        .filter(|e| e.payload["InvoiceIssued"]["kind"]["kind"] == "renewal")
        .map(|e| {
            (
                e.metadata.actor.to_string(),
                e.payload["InvoiceIssued"]["due_date"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

/// Waits until `store` holds `count` renewals or ten seconds pass.
async fn wait_for_renewals(store: &dyn EventStore, count: usize) -> Vec<(String, String)> {
    let mut found = renewals(store).await;
    for _ in 0..200 {
        if found.len() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        found = renewals(store).await;
    }
    found
}

#[tokio::test]
async fn scheduler_processes_on_a_clock_file_issue_the_renewal_once_however_many_and_restarted() {
    let dir = TempDataDir::new();
    let store = seed(dir.path()).await;
    let clock_file = dir.path().join("clock");

    // Fifteen days before the due date nothing is due, however long the schedulers run.
    FileClock::set(&clock_file, at(2026, 2, 16)).expect("the clock file is written");
    let mut first = scheduler(dir.path(), &clock_file);
    let mut second = scheduler(dir.path(), &clock_file);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(renewals(&*store).await, Vec::<(String, String)>::new());

    // The file moves to fourteen days before: both processes see it on their next pass.
    FileClock::set(&clock_file, at(2026, 2, 17)).expect("the clock file is written");
    let found = wait_for_renewals(&*store, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        renewals(&*store).await,
        vec![("system".to_owned(), "2026-03-03".to_owned())]
    );
    assert_eq!(found.len(), 1);

    // Restarted, and with time moving on, they do not issue it again.
    for child in [&mut first, &mut second] {
        child.kill().expect("the scheduler stops");
        child.wait().expect("the scheduler is reaped");
    }
    FileClock::set(&clock_file, at(2026, 2, 20)).expect("the clock file is written");
    let mut third = scheduler(dir.path(), &clock_file);
    let mut fourth = scheduler(dir.path(), &clock_file);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for child in [&mut third, &mut fourth] {
        child.kill().expect("the scheduler stops");
        child.wait().expect("the scheduler is reaped");
    }
    assert_eq!(
        renewals(&*store).await,
        vec![("system".to_owned(), "2026-03-03".to_owned())]
    );
}

#[test]
fn a_scheduler_on_a_directory_without_a_log_refuses_and_creates_nothing() {
    let dir = TempDataDir::new();
    let missing = dir.path().join("onbehalf-dta");
    let output = Command::new(BIN)
        .arg("scheduler")
        .arg("--data-dir")
        .arg(&missing)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .expect("the scheduler runs");

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!(
        "no log at {}; give the server's --data-dir, or --database-url",
        missing.join("events.db").display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!missing.exists());
}
