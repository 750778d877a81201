//! `[devices]`: device limits, how devices are told apart, and where their slots live.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::*;

/// Device limits: how many devices a user may license on, counted from the providers' answers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Devices {
    pub max_per_user: u32,
    /// A token claim that overrides `max_per_user` for its user.
    #[serde(default = "default_max_devices_claim")]
    pub claim: String,
    /// A slot unused this long frees itself.
    #[serde(default = "default_slot_idle_seconds")]
    pub slot_idle_seconds: u64,
    /// Which device_info field identifies a device, in order of preference; Android devices
    /// use `android_identity` (**Axinom license service proxy** in docs/sources.md: the certificate serial number is shared by every
    /// desktop browser, but identifies an Android device).
    #[serde(default = "default_identity")]
    pub identity: Vec<DeviceField>,
    #[serde(default = "default_android_identity")]
    pub android_identity: Vec<DeviceField>,
    /// What to do when the provider reports no device.
    #[serde(default = "default_unreported")]
    pub unreported: DeviceDecision,
    /// What to do when the provider's device report fails verification.
    #[serde(default = "default_untrusted")]
    pub untrusted: DeviceDecision,
    #[serde(default)]
    pub store: DeviceStoreKind,
    /// The embedded store's file.
    #[serde(default = "default_devices_path")]
    pub path: String,
    pub redis_url: Option<String>,
    #[serde(default = "default_store_timeout_ms")]
    pub store_timeout_ms: u64,
    /// Serve licenses while the store is unreachable (no limit is enforced then).
    #[serde(default)]
    pub fail_open: bool,
    /// Bearer token for the admin API's device endpoints.
    pub admin_token: Option<String>,
}

pub(super) fn default_max_devices_claim() -> String {
    "max_devices".into()
}

pub(super) fn default_slot_idle_seconds() -> u64 {
    30 * 24 * 3600
}

pub(super) fn default_identity() -> Vec<DeviceField> {
    vec![DeviceField::ClientToken, DeviceField::DeviceId]
}

pub(super) fn default_android_identity() -> Vec<DeviceField> {
    vec![
        DeviceField::DeviceCertificateSerialNumber,
        DeviceField::DeviceId,
    ]
}

pub(super) fn default_unreported() -> DeviceDecision {
    DeviceDecision::Allow
}

pub(super) fn default_untrusted() -> DeviceDecision {
    DeviceDecision::Refuse
}

pub(super) fn default_devices_path() -> String {
    "devices.db".into()
}

pub(super) fn default_store_timeout_ms() -> u64 {
    200
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceField {
    ClientToken,
    DeviceCertificateSerialNumber,
    DeviceId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceDecision {
    Allow,
    Refuse,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStoreKind {
    #[default]
    Embedded,
    Redis,
}

#[derive(Debug, Clone)]
pub struct DeviceSettings {
    pub max_per_user: u32,
    pub claim: String,
    pub slot_idle: Duration,
    pub identity: Vec<DeviceField>,
    pub android_identity: Vec<DeviceField>,
    pub unreported: DeviceDecision,
    pub untrusted: DeviceDecision,
    pub store: DeviceStoreConfig,
    pub store_timeout: Duration,
    pub fail_open: bool,
    pub admin_token: Option<String>,
}

#[derive(Debug, Clone)]
pub enum DeviceStoreConfig {
    Embedded(PathBuf),
    Redis(String),
}

pub(super) fn validate_devices(devices: Devices) -> Result<DeviceSettings, ConfigError> {
    at_least_one("devices.max_per_user", devices.max_per_user)?;
    at_least_one("devices.slot_idle_seconds", devices.slot_idle_seconds)?;
    at_least_one("devices.store_timeout_ms", devices.store_timeout_ms)?;
    for (key, list) in [
        ("devices.identity", &devices.identity),
        ("devices.android_identity", &devices.android_identity),
    ] {
        if list.is_empty() {
            return Err(ConfigError::new(key, "name at least one device_info field"));
        }
    }
    let store = match devices.store {
        DeviceStoreKind::Embedded => DeviceStoreConfig::Embedded(devices.path.into()),
        DeviceStoreKind::Redis => {
            let url = devices.redis_url.ok_or_else(|| {
                ConfigError::new("devices.redis_url", "the redis store needs a URL")
            })?;
            if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                return Err(ConfigError::new(
                    "devices.redis_url",
                    "must be a redis:// or rediss:// URL",
                ));
            }
            DeviceStoreConfig::Redis(url)
        }
    };
    if devices.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
        return Err(ConfigError::new(
            "devices.admin_token",
            "must be at least 16 characters",
        ));
    }
    Ok(DeviceSettings {
        max_per_user: devices.max_per_user,
        claim: devices.claim,
        slot_idle: Duration::from_secs(devices.slot_idle_seconds),
        identity: devices.identity,
        android_identity: devices.android_identity,
        unreported: devices.unreported,
        untrusted: devices.untrusted,
        store,
        store_timeout: Duration::from_millis(devices.store_timeout_ms),
        fail_open: devices.fail_open,
        admin_token: devices.admin_token,
    })
}
