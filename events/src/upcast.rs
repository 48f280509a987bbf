//! Upcasting: bringing a stored event to the current schema version of its type.
//!
//! The log is append-only, so an event keeps the payload and version it was written with for
//! ever. When the schema of an event type changes, its version is raised and a step is added here
//! that turns a payload of the previous version into one of the next. Every reader that decodes
//! stored events passes them through [`upcast`] first, so aggregates and projections only ever see
//! the current version of each type.
//!
//! A step sees exactly one stored event, its payload and its envelope, and nothing else: it derives
//! the next version from that event alone, or fails with an error naming the event.
//!
//! Architecture Invariant: upcasting changes the copy a reader holds, never the stored row. The
//! `hash` and `key_id` of an upcast event are left as stored, because they describe the row as
//! written; tamper evidence is checked on rows as read from the store, before upcasting.

use serde_json::Value;

use crate::{stream_type, Actor, StoredEvent};

/// Why a stored event cannot be brought to the current version of its type.
///
/// Every variant names the event's position and type, so an operator can find the row.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpcastError {
    /// The stored version is not a positive integer in canonical form (`1`, `2`, ...).
    #[error(
        "the event at position {position} ({event_type}) has version `{version}`, \
         which is not a positive integer"
    )]
    InvalidVersion {
        /// The event's position.
        position: u64,
        /// The event's type name.
        event_type: String,
        /// The version as stored.
        version: String,
    },
    /// The stored version is newer than any this release knows: it was written by a later
    /// release, and reading it as an older version could misread it.
    #[error(
        "the event at position {position} ({event_type}) has version {version}, \
         newer than version {current}, the latest this release knows"
    )]
    FutureVersion {
        /// The event's position.
        position: u64,
        /// The event's type name.
        event_type: String,
        /// The version as stored.
        version: u32,
        /// The current version of the type in this release.
        current: u32,
    },
    /// The event lacks something the step to the next version needs.
    #[error(
        "the event at position {position} ({event_type} v{version}) cannot be upcast: \
         it lacks {missing}"
    )]
    Missing {
        /// The event's position.
        position: u64,
        /// The event's type name.
        event_type: String,
        /// The version the failing step starts from.
        version: u32,
        /// What the step needed and did not find.
        missing: &'static str,
    },
    /// The payload is not shaped like the version it claims to be.
    #[error(
        "the event at position {position} ({event_type} v{version}) cannot be upcast: {reason}"
    )]
    Malformed {
        /// The event's position.
        position: u64,
        /// The event's type name.
        event_type: String,
        /// The version the failing step starts from.
        version: u32,
        /// What is wrong with the payload.
        reason: &'static str,
    },
    /// The chain of steps has a hole: there is a later version but no step from this one.
    #[error(
        "the event at position {position} ({event_type} v{version}) cannot be upcast: \
         this release has no step from version {version}"
    )]
    NoStep {
        /// The event's position.
        position: u64,
        /// The event's type name.
        event_type: String,
        /// The version no step starts from.
        version: u32,
    },
}

/// What a step reports when it cannot run; [`upcast`] adds the event's position and type.
#[derive(Debug)]
enum StepFailure {
    Missing(&'static str),
    Malformed(&'static str),
}

/// One step of a chain: turns version `from` of one event type into version `from + 1`.
struct Step {
    stream_type: &'static str,
    event_type: &'static str,
    from: u32,
    run: fn(&mut StoredEvent) -> Result<(), StepFailure>,
}

/// Every step, keyed by stream type, event type and the version it starts from.
///
/// The steps of one event type must form an unbroken chain starting at version 1.
const STEPS: &[Step] = &[Step {
    stream_type: stream_type::CLIENT_ACCOUNT,
    event_type: "UserInvited",
    from: 1,
    run: user_invited_v1_to_v2,
}];

/// The current schema version of an event type: 1 plus the number of steps of its chain.
///
/// Types without steps, including types this release does not know, are at version 1.
pub fn current_version(stream_type: &str, event_type: &str) -> u32 {
    steps_of(stream_type, event_type)
        .map(|step| step.from + 1)
        .max()
        .unwrap_or(1)
}

/// Whether `event` is stored at the current version of its type, so [`upcast`] would return it
/// unchanged. An event with an unparsable version is not current.
pub fn is_current(event: &StoredEvent) -> bool {
    parse_version(&event.event_version)
        .is_some_and(|v| v == current_version(&event.stream_type, &event.event_type))
}

/// Brings `event` to the current version of its type, one step at a time.
///
/// An event already at the current version is returned unchanged. On success the payload has
/// the current version's shape and `event_version` names that version; every other field,
/// including `hash` and `key_id`, is as stored. A version that is not a positive integer, a
/// version newer than this release knows, or an event a step cannot convert is an error that
/// names the event's position and type; an event is never passed on at a version its readers
/// do not expect.
pub fn upcast(mut event: StoredEvent) -> Result<StoredEvent, UpcastError> {
    let Some(stored) = parse_version(&event.event_version) else {
        return Err(UpcastError::InvalidVersion {
            position: event.position,
            event_type: event.event_type,
            version: event.event_version,
        });
    };
    let current = current_version(&event.stream_type, &event.event_type);
    if stored == current {
        return Ok(event);
    }
    if stored > current {
        return Err(UpcastError::FutureVersion {
            position: event.position,
            event_type: event.event_type,
            version: stored,
            current,
        });
    }

    for version in stored..current {
        let step = steps_of(&event.stream_type, &event.event_type)
            .find(|step| step.from == version)
            .ok_or_else(|| UpcastError::NoStep {
                position: event.position,
                event_type: event.event_type.clone(),
                version,
            })?;
        (step.run)(&mut event).map_err(|failure| {
            let (position, event_type) = (event.position, event.event_type.clone());
            match failure {
                StepFailure::Missing(missing) => UpcastError::Missing {
                    position,
                    event_type,
                    version,
                    missing,
                },
                StepFailure::Malformed(reason) => UpcastError::Malformed {
                    position,
                    event_type,
                    version,
                    reason,
                },
            }
        })?;
    }
    event.event_version = current.to_string();
    Ok(event)
}

fn steps_of<'a>(
    stream_type: &'a str,
    event_type: &'a str,
) -> impl Iterator<Item = &'static Step> + 'a {
    STEPS
        .iter()
        .filter(move |step| step.stream_type == stream_type && step.event_type == event_type)
}

/// A version in the form the stores write: a positive integer without sign or leading zeros.
fn parse_version(version: &str) -> Option<u32> {
    let canonical = !version.is_empty()
        && !version.starts_with('0')
        && version.bytes().all(|b| b.is_ascii_digit());
    if canonical {
        version.parse().ok()
    } else {
        None
    }
}

/// The payload object of an externally tagged event `{"<event type>": {...}}`.
fn body_mut<'a>(
    payload: &'a mut Value,
    event_type: &str,
) -> Result<&'a mut serde_json::Map<String, Value>, StepFailure> {
    payload
        .get_mut(event_type)
        .and_then(Value::as_object_mut)
        .ok_or(StepFailure::Malformed(
            "the payload is not an object under its event type",
        ))
}

/// `UserInvited` v2 names the user who sent the invitation (`invited_by`).
///
/// In version 1 only the owner could invite, and only as a user (the command was refused for
/// any other actor), so the envelope's actor of a v1 invitation is exactly who sent it.
fn user_invited_v1_to_v2(event: &mut StoredEvent) -> Result<(), StepFailure> {
    let Actor::User(inviter) = &event.metadata.actor else {
        return Err(StepFailure::Missing(
            "a user as the envelope's actor, who sent the invitation",
        ));
    };
    let inviter = Value::String(inviter.to_string());
    let body = body_mut(&mut event.payload, "UserInvited")?;
    if body.contains_key("invited_by") {
        return Err(StepFailure::Malformed(
            "a version 1 payload already has `invited_by`",
        ));
    }
    body.insert("invited_by".to_owned(), inviter);
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::account::{InvoiceKind, InvoiceLine, RemovalReason};
    use crate::values::{BillingCycle, Currency, DomainName, Email, Name, ProductKind};
    use crate::{
        AccountEvent, CatalogEvent, EventSchema, Metadata, Permission, PermissionSet, Price,
        Product, UserEvent,
    };

    const OWNER: Uuid = Uuid::from_u128(0x0a);
    const INVITATION: Uuid = Uuid::from_u128(0x1a);

    fn stored(
        stream_type: &str,
        event_type: &str,
        version: &str,
        payload: Value,
        actor: Actor,
    ) -> StoredEvent {
        StoredEvent {
            event_id: Uuid::from_u128(0xe1),
            position: 7,
            stream_id: format!("account-{}", Uuid::from_u128(0xac)),
            stream_type: stream_type.to_owned(),
            version: 3,
            occurred_at: Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap(),
            event_type: event_type.to_owned(),
            event_version: version.to_owned(),
            payload,
            metadata: Metadata::new(actor),
            key_id: Some("key-1".to_owned()),
            hash: Some("stored-hash".to_owned()),
        }
    }

    fn v1_invitation() -> Value {
        json!({"UserInvited": {
            "invitation_id": INVITATION,
            "email": "designer@yourcompany.com",
            "permissions": ["INVOICES"],
            "expires_at": "2026-03-08T09:00:00Z",
        }})
    }

    fn v1_invited(actor: Actor) -> StoredEvent {
        stored(
            stream_type::CLIENT_ACCOUNT,
            "UserInvited",
            "1",
            v1_invitation(),
            actor,
        )
    }

    #[test]
    fn a_v1_invitation_gains_its_owner_actor_as_invited_by_and_becomes_v2() {
        let before = v1_invited(Actor::User(OWNER));

        let after = upcast(before.clone()).unwrap();

        let mut expected = before;
        expected.event_version = "2".to_owned();
        expected.payload = json!({"UserInvited": {
            "invitation_id": INVITATION,
            "email": "designer@yourcompany.com",
            "permissions": ["INVOICES"],
            "expires_at": "2026-03-08T09:00:00Z",
            "invited_by": OWNER,
        }});
        assert_eq!(after, expected);
    }

    #[test]
    fn an_upcast_v1_invitation_decodes_as_the_v2_event() {
        let after = upcast(v1_invited(Actor::User(OWNER))).unwrap();

        assert_eq!(
            after.decode::<AccountEvent>().unwrap(),
            AccountEvent::UserInvited {
                invitation_id: INVITATION,
                email: Email::parse("designer@yourcompany.com").unwrap(),
                permissions: [Permission::Invoices].into_iter().collect(),
                expires_at: Utc.with_ymd_and_hms(2026, 3, 8, 9, 0, 0).unwrap(),
                invited_by: OWNER,
            }
        );
    }

    #[test]
    fn upcasting_keeps_the_stored_hash_and_key_id() {
        let after = upcast(v1_invited(Actor::User(OWNER))).unwrap();

        assert_eq!(after.hash.as_deref(), Some("stored-hash"));
        assert_eq!(after.key_id.as_deref(), Some("key-1"));
    }

    #[test]
    fn a_v1_invitation_whose_actor_is_not_a_user_is_an_error_naming_position_and_type() {
        let error = upcast(v1_invited(Actor::Service("billing".into()))).unwrap_err();

        assert_eq!(
            error,
            UpcastError::Missing {
                position: 7,
                event_type: "UserInvited".into(),
                version: 1,
                missing: "a user as the envelope's actor, who sent the invitation",
            }
        );
        assert_eq!(
            error.to_string(),
            "the event at position 7 (UserInvited v1) cannot be upcast: it lacks a user as the \
             envelope's actor, who sent the invitation"
        );
    }

    #[test]
    fn a_v1_invitation_payload_that_is_not_an_object_under_its_type_is_malformed() {
        let event = stored(
            stream_type::CLIENT_ACCOUNT,
            "UserInvited",
            "1",
            json!({"InvitationCancelled": {"invitation_id": INVITATION}}),
            Actor::User(OWNER),
        );

        assert_eq!(
            upcast(event).unwrap_err(),
            UpcastError::Malformed {
                position: 7,
                event_type: "UserInvited".into(),
                version: 1,
                reason: "the payload is not an object under its event type",
            }
        );
    }

    #[test]
    fn a_v1_invitation_that_already_names_an_inviter_is_malformed() {
        let mut payload = v1_invitation();
        payload["UserInvited"]["invited_by"] = json!(OWNER);
        let event = stored(
            stream_type::CLIENT_ACCOUNT,
            "UserInvited",
            "1",
            payload,
            Actor::User(OWNER),
        );

        assert_eq!(
            upcast(event).unwrap_err(),
            UpcastError::Malformed {
                position: 7,
                event_type: "UserInvited".into(),
                version: 1,
                reason: "a version 1 payload already has `invited_by`",
            }
        );
    }

    #[test]
    fn an_event_at_its_current_version_is_returned_unchanged() {
        let v2 = upcast(v1_invited(Actor::User(OWNER))).unwrap();
        let cancelled = stored(
            stream_type::CLIENT_ACCOUNT,
            "InvitationCancelled",
            "1",
            json!({"InvitationCancelled": {"invitation_id": INVITATION}}),
            Actor::User(OWNER),
        );

        assert_eq!(upcast(v2.clone()).unwrap(), v2);
        assert_eq!(upcast(cancelled.clone()).unwrap(), cancelled);
        assert!(is_current(&v2));
        assert!(is_current(&cancelled));
        assert!(!is_current(&v1_invited(Actor::User(OWNER))));
    }

    #[test]
    fn a_version_newer_than_this_release_knows_is_an_error() {
        let mut event = v1_invited(Actor::User(OWNER));
        event.event_version = "3".into();
        let mut registered = stored(
            stream_type::USER,
            "UserRegistered",
            "2",
            json!({}),
            Actor::System,
        );
        registered.position = 8;

        assert_eq!(
            upcast(event).unwrap_err(),
            UpcastError::FutureVersion {
                position: 7,
                event_type: "UserInvited".into(),
                version: 3,
                current: 2,
            }
        );
        assert_eq!(
            upcast(registered).unwrap_err().to_string(),
            "the event at position 8 (UserRegistered) has version 2, newer than version 1, the \
             latest this release knows"
        );
    }

    #[test]
    fn a_version_that_is_not_a_positive_integer_is_an_error() {
        for version in ["", "0", "01", "+1", "1.0", "v1", "-1", " 1", "99999999999"] {
            let mut event = v1_invited(Actor::User(OWNER));
            event.event_version = version.into();

            assert_eq!(
                upcast(event).unwrap_err(),
                UpcastError::InvalidVersion {
                    position: 7,
                    event_type: "UserInvited".into(),
                    version: version.into(),
                },
                "version `{version}`"
            );
        }
    }

    #[test]
    fn steps_are_keyed_by_stream_type_as_well_as_event_type() {
        let elsewhere = stored(
            stream_type::USER,
            "UserInvited",
            "1",
            v1_invitation(),
            Actor::User(OWNER),
        );

        assert_eq!(current_version(stream_type::USER, "UserInvited"), 1);
        assert_eq!(upcast(elsewhere.clone()).unwrap(), elsewhere);
    }

    #[test]
    fn every_chain_of_steps_is_unbroken_from_version_1() {
        for step in STEPS {
            for from in 1..step.from {
                assert!(
                    steps_of(step.stream_type, step.event_type).any(|s| s.from == from),
                    "{}/{} has no step from version {from}",
                    step.stream_type,
                    step.event_type
                );
            }
            assert_eq!(
                steps_of(step.stream_type, step.event_type)
                    .filter(|s| s.from == step.from)
                    .count(),
                1,
                "{}/{} has two steps from version {}",
                step.stream_type,
                step.event_type,
                step.from
            );
        }
    }

    /// One event of every type, so that a new type or version cannot be forgotten here.
    fn every_event() -> Vec<(&'static str, String, String)> {
        let id = Uuid::from_u128(1);
        let day = chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
        let name = Name::parse("ABC Company").unwrap();
        let email = Email::parse("admin@abc.co.tz").unwrap();
        let permissions = PermissionSet::full();
        let money = Currency::parse("TZS").unwrap();
        let account = [
            AccountEvent::AccountCreated {
                account_id: id,
                name: name.clone(),
                email: email.clone(),
                owner_user_id: id,
            },
            AccountEvent::AccountProfileUpdated {
                name: name.clone(),
                email: email.clone(),
            },
            AccountEvent::UserInvited {
                invitation_id: id,
                email: email.clone(),
                permissions: permissions.clone(),
                expires_at: Utc::now(),
                invited_by: id,
            },
            AccountEvent::InvitationResent {
                invitation_id: id,
                generation: 1,
                expires_at: Utc::now(),
            },
            AccountEvent::InvitationCancelled { invitation_id: id },
            AccountEvent::InvitationAccepted {
                invitation_id: id,
                user_id: id,
                permissions: permissions.clone(),
            },
            AccountEvent::InvitationDeclined {
                invitation_id: id,
                user_id: id,
            },
            AccountEvent::PermissionsGranted {
                user_id: id,
                granted: permissions.clone(),
                permissions: permissions.clone(),
            },
            AccountEvent::PermissionsRevoked {
                user_id: id,
                revoked: permissions.clone(),
                permissions: permissions.clone(),
            },
            AccountEvent::MemberRemoved {
                user_id: id,
                reason: RemovalReason::Left,
            },
            AccountEvent::OwnershipTransferred {
                from_user_id: id,
                to_user_id: id,
            },
            AccountEvent::ServiceOrdered {
                service_id: id,
                product_id: id,
                product_name: name.clone(),
                kind: ProductKind::Domain,
                domain: Some(DomainName::parse("abc.co.tz").unwrap()),
                billing_cycle: BillingCycle::Annually,
                amount_minor: 1,
                currency: money.clone(),
                ordered_on: day,
                next_due_date: day,
            },
            AccountEvent::InvoiceIssued {
                invoice_id: id,
                service_id: id,
                kind: InvoiceKind::Order,
                lines: vec![InvoiceLine {
                    description: "x".into(),
                    amount_minor: 1,
                }],
                total_minor: 1,
                currency: money,
                issued_on: day,
                due_date: day,
            },
            AccountEvent::PaymentReceived {
                invoice_id: id,
                payment_id: id,
                amount_minor: 1,
                reference: "r".into(),
            },
            AccountEvent::InvoicePaid { invoice_id: id },
            AccountEvent::InvoiceCancelled { invoice_id: id },
            AccountEvent::ServiceRenewed {
                service_id: id,
                next_due_date: day,
            },
            AccountEvent::ServiceCancelled { service_id: id },
            AccountEvent::NameserversUpdated {
                service_id: id,
                nameservers: vec![],
            },
        ];
        let mut all: Vec<_> = account
            .iter()
            .map(|e| {
                (
                    stream_type::CLIENT_ACCOUNT,
                    e.event_type().to_owned(),
                    e.event_version().to_owned(),
                )
            })
            .collect();
        let user = UserEvent::UserRegistered {
            user_id: id,
            email,
            display_name: name,
        };
        all.push((
            stream_type::USER,
            user.event_type().into(),
            user.event_version().into(),
        ));
        let product = CatalogEvent::ProductPut {
            product: Product {
                product_id: id,
                name: Name::parse("Starter Hosting").unwrap(),
                kind: ProductKind::Hosting,
                tld: None,
                prices: vec![Price {
                    billing_cycle: BillingCycle::Monthly,
                    amount: crate::values::Money::new(1, Currency::parse("TZS").unwrap()).unwrap(),
                }],
            },
        };
        all.push((
            stream_type::CATALOG,
            product.event_type().into(),
            product.event_version().into(),
        ));
        all
    }

    #[test]
    fn every_event_type_declares_the_version_its_chain_of_steps_ends_at() {
        for (stream, event_type, declared) in every_event() {
            assert_eq!(
                current_version(stream, &event_type).to_string(),
                declared,
                "{stream}/{event_type}"
            );
        }
        assert_eq!(
            current_version(stream_type::CLIENT_ACCOUNT, "UserInvited"),
            2
        );
    }
}
