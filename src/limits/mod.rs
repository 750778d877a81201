//! How fast and how much: token buckets per client address and per user (in-process with
//! `governor`, or fleet-wide in Redis), a quota of licenses per user per period, and users
//! blocked through the admin API. Renewals of live streams pass every limit: a playing stream is
//! never rate limited out.

pub(crate) mod devices;
pub(crate) mod streams;

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota as GovernorQuota};
use prometheus::{HistogramVec, IntCounterVec};
use serde_json::Value;

use crate::clock::now_seconds;
use crate::config::{Bucket, QuotaSettings, RateLimitSettings};
use crate::drm::Drm;
use crate::http::problem::{Problem, Refusal};
use crate::store::{QuotaDecision, Shared, StoreError};
use crate::telemetry::metrics::Metrics;

/// One configured bucket, counted in this process or in Redis.
struct Limiter {
    bucket: Bucket,
    /// The key prefix in Redis: which limit and which route.
    name: String,
    local: DefaultKeyedRateLimiter<String>,
}

impl Limiter {
    fn new(name: String, bucket: Bucket) -> Self {
        let quota = GovernorQuota::with_period(Duration::from_secs_f64(1.0 / bucket.per_second))
            .unwrap_or_else(|| GovernorQuota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(bucket.burst).unwrap_or(NonZeroU32::MIN));
        Self {
            bucket,
            name,
            local: DefaultKeyedRateLimiter::keyed(quota),
        }
    }
}

/// Request rate limits, by scope (client address, user) and route.
pub(crate) struct RateLimits {
    shared: Option<Arc<Shared>>,
    ipv6_prefix: u8,
    per_client: HashMap<Option<Drm>, Limiter>,
    per_user: HashMap<Option<Drm>, Limiter>,
    decisions: IntCounterVec,
}

/// The bucket of a client address: an IPv4 address's own, an IPv6 address's network of
/// `ipv6_prefix` bits (a subscriber's /64 holds more addresses than any bucket map could).
fn client_key(ip: IpAddr, ipv6_prefix: u8) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let bits = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            let network = std::net::Ipv6Addr::from(u128::from(v6) & mask);
            format!("{network}/{bits}")
        }
    }
}

pub(crate) enum Scope<'a> {
    Client(IpAddr),
    User(&'a str),
}

impl RateLimits {
    pub(crate) fn new(
        settings: &RateLimitSettings,
        store: Option<Arc<Shared>>,
        metrics: &Metrics,
    ) -> Self {
        let mut per_client = HashMap::new();
        let mut per_user = HashMap::new();
        let mut add = |drm: Option<Drm>, client: Option<Bucket>, user: Option<Bucket>| {
            let route = drm.map_or("all", Drm::as_str);
            if let Some(bucket) = client {
                per_client.insert(drm, Limiter::new(format!("client:{route}"), bucket));
            }
            if let Some(bucket) = user {
                per_user.insert(drm, Limiter::new(format!("user:{route}"), bucket));
            }
        };
        add(None, settings.per_client, settings.per_user);
        for (drm, route) in &settings.routes {
            add(Some(*drm), route.per_client, route.per_user);
        }
        Self {
            shared: store.filter(|_| settings.shared),
            ipv6_prefix: settings.ipv6_prefix,
            per_client,
            per_user,
            decisions: metrics.rate_limit_decisions.clone(),
        }
    }

    /// Takes a token for one request of `scope` on `drm`'s route; a route's own limit replaces
    /// the general one.
    pub(crate) async fn take(&self, scope: Scope<'_>, drm: Drm) -> Result<(), Problem> {
        let (limiters, label) = match scope {
            Scope::Client(_) => (&self.per_client, "client"),
            Scope::User(_) => (&self.per_user, "user"),
        };
        let Some(limiter) = limiters.get(&Some(drm)).or_else(|| limiters.get(&None)) else {
            return Ok(());
        };
        let key = match scope {
            Scope::Client(ip) => client_key(ip, self.ipv6_prefix),
            Scope::User(user) => user.to_string(),
        };
        let wait = match &self.shared {
            Some(shared) => {
                let redis = shared.redis.as_ref().ok_or_else(Problem::internal)?;
                let interval = Duration::from_secs_f64(1.0 / limiter.bucket.per_second);
                let bucket = format!("{}:{key}", limiter.name);
                match shared
                    .timed(redis.take_token(&bucket, interval, limiter.bucket.burst))
                    .await
                {
                    Ok(wait) => wait,
                    Err(e) => {
                        // A rate limit guards the vendor bill, not the player's right: with the
                        // counter unreachable, requests pass (and the store's own limits decide).
                        tracing::warn!(error = %e, "rate limit store unavailable; allowing");
                        self.count(label, "store_down_allowed");
                        return Ok(());
                    }
                }
            }
            None => limiter
                .local
                .check_key(&key)
                .err()
                .map(|not_until| not_until.wait_time_from(DefaultClock::default().now())),
        };
        match wait {
            None => {
                self.count(label, "allowed");
                Ok(())
            }
            Some(wait) => {
                self.count(label, "refused");
                let seconds = wait.as_secs_f64().ceil() as u64;
                Err(Problem::new(Refusal::RateLimited)
                    .with_detail(format!(
                        "more than {} license requests per second (burst {}) from this {label}",
                        limiter.bucket.per_second, limiter.bucket.burst
                    ))
                    .with_extension("limit", label.into())
                    .with_retry_after(seconds))
            }
        }
    }

    /// A renewal of a live stream, let through without taking a token.
    pub(crate) fn exempt(&self) {
        self.count("any", "renewal_exempt");
    }

    /// In-process buckets held: per client address, per user.
    pub(crate) fn buckets(&self) -> (usize, usize) {
        let held = |limiters: &HashMap<Option<Drm>, Limiter>| {
            limiters.values().map(|limiter| limiter.local.len()).sum()
        };
        (held(&self.per_client), held(&self.per_user))
    }

    /// Drops buckets that have refilled, so that memory follows the active clients.
    pub(crate) fn forget_idle(&self) {
        for limiter in self.per_client.values().chain(self.per_user.values()) {
            limiter.local.retain_recent();
            limiter.local.shrink_to_fit();
        }
    }

    fn count(&self, limit: &str, decision: &str) {
        self.decisions.with_label_values(&[limit, decision]).inc();
    }
}

/// A license counted against a quota, given back if the request gets none.
#[derive(Debug, Clone)]
pub(crate) struct QuotaTaken {
    pub(crate) user: String,
    pub(crate) window: u64,
}

pub(crate) struct Quotas {
    pub(crate) settings: QuotaSettings,
    store: Arc<Shared>,
    decisions: IntCounterVec,
    duration: HistogramVec,
}

impl Quotas {
    pub(crate) fn new(settings: QuotaSettings, store: Arc<Shared>, metrics: &Metrics) -> Self {
        Self {
            settings,
            store,
            decisions: metrics.rate_limit_decisions.clone(),
            duration: metrics.stream_store_duration.clone(),
        }
    }

    fn limit_for(&self, claims: &serde_json::Map<String, Value>) -> u64 {
        crate::rights::auth::claimed_limit(
            Some(claims),
            &self.settings.claim,
            None,
            self.settings.licenses_per_user,
        )
    }

    /// Counts one license for `user`; a renewal of a live stream is counted while there is
    /// quota left and passes when there is none.
    pub(crate) async fn take(
        &self,
        user: &str,
        claims: &serde_json::Map<String, Value>,
        live_renewal: bool,
    ) -> Result<Option<QuotaTaken>, Problem> {
        let limit = self.limit_for(claims);
        let period = self.settings.period.as_secs();
        let started = Instant::now();
        let decided = self
            .store
            .timed(
                self.store
                    .store
                    .take_quota(user, limit, period, now_seconds()),
            )
            .await;
        self.duration
            .with_label_values(&["take_quota"])
            .observe(started.elapsed().as_secs_f64());
        match decided {
            Ok(QuotaDecision::Taken { window }) => {
                self.count("allowed");
                Ok(Some(QuotaTaken {
                    user: user.to_string(),
                    window,
                }))
            }
            Ok(QuotaDecision::Exhausted { .. }) if live_renewal => {
                self.count("renewal_exempt");
                Ok(None)
            }
            Ok(QuotaDecision::Exhausted { resets_at }) => {
                self.count("refused");
                let resets =
                    crate::clock::rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(resets_at));
                Err(Problem::new(Refusal::QuotaExceeded)
                    .with_detail(format!(
                        "{limit} licenses per {period} s used up; the quota resets at {resets}"
                    ))
                    .with_extension("license_quota", limit.into())
                    .with_extension("quota_resets_at", resets.into())
                    .with_retry_after(resets_at.saturating_sub(now_seconds())))
            }
            Err(e) => self.store_down(e),
        }
    }

    fn store_down(&self, e: StoreError) -> Result<Option<QuotaTaken>, Problem> {
        tracing::error!(error = %e, "quota store unavailable");
        if self.settings.fail_open {
            self.count("store_down_allowed");
            return Ok(None);
        }
        self.count("store_down_refused");
        Err(Problem::new(Refusal::StreamStoreUnavailable)
            .with_detail("the license quota cannot be checked right now"))
    }

    pub(crate) async fn refund(&self, taken: &QuotaTaken) {
        let period = self.settings.period.as_secs();
        if let Err(e) = self
            .store
            .timed(
                self.store
                    .store
                    .refund_quota(&taken.user, taken.window, period),
            )
            .await
        {
            tracing::warn!(error = %e, "quota not refunded");
        }
    }

    fn count(&self, decision: &str) {
        self.decisions.with_label_values(&["quota", decision]).inc();
    }
}

/// Users blocked through the admin API, looked up in the store and remembered briefly.
pub(crate) struct Blocks {
    store: Arc<Shared>,
    recent: moka::future::Cache<String, Option<Option<u64>>>,
    decisions: IntCounterVec,
}

impl Blocks {
    pub(crate) fn new(store: Arc<Shared>, remember: Duration, metrics: &Metrics) -> Self {
        Self {
            store,
            recent: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(remember.max(Duration::from_millis(1)))
                .build(),
            decisions: metrics.rate_limit_decisions.clone(),
        }
    }

    /// Refuses a blocked user. A store that cannot answer lets the request pass: the limits
    /// that need the store decide for themselves (`fail_open`), and a block list outage must not
    /// stop every playback at its next renewal.
    pub(crate) async fn check(&self, user: &str) -> Result<(), Problem> {
        let store = &self.store;
        let looked_up = self
            .recent
            .try_get_with_by_ref(user, async {
                store.timed(store.store.blocked(user, now_seconds())).await
            })
            .await;
        match looked_up {
            Ok(None) => Ok(()),
            Ok(Some(until)) => {
                self.decisions
                    .with_label_values(&["blocked", "refused"])
                    .inc();
                let mut problem = Problem::new(Refusal::UserBlocked);
                if let Some(until) = until {
                    let until =
                        crate::clock::rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(until));
                    problem = problem
                        .with_detail(format!("blocked until {until}"))
                        .with_extension("blocked_until", until.into());
                }
                Err(problem)
            }
            Err(e) => {
                tracing::error!(error = %e, "block list unavailable; allowing");
                self.decisions
                    .with_label_values(&["blocked", "store_down_allowed"])
                    .inc();
                Ok(())
            }
        }
    }

    pub(crate) async fn block(&self, user: &str, until: Option<u64>) -> Result<(), StoreError> {
        let result = self
            .store
            .timed(self.store.store.block_user(user, until, now_seconds()))
            .await;
        self.recent.invalidate(user).await;
        result
    }

    pub(crate) async fn unblock(&self, user: &str) -> Result<bool, StoreError> {
        let result = self.store.timed(self.store.store.unblock_user(user)).await;
        self.recent.invalidate(user).await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_share_their_networks_bucket_and_ipv4_clients_have_their_own() {
        let key = |ip: &str, prefix| client_key(ip.parse().unwrap(), prefix);
        assert_eq!(key("2001:db8:1:2:aaaa::1", 64), "2001:db8:1:2::/64");
        assert_eq!(
            key("2001:db8:1:2:aaaa::1", 64),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff", 64)
        );
        assert_ne!(key("2001:db8:1:2::1", 64), key("2001:db8:1:3::1", 64));
        assert_eq!(key("2001:db8:1:2::1", 48), key("2001:db8:1:3::1", 48));
        assert_eq!(key("2001:db8::7", 128), "2001:db8::7/128");
        assert_eq!(key("203.0.113.7", 64), "203.0.113.7");
    }
}
