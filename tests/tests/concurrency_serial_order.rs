//! Fifty writers granting, revoking, ordering and paying on one client account at once: every
//! accepted command is in the log once and whole, and the log's order is a serial order in which
//! each accepted command was allowed, each refused order was refusable, and the final read models
//! equal a fold of the accepted commands in that order.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use onbehalf_events::{AccountEvent, Actor, Permission};
use onbehalf_proto::v1 as pb;
use onbehalf_tests::{
    on_both_backends, request_id, Person, TestServer, DESIGNER, HOSTING_MONTHLY_MINOR,
};
use tonic::Code;
use uuid::Uuid;

const MEMBERS: usize = 5;
const GRANTS: usize = 10;
const REVOKES: usize = 10;
const ORDERS: usize = 20;
const PAYMENTS: usize = 10;

/// One writer's command, as the test sent it.
#[derive(Debug, Clone)]
enum Sent {
    Grant { member: Uuid },
    Revoke { member: Uuid },
    Order { member: Uuid },
    Pay { invoice: Uuid },
}

/// What came back, with the log heads seen just before sending and just after the answer.
#[derive(Debug)]
struct Outcome {
    request_id: String,
    sent: Sent,
    answer: Result<(), Code>,
    head_before: u64,
    head_after: u64,
}

fn uuid(text: &str) -> Uuid {
    Uuid::parse_str(text).expect("the server answers with uuids")
}

async fn send(server: &TestServer, who: &Person, account: &str, sent: Sent) -> Outcome {
    let request_id = request_id();
    let head_before = server.log_head().await;
    let answer = match &sent {
        Sent::Grant { member } | Sent::Revoke { member } => {
            let permissions = vec![pb::Permission::Orders as i32];
            let mut access = who.access();
            if matches!(sent, Sent::Grant { .. }) {
                access
                    .grant_permission(pb::GrantPermissionRequest {
                        account_id: account.into(),
                        user_id: member.to_string(),
                        permissions,
                        request_id: request_id.clone(),
                    })
                    .await
                    .map(|_| ())
            } else {
                access
                    .revoke_permission(pb::RevokePermissionRequest {
                        account_id: account.into(),
                        user_id: member.to_string(),
                        permissions,
                        request_id: request_id.clone(),
                    })
                    .await
                    .map(|_| ())
            }
        }
        Sent::Order { .. } => unreachable!("orders are sent with their product"),
        Sent::Pay { invoice } => who
            .billing()
            .pay_invoice(pb::PayInvoiceRequest {
                account_id: account.into(),
                invoice_id: invoice.to_string(),
                amount_minor: HOSTING_MONTHLY_MINOR,
                reference: "MPESA".into(),
                request_id: request_id.clone(),
            })
            .await
            .map(|_| ()),
    };
    Outcome {
        request_id,
        sent,
        answer: answer.map_err(|s| s.code()),
        head_before,
        head_after: server.log_head().await,
    }
}

async fn order(
    server: &TestServer,
    who: &Person,
    account: &str,
    product_id: &str,
    site: usize,
) -> Outcome {
    let request_id = request_id();
    let head_before = server.log_head().await;
    let answer = who
        .hosting()
        .order_service(pb::OrderServiceRequest {
            account_id: account.into(),
            product_id: product_id.into(),
            domain: format!("site{site}.abc.co.tz"),
            billing_cycle: pb::BillingCycle::Monthly as i32,
            request_id: request_id.clone(),
        })
        .await
        .map(|_| ())
        .map_err(|s| s.code());
    Outcome {
        request_id,
        sent: Sent::Order {
            member: uuid(&who.user_id),
        },
        answer,
        head_before,
        head_after: server.log_head().await,
    }
}

async fn fifty_writers_granting_revoking_ordering_and_paying_follow_one_serial_order(
    server: &TestServer,
) {
    let catalogue = server.seed_catalogue().await;
    let owner = server.register("admin@abc.co.tz", "ABC Company").await;
    let abc = owner
        .create_account("ABC Company", "admin@abc.co.tz")
        .await
        .account_id;
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        let email = if i == 0 {
            DESIGNER.to_string()
        } else {
            format!("helper{i}@yourcompany.com")
        };
        let member = server.register(&email, "Web Designer").await;
        owner
            .bring_in(&abc, &member, &[pb::Permission::Products])
            .await;
        members.push(member);
    }
    let mut unpaid = Vec::new();
    for i in 0..PAYMENTS {
        let ordered = owner
            .hosting()
            .order_service(pb::OrderServiceRequest {
                account_id: abc.clone(),
                product_id: catalogue.hosting_product_id.clone(),
                domain: format!("owner{i}.abc.co.tz"),
                billing_cycle: pb::BillingCycle::Monthly as i32,
                request_id: request_id(),
            })
            .await
            .expect("the owner orders")
            .into_inner();
        unpaid.push(uuid(&ordered.invoice_id));
    }
    let head = server.log_head().await;

    // Fifty writers at once: the owner grants and revokes ORDERS and pays, members order.
    let mut writers: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + '_>>> =
        Vec::new();
    for i in 0..GRANTS {
        let member = uuid(&members[i % MEMBERS].user_id);
        writers.push(Box::pin(send(server, &owner, &abc, Sent::Grant { member })));
    }
    for i in 0..REVOKES {
        let member = uuid(&members[(i + 2) % MEMBERS].user_id);
        writers.push(Box::pin(send(
            server,
            &owner,
            &abc,
            Sent::Revoke { member },
        )));
    }
    for i in 0..ORDERS {
        let product = catalogue.hosting_product_id.as_str();
        writers.push(Box::pin(order(
            server,
            &members[i % MEMBERS],
            &abc,
            product,
            i,
        )));
    }
    for invoice in &unpaid {
        let sent = Sent::Pay { invoice: *invoice };
        writers.push(Box::pin(send(server, &owner, &abc, sent)));
    }
    assert_eq!(writers.len(), 50);
    let outcomes = futures::future::join_all(writers).await;

    // Every answer is an acceptance, or for an order a refusal on the permission.
    for outcome in &outcomes {
        match (&outcome.sent, outcome.answer) {
            (_, Ok(())) => {}
            (Sent::Order { .. }, Err(Code::PermissionDenied)) => {}
            (sent, Err(code)) => panic!("{sent:?} answered {code:?}"),
        }
    }
    assert!(outcomes[GRANTS + REVOKES..][..ORDERS]
        .iter()
        .all(|o| o.head_before >= head && o.head_after >= o.head_before));

    // Each accepted command is in the log once, whole and contiguous; refused ones not at all.
    let events: Vec<_> = server
        .stored_events()
        .await
        .into_iter()
        .filter(|e| e.position > head)
        .collect();
    let positions: Vec<u64> = events.iter().map(|e| e.position).collect();
    assert_eq!(
        positions,
        (head + 1..=head + events.len() as u64).collect::<Vec<_>>()
    );
    let mut by_request: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for event in &events {
        let request = event
            .metadata
            .request_id
            .clone()
            .expect("every command carries its request id");
        by_request
            .entry(request)
            .or_default()
            .push((event.position, event.event_type.clone()));
    }
    let sent_by_request: HashMap<&str, &Outcome> = outcomes
        .iter()
        .map(|o| (o.request_id.as_str(), o))
        .collect();
    for (request, written) in &by_request {
        let outcome = sent_by_request
            .get(request.as_str())
            .unwrap_or_else(|| panic!("the log holds request {request} that nobody sent"));
        assert_eq!(outcome.answer, Ok(()), "a refused command left events");
        let types: Vec<&str> = written.iter().map(|(_, t)| t.as_str()).collect();
        let expected: &[&str] = match outcome.sent {
            Sent::Grant { .. } => &["PermissionsGranted"],
            Sent::Revoke { .. } => &["PermissionsRevoked"],
            Sent::Order { .. } => &["ServiceOrdered", "InvoiceIssued"],
            Sent::Pay { .. } => &["PaymentReceived", "InvoicePaid"],
        };
        assert_eq!(types, expected, "request {request}");
        let first = written[0].0;
        assert_eq!(
            written.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            (first..first + written.len() as u64).collect::<Vec<_>>(),
            "request {request} is interleaved with another command"
        );
    }
    let accepted_orders = outcomes
        .iter()
        .filter(|o| matches!(o.sent, Sent::Order { .. }) && o.answer.is_ok())
        .count();
    let refused_orders = ORDERS - accepted_orders;
    let written_orders = by_request
        .values()
        .filter(|w| w[0].1 == "ServiceOrdered")
        .count();
    assert_eq!(written_orders, accepted_orders);
    let payments = by_request
        .values()
        .filter(|w| w[0].1 == "PaymentReceived")
        .count();
    assert_eq!(payments, PAYMENTS);

    // Replay the log's order as a serial order: each order held ORDERS when it was decided.
    let mut orders_held: HashMap<Uuid, bool> =
        members.iter().map(|m| (uuid(&m.user_id), false)).collect();
    let mut held_at: Vec<(u64, HashMap<Uuid, bool>)> = vec![(head, orders_held.clone())];
    let mut services = PAYMENTS;
    let mut paid = BTreeSet::new();
    for event in &events {
        match event
            .decode::<AccountEvent>()
            .expect("account events decode")
        {
            AccountEvent::PermissionsGranted {
                user_id,
                permissions,
                ..
            }
            | AccountEvent::PermissionsRevoked {
                user_id,
                permissions,
                ..
            } => {
                orders_held.insert(user_id, permissions.contains(Permission::Orders));
            }
            AccountEvent::ServiceOrdered { .. } => {
                let Actor::User(member) = event.metadata.actor else {
                    panic!("orders come from members");
                };
                assert!(
                    orders_held[&member],
                    "an order at {} was accepted without ORDERS",
                    event.position
                );
                services += 1;
            }
            AccountEvent::InvoicePaid { invoice_id } => {
                paid.insert(invoice_id);
            }
            AccountEvent::InvoiceIssued { .. } | AccountEvent::PaymentReceived { .. } => {}
            other => panic!("unexpected event {other:?}"),
        }
        held_at.push((event.position, orders_held.clone()));
    }

    // Each refused order was refusable: its member lacked ORDERS at some moment while it ran.
    for outcome in &outcomes {
        let (Sent::Order { member }, Err(_)) = (&outcome.sent, outcome.answer) else {
            continue;
        };
        let lacked = held_at
            .iter()
            .filter(|(p, _)| *p >= outcome.head_before && *p <= outcome.head_after)
            .any(|(_, held)| !held[member]);
        assert!(
            lacked,
            "an order by {member} was refused while it held ORDERS"
        );
    }

    // The read models equal the fold of the accepted commands in log order.
    let at = server.log_head().await;
    let listed = owner
        .accounts()
        .list_members(pb::ListMembersRequest {
            account_id: abc.clone(),
            page_size: 100,
            min_position: at,
            ..Default::default()
        })
        .await
        .expect("the owner lists members")
        .into_inner();
    for member in &members {
        let row = listed
            .members
            .iter()
            .find(|m| m.user_id == member.user_id)
            .expect("every member is listed");
        let mut expected = vec![pb::Permission::Products as i32];
        if orders_held[&uuid(&member.user_id)] {
            expected.push(pb::Permission::Orders as i32);
        }
        let mut got = row.permissions.clone();
        got.sort_unstable();
        expected.sort_unstable();
        assert_eq!(got, expected, "permissions of {}", member.email);
    }
    let invoices = owner
        .billing()
        .list_invoices(pb::ListInvoicesRequest {
            account_id: abc.clone(),
            page_size: 500,
            min_position: at,
            ..Default::default()
        })
        .await
        .expect("the owner lists invoices")
        .into_inner();
    assert_eq!(invoices.invoices.len(), services);
    let listed_paid: BTreeSet<Uuid> = invoices
        .invoices
        .iter()
        .filter(|i| i.status == pb::InvoiceStatus::Paid as i32)
        .map(|i| uuid(&i.invoice_id))
        .collect();
    assert_eq!(listed_paid, unpaid.iter().copied().collect::<BTreeSet<_>>());
    assert_eq!(listed_paid, paid);
    assert_eq!(
        invoices.balance_minor,
        accepted_orders as i64 * HOSTING_MONTHLY_MINOR
    );
    assert_eq!(accepted_orders + refused_orders, ORDERS);
}

on_both_backends!(fifty_writers_granting_revoking_ordering_and_paying_follow_one_serial_order
    => fifty_writers_granting_revoking_ordering_and_paying_follow_one_serial_order_on_sqlite,
       fifty_writers_granting_revoking_ordering_and_paying_follow_one_serial_order_on_postgres);
