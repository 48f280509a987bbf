//! Verification of the log's hash chain: walk the log by position and name the first break.
//!
//! Each stored event carries `hash = SHA-256(link of the event before ‖ its canonical bytes)`
//! ([`EventContent::canonical_bytes`]), so a row changed, removed, added or moved outside the
//! store no longer fits the chain. The walk recomputes every link from [`GENESIS_HASH`] on, and
//! at the first row that does not fit it looks at its neighbours to say how the log was changed.
//!
//! The chain is keyless: it shows changes made by someone who did not recompute the links after
//! the change. Someone with write access to the database who rewrites every later hash too (and
//! the store's head) leaves a chain that verifies; such a rewrite shows only against a head and
//! last hash recorded elsewhere beforehand, which is why an intact report carries both.
// LIMITATION: the links are plain SHA-256, not keyed or signed, so tampering is evident only to
// a verifier holding an earlier (head, last hash) pair from outside the database.

use onbehalf_events::StoredEvent;

use super::{ChainHash, EventContent, EventReader, StoreError, StoreResult, GENESIS_HASH};

/// How the log was changed at the first position where its chain breaks.
///
/// The walk has verified every position before the break, so the link `L` of the position
/// before it is known. Each kind is recognised as documented on its variant, checked in the
/// order `Inserted` (beyond the head), `Deleted` (a gap), then, for a row whose hash does not
/// follow from `L`, `Altered`, `Inserted`, `Reordered`, `Deleted` (renumbered), falling back to
/// `Altered`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakKind {
    /// The row at the position is where the store put it, but its content no longer hashes to
    /// its stored hash. Recognised when the next row's hash follows from this row's stored hash
    /// (so the stored hash is the genuine link and the content changed), when the row is the
    /// head, or when no other kind explains the row.
    Altered,
    /// An event the store wrote is missing at the position. Recognised when the rows jump from
    /// the position before to a later one; when the log ends before the head the store recorded;
    /// or when the later rows were renumbered to close the gap: the row after this one hashes as
    /// the successor of this row's stored hash at the position one further on.
    Deleted,
    /// The row at the position was not written by the store. Recognised when its position lies
    /// beyond the head the store recorded, or when the event that belongs at the position (the
    /// row whose hash follows from `L` when placed there) sits one position later and the rows
    /// from here on are shifted up by one.
    Inserted,
    /// The event that belongs at the position was moved: some later row's hash follows from `L`
    /// when that row is placed at this position, and the shift of [`BreakKind::Inserted`] does
    /// not explain it (two rows whose positions were exchanged, for instance).
    Reordered,
}

impl BreakKind {
    /// The kind as one lowercase word: `altered`, `deleted`, `inserted` or `reordered`.
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakKind::Altered => "altered",
            BreakKind::Deleted => "deleted",
            BreakKind::Inserted => "inserted",
            BreakKind::Reordered => "reordered",
        }
    }
}

impl std::fmt::Display for BreakKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of [`verify_chain`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainReport {
    /// Every event from position 1 to `head` is present once, in place, and unchanged.
    Intact {
        /// The last position verified: the store's head when the walk ended (0 for an empty
        /// log).
        head: u64,
        /// The link of the event at `head` ([`GENESIS_HASH`] for an empty log). Recorded
        /// outside the database, it lets a later verification prove the log still extends it.
        last_hash: ChainHash,
    },
    /// The chain holds up to `position - 1` and breaks at `position`.
    Broken {
        /// The first position that does not verify.
        position: u64,
        /// How the log was changed there.
        kind: BreakKind,
    },
}

/// Walks the whole log in position order, `batch_size` events per read, recomputing every link
/// from [`GENESIS_HASH`], and reports the log intact up to its head or the first broken position.
///
/// Appends may continue during the walk: a row beyond the head read at the start is checked
/// against the head read again. A row that cannot be decoded at all is reported as
/// [`BreakKind::Altered`] at the position after the last verified one. Errors reaching the
/// store are returned as they are.
pub async fn verify_chain(reader: &dyn EventReader, batch_size: usize) -> StoreResult<ChainReport> {
    let batch_size = batch_size.max(1);
    let mut head = reader.head_position().await?;
    let mut previous = GENESIS_HASH;
    let mut verified = 0u64;

    loop {
        let batch = match reader.read_all_sealed(verified, batch_size).await {
            Ok(batch) => batch,
            // Some row of the batch does not decode: go on one row at a time to find it.
            Err(StoreError::Corrupt(_)) => match reader.read_all_sealed(verified, 1).await {
                Ok(batch) => batch,
                Err(StoreError::Corrupt(_)) => return Ok(broken(verified + 1, BreakKind::Altered)),
                Err(other) => return Err(other),
            },
            Err(other) => return Err(other),
        };
        if batch.is_empty() {
            break;
        }
        for event in &batch {
            let expected = verified + 1;
            if event.position > head {
                head = reader.head_position().await?;
                if event.position > head {
                    return Ok(broken(event.position, BreakKind::Inserted));
                }
            }
            if event.position != expected {
                return Ok(broken(expected, BreakKind::Deleted));
            }
            let link = EventContent::of(event).chain_hash(&previous)?;
            if stored(event) == Some(link) {
                previous = link;
                verified = expected;
                continue;
            }
            let kind = classify(reader, &previous, event).await?;
            return Ok(broken(expected, kind));
        }
    }

    if verified < head {
        return Ok(broken(verified + 1, BreakKind::Deleted));
    }
    Ok(ChainReport::Intact {
        head: verified,
        last_hash: previous,
    })
}

fn broken(position: u64, kind: BreakKind) -> ChainReport {
    ChainReport::Broken { position, kind }
}

fn stored(event: &StoredEvent) -> Option<ChainHash> {
    event.hash.as_deref().and_then(ChainHash::parse)
}

/// Whether `event`, placed at `position`, is the successor of the link `previous`.
fn follows(previous: &ChainHash, event: &StoredEvent, position: u64) -> StoreResult<bool> {
    let Some(hash) = stored(event) else {
        return Ok(false);
    };
    let link = EventContent::of(event)
        .at_position(position)
        .chain_hash(previous)?;
    Ok(link == hash)
}

/// Says how the log was changed at `event`, the first row (at its expected position) whose hash
/// does not follow from `previous`, the verified link of the position before it.
async fn classify(
    reader: &dyn EventReader,
    previous: &ChainHash,
    event: &StoredEvent,
) -> StoreResult<BreakKind> {
    let position = event.position;
    let own = stored(event);
    // Rows that cannot be decoded end the look-around; the break is then reported as altered.
    let next = reader
        .read_all_sealed(position, 1)
        .await
        .ok()
        .and_then(|rows| rows.into_iter().next())
        .filter(|row| row.position == position + 1);

    if let Some(next) = &next {
        if let Some(own) = &own {
            if follows(own, next, position + 1)? {
                return Ok(BreakKind::Altered);
            }
        }
        if follows(previous, next, position)? {
            let swapped = match stored(next) {
                Some(moved) => follows(&moved, event, position + 1)?,
                None => false,
            };
            return Ok(if swapped {
                BreakKind::Reordered
            } else {
                BreakKind::Inserted
            });
        }
    }

    if moved_later(reader, previous, position).await? {
        return Ok(BreakKind::Reordered);
    }
    if let (Some(own), Some(next)) = (&own, &next) {
        if follows(own, next, position + 2)? {
            return Ok(BreakKind::Deleted);
        }
    }
    Ok(BreakKind::Altered)
}

/// Whether some row after `position` is the successor of `previous` when placed at `position`.
async fn moved_later(
    reader: &dyn EventReader,
    previous: &ChainHash,
    position: u64,
) -> StoreResult<bool> {
    const SCAN_BATCH: usize = 1000;
    let mut after = position;
    loop {
        let rows = match reader.read_all_sealed(after, SCAN_BATCH).await {
            Ok(rows) => rows,
            Err(StoreError::Corrupt(_)) => return Ok(false),
            Err(other) => return Err(other),
        };
        let Some(last) = rows.last() else {
            return Ok(false);
        };
        after = last.position;
        for row in &rows {
            if follows(previous, row, position)? {
                return Ok(true);
            }
        }
    }
}
