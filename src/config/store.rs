//! `[store]`: where state shared by every instance lives (device slots, stream leases, license
//! quotas, blocked users, and fleet-wide rate limits).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Store {
    #[serde(default)]
    pub kind: StoreKind,
    /// The embedded store's file.
    #[serde(default = "default_store_path")]
    pub path: String,
    pub redis_url: Option<String>,
    /// Every store call is bounded by this.
    #[serde(default = "default_store_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            kind: StoreKind::default(),
            path: default_store_path(),
            redis_url: None,
            timeout_ms: default_store_timeout_ms(),
        }
    }
}

fn default_store_path() -> String {
    "licensegate.db".into()
}

fn default_store_timeout_ms() -> u64 {
    200
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// SQLite in one file: one instance, or instances sharing a disk.
    #[default]
    Embedded,
    /// A Redis every instance of the fleet reaches.
    Redis,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreSettings {
    pub backend: StoreBackend,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StoreBackend {
    Embedded(PathBuf),
    Redis(String),
}

pub(super) fn validate_store(store: Store) -> Result<StoreSettings, ConfigError> {
    at_least_one("store.timeout_ms", store.timeout_ms)?;
    let backend = match store.kind {
        StoreKind::Embedded => StoreBackend::Embedded(store.path.into()),
        StoreKind::Redis => {
            let url = store.redis_url.ok_or_else(|| {
                ConfigError::new("store.redis_url", "the redis store needs a URL")
            })?;
            if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                return Err(ConfigError::new(
                    "store.redis_url",
                    "must be a redis:// or rediss:// URL",
                ));
            }
            StoreBackend::Redis(url)
        }
    };
    Ok(StoreSettings {
        backend,
        timeout: Duration::from_millis(store.timeout_ms),
    })
}
