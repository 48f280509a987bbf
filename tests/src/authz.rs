//! The authorisation table: for every RPC of the gRPC contract, the answer each kind of caller
//! gets when the request is otherwise valid.
//!
//! The table is the specification; `tests/authz_table.rs` drives every RPC with every role
//! against the running server and compares each answer's code with it, and also checks that
//! every RPC the contract declares has a row here.

use onbehalf_proto::v1 as pb;
use pb::Permission as P;
use tonic::Code;
use Kind::{Mutating as M, Read as R};

/// Who calls an RPC, relative to the client account the request is about.
///
/// "The needed permission" is the first of the row's [`Rule::permissions`]; a row that names
/// none (owner-only or open RPCs) gives "with" full access and "without" only `QUOTES`, a
/// permission that guards nothing in this service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The account's owner.
    Owner,
    /// A member holding exactly the needed permission.
    MemberWith,
    /// A member holding every permission except the ones the row names.
    MemberWithout,
    /// A user who was a member with full access until the owner removed it.
    FormerMember,
    /// A registered user with no relation to the account.
    Stranger,
    /// A service token (`service:<name>`) holding the row's scope; for a row that names no
    /// scope, every scope there is.
    ServiceScoped,
    /// A service token holding every scope except the row's; for a row that names no scope,
    /// none at all.
    ServiceUnscoped,
    /// A provider staff token (`staff:<name>`).
    Staff,
}

/// Every role, in the order of [`Rule::answers`].
pub const ROLES: [Role; 8] = [
    Role::Owner,
    Role::MemberWith,
    Role::MemberWithout,
    Role::FormerMember,
    Role::Stranger,
    Role::ServiceScoped,
    Role::ServiceUnscoped,
    Role::Staff,
];

/// Whether an accepted call may append to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A command: accepted, it appends (or changes nothing); refused, it appends nothing.
    Mutating,
    /// A read: it never appends.
    Read,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// The gRPC service, without the package (`AccessService`).
    pub service: &'static str,
    /// The RPC (`GrantPermission`).
    pub method: &'static str,
    /// Command or read.
    pub kind: Kind,
    /// The permissions a member may rely on, any one of them sufficing; empty when no member
    /// permission opens the RPC (owner-only RPCs, or RPCs open to every member or every user).
    pub permissions: &'static [pb::Permission],
    /// The service scope that opens the RPC to service tokens, if any.
    pub scope: Option<&'static str>,
    /// The code each role gets, in the order of [`ROLES`]; `Code::Ok` is an accepted call.
    pub answers: [Code; 8],
}

impl Rule {
    /// The answer `role` gets.
    pub fn answer(&self, role: Role) -> Code {
        let index = ROLES
            .iter()
            .position(|r| *r == role)
            .unwrap_or(ROLES.len() - 1);
        self.answers[index]
    }

    /// `package.Service/Method`, as gRPC names the RPC on the wire.
    pub fn path(&self) -> String {
        format!("/onbehalf.v1.{}/{}", self.service, self.method)
    }
}

const OK: Code = Code::Ok;
const DENIED: Code = Code::PermissionDenied;
const PRECONDITION: Code = Code::FailedPrecondition;
const EXISTS: Code = Code::AlreadyExists;

const fn rule(
    service: &'static str,
    method: &'static str,
    kind: Kind,
    permissions: &'static [pb::Permission],
    scope: Option<&'static str>,
    answers: [Code; 8],
) -> Rule {
    Rule {
        service,
        method,
        kind,
        permissions,
        scope,
        answers,
    }
}

/// Every RPC of the contract and who may call it.
///
/// Columns: owner, member with, member without, former member, stranger, service with the
/// scope, service without it, staff.
/// Staff call with a stated reason (`x-onbehalf-reason`): they run the account commands a
/// member permission opens, and nothing that only the owner, a user or a scoped service may do;
/// reads stay closed to them, since a read leaves no event to show who looked.
#[rustfmt::skip]
pub const TABLE: &[Rule] = &[
    // UserService
    rule("UserService", "RegisterUser", M, &[], Some("users:register"),
        [DENIED, DENIED, DENIED, DENIED, DENIED, OK, DENIED, DENIED]),
    // The request names a user in no client account who is none of the callers; a user erasing
    // itself is covered by users_erasure.rs.
    rule("UserService", "EraseUser", M, &[], Some("users:erase"),
        [DENIED, DENIED, DENIED, DENIED, DENIED, OK, DENIED, DENIED]),

    // AccountService
    // Every registered user may open a client account of its own.
    rule("AccountService", "CreateAccount", M, &[], None,
        [OK, OK, OK, OK, OK, DENIED, DENIED, DENIED]),
    rule("AccountService", "GetAccount", R, &[], None,
        [OK, OK, OK, DENIED, DENIED, DENIED, DENIED, DENIED]),
    rule("AccountService", "UpdateAccountProfile", M, &[P::Profile], None,
        [OK, OK, DENIED, DENIED, DENIED, DENIED, DENIED, OK]),
    rule("AccountService", "TransferOwnership", M, &[], None,
        [OK, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),
    // Each user reads its own switcher, which may be empty.
    rule("AccountService", "ListAccessibleAccounts", R, &[], None,
        [OK, OK, OK, OK, OK, DENIED, DENIED, DENIED]),
    rule("AccountService", "ListMembers", R, &[], None,
        [OK, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),
    rule("AccountService", "AddContact", M, &[P::Contacts], None,
        [OK, OK, DENIED, DENIED, DENIED, DENIED, DENIED, OK]),
    rule("AccountService", "RemoveContact", M, &[P::Contacts], None,
        [OK, OK, DENIED, DENIED, DENIED, DENIED, DENIED, OK]),
    rule("AccountService", "ListContacts", R, &[P::Contacts], None,
        [OK, OK, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),

    // InvitationService
    rule("InvitationService", "InviteUser", M, &[], None,
        [OK, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),
    rule("InvitationService", "ResendInvitation", M, &[], None,
        [OK, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),
    rule("InvitationService", "CancelInvitation", M, &[], None,
        [OK, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),
    rule("InvitationService", "ListInvitations", R, &[], None,
        [OK, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),
    rule("InvitationService", "ListMyInvitations", R, &[], None,
        [OK, OK, OK, OK, OK, DENIED, DENIED, DENIED]),
    // The token is the credential: any registered user holding it may answer, but the owner and
    // current members cannot join a second time. A former member joins again.
    rule("InvitationService", "AcceptInvitation", M, &[], None,
        [EXISTS, EXISTS, EXISTS, OK, OK, DENIED, DENIED, DENIED]),
    rule("InvitationService", "DeclineInvitation", M, &[], None,
        [OK, OK, OK, OK, OK, DENIED, DENIED, DENIED]),

    // AccessService
    rule("AccessService", "GrantPermission", M, &[], None,
        [OK, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),
    rule("AccessService", "RevokePermission", M, &[], None,
        [OK, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),
    rule("AccessService", "RevokeAccess", M, &[], None,
        [OK, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),
    // The owner cannot leave: it must transfer ownership first.
    rule("AccessService", "LeaveAccount", M, &[], None,
        [PRECONDITION, OK, OK, DENIED, DENIED, DENIED, DENIED, DENIED]),
    // Asked about the member holding the permission: the owner, that user itself, or a service
    // with `access:check`.
    rule("AccessService", "CheckPermission", R, &[], Some("access:check"),
        [OK, OK, DENIED, DENIED, DENIED, OK, DENIED, DENIED]),

    // CatalogService
    rule("CatalogService", "PutProduct", M, &[], Some("catalog:write"),
        [DENIED, DENIED, DENIED, DENIED, DENIED, OK, DENIED, DENIED]),
    rule("CatalogService", "ListProducts", R, &[], None,
        [OK, OK, OK, OK, OK, OK, OK, OK]),

    // HostingService
    rule("HostingService", "OrderService", M, &[P::Orders], None,
        [OK, OK, DENIED, DENIED, DENIED, DENIED, DENIED, OK]),
    rule("HostingService", "RenewService", M, &[P::Orders], None,
        [OK, OK, DENIED, DENIED, DENIED, DENIED, DENIED, OK]),
    rule("HostingService", "CancelService", M, &[P::Orders], None,
        [OK, OK, DENIED, DENIED, DENIED, DENIED, DENIED, OK]),
    rule("HostingService", "UpdateNameservers", M, &[P::ManageDomains], None,
        [OK, OK, DENIED, DENIED, DENIED, DENIED, DENIED, OK]),
    rule("HostingService", "ListServices", R, &[P::Products, P::Domains], None,
        [OK, OK, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),
    // Only the provisioning system places a service on a panel server (`cp1` on the probe).
    rule("HostingService", "ActivateService", M, &[], Some("services:provision"),
        [DENIED, DENIED, DENIED, DENIED, DENIED, OK, DENIED, DENIED]),
    // Needs PRODUCTS and PRODUCT_SSO together, which one permission per column cannot state:
    // the member with full access stands for it here (`hosting_service_login.rs` has the rest).
    // The probe's service is not placed on a panel server, so a caller let through is refused
    // by that state and no panel is asked.
    rule("HostingService", "CreateServiceLogin", M, &[], None,
        [PRECONDITION, PRECONDITION, DENIED, DENIED, DENIED, DENIED, DENIED, PRECONDITION]),

    // BillingService
    rule("BillingService", "ListInvoices", R, &[P::Invoices], None,
        [OK, OK, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),
    rule("BillingService", "PayInvoice", M, &[P::Invoices], Some("billing:write"),
        [OK, OK, DENIED, DENIED, DENIED, OK, DENIED, OK]),

    // NotificationService, by account.
    rule("NotificationService", "ListNotifications", R, &[P::Emails], Some("notifications:read"),
        [OK, OK, DENIED, DENIED, DENIED, OK, DENIED, DENIED]),
    // Every member chooses its own mail; a service or staff member has none to choose.
    rule("NotificationService", "SetNotificationOptIns", M, &[], None,
        [OK, OK, OK, DENIED, DENIED, DENIED, DENIED, DENIED]),
    rule("NotificationService", "GetNotificationOptIns", R, &[], None,
        [OK, OK, OK, DENIED, DENIED, DENIED, DENIED, DENIED]),

    // AuditService, by account: the owner reads all of it, a member its own actions there.
    rule("AuditService", "ListAuditTrail", R, &[], Some("audit:read"),
        [OK, OK, OK, DENIED, DENIED, OK, DENIED, DENIED]),
    rule("AuditService", "ExportAuditTrail", R, &[], Some("audit:read"),
        [OK, OK, OK, DENIED, DENIED, OK, DENIED, DENIED]),
    rule("AuditService", "VerifyAuditTrail", R, &[], Some("audit:read"),
        [DENIED, DENIED, DENIED, DENIED, DENIED, OK, DENIED, DENIED]),

    // HistoryService
    rule("HistoryService", "GetAccountAsOf", R, &[], Some("audit:read"),
        [OK, DENIED, DENIED, DENIED, DENIED, OK, DENIED, DENIED]),
    rule("HistoryService", "CheckPermissionAsOf", R, &[], Some("audit:read"),
        [OK, DENIED, DENIED, DENIED, DENIED, OK, DENIED, DENIED]),
    rule("HistoryService", "StreamEvents", R, &[], Some("events:read"),
        [DENIED, DENIED, DENIED, DENIED, DENIED, OK, DENIED, DENIED]),
];
