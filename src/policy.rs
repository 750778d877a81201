//! A license policy: what a license allows once issued (security level, output protection,
//! duration, persistence, renewal). Named in the config, chosen per request by entitlement, and
//! turned into each provider's own terms by the provider's file.

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// 1 (software) to 5 (hardware secure decode), Widevine's scale.
    pub security_level: u8,
    pub hdcp: Hdcp,
    /// 0 for no limit.
    pub license_duration_seconds: u64,
    pub persistent: bool,
    /// 0 for no renewal.
    pub renewal_interval_seconds: u64,
}

/// Output protection a license demands, spelled in the config as `none`, `1.4` or `2.2`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Hdcp {
    #[default]
    #[serde(rename = "none")]
    None,
    #[serde(rename = "1.4")]
    V1_4,
    #[serde(rename = "2.2")]
    V2_2,
}
