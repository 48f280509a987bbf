//! Parsing of request fields into domain values, and domain values into messages.
//!
//! Every field is parsed once here; an invalid one is an `INVALID_ARGUMENT` naming it.

use chrono::{DateTime, NaiveDate, Utc};
use onbehalf_events::values::{BillingCycle, DomainName, Email, Name, ProductKind};
use onbehalf_events::{Actor, Permission, PermissionSet};
use onbehalf_proto::v1 as pb;
use uuid::Uuid;

use crate::error::{Error, Result};

pub(crate) fn uuid(field: &str, raw: &str) -> Result<Uuid> {
    if raw.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    match Uuid::parse_str(raw) {
        Ok(id) if id.is_nil() => Err(Error::invalid(field, "must not be the nil UUID")),
        Ok(id) => Ok(id),
        Err(_) => Err(Error::invalid(field, "must be a UUID")),
    }
}

pub(crate) fn optional_uuid(field: &str, raw: &str) -> Result<Option<Uuid>> {
    if raw.is_empty() {
        Ok(None)
    } else {
        uuid(field, raw).map(Some)
    }
}

pub(crate) fn email(field: &str, raw: &str) -> Result<Email> {
    Email::parse(raw).map_err(|e| Error::invalid(field, e.0))
}

pub(crate) fn name(field: &str, raw: &str) -> Result<Name> {
    Name::parse(raw).map_err(|e| Error::invalid(field, e.0))
}

pub(crate) fn domain(field: &str, raw: &str) -> Result<DomainName> {
    DomainName::parse(raw).map_err(|e| Error::invalid(field, e.0))
}

pub(crate) fn permission(field: &str, raw: i32) -> Result<Permission> {
    usize::try_from(raw)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| Permission::ALL.get(i).copied())
        .ok_or_else(|| Error::invalid(field, format!("{raw} is not a permission")))
}

pub(crate) fn permissions(field: &str, raw: &[i32]) -> Result<PermissionSet> {
    if raw.is_empty() {
        return Err(Error::invalid(field, "must name at least one permission"));
    }
    raw.iter().map(|p| permission(field, *p)).collect()
}

pub(crate) fn permission_to_pb(p: Permission) -> i32 {
    Permission::ALL
        .iter()
        .position(|q| *q == p)
        .map_or(0, |i| i as i32 + 1)
}

pub(crate) fn permissions_to_pb(set: &PermissionSet) -> Vec<i32> {
    set.iter().map(permission_to_pb).collect()
}

pub(crate) fn billing_cycle(field: &str, raw: i32) -> Result<BillingCycle> {
    usize::try_from(raw)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| BillingCycle::ALL.get(i).copied())
        .ok_or_else(|| Error::invalid(field, format!("{raw} is not a billing cycle")))
}

pub(crate) fn billing_cycle_to_pb(c: BillingCycle) -> i32 {
    BillingCycle::ALL
        .iter()
        .position(|d| *d == c)
        .map_or(0, |i| i as i32 + 1)
}

pub(crate) fn product_kind(field: &str, raw: i32) -> Result<ProductKind> {
    match pb::ProductKind::try_from(raw) {
        Ok(pb::ProductKind::Hosting) => Ok(ProductKind::Hosting),
        Ok(pb::ProductKind::Domain) => Ok(ProductKind::Domain),
        _ => Err(Error::invalid(
            field,
            format!("{raw} is not a product kind"),
        )),
    }
}

pub(crate) fn product_kind_to_pb(k: ProductKind) -> i32 {
    match k {
        ProductKind::Hosting => pb::ProductKind::Hosting as i32,
        ProductKind::Domain => pb::ProductKind::Domain as i32,
    }
}

/// The first second a `google.protobuf.Timestamp` may hold: 0001-01-01T00:00:00Z.
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
/// The last second a `google.protobuf.Timestamp` may hold: 9999-12-31T23:59:59Z.
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// A decimal number as this server writes it: digits only, no sign, no leading zero.
pub(crate) fn canonical_number(raw: &str) -> Option<u64> {
    let canonical = !raw.is_empty()
        && raw.bytes().all(|b| b.is_ascii_digit())
        && (raw == "0" || !raw.starts_with('0'));
    canonical.then(|| raw.parse().ok()).flatten()
}

/// A request's timestamp, refused unless protobuf could carry it back (years 1 to 9999, nanos
/// below a second).
pub(crate) fn parse_timestamp(field: &str, t: &prost_types::Timestamp) -> Result<DateTime<Utc>> {
    u32::try_from(t.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .filter(|_| (MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&t.seconds))
        .and_then(|n| DateTime::from_timestamp(t.seconds, n))
        .ok_or_else(|| Error::invalid(field, "is not a valid timestamp (years 1 to 9999)"))
}

pub(crate) fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

pub(crate) fn date(d: NaiveDate) -> pb::Date {
    use chrono::Datelike;
    pb::Date {
        year: d.year(),
        month: d.month() as i32,
        day: d.day() as i32,
    }
}

pub(crate) fn actor_kind_to_pb(a: &Actor) -> i32 {
    match a {
        Actor::User(_) => pb::ActorKind::ActorUser as i32,
        Actor::Service(_) => pb::ActorKind::ActorService as i32,
        Actor::Staff(_) => pb::ActorKind::ActorStaff as i32,
        Actor::System => pb::ActorKind::ActorSystem as i32,
    }
}

/// A request id: optional, at most 128 printable ASCII characters.
pub(crate) fn request_id(raw: &str) -> Result<Option<String>> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.len() > 128 || !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(
            "request_id",
            "must be at most 128 printable ASCII characters without spaces",
        ));
    }
    Ok(Some(raw.to_owned()))
}

/// Pagination over an ordered list: the token is the offset of the next page.
// LIMITATION: offsets, not cursors: a list sorted by name (the account switcher, members) can repeat or skip an entry when it changes between two pages; the audit trail pages by position instead.
pub(crate) fn page<T>(items: Vec<T>, page_size: u32, page_token: &str) -> Result<(Vec<T>, String)> {
    const DEFAULT: usize = 50;
    const MAX: usize = 500;
    let size = match page_size {
        0 => DEFAULT,
        n => (n as usize).min(MAX),
    };
    let offset = if page_token.is_empty() {
        0
    } else {
        page_token
            .strip_prefix("o")
            .and_then(canonical_number)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| Error::invalid("page_token", "is not a token this server issued"))?
    };
    let total = items.len();
    let page: Vec<T> = items.into_iter().skip(offset).take(size).collect();
    let next = offset + page.len();
    let token = if next < total {
        format!("o{next}")
    } else {
        String::new()
    };
    Ok((page, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(raw: &str) -> String {
        match uuid("account_id", raw) {
            Err(Error::InvalidArgument { field, message }) => format!("{field} {message}"),
            other => panic!("expected a refusal of {raw:?}, got {other:?}"),
        }
    }

    #[test]
    fn ids_that_are_missing_malformed_or_nil_are_refused_each_with_its_reason() {
        assert_eq!(refusal(""), "account_id is required");
        assert_eq!(refusal("acct-1"), "account_id must be a UUID");
        assert_eq!(
            refusal("00000000-0000-0000-0000-000000000000"),
            "account_id must not be the nil UUID"
        );
        assert_eq!(
            uuid("account_id", "6a1e9f0c-7d2b-4e3a-8c4d-1b2a3c4d5e6f").unwrap(),
            Uuid::parse_str("6a1e9f0c-7d2b-4e3a-8c4d-1b2a3c4d5e6f").unwrap()
        );
    }

    #[test]
    fn permissions_map_to_their_proto_numbers_and_back() {
        for (i, p) in Permission::ALL.iter().enumerate() {
            assert_eq!(permission_to_pb(*p), i as i32 + 1);
            assert_eq!(permission("p", i as i32 + 1).unwrap(), *p);
        }
        assert!(permission("p", 0).is_err());
        assert!(permission("p", 14).is_err());
    }

    #[test]
    fn pages_follow_each_other_until_the_end() {
        let (first, token) = page((1..=5).collect::<Vec<_>>(), 2, "").unwrap();
        assert_eq!((first, token.as_str()), (vec![1, 2], "o2"));
        let (second, token) = page((1..=5).collect::<Vec<_>>(), 2, &token).unwrap();
        assert_eq!((second, token.as_str()), (vec![3, 4], "o4"));
        let (last, token) = page((1..=5).collect::<Vec<_>>(), 2, &token).unwrap();
        assert_eq!((last, token.as_str()), (vec![5], ""));
        assert!(page(vec![1], 2, "bogus").is_err());
        for forged in ["o+2", "o02", "o-1", "o"] {
            assert!(page(vec![1, 2, 3], 2, forged).is_err(), "{forged}");
        }
    }
}
