//! `[rate_limits]` and `[quota]`: how fast a client address or a user may ask for licenses, per
//! route, and how many licenses a user may have per period.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RateLimitsFile {
    /// Count in the `[store]`'s Redis, so that the whole fleet shares one limit.
    #[serde(default)]
    pub shared: bool,
    /// IPv6 clients are counted per network of this prefix length: one subscriber holds a
    /// whole /64 and may pick any address in it.
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: u8,
    pub per_client: Option<Bucket>,
    pub per_user: Option<Bucket>,
    /// Limits for one route (a DRM) in place of the ones above.
    #[serde(default)]
    pub routes: BTreeMap<Drm, RouteLimitsFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteLimitsFile {
    pub per_client: Option<Bucket>,
    pub per_user: Option<Bucket>,
}

/// A token bucket: refilled at `per_second`, holding at most `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    pub per_second: f64,
    pub burst: u32,
}

fn default_ipv6_prefix() -> u8 {
    64
}

impl Default for RateLimitsFile {
    fn default() -> Self {
        Self {
            shared: false,
            ipv6_prefix: default_ipv6_prefix(),
            per_client: None,
            per_user: None,
            routes: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitSettings {
    pub shared: bool,
    pub ipv6_prefix: u8,
    pub per_client: Option<Bucket>,
    pub per_user: Option<Bucket>,
    pub routes: BTreeMap<Drm, RouteBuckets>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteBuckets {
    pub per_client: Option<Bucket>,
    pub per_user: Option<Bucket>,
}

impl RateLimitSettings {
    pub fn enabled(&self) -> bool {
        self.per_client.is_some()
            || self.per_user.is_some()
            || self
                .routes
                .values()
                .any(|route| route.per_client.is_some() || route.per_user.is_some())
    }
}

fn validate_bucket(key: &str, bucket: Option<Bucket>) -> Result<Option<Bucket>, ConfigError> {
    if let Some(bucket) = bucket {
        if !(bucket.per_second.is_finite() && bucket.per_second > 0.0) {
            return Err(ConfigError::new(
                format!("{key}.per_second"),
                "must be a positive number",
            ));
        }
        at_least_one(format!("{key}.burst"), bucket.burst)?;
    }
    Ok(bucket)
}

pub(super) fn validate_rate_limits(
    limits: RateLimitsFile,
) -> Result<RateLimitSettings, ConfigError> {
    let mut routes = BTreeMap::new();
    for (drm, route) in limits.routes {
        let key = format!("rate_limits.routes.{}", drm.as_str());
        routes.insert(
            drm,
            RouteBuckets {
                per_client: validate_bucket(&format!("{key}.per_client"), route.per_client)?,
                per_user: validate_bucket(&format!("{key}.per_user"), route.per_user)?,
            },
        );
    }
    if !(1..=128).contains(&limits.ipv6_prefix) {
        return Err(ConfigError::new(
            "rate_limits.ipv6_prefix",
            "a prefix length from 1 to 128",
        ));
    }
    Ok(RateLimitSettings {
        shared: limits.shared,
        ipv6_prefix: limits.ipv6_prefix,
        per_client: validate_bucket("rate_limits.per_client", limits.per_client)?,
        per_user: validate_bucket("rate_limits.per_user", limits.per_user)?,
        routes,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct QuotaFile {
    pub licenses_per_user: u64,
    #[serde(default = "default_quota_period_seconds")]
    pub period_seconds: u64,
    /// A token claim that overrides `licenses_per_user` for its user.
    #[serde(default = "default_quota_claim")]
    pub claim: String,
    /// Serve licenses while the store is unreachable (the quota is not counted then).
    #[serde(default)]
    pub fail_open: bool,
}

fn default_quota_period_seconds() -> u64 {
    24 * 3600
}

fn default_quota_claim() -> String {
    "license_quota".into()
}

#[derive(Debug, Clone)]
pub struct QuotaSettings {
    pub licenses_per_user: u64,
    pub period: Duration,
    pub claim: String,
    pub fail_open: bool,
}

pub(super) fn validate_quota(quota: QuotaFile) -> Result<QuotaSettings, ConfigError> {
    at_least_one("quota.licenses_per_user", quota.licenses_per_user)?;
    at_least_one("quota.period_seconds", quota.period_seconds)?;
    Ok(QuotaSettings {
        licenses_per_user: quota.licenses_per_user,
        period: Duration::from_secs(quota.period_seconds),
        claim: quota.claim,
        fail_open: quota.fail_open,
    })
}

/// `[admin]`: the admin API's bearer token (devices, streams, blocked users).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminFile {
    pub token: Option<String>,
    /// How long an instance trusts its last look at whether a user is blocked.
    #[serde(default = "default_block_check_ms")]
    pub block_check_ms: u64,
    /// Where the status page finds its chart library (`node_modules/uplot`).
    #[serde(default = "default_status_root")]
    pub status_root: String,
}

fn default_status_root() -> String {
    "web/status".into()
}

impl Default for AdminFile {
    fn default() -> Self {
        Self {
            token: None,
            block_check_ms: default_block_check_ms(),
            status_root: default_status_root(),
        }
    }
}

fn default_block_check_ms() -> u64 {
    2000
}

#[derive(Debug, Clone, Default)]
pub struct AdminSettings {
    pub token: Option<String>,
    pub block_check: Duration,
    pub status_root: std::path::PathBuf,
}

pub(super) fn validate_admin(admin: AdminFile) -> Result<AdminSettings, ConfigError> {
    if admin.token.as_ref().is_some_and(|t| t.len() < 16) {
        return Err(ConfigError::new(
            "admin.token",
            "must be at least 16 characters",
        ));
    }
    Ok(AdminSettings {
        token: admin.token,
        block_check: Duration::from_millis(admin.block_check_ms),
        status_root: admin.status_root.into(),
    })
}
