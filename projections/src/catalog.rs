//! The catalogue view: the products the provider sells, as last put.

use std::collections::BTreeMap;

use onbehalf_events::{CatalogEvent, Product};
use uuid::Uuid;

use crate::format::name_key;

/// The provider's products, each as its latest `ProductPut` described it.
#[derive(Clone, Debug, Default)]
pub struct CatalogView {
    products: BTreeMap<Uuid, Product>,
}

impl CatalogView {
    /// Every product by name (case-insensitively), then by id.
    pub fn products(&self) -> Vec<Product> {
        let mut out: Vec<Product> = self.products.values().cloned().collect();
        out.sort_by_cached_key(|p| (name_key(p.name.as_str()), p.product_id));
        out
    }

    /// One product.
    pub fn product(&self, product_id: Uuid) -> Option<&Product> {
        self.products.get(&product_id)
    }

    pub(crate) fn put(&mut self, product: Product) {
        self.products.insert(product.product_id, product);
    }

    pub(crate) fn apply(&mut self, event: &CatalogEvent) {
        match event {
            CatalogEvent::ProductPut { product } => {
                self.products.insert(product.product_id, product.clone());
            }
        }
    }
}
