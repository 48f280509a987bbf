//! Text shared by the read models: amounts, permission lists and name ordering.

use onbehalf_events::values::Currency;
use onbehalf_events::PermissionSet;

/// Formats an amount in minor units for people: `TZS 25,000.00`, `JPY 1,200`, `-USD 0.50`.
///
/// The number of decimals is the currency's ISO 4217 minor unit (0 for `JPY`, `UGX`, `RWF`,
/// ...; 3 for `KWD`, `BHD`, ...; 2 otherwise); thousands are grouped with commas.
pub fn format_money(amount_minor: i64, currency: &Currency) -> String {
    let decimals = minor_digits(currency);
    let sign = if amount_minor < 0 { "-" } else { "" };
    let magnitude = amount_minor.unsigned_abs();
    let scale = 10u64.pow(decimals);
    let whole = group_thousands(magnitude / scale);
    if decimals == 0 {
        format!("{sign}{currency} {whole}")
    } else {
        let fraction = magnitude % scale;
        let width = decimals as usize;
        format!("{sign}{currency} {whole}.{fraction:0width$}")
    }
}

/// The ISO 4217 minor unit of the currencies that do not use two decimals.
fn minor_digits(currency: &Currency) -> u32 {
    match currency.as_str() {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

fn group_thousands(mut n: u64) -> String {
    let mut groups = Vec::new();
    while n >= 1000 {
        groups.push(format!("{:03}", n % 1000));
        n /= 1000;
    }
    groups.push(n.to_string());
    groups.reverse();
    groups.join(",")
}

/// Permissions as a person reads them: `full access`, `no permissions`, or their names in a
/// stable order joined by commas.
pub(crate) fn describe_permissions(permissions: &PermissionSet) -> String {
    if permissions.is_full() {
        "full access".to_owned()
    } else if permissions.is_empty() {
        "no permissions".to_owned()
    } else {
        permissions
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The sort key of a displayed name: case-insensitive first, then exact, so that `abc` and
/// `ABC` sit together but still have a fixed order.
pub(crate) fn name_key(name: &str) -> (String, String) {
    (name.to_lowercase(), name.to_owned())
}

#[cfg(test)]
mod tests {
    use onbehalf_events::Permission;

    use super::*;

    fn currency(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    #[test]
    fn amounts_are_formatted_from_minor_units_with_currency() {
        assert_eq!(format_money(2_500_000, &currency("TZS")), "TZS 25,000.00");
        assert_eq!(format_money(5, &currency("USD")), "USD 0.05");
        assert_eq!(format_money(0, &currency("USD")), "USD 0.00");
        assert_eq!(format_money(-50, &currency("USD")), "-USD 0.50");
        assert_eq!(format_money(1_234_567, &currency("UGX")), "UGX 1,234,567");
        assert_eq!(format_money(1_500, &currency("KWD")), "KWD 1.500");
        assert_eq!(
            format_money(100_000_000, &currency("EUR")),
            "EUR 1,000,000.00"
        );
    }

    #[test]
    fn the_most_negative_amount_is_formatted_without_overflow() {
        assert_eq!(
            format_money(i64::MIN, &currency("JPY")),
            "-JPY 9,223,372,036,854,775,808"
        );
    }

    #[test]
    fn permissions_read_as_full_access_none_or_their_names() {
        assert_eq!(describe_permissions(&PermissionSet::full()), "full access");
        assert_eq!(
            describe_permissions(&PermissionSet::empty()),
            "no permissions"
        );
        let some: PermissionSet = [Permission::Orders, Permission::Invoices]
            .into_iter()
            .collect();
        assert_eq!(describe_permissions(&some), "INVOICES, ORDERS");
    }
}
