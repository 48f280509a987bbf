//! What a client account's contacts and members choose to receive by email.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Permission;

/// A kind of mail a contact receives, or a member opts into, for one client account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactCategory {
    /// Account-wide notices that fit no other category.
    General,
    /// Invoices, payments, payment reminders.
    Invoice,
    /// Hosting services: orders, renewals, suspensions, cancellations.
    Product,
    /// Domains: orders, renewals, suspensions, cancellations.
    Domain,
    /// Support tickets (mailed by the ticket desk, which reads the contacts).
    Support,
}

impl ContactCategory {
    /// Every category, in order.
    pub const ALL: [ContactCategory; 5] = [
        ContactCategory::General,
        ContactCategory::Invoice,
        ContactCategory::Product,
        ContactCategory::Domain,
        ContactCategory::Support,
    ];

    /// The category as a lowercase word, as in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            ContactCategory::General => "general",
            ContactCategory::Invoice => "invoice",
            ContactCategory::Product => "product",
            ContactCategory::Domain => "domain",
            ContactCategory::Support => "support",
        }
    }

    /// The permission a member must hold to opt into this category: what it may see in the
    /// client area it may also receive by email. `None` for general notices.
    pub fn required_permission(self) -> Option<Permission> {
        match self {
            ContactCategory::General => None,
            ContactCategory::Invoice => Some(Permission::Invoices),
            ContactCategory::Product => Some(Permission::Products),
            ContactCategory::Domain => Some(Permission::Domains),
            ContactCategory::Support => Some(Permission::Tickets),
        }
    }
}

impl fmt::Display for ContactCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of categories, ordered, without repeats.
pub type ContactCategories = BTreeSet<ContactCategory>;
