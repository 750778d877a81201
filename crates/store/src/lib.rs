//! State every instance shares: device slots, stream leases, license quotas, blocked users,
//! spent single-use tokens and the catalog.
//! One [`Store`] trait, two kinds: embedded (SQLite, one file, every answer committed before it
//! is given) and Redis (one atomic script per decision, keys that expire), so that any number of
//! licensegate instances enforce one limit.

pub mod catalog;
pub mod embedded;
pub mod redis;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use licensegate_config::{ConfigError, StoreBackend, StoreSettings};

pub use catalog::{ContentPut, ContentRecords, Replacing};
pub use tokens::SpentTokens;

/// Why a store call failed. Messages are kept as text: one failed group commit answers every
/// call in it, and the drivers' errors cannot be cloned.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(String),
    #[error("redis: {0}")]
    Redis(String),
    #[error("cannot open {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("the store's writer thread stopped")]
    WriterStopped,
    #[error("the store did not answer in time")]
    TimedOut,
}

/// One registered device of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Slot {
    pub device: String,
    /// Seconds since the epoch.
    pub last_seen: u64,
}

/// The store's answer to a device asking for a license.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotDecision {
    /// The device holds a slot (`new`: it was given one just now).
    Admitted { new: bool },
    /// Every slot is held by another device.
    Full {
        registered: u64,
        /// Seconds since the epoch at which the least recently used slot frees itself.
        oldest_frees_at: u64,
    },
}

/// A stream's hold on one of its user's slots, until `expires_at` unless renewed, and the record
/// of what it was licensed for: a request continues the stream only if it asks for the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub session: String,
    pub content: String,
    pub drm: String,
    /// Seconds since the epoch.
    pub started_at: u64,
    pub expires_at: u64,
    /// A newer stream took this one's place: its renewals are refused until the lease ends.
    pub stopped: bool,
    pub provider: String,
    pub policy: String,
    /// Seconds between the license's renewals.
    pub interval: u64,
    /// The device the vendor reported for the stream (a digest), once it did.
    pub device: Option<String>,
    /// The key IDs the stream was licensed for.
    pub key_ids: Vec<String>,
    /// When its continuations were last exempt ([`cadence`]).
    #[serde(skip)]
    pub cadence: String,
}

/// What a stream is licensed for, recorded with its lease.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamFacts {
    pub content: String,
    pub drm: String,
    pub provider: String,
    pub policy: String,
    /// Seconds between the license's renewals.
    pub interval: u64,
    pub key_ids: Vec<String>,
}

/// A stream asking to play.
#[derive(Debug, Clone, Copy)]
pub struct LeaseAsk<'a> {
    pub session: &'a str,
    pub facts: &'a StreamFacts,
    /// How long the lease lasts from now.
    pub seconds: u64,
    /// What this license counts as in the stream's cadence (see [`ContinueAsk::cadence`]).
    pub cadence: &'a [&'a str],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamDecision {
    /// A new lease; `stopped` names the stream it displaced.
    Started { stopped: Option<String> },
    /// The session already held a lease for the same content and DRM, now extended.
    Renewed,
    /// The session was displaced by a newer stream.
    Stopped,
    /// Every slot is held by another stream.
    Full {
        active: u64,
        /// Seconds since the epoch at which the first lease ends unless renewed.
        oldest_expires_at: u64,
    },
    /// The session's lease is another content's or DRM's.
    Conflict,
}

/// A request that names a recorded stream, asking to continue it.
#[derive(Debug, Clone, Copy)]
pub struct ContinueAsk<'a> {
    pub session: &'a str,
    pub content: &'a str,
    pub drm: &'a str,
    /// How long the lease lasts from now.
    pub seconds: u64,
    /// What the request continues (a renewal, a heartbeat, a license for each of its key IDs):
    /// it is exempt from rate limits and quota only if each of them is due, at most once per
    /// half of the stream's interval.
    pub cadence: &'a [&'a str],
    /// The interval of a lease that recorded none (one from before leases recorded it).
    pub fallback_interval: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Continuation {
    /// No live lease by that name.
    Unknown,
    /// The session was displaced by a newer stream.
    Stopped,
    /// The lease is another content's or DRM's: the request continues nothing.
    Mismatch,
    /// The lease is extended; `exempt`: within the stream's cadence.
    Continued { lease: Box<Lease>, exempt: bool },
}

/// When each of a stream's continuations was last exempt, kept with the lease as `what=seconds`
/// pairs in the order they were taken: one per key ID the stream's licenses named, one for its
/// renewals, one for its heartbeats. Only entries within their window are kept (one whose
/// window passed is due anyway), so the record stays as small as the stream's live exemptions.
pub mod cadence {
    /// Live entries at most: every key ID a challenge may name, a renewal and a heartbeat. A
    /// continuation that would need more is not exempt.
    pub const KEPT: usize = licensegate_drm::challenge::MAX_KEY_IDS + 2;

    fn entries(record: &str) -> impl Iterator<Item = (&str, u64)> {
        record
            .split(',')
            .filter_map(|entry| entry.split_once('='))
            .filter_map(|(name, at)| Some((name, at.parse().ok()?)))
    }

    /// Whether a continuation of every one of `whats` at `now` is the first of each in `every`
    /// seconds, and the record that results (noting them if so).
    pub fn take(record: &str, whats: &[&str], every: u64, now: u64) -> (bool, String) {
        let mut live = live_entries(record, every, now);
        let exempt = exempts(&live, whats);
        if exempt {
            live.extend(whats.iter().map(|what| (*what, now)));
        }
        (exempt, format_record(&live))
    }

    /// Whether [`take`] would exempt, without the record it would write.
    pub fn due(record: &str, whats: &[&str], every: u64, now: u64) -> bool {
        exempts(&live_entries(record, every, now), whats)
    }

    fn live_entries(record: &str, every: u64, now: u64) -> Vec<(&str, u64)> {
        entries(record)
            .filter(|(_, at)| now < at.saturating_add(every))
            .collect()
    }

    fn exempts(live: &[(&str, u64)], whats: &[&str]) -> bool {
        let due = whats
            .iter()
            .all(|what| live.iter().all(|(name, _)| name != what));
        due && live.len() + whats.len() <= KEPT
    }

    /// A fresh record: each of `whats` taken at `now`.
    pub fn start(whats: &[&str], now: u64) -> String {
        let taken: Vec<(&str, u64)> = whats.iter().take(KEPT).map(|what| (*what, now)).collect();
        format_record(&taken)
    }

    fn format_record(entries: &[(&str, u64)]) -> String {
        entries
            .iter()
            .map(|(name, at)| format!("{name}={at}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaDecision {
    /// One license counted in the period starting at `window` (seconds since the epoch).
    Taken {
        window: u64,
    },
    Exhausted {
        resets_at: u64,
    },
}

/// The stream limit of a store that only records streams (Widevine licenses, so that their
/// renewals continue only what they started) for a deployment without stream limits.
pub const UNLIMITED: u32 = u32::MAX;

/// Stream records kept per user when streams are not limited: a user (or a stolen token)
/// asking for thousands of licenses must not make every later one slower, nor grow the store
/// without bound. The oldest records go first; their renewals are then refused as unknown.
pub const UNLIMITED_RECORDS_KEPT: u64 = 1024;

/// Where shared state lives. Every deciding call is atomic per user: concurrent calls, from any
/// number of licensegate instances sharing the store, never hand out more than the limit.
#[async_trait]
pub trait Store: ContentRecords + SpentTokens + Send + Sync {
    /// Frees the user's slots idle for `idle`, then touches `device`'s slot, gives it a free
    /// one, or refuses.
    async fn admit_device(
        &self,
        user: &str,
        device: &str,
        limit: u32,
        idle: Duration,
        now: u64,
    ) -> Result<SlotDecision, StoreError>;

    /// The user's slots not idle for `idle`, least recently used first.
    async fn devices(&self, user: &str, idle: Duration, now: u64) -> Result<Vec<Slot>, StoreError>;

    async fn remove_device(&self, user: &str, device: &str) -> Result<bool, StoreError>;

    async fn remove_devices(&self, user: &str) -> Result<u64, StoreError>;

    /// Ends the user's expired leases, then renews the session's lease if it is the same
    /// content's and DRM's, starts one in a free slot, displaces the oldest stream
    /// (`stop_oldest`), or refuses. A displaced stream's lease is kept, stopped, for
    /// `ask.seconds` more, so that its renewals are refused. A `limit` of [`UNLIMITED`] only
    /// records the stream: the user's other leases are not counted, and beyond
    /// [`UNLIMITED_RECORDS_KEPT`] of them the oldest are dropped.
    async fn acquire_stream(
        &self,
        user: &str,
        ask: LeaseAsk<'_>,
        limit: u32,
        stop_oldest: bool,
        now: u64,
    ) -> Result<StreamDecision, StoreError>;

    /// Continues a live lease recorded for the same content and DRM: extends it and tells
    /// whether the request is within the stream's cadence (noting it if so).
    async fn continue_stream(
        &self,
        user: &str,
        ask: ContinueAsk<'_>,
        now: u64,
    ) -> Result<Continuation, StoreError>;

    /// Records the device the vendor reported for a live stream that has none recorded;
    /// returns the device the record holds (`None`: no live stream).
    async fn set_stream_device(
        &self,
        user: &str,
        session: &str,
        device: &str,
        now: u64,
    ) -> Result<Option<String>, StoreError>;

    /// Records that a live lease's license came from `provider` (its request failed over to
    /// it), where its renewals go, with the device that provider reported (`None`: none) in
    /// place of the one another vendor named in its own way. `false`: no live lease by that name.
    async fn set_stream_provider(
        &self,
        user: &str,
        session: &str,
        provider: &str,
        device: Option<&str>,
        now: u64,
    ) -> Result<bool, StoreError>;

    /// Extends a live, not stopped lease by `seconds` from now; returns the lease as it stands
    /// (`None`: no live lease).
    async fn renew_stream(
        &self,
        user: &str,
        session: &str,
        seconds: u64,
        now: u64,
    ) -> Result<Option<Lease>, StoreError>;

    async fn stream(
        &self,
        user: &str,
        session: &str,
        now: u64,
    ) -> Result<Option<Lease>, StoreError>;

    /// Gives the live lease `from` the name `to` (the session id learned from the answer),
    /// lasting `seconds` from now with the license's renewal `interval`; if `to` already holds
    /// a lease, `from`'s is folded into it. `false`: `from` holds no live lease.
    async fn rename_stream(
        &self,
        user: &str,
        from: &str,
        to: &str,
        seconds: u64,
        interval: u64,
        now: u64,
    ) -> Result<bool, StoreError>;

    /// Gives the oldest live, not stopped lease whose name starts with `prefix` the name `to`
    /// (a provisional lease whose renaming was lost), unless `to` holds one; returns it.
    async fn adopt_stream(
        &self,
        user: &str,
        prefix: &str,
        to: &str,
        now: u64,
    ) -> Result<Option<Lease>, StoreError>;

    async fn end_stream(&self, user: &str, session: &str) -> Result<bool, StoreError>;

    /// The user's live leases, stopped ones included, oldest first.
    async fn streams(&self, user: &str, now: u64) -> Result<Vec<Lease>, StoreError>;

    async fn end_streams(&self, user: &str) -> Result<u64, StoreError>;

    /// Counts one license against the user's quota for the period containing `now`.
    async fn take_quota(
        &self,
        user: &str,
        limit: u64,
        period: u64,
        now: u64,
    ) -> Result<QuotaDecision, StoreError>;

    /// Gives back a license counted for a request that got none.
    async fn refund_quota(&self, user: &str, window: u64, period: u64) -> Result<(), StoreError>;

    /// Blocks the user until `until` (seconds since the epoch; `None`: until unblocked).
    async fn block_user(&self, user: &str, until: Option<u64>, now: u64) -> Result<(), StoreError>;

    async fn unblock_user(&self, user: &str) -> Result<bool, StoreError>;

    /// `Some(until)` while the user is blocked (`until`: `None` for no end).
    async fn blocked(&self, user: &str, now: u64) -> Result<Option<Option<u64>>, StoreError>;
}

/// A sweep's turn, given back however the sweep ends.
struct SweepTurn(Arc<Shared>);

impl Drop for SweepTurn {
    fn drop(&mut self) {
        self.0
            .sweeping
            .store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Rows each table gives up per sweep pass.
pub const SWEEP_PASS_ROWS: u32 = 1000;

pub use embedded::Expired;

/// The configured store, and the bound on each call.
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub redis: Option<Arc<redis::RedisStore>>,
    /// Redis expires its keys itself; the embedded store is swept in the background.
    embedded: Option<Arc<embedded::EmbeddedStore>>,
    sweeping: std::sync::atomic::AtomicBool,
    pub timeout: Duration,
}

impl Shared {
    pub fn open(settings: &StoreSettings) -> Result<Self, ConfigError> {
        Ok(match &settings.backend {
            StoreBackend::Embedded(path) => {
                let embedded = Arc::new(
                    embedded::EmbeddedStore::open(path)
                        .map_err(|e| ConfigError::new("store.path", e.to_string()))?,
                );
                Self {
                    store: embedded.clone(),
                    redis: None,
                    embedded: Some(embedded),
                    sweeping: Default::default(),
                    timeout: settings.timeout,
                }
            }
            StoreBackend::Redis(topology) => {
                let redis = Arc::new(redis::RedisStore::new(topology, settings.timeout).map_err(
                    |_| ConfigError::new("store.redis_url", "not a usable Redis address"),
                )?);
                Self {
                    store: redis.clone(),
                    redis: Some(redis),
                    embedded: None,
                    sweeping: Default::default(),
                    timeout: settings.timeout,
                }
            }
        })
    }

    /// Starts a background sweep of the embedded store's expired rows, unless one is running:
    /// passes of at most [`SWEEP_PASS_ROWS`] rows per table, one after another until a pass
    /// finds fewer, so that license decisions queue behind one short pass at most.
    pub fn sweep_in_background(self: &Arc<Self>, expired: impl Fn() -> Expired + Send + 'static) {
        use std::sync::atomic::Ordering;
        let Some(embedded) = self.embedded.clone() else {
            return;
        };
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let sweeping = SweepTurn(self.clone());
        tokio::spawn(async move {
            let _turn = sweeping;
            let mut removed = 0u64;
            loop {
                match embedded.sweep(expired(), SWEEP_PASS_ROWS).await {
                    Ok(most) => {
                        removed += u64::from(most);
                        if most < SWEEP_PASS_ROWS {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "sweeping expired store rows failed");
                        break;
                    }
                }
            }
            if removed > 0 {
                tracing::debug!(removed, "expired store rows swept");
            }
        });
    }

    /// What opening the store checks, without creating anything: an existing database file
    /// must be one, a new one must be creatable, a Redis URL must be usable. `licensegate
    /// check` runs this.
    pub fn check(settings: &StoreSettings) -> Result<(), ConfigError> {
        match &settings.backend {
            StoreBackend::Embedded(path) if path.exists() => rusqlite::Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .and_then(|db| db.query_row("PRAGMA schema_version", [], |row| row.get::<_, i64>(0)))
            .map(drop)
            .map_err(|e| ConfigError::new("store.path", format!("{}: {e}", path.display()))),
            StoreBackend::Embedded(path) => {
                let dir = match path.parent() {
                    Some(dir) if !dir.as_os_str().is_empty() => dir,
                    _ => std::path::Path::new("."),
                };
                let probe = dir.join(format!(".licensegate-check-{}", std::process::id()));
                std::fs::File::create(&probe)
                    .and_then(|_| std::fs::remove_file(&probe))
                    .map_err(|e| {
                        ConfigError::new(
                            "store.path",
                            format!("cannot create a database in '{}': {e}", dir.display()),
                        )
                    })
            }
            // The URLs may carry a password: the error names the key, not the value.
            StoreBackend::Redis(topology) => redis::RedisStore::new(topology, settings.timeout)
                .map(drop)
                .map_err(|_| ConfigError::new("store.redis_url", "not a usable Redis address")),
        }
    }

    /// Runs a store call within the bound, its latency observed under `operation`.
    pub async fn observed<T>(
        &self,
        histogram: &prometheus::HistogramVec,
        operation: &str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let result = self.timed(call).await;
        histogram
            .with_label_values(&[operation])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Runs a store call within the bound, on Pingora's timer wheel: one registration per
    /// 10 ms tick shared by every call, where tokio's timer takes a lock and an entry per call.
    pub async fn timed<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        match pingora_timeout::timeout(self.timeout, call).await {
            Ok(answer) => answer,
            Err(_) => {
                if let Some(redis) = &self.redis {
                    redis.timed_out(started);
                }
                Err(StoreError::TimedOut)
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod conformance;
