//! Value types parsed once at the boundary, so that invalid values cannot exist inside.

use std::fmt;

use chrono::{Months, NaiveDate};
use serde::{Deserialize, Serialize};

/// Why a value was refused. The message names the rule that was broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

fn invalid(msg: impl Into<String>) -> InvalidValue {
    InvalidValue(msg.into())
}

fn has_control(s: &str) -> bool {
    s.chars()
        .any(|c| c.is_control() || is_bidi_control(c) || is_invisible(c))
}

/// Characters that render as nothing (format characters, tags, private use), refused in names
/// and emails because two strings that look the same would be different identities.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200D}'
            | '\u{2060}'..='\u{2064}'
            | '\u{206A}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{E000}'..='\u{F8FF}'
            | '\u{E0000}'..='\u{E0FFF}'
            | '\u{F0000}'..='\u{10FFFF}'
    )
}

/// The comparison key of an email address: ASCII letters folded to lower case, everything else
/// kept as it is.
///
/// Folding only ASCII keeps distinct Unicode addresses distinct: a full Unicode lower-casing
/// would make `\u{212A}im@…` (KELVIN SIGN) and `kim@…` the same login.
pub fn email_key(raw: &str) -> String {
    raw.trim().to_ascii_lowercase()
}

/// Unicode bidirectional formatting characters, refused in names and emails because they make
/// the displayed text differ from the stored text.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Combining marks of the common blocks, which must follow a base character.
fn is_combining(c: char) -> bool {
    matches!(c, '\u{0300}'..='\u{036F}' | '\u{1AB0}'..='\u{1AFF}' | '\u{1DC0}'..='\u{1DFF}' | '\u{20D0}'..='\u{20FF}' | '\u{FE20}'..='\u{FE2F}')
}

/// An email address: trimmed, at most 254 characters, one `@` with a non-empty local part and a
/// dotted domain. Compared case-insensitively through [`Email::key`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// Parses an email as given by a caller.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(invalid("must not be empty"));
        }
        if s.chars().count() > 254 {
            return Err(invalid("must be at most 254 characters"));
        }
        if has_control(s) || s.chars().any(char::is_whitespace) {
            return Err(invalid(
                "must not contain spaces, control or invisible characters",
            ));
        }
        if !unicode_normalization::is_nfc(s) {
            return Err(invalid(
                "must be in Unicode normalization form C (composed characters)",
            ));
        }
        let (local, domain) = s
            .rsplit_once('@')
            .ok_or_else(|| invalid("must contain `@`"))?;
        if [local, domain]
            .iter()
            .any(|part| part.chars().next().is_some_and(is_combining))
        {
            return Err(invalid("must not start a part with a combining mark"));
        }
        if local.is_empty() || local.contains('@') || local.chars().count() > 64 {
            return Err(invalid(
                "must have one `@` after a local part of 1 to 64 characters",
            ));
        }
        if !is_domain_like(domain) {
            return Err(invalid(
                "must have a domain such as `example.com` after `@`",
            ));
        }
        if email_key(s) == crate::personal::ERASED_EMAIL {
            return Err(invalid("is reserved for erased personal data"));
        }
        Ok(Self(s.to_owned()))
    }

    /// The placeholder an erased email reads as ([`crate::personal::ERASED_EMAIL`]).
    pub fn erased() -> Self {
        Self(crate::personal::ERASED_EMAIL.to_owned())
    }

    /// The address as given (trimmed).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The comparison key: the address with ASCII letters in lower case ([`email_key`]).
    pub fn key(&self) -> String {
        email_key(&self.0)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_domain_like(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && domain.len() <= 253
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
}

/// A human-readable name (an account name or a user's display name): trimmed, 1 to 200
/// characters, no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    /// The placeholder an erased name reads as ([`crate::personal::ERASED_NAME`]).
    pub fn erased() -> Self {
        Self(crate::personal::ERASED_NAME.to_owned())
    }

    /// Parses a name as given by a caller.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(invalid("must not be empty"));
        }
        if s.chars().count() > 200 {
            return Err(invalid("must be at most 200 characters"));
        }
        if has_control(s) {
            return Err(invalid("must not contain control or invisible characters"));
        }
        Ok(Self(s.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A fully qualified domain name in lower case, such as `abc.co.tz` or `ns1.example.net`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DomainName(String);

impl DomainName {
    /// Parses a domain name: ASCII letters, digits and hyphens in dot-separated labels.
    ///
    /// Internationalised names are accepted in their ASCII (`xn--`) form.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim().trim_end_matches('.').to_ascii_lowercase();
        if s.is_empty() {
            return Err(invalid("must not be empty"));
        }
        if !s.is_ascii() {
            return Err(invalid(
                "must be ASCII; write internationalised names as `xn--` labels",
            ));
        }
        if !is_domain_like(&s) {
            return Err(invalid(
                "must be labels of letters, digits and hyphens joined by dots",
            ));
        }
        Ok(Self(s))
    }

    /// The name in lower case.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this name is registered under `tld` (for example `.co.tz`).
    pub fn is_under(&self, tld: &Tld) -> bool {
        let suffix = tld.as_str();
        self.0.len() > suffix.len() && self.0.ends_with(suffix) && {
            let head = &self.0[..self.0.len() - suffix.len()];
            !head.contains('.')
        }
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A top-level domain with its leading dot, such as `.co.tz` or `.com`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Tld(String);

impl Tld {
    /// Parses a TLD; the leading dot is optional on input.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim().trim_start_matches('.').to_ascii_lowercase();
        if s.is_empty()
            || !s.is_ascii()
            || s.split('.')
                .any(|l| l.is_empty() || !l.chars().all(|c| c.is_alphanumeric() || c == '-'))
        {
            return Err(invalid("must be a suffix such as `.co.tz`"));
        }
        Ok(Self(format!(".{s}")))
    }

    /// The TLD with its leading dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An ISO 4217 currency code such as `TZS` or `USD`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Currency(String);

impl Currency {
    /// Parses a three-letter upper-case code.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim();
        if s.len() != 3 || !s.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(invalid("must be three upper-case letters such as `TZS`"));
        }
        Ok(Self(s.to_owned()))
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An amount in a currency's minor unit (cents), never negative.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    /// The amount in minor units.
    pub amount_minor: i64,
    /// The currency.
    pub currency: Currency,
}

impl Money {
    /// The largest amount a price may have: 10^15 minor units, far above any real price and far
    /// enough below `i64::MAX` that sums of many invoices cannot overflow.
    pub const MAX_MINOR: i64 = 1_000_000_000_000_000;

    /// A non-negative amount in `currency`, at most [`Money::MAX_MINOR`].
    pub fn new(amount_minor: i64, currency: Currency) -> Result<Self, InvalidValue> {
        if amount_minor < 0 {
            return Err(invalid("must not be negative"));
        }
        if amount_minor > Self::MAX_MINOR {
            return Err(invalid(format!("must be at most {}", Self::MAX_MINOR)));
        }
        Ok(Self {
            amount_minor,
            currency,
        })
    }
}

/// How often a service is billed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BillingCycle {
    /// One month.
    Monthly,
    /// Three months.
    Quarterly,
    /// Six months.
    SemiAnnually,
    /// One year.
    Annually,
    /// Two years.
    Biennially,
    /// Three years.
    Triennially,
}

impl BillingCycle {
    /// Every cycle, shortest first.
    pub const ALL: [BillingCycle; 6] = [
        BillingCycle::Monthly,
        BillingCycle::Quarterly,
        BillingCycle::SemiAnnually,
        BillingCycle::Annually,
        BillingCycle::Biennially,
        BillingCycle::Triennially,
    ];

    /// The cycle's length in months.
    pub fn months(self) -> u32 {
        match self {
            BillingCycle::Monthly => 1,
            BillingCycle::Quarterly => 3,
            BillingCycle::SemiAnnually => 6,
            BillingCycle::Annually => 12,
            BillingCycle::Biennially => 24,
            BillingCycle::Triennially => 36,
        }
    }

    /// Whether the cycle is a whole number of years (the only cycles domains take).
    pub fn is_yearly(self) -> bool {
        self.months().is_multiple_of(12)
    }

    /// The date one cycle after `from`, clamped to the month's last day (31 January + 1 month
    /// is 28 or 29 February).
    pub fn advance(self, from: NaiveDate) -> NaiveDate {
        from.checked_add_months(Months::new(self.months()))
            .unwrap_or(NaiveDate::MAX)
    }

    /// The date `n` cycles after `anchor`, clamped to the month's last day.
    ///
    /// Counting from the anchor keeps the day of the month: a service ordered on 31 January is
    /// due on 28 February, then 31 March, not 28 March.
    pub fn after(self, anchor: NaiveDate, n: u32) -> NaiveDate {
        anchor
            .checked_add_months(Months::new(self.months().saturating_mul(n)))
            .unwrap_or(NaiveDate::MAX)
    }

    /// The cycle's name as used in the log and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            BillingCycle::Monthly => "MONTHLY",
            BillingCycle::Quarterly => "QUARTERLY",
            BillingCycle::SemiAnnually => "SEMI_ANNUALLY",
            BillingCycle::Annually => "ANNUALLY",
            BillingCycle::Biennially => "BIENNIALLY",
            BillingCycle::Triennially => "TRIENNIALLY",
        }
    }
}

/// What a catalogue product is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProductKind {
    /// A hosting plan.
    Hosting,
    /// A domain registration under one TLD.
    Domain,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_keyed_in_lower_case() {
        let e = Email::parse("  Designer@YourCompany.com ").unwrap();
        assert_eq!(e.as_str(), "Designer@YourCompany.com");
        assert_eq!(e.key(), "designer@yourcompany.com");
    }

    #[test]
    fn malformed_emails_are_rejected() {
        for bad in [
            "",
            "   ",
            "no-at-sign",
            "@abc.co.tz",
            "a@b",
            "a b@abc.co.tz",
            "a@@abc.co.tz",
            "a@abc..tz",
            "x\u{202E}@abc.co.tz",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn only_ascii_letters_fold_so_distinct_unicode_addresses_stay_distinct() {
        let dotted = Email::parse("\u{0130}smail@example.com").unwrap();
        let combined = Email::parse("i\u{0307}smail@example.com").unwrap();
        assert_eq!(
            Email::parse("Kim@Example.com").unwrap().key(),
            "kim@example.com"
        );
        assert_eq!(dotted.key(), "\u{0130}smail@example.com");
        assert_ne!(dotted.key(), combined.key());
    }

    #[test]
    fn a_kelvin_sign_is_refused_because_it_is_a_decomposable_k() {
        assert_eq!(
            Email::parse("\u{212A}im@example.com").unwrap_err().0,
            "must be in Unicode normalization form C (composed characters)"
        );
    }

    #[test]
    fn invisible_characters_and_decomposed_forms_are_refused_in_emails() {
        for bad in [
            "ki\u{200B}m@example.com",
            "kim\u{00AD}@example.com",
            "kim@exa\u{FEFF}mple.com",
            "kim\u{E0041}@example.com",
            "\u{E000}kim@example.com",
            "\u{0301}kim@example.com",
            "jose\u{0301}@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            Email::parse("jos\u{00E9}@example.com").unwrap().as_str(),
            "jos\u{00E9}@example.com"
        );
    }

    #[test]
    fn homoglyphs_are_distinct_addresses_stored_exactly() {
        let cyrillic = Email::parse("p\u{0430}ypal@example.com").unwrap();
        assert_eq!(cyrillic.as_str(), "p\u{0430}ypal@example.com");
        assert_ne!(
            cyrillic.key(),
            Email::parse("paypal@example.com").unwrap().key()
        );
    }

    #[test]
    fn prices_are_bounded_so_sums_cannot_overflow() {
        let tzs = Currency::parse("TZS").unwrap();
        assert!(Money::new(Money::MAX_MINOR, tzs.clone()).is_ok());
        assert_eq!(
            Money::new(i64::MAX, tzs).unwrap_err().0,
            "must be at most 1000000000000000"
        );
    }

    #[test]
    fn names_refuse_invisible_characters() {
        assert!(Name::parse("ABC\u{200B} Company").is_err());
        assert_eq!(
            Name::parse("Caf\u{00E9} Bar").unwrap().as_str(),
            "Caf\u{00E9} Bar"
        );
    }

    #[test]
    fn internationalised_email_domains_are_accepted_as_given() {
        assert_eq!(
            Email::parse("info@bücher.de").unwrap().as_str(),
            "info@bücher.de"
        );
    }

    #[test]
    fn names_refuse_control_characters_but_keep_quotes() {
        assert!(Name::parse("ABC\u{0007}").is_err());
        assert_eq!(
            Name::parse(" O'Brien \"Ltd\"; DROP TABLE x; ")
                .unwrap()
                .as_str(),
            "O'Brien \"Ltd\"; DROP TABLE x;"
        );
    }

    #[test]
    fn domains_match_only_their_own_tld() {
        let tld = Tld::parse("co.tz").unwrap();
        assert_eq!(tld.as_str(), ".co.tz");
        assert!(DomainName::parse("StarLogistics.co.tz")
            .unwrap()
            .is_under(&tld));
        assert!(!DomainName::parse("starlogistics.com")
            .unwrap()
            .is_under(&tld));
        assert!(!DomainName::parse("www.starlogistics.co.tz")
            .unwrap()
            .is_under(&tld));
        assert!(!DomainName::parse("xco.tz").unwrap().is_under(&tld));
    }

    #[test]
    fn cycles_advance_by_calendar_months_clamped_to_month_end() {
        let d = NaiveDate::from_ymd_opt(2026, 1, 31).unwrap();
        assert_eq!(
            BillingCycle::Monthly.advance(d),
            NaiveDate::from_ymd_opt(2026, 2, 28).unwrap()
        );
        assert_eq!(
            BillingCycle::Triennially.advance(d),
            NaiveDate::from_ymd_opt(2029, 1, 31).unwrap()
        );
        assert_eq!(
            BillingCycle::Monthly.after(d, 2),
            NaiveDate::from_ymd_opt(2026, 3, 31).unwrap()
        );
        assert!(BillingCycle::Biennially.is_yearly());
        assert!(!BillingCycle::SemiAnnually.is_yearly());
    }
}
