//! Arbitrary text through every value parser of the boundary: emails, names, domain names,
//! TLDs, currencies and permissions.
//!
//! Nothing may panic. An accepted value parses back to itself from its display and keeps its
//! type's rules; a refused one carries a message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use onbehalf_events::values::{email_key, Currency, DomainName, Email, Name, Tld};
use onbehalf_events::Permission;

fuzz_target!(|bytes: &[u8]| {
    let raw = String::from_utf8_lossy(bytes);
    let raw = raw.as_ref();

    match Email::parse(raw) {
        Ok(email) => {
            assert_eq!(email.as_str(), raw.trim());
            assert_eq!(Email::parse(&email.to_string()).as_ref(), Ok(&email));
            assert!(email.as_str().chars().count() <= 254);
            assert!(!email.as_str().chars().any(|c| c.is_control() || c.is_whitespace()));
            assert_eq!(email_key(&email.key()), email.key());
        }
        Err(error) => assert!(!error.0.is_empty()),
    }
    match Name::parse(raw) {
        Ok(name) => {
            assert_eq!(name.as_str(), raw.trim());
            assert_eq!(Name::parse(&name.to_string()).as_ref(), Ok(&name));
            assert!((1..=200).contains(&name.as_str().chars().count()));
            assert!(!name.as_str().chars().any(char::is_control));
        }
        Err(error) => assert!(!error.0.is_empty()),
    }
    match DomainName::parse(raw) {
        Ok(domain) => {
            assert_eq!(DomainName::parse(&domain.to_string()).as_ref(), Ok(&domain));
            assert!(domain.as_str().is_ascii());
        }
        Err(error) => assert!(!error.0.is_empty()),
    }
    match Tld::parse(raw) {
        Ok(tld) => assert_eq!(Tld::parse(tld.as_str()).as_ref(), Ok(&tld)),
        Err(error) => assert!(!error.0.is_empty()),
    }
    match Currency::parse(raw) {
        Ok(currency) => assert_eq!(Currency::parse(&currency.to_string()).as_ref(), Ok(&currency)),
        Err(error) => assert!(!error.0.is_empty()),
    }
    if let Ok(permission) = raw.parse::<Permission>() {
        assert_eq!(permission.as_str(), raw);
    }
});
