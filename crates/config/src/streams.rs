//! `[streams]`: how many streams a user may play at once, and how long a stream's lease lasts
//! between renewals.

use std::time::Duration;

use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamsFile {
    pub max_per_user: u32,
    /// A token claim that overrides `max_per_user` for its user.
    #[serde(default = "default_max_streams_claim")]
    pub claim: String,
    #[serde(default)]
    pub on_limit: OnLimit,
    /// How often a stream renews when neither the license nor the policy says.
    #[serde(default = "default_renewal_interval_seconds")]
    pub renewal_interval_seconds: u64,
    /// How long a lease outlives its renewal interval: late renewals, retries, clock skew.
    #[serde(default = "default_grace_seconds")]
    pub grace_seconds: u64,
    /// Serve licenses while the store is unreachable (no limit is enforced then).
    #[serde(default)]
    pub fail_open: bool,
}

fn default_max_streams_claim() -> String {
    "max_streams".into()
}

// Axinom's concurrency defaults (docs/sources.md): 300 s between renewals, 60 s of grace.
fn default_renewal_interval_seconds() -> u64 {
    300
}

fn default_grace_seconds() -> u64 {
    60
}

/// What happens to a new stream beyond the limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    /// The new stream is refused.
    #[default]
    Refuse,
    /// The new stream plays; the oldest stream's next renewal is refused.
    StopOldest,
}

#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub max_per_user: u32,
    pub claim: String,
    pub on_limit: OnLimit,
    pub renewal_interval: Duration,
    pub grace: Duration,
    pub fail_open: bool,
}

pub(super) fn validate_streams(streams: StreamsFile) -> Result<StreamSettings, ConfigError> {
    at_least_one("streams.max_per_user", streams.max_per_user)?;
    at_least_one(
        "streams.renewal_interval_seconds",
        streams.renewal_interval_seconds,
    )?;
    Ok(StreamSettings {
        max_per_user: streams.max_per_user,
        claim: streams.claim,
        on_limit: streams.on_limit,
        renewal_interval: Duration::from_secs(streams.renewal_interval_seconds),
        grace: Duration::from_secs(streams.grace_seconds),
        fail_open: streams.fail_open,
    })
}

/// A stream lives only while its player renews, so with a stream limit every license renews: a
/// policy naming no renewal interval takes the streams' one, and every renewing license
/// outlives a missed renewal by the streams' grace, as the lease does.
pub(super) fn renew_for_streams(
    policies: &mut BTreeMap<String, Arc<Policy>>,
    streams: &StreamSettings,
) {
    for policy in policies.values_mut() {
        let policy = Arc::make_mut(policy);
        if policy.renewal_interval_seconds == 0 {
            policy.renewal_interval_seconds = streams.renewal_interval.as_secs();
        }
        policy.renewal_grace_seconds = streams.grace.as_secs();
    }
}
