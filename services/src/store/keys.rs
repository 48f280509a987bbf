//! Data keys: one key per data subject, kept in the store's `data_keys` table, that seals the
//! personal fields of events (crypto-shredding).
//!
//! An append seals each personal field its events name ([`Seal`]) under the key of the event's
//! subject, creating that key in the same transaction when the subject has none yet, and records
//! the key's id in the event's `key_id`. The sealed field is stored as
//! `{"$sealed": "<base64 of a 24-byte nonce and the XChaCha20-Poly1305 ciphertext>"}`, the
//! ciphertext of the field's JSON text, authenticated together with the key id, the event id and
//! the field name, so a sealed value cannot be moved to another event or field unnoticed.
//!
//! An append that erases subjects deletes their keys in its own transaction. Reads open every
//! sealed field again while its key exists; once the key is gone the field reads as the erased
//! placeholder of its kind ([`onbehalf_events::personal::erased_value`]). The hash chain covers
//! the sealed row, so deleting a key changes nothing the chain covers.
//!
//! Events written before sealing existed carry no `key_id` and no sealed field, and read back as
//! stored.
// LIMITATION: events appended before sealing existed keep their personal fields in plain text; erasing their user blanks the read models but cannot reach those rows.

use std::collections::{BTreeSet, HashMap};

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use onbehalf_events::personal::{erased_value, sealed_text, SEALED_MEMBER};
use onbehalf_events::StoredEvent;
use rand::RngCore;
use uuid::Uuid;

use super::{AppendBatch, RequestRecord, StoreError, StoreResult};

/// Which fields of a new event's payload to seal, and under whose key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seal {
    /// The data subject whose key seals the fields, e.g. `user-<uuid>` or `email-<digest>`
    /// ([`onbehalf_events::personal`]).
    pub subject: String,
    /// Top-level payload fields holding personal data; fields absent from the payload are
    /// skipped.
    pub fields: Vec<String>,
}

/// The length of a nonce of XChaCha20-Poly1305.
const NONCE_LEN: usize = 24;

/// A data key as the store holds it.
pub(crate) struct DataKey {
    /// The id events name in their `key_id`.
    pub(crate) key_id: String,
    /// The 256-bit key.
    pub(crate) bytes: [u8; 32],
}

impl std::fmt::Debug for DataKey {
    // The key itself is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl DataKey {
    /// A fresh random key with a fresh id.
    pub(crate) fn generate() -> DataKey {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        DataKey {
            key_id: format!("dk-{}", Uuid::new_v4()),
            bytes,
        }
    }
}

/// The bytes a sealed field is authenticated with besides its ciphertext.
fn associated_data(key_id: &str, event_id: Uuid, field: &str) -> Vec<u8> {
    format!("onbehalf.personal.v1\n{key_id}\n{event_id}\n{field}").into_bytes()
}

fn encoding() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD_NO_PAD
}

/// The subjects whose keys the batch's events need, each once, in order of first use.
pub(crate) fn subjects_to_seal(batch: &AppendBatch) -> Vec<String> {
    let mut seen = BTreeSet::new();
    batch
        .events
        .iter()
        .filter_map(|e| e.seal.as_ref())
        .filter(|seal| seen.insert(seal.subject.clone()))
        .map(|seal| seal.subject.clone())
        .collect()
}

/// The subjects whose keys the batch deletes.
pub(crate) fn subjects_to_erase(batch: &AppendBatch) -> Vec<String> {
    let set: BTreeSet<&String> = batch.events.iter().flat_map(|e| &e.erase).collect();
    set.into_iter().cloned().collect()
}

/// Seals the marked fields of every event of the batch under the keys of their subjects
/// (`keys` by subject) and sets each sealed event's `key_id`.
pub(crate) fn seal_batch(
    batch: &mut AppendBatch,
    keys: &HashMap<String, DataKey>,
) -> StoreResult<()> {
    for event in &mut batch.events {
        let Some(seal) = &event.seal else { continue };
        let key = keys.get(&seal.subject).ok_or_else(|| {
            StoreError::Backend(format!("no data key for subject {}", seal.subject).into())
        })?;
        let cipher = XChaCha20Poly1305::new(&Key::from(key.bytes));
        if let Some(members) = fields_mut(&mut event.payload) {
            for field in &seal.fields {
                let Some(value) = members.get_mut(field) else {
                    continue;
                };
                let aad = associated_data(&key.key_id, event.event_id, field);
                let text = seal_text(&cipher, value, &aad, "a personal field")?;
                *value = serde_json::json!({ SEALED_MEMBER: text });
            }
        }
        event.key_id = Some(key.key_id.clone());
    }
    Ok(())
}

/// Seals the batch's request outcome under the key of its last sealed subject, if any.
fn seal_request(batch: &mut AppendBatch, keys: &HashMap<String, DataKey>) -> StoreResult<()> {
    let subject = subjects_to_seal(batch).pop();
    match (batch.request.as_mut(), subject.and_then(|s| keys.get(&s))) {
        (Some(request), Some(key)) => seal_outcome(request, key),
        _ => Ok(()),
    }
}

/// The distinct key ids of events that hold at least one sealed field.
pub(crate) fn key_ids(events: &[StoredEvent]) -> Vec<String> {
    let set: BTreeSet<&String> = events
        .iter()
        .filter(|e| has_sealed(e))
        .filter_map(|e| e.key_id.as_ref())
        .collect();
    set.into_iter().cloned().collect()
}

fn has_sealed(event: &StoredEvent) -> bool {
    event.key_id.is_some()
        && fields(&event.payload).is_some_and(|m| m.values().any(|v| sealed_text(v).is_some()))
}

/// The fields of an event's payload: the members of the variant's object for a payload
/// `{"<Variant>": {...}}`, as serde writes the event enums, otherwise the payload's own members.
fn fields(payload: &serde_json::Value) -> Option<&serde_json::Map<String, serde_json::Value>> {
    let members = payload.as_object()?;
    match members.values().next() {
        Some(serde_json::Value::Object(inner)) if members.len() == 1 => Some(inner),
        _ => Some(members),
    }
}

fn fields_mut(
    payload: &mut serde_json::Value,
) -> Option<&mut serde_json::Map<String, serde_json::Value>> {
    let members = payload.as_object_mut()?;
    let variant = members.len() == 1 && members.values().all(|v| v.is_object());
    if variant {
        members.values_mut().next().and_then(|v| v.as_object_mut())
    } else {
        Some(members)
    }
}

/// Opens every sealed field of `events` with the keys found (`keys` by key id): the plain value
/// while its key exists, the erased placeholder of the field's kind once it was deleted.
///
/// A sealed field that does not open under the key its event names was changed outside the
/// store (or the key was): that is [`StoreError::Corrupt`].
pub(crate) fn open_events(
    events: &mut [StoredEvent],
    keys: &HashMap<String, [u8; 32]>,
) -> StoreResult<()> {
    for event in events.iter_mut().filter(|e| has_sealed(e)) {
        let Some(key_id) = event.key_id.clone() else {
            continue;
        };
        let cipher = keys
            .get(&key_id)
            .map(|bytes| XChaCha20Poly1305::new(&Key::from(*bytes)));
        let position = event.position;
        let event_id = event.event_id;
        let Some(members) = fields_mut(&mut event.payload) else {
            continue;
        };
        for (field, value) in members.iter_mut() {
            let Some(text) = sealed_text(value) else {
                continue;
            };
            *value = match &cipher {
                None => erased_value(field),
                Some(cipher) => {
                    open_field(cipher, &key_id, event_id, field, text).ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "the personal field `{field}` of the event at position {position} \
                             does not open under its key {key_id}"
                        ))
                    })?
                }
            };
        }
    }
    Ok(())
}

fn open_field(
    cipher: &XChaCha20Poly1305,
    key_id: &str,
    event_id: Uuid,
    field: &str,
    text: &str,
) -> Option<serde_json::Value> {
    let aad = associated_data(key_id, event_id, field);
    open_text(cipher, text, &aad)
}

/// Encrypts `value`'s JSON under `cipher` with a fresh nonce, bound to `aad`; the nonce leads
/// the ciphertext in the returned text.
fn seal_text(
    cipher: &XChaCha20Poly1305,
    value: &serde_json::Value,
    aad: &[u8],
    what: &str,
) -> StoreResult<String> {
    let plain = serde_json::to_vec(value).map_err(|e| StoreError::Backend(e.into()))?;
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let sealed = cipher
        .encrypt(&XNonce::from(nonce), Payload { msg: &plain, aad })
        .map_err(|_| StoreError::Backend(format!("sealing {what} failed").into()))?;
    let mut text = Vec::with_capacity(NONCE_LEN + sealed.len());
    text.extend_from_slice(&nonce);
    text.extend_from_slice(&sealed);
    Ok(encoding().encode(text))
}

/// The JSON value [`seal_text`] sealed, or `None` when `text` does not open under `cipher`
/// and `aad`.
fn open_text(cipher: &XChaCha20Poly1305, text: &str, aad: &[u8]) -> Option<serde_json::Value> {
    let bytes = encoding().decode(text).ok()?;
    if bytes.len() < NONCE_LEN {
        return None;
    }
    let (nonce, sealed) = bytes.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
    let plain = cipher
        .decrypt(&XNonce::from(nonce), Payload { msg: sealed, aad })
        .ok()?;
    serde_json::from_slice(&plain).ok()
}

/// The member of a sealed outcome that names its key (the requests table has no key column).
const OUTCOME_KEY_MEMBER: &str = "$key";

/// What a remembered outcome reads as once its key was erased.
const ERASED_OUTCOME_MEMBER: &str = "$erased";

fn outcome_data(key_id: &str, actor: &str, request_id: &str) -> Vec<u8> {
    format!("onbehalf.outcome.v1\n{key_id}\n{actor}\n{request_id}").into_bytes()
}

/// Seals a command's remembered outcome, which repeats what its events hold (an invitation's
/// email, say), under the key of the batch's last sealed subject.
fn seal_outcome(request: &mut RequestRecord, key: &DataKey) -> StoreResult<()> {
    let cipher = XChaCha20Poly1305::new(&Key::from(key.bytes));
    let aad = outcome_data(&key.key_id, &request.actor, &request.request_id);
    let text = seal_text(&cipher, &request.outcome, &aad, "an outcome")?;
    request.outcome = serde_json::json!({
        SEALED_MEMBER: text,
        OUTCOME_KEY_MEMBER: key.key_id,
    });
    Ok(())
}

/// The key id a stored outcome is sealed under, if it is sealed.
fn outcome_key_id(outcome: &serde_json::Value) -> Option<&str> {
    let members = outcome.as_object()?;
    if members.len() != 2 {
        return None;
    }
    members.get(SEALED_MEMBER)?.as_str()?;
    members.get(OUTCOME_KEY_MEMBER)?.as_str()
}

/// Opens a stored outcome with its key (`None`: the key was erased, and the outcome reads as
/// [`is_erased_outcome`]). An outcome that is not sealed is left as stored.
fn open_outcome(
    outcome: &mut serde_json::Value,
    actor: &str,
    request_id: &str,
    key: Option<&[u8; 32]>,
) -> StoreResult<()> {
    let Some(key_id) = outcome_key_id(outcome).map(str::to_owned) else {
        return Ok(());
    };
    let Some(key) = key else {
        *outcome = serde_json::json!({ ERASED_OUTCOME_MEMBER: true });
        return Ok(());
    };
    let corrupt = || {
        StoreError::Corrupt(format!(
            "the outcome of request {actor}/{request_id} does not open under its key {key_id}"
        ))
    };
    let text = outcome[SEALED_MEMBER].as_str().ok_or_else(corrupt)?;
    let aad = outcome_data(&key_id, actor, request_id);
    let cipher = XChaCha20Poly1305::new(&Key::from(*key));
    *outcome = open_text(&cipher, text, &aad).ok_or_else(corrupt)?;
    Ok(())
}

/// Whether a remembered outcome was sealed under a key that has since been erased: the first
/// outcome of that request can no longer be given back.
pub fn is_erased_outcome(outcome: &serde_json::Value) -> bool {
    outcome
        .as_object()
        .is_some_and(|m| m.len() == 1 && m.get(ERASED_OUTCOME_MEMBER) == Some(&true.into()))
}

fn key_bytes(raw: Vec<u8>, key_id: &str) -> StoreResult<[u8; 32]> {
    raw.try_into()
        .map_err(|_| StoreError::Corrupt(format!("data key {key_id} is not 32 bytes long")))
}

/// The key table of the SQLite store.
pub(crate) mod sqlite {
    use rusqlite::{params, Connection, OptionalExtension};

    use super::*;

    /// The migration step that creates the key table.
    pub(crate) const MIGRATION: &str = r#"
CREATE TABLE data_keys (
    key_id     TEXT    PRIMARY KEY,
    subject    TEXT    NOT NULL UNIQUE,
    key_bytes  BLOB    NOT NULL,
    created_at INTEGER NOT NULL -- microseconds since the Unix epoch, UTC
);
"#;

    fn backend(err: rusqlite::Error) -> StoreError {
        StoreError::Backend(Box::new(err))
    }

    /// Seals the batch's personal fields, creating missing keys, then deletes the keys of the
    /// subjects it erases; all inside the caller's write transaction.
    pub(crate) fn prepare(tx: &Connection, batch: &mut AppendBatch) -> StoreResult<()> {
        let mut keys = HashMap::new();
        for subject in subjects_to_seal(batch) {
            let found: Option<(String, Vec<u8>)> = tx
                .prepare_cached("SELECT key_id, key_bytes FROM data_keys WHERE subject = ?1")
                .map_err(backend)?
                .query_row(params![subject], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()
                .map_err(backend)?;
            let key = match found {
                Some((key_id, bytes)) => DataKey {
                    bytes: key_bytes(bytes, &key_id)?,
                    key_id,
                },
                None => {
                    let key = DataKey::generate();
                    tx.prepare_cached(
                        "INSERT INTO data_keys (key_id, subject, key_bytes, created_at) \
                         VALUES (?1, ?2, ?3, ?4)",
                    )
                    .map_err(backend)?
                    .execute(params![
                        key.key_id,
                        subject,
                        key.bytes.as_slice(),
                        batch.occurred_at.timestamp_micros()
                    ])
                    .map_err(backend)?;
                    key
                }
            };
            keys.insert(subject, key);
        }
        seal_batch(batch, &keys)?;
        seal_request(batch, &keys)?;
        for subject in subjects_to_erase(batch) {
            tx.prepare_cached("DELETE FROM data_keys WHERE subject = ?1")
                .map_err(backend)?
                .execute(params![subject])
                .map_err(backend)?;
        }
        Ok(())
    }

    /// Opens a remembered outcome read on `conn`.
    pub(crate) fn open_request(
        conn: &Connection,
        actor: &str,
        request_id: &str,
        outcome: &mut serde_json::Value,
    ) -> StoreResult<()> {
        let Some(key_id) = outcome_key_id(outcome).map(str::to_owned) else {
            return Ok(());
        };
        let found: Option<Vec<u8>> = conn
            .prepare_cached("SELECT key_bytes FROM data_keys WHERE key_id = ?1")
            .map_err(backend)?
            .query_row(params![key_id], |row| row.get(0))
            .optional()
            .map_err(backend)?;
        let key = found.map(|bytes| key_bytes(bytes, &key_id)).transpose()?;
        open_outcome(outcome, actor, request_id, key.as_ref())
    }

    /// Opens the sealed fields of events read on `conn`.
    pub(crate) fn open(conn: &Connection, events: &mut [StoredEvent]) -> StoreResult<()> {
        let mut keys = HashMap::new();
        for key_id in key_ids(events) {
            let found: Option<Vec<u8>> = conn
                .prepare_cached("SELECT key_bytes FROM data_keys WHERE key_id = ?1")
                .map_err(backend)?
                .query_row(params![key_id], |row| row.get(0))
                .optional()
                .map_err(backend)?;
            if let Some(bytes) = found {
                let bytes = key_bytes(bytes, &key_id)?;
                keys.insert(key_id, bytes);
            }
        }
        open_events(events, &keys)
    }
}

/// The key table of the PostgreSQL store.
pub(crate) mod postgres {
    use deadpool_postgres::GenericClient;

    use super::*;

    /// The migration step that creates the key table.
    pub(crate) const MIGRATION: &str = r#"
CREATE TABLE data_keys (
    key_id     text        PRIMARY KEY,
    subject    text        NOT NULL UNIQUE,
    key_bytes  bytea       NOT NULL,
    created_at timestamptz NOT NULL
);
"#;

    /// The store's own classification: a connection closed or terminated by the server is
    /// [`StoreError::Unavailable`], so that the caller may retry.
    fn backend(err: tokio_postgres::Error) -> StoreError {
        crate::store::postgres::map_err(err)
    }

    /// The data keys of a group of appends, as they stand after the appends sealed so far.
    ///
    /// The keys the group's appends will seal under are read in one statement; an append then
    /// seals under them ([`GroupKeys::seal`]), creating in memory the keys its subjects lack, and
    /// its erasures drop keys ([`GroupKeys::erase`]), in queue order, so that each append sees
    /// the keys as the earlier ones left them. [`GroupKeys::write`] then brings the table there
    /// in at most two statements.
    #[derive(Debug, Default)]
    pub(crate) struct GroupKeys {
        keys: HashMap<String, DataKey>,
        /// Subjects whose keys this group created, with the commit time of the creating append.
        created: std::collections::BTreeMap<String, chrono::DateTime<chrono::Utc>>,
        erased: BTreeSet<String>,
    }

    impl GroupKeys {
        /// The subjects `batches` seal under, each once: what [`read`](Self::read) looks up.
        pub(crate) fn subjects(batches: &[AppendBatch]) -> Vec<String> {
            let subjects: BTreeSet<String> = batches.iter().flat_map(subjects_to_seal).collect();
            subjects.into_iter().collect()
        }

        /// Reads the stored keys of `subjects` with `lookup`, [`LOOKUP_KEYS`] prepared.
        pub(crate) async fn read(
            tx: &impl GenericClient,
            lookup: &tokio_postgres::Statement,
            subjects: Vec<String>,
        ) -> StoreResult<GroupKeys> {
            let mut group = GroupKeys::default();
            if subjects.is_empty() {
                return Ok(group);
            }
            let rows = tx.query(lookup, &[&subjects]).await.map_err(backend)?;
            for row in rows {
                let subject: String = row.try_get(0).map_err(backend)?;
                let key_id: String = row.try_get(1).map_err(backend)?;
                let bytes: Vec<u8> = row.try_get(2).map_err(backend)?;
                let key = DataKey {
                    bytes: key_bytes(bytes, &key_id)?,
                    key_id,
                };
                group.keys.insert(subject, key);
            }
            Ok(group)
        }

        /// Seals `batch` under the keys of its subjects, creating the missing ones; returns the
        /// subjects it created keys for, which [`forget`](Self::forget) takes back if the
        /// append is not accepted after all.
        pub(crate) fn seal(&mut self, batch: &mut AppendBatch) -> StoreResult<Vec<String>> {
            let mut created = Vec::new();
            for subject in subjects_to_seal(batch) {
                if !self.keys.contains_key(&subject) {
                    self.keys.insert(subject.clone(), DataKey::generate());
                    created.push(subject);
                }
            }
            seal_batch(batch, &self.keys)?;
            seal_request(batch, &self.keys)?;
            Ok(created)
        }

        /// Takes back the keys [`seal`](Self::seal) created for an append that was refused.
        pub(crate) fn forget(&mut self, created: Vec<String>) {
            for subject in created {
                self.keys.remove(&subject);
            }
        }

        /// Records an accepted append: the keys it created are kept, the subjects it erases
        /// lose theirs.
        pub(crate) fn accept(&mut self, batch: &AppendBatch, created: Vec<String>) {
            self.created
                .extend(created.into_iter().map(|s| (s, batch.occurred_at)));
            for subject in subjects_to_erase(batch) {
                self.keys.remove(&subject);
                self.created.remove(&subject);
                self.erased.insert(subject);
            }
        }

        /// Deletes the stored keys of the subjects erased for good, and stores the keys
        /// created and kept, replacing the stored key of a subject erased and sealed again.
        /// `erase` and `store` are [`ERASE_KEYS`] and [`STORE_KEYS`] prepared; the two touch
        /// different subjects, and both are sent when first polled.
        pub(crate) async fn write(
            &self,
            tx: &impl GenericClient,
            erase: &tokio_postgres::Statement,
            store: &tokio_postgres::Statement,
        ) -> StoreResult<()> {
            let erased: Vec<&String> = self
                .erased
                .iter()
                .filter(|subject| !self.created.contains_key(*subject))
                .collect();
            let mut key_ids = Vec::new();
            let mut subjects = Vec::new();
            let mut bytes = Vec::new();
            let mut times = Vec::new();
            for (subject, at) in &self.created {
                if let Some(key) = self.keys.get(subject) {
                    key_ids.push(key.key_id.as_str());
                    subjects.push(subject.as_str());
                    bytes.push(key.bytes.as_slice());
                    times.push(*at);
                }
            }
            let (erased, stored) = tokio::join!(
                async {
                    if erased.is_empty() {
                        return Ok(0);
                    }
                    tx.execute(erase, &[&erased]).await
                },
                async {
                    if key_ids.is_empty() {
                        return Ok(0);
                    }
                    tx.execute(store, &[&key_ids, &subjects, &bytes, &times])
                        .await
                },
            );
            erased.map_err(backend)?;
            stored.map_err(backend)?;
            Ok(())
        }
    }

    /// The stored keys of the subjects `$1`: one index probe per subject, whatever the plan (the
    /// `LIMIT` keeps the planner from flattening the subquery into a join that scans the table).
    pub(crate) const LOOKUP_KEYS: &str = "SELECT d.* FROM unnest($1::text[]) AS k(subject) \
         CROSS JOIN LATERAL (SELECT d.subject, d.key_id, d.key_bytes FROM data_keys d \
         WHERE d.subject = k.subject LIMIT 1) d";

    /// Deletes the stored keys of the subjects `$1`.
    pub(crate) const ERASE_KEYS: &str = "DELETE FROM data_keys WHERE subject = ANY($1)";

    /// Stores keys `$1` of subjects `$2` with their bytes `$3` and creation times `$4`; a
    /// subject that has a stored key gets the new one in its place.
    pub(crate) const STORE_KEYS: &str =
        "INSERT INTO data_keys (key_id, subject, key_bytes, created_at) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::timestamptz[]) \
         ON CONFLICT (subject) DO UPDATE SET key_id = EXCLUDED.key_id, \
         key_bytes = EXCLUDED.key_bytes, created_at = EXCLUDED.created_at";

    /// Opens a remembered outcome read through `client`.
    pub(crate) async fn open_request(
        client: &impl GenericClient,
        actor: &str,
        request_id: &str,
        outcome: &mut serde_json::Value,
    ) -> StoreResult<()> {
        let Some(key_id) = outcome_key_id(outcome).map(str::to_owned) else {
            return Ok(());
        };
        let found = client
            .query_opt(
                "SELECT key_bytes FROM data_keys WHERE key_id = $1",
                &[&key_id],
            )
            .await
            .map_err(backend)?;
        let key = match found {
            Some(row) => {
                let bytes: Vec<u8> = row.try_get(0).map_err(backend)?;
                Some(key_bytes(bytes, &key_id)?)
            }
            None => None,
        };
        open_outcome(outcome, actor, request_id, key.as_ref())
    }

    /// Opens the sealed fields of events read through `client`.
    pub(crate) async fn open(
        client: &impl GenericClient,
        events: &mut [StoredEvent],
    ) -> StoreResult<()> {
        let ids = key_ids(events);
        let mut keys = HashMap::new();
        if !ids.is_empty() {
            let rows = client
                .query(
                    "SELECT key_id, key_bytes FROM data_keys WHERE key_id = ANY($1)",
                    &[&ids],
                )
                .await
                .map_err(backend)?;
            for row in rows {
                let key_id: String = row.try_get(0).map_err(backend)?;
                let bytes: Vec<u8> = row.try_get(1).map_err(backend)?;
                let bytes = key_bytes(bytes, &key_id)?;
                keys.insert(key_id, bytes);
            }
        }
        open_events(events, &keys)
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use onbehalf_events::{Actor, Metadata};

    use super::*;
    use crate::store::NewEvent;

    fn sealed_batch() -> (AppendBatch, HashMap<String, DataKey>) {
        let mut event = NewEvent::new(
            "UserRegistered",
            "1",
            serde_json::json!({ "UserRegistered": {
                "user_id": "6a1e9f0c-7d2b-4e3a-8c4d-1b2a3c4d5e6f",
                "email": "designer@yourcompany.com",
                "display_name": "Web Designer",
            }}),
            Metadata::new(Actor::System),
        );
        event.seal = Some(Seal {
            subject: "user-6a1e".into(),
            fields: vec!["email".into(), "display_name".into()],
        });
        let batch = AppendBatch {
            stream_id: "user-6a1e".into(),
            stream_type: "user".into(),
            expected_version: 0,
            occurred_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            events: vec![event],
            reservations: Vec::new(),
            releases: Vec::new(),
            request: None,
        };
        let mut keys = HashMap::new();
        keys.insert("user-6a1e".to_owned(), DataKey::generate());
        (batch, keys)
    }

    fn stored(batch: &AppendBatch) -> StoredEvent {
        let event = &batch.events[0];
        StoredEvent {
            event_id: event.event_id,
            position: 1,
            stream_id: batch.stream_id.clone(),
            stream_type: batch.stream_type.clone(),
            version: 1,
            occurred_at: batch.occurred_at,
            event_type: event.event_type.clone(),
            event_version: event.event_version.clone(),
            payload: event.payload.clone(),
            metadata: event.metadata.clone(),
            key_id: event.key_id.clone(),
            hash: None,
        }
    }

    #[test]
    fn a_sealed_payload_names_no_personal_value_and_opens_to_the_original() {
        let (mut batch, keys) = sealed_batch();
        let original = batch.events[0].payload.clone();
        seal_batch(&mut batch, &keys).unwrap();

        let text = batch.events[0].payload.to_string();
        assert!(!text.contains("designer"), "{text}");
        assert!(!text.contains("Web Designer"), "{text}");
        assert_eq!(
            batch.events[0].payload["UserRegistered"]["user_id"],
            original["UserRegistered"]["user_id"],
            "fields that are not personal stay plain"
        );
        let key = &keys["user-6a1e"];
        assert_eq!(batch.events[0].key_id.as_deref(), Some(key.key_id.as_str()));

        let mut events = vec![stored(&batch)];
        let found = HashMap::from([(key.key_id.clone(), key.bytes)]);
        open_events(&mut events, &found).unwrap();
        assert_eq!(events[0].payload, original);
    }

    #[test]
    fn a_sealed_field_reads_as_erased_once_its_key_is_gone() {
        let (mut batch, keys) = sealed_batch();
        seal_batch(&mut batch, &keys).unwrap();
        let mut events = vec![stored(&batch)];
        open_events(&mut events, &HashMap::new()).unwrap();
        assert_eq!(
            events[0].payload,
            serde_json::json!({ "UserRegistered": {
                "user_id": "6a1e9f0c-7d2b-4e3a-8c4d-1b2a3c4d5e6f",
                "email": "erased@erased.invalid",
                "display_name": "[erased]",
            }})
        );
    }

    #[test]
    fn a_sealed_field_moved_to_another_event_does_not_open() {
        let (mut batch, keys) = sealed_batch();
        seal_batch(&mut batch, &keys).unwrap();
        let key = &keys["user-6a1e"];
        let mut moved = stored(&batch);
        moved.event_id = Uuid::new_v4();
        let found = HashMap::from([(key.key_id.clone(), key.bytes)]);
        let err = open_events(std::slice::from_mut(&mut moved), &found).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    }

    #[test]
    fn an_event_without_a_key_id_reads_as_stored() {
        let (batch, _) = sealed_batch();
        let mut plain = stored(&batch);
        plain.key_id = None;
        plain.payload = serde_json::json!({ "UserInvited": { "email": { "$sealed": "AAAA" } } });
        let before = plain.payload.clone();
        open_events(std::slice::from_mut(&mut plain), &HashMap::new()).unwrap();
        assert_eq!(plain.payload, before);
    }

    #[test]
    fn a_sealed_outcome_opens_while_its_key_exists_and_reads_as_erased_after() {
        let key = DataKey::generate();
        let outcome = serde_json::json!({ "email": "designer@yourcompany.com" });
        let mut request = RequestRecord {
            actor: "user:6a1e".into(),
            request_id: "req-1".into(),
            request_hash: "h".into(),
            outcome: outcome.clone(),
        };
        seal_outcome(&mut request, &key).unwrap();
        assert!(!request.outcome.to_string().contains("designer"));
        assert_eq!(outcome_key_id(&request.outcome), Some(key.key_id.as_str()));

        let mut opened = request.outcome.clone();
        open_outcome(&mut opened, "user:6a1e", "req-1", Some(&key.bytes)).unwrap();
        assert_eq!(opened, outcome);
        let mut moved = request.outcome.clone();
        assert!(open_outcome(&mut moved, "user:other", "req-1", Some(&key.bytes)).is_err());
        let mut erased = request.outcome.clone();
        open_outcome(&mut erased, "user:6a1e", "req-1", None).unwrap();
        assert!(is_erased_outcome(&erased));
        let mut plain = outcome.clone();
        open_outcome(&mut plain, "user:6a1e", "req-1", None).unwrap();
        assert_eq!(plain, outcome);
    }

    #[test]
    fn the_debug_form_of_a_data_key_hides_the_key() {
        let key = DataKey::generate();
        let shown = format!("{key:?}");
        assert!(shown.contains(&key.key_id));
        assert!(!shown.contains("bytes"));
    }
}
