//! Events of the provider's catalogue stream.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::{BillingCycle, Money, Name, ProductKind, Tld};
use crate::EventSchema;

/// A product the provider sells, with its price per billing cycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// The product's id.
    pub product_id: Uuid,
    /// The product's name, e.g. `Starter Hosting`.
    pub name: Name,
    /// Hosting plan or domain registration.
    pub kind: ProductKind,
    /// For a domain product, the TLD it registers under.
    pub tld: Option<Tld>,
    /// The price of each cycle the product can be ordered with.
    pub prices: Vec<Price>,
}

impl Product {
    /// The price for `cycle`, if the product is sold with it.
    pub fn price(&self, cycle: BillingCycle) -> Option<&Money> {
        self.prices
            .iter()
            .find(|p| p.billing_cycle == cycle)
            .map(|p| &p.amount)
    }
}

/// The price of one billing cycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    /// The cycle.
    pub billing_cycle: BillingCycle,
    /// What one cycle costs.
    pub amount: Money,
}

/// What happened to the catalogue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CatalogEvent {
    /// A product was added or replaced.
    ProductPut {
        /// The product as it now is.
        product: Product,
    },
}

impl EventSchema for CatalogEvent {
    fn event_type(&self) -> &'static str {
        match self {
            CatalogEvent::ProductPut { .. } => "ProductPut",
        }
    }
}

impl cqrs_es::DomainEvent for CatalogEvent {
    fn event_type(&self) -> String {
        EventSchema::event_type(self).to_owned()
    }

    fn event_version(&self) -> String {
        EventSchema::event_version(self).to_owned()
    }
}
