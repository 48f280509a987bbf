//! `CatalogService`.

use std::collections::BTreeSet;

use onbehalf_events::values::{Currency, Money, ProductKind, Tld};
use onbehalf_events::{Price, Product, CATALOG_STREAM};
use onbehalf_proto::v1 as pb;
use onbehalf_proto::v1::catalog_service_server::CatalogService;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{convert, idempotency, respond, App};
use crate::domain::{Catalog, CatalogCommand};
use crate::error::{Error, Result};

/// The `CatalogService` implementation.
#[derive(Debug, Clone)]
pub(crate) struct CatalogApi(pub(crate) App);

pub(crate) fn product_message(p: &Product) -> pb::Product {
    pb::Product {
        product_id: p.product_id.to_string(),
        name: p.name.to_string(),
        kind: convert::product_kind_to_pb(p.kind),
        tld: p
            .tld
            .as_ref()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        prices: p
            .prices
            .iter()
            .map(|price| pb::Price {
                billing_cycle: convert::billing_cycle_to_pb(price.billing_cycle),
                amount_minor: price.amount.amount_minor,
                currency: price.amount.currency.to_string(),
            })
            .collect(),
    }
}

fn parse_product(raw: &pb::Product) -> Result<Product> {
    let product_id =
        convert::optional_uuid("product.product_id", &raw.product_id)?.unwrap_or_else(Uuid::new_v4);
    let name = convert::name("product.name", &raw.name)?;
    let kind = convert::product_kind("product.kind", raw.kind)?;
    let tld = match (kind, raw.tld.is_empty()) {
        (ProductKind::Domain, true) => {
            return Err(Error::invalid(
                "product.tld",
                "a domain product needs a TLD",
            ))
        }
        (ProductKind::Domain, false) => {
            Some(Tld::parse(&raw.tld).map_err(|e| Error::invalid("product.tld", e.0))?)
        }
        (ProductKind::Hosting, true) => None,
        (ProductKind::Hosting, false) => {
            return Err(Error::invalid(
                "product.tld",
                "a hosting product has no TLD",
            ))
        }
    };
    if raw.prices.is_empty() {
        return Err(Error::invalid(
            "product.prices",
            "must hold at least one price",
        ));
    }
    let mut cycles = BTreeSet::new();
    let mut prices = Vec::with_capacity(raw.prices.len());
    for price in &raw.prices {
        let billing_cycle =
            convert::billing_cycle("product.prices.billing_cycle", price.billing_cycle)?;
        if kind == ProductKind::Domain && !billing_cycle.is_yearly() {
            return Err(Error::invalid(
                "product.prices.billing_cycle",
                "domains take yearly cycles only",
            ));
        }
        if !cycles.insert(billing_cycle) {
            return Err(Error::invalid(
                "product.prices.billing_cycle",
                "each cycle may be priced once",
            ));
        }
        let currency = Currency::parse(&price.currency)
            .map_err(|e| Error::invalid("product.prices.currency", e.0))?;
        let amount = Money::new(price.amount_minor, currency)
            .map_err(|e| Error::invalid("product.prices.amount_minor", e.0))?;
        prices.push(Price {
            billing_cycle,
            amount,
        });
    }
    prices.sort_by_key(|p| p.billing_cycle);
    Ok(Product {
        product_id,
        name,
        kind,
        tld,
        prices,
    })
}

#[tonic::async_trait]
impl CatalogService for CatalogApi {
    async fn put_product(
        &self,
        request: Request<pb::PutProductRequest>,
    ) -> Result<Response<pb::PutProductResponse>, Status> {
        respond(self.put(request).await)
    }

    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        respond(self.list(request).await)
    }
}

impl CatalogApi {
    async fn put(&self, request: Request<pb::PutProductRequest>) -> Result<pb::PutProductResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        if !call.caller.has_scope("catalog:write") {
            return Err(Error::PermissionDenied(
                "needs a service token with scope catalog:write".into(),
            ));
        }
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let raw = req
            .product
            .as_ref()
            .ok_or_else(|| Error::invalid("product", "is required"))?;
        let product = parse_product(raw)?;
        let key = idempotency("PutProduct", &request_id, &req)?;
        let product_id = product.product_id;
        let done = app
            .execute::<Catalog, Product, _>(
                &call,
                CATALOG_STREAM.to_owned(),
                CatalogCommand::PutProduct(product),
                call.metadata.clone(),
                key,
                vec![],
                |catalog| {
                    catalog
                        .products
                        .get(&product_id)
                        .cloned()
                        .ok_or_else(|| Error::Internal("product missing after put".into()))
                },
            )
            .await?;
        Ok(pb::PutProductResponse {
            product: Some(product_message(&done.value)),
            position: done.position,
        })
    }

    async fn list(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<pb::ListProductsResponse> {
        let app = &self.0;
        let call = app.call(&request)?;
        let req = request.into_inner();
        let products = app
            .read(&call, req.min_position, |m| {
                m.catalog.products().iter().map(product_message).collect()
            })
            .await?;
        let (products, next_page_token) = convert::page(products, req.page_size, &req.page_token)?;
        Ok(pb::ListProductsResponse {
            products,
            next_page_token,
        })
    }
}
