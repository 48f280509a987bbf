//! The 13 client-area permissions and sets of them.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One client-area right on a client account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Permission {
    /// Edit the account profile.
    Profile,
    /// Manage the account's contacts.
    Contacts,
    /// View services.
    Products,
    /// Service passwords and service actions.
    ManageProducts,
    /// Single sign-on into a service's control panel.
    ProductSso,
    /// View domains.
    Domains,
    /// Nameservers, domain contacts and transfers.
    ManageDomains,
    /// View and pay invoices.
    Invoices,
    /// Quotes.
    Quotes,
    /// Support tickets.
    Tickets,
    /// The affiliate programme.
    Affiliates,
    /// View the account's sent mail.
    Emails,
    /// New orders, renewals, upgrades and cancellations.
    Orders,
}

impl Permission {
    /// All 13 permissions: "full access".
    pub const ALL: [Permission; 13] = [
        Permission::Profile,
        Permission::Contacts,
        Permission::Products,
        Permission::ManageProducts,
        Permission::ProductSso,
        Permission::Domains,
        Permission::ManageDomains,
        Permission::Invoices,
        Permission::Quotes,
        Permission::Tickets,
        Permission::Affiliates,
        Permission::Emails,
        Permission::Orders,
    ];

    /// The permission's name as used in the log, the API and the docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Profile => "PROFILE",
            Permission::Contacts => "CONTACTS",
            Permission::Products => "PRODUCTS",
            Permission::ManageProducts => "MANAGE_PRODUCTS",
            Permission::ProductSso => "PRODUCT_SSO",
            Permission::Domains => "DOMAINS",
            Permission::ManageDomains => "MANAGE_DOMAINS",
            Permission::Invoices => "INVOICES",
            Permission::Quotes => "QUOTES",
            Permission::Tickets => "TICKETS",
            Permission::Affiliates => "AFFILIATES",
            Permission::Emails => "EMAILS",
            Permission::Orders => "ORDERS",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name did not match any permission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown permission `{0}`")]
pub struct UnknownPermission(pub String);

impl FromStr for Permission {
    type Err = UnknownPermission;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPermission(s.to_owned()))
    }
}

/// A set of permissions, ordered for stable output.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PermissionSet(BTreeSet<Permission>);

impl PermissionSet {
    /// The empty set.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Every permission.
    pub fn full() -> Self {
        Permission::ALL.into_iter().collect()
    }

    /// Whether the set holds `permission`.
    pub fn contains(&self, permission: Permission) -> bool {
        self.0.contains(&permission)
    }

    /// Whether the set holds every permission.
    pub fn is_full(&self) -> bool {
        self.0.len() == Permission::ALL.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of permissions held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The permissions in a stable order.
    pub fn iter(&self) -> impl Iterator<Item = Permission> + '_ {
        self.0.iter().copied()
    }

    /// The union of both sets.
    pub fn union(&self, other: &PermissionSet) -> PermissionSet {
        self.0.union(&other.0).copied().collect()
    }

    /// The permissions of `self` that are not in `other`.
    pub fn difference(&self, other: &PermissionSet) -> PermissionSet {
        self.0.difference(&other.0).copied().collect()
    }

    /// The permissions held by both sets.
    pub fn intersection(&self, other: &PermissionSet) -> PermissionSet {
        self.0.intersection(&other.0).copied().collect()
    }
}

impl FromIterator<Permission> for PermissionSet {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_permission_round_trips_through_its_name() {
        for p in Permission::ALL {
            assert_eq!(p.as_str().parse::<Permission>(), Ok(p));
            assert_eq!(
                serde_json::to_string(&p).unwrap(),
                format!("\"{}\"", p.as_str())
            );
        }
    }

    #[test]
    fn full_access_is_thirteen_permissions() {
        assert_eq!(PermissionSet::full().len(), 13);
        assert!(PermissionSet::full().is_full());
    }

    #[test]
    fn unknown_names_are_rejected() {
        assert_eq!(
            "ADMIN".parse::<Permission>(),
            Err(UnknownPermission("ADMIN".into()))
        );
    }
}
