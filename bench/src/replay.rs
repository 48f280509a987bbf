//! Replay throughput: the raw sequential read of the log against the rebuild of every read
//! model from it.
//!
//! Three figures are taken over the same rows, for each prefix size of the log:
//!
//! - **raw read**: `read_all` in batches from position 0 up to the size, decoding nothing beyond
//!   what the store decodes into `StoredEvent`s. It bounds every replay from this store.
//! - **rebuild**: the same reads, each event then folded by `ReadModels::apply` (upcasting
//!   included), exactly as the server's read side rebuilds at start.
//! - **fold only**: `ReadModels::apply` over events already in memory, which is what the rebuild
//!   adds to the raw read; it does not depend on the store.
//!
//! Each figure is the median of several rounds after warm-up rounds, in events per second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use onbehalf::store::EventStore;
use onbehalf_events::StoredEvent;
use onbehalf_projections::{InvitationLinks, ReadModels};

use crate::BenchError;

/// How a measurement is repeated.
#[derive(Debug, Clone, Copy)]
pub struct Rounds {
    /// Rounds run first and not counted.
    pub warmup: usize,
    /// Rounds whose median is reported.
    pub measured: usize,
    /// Events per `read_all`.
    pub batch: usize,
}

/// Median rates at one prefix size, in events per second.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    /// Events in the prefix.
    pub events: u64,
    /// Raw sequential read.
    pub raw: f64,
    /// Read and fold into every read model.
    pub rebuild: f64,
}

/// Reads positions `1..=upto` in batches and returns how many events came back.
async fn raw_read(store: &dyn EventStore, upto: u64, batch: usize) -> Result<u64, BenchError> {
    let mut after = 0u64;
    let mut count = 0u64;
    while after < upto {
        let limit = batch.min(usize::try_from(upto - after).unwrap_or(usize::MAX));
        let events = store.read_all(after, limit).await?;
        let Some(last) = events.last() else { break };
        after = last.position;
        count += events.len() as u64;
    }
    Ok(count)
}

/// Reads positions `1..=upto` in batches and folds each event into fresh read models.
async fn rebuild(
    store: &dyn EventStore,
    upto: u64,
    batch: usize,
    links: &Arc<dyn InvitationLinks>,
) -> Result<ReadModels, BenchError> {
    let mut models = ReadModels::new(links.clone());
    let mut after = 0u64;
    while after < upto {
        let limit = batch.min(usize::try_from(upto - after).unwrap_or(usize::MAX));
        let events = store.read_all(after, limit).await?;
        let Some(last) = events.last() else { break };
        after = last.position;
        for event in &events {
            models.apply(event)?;
        }
    }
    Ok(models)
}

/// Folds `events` into fresh read models.
fn fold(
    events: &[StoredEvent],
    links: &Arc<dyn InvitationLinks>,
) -> Result<ReadModels, BenchError> {
    let mut models = ReadModels::new(links.clone());
    for event in events {
        models.apply(event)?;
    }
    Ok(models)
}

fn rate(events: u64, took: Duration) -> f64 {
    events as f64 / took.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// The median of `values`; 0 for none.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Raw read and rebuild of each prefix of `sizes`, alternating within each round.
///
/// Every rebuild is checked to end at the prefix's last position, so a figure never counts a
/// replay that stopped early.
pub async fn measure_store(
    store: &dyn EventStore,
    sizes: &[u64],
    rounds: Rounds,
    links: &Arc<dyn InvitationLinks>,
) -> Result<Vec<Rates>, BenchError> {
    let mut out = Vec::new();
    for &size in sizes {
        let (mut raw, mut rebuilt) = (Vec::new(), Vec::new());
        for round in 0..rounds.warmup + rounds.measured {
            let started = Instant::now();
            let count = raw_read(store, size, rounds.batch).await?;
            let raw_took = started.elapsed();
            if count != size {
                return Err(BenchError::Setup(format!(
                    "the raw read returned {count} events, not {size}"
                )));
            }

            let started = Instant::now();
            let models = rebuild(store, size, rounds.batch, links).await?;
            let rebuild_took = started.elapsed();
            if models.position() != size {
                return Err(BenchError::Setup(format!(
                    "the rebuild reached position {}, not {size}",
                    models.position()
                )));
            }
            // Freeing the read models is not part of a rebuild.
            drop(models);

            if round >= rounds.warmup {
                raw.push(rate(size, raw_took));
                rebuilt.push(rate(size, rebuild_took));
            }
        }
        out.push(Rates {
            events: size,
            raw: median(raw),
            rebuild: median(rebuilt),
        });
    }
    Ok(out)
}

/// The fold alone over each prefix of `events`, in events per second.
pub fn measure_fold(
    events: &[StoredEvent],
    sizes: &[u64],
    rounds: Rounds,
    links: &Arc<dyn InvitationLinks>,
) -> Result<Vec<(u64, f64)>, BenchError> {
    let mut out = Vec::new();
    for &size in sizes {
        let prefix = &events[..usize::try_from(size)
            .unwrap_or(usize::MAX)
            .min(events.len())];
        let mut rates = Vec::new();
        for round in 0..rounds.warmup + rounds.measured {
            let started = Instant::now();
            let models = fold(prefix, links)?;
            let took = started.elapsed();
            drop(models);
            if round >= rounds.warmup {
                rates.push(rate(prefix.len() as u64, took));
            }
        }
        out.push((size, median(rates)));
    }
    Ok(out)
}

/// Every event of the log up to `upto`, read once into memory.
pub async fn load(
    store: &dyn EventStore,
    upto: u64,
    batch: usize,
) -> Result<Vec<StoredEvent>, BenchError> {
    let mut events = Vec::new();
    while (events.len() as u64) < upto {
        let after = events.last().map_or(0, |e: &StoredEvent| e.position);
        let read = store.read_all(after, batch).await?;
        if read.is_empty() {
            break;
        }
        events.extend(read);
    }
    events.truncate(usize::try_from(upto).unwrap_or(usize::MAX));
    Ok(events)
}

/// What the read models hold after folding `events`, as a sanity line for the report.
pub fn summary(
    events: &[StoredEvent],
    links: &Arc<dyn InvitationLinks>,
) -> Result<String, BenchError> {
    let models = fold(events, links)?;
    Ok(format!(
        "read models at position {}: {} audit entries, {} notifications, next invoice number {}",
        models.position(),
        models.audit.all().len(),
        models.notifications.all().len(),
        models.billing.next_invoice_number(),
    ))
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_of_an_odd_count_is_the_middle_value_and_of_an_even_count_the_mean_of_two() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
