//! State every instance shares: device slots, stream leases, license quotas and blocked users.
//! One [`Store`] trait, two kinds: embedded (SQLite, one file, every answer committed before it
//! is given) and Redis (one atomic script per decision, keys that expire), so that any number of
//! licensegate instances enforce one limit.

pub mod embedded;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use licensegate_config::{ConfigError, StoreBackend, StoreSettings};

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

/// Where shared state lives. Every deciding call is atomic per user: concurrent calls, from any
/// number of licensegate instances sharing the store, never hand out more than the limit.
#[async_trait]
pub trait Store: Send + Sync {
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
    /// `ask.seconds` more, so that its renewals are refused.
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

/// The behaviour both stores must share, run against each of them.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    fn facts(content: &str) -> StreamFacts {
        StreamFacts {
            content: content.into(),
            drm: "widevine".into(),
            provider: "sim".into(),
            policy: "streaming".into(),
            interval: 40,
            key_ids: vec!["0102".into(), "0304".into()],
        }
    }

    static MOVIE: std::sync::LazyLock<StreamFacts> = std::sync::LazyLock::new(|| facts("movie-1"));
    static OTHER: std::sync::LazyLock<StreamFacts> = std::sync::LazyLock::new(|| facts("movie-2"));

    fn ask(session: &str, seconds: u64) -> LeaseAsk<'_> {
        LeaseAsk {
            session,
            facts: &MOVIE,
            seconds,
            cadence: &["a"],
        }
    }

    fn continuing<'a>(
        session: &'a str,
        content: &'a str,
        cadence: &'a [&'a str],
    ) -> ContinueAsk<'a> {
        ContinueAsk {
            session,
            content,
            drm: "widevine",
            seconds: 100,
            cadence,
            fallback_interval: 300,
        }
    }

    pub async fn streams_quotas_and_blocks(store: &dyn Store) {
        let started = StreamDecision::Started { stopped: None };
        let acquire = |session: &'static str, stop_oldest, now| {
            store.acquire_stream("ann", ask(session, 100), 2, stop_oldest, now)
        };
        assert_eq!(acquire("a", false, 1000).await.unwrap(), started);
        assert_eq!(acquire("b", false, 1010).await.unwrap(), started);
        assert_eq!(
            acquire("c", false, 1020).await.unwrap(),
            StreamDecision::Full {
                active: 2,
                oldest_expires_at: 1100
            }
        );
        assert_eq!(
            acquire("a", false, 1050).await.unwrap(),
            StreamDecision::Renewed
        );
        // a now lasts until 1150; b runs out at 1110.
        assert_eq!(acquire("c", false, 1110).await.unwrap(), started);
        let sessions = |leases: Vec<Lease>| {
            leases
                .into_iter()
                .map(|l| (l.session, l.stopped))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            sessions(store.streams("ann", 1110).await.unwrap()),
            [("a".to_string(), false), ("c".to_string(), false)]
        );
        // The oldest (a) is displaced, and stays refused for a lease's length.
        assert_eq!(
            acquire("d", true, 1120).await.unwrap(),
            StreamDecision::Started {
                stopped: Some("a".into())
            }
        );
        assert_eq!(
            acquire("a", true, 1130).await.unwrap(),
            StreamDecision::Stopped
        );
        let a = store.renew_stream("ann", "a", 100, 1130).await.unwrap();
        assert!(a.is_some_and(|a| a.stopped && a.expires_at == 1220));
        assert!(store.end_stream("ann", "c").await.unwrap());
        assert!(!store.end_stream("ann", "c").await.unwrap());
        // A provisional lease takes the name its answer told, folding into one that exists.
        assert_eq!(acquire("pending-1", false, 1140).await.unwrap(), started);
        assert!(
            store
                .rename_stream("ann", "pending-1", "wv-01", 300, 240, 1141)
                .await
                .unwrap()
        );
        assert!(
            !store
                .rename_stream("ann", "pending-1", "wv-02", 300, 240, 1141)
                .await
                .unwrap()
        );
        let renamed = store.stream("ann", "wv-01", 1142).await.unwrap().unwrap();
        assert_eq!(
            (
                renamed.expires_at,
                renamed.content.as_str(),
                renamed.drm.as_str()
            ),
            (1441, "movie-1", "widevine")
        );
        assert!(
            store
                .stream("ann", "pending-1", 1142)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            acquire("pending-2", false, 1150).await.unwrap(),
            StreamDecision::Full {
                active: 2,
                oldest_expires_at: 1220
            }
        );
        let renewed = store.renew_stream("ann", "wv-01", 600, 1200).await.unwrap();
        assert_eq!(renewed.map(|l| l.expires_at), Some(1800));
        assert!(
            store
                .renew_stream("ann", "gone", 600, 1200)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(store.end_streams("ann").await.unwrap(), 3);
        assert!(store.streams("ann", 1200).await.unwrap().is_empty());

        // A session continues only the content and DRM it was licensed for.
        assert_eq!(acquire("s", false, 2000).await.unwrap(), started);
        let other = LeaseAsk {
            facts: &OTHER,
            ..ask("s", 100)
        };
        assert_eq!(
            store
                .acquire_stream("ann", other, 5, false, 2001)
                .await
                .unwrap(),
            StreamDecision::Conflict
        );
        let record = store.stream("ann", "s", 2001).await.unwrap().unwrap();
        assert_eq!(
            (
                record.provider.as_str(),
                record.policy.as_str(),
                record.interval,
                record.key_ids.len(),
                record.device.as_deref()
            ),
            ("sim", "streaming", 40, 2, None)
        );
        let go_on = |content, cadence: &'static [&'static str], now| {
            store.continue_stream("ann", continuing("s", content, cadence), now)
        };
        assert_eq!(
            go_on("movie-2", &["a"], 2002).await.unwrap(),
            Continuation::Mismatch
        );
        assert_eq!(
            store
                .continue_stream(
                    "ann",
                    ContinueAsk {
                        drm: "playready",
                        ..continuing("s", "movie-1", &["a"])
                    },
                    2002
                )
                .await
                .unwrap(),
            Continuation::Mismatch
        );
        // Exempt only when each thing continued (here key IDs a, b, c) is due, at most once per
        // half interval (20 s); the license that started the stream took its own key (a).
        let exempt = |continued: Continuation| match continued {
            Continuation::Continued { lease, exempt } => (exempt, lease.expires_at),
            other => panic!("not continued: {other:?}"),
        };
        for (cadence, now, expected) in [
            (&["a"][..], 2002, false),
            (&["b"], 2003, true),
            (&["a", "c"], 2004, false),
            (&["a"], 2020, true),
            (&["a"], 2021, false),
            (&["b", "c"], 2023, true),
            (&["c"], 2024, false),
        ] {
            assert_eq!(
                exempt(go_on("movie-1", cadence, now).await.unwrap()),
                (expected, now + 100),
                "{cadence:?} at {now}"
            );
        }
        // More key IDs than a record keeps are never exempt.
        let many: Vec<String> = (0..=cadence::KEPT).map(|n| format!("k{n}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let crowded = store
            .continue_stream("ann", continuing("s", "movie-1", &many), 2100)
            .await
            .unwrap();
        assert_eq!(exempt(crowded), (false, 2200));
        // A provisional lease whose renaming was lost is adopted by the name its license told,
        // found by the CDM's own id that its name carries; nothing else is.
        assert_eq!(
            acquire("pending-cdm1-req9", false, 2010).await.unwrap(),
            started
        );
        let adopted = store
            .adopt_stream("ann", "pending-cdm1-", "wv-09", 2011)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (adopted.session.as_str(), adopted.content.as_str()),
            ("wv-09", "movie-1")
        );
        for prefix in ["pending-cdm1-", "pending-cdm2-"] {
            assert!(
                store
                    .adopt_stream("ann", prefix, "wv-10", 2012)
                    .await
                    .unwrap()
                    .is_none()
            );
        }
        assert!(store.end_stream("ann", "wv-09").await.unwrap());
        // The first device reported is the stream's; another is not recorded over it.
        for (device, recorded) in [("d1", "d1"), ("d2", "d1")] {
            assert_eq!(
                store
                    .set_stream_device("ann", "s", device, 2023)
                    .await
                    .unwrap()
                    .as_deref(),
                Some(recorded)
            );
        }
        let record = store.stream("ann", "s", 2023).await.unwrap().unwrap();
        assert_eq!(record.device.as_deref(), Some("d1"));
        assert_eq!(
            store
                .set_stream_device("ann", "gone", "d1", 2023)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            store
                .continue_stream("ann", continuing("t", "movie-1", &["a"]), 2023)
                .await
                .unwrap(),
            Continuation::Unknown
        );
        assert_eq!(
            acquire("t", true, 2024).await.unwrap(),
            StreamDecision::Started { stopped: None }
        );
        assert_eq!(
            store
                .acquire_stream("ann", ask("u", 100), 2, true, 2025)
                .await
                .unwrap(),
            StreamDecision::Started {
                stopped: Some("s".into())
            }
        );
        assert_eq!(
            go_on("movie-1", &["renewal"], 2026).await.unwrap(),
            Continuation::Stopped
        );
        assert_eq!(
            go_on("movie-1", &["a"], 2300).await.unwrap(),
            Continuation::Unknown
        );
        store.end_streams("ann").await.unwrap();

        let window = 3600;
        let take = |now| store.take_quota("ann", 2, 100, now);
        assert_eq!(
            take(window + 1).await.unwrap(),
            QuotaDecision::Taken { window }
        );
        assert_eq!(
            take(window + 2).await.unwrap(),
            QuotaDecision::Taken { window }
        );
        assert_eq!(
            take(window + 3).await.unwrap(),
            QuotaDecision::Exhausted {
                resets_at: window + 100
            }
        );
        store.refund_quota("ann", window, 100).await.unwrap();
        assert_eq!(
            take(window + 4).await.unwrap(),
            QuotaDecision::Taken { window }
        );
        assert_eq!(
            take(window + 100).await.unwrap(),
            QuotaDecision::Taken {
                window: window + 100
            }
        );

        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(store.blocked("ann", now).await.unwrap(), None);
        store.block_user("ann", None, now).await.unwrap();
        assert_eq!(store.blocked("ann", now).await.unwrap(), Some(None));
        store.block_user("ann", Some(now + 60), now).await.unwrap();
        assert_eq!(
            store.blocked("ann", now).await.unwrap(),
            Some(Some(now + 60))
        );
        assert_eq!(store.blocked("ann", now + 61).await.unwrap(), None);
        assert!(store.unblock_user("ann").await.unwrap());
        assert_eq!(store.blocked("ann", now).await.unwrap(), None);
        assert_eq!(store.blocked("bob", now).await.unwrap(), None);
    }
}
