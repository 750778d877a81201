//! Device limits. The provider learns which device asks only while answering, so the decision
//! happens on the provider's answer: the device it reports is counted against the user's slots,
//! and beyond the limit the license is held back. Slots live in a [`DeviceStore`] shared by
//! every instance (embedded SQLite for one, Redis for a fleet).

pub mod embedded;
pub mod redis;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use prometheus::{HistogramVec, IntCounterVec};
use serde::Serialize;
use serde_json::Value;

use crate::config::{ConfigError, DeviceDecision, DeviceField, DeviceSettings, DeviceStoreConfig};
use crate::metrics::Metrics;
use crate::problem::{Problem, Refusal};
use crate::providers::{Device, DeviceInfo};

/// One registered device of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Slot {
    pub device: String,
    /// Seconds since the epoch.
    pub last_seen: u64,
}

/// The store's answer to a device asking for a license.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The device holds a slot (`new`: it was given one just now).
    Admitted { new: bool },
    /// Every slot is held by another device.
    Full {
        registered: u64,
        /// Seconds since the epoch at which the least recently used slot frees itself.
        oldest_frees_at: u64,
    },
}

/// Why a device store call failed. Messages are kept as text: one failed group commit answers
/// every call in it, and the drivers' errors cannot be cloned.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(String),
    #[error("redis: {0}")]
    Redis(String),
    #[error("cannot open {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("the device store's writer thread stopped")]
    WriterStopped,
    #[error("the device store did not answer in time")]
    TimedOut,
}

/// Where slots are kept. `admit` is atomic per user: concurrent calls, from any number of
/// licensegate instances sharing the store, never hand out more than `limit` slots.
#[async_trait]
pub trait DeviceStore: Send + Sync {
    /// Frees the user's slots idle for `idle`, then touches `device`'s slot, gives it a free
    /// one, or refuses.
    async fn admit(
        &self,
        user: &str,
        device: &str,
        limit: u32,
        idle: Duration,
        now: u64,
    ) -> Result<Decision, StoreError>;

    /// The user's slots not idle for `idle`, least recently used first.
    async fn list(&self, user: &str, idle: Duration, now: u64) -> Result<Vec<Slot>, StoreError>;

    async fn remove(&self, user: &str, device: &str) -> Result<bool, StoreError>;

    async fn remove_all(&self, user: &str) -> Result<u64, StoreError>;
}

pub fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Which field of the provider's device report names the device: the advice of **Axinom license
/// service proxy** (docs/sources.md), as
/// configured (the certificate serial number is shared by every desktop browser, so desktops
/// go by client token; Android devices by serial number).
pub fn identity(settings: &DeviceSettings, info: &DeviceInfo) -> Option<String> {
    let android = info
        .platform
        .as_deref()
        .is_some_and(|p| p.to_ascii_lowercase().contains("android"));
    let order = if android {
        &settings.android_identity
    } else {
        &settings.identity
    };
    order
        .iter()
        .filter_map(|field| match field {
            DeviceField::ClientToken => info.client_token.as_ref(),
            DeviceField::DeviceCertificateSerialNumber => {
                info.device_certificate_serial_number.as_ref()
            }
            DeviceField::DeviceId => info.device_id.as_ref(),
        })
        .find(|value| !value.is_empty())
        .cloned()
}

/// The device limit policy over a store.
pub struct Devices {
    pub settings: DeviceSettings,
    store: Arc<dyn DeviceStore>,
    decisions: IntCounterVec,
    store_duration: HistogramVec,
}

impl Devices {
    pub fn open(settings: DeviceSettings, metrics: &Metrics) -> Result<Self, ConfigError> {
        let store: Arc<dyn DeviceStore> = match &settings.store {
            DeviceStoreConfig::Embedded(path) => Arc::new(
                embedded::EmbeddedStore::open(path)
                    .map_err(|e| ConfigError::new("devices.path", e.to_string()))?,
            ),
            DeviceStoreConfig::Redis(url) => Arc::new(
                redis::RedisStore::new(url)
                    .map_err(|e| ConfigError::new("devices.redis_url", e.to_string()))?,
            ),
        };
        Ok(Self {
            settings,
            store,
            decisions: metrics.device_decisions.clone(),
            store_duration: metrics.device_store_duration.clone(),
        })
    }

    /// What opening the store checks, without creating anything: an existing database file
    /// must be one, a new one must be creatable, a Redis URL must be usable. `licensegate
    /// check` runs this.
    pub fn check(store: &DeviceStoreConfig) -> Result<(), ConfigError> {
        match store {
            DeviceStoreConfig::Embedded(path) if path.exists() => {
                rusqlite::Connection::open_with_flags(
                    path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )
                .and_then(|db| {
                    db.query_row("PRAGMA schema_version", [], |row| row.get::<_, i64>(0))
                })
                .map(drop)
                .map_err(|e| ConfigError::new("devices.path", format!("{}: {e}", path.display())))
            }
            DeviceStoreConfig::Embedded(path) => {
                let dir = match path.parent() {
                    Some(dir) if !dir.as_os_str().is_empty() => dir,
                    _ => std::path::Path::new("."),
                };
                let probe = dir.join(format!(".licensegate-check-{}", std::process::id()));
                std::fs::File::create(&probe)
                    .and_then(|_| std::fs::remove_file(&probe))
                    .map_err(|e| {
                        ConfigError::new(
                            "devices.path",
                            format!("cannot create a database in '{}': {e}", dir.display()),
                        )
                    })
            }
            DeviceStoreConfig::Redis(url) => ::redis::Client::open(url.as_str())
                .map(drop)
                // The URL may carry a password: the error names the key, not the value.
                .map_err(|e| ConfigError::new("devices.redis_url", format!("{:?}", e.kind()))),
        }
    }

    /// The user's limit: the token's claim if it has one, else the entitlement's, else the
    /// configured default.
    pub fn limit_for(
        &self,
        claims: Option<&serde_json::Map<String, Value>>,
        granted: Option<u32>,
    ) -> u32 {
        claims
            .and_then(|claims| claims.get(&self.settings.claim))
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
            .or(granted)
            .unwrap_or(self.settings.max_per_user)
    }

    /// Whether `user`'s `device` may have the license the provider just issued.
    pub async fn admit(&self, user: &str, device: &Device, limit: u32) -> Result<(), Problem> {
        let identity = match device {
            Device::Reported(info) => identity(&self.settings, info),
            _ => None,
        };
        let Some(identity) = identity else {
            let (decision, why) = match device {
                Device::Untrusted(why) => (self.settings.untrusted, why.as_str()),
                _ => (self.settings.unreported, "the provider reported no device"),
            };
            tracing::warn!(reason = why, "device not identified");
            return match decision {
                DeviceDecision::Allow => {
                    self.count("unidentified_allowed");
                    Ok(())
                }
                DeviceDecision::Refuse => {
                    self.count("unidentified_refused");
                    Err(Problem::new(Refusal::DeviceUnknown).with_detail(why.to_string()))
                }
            };
        };
        let started = Instant::now();
        let decided = tokio::time::timeout(
            self.settings.store_timeout,
            self.store.admit(
                user,
                &identity,
                limit,
                self.settings.slot_idle,
                now_seconds(),
            ),
        )
        .await;
        self.store_duration
            .with_label_values(&["admit"])
            .observe(started.elapsed().as_secs_f64());
        let failure = match decided {
            Ok(Ok(Decision::Admitted { new })) => {
                self.count(if new { "registered" } else { "known" });
                return Ok(());
            }
            Ok(Ok(Decision::Full {
                registered,
                oldest_frees_at,
            })) => {
                self.count("refused");
                let frees_at =
                    crate::providers::rfc3339(UNIX_EPOCH + Duration::from_secs(oldest_frees_at));
                return Err(Problem::new(Refusal::DeviceLimitReached)
                .with_detail(format!(
                    "{registered} of {limit} devices registered; the least recently used slot frees at {frees_at}"
                ))
                .with_extension("registered_devices", registered.into())
                .with_extension("device_limit", limit.into())
                .with_extension("oldest_slot_frees_at", frees_at.into()));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!(
                "no answer within {} ms",
                self.settings.store_timeout.as_millis()
            ),
        };
        tracing::error!(error = %failure, "device store unavailable");
        if self.settings.fail_open {
            self.count("store_down_allowed");
            return Ok(());
        }
        self.count("store_down_refused");
        Err(Problem::new(Refusal::DeviceStoreUnavailable)
            .with_detail("the device limit cannot be checked right now"))
    }

    pub async fn list(&self, user: &str) -> Result<Vec<Slot>, StoreError> {
        self.timed(
            "list",
            self.store
                .list(user, self.settings.slot_idle, now_seconds()),
        )
        .await
    }

    pub async fn remove(&self, user: &str, device: &str) -> Result<bool, StoreError> {
        self.timed("remove", self.store.remove(user, device)).await
    }

    pub async fn remove_all(&self, user: &str) -> Result<u64, StoreError> {
        self.timed("remove_all", self.store.remove_all(user)).await
    }

    async fn timed<T>(
        &self,
        operation: &str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.settings.store_timeout, call)
            .await
            .unwrap_or_else(|_| Err(StoreError::TimedOut));
        self.store_duration
            .with_label_values(&[operation])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    fn count(&self, decision: &str) {
        self.decisions.with_label_values(&[decision]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desktops_go_by_client_token_and_android_by_serial_number() {
        let settings = crate::config::Config::parse(
            r#"
            [listeners]
            license = "127.0.0.1:1"
            admin = "127.0.0.1:2"
            [providers.v]
            kind = "passthrough"
            endpoints = ["http://127.0.0.1:3/"]
            [routes]
            widevine = "v"
            [auth]
            [[auth.keys]]
            kind = "secret"
            algorithm = "HS256"
            secret = "a-secret-of-at-least-thirty-two-bytes"
            [devices]
            max_per_user = 2
            "#,
            &|_| None,
        )
        .unwrap()
        .devices
        .unwrap();
        let desktop = DeviceInfo {
            client_token: Some("token".into()),
            device_certificate_serial_number: Some("shared-serial".into()),
            device_id: Some("id".into()),
            platform: Some("Windows".into()),
            model: None,
        };
        assert_eq!(identity(&settings, &desktop).as_deref(), Some("token"));
        let android = DeviceInfo {
            platform: Some("Android".into()),
            ..desktop.clone()
        };
        assert_eq!(
            identity(&settings, &android).as_deref(),
            Some("shared-serial")
        );
        let bare = DeviceInfo {
            client_token: None,
            ..desktop
        };
        assert_eq!(identity(&settings, &bare).as_deref(), Some("id"));
        assert_eq!(identity(&settings, &DeviceInfo::default()), None);
    }
}
