//! `[devices]`: device limits, and how devices are told apart. Slots live in the `[store]`.

use std::time::Duration;

use serde::Deserialize;

use super::*;

/// Device limits: how many devices a user may license on, counted from the providers' answers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DevicesFile {
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
    /// Serve licenses while the store is unreachable (no limit is enforced then).
    #[serde(default)]
    pub fail_open: bool,
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

#[derive(Debug, Clone)]
pub struct DeviceSettings {
    pub max_per_user: u32,
    pub claim: String,
    pub slot_idle: Duration,
    pub identity: Vec<DeviceField>,
    pub android_identity: Vec<DeviceField>,
    pub unreported: DeviceDecision,
    pub untrusted: DeviceDecision,
    pub fail_open: bool,
}

pub(super) fn validate_devices(devices: DevicesFile) -> Result<DeviceSettings, ConfigError> {
    at_least_one("devices.max_per_user", devices.max_per_user)?;
    at_least_one("devices.slot_idle_seconds", devices.slot_idle_seconds)?;
    for (key, list) in [
        ("devices.identity", &devices.identity),
        ("devices.android_identity", &devices.android_identity),
    ] {
        if list.is_empty() {
            return Err(ConfigError::new(key, "name at least one device_info field"));
        }
    }
    Ok(DeviceSettings {
        max_per_user: devices.max_per_user,
        claim: devices.claim,
        slot_idle: Duration::from_secs(devices.slot_idle_seconds),
        identity: devices.identity,
        android_identity: devices.android_identity,
        unreported: devices.unreported,
        untrusted: devices.untrusted,
        fail_open: devices.fail_open,
    })
}
