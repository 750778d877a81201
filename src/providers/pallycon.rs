//! PallyCon (DoveRunner): a license token in header `pallycon-customdata-v2`, carrying the
//! policy encrypted with the site key and a hash keyed with the access key. PallyCon accepts a
//! token for a validity its console sets (600 s after its timestamp unless changed); one is
//! reused for at most half of it, so clocks apart and a token taken late still pass.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockEncryptMut, KeyIvInit};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderName};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{
    AnswerRefusal, Authorization, CertificateEncoding, CertificateSource, FairPlayWire,
    LicenseRequest, Minting, Provider,
};
use crate::config::{ConfigError, ProviderConfig};
use crate::drm::Drm;
use crate::http::problem::Problem;
use crate::policy::{Hdcp, Policy};
use licensegate_drm::fairplay::{CkcFormat, CkcSource, SpcFormat};

pub(crate) const TOKEN_HEADER: HeaderName = HeaderName::from_static("pallycon-customdata-v2");
/// How long PallyCon accepts a token after its timestamp unless its console says otherwise.
const DEFAULT_TOKEN_VALIDITY_SECONDS: u64 = 600;
/// A day: longer than any validity a console offers, and a token reused that long is a leak.
const MAX_TOKEN_VALIDITY_SECONDS: u64 = 24 * 3600;
/// PallyCon's fixed initialisation vector for policy encryption.
pub(crate) const POLICY_IV: &[u8; 16] = b"0123456789abcdef";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    site_id: String,
    /// 32 characters, used as the AES-256 key as they are.
    site_key: String,
    access_key: String,
    /// The token validity set in PallyCon's console for the site.
    #[serde(default = "default_token_validity_seconds")]
    token_validity_seconds: u64,
}

fn default_token_validity_seconds() -> u64 {
    DEFAULT_TOKEN_VALIDITY_SECONDS
}

pub(crate) struct PallyCon {
    config: Arc<ProviderConfig>,
    site_id: String,
    site_key: [u8; 32],
    access_key: String,
    /// How long a token is reused: half its validity, less the second its timestamp drops.
    reuse_for: Duration,
}

impl PallyCon {
    pub(crate) fn new(config: Arc<ProviderConfig>) -> Result<Self, ConfigError> {
        let settings: Settings = super::settings(&config)?;
        let key = |field: &str| format!("providers.{}.settings.{field}", config.name);
        let site_key: [u8; 32] = settings.site_key.as_bytes().try_into().map_err(|_| {
            ConfigError::new(key("site_key"), "a PallyCon site key is 32 characters")
        })?;
        if settings.site_id.is_empty() {
            return Err(ConfigError::new(key("site_id"), "is empty"));
        }
        if settings.access_key.is_empty() {
            return Err(ConfigError::new(key("access_key"), "is empty"));
        }
        if !(2..=MAX_TOKEN_VALIDITY_SECONDS).contains(&settings.token_validity_seconds) {
            return Err(ConfigError::new(
                key("token_validity_seconds"),
                format!("must be between 2 and {MAX_TOKEN_VALIDITY_SECONDS}"),
            ));
        }
        Ok(Self {
            site_id: settings.site_id,
            site_key,
            access_key: settings.access_key,
            // The timestamp counts whole seconds: a token may be up to one older than it
            // says.
            reuse_for: Duration::from_secs(settings.token_validity_seconds - 1) / 2,
            config,
        })
    }

    /// The token for `request` stamped `now`.
    pub(crate) fn token(
        &self,
        request: &LicenseRequest,
        now: SystemTime,
    ) -> Result<String, Problem> {
        let drm_type = match request.drm {
            Drm::Widevine => "Widevine",
            Drm::PlayReady => "PlayReady",
            Drm::FairPlay => "FairPlay",
            Drm::ClearKey => return Err(Problem::drm_not_routed(request.drm.as_str())),
        };
        let policy = encrypt_policy(&self.site_key, &policy_json(&request.policy));
        let timestamp = chrono::DateTime::<chrono::Utc>::from(now)
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let user_id = request.user_or_anonymous();
        let cid = &request.content.id;
        let hash = STANDARD.encode(Sha256::digest(
            [
                self.access_key.as_str(),
                drm_type,
                &self.site_id,
                user_id,
                cid,
                &policy,
                &timestamp,
            ]
            .concat(),
        ));
        let token = json!({
            "drm_type": drm_type,
            "site_id": self.site_id,
            "user_id": user_id,
            "cid": cid,
            "policy": policy,
            "timestamp": timestamp,
            "hash": hash,
            "response_format": "original",
            "key_rotation": false,
        });
        Ok(STANDARD.encode(token.to_string()))
    }
}

/// A licensegate policy as PallyCon's policy JSON (version 2).
fn policy_json(policy: &Policy) -> String {
    let (widevine_hdcp, fairplay_hdcp) = match policy.hdcp {
        Hdcp::None => ("HDCP_NONE", -1),
        Hdcp::V1_4 => ("HDCP_V1", 0),
        Hdcp::V2_2 => ("HDCP_V2_2", 1),
    };
    let playready_level = if policy.security_level >= 3 {
        3000
    } else {
        2000
    };
    let mut playback = json!({
        "persistent": policy.persistent,
        "license_duration": policy.license_seconds(),
    });
    if policy.renews() {
        // Widevine's CDM renews at this interval by itself; PlayReady and FairPlay players are
        // set to the same interval (Shaka `drm.renewalIntervalSec`).
        playback["renewal_duration"] = json!(policy.renewal_interval_seconds);
    }
    json!({
        "policy_version": 2,
        "playback_policy": playback,
        "security_policy": [{
            "track_type": "ALL",
            "widevine": {
                "security_level": policy.security_level,
                "required_hdcp_version": widevine_hdcp,
            },
            "playready": {"security_level": playready_level},
            "fairplay": {"hdcp_enforcement": fairplay_hdcp},
        }],
    })
    .to_string()
}

/// base64(AES-256-CBC(site key, fixed IV, PKCS#7)).
pub(crate) fn encrypt_policy(site_key: &[u8; 32], policy: &str) -> String {
    let cipher = cbc::Encryptor::<aes::Aes256>::new(site_key.into(), POLICY_IV.into());
    STANDARD.encode(cipher.encrypt_padded_vec_mut::<Pkcs7>(policy.as_bytes()))
}

#[async_trait]
impl Provider for PallyCon {
    fn minting(&self) -> Minting {
        Minting::Reusable
    }

    async fn authorize(&self, request: &LicenseRequest) -> Result<Authorization, Problem> {
        let now = SystemTime::now();
        let token = self.token(request, now)?;
        Ok(Authorization {
            headers: vec![(TOKEN_HEADER, super::header_value(&token)?)],
            expires_at: Some(now + self.reuse_for),
            ..Authorization::default()
        })
    }

    fn refusal_reason(&self, headers: &HeaderMap) -> Option<String> {
        super::reason_in(self.config.error_header.as_ref(), headers)
    }

    /// PallyCon's clients post `spc=` with the base64 unescaped; the CKC comes back as base64.
    fn fairplay_wire(&self) -> FairPlayWire {
        FairPlayWire {
            spc: SpcFormat::FormUnescaped,
            ckc: CkcSource::Declared(CkcFormat::Base64),
        }
    }

    fn fairplay_certificate(&self) -> Option<CertificateSource> {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.append_pair("siteId", &self.site_id);
        Some(CertificateSource {
            path_and_query: format!("/ri/fpsKeyManager.do?{}", query.finish()),
            encoding: CertificateEncoding::Base64,
        })
    }

    /// PallyCon answers its refusals with status 200 and `{"errorCode","message"}`.
    fn refuses_in_answers(&self) -> bool {
        true
    }

    fn refusal_in_answer(&self, body: &[u8]) -> Option<AnswerRefusal> {
        refusal_in(body)
    }
}

/// The error object PallyCon sends in place of a license; a license (binary, base64 or a JSON
/// license answer without `errorCode`) is not one.
fn refusal_in(body: &[u8]) -> Option<AnswerRefusal> {
    #[derive(Deserialize)]
    struct ErrorAnswer {
        #[serde(rename = "errorCode")]
        error_code: serde_json::Value,
        message: Option<String>,
    }
    if body.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let answer: ErrorAnswer = serde_json::from_slice(body).ok()?;
    let code = match answer.error_code {
        serde_json::Value::String(code) => code,
        serde_json::Value::Number(code) => code.to_string(),
        _ => return None,
    };
    Some(AnswerRefusal {
        code,
        message: answer.message.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_objects_are_refusals_and_licenses_are_not() {
        let refusal = refusal_in(br#"{"errorCode":"8001","message":"Invalid token"}"#).unwrap();
        assert_eq!(refusal.code, "8001");
        assert_eq!(refusal.message, "Invalid token");
        assert_eq!(refusal_in(br#" {"errorCode":7003}"#).unwrap().code, "7003");
        assert_eq!(refusal_in(b"\x08\x02\x12\x10license"), None);
        assert_eq!(refusal_in(b"AAAAAQ=="), None);
        assert_eq!(refusal_in(br#"{"license":"AAAA"}"#), None);
    }
}
