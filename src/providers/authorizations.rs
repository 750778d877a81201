//! Provider authorizations kept for reuse: one per provider, user, content, DRM and policy, until
//! a safety margin before the provider stops accepting it. Concurrent requests for the same key
//! wait for one mint rather than each minting their own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use moka::Expiry;
use moka::future::Cache;
use prometheus::{HistogramVec, IntCounterVec};

use super::{Authorization, LicenseRequest, Minting, Provider};
use crate::config::AuthorizationCacheSettings;
use crate::drm::Drm;
use crate::http::problem::Problem;
use crate::telemetry::metrics::Metrics;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    provider: String,
    user: Option<String>,
    content: String,
    drm: Drm,
    policy: String,
}

pub struct AuthorizationCache {
    cache: Cache<TokenKey, Arc<Authorization>>,
    nothing: Arc<Authorization>,
    results: IntCounterVec,
    mint_duration: HistogramVec,
}

/// An entry lives until `safety_margin` (at most half its lifetime) before its authorization
/// expires.
struct UntilExpiry {
    safety_margin: Duration,
}

impl Expiry<TokenKey, Arc<Authorization>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenKey,
        value: &Arc<Authorization>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let expires_at = value.expires_at?;
        let left = expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        // A short-lived authorization keeps at least half its life in the cache.
        Some(left - self.safety_margin.min(left / 2))
    }
}

impl AuthorizationCache {
    pub fn new(settings: &AuthorizationCacheSettings, metrics: &Metrics) -> Self {
        // Every entry weighs at least its share of the byte budget, so the byte bound also
        // bounds the number of entries.
        let least_weight = (settings.max_bytes / settings.max_entries).min(u64::from(u32::MAX));
        let cache = Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(move |_key, value: &Arc<Authorization>| {
                let weight = (value.weight() as u64).max(least_weight);
                u32::try_from(weight).unwrap_or(u32::MAX)
            })
            .expire_after(UntilExpiry {
                safety_margin: settings.safety_margin,
            })
            .build();
        Self {
            cache,
            nothing: Arc::new(Authorization::default()),
            results: metrics.authorization_cache.clone(),
            mint_duration: metrics.token_mint_duration.clone(),
        }
    }

    /// The authorization for `request` with `provider` named `name`: reused while valid, or
    /// minted; single-use authorizations are minted afresh on every call.
    pub async fn authorization(
        &self,
        name: &str,
        provider: &dyn Provider,
        request: &LicenseRequest,
    ) -> Result<Arc<Authorization>, Problem> {
        match provider.minting() {
            Minting::Nothing => Ok(self.nothing.clone()),
            Minting::PerAttempt => {
                let minted = self.mint(name, provider, request).await;
                self.count(
                    name,
                    if minted.is_ok() {
                        "single_use"
                    } else {
                        "error"
                    },
                );
                minted
            }
            Minting::Reusable => {
                let key = TokenKey {
                    provider: name.to_string(),
                    user: request.user.clone(),
                    content: request.content.id.clone(),
                    drm: request.drm,
                    policy: request.policy_name.clone(),
                };
                let minted_here = AtomicBool::new(false);
                let found = self
                    .cache
                    .try_get_with(key, async {
                        minted_here.store(true, Ordering::Relaxed);
                        self.mint(name, provider, request).await
                    })
                    .await;
                let result = match (&found, minted_here.load(Ordering::Relaxed)) {
                    (Err(_), _) => "error",
                    (Ok(_), true) => "miss",
                    (Ok(_), false) => "hit",
                };
                self.count(name, result);
                found.map_err(|problem| (*problem).clone())
            }
        }
    }

    async fn mint(
        &self,
        name: &str,
        provider: &dyn Provider,
        request: &LicenseRequest,
    ) -> Result<Arc<Authorization>, Problem> {
        let started = Instant::now();
        let minted = provider.authorize(request).await;
        self.mint_duration
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        minted.map(Arc::new)
    }

    fn count(&self, provider: &str, result: &str) {
        self.results.with_label_values(&[provider, result]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Hdcp, Policy};
    use crate::rights::catalog::Content;
    use async_trait::async_trait;
    use http::HeaderMap;
    use std::sync::atomic::AtomicUsize;

    struct Counting {
        minting: Minting,
        mints: AtomicUsize,
        lifetime: Duration,
    }

    #[async_trait]
    impl Provider for Counting {
        fn minting(&self) -> Minting {
            self.minting
        }

        async fn authorize(&self, _request: &LicenseRequest) -> Result<Authorization, Problem> {
            let n = self.mints.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            if n == 100 {
                return Err(Problem::upstream_unavailable("down"));
            }
            Ok(Authorization {
                path_and_query: Some(format!("/token/{n}")),
                expires_at: Some(SystemTime::now() + self.lifetime),
                ..Authorization::default()
            })
        }

        fn refusal_reason(&self, _headers: &HeaderMap) -> Option<String> {
            None
        }
    }

    fn request(user: &str, content: &str) -> LicenseRequest {
        LicenseRequest {
            request_id: "r".into(),
            user: Some(user.into()),
            content: Arc::new(Content {
                id: content.into(),
                key_ids: vec![],
                keys: Default::default(),
                policy: None,
                providers: Vec::new(),
                free: true,
                tiers: vec![],
                hls: None,
                fairplay_iv: None,
                territories: None,
            }),
            drm: Drm::Widevine,
            key_ids: vec![],
            policy_name: "p".into(),
            policy: Arc::new(Policy {
                security_level: 1,
                hdcp: Hdcp::None,
                license_duration_seconds: 0,
                persistent: false,
                renewal_interval_seconds: 0,
                renewal_grace_seconds: 0,
            }),
            client_ip: None,
        }
    }

    fn cache(margin: Duration) -> AuthorizationCache {
        AuthorizationCache::new(
            &AuthorizationCacheSettings {
                max_entries: 1000,
                max_bytes: 1 << 20,
                safety_margin: margin,
            },
            &Metrics::new(),
        )
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_mint_per_key() {
        let cache = Arc::new(cache(Duration::ZERO));
        let provider = Arc::new(Counting {
            minting: Minting::Reusable,
            mints: AtomicUsize::new(0),
            lifetime: Duration::from_secs(3600),
        });
        let mut tasks = Vec::new();
        for i in 0..64 {
            let (cache, provider) = (cache.clone(), provider.clone());
            let user = if i % 2 == 0 { "ann" } else { "bob" };
            tasks.push(tokio::spawn(async move {
                cache
                    .authorization("v", provider.as_ref(), &request(user, "movie"))
                    .await
                    .unwrap()
                    .path_and_query
                    .clone()
            }));
        }
        let mut seen = std::collections::HashSet::new();
        for task in tasks {
            seen.insert(task.await.unwrap());
        }
        assert_eq!(provider.mints.load(Ordering::SeqCst), 2);
        assert_eq!(seen.len(), 2);
    }

    #[tokio::test]
    async fn an_authorization_leaves_the_margin_before_expiry() {
        let cache = cache(Duration::from_millis(900));
        let provider = Counting {
            minting: Minting::Reusable,
            mints: AtomicUsize::new(0),
            lifetime: Duration::from_secs(1),
        };
        let request = request("ann", "movie");
        cache.authorization("v", &provider, &request).await.unwrap();
        cache.authorization("v", &provider, &request).await.unwrap();
        assert_eq!(provider.mints.load(Ordering::SeqCst), 1);
        // A 1 s authorization keeps half its life in the cache despite the 900 ms margin.
        tokio::time::sleep(Duration::from_millis(600)).await;
        cache.authorization("v", &provider, &request).await.unwrap();
        assert_eq!(provider.mints.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn single_use_authorizations_are_never_reused() {
        let cache = cache(Duration::ZERO);
        let provider = Counting {
            minting: Minting::PerAttempt,
            mints: AtomicUsize::new(0),
            lifetime: Duration::from_secs(3600),
        };
        let request = request("ann", "movie");
        let first = cache.authorization("v", &provider, &request).await.unwrap();
        let second = cache.authorization("v", &provider, &request).await.unwrap();
        assert_ne!(first.path_and_query, second.path_and_query);
    }
}
