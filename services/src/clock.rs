//! Time, from a clock the server is given, so that tests control it.

use std::fmt;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that stands still until moved; for tests.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    /// A clock showing `at`.
    pub fn new(at: DateTime<Utc>) -> Self {
        Self(Arc::new(Mutex::new(at)))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A clock that shows the RFC 3339 instant written in a file, read again on every call; for
/// tests that start several processes and move time for all of them at once.
///
/// A file that cannot be read or parsed leaves the clock at the last instant it showed (or
/// the one read at creation), so that a half-written file never sends time backwards to the
/// epoch.
#[derive(Debug)]
pub struct FileClock {
    path: std::path::PathBuf,
    last: Mutex<DateTime<Utc>>,
}

impl FileClock {
    /// A clock reading `path`; fails when the file does not hold an RFC 3339 instant now.
    pub fn open(path: impl Into<std::path::PathBuf>) -> Result<Self, String> {
        let path = path.into();
        let at = Self::read(&path)?;
        Ok(Self {
            path,
            last: Mutex::new(at),
        })
    }

    fn read(path: &std::path::Path) -> Result<DateTime<Utc>, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the clock file {}: {e}", path.display()))?;
        DateTime::parse_from_rfc3339(text.trim())
            .map(|at| at.with_timezone(&Utc))
            .map_err(|e| {
                format!(
                    "the clock file {} does not hold an RFC 3339 instant: {e}",
                    path.display()
                )
            })
    }

    /// Writes `at` to `path` for every [`FileClock`] reading it; the write replaces the file in
    /// one rename, so that readers never see half of it.
    pub fn set(path: &std::path::Path, at: DateTime<Utc>) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, at.to_rfc3339())?;
        std::fs::rename(&tmp, path)
    }
}

impl Clock for FileClock {
    fn now(&self) -> DateTime<Utc> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(at) = Self::read(&self.path) {
            *last = at;
        }
        *last
    }
}

/// The clock a process runs on: the instant in `clock_file` when one is given (tests), the
/// system clock otherwise.
pub fn from_file(clock_file: Option<&std::path::Path>) -> Result<Arc<dyn Clock>, String> {
    Ok(match clock_file {
        Some(path) => Arc::new(FileClock::open(path)?),
        None => Arc::new(SystemClock),
    })
}
