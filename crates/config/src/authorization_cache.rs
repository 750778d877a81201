//! `[authorization_cache]`: the providers' authorizations kept for reuse.

use std::time::Duration;

use serde::Deserialize;

use super::*;

/// Provider authorizations (signed messages, token URLs) kept for reuse.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct AuthorizationCacheFile {
    pub max_entries: u64,
    pub max_bytes: u64,
    /// An authorization leaves the cache this long before it expires, so one handed out at
    /// the last moment still outlives the provider call.
    pub safety_margin_seconds: u64,
}

impl Default for AuthorizationCacheFile {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_bytes: 64 * 1024 * 1024,
            safety_margin_seconds: 60,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthorizationCacheSettings {
    pub max_entries: u64,
    pub max_bytes: u64,
    pub safety_margin: Duration,
}

pub(super) fn validate_authorization_cache(
    cache: AuthorizationCacheFile,
) -> Result<AuthorizationCacheSettings, ConfigError> {
    at_least_one("authorization_cache.max_entries", cache.max_entries)?;
    if cache.max_bytes < cache.max_entries {
        return Err(ConfigError::new(
            "authorization_cache.max_bytes",
            "must be at least authorization_cache.max_entries",
        ));
    }
    Ok(AuthorizationCacheSettings {
        max_entries: cache.max_entries,
        max_bytes: cache.max_bytes,
        safety_margin: Duration::from_secs(cache.safety_margin_seconds),
    })
}
