//! `[store]`: where state shared by every instance lives (device slots, stream leases, license
//! quotas, blocked users, and fleet-wide rate limits).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StoreFile {
    #[serde(default)]
    pub kind: StoreKind,
    /// The embedded store's file.
    #[serde(default = "default_store_path")]
    pub path: String,
    pub redis_url: Option<String>,
    /// Redis Cluster: some of its nodes (`redis://host:port`); the rest are learned from them.
    #[serde(default)]
    pub cluster_nodes: Vec<String>,
    /// Redis Sentinel: the sentinels (`redis://host:port`) and the name of the master they
    /// watch; its password, if it has one.
    #[serde(default)]
    pub sentinels: Vec<String>,
    pub master_name: Option<String>,
    pub master_password: Option<String>,
    /// Every store call is bounded by this.
    #[serde(default = "default_store_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for StoreFile {
    fn default() -> Self {
        Self {
            kind: StoreKind::default(),
            path: default_store_path(),
            redis_url: None,
            cluster_nodes: Vec::new(),
            sentinels: Vec::new(),
            master_name: None,
            master_password: None,
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
    Redis(RedisTopology),
}

/// One Redis server, a Redis Cluster, or a master found through Redis Sentinel.
#[derive(Clone, PartialEq)]
pub enum RedisTopology {
    Single(String),
    Cluster(Vec<String>),
    Sentinel {
        sentinels: Vec<String>,
        master_name: String,
        master_password: Option<String>,
    },
}

/// URLs and the master's password may hold secrets: only the shape is printed.
impl std::fmt::Debug for RedisTopology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisTopology::Single(_) => f.write_str("Single(..)"),
            RedisTopology::Cluster(nodes) => write!(f, "Cluster({} nodes)", nodes.len()),
            RedisTopology::Sentinel {
                sentinels,
                master_name,
                ..
            } => write!(f, "Sentinel({} sentinels, {master_name})", sentinels.len()),
        }
    }
}

pub(super) fn validate_store(store: StoreFile) -> Result<StoreSettings, ConfigError> {
    at_least_one("store.timeout_ms", store.timeout_ms)?;
    let timeout = Duration::from_millis(store.timeout_ms);
    let backend = match store.kind {
        StoreKind::Embedded => StoreBackend::Embedded(store.path.into()),
        StoreKind::Redis => StoreBackend::Redis(redis_topology(store)?),
    };
    Ok(StoreSettings { backend, timeout })
}

fn redis_topology(store: StoreFile) -> Result<RedisTopology, ConfigError> {
    let urls = |key: &str, urls: &[String]| {
        urls.iter().enumerate().try_for_each(|(n, url)| {
            if url.starts_with("redis://") || url.starts_with("rediss://") {
                Ok(())
            } else {
                Err(ConfigError::new(
                    format!("{key}[{n}]"),
                    "must be a redis:// or rediss:// URL",
                ))
            }
        })
    };
    let ways = [
        store.redis_url.is_some(),
        !store.cluster_nodes.is_empty(),
        !store.sentinels.is_empty(),
    ];
    if ways.iter().filter(|given| **given).count() != 1 {
        return Err(ConfigError::new(
            "store.redis_url",
            "the redis store needs exactly one of redis_url, cluster_nodes or sentinels",
        ));
    }
    if let Some(url) = store.redis_url {
        urls("store.redis_url", std::slice::from_ref(&url))
            .map_err(|e| ConfigError::new("store.redis_url", e.reason))?;
        return Ok(RedisTopology::Single(url));
    }
    if !store.cluster_nodes.is_empty() {
        urls("store.cluster_nodes", &store.cluster_nodes)?;
        return Ok(RedisTopology::Cluster(store.cluster_nodes));
    }
    urls("store.sentinels", &store.sentinels)?;
    let master_name = store
        .master_name
        .ok_or_else(|| ConfigError::new("store.master_name", "sentinels need the master's name"))?;
    Ok(RedisTopology::Sentinel {
        sentinels: store.sentinels,
        master_name,
        master_password: store.master_password,
    })
}
