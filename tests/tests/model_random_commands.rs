//! Random sequences of commands by random actors, each answer compared with a small reference
//! model, and the read models rebuilt from the log compared with the model at the end.
//!
//! The model below is written from the API's contract (the proto comments, `docs/api.md` and the
//! design's rules), in plain structs and match arms; it calls no domain code. Every command is
//! sent over gRPC to a real server on a fresh SQLite log, so the whole path a client uses is
//! exercised: authentication, parsing, the executor, the aggregate and the store.
//!
//! The number of cases comes from `PROPTEST_CASES` (64 when unset); failing cases are kept in
//! `proptest-regressions/model_random_commands.txt` and run first on every later run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Duration, Months, NaiveDate, Utc};
use onbehalf::clock::Clock;
use onbehalf_projections::{InvitationLinks, ReadModels};
use onbehalf_proto::v1 as pb;
use onbehalf_tests::{request_id, Clients, Person, TestServer, CURRENCY};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError};
use tonic::{Code, Status};
use uuid::Uuid;

/// How many users each case registers.
const USERS: usize = 4;
/// How long an invitation stays acceptable (the server's default).
const INVITATION_DAYS: i64 = 7;
/// Every permission, as a bit set: bit `i` is the proto value `i + 1`.
const FULL: u16 = (1 << 13) - 1;
/// The monthly and yearly prices of the paid plan, and the free plan's monthly price.
const PAID_MONTHLY: i64 = 1_500_000;
const PAID_ANNUALLY: i64 = 15_000_000;
const FREE_MONTHLY: i64 = 0;

fn bit(p: pb::Permission) -> u16 {
    1 << (p as i32 - 1)
}

fn to_pb(mask: u16) -> Vec<i32> {
    (0..13)
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| i + 1)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Commands as generated: indices that are resolved against the model's state when run.

/// Who issues a command, resolved against the account it is about.
#[derive(Clone, Copy, Debug)]
enum Who {
    /// The account's current owner.
    Owner,
    /// One of the account's current members (by index, modulo their number); a user when it
    /// has none.
    Member(usize),
    /// Any registered user.
    User(usize),
    /// The billing service, holding `billing:write` and nothing else.
    Billing,
}

#[derive(Clone, Copy, Debug)]
enum Plan {
    Paid,
    Free,
}

#[derive(Clone, Copy, Debug)]
enum Cycle {
    Monthly,
    Quarterly,
    Annually,
}

#[derive(Clone, Copy, Debug)]
enum Amount {
    Outstanding,
    Half,
    One,
    TooMuch,
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        user: usize,
    },
    Invite {
        who: Who,
        account: usize,
        invitee: usize,
        perms: u16,
    },
    Accept {
        who: Option<Who>,
        account: usize,
        invitee: usize,
    },
    Decline {
        who: Option<Who>,
        account: usize,
        invitee: usize,
    },
    Resend {
        who: Who,
        account: usize,
        invitee: usize,
    },
    CancelInvitation {
        who: Who,
        account: usize,
        invitee: usize,
    },
    Grant {
        who: Who,
        account: usize,
        target: Who,
        perms: u16,
    },
    Revoke {
        who: Who,
        account: usize,
        target: Who,
        perms: u16,
    },
    Remove {
        who: Who,
        account: usize,
        target: Who,
    },
    Leave {
        who: Who,
        account: usize,
    },
    Transfer {
        who: Who,
        account: usize,
        target: Who,
    },
    Rename {
        who: Who,
        account: usize,
        name: usize,
    },
    Order {
        who: Who,
        account: usize,
        plan: Plan,
        cycle: Cycle,
    },
    Renew {
        who: Who,
        account: usize,
        service: usize,
    },
    CancelService {
        who: Who,
        account: usize,
        service: usize,
    },
    Pay {
        who: Who,
        account: usize,
        invoice: usize,
        amount: Amount,
    },
    Check {
        account: usize,
        user: usize,
        permission: u16,
    },
    Advance {
        days: i64,
    },
}

/// The permissions the generated commands use: those that open commands, and two that open
/// nothing here.
const USED: [pb::Permission; 6] = [
    pb::Permission::Profile,
    pb::Permission::Orders,
    pb::Permission::Invoices,
    pb::Permission::Emails,
    pb::Permission::Quotes,
    pb::Permission::Tickets,
];

fn perms() -> impl Strategy<Value = u16> {
    prop_oneof![
        1 => Just(FULL),
        4 => proptest::sample::subsequence(USED.to_vec(), 1..=3)
            .prop_map(|ps| ps.into_iter().fold(0, |m, p| m | bit(p))),
    ]
}

fn permission() -> impl Strategy<Value = u16> {
    proptest::sample::select(USED.to_vec()).prop_map(bit)
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![
        5 => Just(Who::Owner),
        3 => (0..3usize).prop_map(Who::Member),
        2 => (0..USERS).prop_map(Who::User),
        1 => Just(Who::Billing),
    ]
}

/// The user a command is about: mostly a current member, sometimes the owner or anyone.
fn target() -> impl Strategy<Value = Who> {
    prop_oneof![
        4 => (0..3usize).prop_map(Who::Member),
        1 => Just(Who::Owner),
        1 => (0..USERS).prop_map(Who::User),
    ]
}

/// The actor of an answer to an invitation: `None` is the invitee itself.
fn answerer() -> impl Strategy<Value = Option<Who>> {
    prop_oneof![4 => Just(None), 1 => who().prop_map(Some)]
}

fn op() -> impl Strategy<Value = Op> {
    let account = 0..3usize;
    let user = 0..USERS;
    prop_oneof![
        2 => user.clone().prop_map(|user| Op::Create { user }),
        4 => (who(), account.clone(), user.clone(), perms())
            .prop_map(|(who, account, invitee, perms)| Op::Invite { who, account, invitee, perms }),
        6 => (answerer(), account.clone(), user.clone())
            .prop_map(|(who, account, invitee)| Op::Accept { who, account, invitee }),
        1 => (answerer(), account.clone(), user.clone())
            .prop_map(|(who, account, invitee)| Op::Decline { who, account, invitee }),
        1 => (who(), account.clone(), user.clone())
            .prop_map(|(who, account, invitee)| Op::Resend { who, account, invitee }),
        1 => (who(), account.clone(), user.clone())
            .prop_map(|(who, account, invitee)| Op::CancelInvitation { who, account, invitee }),
        2 => (who(), account.clone(), target(), perms())
            .prop_map(|(who, account, target, perms)| Op::Grant { who, account, target, perms }),
        2 => (who(), account.clone(), target(), perms())
            .prop_map(|(who, account, target, perms)| Op::Revoke { who, account, target, perms }),
        1 => (who(), account.clone(), target())
            .prop_map(|(who, account, target)| Op::Remove { who, account, target }),
        1 => (who(), account.clone()).prop_map(|(who, account)| Op::Leave { who, account }),
        1 => (who(), account.clone(), target())
            .prop_map(|(who, account, target)| Op::Transfer { who, account, target }),
        1 => (who(), account.clone(), 0..2usize)
            .prop_map(|(who, account, name)| Op::Rename { who, account, name }),
        3 => (
            who(),
            account.clone(),
            prop_oneof![3 => Just(Plan::Paid), 1 => Just(Plan::Free)],
            prop_oneof![3 => Just(Cycle::Monthly), 1 => Just(Cycle::Quarterly), 2 => Just(Cycle::Annually)],
        )
            .prop_map(|(who, account, plan, cycle)| Op::Order { who, account, plan, cycle }),
        2 => (who(), account.clone(), 0..4usize)
            .prop_map(|(who, account, service)| Op::Renew { who, account, service }),
        1 => (who(), account.clone(), 0..4usize)
            .prop_map(|(who, account, service)| Op::CancelService { who, account, service }),
        4 => (
            who(),
            account.clone(),
            0..6usize,
            prop_oneof![
                Just(Amount::Outstanding),
                Just(Amount::Half),
                Just(Amount::One),
                Just(Amount::TooMuch)
            ],
        )
            .prop_map(|(who, account, invoice, amount)| Op::Pay { who, account, invoice, amount }),
        2 => (account.clone(), user, permission())
            .prop_map(|(account, user, permission)| Op::Check { account, user, permission }),
        1 => prop_oneof![Just(1i64), Just(3), Just(8)].prop_map(|days| Op::Advance { days }),
    ]
}

// ---------------------------------------------------------------------------------------------
// The reference model.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Actor {
    User(usize),
    Billing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answered {
    Pending,
    Accepted,
    Declined,
    Cancelled,
}

#[derive(Clone, Debug)]
struct Invitation {
    id: String,
    invitee: usize,
    perms: u16,
    answered: Answered,
    expires_at: DateTime<Utc>,
    generation: u32,
}

#[derive(Clone, Debug)]
struct Service {
    id: String,
    price: i64,
    months: u32,
    ordered_on: NaiveDate,
    /// Cycles paid for or billed at order.
    periods: u32,
    cancelled: bool,
    /// The renewal invoice of the cycle starting at the next due date, once issued.
    renewal: Option<usize>,
}

impl Service {
    fn next_due(&self) -> NaiveDate {
        self.ordered_on
            .checked_add_months(Months::new(self.months * self.periods))
            .expect("a date within the calendar")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settlement {
    Unpaid,
    Paid,
    Cancelled,
}

#[derive(Clone, Debug)]
struct Invoice {
    id: String,
    number: u64,
    service: usize,
    renewal: bool,
    total: i64,
    paid: i64,
    status: Settlement,
}

#[derive(Clone, Debug)]
struct Account {
    id: String,
    name: String,
    owner: usize,
    members: BTreeMap<usize, u16>,
    invitations: Vec<Invitation>,
    services: Vec<Service>,
    invoices: Vec<Invoice>,
}

impl Account {
    fn holds(&self, user: usize, perm: u16) -> bool {
        self.owner == user || self.members.get(&user).is_some_and(|p| p & perm == perm)
    }

    fn is_party(&self, user: usize) -> bool {
        self.owner == user || self.members.contains_key(&user)
    }

    /// The newest invitation of the `k`-th user invited here (modulo their number): the one
    /// whose token the newest notice to that user carries.
    fn latest_invitation(&self, k: usize) -> Option<usize> {
        let invitees: BTreeSet<usize> = self.invitations.iter().map(|i| i.invitee).collect();
        let invitee = *invitees.iter().nth(k % invitees.len().max(1))?;
        self.invitations.iter().rposition(|i| i.invitee == invitee)
    }

    fn open_invitation(&self, invitee: usize, now: DateTime<Utc>) -> bool {
        self.invitations
            .iter()
            .any(|i| i.invitee == invitee && i.answered == Answered::Pending && now < i.expires_at)
    }
}

#[derive(Debug, Default)]
struct Model {
    accounts: Vec<Account>,
    invoices_issued: u64,
}

/// What the model expects of one command: its answer, and the change to make once the server
/// has given the ids of what it created.
type Outcome = Result<Change, Code>;

#[derive(Debug)]
enum Change {
    None,
    Create {
        owner: usize,
        name: String,
    },
    Invite {
        account: usize,
        invitee: usize,
        perms: u16,
        expires_at: DateTime<Utc>,
    },
    Accept {
        account: usize,
        invitation: usize,
        user: usize,
    },
    Decline {
        account: usize,
        invitation: usize,
    },
    Resend {
        account: usize,
        invitation: usize,
        expires_at: DateTime<Utc>,
    },
    CancelInvitation {
        account: usize,
        invitation: usize,
    },
    Members {
        account: usize,
        user: usize,
        perms: Option<u16>,
    },
    Transfer {
        account: usize,
        to: usize,
    },
    Rename {
        account: usize,
        name: String,
    },
    Order {
        account: usize,
        price: i64,
        months: u32,
        today: NaiveDate,
    },
    Renew {
        account: usize,
        service: usize,
    },
    CancelService {
        account: usize,
        service: usize,
    },
    Pay {
        account: usize,
        invoice: usize,
        amount: i64,
    },
}

const DENIED: Code = Code::PermissionDenied;
const PRECONDITION: Code = Code::FailedPrecondition;

fn account_name(index: usize, variant: usize) -> String {
    match variant {
        0 => format!("Client {index}"),
        _ => format!("Client {index} Ltd"),
    }
}

impl Model {
    fn owner_only(&self, account: usize, actor: Actor) -> Result<(), Code> {
        match actor {
            Actor::User(u) if self.accounts[account].owner == u => Ok(()),
            _ => Err(DENIED),
        }
    }

    fn needs(&self, account: usize, actor: Actor, perm: u16) -> Result<(), Code> {
        match actor {
            Actor::User(u) if self.accounts[account].holds(u, perm) => Ok(()),
            _ => Err(DENIED),
        }
    }

    fn user_only(actor: Actor) -> Result<usize, Code> {
        match actor {
            Actor::User(u) => Ok(u),
            Actor::Billing => Err(DENIED),
        }
    }

    fn target_member(&self, account: usize, target: usize) -> Result<u16, Code> {
        let a = &self.accounts[account];
        if a.owner == target {
            return Err(PRECONDITION);
        }
        a.members.get(&target).copied().ok_or(Code::NotFound)
    }

    /// Decides a resolved command as the contract says the service must.
    fn decide(&self, cmd: &Resolved, now: DateTime<Utc>) -> Outcome {
        let today = now.date_naive();
        match *cmd {
            Resolved::Create { user, name } => Ok(Change::Create {
                owner: user,
                name: account_name(self.accounts.len(), name),
            }),
            Resolved::Invite {
                actor,
                account,
                invitee,
                perms,
            } => {
                self.owner_only(account, actor)?;
                let a = &self.accounts[account];
                if a.is_party(invitee) || a.open_invitation(invitee, now) {
                    return Err(Code::AlreadyExists);
                }
                Ok(Change::Invite {
                    account,
                    invitee,
                    perms,
                    expires_at: now + Duration::days(INVITATION_DAYS),
                })
            }
            Resolved::Answer {
                actor,
                account,
                invitation,
                accept,
            } => {
                let user = Self::user_only(actor)?;
                let a = &self.accounts[account];
                let i = &a.invitations[invitation];
                if i.answered != Answered::Pending || now >= i.expires_at {
                    return Err(PRECONDITION);
                }
                if !accept {
                    return Ok(Change::Decline {
                        account,
                        invitation,
                    });
                }
                if a.is_party(user) {
                    return Err(Code::AlreadyExists);
                }
                Ok(Change::Accept {
                    account,
                    invitation,
                    user,
                })
            }
            Resolved::Resend {
                actor,
                account,
                invitation,
            } => {
                self.owner_only(account, actor)?;
                let a = &self.accounts[account];
                let i = &a.invitations[invitation];
                if i.answered != Answered::Pending {
                    return Err(PRECONDITION);
                }
                let other_open = a.invitations.iter().enumerate().any(|(k, o)| {
                    k != invitation
                        && o.invitee == i.invitee
                        && o.answered == Answered::Pending
                        && now < o.expires_at
                });
                if other_open {
                    return Err(Code::AlreadyExists);
                }
                Ok(Change::Resend {
                    account,
                    invitation,
                    expires_at: now + Duration::days(INVITATION_DAYS),
                })
            }
            Resolved::CancelInvitation {
                actor,
                account,
                invitation,
            } => {
                self.owner_only(account, actor)?;
                if self.accounts[account].invitations[invitation].answered != Answered::Pending {
                    return Err(PRECONDITION);
                }
                Ok(Change::CancelInvitation {
                    account,
                    invitation,
                })
            }
            Resolved::Grant {
                actor,
                account,
                target,
                perms,
            } => {
                self.owner_only(account, actor)?;
                let held = self.target_member(account, target)?;
                Ok(Change::Members {
                    account,
                    user: target,
                    perms: Some(held | perms),
                })
            }
            Resolved::Revoke {
                actor,
                account,
                target,
                perms,
            } => {
                self.owner_only(account, actor)?;
                let held = self.target_member(account, target)?;
                Ok(Change::Members {
                    account,
                    user: target,
                    perms: Some(held & !perms),
                })
            }
            Resolved::Remove {
                actor,
                account,
                target,
            } => {
                self.owner_only(account, actor)?;
                self.target_member(account, target)?;
                Ok(Change::Members {
                    account,
                    user: target,
                    perms: None,
                })
            }
            Resolved::Leave { actor, account } => {
                let user = Self::user_only(actor)?;
                let a = &self.accounts[account];
                if a.owner == user {
                    return Err(PRECONDITION);
                }
                if !a.members.contains_key(&user) {
                    return Err(DENIED);
                }
                Ok(Change::Members {
                    account,
                    user,
                    perms: None,
                })
            }
            Resolved::Transfer {
                actor,
                account,
                target,
            } => {
                self.owner_only(account, actor)?;
                let a = &self.accounts[account];
                if a.owner == target || !a.members.contains_key(&target) {
                    return Err(PRECONDITION);
                }
                Ok(Change::Transfer {
                    account,
                    to: target,
                })
            }
            Resolved::Rename {
                actor,
                account,
                name,
            } => {
                self.needs(account, actor, bit(pb::Permission::Profile))?;
                Ok(Change::Rename {
                    account,
                    name: account_name(account, name),
                })
            }
            Resolved::Order {
                actor,
                account,
                plan,
                cycle,
            } => {
                self.needs(account, actor, bit(pb::Permission::Orders))?;
                let (price, months) = match (plan, cycle) {
                    (Plan::Paid, Cycle::Monthly) => (PAID_MONTHLY, 1),
                    (Plan::Paid, Cycle::Annually) => (PAID_ANNUALLY, 12),
                    (Plan::Free, Cycle::Monthly) => (FREE_MONTHLY, 1),
                    _ => return Err(Code::InvalidArgument),
                };
                Ok(Change::Order {
                    account,
                    price,
                    months,
                    today,
                })
            }
            Resolved::Renew {
                actor,
                account,
                service,
            } => {
                self.needs(account, actor, bit(pb::Permission::Orders))?;
                let s = &self.accounts[account].services[service];
                if s.cancelled {
                    return Err(PRECONDITION);
                }
                if s.renewal.is_some() {
                    return Ok(Change::None);
                }
                Ok(Change::Renew { account, service })
            }
            Resolved::CancelService {
                actor,
                account,
                service,
            } => {
                self.needs(account, actor, bit(pb::Permission::Orders))?;
                if self.accounts[account].services[service].cancelled {
                    return Err(PRECONDITION);
                }
                Ok(Change::CancelService { account, service })
            }
            Resolved::Pay {
                actor,
                account,
                invoice,
                amount,
            } => {
                if actor != Actor::Billing {
                    self.needs(account, actor, bit(pb::Permission::Invoices))?;
                }
                let i = &self.accounts[account].invoices[invoice];
                if i.status != Settlement::Unpaid || amount > i.total - i.paid {
                    return Err(PRECONDITION);
                }
                Ok(Change::Pay {
                    account,
                    invoice,
                    amount,
                })
            }
        }
    }

    /// Applies an accepted change; `ids` are what the server created, in the order it names them.
    fn apply(&mut self, change: Change, ids: &[String]) {
        match change {
            Change::None => {}
            Change::Create { owner, name } => self.accounts.push(Account {
                id: ids[0].clone(),
                name,
                owner,
                members: BTreeMap::new(),
                invitations: Vec::new(),
                services: Vec::new(),
                invoices: Vec::new(),
            }),
            Change::Invite {
                account,
                invitee,
                perms,
                expires_at,
            } => self.accounts[account].invitations.push(Invitation {
                id: ids[0].clone(),
                invitee,
                perms,
                answered: Answered::Pending,
                expires_at,
                generation: 0,
            }),
            Change::Accept {
                account,
                invitation,
                user,
            } => {
                let a = &mut self.accounts[account];
                a.invitations[invitation].answered = Answered::Accepted;
                let perms = a.invitations[invitation].perms;
                a.members.insert(user, perms);
            }
            Change::Decline {
                account,
                invitation,
            } => {
                self.accounts[account].invitations[invitation].answered = Answered::Declined;
            }
            Change::Resend {
                account,
                invitation,
                expires_at,
            } => {
                let i = &mut self.accounts[account].invitations[invitation];
                i.generation += 1;
                i.expires_at = expires_at;
            }
            Change::CancelInvitation {
                account,
                invitation,
            } => {
                self.accounts[account].invitations[invitation].answered = Answered::Cancelled;
            }
            Change::Members {
                account,
                user,
                perms,
            } => {
                let members = &mut self.accounts[account].members;
                match perms {
                    Some(p) => members.insert(user, p),
                    None => members.remove(&user),
                };
            }
            Change::Transfer { account, to } => {
                let a = &mut self.accounts[account];
                a.members.remove(&to);
                a.members.insert(a.owner, FULL);
                a.owner = to;
            }
            Change::Rename { account, name } => self.accounts[account].name = name,
            Change::Order {
                account,
                price,
                months,
                today,
            } => {
                self.invoices_issued += 1;
                let a = &mut self.accounts[account];
                a.services.push(Service {
                    id: ids[0].clone(),
                    price,
                    months,
                    ordered_on: today,
                    periods: 1,
                    cancelled: false,
                    renewal: None,
                });
                a.invoices.push(Invoice {
                    id: ids[1].clone(),
                    number: self.invoices_issued,
                    service: a.services.len() - 1,
                    renewal: false,
                    total: price,
                    paid: 0,
                    // A free invoice is settled as it is issued.
                    status: if price == 0 {
                        Settlement::Paid
                    } else {
                        Settlement::Unpaid
                    },
                });
            }
            Change::Renew { account, service } => {
                self.invoices_issued += 1;
                let a = &mut self.accounts[account];
                let price = a.services[service].price;
                a.invoices.push(Invoice {
                    id: ids[0].clone(),
                    number: self.invoices_issued,
                    service,
                    renewal: true,
                    total: price,
                    paid: 0,
                    status: if price == 0 {
                        Settlement::Paid
                    } else {
                        Settlement::Unpaid
                    },
                });
                let s = &mut a.services[service];
                if price == 0 {
                    s.periods += 1;
                } else {
                    s.renewal = Some(a.invoices.len() - 1);
                }
            }
            Change::CancelService { account, service } => {
                let a = &mut self.accounts[account];
                a.services[service].cancelled = true;
                for i in a.invoices.iter_mut() {
                    if i.service == service && i.status == Settlement::Unpaid {
                        i.status = Settlement::Cancelled;
                    }
                }
            }
            Change::Pay {
                account,
                invoice,
                amount,
            } => {
                let a = &mut self.accounts[account];
                let i = &mut a.invoices[invoice];
                i.paid += amount;
                if i.paid == i.total {
                    i.status = Settlement::Paid;
                    if i.renewal {
                        // Paying a cycle's renewal in full extends the service by that cycle.
                        let s = &mut a.services[i.service];
                        s.periods += 1;
                        s.renewal = None;
                    }
                }
            }
        }
    }
}

/// A generated command with its indices resolved against the model.
#[derive(Clone, Copy, Debug)]
enum Resolved {
    Create {
        user: usize,
        name: usize,
    },
    Invite {
        actor: Actor,
        account: usize,
        invitee: usize,
        perms: u16,
    },
    Answer {
        actor: Actor,
        account: usize,
        invitation: usize,
        accept: bool,
    },
    Resend {
        actor: Actor,
        account: usize,
        invitation: usize,
    },
    CancelInvitation {
        actor: Actor,
        account: usize,
        invitation: usize,
    },
    Grant {
        actor: Actor,
        account: usize,
        target: usize,
        perms: u16,
    },
    Revoke {
        actor: Actor,
        account: usize,
        target: usize,
        perms: u16,
    },
    Remove {
        actor: Actor,
        account: usize,
        target: usize,
    },
    Leave {
        actor: Actor,
        account: usize,
    },
    Transfer {
        actor: Actor,
        account: usize,
        target: usize,
    },
    Rename {
        actor: Actor,
        account: usize,
        name: usize,
    },
    Order {
        actor: Actor,
        account: usize,
        plan: Plan,
        cycle: Cycle,
    },
    Renew {
        actor: Actor,
        account: usize,
        service: usize,
    },
    CancelService {
        actor: Actor,
        account: usize,
        service: usize,
    },
    Pay {
        actor: Actor,
        account: usize,
        invoice: usize,
        amount: i64,
    },
}

impl Model {
    fn actor(&self, account: usize, who: Who) -> Actor {
        let a = &self.accounts[account];
        match who {
            Who::Owner => Actor::User(a.owner),
            Who::Member(k) if !a.members.is_empty() => Actor::User(
                *a.members
                    .keys()
                    .nth(k % a.members.len())
                    .expect("k is in range"),
            ),
            Who::Member(k) | Who::User(k) => Actor::User(k % USERS),
            Who::Billing => Actor::Billing,
        }
    }

    /// The user a command is about.
    fn user(&self, account: usize, who: Who) -> usize {
        match self.actor(account, who) {
            Actor::User(u) => u,
            Actor::Billing => 0,
        }
    }

    /// Resolves a generated command, or `None` when it names what does not exist yet.
    fn resolve(&self, op: &Op) -> Option<Resolved> {
        let n = self.accounts.len();
        let acc = |k: usize| (n > 0).then(|| k % n);
        Some(match *op {
            Op::Create { user } => Resolved::Create { user, name: 0 },
            Op::Invite {
                who,
                account,
                invitee,
                perms,
            } => {
                let account = acc(account)?;
                Resolved::Invite {
                    actor: self.actor(account, who),
                    account,
                    invitee,
                    perms,
                }
            }
            Op::Accept {
                who,
                account,
                invitee,
            }
            | Op::Decline {
                who,
                account,
                invitee,
            } => {
                let account = acc(account)?;
                let invitation = self.accounts[account].latest_invitation(invitee)?;
                let invitee = self.accounts[account].invitations[invitation].invitee;
                let actor = who.map_or(Actor::User(invitee), |w| self.actor(account, w));
                let accept = matches!(op, Op::Accept { .. });
                Resolved::Answer {
                    actor,
                    account,
                    invitation,
                    accept,
                }
            }
            Op::Resend {
                who,
                account,
                invitee,
            } => {
                let account = acc(account)?;
                let invitation = self.accounts[account].latest_invitation(invitee)?;
                Resolved::Resend {
                    actor: self.actor(account, who),
                    account,
                    invitation,
                }
            }
            Op::CancelInvitation {
                who,
                account,
                invitee,
            } => {
                let account = acc(account)?;
                let invitation = self.accounts[account].latest_invitation(invitee)?;
                Resolved::CancelInvitation {
                    actor: self.actor(account, who),
                    account,
                    invitation,
                }
            }
            Op::Grant {
                who,
                account,
                target,
                perms,
            } => {
                let account = acc(account)?;
                Resolved::Grant {
                    actor: self.actor(account, who),
                    account,
                    target: self.user(account, target),
                    perms,
                }
            }
            Op::Revoke {
                who,
                account,
                target,
                perms,
            } => {
                let account = acc(account)?;
                Resolved::Revoke {
                    actor: self.actor(account, who),
                    account,
                    target: self.user(account, target),
                    perms,
                }
            }
            Op::Remove {
                who,
                account,
                target,
            } => {
                let account = acc(account)?;
                Resolved::Remove {
                    actor: self.actor(account, who),
                    account,
                    target: self.user(account, target),
                }
            }
            Op::Leave { who, account } => {
                let account = acc(account)?;
                Resolved::Leave {
                    actor: self.actor(account, who),
                    account,
                }
            }
            Op::Transfer {
                who,
                account,
                target,
            } => {
                let account = acc(account)?;
                Resolved::Transfer {
                    actor: self.actor(account, who),
                    account,
                    target: self.user(account, target),
                }
            }
            Op::Rename { who, account, name } => {
                let account = acc(account)?;
                Resolved::Rename {
                    actor: self.actor(account, who),
                    account,
                    name,
                }
            }
            Op::Order {
                who,
                account,
                plan,
                cycle,
            } => {
                let account = acc(account)?;
                Resolved::Order {
                    actor: self.actor(account, who),
                    account,
                    plan,
                    cycle,
                }
            }
            Op::Renew {
                who,
                account,
                service,
            }
            | Op::CancelService {
                who,
                account,
                service,
            } => {
                let account = acc(account)?;
                let count = self.accounts[account].services.len();
                let service = (count > 0).then(|| service % count)?;
                let actor = self.actor(account, who);
                if matches!(op, Op::Renew { .. }) {
                    Resolved::Renew {
                        actor,
                        account,
                        service,
                    }
                } else {
                    Resolved::CancelService {
                        actor,
                        account,
                        service,
                    }
                }
            }
            Op::Pay {
                who,
                account,
                invoice,
                amount,
            } => {
                let account = acc(account)?;
                let invoices = &self.accounts[account].invoices;
                let invoice = (!invoices.is_empty()).then(|| invoice % invoices.len())?;
                let i = &invoices[invoice];
                let outstanding = i.total - i.paid;
                let amount = match amount {
                    Amount::Outstanding => outstanding,
                    Amount::Half => outstanding / 2,
                    Amount::One => 1,
                    Amount::TooMuch => outstanding + 1,
                }
                // The API refuses amounts below 1 before deciding; the model sends none.
                .max(1);
                Resolved::Pay {
                    actor: self.actor(account, who),
                    account,
                    invoice,
                    amount,
                }
            }
            Op::Check { .. } | Op::Advance { .. } => return None,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Driving the server.

struct World<'a> {
    server: &'a TestServer,
    users: Vec<Person>,
    billing: Clients,
    checker: Clients,
    paid_plan: String,
    free_plan: String,
}

fn permission_of(mask: u16) -> i32 {
    mask.trailing_zeros() as i32 + 1
}

impl World<'_> {
    fn clients(&self, actor: Actor) -> &Clients {
        match actor {
            Actor::User(u) => &self.users[u].clients,
            Actor::Billing => &self.billing,
        }
    }

    fn email(user: usize) -> String {
        format!("user{user}@yourcompany.com")
    }

    /// The acceptance token of the newest invitation notice for `invitee` in `account_id`, as
    /// the mailer sees it.
    async fn token(&self, account_id: &str, invitee: usize) -> String {
        let head = self.server.log_head().await;
        self.server
            .admin()
            .notifications()
            .list_notifications(pb::ListNotificationsRequest {
                recipient_email: Self::email(invitee),
                page_size: 500,
                min_position: head,
                ..Default::default()
            })
            .await
            .expect("the mailer reads notifications")
            .into_inner()
            .notifications
            .into_iter()
            .filter(|n| {
                n.account_id == account_id
                    && n.category == pb::NotificationCategory::Invitation as i32
            })
            .max_by_key(|n| n.position)
            .map(|n| n.action_token)
            .expect("an invitation was sent")
    }

    /// Sends a resolved command; answers the ids it created.
    async fn send(&self, model: &Model, cmd: &Resolved) -> Result<Vec<String>, Status> {
        let acc = |k: usize| model.accounts[k].id.clone();
        match *cmd {
            Resolved::Create { user, name } => self.users[user]
                .accounts()
                .create_account(pb::CreateAccountRequest {
                    name: account_name(model.accounts.len(), name),
                    email: Self::email(user),
                    request_id: request_id(),
                })
                .await
                .map(|r| vec![r.into_inner().account.expect("an account").account_id]),
            Resolved::Invite {
                actor,
                account,
                invitee,
                perms,
            } => {
                let full = perms == FULL;
                self.clients(actor)
                    .invitations()
                    .invite_user(pb::InviteUserRequest {
                        account_id: acc(account),
                        email: Self::email(invitee),
                        permissions: if full { vec![] } else { to_pb(perms) },
                        full_access: full,
                        request_id: request_id(),
                    })
                    .await
                    .map(|r| {
                        vec![
                            r.into_inner()
                                .invitation
                                .expect("an invitation")
                                .invitation_id,
                        ]
                    })
            }
            Resolved::Answer {
                actor,
                account,
                invitation,
                accept,
            } => {
                let a = &model.accounts[account];
                let token = self.token(&a.id, a.invitations[invitation].invitee).await;
                let c = self.clients(actor).invitations();
                let request_id = request_id();
                if accept {
                    let mut c = c;
                    c.accept_invitation(pb::AcceptInvitationRequest { token, request_id })
                        .await
                        .map(|_| vec![])
                } else {
                    let mut c = c;
                    c.decline_invitation(pb::DeclineInvitationRequest { token, request_id })
                        .await
                        .map(|_| vec![])
                }
            }
            Resolved::Resend {
                actor,
                account,
                invitation,
            } => self
                .clients(actor)
                .invitations()
                .resend_invitation(pb::ResendInvitationRequest {
                    account_id: acc(account),
                    invitation_id: model.accounts[account].invitations[invitation].id.clone(),
                    request_id: request_id(),
                })
                .await
                .map(|_| vec![]),
            Resolved::CancelInvitation {
                actor,
                account,
                invitation,
            } => self
                .clients(actor)
                .invitations()
                .cancel_invitation(pb::CancelInvitationRequest {
                    account_id: acc(account),
                    invitation_id: model.accounts[account].invitations[invitation].id.clone(),
                    request_id: request_id(),
                })
                .await
                .map(|_| vec![]),
            Resolved::Grant {
                actor,
                account,
                target,
                perms,
            } => self
                .clients(actor)
                .access()
                .grant_permission(pb::GrantPermissionRequest {
                    account_id: acc(account),
                    user_id: self.users[target].user_id.clone(),
                    permissions: to_pb(perms),
                    request_id: request_id(),
                })
                .await
                .map(|_| vec![]),
            Resolved::Revoke {
                actor,
                account,
                target,
                perms,
            } => self
                .clients(actor)
                .access()
                .revoke_permission(pb::RevokePermissionRequest {
                    account_id: acc(account),
                    user_id: self.users[target].user_id.clone(),
                    permissions: to_pb(perms),
                    request_id: request_id(),
                })
                .await
                .map(|_| vec![]),
            Resolved::Remove {
                actor,
                account,
                target,
            } => self
                .clients(actor)
                .access()
                .revoke_access(pb::RevokeAccessRequest {
                    account_id: acc(account),
                    user_id: self.users[target].user_id.clone(),
                    request_id: request_id(),
                })
                .await
                .map(|_| vec![]),
            Resolved::Leave { actor, account } => self
                .clients(actor)
                .access()
                .leave_account(pb::LeaveAccountRequest {
                    account_id: acc(account),
                    request_id: request_id(),
                })
                .await
                .map(|_| vec![]),
            Resolved::Transfer {
                actor,
                account,
                target,
            } => self
                .clients(actor)
                .accounts()
                .transfer_ownership(pb::TransferOwnershipRequest {
                    account_id: acc(account),
                    new_owner_user_id: self.users[target].user_id.clone(),
                    request_id: request_id(),
                })
                .await
                .map(|_| vec![]),
            Resolved::Rename {
                actor,
                account,
                name,
            } => self
                .clients(actor)
                .accounts()
                .update_account_profile(pb::UpdateAccountProfileRequest {
                    account_id: acc(account),
                    name: account_name(account, name),
                    email: format!("billing{account}@client.co.tz"),
                    request_id: request_id(),
                })
                .await
                .map(|_| vec![]),
            Resolved::Order {
                actor,
                account,
                plan,
                cycle,
            } => self
                .clients(actor)
                .hosting()
                .order_service(pb::OrderServiceRequest {
                    account_id: acc(account),
                    product_id: match plan {
                        Plan::Paid => self.paid_plan.clone(),
                        Plan::Free => self.free_plan.clone(),
                    },
                    domain: String::new(),
                    billing_cycle: match cycle {
                        Cycle::Monthly => pb::BillingCycle::Monthly,
                        Cycle::Quarterly => pb::BillingCycle::Quarterly,
                        Cycle::Annually => pb::BillingCycle::Annually,
                    } as i32,
                    request_id: request_id(),
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    vec![r.service_id, r.invoice_id]
                }),
            Resolved::Renew {
                actor,
                account,
                service,
            } => self
                .clients(actor)
                .hosting()
                .renew_service(pb::RenewServiceRequest {
                    account_id: acc(account),
                    service_id: model.accounts[account].services[service].id.clone(),
                    request_id: request_id(),
                })
                .await
                .map(|r| vec![r.into_inner().invoice_id]),
            Resolved::CancelService {
                actor,
                account,
                service,
            } => self
                .clients(actor)
                .hosting()
                .cancel_service(pb::CancelServiceRequest {
                    account_id: acc(account),
                    service_id: model.accounts[account].services[service].id.clone(),
                    request_id: request_id(),
                })
                .await
                .map(|_| vec![]),
            Resolved::Pay {
                actor,
                account,
                invoice,
                amount,
            } => self
                .clients(actor)
                .billing()
                .pay_invoice(pb::PayInvoiceRequest {
                    account_id: acc(account),
                    invoice_id: model.accounts[account].invoices[invoice].id.clone(),
                    amount_minor: amount,
                    reference: "MPESA-MODEL".into(),
                    request_id: request_id(),
                })
                .await
                .map(|_| vec![]),
        }
    }
}

fn fail(message: String) -> TestCaseError {
    TestCaseError::fail(message)
}

async fn setup(server: &TestServer) -> World<'_> {
    let catalog = server.service("catalogue", &["catalog:write"]).catalog();
    let put = |name: &str, prices: Vec<(pb::BillingCycle, i64)>| {
        let mut catalog = catalog.clone();
        let product = pb::Product {
            product_id: String::new(),
            name: name.into(),
            kind: pb::ProductKind::Hosting as i32,
            tld: String::new(),
            prices: prices
                .into_iter()
                .map(|(cycle, amount_minor)| pb::Price {
                    billing_cycle: cycle as i32,
                    amount_minor,
                    currency: CURRENCY.into(),
                })
                .collect(),
        };
        async move {
            catalog
                .put_product(pb::PutProductRequest {
                    product: Some(product),
                    request_id: request_id(),
                })
                .await
                .expect("the product is put")
                .into_inner()
                .product
                .expect("a product")
                .product_id
        }
    };
    let paid_plan = put(
        "Starter Hosting",
        vec![
            (pb::BillingCycle::Monthly, PAID_MONTHLY),
            (pb::BillingCycle::Annually, PAID_ANNUALLY),
        ],
    )
    .await;
    let free_plan = put(
        "Trial Hosting",
        vec![(pb::BillingCycle::Monthly, FREE_MONTHLY)],
    )
    .await;
    let mut users = Vec::new();
    for u in 0..USERS {
        users.push(
            server
                .register(&World::email(u), &format!("User {u}"))
                .await,
        );
    }
    World {
        server,
        users,
        billing: server.service("billing", &["billing:write"]),
        checker: server.service("ticket-desk", &["access:check"]),
        paid_plan,
        free_plan,
    }
}

/// Links for a rebuild that compares no notification bodies.
#[derive(Debug)]
struct NoLinks;

impl InvitationLinks for NoLinks {
    fn token(&self, _: Uuid, invitation_id: Uuid, generation: u32) -> String {
        format!("{invitation_id}.{generation}")
    }

    fn accept_url(&self, token: &str) -> String {
        format!("about:blank?token={token}")
    }
}

/// Runs one generated sequence against a fresh server and the model.
async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let server = TestServer::sqlite().await;
    let world = setup(&server).await;
    let mut model = Model::default();

    for (step, op) in ops.iter().enumerate() {
        let now = server.clock.now();
        match *op {
            Op::Advance { days } => {
                server.clock.advance(Duration::days(days));
                continue;
            }
            Op::Check {
                account,
                user,
                permission,
            } => {
                if model.accounts.is_empty() {
                    continue;
                }
                let a = &model.accounts[account % model.accounts.len()];
                let allowed = world
                    .checker
                    .access()
                    .check_permission(pb::CheckPermissionRequest {
                        account_id: a.id.clone(),
                        user_id: world.users[user].user_id.clone(),
                        permission: permission_of(permission),
                        min_position: 0,
                    })
                    .await
                    .map_err(|s| {
                        fail(format!("step {step} {op:?}: CheckPermission failed: {s:?}"))
                    })?
                    .into_inner()
                    .allowed;
                prop_assert_eq!(allowed, a.holds(user, permission), "step {} {:?}", step, op);
                continue;
            }
            _ => {}
        }
        let Some(cmd) = model.resolve(op) else {
            continue;
        };
        let expected = model.decide(&cmd, now);
        let head = server.log_head().await;
        let answer = world.send(&model, &cmd).await;
        match (expected, answer) {
            (Ok(change), Ok(ids)) => model.apply(change, &ids),
            (Err(code), Err(status)) => {
                prop_assert_eq!(
                    status.code(),
                    code,
                    "step {} {:?}: {}",
                    step,
                    cmd,
                    status.message()
                );
                prop_assert_eq!(server.log_head().await, head, "step {} {:?}: a refusal appended", step, cmd);
            }
            (Ok(change), Err(status)) => {
                return Err(fail(format!(
                    "step {step} {cmd:?}: the model accepts ({change:?}), the server answered {status:?}"
                )))
            }
            (Err(code), Ok(_)) => {
                return Err(fail(format!(
                    "step {step} {cmd:?}: the model refuses with {code:?}, the server accepted"
                )))
            }
        }
    }

    compare_replay(&server, &world, &model).await
}

/// Rebuilds the read models from the log alone and compares them with the model.
async fn compare_replay(
    server: &TestServer,
    world: &World<'_>,
    model: &Model,
) -> Result<(), TestCaseError> {
    let mut models = ReadModels::new(Arc::new(NoLinks));
    for event in server.stored_events().await {
        models
            .apply(&event)
            .map_err(|e| fail(format!("the log does not replay: {e}")))?;
    }
    let now = server.clock.now();
    let user_index: BTreeMap<Uuid, usize> = world
        .users
        .iter()
        .enumerate()
        .map(|(i, p)| (p.user_id.parse().expect("a user id"), i))
        .collect();
    let mask = |set: &onbehalf_events::PermissionSet| -> u16 {
        set.iter()
            .map(|p| {
                onbehalf_events::Permission::ALL
                    .iter()
                    .position(|q| *q == p)
                    .expect("a known permission")
            })
            .fold(0, |m, i| m | (1 << i))
    };

    // The account switcher of every user.
    for (u, person) in world.users.iter().enumerate() {
        let user_id: Uuid = person.user_id.parse().expect("a user id");
        let replayed: BTreeSet<(String, bool, u16)> = models
            .accounts
            .accessible_accounts(user_id)
            .iter()
            .map(|a| {
                (
                    a.account_id.to_string(),
                    a.role == onbehalf_projections::Role::Owner,
                    mask(&a.permissions),
                )
            })
            .collect();
        let expected: BTreeSet<(String, bool, u16)> = model
            .accounts
            .iter()
            .filter_map(|a| {
                if a.owner == u {
                    Some((a.id.clone(), true, FULL))
                } else {
                    a.members.get(&u).map(|p| (a.id.clone(), false, *p))
                }
            })
            .collect();
        prop_assert_eq!(replayed, expected, "the switcher of user {}", u);
    }

    let mut numbers = Vec::new();
    for a in &model.accounts {
        let id: Uuid = a.id.parse().expect("an account id");
        let view = models
            .accounts
            .account(id)
            .ok_or_else(|| fail(format!("account {} is missing after the replay", a.id)))?;
        prop_assert_eq!(view.name.to_string(), a.name.clone());
        prop_assert_eq!(user_index.get(&view.owner_user_id).copied(), Some(a.owner));

        let members: BTreeMap<usize, (bool, u16)> = models
            .accounts
            .members(id)
            .iter()
            .map(|m| {
                (
                    user_index[&m.user_id],
                    (
                        m.role == onbehalf_projections::Role::Owner,
                        mask(&m.permissions),
                    ),
                )
            })
            .collect();
        let mut expected: BTreeMap<usize, (bool, u16)> =
            a.members.iter().map(|(u, p)| (*u, (false, *p))).collect();
        expected.insert(a.owner, (true, FULL));
        prop_assert_eq!(members, expected, "members of {}", a.id);

        let invitations: Vec<(String, String, u32)> = models
            .accounts
            .invitations(id, now)
            .iter()
            .map(|i| {
                (
                    i.invitation_id.to_string(),
                    format!("{:?}", i.state),
                    i.generation,
                )
            })
            .collect();
        let expected: Vec<(String, String, u32)> = a
            .invitations
            .iter()
            .map(|i| {
                let state = match i.answered {
                    Answered::Pending if now >= i.expires_at => "Expired",
                    Answered::Pending => "Pending",
                    Answered::Accepted => "Accepted",
                    Answered::Declined => "Declined",
                    Answered::Cancelled => "Cancelled",
                };
                (i.id.clone(), state.to_owned(), i.generation)
            })
            .collect();
        prop_assert_eq!(invitations, expected, "invitations of {}", a.id);

        let services: BTreeMap<String, (bool, NaiveDate)> = models
            .billing
            .services(id)
            .iter()
            .map(|s| {
                (
                    s.service_id.to_string(),
                    (
                        s.status == onbehalf_projections::ServiceStatus::Cancelled,
                        s.next_due_date,
                    ),
                )
            })
            .collect();
        let expected: BTreeMap<String, (bool, NaiveDate)> = a
            .services
            .iter()
            .map(|s| (s.id.clone(), (s.cancelled, s.next_due())))
            .collect();
        prop_assert_eq!(services, expected, "services of {}", a.id);

        let invoices: BTreeMap<String, (u64, String, i64, i64, String)> = models
            .billing
            .invoices(id)
            .iter()
            .map(|i| {
                (
                    i.invoice_id.to_string(),
                    (
                        i.number,
                        format!("{:?}", i.status),
                        i.total_minor,
                        i.paid_minor,
                        i.service_id.to_string(),
                    ),
                )
            })
            .collect();
        let expected: BTreeMap<String, (u64, String, i64, i64, String)> = a
            .invoices
            .iter()
            .map(|i| {
                (
                    i.id.clone(),
                    (
                        i.number,
                        format!("{:?}", i.status),
                        i.total,
                        i.paid,
                        a.services[i.service].id.clone(),
                    ),
                )
            })
            .collect();
        prop_assert_eq!(invoices, expected, "invoices of {}", a.id);
        numbers.extend(a.invoices.iter().map(|i| i.number));

        let balance: i64 = a
            .invoices
            .iter()
            .filter(|i| i.status == Settlement::Unpaid)
            .map(|i| i.total - i.paid)
            .sum();
        prop_assert_eq!(
            models.billing.balance_minor(id),
            balance,
            "balance of {}",
            a.id
        );
    }
    numbers.sort_unstable();
    prop_assert_eq!(numbers, (1..=model.invoices_issued).collect::<Vec<_>>());
    Ok(())
}

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/model_random_commands.txt",
        ))),
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_commands_are_decided_as_the_model_decides_and_replay_to_its_state(
        ops in proptest::collection::vec(op(), 1..60)
    ) {
        // Two client accounts exist from the start, so that few commands name none.
        let ops = [Op::Create { user: 0 }, Op::Create { user: 1 }].into_iter().chain(ops).collect();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(run(ops))?;
    }
}
