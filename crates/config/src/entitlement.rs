//! `[entitlement]` and `[policies]`: who may play what, under which license policy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::*;
use crate::policy::{DEFAULT_RENEWAL_GRACE_SECONDS, Hdcp, Policy};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct EntitlementFile {
    /// The token claim listing what the user may play: content ids, glob patterns such as
    /// `series-12/*`, or `tier:NAME` for catalog entries of that tier.
    pub claim: String,
    pub default_policy: String,
    pub service: Option<EntitlementServiceFile>,
}

impl Default for EntitlementFile {
    fn default() -> Self {
        Self {
            claim: "entitlements".into(),
            default_policy: "default".into(),
            service: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EntitlementServiceFile {
    pub url: String,
    #[serde(default = "default_entitlement_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_entitlement_cache")]
    pub cache_seconds: u64,
    #[serde(default = "default_cache_entries")]
    pub cache_entries: u64,
    /// Allow with the default policy when the service cannot answer (default: refuse).
    #[serde(default)]
    pub fail_open: bool,
}

pub(super) fn default_entitlement_timeout() -> u64 {
    500
}

pub(super) fn default_entitlement_cache() -> u64 {
    60
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyFile {
    /// 1 (software) to 5 (hardware secure decode), Widevine's scale.
    #[serde(default = "default_security_level")]
    pub security_level: u8,
    #[serde(default)]
    pub hdcp: Hdcp,
    /// 0 for no limit.
    #[serde(default)]
    pub license_duration_seconds: u64,
    #[serde(default)]
    pub persistent: bool,
    /// 0 for no renewal.
    #[serde(default)]
    pub renewal_interval_seconds: u64,
}

pub(super) fn default_security_level() -> u8 {
    1
}

impl From<PolicyFile> for Policy {
    fn from(file: PolicyFile) -> Self {
        Policy {
            security_level: file.security_level,
            hdcp: file.hdcp,
            license_duration_seconds: file.license_duration_seconds,
            persistent: file.persistent,
            renewal_interval_seconds: file.renewal_interval_seconds,
            renewal_grace_seconds: DEFAULT_RENEWAL_GRACE_SECONDS,
        }
    }
}

#[derive(Debug)]
pub struct EntitlementSettings {
    pub claim: String,
    pub default_policy: String,
    pub service: Option<EntitlementServiceSettings>,
}

#[derive(Debug, Clone)]
pub struct EntitlementServiceSettings {
    pub url: url::Url,
    pub timeout: Duration,
    pub cache_ttl: Duration,
    pub cache_entries: u64,
    pub fail_open: bool,
}

/// The policy used where neither content nor entitlement names one and the config defines
/// no `[policies.default]`: software security, no output protection, no expiry.
pub(super) const BUILT_IN_DEFAULT_POLICY: Policy = Policy {
    security_level: 1,
    hdcp: Hdcp::None,
    license_duration_seconds: 0,
    persistent: false,
    renewal_interval_seconds: 0,
    renewal_grace_seconds: DEFAULT_RENEWAL_GRACE_SECONDS,
};

pub(super) fn validate_entitlement(
    entitlement: EntitlementFile,
    policies: &mut BTreeMap<String, Arc<Policy>>,
) -> Result<EntitlementSettings, ConfigError> {
    if !policies.contains_key(&entitlement.default_policy) {
        if entitlement.default_policy != "default" {
            return Err(ConfigError::new(
                "entitlement.default_policy",
                format!(
                    "no policy named '{}' under [policies]",
                    entitlement.default_policy
                ),
            ));
        }
        policies.insert("default".into(), Arc::new(BUILT_IN_DEFAULT_POLICY));
    }
    let service = entitlement
        .service
        .map(|service| {
            let url = url::Url::parse(&service.url)
                .ok()
                .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
                .ok_or_else(|| {
                    ConfigError::new("entitlement.service.url", "not an http(s) URL with a host")
                })?;
            at_least_one("entitlement.service.timeout_ms", service.timeout_ms)?;
            Ok(EntitlementServiceSettings {
                url,
                timeout: Duration::from_millis(service.timeout_ms),
                cache_ttl: Duration::from_secs(service.cache_seconds),
                cache_entries: service.cache_entries,
                fail_open: service.fail_open,
            })
        })
        .transpose()?;
    Ok(EntitlementSettings {
        claim: entitlement.claim,
        default_policy: entitlement.default_policy,
        service,
    })
}
