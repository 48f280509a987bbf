//! A realistic log of a hosting provider's client area, written straight into a store.
//!
//! The log is made of the same events the server writes, in the same format, appended through
//! the store's own `append`, so positions and the hash chain are the store's. Each client account
//! is one append holding its whole history (many events per append keeps seeding fast); users
//! and the catalogue are appends of their own.
//!
//! Per client account: its owner registers; the account is created; the owner invites an agency
//! designer with full access (accepted) and a bookkeeper with INVOICES (pending, some
//! cancelled); the designer orders monthly hosting and a yearly domain, each invoiced and paid
//! (by the designer or the billing service), sets the domain's nameservers, and pays a varying
//! number of monthly renewals; some accounts narrow the designer's permissions, a few remove the
//! designer and cancel the hosting. Invitations of the first half of the accounts are written as
//! `UserInvited` version 1, as a log started before version 2 holds them, so replay upcasts them.
//!
//! LIMITATION: an account's events are contiguous in the log rather than interleaved with other
//! accounts' as in production; replay reads by position and folds per event, so interleaving
//! would change cache locality only.

use chrono::{DateTime, Duration, Months, NaiveDate, TimeZone, Utc};
use onbehalf::executor::EMAIL_SCOPE;
use onbehalf::store::{AppendBatch, EventStore, NewEvent, Reservation};
use onbehalf_events::account::{InvoiceKind, InvoiceLine, RemovalReason};
use onbehalf_events::values::{
    BillingCycle, Currency, DomainName, Email, Money, Name, ProductKind, Tld,
};
use onbehalf_events::{
    account_stream, stream_type, user_stream, AccountEvent, Actor, CatalogEvent, EventSchema,
    Metadata, Permission, PermissionSet, Price, Product, UserEvent, CATALOG_STREAM,
};
use uuid::Uuid;

use crate::BenchError;

/// How many client accounts share one agency designer.
const ACCOUNTS_PER_DESIGNER: u64 = 40;
/// The most monthly renewals an account has paid.
const MAX_RENEWALS: u64 = 36;

const HOSTING_PRODUCT: Uuid = Uuid::from_u128(0x5000_0001);
const DOMAIN_PRODUCT: Uuid = Uuid::from_u128(0x5000_0002);
const HOSTING_MONTHLY_MINOR: i64 = 1_500_000;
const DOMAIN_ANNUAL_MINOR: i64 = 3_000_000;

/// What a seeding wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seeded {
    /// Events appended (exactly the number asked for).
    pub events: u64,
    /// Appends made.
    pub appends: u64,
    /// Client accounts created.
    pub accounts: u64,
    /// `UserInvited` events written at version 1.
    pub v1_invitations: u64,
}

/// One append in the making.
struct Batch {
    stream_id: String,
    stream_type: &'static str,
    events: Vec<NewEvent>,
    reservations: Vec<Reservation>,
}

/// Appends a log of exactly `total` events to an empty store.
pub async fn seed(store: &dyn EventStore, total: u64) -> Result<Seeded, BenchError> {
    let catalog = catalog_batch()?;
    let accounts = accounts_for(total);
    let designers = accounts.div_ceil(ACCOUNTS_PER_DESIGNER).max(1);
    let mut seeded = Seeded {
        events: 0,
        appends: 0,
        accounts: 0,
        v1_invitations: 0,
    };
    let mut clock = Utc
        .with_ymd_and_hms(2024, 1, 2, 9, 0, 0)
        .single()
        .ok_or_else(|| BenchError::Setup("the seed's start time is invalid".into()))?;

    let mut pending = vec![catalog];
    for d in 0..designers {
        pending.push(user_batch(
            designer_id(d),
            &designer_email(d),
            "Web Designer",
        )?);
    }
    let mut account = 0u64;
    while seeded.events < total {
        for batch in pending.drain(..) {
            let room = total - seeded.events;
            let Some(batch) = truncated(batch, room) else {
                break;
            };
            seeded.v1_invitations += batch
                .events
                .iter()
                .filter(|e| e.event_type == "UserInvited" && e.event_version == "1")
                .count() as u64;
            seeded.events += batch.events.len() as u64;
            seeded.appends += 1;
            if batch.stream_type == stream_type::CLIENT_ACCOUNT {
                seeded.accounts += 1;
            }
            append(store, batch, clock).await?;
            clock += Duration::minutes(1);
        }
        if seeded.events >= total {
            break;
        }
        let owner = owner_id(account);
        pending.push(user_batch(
            owner,
            &format!("owner@client{account}.co.tz"),
            &format!("Owner {account}"),
        )?);
        let v1 = account < accounts / 2;
        pending.push(account_batch(
            account,
            designer_id(account / ACCOUNTS_PER_DESIGNER),
            v1,
            clock,
        )?);
        account += 1;
    }
    Ok(seeded)
}

/// An estimate of how many client accounts make up `total` events, for sharing designers.
fn accounts_for(total: u64) -> u64 {
    // One owner registration, about 14 events of invitations, orders and access changes, and
    // on average half the most renewals at four events each.
    let average = 1 + 14 + 4 * (MAX_RENEWALS / 2);
    total.div_ceil(average)
}

/// The batch cut to at most `room` events (a prefix of a history is a valid history); `None`
/// when no room is left.
fn truncated(mut batch: Batch, room: u64) -> Option<Batch> {
    if room == 0 {
        return None;
    }
    batch
        .events
        .truncate(usize::try_from(room).unwrap_or(usize::MAX));
    if batch.events.is_empty() {
        return None;
    }
    Some(batch)
}

async fn append(
    store: &dyn EventStore,
    batch: Batch,
    occurred_at: DateTime<Utc>,
) -> Result<(), BenchError> {
    store
        .append(AppendBatch {
            stream_id: batch.stream_id,
            stream_type: batch.stream_type.to_owned(),
            expected_version: 0,
            occurred_at,
            events: batch.events,
            reservations: batch.reservations,
            releases: Vec::new(),
            request: None,
        })
        .await?;
    Ok(())
}

pub(crate) fn designer_id(d: u64) -> Uuid {
    Uuid::from_u128(0xd000_0000_0000 | u128::from(d))
}

fn designer_email(d: u64) -> String {
    format!("designer{d}@yourcompany.com")
}

fn owner_id(k: u64) -> Uuid {
    Uuid::from_u128(0x0a00_0000_0000 | u128::from(k))
}

fn account_id(k: u64) -> Uuid {
    Uuid::from_u128(0xac00_0000_0000 | u128::from(k))
}

/// Deterministic ids of the `n`-th thing of kind `kind` in account `k`.
fn id(kind: u128, k: u64, n: u64) -> Uuid {
    Uuid::from_u128(kind << 96 | u128::from(k) << 32 | u128::from(n))
}

fn parse<T, E: std::fmt::Display>(what: &str, parsed: Result<T, E>) -> Result<T, BenchError> {
    parsed.map_err(|e| BenchError::Setup(format!("seed {what} is invalid: {e}")))
}

fn tzs() -> Result<Currency, BenchError> {
    parse("currency", Currency::parse("TZS"))
}

fn catalog_batch() -> Result<Batch, BenchError> {
    let hosting = Product {
        product_id: HOSTING_PRODUCT,
        name: parse("name", Name::parse("Starter Hosting"))?,
        kind: ProductKind::Hosting,
        tld: None,
        prices: vec![Price {
            billing_cycle: BillingCycle::Monthly,
            amount: parse("price", Money::new(HOSTING_MONTHLY_MINOR, tzs()?))?,
        }],
    };
    let domain = Product {
        product_id: DOMAIN_PRODUCT,
        name: parse("name", Name::parse(".co.tz Domain"))?,
        kind: ProductKind::Domain,
        tld: Some(parse("tld", Tld::parse("co.tz"))?),
        prices: vec![Price {
            billing_cycle: BillingCycle::Annually,
            amount: parse("price", Money::new(DOMAIN_ANNUAL_MINOR, tzs()?))?,
        }],
    };
    let staff = Metadata::new(Actor::Staff("catalogue-admin".into()));
    let events = [hosting, domain]
        .into_iter()
        .map(|product| event(&CatalogEvent::ProductPut { product }, staff.clone(), false))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Batch {
        stream_id: CATALOG_STREAM.to_owned(),
        stream_type: stream_type::CATALOG,
        events,
        reservations: Vec::new(),
    })
}

fn user_batch(user_id: Uuid, email: &str, display_name: &str) -> Result<Batch, BenchError> {
    let registered = UserEvent::UserRegistered {
        user_id,
        email: parse("email", Email::parse(email))?,
        display_name: parse("name", Name::parse(display_name))?,
    };
    let mut metadata = Metadata::new(Actor::Service("client-area".into()));
    metadata.request_id = Some(format!("register-{user_id}"));
    Ok(Batch {
        stream_id: user_stream(user_id),
        stream_type: stream_type::USER,
        events: vec![event(&registered, metadata, false)?],
        reservations: vec![Reservation {
            scope: EMAIL_SCOPE.to_owned(),
            key: email.to_lowercase(),
        }],
    })
}

/// Metadata of a command on account `account` by `actor`, relying on `permission`.
fn on_behalf(
    actor: Actor,
    account: Uuid,
    permission: Option<Permission>,
    request: String,
) -> Metadata {
    let mut metadata = Metadata::new(actor);
    metadata.on_behalf_of = Some(account);
    metadata.permission = permission;
    metadata.request_id = Some(request);
    metadata.client_address = Some("192.0.2.10".to_owned());
    metadata.user_agent = Some("Mozilla/5.0 (client area)".to_owned());
    metadata
}

/// A new event in the log's format; `v1` writes a `UserInvited` as version 1 did.
fn event<E: EventSchema + serde::Serialize>(
    event: &E,
    metadata: Metadata,
    v1: bool,
) -> Result<NewEvent, BenchError> {
    let mut payload = serde_json::to_value(event)
        .map_err(|e| BenchError::Setup(format!("a seed event does not encode: {e}")))?;
    let mut version = event.event_version();
    if v1 && event.event_type() == "UserInvited" {
        if let Some(body) = payload
            .get_mut("UserInvited")
            .and_then(serde_json::Value::as_object_mut)
        {
            body.remove("invited_by");
        }
        version = "1";
    }
    Ok(NewEvent::new(
        event.event_type(),
        version,
        payload,
        metadata,
    ))
}

/// The whole history of client account `k`, in one append.
fn account_batch(
    k: u64,
    designer: Uuid,
    v1: bool,
    now: DateTime<Utc>,
) -> Result<Batch, BenchError> {
    let account = account_id(k);
    let owner = owner_id(k);
    let designer_mail = designer_email(k / ACCOUNTS_PER_DESIGNER);
    let domain = parse("domain", DomainName::parse(&format!("client{k}.co.tz")))?;
    let ordered_on = NaiveDate::from_ymd_opt(2024, 1, 2)
        .ok_or_else(|| BenchError::Setup("the seed's order date is invalid".into()))?;
    let month = |n: u32| {
        ordered_on
            .checked_add_months(Months::new(n))
            .ok_or_else(|| BenchError::Setup("a seed due date is out of range".into()))
    };
    let mut events = Vec::new();
    let mut request = 0u64;
    let mut push = |e: AccountEvent, actor: Actor, permission: Option<Permission>| {
        request += 1;
        let metadata = on_behalf(actor, account, permission, format!("req-{k}-{request}"));
        events.push(event(&e, metadata, v1));
    };
    let by_owner = Actor::User(owner);
    let by_designer = Actor::User(designer);
    let billing = Actor::Service("billing".into());

    push(
        AccountEvent::AccountCreated {
            account_id: account,
            name: parse("name", Name::parse(&format!("Client {k} Ltd")))?,
            email: parse("email", Email::parse(&format!("billing@client{k}.co.tz")))?,
            owner_user_id: owner,
        },
        by_owner.clone(),
        None,
    );
    push(
        AccountEvent::UserInvited {
            invitation_id: id(1, k, 1),
            email: parse("email", Email::parse(&designer_mail))?,
            permissions: PermissionSet::full(),
            expires_at: now + Duration::days(7),
            invited_by: owner,
        },
        by_owner.clone(),
        None,
    );
    push(
        AccountEvent::InvitationAccepted {
            invitation_id: id(1, k, 1),
            user_id: designer,
            permissions: PermissionSet::full(),
        },
        by_designer.clone(),
        None,
    );
    push(
        AccountEvent::UserInvited {
            invitation_id: id(1, k, 2),
            email: parse("email", Email::parse(&format!("accounts@client{k}.co.tz")))?,
            permissions: [Permission::Invoices].into_iter().collect(),
            expires_at: now + Duration::days(7),
            invited_by: owner,
        },
        by_owner.clone(),
        None,
    );
    if k.is_multiple_of(3) {
        push(
            AccountEvent::InvitationCancelled {
                invitation_id: id(1, k, 2),
            },
            by_owner.clone(),
            None,
        );
    }

    // Monthly hosting and a yearly domain, ordered, invoiced and paid.
    let hosting = id(2, k, 1);
    let domain_service = id(2, k, 2);
    let orders = [
        (
            hosting,
            HOSTING_PRODUCT,
            "Starter Hosting",
            ProductKind::Hosting,
            BillingCycle::Monthly,
            HOSTING_MONTHLY_MINOR,
            month(1)?,
        ),
        (
            domain_service,
            DOMAIN_PRODUCT,
            ".co.tz Domain",
            ProductKind::Domain,
            BillingCycle::Annually,
            DOMAIN_ANNUAL_MINOR,
            month(12)?,
        ),
    ];
    for (n, (service_id, product_id, product, kind, cycle, amount, next_due)) in
        orders.into_iter().enumerate()
    {
        let invoice = id(3, k, n as u64 + 1);
        let product_name = parse("name", Name::parse(product))?;
        push(
            AccountEvent::ServiceOrdered {
                service_id,
                product_id,
                product_name: product_name.clone(),
                kind,
                domain: Some(domain.clone()),
                billing_cycle: cycle,
                amount_minor: amount,
                currency: tzs()?,
                ordered_on,
                next_due_date: next_due,
            },
            by_designer.clone(),
            Some(Permission::Orders),
        );
        push(
            AccountEvent::InvoiceIssued {
                invoice_id: invoice,
                service_id,
                kind: InvoiceKind::Order,
                lines: vec![InvoiceLine {
                    description: format!(
                        "{product_name} - {domain} ({ordered_on} - {})",
                        next_due.pred_opt().unwrap_or(next_due)
                    ),
                    amount_minor: amount,
                }],
                total_minor: amount,
                currency: tzs()?,
                issued_on: ordered_on,
                due_date: ordered_on,
            },
            by_designer.clone(),
            Some(Permission::Orders),
        );
        pay(
            &mut push,
            invoice,
            id(4, k, n as u64 + 1),
            amount,
            k,
            &by_designer,
            &billing,
        );
    }
    push(
        AccountEvent::NameserversUpdated {
            service_id: domain_service,
            nameservers: vec![
                parse("domain", DomainName::parse("ns1.netpoa.co.tz"))?,
                parse("domain", DomainName::parse("ns2.netpoa.co.tz"))?,
            ],
        },
        by_designer.clone(),
        Some(Permission::ManageDomains),
    );

    // Renewals of the hosting, each invoiced by the scheduler and paid.
    let renewals = k % (MAX_RENEWALS + 1);
    for r in 1..=renewals {
        let period_start = month(r as u32)?;
        let period_end = month(r as u32 + 1)?;
        let invoice = id(3, k, 100 + r);
        push(
            AccountEvent::InvoiceIssued {
                invoice_id: invoice,
                service_id: hosting,
                kind: InvoiceKind::Renewal { period_start },
                lines: vec![InvoiceLine {
                    description: format!(
                        "Starter Hosting - {domain} ({period_start} - {})",
                        period_end.pred_opt().unwrap_or(period_end)
                    ),
                    amount_minor: HOSTING_MONTHLY_MINOR,
                }],
                total_minor: HOSTING_MONTHLY_MINOR,
                currency: tzs()?,
                issued_on: period_start - Duration::days(7),
                due_date: period_start,
            },
            Actor::System,
            None,
        );
        pay(
            &mut push,
            invoice,
            id(4, k, 100 + r),
            HOSTING_MONTHLY_MINOR,
            k + r,
            &by_designer,
            &billing,
        );
        push(
            AccountEvent::ServiceRenewed {
                service_id: hosting,
                next_due_date: period_end,
            },
            Actor::System,
            None,
        );
    }

    if k.is_multiple_of(5) {
        let revoked: PermissionSet = [Permission::ManageProducts, Permission::ProductSso]
            .into_iter()
            .collect();
        push(
            AccountEvent::PermissionsRevoked {
                user_id: designer,
                permissions: PermissionSet::full().difference(&revoked),
                revoked,
            },
            by_owner.clone(),
            None,
        );
    }
    if k.is_multiple_of(11) {
        push(
            AccountEvent::MemberRemoved {
                user_id: designer,
                reason: RemovalReason::Revoked,
            },
            by_owner.clone(),
            None,
        );
        push(
            AccountEvent::ServiceCancelled {
                service_id: hosting,
            },
            by_owner,
            Some(Permission::Orders),
        );
    }

    Ok(Batch {
        stream_id: account_stream(account),
        stream_type: stream_type::CLIENT_ACCOUNT,
        events: events.into_iter().collect::<Result<Vec<_>, _>>()?,
        reservations: Vec::new(),
    })
}

/// A payment in full and the invoice settled: by the designer in the client area for odd
/// `seed`s, by the billing service's gateway otherwise.
fn pay(
    push: &mut impl FnMut(AccountEvent, Actor, Option<Permission>),
    invoice_id: Uuid,
    payment_id: Uuid,
    amount_minor: i64,
    seed: u64,
    designer: &Actor,
    billing: &Actor,
) {
    let (actor, permission, reference) = if seed % 2 == 1 {
        (
            designer.clone(),
            Some(Permission::Invoices),
            format!("card-{payment_id}"),
        )
    } else {
        (
            billing.clone(),
            None,
            format!("mpesa-{}", payment_id.simple()),
        )
    };
    push(
        AccountEvent::PaymentReceived {
            invoice_id,
            payment_id,
            amount_minor,
            reference,
        },
        actor.clone(),
        permission,
    );
    push(AccountEvent::InvoicePaid { invoice_id }, actor, permission);
}

/// Who the command mix of `throughput` works with: client accounts created by their owners, the
/// agency users that get invited, and the catalogue's hosting product.
#[derive(Debug, Clone, Copy)]
pub struct MixSetup {
    /// Client accounts, `mix_account_id(0..accounts)`.
    pub accounts: usize,
    /// Agency users, `designer_id(0..designers)`, registered with `designer_email`.
    pub designers: usize,
}

/// The id of the mix's client account `a` (the same scheme the peer uses).
pub(crate) fn mix_account_id(a: usize) -> Uuid {
    account_id(a as u64)
}

/// The owner of the mix's client account `a`.
pub(crate) fn mix_owner_id(a: usize) -> Uuid {
    owner_id(a as u64)
}

/// The email the agency user `d` registered with.
pub(crate) fn mix_designer_email(d: usize) -> String {
    designer_email(d as u64)
}

/// The catalogue's monthly hosting product, and its price.
pub(crate) const MIX_PRODUCT: Uuid = HOSTING_PRODUCT;
/// The price of one month of [`MIX_PRODUCT`] in minor units.
pub(crate) const MIX_PRICE_MINOR: i64 = HOSTING_MONTHLY_MINOR;

/// Writes what the mix starts from into an empty store: the catalogue, the agency users, and
/// each client account's owner registration and creation, one append per stream, from
/// `parallel` writers at once.
pub async fn seed_mix(
    store: std::sync::Arc<dyn EventStore>,
    setup: MixSetup,
    parallel: usize,
) -> Result<(), BenchError> {
    let at = Utc::now();
    append(&*store, catalog_batch()?, at).await?;
    for d in 0..setup.designers {
        let batch = user_batch(
            designer_id(d as u64),
            &mix_designer_email(d),
            "Web Designer",
        )?;
        append(&*store, batch, at).await?;
    }
    let parallel = parallel.max(1);
    let mut writers = Vec::new();
    for w in 0..parallel {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for a in (w..setup.accounts).step_by(parallel) {
                let k = a as u64;
                let owner = owner_id(k);
                append(
                    &*store,
                    user_batch(owner, &format!("owner@client{k}.co.tz"), "Owner")?,
                    at,
                )
                .await?;
                let created = AccountEvent::AccountCreated {
                    account_id: account_id(k),
                    name: parse("name", Name::parse(&format!("Client {k} Ltd")))?,
                    email: parse("email", Email::parse(&format!("billing@client{k}.co.tz")))?,
                    owner_user_id: owner,
                };
                let mut metadata = Metadata::new(Actor::User(owner));
                metadata.on_behalf_of = Some(account_id(k));
                let batch = Batch {
                    stream_id: account_stream(account_id(k)),
                    stream_type: stream_type::CLIENT_ACCOUNT,
                    events: vec![event(&created, metadata, false)?],
                    reservations: Vec::new(),
                };
                append(&*store, batch, at).await?;
            }
            Ok::<_, BenchError>(())
        }));
    }
    for writer in writers {
        writer
            .await
            .map_err(|e| BenchError::Setup(format!("seeding task failed: {e}")))??;
    }
    Ok(())
}

/// Writes `accounts` client accounts into an empty store, each created by its owner and joined
/// by `members` agency users (invited with full access and accepted), drawn from a pool of
/// one agency user per ten accounts; one append per account and per user. Returns the events
/// written.
pub async fn seed_members(
    store: &dyn EventStore,
    accounts: usize,
    members: usize,
) -> Result<u64, BenchError> {
    let at = Utc::now();
    let pool = (accounts / 10).max(members).max(1);
    let mut events = 0u64;
    for d in 0..pool {
        let batch = user_batch(
            designer_id(d as u64),
            &mix_designer_email(d),
            "Web Designer",
        )?;
        append(store, batch, at).await?;
        events += 1;
    }
    for a in 0..accounts {
        let k = a as u64;
        let owner = owner_id(k);
        append(
            store,
            user_batch(owner, &format!("owner@client{k}.co.tz"), "Owner")?,
            at,
        )
        .await?;
        let account = account_id(k);
        let mut metadata = Metadata::new(Actor::User(owner));
        metadata.on_behalf_of = Some(account);
        let mut batch_events = vec![event(
            &AccountEvent::AccountCreated {
                account_id: account,
                name: parse("name", Name::parse(&format!("Client {k} Ltd")))?,
                email: parse("email", Email::parse(&format!("billing@client{k}.co.tz")))?,
                owner_user_id: owner,
            },
            metadata.clone(),
            false,
        )?];
        for m in 0..members {
            let d = (a * 7 + m * 3) % pool;
            let invitation_id = id(1, k, m as u64 + 1);
            batch_events.push(event(
                &AccountEvent::UserInvited {
                    invitation_id,
                    email: parse("email", Email::parse(&mix_designer_email(d)))?,
                    permissions: PermissionSet::full(),
                    expires_at: at + Duration::days(7),
                    invited_by: owner,
                },
                metadata.clone(),
                false,
            )?);
            let mut accepted = Metadata::new(Actor::User(designer_id(d as u64)));
            accepted.on_behalf_of = Some(account);
            batch_events.push(event(
                &AccountEvent::InvitationAccepted {
                    invitation_id,
                    user_id: designer_id(d as u64),
                    permissions: PermissionSet::full(),
                },
                accepted,
                false,
            )?);
        }
        events += 1 + batch_events.len() as u64;
        append(
            store,
            Batch {
                stream_id: account_stream(account),
                stream_type: stream_type::CLIENT_ACCOUNT,
                events: batch_events,
                reservations: Vec::new(),
            },
            at,
        )
        .await?;
    }
    Ok(events)
}
