//! Test support: a log builder with consecutive positions and the agency walkthrough as data.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use onbehalf_events::account::{InvoiceKind, InvoiceLine};
use onbehalf_events::values::{BillingCycle, Currency, DomainName, Email, Name, ProductKind};
use onbehalf_events::{
    account_stream, stream_type, user_stream, AccountEvent, Actor, EventSchema, Metadata,
    Permission, PermissionSet, StoredEvent, UserEvent,
};
use onbehalf_projections::{InvitationLinks, ReadModels};
use uuid::Uuid;

/// Deterministic stand-in for the server's signed tokens.
#[derive(Debug)]
pub struct TestLinks;

impl InvitationLinks for TestLinks {
    fn token(&self, account_id: Uuid, invitation_id: Uuid, generation: u32) -> String {
        format!(
            "{}.{}.{generation}.sig",
            account_id.simple(),
            invitation_id.simple()
        )
    }

    fn accept_url(&self, token: &str) -> String {
        format!("https://my.netpoa.test/invitations/accept?token={token}")
    }
}

pub fn models() -> ReadModels {
    ReadModels::new(Arc::new(TestLinks))
}

pub fn fold(events: &[StoredEvent]) -> ReadModels {
    let mut models = models();
    for event in events {
        models.apply(event).unwrap();
    }
    models
}

pub fn email(s: &str) -> Email {
    Email::parse(s).unwrap()
}

pub fn name(s: &str) -> Name {
    Name::parse(s).unwrap()
}

pub fn domain(s: &str) -> DomainName {
    DomainName::parse(s).unwrap()
}

pub fn tzs() -> Currency {
    Currency::parse("TZS").unwrap()
}

pub fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

pub fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
}

pub fn perms(list: &[Permission]) -> PermissionSet {
    list.iter().copied().collect()
}

/// The request context a command carried.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub actor: Actor,
    pub on_behalf_of: Option<Uuid>,
    pub permission: Option<Permission>,
    pub request_id: Option<String>,
    pub client_address: Option<String>,
    pub user_agent: Option<String>,
}

impl Ctx {
    pub fn user(user_id: Uuid) -> Self {
        Self::by(Actor::User(user_id))
    }

    pub fn system() -> Self {
        Self::by(Actor::System)
    }

    pub fn by(actor: Actor) -> Self {
        Self {
            actor,
            on_behalf_of: None,
            permission: None,
            request_id: None,
            client_address: None,
            user_agent: None,
        }
    }

    pub fn with_client(mut self, address: &str, user_agent: &str) -> Self {
        self.client_address = Some(address.to_owned());
        self.user_agent = Some(user_agent.to_owned());
        self
    }

    pub fn for_account(mut self, account_id: Uuid) -> Self {
        self.on_behalf_of = Some(account_id);
        self
    }

    pub fn relying_on(mut self, permission: Permission) -> Self {
        self.permission = Some(permission);
        self
    }

    pub fn request(mut self, request_id: &str) -> Self {
        self.request_id = Some(request_id.to_owned());
        self
    }
}

/// Builds a log: consecutive positions from 1, per-stream versions, a clock one minute apart.
#[derive(Debug)]
pub struct Log {
    pub events: Vec<StoredEvent>,
    versions: HashMap<String, u64>,
    clock: DateTime<Utc>,
}

impl Log {
    pub fn new() -> Self {
        Self {
            events: Vec::new(),
            versions: HashMap::new(),
            clock: at(2026, 3, 1, 9),
        }
    }

    /// Moves the clock forward before the next event.
    pub fn wait(&mut self, by: Duration) {
        self.clock += by;
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock
    }

    pub fn user(&mut self, ctx: &Ctx, event: UserEvent) -> StoredEvent {
        let user_id = match &event {
            UserEvent::UserRegistered { user_id, .. } | UserEvent::UserErased { user_id } => {
                user_id
            }
        };
        let stream = user_stream(*user_id);
        let (event_type, payload) = (event.event_type(), serde_json::to_value(&event).unwrap());
        self.push(ctx, stream, stream_type::USER, event_type, payload)
    }

    pub fn account(&mut self, ctx: &Ctx, account_id: Uuid, event: AccountEvent) -> StoredEvent {
        let (event_type, payload) = (event.event_type(), serde_json::to_value(&event).unwrap());
        self.push(
            ctx,
            account_stream(account_id),
            stream_type::CLIENT_ACCOUNT,
            event_type,
            payload,
        );
        // The log holds each event at the version its type declares, as the executor writes it.
        let stored = self.events.last_mut().unwrap();
        stored.event_version = event.event_version().to_owned();
        stored.clone()
    }

    pub fn push(
        &mut self,
        ctx: &Ctx,
        stream_id: String,
        stream_type: &str,
        event_type: &str,
        payload: serde_json::Value,
    ) -> StoredEvent {
        let position = self.events.len() as u64 + 1;
        let version = self.versions.entry(stream_id.clone()).or_insert(0);
        *version += 1;
        let mut metadata = Metadata::new(ctx.actor.clone());
        metadata.on_behalf_of = ctx.on_behalf_of;
        metadata.permission = ctx.permission;
        metadata.request_id = ctx.request_id.clone();
        metadata.client_address = ctx.client_address.clone();
        metadata.user_agent = ctx.user_agent.clone();
        metadata.correlation_id = Uuid::from_u128(0xc0 << 64 | position as u128);
        let event = StoredEvent {
            event_id: Uuid::from_u128(0xe0 << 64 | position as u128),
            position,
            stream_id,
            stream_type: stream_type.to_owned(),
            version: *version,
            occurred_at: self.clock,
            event_type: event_type.to_owned(),
            event_version: "1".to_owned(),
            payload,
            metadata,
            key_id: None,
            hash: None,
        };
        self.clock += Duration::minutes(1);
        self.events.push(event.clone());
        event
    }

    // Shorthands for the walkthrough's steps.

    pub fn register(&mut self, user_id: Uuid, mail: &str, display: &str) -> StoredEvent {
        self.user(
            &Ctx::user(user_id),
            UserEvent::UserRegistered {
                user_id,
                email: email(mail),
                display_name: name(display),
            },
        )
    }

    pub fn create_account(
        &mut self,
        owner: Uuid,
        account_id: Uuid,
        account_name: &str,
        mail: &str,
    ) {
        self.account(
            &Ctx::user(owner).for_account(account_id),
            account_id,
            AccountEvent::AccountCreated {
                account_id,
                name: name(account_name),
                email: email(mail),
                owner_user_id: owner,
            },
        );
    }

    pub fn invite(
        &mut self,
        owner: Uuid,
        account_id: Uuid,
        invitation_id: Uuid,
        mail: &str,
        permissions: PermissionSet,
    ) -> StoredEvent {
        let expires_at = self.clock + Duration::days(7);
        self.account(
            &Ctx::user(owner).for_account(account_id),
            account_id,
            AccountEvent::UserInvited {
                invitation_id,
                email: email(mail),
                permissions,
                expires_at,
                invited_by: owner,
            },
        )
    }

    pub fn accept(
        &mut self,
        user_id: Uuid,
        account_id: Uuid,
        invitation_id: Uuid,
        permissions: PermissionSet,
    ) -> StoredEvent {
        self.account(
            &Ctx::user(user_id).for_account(account_id),
            account_id,
            AccountEvent::InvitationAccepted {
                invitation_id,
                user_id,
                permissions,
            },
        )
    }

    /// Orders a yearly hosting plan for `domain_name` at TZS 120,000.00 and issues its invoice.
    pub fn order_hosting(
        &mut self,
        ctx: &Ctx,
        account_id: Uuid,
        service_id: Uuid,
        invoice_id: Uuid,
        domain_name: &str,
    ) {
        let ordered_on = self.clock.date_naive();
        let next_due_date = BillingCycle::Annually.advance(ordered_on);
        self.account(
            ctx,
            account_id,
            AccountEvent::ServiceOrdered {
                service_id,
                product_id: starter_hosting(),
                product_name: name("Starter Hosting"),
                kind: ProductKind::Hosting,
                domain: Some(domain(domain_name)),
                billing_cycle: BillingCycle::Annually,
                amount_minor: 12_000_000,
                currency: tzs(),
                ordered_on,
                next_due_date,
            },
        );
        self.account(
            ctx,
            account_id,
            AccountEvent::InvoiceIssued {
                invoice_id,
                service_id,
                kind: InvoiceKind::Order,
                lines: vec![InvoiceLine {
                    description: format!(
                        "Starter Hosting - {domain_name} ({ordered_on} - {})",
                        next_due_date.pred_opt().unwrap()
                    ),
                    amount_minor: 12_000_000,
                }],
                total_minor: 12_000_000,
                currency: tzs(),
                issued_on: ordered_on,
                due_date: ordered_on + Duration::days(7),
            },
        );
    }

    pub fn pay(
        &mut self,
        ctx: &Ctx,
        account_id: Uuid,
        invoice_id: Uuid,
        payment_id: Uuid,
        amount_minor: i64,
        reference: &str,
    ) -> StoredEvent {
        self.account(
            ctx,
            account_id,
            AccountEvent::PaymentReceived {
                invoice_id,
                payment_id,
                amount_minor,
                reference: reference.to_owned(),
            },
        )
    }
}

pub fn starter_hosting() -> Uuid {
    Uuid::from_u128(0x9000_0001)
}

/// The agency walkthrough's cast: a designer with a master account, four client accounts.
#[derive(Clone, Copy, Debug)]
pub struct Agency {
    pub designer: Uuid,
    pub designer_account: Uuid,
    pub abc_owner: Uuid,
    pub abc: Uuid,
    pub newlife_owner: Uuid,
    pub newlife: Uuid,
    pub star_owner: Uuid,
    pub star: Uuid,
    pub greenfarm_owner: Uuid,
    pub greenfarm: Uuid,
}

impl Agency {
    pub fn ids() -> Self {
        Self {
            designer: Uuid::from_u128(0x1000_0001),
            designer_account: Uuid::from_u128(0x2000_0001),
            abc_owner: Uuid::from_u128(0x1000_0002),
            abc: Uuid::from_u128(0x2000_0002),
            newlife_owner: Uuid::from_u128(0x1000_0003),
            newlife: Uuid::from_u128(0x2000_0003),
            star_owner: Uuid::from_u128(0x1000_0004),
            star: Uuid::from_u128(0x2000_0004),
            greenfarm_owner: Uuid::from_u128(0x1000_0005),
            greenfarm: Uuid::from_u128(0x2000_0005),
        }
    }

    /// The client accounts with their owners, names and billing emails.
    pub fn clients(&self) -> [(Uuid, Uuid, &'static str, &'static str, &'static str); 4] {
        [
            (
                self.abc_owner,
                self.abc,
                "ABC Company",
                "admin@abc.co.tz",
                "Amina",
            ),
            (
                self.newlife_owner,
                self.newlife,
                "New Life Church",
                "info@newlife.or.tz",
                "Pastor John",
            ),
            (
                self.star_owner,
                self.star,
                "Star Logistics",
                "support@starlogistics.co.tz",
                "Salim",
            ),
            (
                self.greenfarm_owner,
                self.greenfarm,
                "Green Farm Ltd",
                "office@greenfarm.co.tz",
                "Neema",
            ),
        ]
    }

    /// The invitation of the designer into a client account.
    pub fn invitation(account_id: Uuid) -> Uuid {
        Uuid::from_u128(0x3000_0000 | account_id.as_u128() & 0xff)
    }

    /// Registers everyone, creates the designer's own account and the four client accounts, and
    /// has each client invite the designer with full access, which the designer accepts.
    pub fn walkthrough() -> (Self, Log) {
        let agency = Self::ids();
        let mut log = Log::new();
        log.register(agency.designer, "designer@yourcompany.com", "Designer");
        log.create_account(
            agency.designer,
            agency.designer_account,
            "Your Company",
            "designer@yourcompany.com",
        );
        for (owner, account, account_name, mail, display) in agency.clients() {
            log.register(owner, mail, display);
            log.create_account(owner, account, account_name, mail);
            log.invite(
                owner,
                account,
                Self::invitation(account),
                "designer@yourcompany.com",
                PermissionSet::full(),
            );
            log.accept(
                agency.designer,
                account,
                Self::invitation(account),
                PermissionSet::full(),
            );
        }
        (agency, log)
    }
}
