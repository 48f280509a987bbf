//! The `Catalog` aggregate: the provider's products and prices.

use std::collections::BTreeMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use onbehalf_events::{CatalogEvent, Product};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Command, DomainError};

/// Commands on the catalogue.
#[derive(Clone, Debug, PartialEq)]
pub enum CatalogCommand {
    /// Add a product or replace it. A product identical to the stored one changes nothing.
    PutProduct(Product),
}

/// The catalogue's write-model state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// Every product by id.
    pub products: BTreeMap<Uuid, Product>,
}

impl Aggregate for Catalog {
    const TYPE: &'static str = onbehalf_events::stream_type::CATALOG;
    type Command = Command<CatalogCommand>;
    type Event = CatalogEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command.body {
            CatalogCommand::PutProduct(product) => {
                if let Some(existing) = self.products.get(&product.product_id) {
                    if existing.kind != product.kind {
                        return Err(DomainError::invalid(
                            "product.kind",
                            "a product's kind cannot change",
                        ));
                    }
                    if *existing == product {
                        return Ok(());
                    }
                }
                sink.write(CatalogEvent::ProductPut { product }, self).await;
                Ok(())
            }
        }
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            CatalogEvent::ProductPut { product } => {
                self.products.insert(product.product_id, product);
            }
        }
    }
}
