//! Arbitrary bytes through the read path of a stored event: envelope decoding, upcasting, and
//! decoding of the payload into its stream's event type.
//!
//! Nothing may panic. An envelope that decodes round-trips through its encoding (payloads
//! holding floats aside: serde_json parses them to within one ulp); upcasting either fails
//! naming the event's position or yields a current event that upcasting leaves alone, with every
//! envelope field but payload and version as stored; a payload that decodes round-trips.

#![no_main]

use libfuzzer_sys::fuzz_target;
use onbehalf_events::upcast::is_current;
use onbehalf_events::{
    stream_type, upcast, AccountEvent, CatalogEvent, Metadata, StoredEvent, UserEvent,
};
use serde_json::Value;

fn has_float(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(map) => map.values().any(has_float),
        _ => false,
    }
}

fn payload_round_trips<E>(event: &StoredEvent)
where
    E: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    if let Ok(decoded) = event.decode::<E>() {
        let encoded = serde_json::to_value(&decoded).expect("a decoded payload encodes");
        let again: E = serde_json::from_value(encoded).expect("its encoding decodes");
        assert_eq!(again, decoded);
    }
}

fuzz_target!(|bytes: &[u8]| {
    if let Ok(metadata) = serde_json::from_slice::<Metadata>(bytes) {
        let encoded = serde_json::to_vec(&metadata).expect("metadata encodes");
        assert_eq!(serde_json::from_slice::<Metadata>(&encoded).ok(), Some(metadata));
    }
    let Ok(event) = serde_json::from_slice::<StoredEvent>(bytes) else {
        return;
    };
    let encoded = serde_json::to_vec(&event).expect("an envelope encodes");
    let again: StoredEvent = serde_json::from_slice(&encoded).expect("its encoding decodes");
    if !has_float(&event.payload) {
        assert_eq!(again, event);
    }
    match upcast(event.clone()) {
        Ok(current) => {
            assert!(is_current(&current));
            assert_eq!(upcast(current.clone()).as_ref(), Ok(&current));
            let mut unchanged = current.clone();
            unchanged.payload = event.payload.clone();
            unchanged.event_version = event.event_version.clone();
            assert_eq!(unchanged, event);
            match current.stream_type.as_str() {
                stream_type::CLIENT_ACCOUNT => payload_round_trips::<AccountEvent>(&current),
                stream_type::USER => payload_round_trips::<UserEvent>(&current),
                stream_type::CATALOG => payload_round_trips::<CatalogEvent>(&current),
                _ => {}
            }
        }
        Err(error) => {
            assert!(error
                .to_string()
                .contains(&format!("position {}", event.position)));
        }
    }
});
