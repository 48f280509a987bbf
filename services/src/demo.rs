//! `onbehalf demo`: the agency walkthrough driven over gRPC against a running server.
//!
//! Every command carries a fixed request id, so a second run against the same server appends
//! nothing: each command returns its first outcome and the report comes out the same.

use std::fmt::Write as _;
use std::path::Path;

use onbehalf_proto::v1 as pb;
use pb::account_service_client::AccountServiceClient;
use pb::audit_service_client::AuditServiceClient;
use pb::billing_service_client::BillingServiceClient;
use pb::catalog_service_client::CatalogServiceClient;
use pb::hosting_service_client::HostingServiceClient;
use pb::invitation_service_client::InvitationServiceClient;
use pb::notification_service_client::NotificationServiceClient;
use pb::user_service_client::UserServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::auth::{self, Signer};
use crate::clock::{Clock, SystemClock};

/// The demo's catalogue: a hosting plan and `.co.tz` registrations.
pub const HOSTING_PRODUCT: Uuid = Uuid::from_u128(0x0b5e_0001_0000_4000_8000_0000_0000_0001);
/// The `.co.tz` domain product.
pub const DOMAIN_PRODUCT: Uuid = Uuid::from_u128(0x0b5e_0001_0000_4000_8000_0000_0000_0002);

/// The client accounts of the walkthrough: name and billing email (also the owner's login).
pub const CLIENTS: [(&str, &str); 4] = [
    ("ABC Company", "admin@abc.co.tz"),
    ("New Life Church", "info@newlife.or.tz"),
    ("Star Logistics", "support@starlogistics.co.tz"),
    ("Green Farm Ltd", "info@greenfarm.co.tz"),
];

/// The agency's master login.
pub const DESIGNER: &str = "designer@yourcompany.com";

type Error = Box<dyn std::error::Error + Send + Sync>;

type Authed = crate::cli::AuthedChannel;

/// Clients for one actor.
struct As {
    users: UserServiceClient<Authed>,
    accounts: AccountServiceClient<Authed>,
    invitations: InvitationServiceClient<Authed>,
    catalog: CatalogServiceClient<Authed>,
    hosting: HostingServiceClient<Authed>,
    billing: BillingServiceClient<Authed>,
    notifications: NotificationServiceClient<Authed>,
    audit: AuditServiceClient<Authed>,
}

impl As {
    fn new(channel: &Channel, token: &str) -> Result<Self, Error> {
        let bearer = crate::cli::Bearer::new(token)?;
        let svc = || InterceptedService::new(channel.clone(), bearer.clone());
        Ok(Self {
            users: UserServiceClient::new(svc()),
            accounts: AccountServiceClient::new(svc()),
            invitations: InvitationServiceClient::new(svc()),
            catalog: CatalogServiceClient::new(svc()),
            hosting: HostingServiceClient::new(svc()),
            billing: BillingServiceClient::new(svc()),
            notifications: NotificationServiceClient::new(svc()),
            audit: AuditServiceClient::new(svc()),
        })
    }
}

fn price(cycle: pb::BillingCycle, amount_minor: i64) -> pb::Price {
    pb::Price {
        billing_cycle: cycle as i32,
        amount_minor,
        currency: "TZS".into(),
    }
}

fn permission_names(permissions: &[i32]) -> String {
    if permissions.len() == 13 {
        return "full access (13 permissions)".into();
    }
    permissions
        .iter()
        .map(|p| pb::Permission::try_from(*p).map_or("?".into(), |p| p.as_str_name().to_owned()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn money(amount_minor: i64, currency: &str) -> String {
    match onbehalf_events::values::Currency::parse(currency) {
        Ok(c) => onbehalf_projections::format_money(amount_minor, &c),
        Err(_) => format!("{amount_minor} {currency}"),
    }
}

fn date(d: &Option<pb::Date>) -> String {
    d.as_ref().map_or_else(String::new, |d| {
        format!("{:04}-{:02}-{:02}", d.year, d.month, d.day)
    })
}

/// Runs the walkthrough against `server` with tokens signed by `data_dir`'s key and prints
/// the report to standard output.
pub async fn run(server: &str, data_dir: &Path) -> Result<(), Error> {
    let report = walkthrough(server, data_dir).await?;
    print!("{report}");
    Ok(())
}

/// Runs the walkthrough and returns the report.
pub async fn walkthrough(server: &str, data_dir: &Path) -> Result<String, Error> {
    let key = auth::find_signing_key(&auth::keys_dir(data_dir))?.ok_or_else(|| {
        format!(
            "no signing key under {}; is this the server's data directory?",
            data_dir.display()
        )
    })?;
    let signer = Signer::load(&key, auth::DEFAULT_ISSUER, auth::DEFAULT_ISSUER)?;
    let now = SystemClock.now();
    let ttl = chrono::Duration::hours(1);
    let channel = Channel::from_shared(server.to_owned())?.connect().await?;

    let scopes = "users:register catalog:write notifications:read audit:read";
    let mut service = As::new(
        &channel,
        &signer.sign("service:demo", Some(scopes), now, ttl)?,
    )?;

    // The provider's catalogue.
    service
        .catalog
        .put_product(pb::PutProductRequest {
            product: Some(pb::Product {
                product_id: HOSTING_PRODUCT.to_string(),
                name: "Starter Hosting".into(),
                kind: pb::ProductKind::Hosting as i32,
                tld: String::new(),
                prices: vec![
                    price(pb::BillingCycle::Monthly, 1_500_000),
                    price(pb::BillingCycle::Annually, 15_000_000),
                ],
            }),
            request_id: "demo-product-hosting".into(),
        })
        .await?;
    service
        .catalog
        .put_product(pb::PutProductRequest {
            product: Some(pb::Product {
                product_id: DOMAIN_PRODUCT.to_string(),
                name: ".co.tz Domain".into(),
                kind: pb::ProductKind::Domain as i32,
                tld: ".co.tz".into(),
                prices: vec![
                    price(pb::BillingCycle::Annually, 3_000_000),
                    price(pb::BillingCycle::Biennially, 5_800_000),
                ],
            }),
            request_id: "demo-product-co-tz".into(),
        })
        .await?;

    // Every person registers; the designer and each client create their own account.
    let register = |email: &'static str, name: &'static str| {
        let mut users = service.users.clone();
        async move {
            let user = users
                .register_user(pb::RegisterUserRequest {
                    email: email.into(),
                    display_name: name.into(),
                    request_id: format!("demo-register-{email}"),
                })
                .await?
                .into_inner()
                .user
                .ok_or("RegisterUser returned no user")?;
            Ok::<_, Error>(user.user_id)
        }
    };
    let designer_id = register(DESIGNER, "Web Designer").await?;
    let mut designer = As::new(&channel, &signer.sign(&designer_id, None, now, ttl)?)?;
    designer
        .accounts
        .create_account(pb::CreateAccountRequest {
            name: "Your Company".into(),
            email: DESIGNER.into(),
            request_id: "demo-create-account".into(),
        })
        .await?;

    let mut clients = Vec::new();
    let mut position = 0;
    for (name, email) in CLIENTS {
        let owner_id = register(email, name).await?;
        let mut owner = As::new(&channel, &signer.sign(&owner_id, None, now, ttl)?)?;
        let account = owner
            .accounts
            .create_account(pb::CreateAccountRequest {
                name: name.into(),
                email: email.into(),
                request_id: "demo-create-account".into(),
            })
            .await?
            .into_inner()
            .account
            .ok_or("CreateAccount returned no account")?;
        let invited = owner
            .invitations
            .invite_user(pb::InviteUserRequest {
                account_id: account.account_id.clone(),
                email: DESIGNER.into(),
                permissions: vec![],
                full_access: true,
                request_id: "demo-invite-designer".into(),
            })
            .await?
            .into_inner();
        position = position.max(invited.position);
        clients.push((name, account.account_id, owner));
    }

    // The designer takes each token from its own notifications and accepts.
    let notices = designer
        .notifications
        .list_notifications(pb::ListNotificationsRequest {
            recipient_email: DESIGNER.into(),
            min_position: position,
            page_size: 500,
            ..Default::default()
        })
        .await?
        .into_inner()
        .notifications;
    for (name, account_id, _) in &clients {
        let token = notices
            .iter()
            .rev()
            .find(|n| &n.account_id == account_id && !n.action_token.is_empty())
            .map(|n| n.action_token.clone())
            .ok_or_else(|| format!("no invitation notice for {name}"))?;
        designer
            .invitations
            .accept_invitation(pb::AcceptInvitationRequest {
                token,
                request_id: format!("demo-accept-{account_id}"),
            })
            .await?;
    }

    // Hosting for ABC Company, ordered and paid by the designer on ABC's behalf.
    let abc = clients[0].1.clone();
    let ordered = designer
        .hosting
        .order_service(pb::OrderServiceRequest {
            account_id: abc.clone(),
            product_id: HOSTING_PRODUCT.to_string(),
            domain: "abc.co.tz".into(),
            billing_cycle: pb::BillingCycle::Annually as i32,
            request_id: "demo-order-abc-hosting".into(),
        })
        .await?
        .into_inner();
    designer
        .billing
        .pay_invoice(pb::PayInvoiceRequest {
            account_id: abc.clone(),
            invoice_id: ordered.invoice_id.clone(),
            amount_minor: 15_000_000,
            reference: "MPESA-DEMO-0001".into(),
            request_id: "demo-pay-abc-hosting".into(),
        })
        .await?;

    // A domain for Star Logistics, ordered and renewed.
    let star = clients[2].1.clone();
    let domain = designer
        .hosting
        .order_service(pb::OrderServiceRequest {
            account_id: star.clone(),
            product_id: DOMAIN_PRODUCT.to_string(),
            domain: "starlogistics.co.tz".into(),
            billing_cycle: pb::BillingCycle::Annually as i32,
            request_id: "demo-order-star-domain".into(),
        })
        .await?
        .into_inner();
    let renewed = designer
        .hosting
        .renew_service(pb::RenewServiceRequest {
            account_id: star.clone(),
            service_id: domain.service_id.clone(),
            request_id: "demo-renew-star-domain".into(),
        })
        .await?
        .into_inner();
    let head = renewed.position.max(ordered.position);

    report(&mut designer, &mut clients[0].2, &abc, head).await
}

async fn report(
    designer: &mut As,
    abc_owner: &mut As,
    abc: &str,
    head: u64,
) -> Result<String, Error> {
    let mut out = String::new();
    let accounts = designer
        .accounts
        .list_accessible_accounts(pb::ListAccessibleAccountsRequest {
            min_position: head,
            ..Default::default()
        })
        .await?
        .into_inner()
        .accounts;
    writeln!(out, "Account switcher of {DESIGNER}")?;
    for a in &accounts {
        let role = pb::Role::try_from(a.role).map_or("?", |r| r.as_str_name());
        writeln!(
            out,
            "  {:<18} {:<7} {}",
            a.name,
            role,
            permission_names(&a.permissions)
        )?;
    }

    let services = designer
        .hosting
        .list_services(pb::ListServicesRequest {
            account_id: abc.into(),
            min_position: head,
            ..Default::default()
        })
        .await?
        .into_inner()
        .services;
    writeln!(out, "\nABC Company: services")?;
    for s in &services {
        let status = pb::ServiceStatus::try_from(s.status).map_or("?", |s| s.as_str_name());
        writeln!(
            out,
            "  {:<16} {:<12} {:<17} next due {}",
            s.product_name,
            s.domain,
            status,
            date(&s.next_due_date)
        )?;
    }

    let invoices = designer
        .billing
        .list_invoices(pb::ListInvoicesRequest {
            account_id: abc.into(),
            min_position: head,
            ..Default::default()
        })
        .await?
        .into_inner();
    writeln!(
        out,
        "\nABC Company: invoices (balance {})",
        money(invoices.balance_minor, "TZS")
    )?;
    for i in &invoices.invoices {
        let status = pb::InvoiceStatus::try_from(i.status).map_or("?", |s| s.as_str_name());
        writeln!(
            out,
            "  #{:<4} {:<7} total {:<16} paid {:<16} due {}",
            i.number,
            status,
            money(i.total_minor, &i.currency),
            money(i.paid_minor, &i.currency),
            date(&i.due_date)
        )?;
    }

    let notices = abc_owner
        .notifications
        .list_notifications(pb::ListNotificationsRequest {
            account_id: abc.into(),
            min_position: head,
            page_size: 500,
            ..Default::default()
        })
        .await?
        .into_inner()
        .notifications;
    writeln!(out, "\nABC Company: notifications")?;
    for n in &notices {
        writeln!(out, "  {:<28} {}", n.recipient_email, n.subject)?;
    }

    let entries = abc_owner
        .audit
        .list_audit_trail(pb::ListAuditTrailRequest {
            account_id: abc.into(),
            min_position: head,
            page_size: 500,
            ..Default::default()
        })
        .await?
        .into_inner()
        .entries;
    writeln!(out, "\nABC Company: audit trail")?;
    for e in &entries {
        let when = e
            .occurred_at
            .as_ref()
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32))
            .map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M:%S").to_string());
        let who = if e.actor_email.is_empty() {
            e.actor_name.clone()
        } else {
            e.actor_email.clone()
        };
        writeln!(
            out,
            "  {:>5}  {when}  {:<28} {:<22} {}",
            e.position, who, e.action, e.request_id
        )?;
    }
    Ok(out)
}
