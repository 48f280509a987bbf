//! Personal data in events: whose data key seals a personal field, how a sealed field is
//! written, and what a field reads as once its key was erased.
//!
//! Each event type names its personal fields ([`crate::EventSchema::personal_fields`]). The
//! store seals those fields under the data key of the event's [`DataSubject`] when it appends,
//! and opens them again when it reads, so that aggregates and read models see the plain value
//! while the key exists. Erasing a subject deletes its key: every field it sealed then reads as
//! the fixed placeholder of its kind ([`ERASED_EMAIL`], [`ERASED_NAME`]), which is a valid value
//! of the field's type, so every reader of the log keeps working unchanged.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::values::{Email, Name};

/// What an erased email field reads as. The `.invalid` top-level domain is reserved (RFC 2606)
/// and can never receive mail; [`Email::parse`] refuses this address, so no caller can give it.
pub const ERASED_EMAIL: &str = "erased@erased.invalid";

/// What an erased name field reads as.
pub const ERASED_NAME: &str = "[erased]";

/// The one member of the JSON object that replaces a sealed field in a stored payload:
/// `{"$sealed": "<base64 of nonce and ciphertext>"}`.
pub const SEALED_MEMBER: &str = "$sealed";

/// Whose data key seals an event's personal fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSubject {
    /// The stream the event belongs to: a user's fields under the user's key, a client
    /// account's profile under the account's key.
    OwnStream,
    /// The person an email belongs to, who may not be a user yet (an invitee). Erasing the
    /// user registered with that email erases this key too.
    Email(Email),
}

/// The id of the data subject of a stream (`user-<uuid>`, `account-<uuid>`): the stream id.
pub fn stream_subject(stream_id: &str) -> String {
    stream_id.to_owned()
}

/// The id of the data subject of an email: `email-` and the SHA-256 of its comparison key
/// ([`Email::key`]) in hex, so that the key table names no address.
pub fn email_subject(email: &Email) -> String {
    let digest = Sha256::digest(email.key().as_bytes());
    let mut id = String::with_capacity(6 + 64);
    id.push_str("email-");
    for byte in digest {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

/// The data subjects whose keys erasing a user deletes: its own (`user-<uuid>`) and that of its
/// login email, which seals invitations sent to it.
pub fn user_subjects(user_id: Uuid, email: &Email) -> Vec<String> {
    vec![
        stream_subject(&crate::user_stream(user_id)),
        email_subject(email),
    ]
}

/// The placeholder a personal field reads as once its key was erased: [`ERASED_EMAIL`] for a
/// field whose name ends in `email`, [`ERASED_NAME`] for any other.
pub fn erased_value(field: &str) -> serde_json::Value {
    if field.ends_with("email") {
        serde_json::Value::String(ERASED_EMAIL.to_owned())
    } else {
        serde_json::Value::String(ERASED_NAME.to_owned())
    }
}

/// The sealed text of a payload field, when the field holds a sealed value.
pub fn sealed_text(value: &serde_json::Value) -> Option<&str> {
    match value {
        serde_json::Value::Object(members) if members.len() == 1 => {
            members.get(SEALED_MEMBER).and_then(|v| v.as_str())
        }
        _ => None,
    }
}

impl Email {
    /// Whether this is the placeholder of an erased email.
    pub fn is_erased(&self) -> bool {
        self.as_str() == ERASED_EMAIL
    }
}

impl Name {
    /// Whether this is the placeholder of an erased name.
    pub fn is_erased(&self) -> bool {
        self.as_str() == ERASED_NAME
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_email_subject_is_the_same_for_any_case_and_names_no_address() {
        let lower = Email::parse("designer@yourcompany.com").unwrap();
        let upper = Email::parse("Designer@YourCompany.com").unwrap();
        let subject = email_subject(&lower);
        assert_eq!(subject, email_subject(&upper));
        assert_eq!(subject.len(), 6 + 64);
        assert!(subject.starts_with("email-"));
        assert!(!subject.contains("designer"));
    }

    #[test]
    fn erased_fields_read_as_valid_placeholders_of_their_kind() {
        assert_eq!(erased_value("email"), serde_json::json!(ERASED_EMAIL));
        assert_eq!(erased_value("display_name"), serde_json::json!(ERASED_NAME));
        assert_eq!(erased_value("name"), serde_json::json!(ERASED_NAME));
        let email: Email = serde_json::from_value(erased_value("email")).unwrap();
        assert!(email.is_erased());
        let name: Name = serde_json::from_value(erased_value("name")).unwrap();
        assert!(name.is_erased());
    }

    #[test]
    fn the_erased_email_cannot_be_given_by_a_caller() {
        assert!(Email::parse(ERASED_EMAIL).is_err());
        assert!(Email::parse("Erased@Erased.Invalid").is_err());
    }

    #[test]
    fn only_an_object_with_the_one_sealed_member_is_sealed() {
        assert_eq!(
            sealed_text(&serde_json::json!({ "$sealed": "abc" })),
            Some("abc")
        );
        assert_eq!(sealed_text(&serde_json::json!("abc")), None);
        assert_eq!(
            sealed_text(&serde_json::json!({ "$sealed": "abc", "x": 1 })),
            None
        );
        assert_eq!(sealed_text(&serde_json::json!({ "$sealed": 1 })), None);
    }
}
