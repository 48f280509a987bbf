//! Hostile input for the value types parsed at the boundary: arbitrary strings, and strings
//! built from the characters that trip parsers (controls, NUL, bidirectional marks, invisible
//! and combining characters, homoglyphs, quotes, dots, at signs, spaces).
//!
//! Whatever the input, no parser panics. A value a parser accepts is parsed back to itself from
//! its own display (`parse(display(x)) == x`), survives a serde round trip, and keeps the rules
//! its type promises; a value it refuses yields its typed error with a message.
//!
//! The case count follows `PROPTEST_CASES` when it is set.

use onbehalf_events::permission::UnknownPermission;
use onbehalf_events::values::{
    email_key, Currency, DomainName, Email, InvalidValue, Money, Name, Tld,
};
use onbehalf_events::Permission;
use proptest::prelude::*;

/// Characters that parsers of names and emails must think about.
const TRICKY: &[char] = &[
    'a',
    'Z',
    '0',
    '9',
    '@',
    '.',
    '-',
    '_',
    '+',
    '\'',
    '"',
    ';',
    ' ',
    '\t',
    '\n',
    '\r',
    '\0',
    '\u{7}',
    '\u{7F}',
    '\u{85}',
    '\u{A0}',
    '\u{AD}',
    '\u{200B}',
    '\u{200D}',
    '\u{200E}',
    '\u{200F}',
    '\u{202A}',
    '\u{202E}',
    '\u{2066}',
    '\u{2069}',
    '\u{FEFF}',
    '\u{0301}',
    '\u{0307}',
    '\u{0430}',
    '\u{0435}',
    '\u{0131}',
    '\u{0130}',
    '\u{212A}',
    'ü',
    'é',
    'ß',
    '\u{E000}',
    '\u{E0041}',
    '\u{10FFFF}',
    '\u{1F600}',
    '\u{3000}',
    '\u{2028}',
    'х',
    'ν',
];

fn tricky_string(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(prop::sample::select(TRICKY), 0..max)
            .prop_map(|cs| cs.into_iter().collect()),
        any::<String>(),
        // Email-shaped: a tricky local part and domain around one `@`.
        (
            prop::collection::vec(prop::sample::select(TRICKY), 0..12),
            prop::collection::vec(prop::sample::select(TRICKY), 0..12),
            prop::sample::select(vec!["com", "co.tz", "xn--bcher-kva.example", "", "c"]),
        )
            .prop_map(|(local, domain, tld)| {
                let local: String = local.into_iter().collect();
                let domain: String = domain.into_iter().collect();
                format!("{local}@{domain}.{tld}")
            }),
    ]
}

fn config(default_cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = default_cases;
    }
    config
}

fn no_hidden_characters(s: &str) -> bool {
    !s.chars().any(|c| {
        c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}' | '\u{AD}')
    })
}

fn serde_round_trip<T>(value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let json = serde_json::to_string(value).expect("a value encodes");
    let back: T = serde_json::from_str(&json).expect("its encoding decodes");
    assert_eq!(&back, value);
}

fn refused(error: InvalidValue) {
    assert!(!error.0.is_empty(), "a refusal says which rule was broken");
}

fn check_email(raw: &str) {
    match Email::parse(raw) {
        Ok(email) => {
            assert_eq!(
                email.as_str(),
                raw.trim(),
                "stored exactly as given, trimmed"
            );
            assert_eq!(Email::parse(&email.to_string()), Ok(email.clone()));
            serde_round_trip(&email);
            let s = email.as_str();
            assert!(s.chars().count() <= 254);
            assert!(no_hidden_characters(s), "{s:?}");
            assert!(!s.chars().any(char::is_whitespace), "{s:?}");
            let (local, domain) = s.rsplit_once('@').expect("an accepted email has `@`");
            assert!(!local.is_empty() && !local.contains('@'));
            assert!(domain.contains('.'));
            assert_eq!(email.key(), email_key(s));
            assert_eq!(email_key(&email.key()), email.key(), "keys are stable");
        }
        Err(error) => refused(error),
    }
}

fn check_name(raw: &str) {
    match Name::parse(raw) {
        Ok(name) => {
            assert_eq!(name.as_str(), raw.trim());
            assert_eq!(Name::parse(&name.to_string()), Ok(name.clone()));
            serde_round_trip(&name);
            assert!((1..=200).contains(&name.as_str().chars().count()));
            assert!(no_hidden_characters(name.as_str()), "{name:?}");
        }
        Err(error) => refused(error),
    }
}

fn check_domain(raw: &str) {
    match DomainName::parse(raw) {
        Ok(domain) => {
            assert_eq!(DomainName::parse(&domain.to_string()), Ok(domain.clone()));
            serde_round_trip(&domain);
            let s = domain.as_str();
            assert!(s.is_ascii() && !s.chars().any(|c| c.is_ascii_uppercase()));
            assert!(s.split('.').count() >= 2 && s.split('.').all(|l| !l.is_empty()));
        }
        Err(error) => refused(error),
    }
}

fn check_tld(raw: &str) {
    match Tld::parse(raw) {
        Ok(tld) => {
            assert_eq!(Tld::parse(tld.as_str()), Ok(tld.clone()));
            assert!(tld.as_str().starts_with('.') && tld.as_str().is_ascii());
        }
        Err(error) => refused(error),
    }
}

fn check_currency(raw: &str) {
    match Currency::parse(raw) {
        Ok(currency) => {
            assert_eq!(Currency::parse(&currency.to_string()), Ok(currency.clone()));
            serde_round_trip(&currency);
            assert_eq!(currency.as_str().len(), 3);
        }
        Err(error) => refused(error),
    }
}

fn check_permission(raw: &str) {
    match raw.parse::<Permission>() {
        Ok(permission) => {
            assert_eq!(permission.to_string(), raw, "only exact names are accepted");
            assert_eq!(permission.as_str().parse::<Permission>(), Ok(permission));
            serde_round_trip(&permission);
        }
        Err(error) => assert_eq!(error, UnknownPermission(raw.to_owned())),
    }
}

#[test]
fn the_parsers_decide_the_known_hard_cases_as_documented() {
    // Homoglyphs and internationalised domains are distinct addresses, stored exactly.
    assert_eq!(
        Email::parse("user@\u{0430}bc.com").map(|e| e.to_string()),
        Ok("user@\u{0430}bc.com".to_owned())
    );
    assert_eq!(
        Email::parse("user@bücher.example").map(|e| e.to_string()),
        Ok("user@bücher.example".to_owned())
    );
    // Bidirectional marks, NUL and decomposed forms are refused.
    for bad in [
        "user\u{202E}@abc.com",
        "us\0er@abc.com",
        "jose\u{0301}@abc.com",
    ] {
        assert!(Email::parse(bad).is_err(), "{bad:?}");
    }
    assert!(Name::parse("ABC\0 Company").is_err());
    assert!(Name::parse(&"x".repeat(201)).is_err());
    assert_eq!(
        Name::parse("'; DROP TABLE events; --").map(|n| n.to_string()),
        Ok("'; DROP TABLE events; --".to_owned())
    );
    // Domain names take only the ASCII form.
    assert!(DomainName::parse("bücher.example").is_err());
    assert_eq!(
        DomainName::parse("XN--BCHER-KVA.Example.").map(|d| d.to_string()),
        Ok("xn--bcher-kva.example".to_owned())
    );
}

proptest! {
    #![proptest_config(config(4096))]

    #[test]
    fn emails_round_trip_when_accepted_and_are_refused_with_a_reason_otherwise(raw in tricky_string(40)) {
        check_email(&raw);
    }

    #[test]
    fn names_round_trip_when_accepted_and_are_refused_with_a_reason_otherwise(raw in tricky_string(40)) {
        check_name(&raw);
    }

    #[test]
    fn long_names_and_emails_are_bounded(len in 190usize..270, c in prop::sample::select(TRICKY)) {
        let long: String = std::iter::repeat_n(c, len).collect();
        check_name(&long);
        check_email(&format!("{long}@abc.com"));
        check_email(&format!("kim@{long}.com"));
        if Name::parse(&long).is_ok() {
            prop_assert!(long.trim().chars().count() <= 200);
        }
    }

    #[test]
    fn domains_tlds_currencies_and_permissions_round_trip_or_are_refused(raw in tricky_string(24)) {
        check_domain(&raw);
        check_tld(&raw);
        check_currency(&raw);
        check_permission(&raw);
    }

    #[test]
    fn money_is_accepted_exactly_between_zero_and_its_maximum(amount in prop_oneof![
        any::<i64>(),
        (Money::MAX_MINOR - 2)..=(Money::MAX_MINOR + 2),
        -2i64..=2,
    ]) {
        let tzs = Currency::parse("TZS").expect("a currency");
        match Money::new(amount, tzs.clone()) {
            Ok(money) => {
                prop_assert!((0..=Money::MAX_MINOR).contains(&amount));
                prop_assert_eq!(money.amount_minor, amount);
                serde_round_trip(&money);
            }
            Err(error) => {
                prop_assert!(!(0..=Money::MAX_MINOR).contains(&amount));
                refused(error);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_decoded_as_utf8_never_panic_any_parser(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let raw = String::from_utf8_lossy(&bytes);
        check_email(&raw);
        check_name(&raw);
        check_domain(&raw);
        check_tld(&raw);
        check_currency(&raw);
        check_permission(&raw);
    }
}
