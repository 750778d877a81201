//! `[catalog]`: where contents come from: a file each instance reads, or the shared store with
//! an in-process cache in front and keys sealed at rest.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CatalogFile {
    #[serde(default)]
    pub source: CatalogSourceName,
    pub path: Option<String>,
    #[serde(default = "default_reload_seconds")]
    pub reload_seconds: u64,
    #[serde(default = "default_catalog_cache_entries")]
    pub cache_entries: u64,
    #[serde(default = "default_catalog_cache_mib")]
    pub cache_mib: u64,
    #[serde(default = "default_catalog_cache_seconds")]
    pub cache_seconds: u64,
    pub key_encryption_key: Option<String>,
    #[serde(default)]
    pub previous_key_encryption_keys: Vec<String>,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum CatalogSourceName {
    #[default]
    File,
    Store,
}

fn default_catalog_cache_entries() -> u64 {
    100_000
}
fn default_catalog_cache_mib() -> u64 {
    64
}
fn default_catalog_cache_seconds() -> u64 {
    5
}

#[derive(Debug)]
pub enum CatalogSettings {
    /// A TOML or JSON file, checked for changes every `reload_interval`.
    File {
        path: PathBuf,
        reload_interval: Duration,
    },
    Store(StoredCatalogSettings),
}

#[derive(Debug)]
pub struct StoredCatalogSettings {
    /// Contents cached at most, and their records' bytes at most.
    pub cache_entries: u64,
    pub cache_bytes: u64,
    /// How long an instance uses what it read (or that a content is unknown): the bound on how
    /// late the fleet sees a change made elsewhere.
    pub cache_ttl: Duration,
    pub keys: KeyEncryptionKeys,
}

/// AES-256 keys that seal content keys at rest: new records are sealed with `current`; a record
/// sealed with a `previous` one still opens, so the key can rotate.
#[derive(Clone)]
pub struct KeyEncryptionKeys {
    pub current: [u8; 32],
    pub previous: Vec<[u8; 32]>,
}

impl std::fmt::Debug for KeyEncryptionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyEncryptionKeys({} previous)", self.previous.len())
    }
}

pub(super) fn validate_catalog(catalog: CatalogFile) -> Result<CatalogSettings, ConfigError> {
    match catalog.source {
        CatalogSourceName::File => {
            let Some(path) = catalog.path else {
                return Err(ConfigError::new(
                    "catalog.path",
                    "the catalog file is required",
                ));
            };
            at_least_one("catalog.reload_seconds", catalog.reload_seconds)?;
            Ok(CatalogSettings::File {
                path: path.into(),
                reload_interval: Duration::from_secs(catalog.reload_seconds),
            })
        }
        CatalogSourceName::Store => {
            if catalog.path.is_some() {
                return Err(ConfigError::new(
                    "catalog.path",
                    "a catalog in the store has no file: import one with `licensegate catalog import`",
                ));
            }
            at_least_one("catalog.cache_entries", catalog.cache_entries)?;
            at_least_one("catalog.cache_mib", catalog.cache_mib)?;
            at_least_one("catalog.cache_seconds", catalog.cache_seconds)?;
            let Some(current) = catalog.key_encryption_key else {
                return Err(ConfigError::new(
                    "catalog.key_encryption_key",
                    "content keys are sealed at rest: name a 32-byte key, e.g. \"${LICENSEGATE_CATALOG_KEK}\"",
                ));
            };
            let current = kek("catalog.key_encryption_key", &current)?;
            let previous = catalog
                .previous_key_encryption_keys
                .iter()
                .enumerate()
                .map(|(n, text)| kek(&format!("catalog.previous_key_encryption_keys[{n}]"), text))
                .collect::<Result<_, _>>()?;
            Ok(CatalogSettings::Store(StoredCatalogSettings {
                cache_entries: catalog.cache_entries,
                cache_bytes: catalog.cache_mib.saturating_mul(1024 * 1024),
                cache_ttl: Duration::from_secs(catalog.cache_seconds),
                keys: KeyEncryptionKeys { current, previous },
            }))
        }
    }
}

/// 32 bytes as 64 hex digits or base64; the error names the key, never the value.
fn kek(key: &str, text: &str) -> Result<[u8; 32], ConfigError> {
    use base64::Engine;
    let text = text.trim();
    let bytes = hex::decode(text)
        .ok()
        .or_else(|| base64::engine::general_purpose::STANDARD.decode(text).ok());
    bytes
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| {
            ConfigError::new(
                key,
                "a key encryption key is 32 bytes, as 64 hex digits or base64",
            )
        })
}
