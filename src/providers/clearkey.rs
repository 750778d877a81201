//! The built-in W3C ClearKey license server: keys from the catalog, only for key IDs of the
//! content the user is entitled to (the pipeline has checked both before this runs).

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::HeaderMap;
use serde::Serialize;

use super::{Authorization, LicenseRequest, LocalLicense, Minting, Provider};
use crate::challenge::ChallengeInfo;
use crate::http::problem::{Problem, Refusal};
use crate::policy::Policy;
use crate::rights::catalog::Content;

pub(crate) struct ClearKey;

#[async_trait]
impl Provider for ClearKey {
    fn minting(&self) -> Minting {
        Minting::Nothing
    }

    async fn authorize(&self, _request: &LicenseRequest) -> Result<Authorization, Problem> {
        Ok(Authorization::default())
    }

    fn answer_locally(
        &self,
        request: &LicenseRequest,
        challenge: &ChallengeInfo,
    ) -> Option<Result<LocalLicense, Problem>> {
        // A catalog entry may name this provider for content also packaged for other DRMs.
        if request.drm != crate::drm::Drm::ClearKey {
            return Some(Err(Problem::drm_not_routed(request.drm.as_str())));
        }
        let license = license(
            challenge,
            &request.content,
            &request.policy_name,
            &request.policy,
        )
        .map(|body| LocalLicense {
            content_type: "application/json",
            body,
        });
        Some(license)
    }

    fn refusal_reason(&self, _headers: &HeaderMap) -> Option<String> {
        None
    }
}

#[derive(Serialize)]
struct KeySet<'a> {
    keys: Vec<Key>,
    #[serde(rename = "type")]
    session_type: &'a str,
}

#[derive(Serialize)]
struct Key {
    kty: &'static str,
    kid: String,
    k: String,
}

/// The JSON key set answering `challenge`.
pub(crate) fn license(
    challenge: &ChallengeInfo,
    content: &Content,
    policy_name: &str,
    policy: &Policy,
) -> Result<Bytes, Problem> {
    if challenge.persistent && !policy.persistent {
        return Err(
            Problem::new(Refusal::PersistenceNotAllowed).with_detail(format!(
                "policy '{}' does not allow persistent licenses",
                policy_name
            )),
        );
    }
    if challenge.key_ids.is_empty() {
        return Err(Problem::new(Refusal::ChallengeMalformed)
            .with_detail("the ClearKey request names no key ID"));
    }
    let mut keys = Vec::with_capacity(challenge.key_ids.len());
    for kid in &challenge.key_ids {
        let Some(key) = content.keys.get(kid) else {
            return Err(Problem::new(Refusal::KeyNotFound).with_detail(format!(
                "the catalog holds no key for {kid} of '{}'",
                content.id
            )));
        };
        keys.push(Key {
            kty: "oct",
            kid: URL_SAFE_NO_PAD.encode(kid.0),
            k: URL_SAFE_NO_PAD.encode(key),
        });
    }
    let set = KeySet {
        keys,
        session_type: if challenge.persistent {
            "persistent-license"
        } else {
            "temporary"
        },
    };
    serde_json::to_vec(&set)
        .map(Bytes::from)
        .map_err(|_| Problem::internal())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::challenge::Kid;
    use crate::policy::Hdcp;

    fn demo() -> (Content, Kid) {
        let kid: Kid = "01020304-0506-0708-090a-0b0c0d0e0f10".parse().unwrap();
        let key: [u8; 16] = hex::decode("00112233445566778899aabbccddeeff")
            .unwrap()
            .try_into()
            .unwrap();
        let content = Content {
            id: "demo".into(),
            key_ids: vec![kid],
            keys: [(kid, key)].into_iter().collect(),
            policy: None,
            providers: Vec::new(),
            free: true,
            tiers: Vec::new(),
            hls: None,
            fairplay_iv: None,
            territories: None,
        };
        (content, kid)
    }

    fn policy(persistent: bool) -> Policy {
        Policy {
            security_level: 1,
            hdcp: Hdcp::None,
            license_duration_seconds: 0,
            persistent,
            renewal_interval_seconds: 0,
            renewal_grace_seconds: 0,
        }
    }

    #[test]
    fn answers_the_w3c_key_set_in_unpadded_base64url() {
        let (content, kid) = demo();
        let challenge = ChallengeInfo {
            key_ids: vec![kid],
            ..Default::default()
        };
        let body = license(&challenge, &content, "p", &policy(false)).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"keys":[{"kty":"oct","kid":"AQIDBAUGBwgJCgsMDQ4PEA","k":"ABEiM0RVZneImaq7zN3u_w"}],"type":"temporary"})
        );
    }

    #[test]
    fn persistence_follows_the_policy() {
        let (content, kid) = demo();
        let challenge = ChallengeInfo {
            key_ids: vec![kid],
            persistent: true,
            ..Default::default()
        };
        assert_eq!(
            license(&challenge, &content, "p", &policy(false))
                .unwrap_err()
                .code,
            "persistence_not_allowed"
        );
        let body = license(&challenge, &content, "p", &policy(true)).unwrap();
        assert!(String::from_utf8_lossy(&body).contains("\"type\":\"persistent-license\""));
    }
}
