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
    /// How long a renewing license outlives a renewal that has not come: the player's time to
    /// retry, and the time a stopped stream plays on.
    pub renewal_grace_seconds: u64,
}

/// The grace a renewing license gets when no `[streams]` section names one (Axinom's default).
pub const DEFAULT_RENEWAL_GRACE_SECONDS: u64 = 60;

impl Policy {
    pub fn renews(&self) -> bool {
        self.renewal_interval_seconds > 0
    }

    /// How long each license lasts. A renewing license lasts its interval plus the grace, so a
    /// refused renewal (a revoked user, a stopped stream) ends playback within that time
    /// whatever `license_duration_seconds` says.
    pub fn license_seconds(&self) -> u64 {
        if self.renews() {
            self.renewal_interval_seconds + self.renewal_grace_seconds
        } else {
            self.license_duration_seconds
        }
    }

    /// How often a player retries a failed renewal: four tries within the grace.
    pub fn renewal_retry_seconds(&self) -> u64 {
        (self.renewal_grace_seconds / 4).clamp(1, 60)
    }
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
