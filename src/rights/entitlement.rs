//! May this user play this content with this DRM, and under which license policy?
//!
//! In order: the catalog's `free` flag; the token's entitlement claim (content ids, glob
//! patterns, `tier:NAME`); then, when configured, the platform's entitlement service, whose
//! answers are cached and whose silence refuses (or allows, if configured to fail open).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{EntitlementServiceSettings, EntitlementSettings};
use crate::http::problem::{Problem, Refusal};
use crate::policy::Policy;
use crate::rights::auth::Identity;
use crate::rights::catalog::Content;

/// Permission to play, with the policy the license must carry.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    pub(crate) policy_name: String,
    pub(crate) policy: Arc<Policy>,
    /// Which rule granted it, for the log line.
    pub(crate) basis: &'static str,
    /// The entitlement service's device limit for this user, if it gave one.
    pub(crate) max_devices: Option<u32>,
    /// The entitlement service's concurrent stream limit for this user, if it gave one.
    pub(crate) max_streams: Option<u32>,
}

pub(crate) struct Entitlements {
    claim: String,
    default_policy: (String, Arc<Policy>),
    policies: BTreeMap<String, Arc<Policy>>,
    service: Option<Service>,
}

struct Service {
    settings: EntitlementServiceSettings,
    client: reqwest::Client,
    answers: Cache<(String, String, String), Answer>,
}

#[derive(Debug, Clone)]
struct Answer {
    allow: bool,
    policy: Option<String>,
    max_devices: Option<u32>,
    max_streams: Option<u32>,
    ttl: Duration,
}

struct AnswerExpiry;

impl moka::Expiry<(String, String, String), Answer> for AnswerExpiry {
    fn expire_after_create(
        &self,
        _key: &(String, String, String),
        answer: &Answer,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(answer.ttl)
    }
}

#[derive(Serialize)]
struct ServiceRequest<'a> {
    user: &'a str,
    content: &'a str,
    drm: &'a str,
    client_ip: Option<String>,
}

#[derive(Deserialize)]
struct ServiceAnswer {
    allow: bool,
    policy: Option<String>,
    max_devices: Option<u32>,
    max_streams: Option<u32>,
}

impl Entitlements {
    pub(crate) fn new(
        settings: &EntitlementSettings,
        policies: &BTreeMap<String, Arc<Policy>>,
    ) -> Self {
        let default_policy = (
            settings.default_policy.clone(),
            policies[&settings.default_policy].clone(),
        );
        let service = settings.service.as_ref().map(|service| Service {
            client: reqwest::Client::builder()
                .timeout(service.timeout)
                .pool_idle_timeout(Duration::from_secs(60))
                .build()
                .expect("a client with a timeout builds"),
            answers: Cache::builder()
                .max_capacity(service.cache_entries)
                .expire_after(AnswerExpiry)
                .build(),
            settings: service.clone(),
        });
        Self {
            claim: settings.claim.clone(),
            default_policy,
            policies: policies.clone(),
            service,
        }
    }

    /// Decides for an authenticated user; `None` when authentication is off, in which case
    /// licensegate trusts whatever sits in front of it and only applies the content's policy.
    pub(crate) async fn entitle(
        &self,
        identity: Option<&Identity>,
        content: &Content,
        drm: &str,
        client_ip: Option<IpAddr>,
    ) -> Result<Grant, Problem> {
        let content_policy = content
            .policy
            .clone()
            .unwrap_or_else(|| self.default_policy.clone());
        let grant = |basis| Grant {
            policy_name: content_policy.0.clone(),
            policy: content_policy.1.clone(),
            basis,
            max_devices: None,
            max_streams: None,
        };
        if content.free {
            return Ok(grant("free"));
        }
        let Some(identity) = identity else {
            return Ok(grant("unauthenticated"));
        };
        if claim_grants(identity.claims.get(&self.claim), content) {
            return Ok(grant("token"));
        }
        let Some(service) = &self.service else {
            return Err(not_entitled());
        };
        match service
            .ask(&identity.user, &content.id, drm, client_ip)
            .await
        {
            Ok(answer) if answer.allow => {
                let Some(name) = answer.policy else {
                    return Ok(Grant {
                        max_devices: answer.max_devices,
                        max_streams: answer.max_streams,
                        ..grant("service")
                    });
                };
                match self.policies.get(&name) {
                    Some(policy) => Ok(Grant {
                        policy_name: name,
                        policy: policy.clone(),
                        basis: "service",
                        max_devices: answer.max_devices,
                        max_streams: answer.max_streams,
                    }),
                    None => Err(Problem::new(Refusal::EntitlementInvalid)
                        .with_detail(format!("unknown policy '{name}'"))),
                }
            }
            Ok(_) => Err(not_entitled()),
            Err(reason) if service.settings.fail_open => {
                tracing::warn!(%reason, "entitlement service unavailable; failing open");
                Ok(grant("fail_open"))
            }
            Err(reason) => Err(Problem::new(Refusal::EntitlementUnavailable).with_detail(reason)),
        }
    }
}

fn not_entitled() -> Problem {
    Problem::new(Refusal::NotEntitled)
}

/// The claim is a list (or one string) of content ids, glob patterns and `tier:NAME`s.
fn claim_grants(claim: Option<&Value>, content: &Content) -> bool {
    let grants = |entry: &str| match entry.strip_prefix("tier:") {
        Some(tier) => content.tiers.iter().any(|t| t == tier),
        // Most entries are plain content ids; only patterns pay for compiling a glob.
        None if entry.contains(['*', '?', '[']) => {
            glob::Pattern::new(entry).is_ok_and(|pattern| pattern.matches(&content.id))
        }
        None => entry == content.id,
    };
    match claim {
        Some(Value::String(entry)) => grants(entry),
        Some(Value::Array(entries)) => entries.iter().filter_map(Value::as_str).any(grants),
        _ => false,
    }
}

impl Service {
    async fn ask(
        &self,
        user: &str,
        content: &str,
        drm: &str,
        client_ip: Option<IpAddr>,
    ) -> Result<Answer, String> {
        let key = (user.to_string(), content.to_string(), drm.to_string());
        // One call per key however many requests wait for it; errors are not cached.
        self.answers
            .try_get_with(key, self.call(user, content, drm, client_ip))
            .await
            .map_err(|e: Arc<String>| e.to_string())
    }

    async fn call(
        &self,
        user: &str,
        content: &str,
        drm: &str,
        client_ip: Option<IpAddr>,
    ) -> Result<Answer, String> {
        let request = ServiceRequest {
            user,
            content,
            drm,
            client_ip: client_ip.map(|ip| ip.to_string()),
        };
        let response = tokio::time::timeout(
            self.settings.timeout,
            self.client
                .post(self.settings.url.clone())
                .json(&request)
                .send(),
        )
        .await
        .map_err(|_| format!("no answer within {} ms", self.settings.timeout.as_millis()))?
        .map_err(|e| format!("request failed: {}", e.without_url()))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let ttl = max_age(response.headers()).unwrap_or(self.settings.cache_ttl);
        if let Some(length) = response.content_length()
            && length > MAX_ANSWER_BYTES as u64
        {
            return Err(format!(
                "answer of {length} bytes exceeds {MAX_ANSWER_BYTES}"
            ));
        }
        let body = tokio::time::timeout(self.settings.timeout, read_bounded(response))
            .await
            .map_err(|_| "answer body timed out".to_string())??;
        let answer: ServiceAnswer = serde_json::from_slice(&body)
            .map_err(|e| format!("answer is not JSON {{allow, policy}}: {e}"))?;
        Ok(Answer {
            allow: answer.allow,
            policy: answer.policy,
            max_devices: answer.max_devices,
            max_streams: answer.max_streams,
            ttl,
        })
    }
}

/// An answer is a few fields of JSON: anything far larger is not one, and is not read further.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("answer body failed: {}", e.without_url()))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!("answer exceeds {MAX_ANSWER_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `Cache-Control: max-age=N` (or `no-store`/`no-cache` as zero).
fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(http::header::CACHE_CONTROL)?.to_str().ok()?;
    value.split(',').map(str::trim).find_map(|directive| {
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache")
        {
            return Some(Duration::ZERO);
        }
        let (name, seconds) = directive.split_once('=')?;
        name.eq_ignore_ascii_case("max-age")
            .then(|| seconds.parse().ok().map(Duration::from_secs))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn content(id: &str, tiers: &[&str]) -> Content {
        Content {
            id: id.into(),
            key_ids: Vec::new(),
            keys: Default::default(),
            policy: None,
            providers: Vec::new(),
            free: false,
            tiers: tiers.iter().map(|t| t.to_string()).collect(),
            hls: None,
            fairplay_iv: None,
            territories: None,
        }
    }

    #[test]
    fn claims_grant_by_id_glob_and_tier() {
        let movie = content("series-12/ep-3", &["gold"]);
        assert!(claim_grants(Some(&json!(["series-12/ep-3"])), &movie));
        assert!(claim_grants(Some(&json!(["other", "series-12/*"])), &movie));
        assert!(claim_grants(Some(&json!("tier:gold")), &movie));
        assert!(!claim_grants(
            Some(&json!(["tier:silver", "series-13/*"])),
            &movie
        ));
        assert!(!claim_grants(Some(&json!(42)), &movie));
        assert!(!claim_grants(None, &movie));
    }

    #[test]
    fn max_age_from_cache_control() {
        let mut headers = http::HeaderMap::new();
        headers.insert("Cache-Control", "private, max-age=120".parse().unwrap());
        assert_eq!(max_age(&headers), Some(Duration::from_secs(120)));
        headers.insert("Cache-Control", "no-store".parse().unwrap());
        assert_eq!(max_age(&headers), Some(Duration::ZERO));
        headers.insert("Cache-Control", "public".parse().unwrap());
        assert_eq!(max_age(&headers), None);
    }
}
