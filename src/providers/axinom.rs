//! Axinom DRM: an entitlement message, signed HS256 with the communication key's bytes, in
//! request header `X-AxDRM-Message`. In proxy mode Axinom answers with a signed license request
//! info message in the same header, which tells licensegate which device asked.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use http::{HeaderMap, HeaderName};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Authorization, Device, DeviceInfo, LicenseRequest, Minting, Provider};
use crate::config::{ConfigError, ProviderConfig};
use crate::drm::Drm;
use crate::http::problem::Problem;
use crate::policy::{Hdcp, Policy};

pub(crate) const MESSAGE_HEADER: HeaderName = HeaderName::from_static("x-axdrm-message");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    com_key_id: String,
    /// 32 bytes as hex (64 digits) or base64.
    com_key: String,
    #[serde(default = "default_message_version")]
    message_version: u8,
    #[serde(default = "default_token_ttl")]
    token_ttl_seconds: u64,
    #[serde(default)]
    key_source: KeySource,
    /// The key seed Axinom derives keys from, for `inline` and `license_request` sources.
    seed_id: Option<String>,
    #[serde(default = "yes")]
    return_license_request_info: bool,
    /// How far Axinom's clock may run behind ours; `begin_date` is set this far back.
    #[serde(default = "default_clock_skew")]
    clock_skew_seconds: u64,
}

fn default_message_version() -> u8 {
    2
}
fn default_token_ttl() -> u64 {
    3600
}
fn default_clock_skew() -> u64 {
    60
}
fn yes() -> bool {
    true
}

/// Where Axinom takes the content keys from (message version 2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum KeySource {
    /// The content's key IDs, listed in the message; keys from Axinom's key seed.
    #[default]
    Inline,
    /// Keys stored in Axinom's key service, by the content's key IDs.
    Stored,
    /// Whatever key IDs the license request names, from the key seed.
    LicenseRequest,
}

pub struct Axinom {
    config: Arc<ProviderConfig>,
    com_key_id: String,
    encoding_key: EncodingKey,
    decoding_key: DecodingKey,
    message_version: u8,
    token_ttl: Duration,
    key_source: KeySource,
    seed_id: Option<String>,
    return_license_request_info: bool,
    clock_skew: Duration,
    internal_headers: [HeaderName; 1],
}

impl Axinom {
    pub fn new(config: Arc<ProviderConfig>) -> Result<Self, ConfigError> {
        let settings: Settings = super::settings(&config)?;
        let key = |field: &str| format!("providers.{}.settings.{field}", config.name);
        let com_key_id = uuid::Uuid::parse_str(&settings.com_key_id)
            .map_err(|_| ConfigError::new(key("com_key_id"), "not a UUID"))?
            .hyphenated()
            .to_string();
        let com_key = super::key_bytes(&key("com_key"), &settings.com_key)?;
        if com_key.len() != 32 {
            return Err(ConfigError::new(
                key("com_key"),
                format!("a communication key is 32 bytes, this is {}", com_key.len()),
            ));
        }
        if !(1..=2).contains(&settings.message_version) {
            return Err(ConfigError::new(key("message_version"), "must be 1 or 2"));
        }
        if settings.token_ttl_seconds == 0 {
            return Err(ConfigError::new(
                key("token_ttl_seconds"),
                "must be at least 1",
            ));
        }
        let seed_id = settings
            .seed_id
            .map(|id| {
                uuid::Uuid::parse_str(&id)
                    .map(|id| id.hyphenated().to_string())
                    .map_err(|_| ConfigError::new(key("seed_id"), "not a UUID"))
            })
            .transpose()?;
        Ok(Self {
            com_key_id,
            encoding_key: EncodingKey::from_secret(&com_key),
            decoding_key: DecodingKey::from_secret(&com_key),
            message_version: settings.message_version,
            token_ttl: Duration::from_secs(settings.token_ttl_seconds),
            key_source: settings.key_source,
            seed_id,
            return_license_request_info: settings.return_license_request_info,
            clock_skew: Duration::from_secs(settings.clock_skew_seconds),
            internal_headers: [MESSAGE_HEADER],
            config,
        })
    }

    /// The signed envelope for `request`, valid from (now - skew) until `expires_at`.
    pub fn sign(&self, request: &LicenseRequest, now: SystemTime) -> Result<String, Problem> {
        let expires_at = now + self.token_ttl;
        let envelope = json!({
            "version": 1,
            "com_key_id": self.com_key_id,
            "message": self.message(request),
            "begin_date": crate::clock::rfc3339(now - self.clock_skew),
            "expiration_date": crate::clock::rfc3339(expires_at),
        });
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &envelope,
            &self.encoding_key,
        )
        .map_err(|e| super::signing_failed(&self.config.name, e))
    }

    fn message(&self, request: &LicenseRequest) -> Value {
        let key_ids: Vec<String> = request
            .content
            .key_ids
            .iter()
            .map(ToString::to_string)
            .collect();
        let policy = &request.policy;
        if self.message_version == 1 {
            let mut message = json!({"type": "entitlement_message", "key_ids": key_ids});
            if policy.persistent {
                message["persistent"] = json!(true);
            }
            return message;
        }
        let usage_policy = &request.policy_name;
        let content_keys_source = match self.key_source {
            KeySource::Inline => {
                let keys: Vec<Value> = key_ids
                    .iter()
                    .map(|id| {
                        let mut key = json!({"id": id, "usage_policy": usage_policy});
                        if let Some(seed_id) = &self.seed_id {
                            key["seed_id"] = json!(seed_id);
                        }
                        key
                    })
                    .collect();
                json!({"inline": keys})
            }
            KeySource::Stored => {
                let keys: Vec<Value> = key_ids
                    .iter()
                    .map(|id| json!({"id": id, "usage_policy": usage_policy}))
                    .collect();
                json!({"stored": keys})
            }
            KeySource::LicenseRequest => {
                let mut source = json!({"usage_policy": usage_policy});
                if let Some(seed_id) = &self.seed_id {
                    source["seed_id"] = json!(seed_id);
                }
                json!({"license_request": source})
            }
        };
        let mut license = json!({"allow_persistence": policy.persistent});
        if policy.license_seconds() > 0 {
            license["duration"] = json!(policy.license_seconds());
        }
        if policy.renews() {
            license_renewal(&mut license, policy);
        }
        json!({
            "type": "entitlement_message",
            "version": 2,
            "license": license,
            "content_keys_source": content_keys_source,
            "content_key_usage_policies": [usage_policy_json(usage_policy, policy)],
            "license_server": {
                "return_license_request_info": self.return_license_request_info,
            },
        })
    }

    /// The device in Axinom's signed license request info, if its signature holds.
    fn device(&self, headers: &HeaderMap) -> Device {
        let Some(value) = headers.get(MESSAGE_HEADER) else {
            return Device::NotReported;
        };
        let Ok(token) = value.to_str() else {
            return Device::Untrusted("license request info is not text".into());
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        match jsonwebtoken::decode::<RequestInfoEnvelope>(token, &self.decoding_key, &validation) {
            Ok(data)
                if data
                    .claims
                    .com_key_id
                    .eq_ignore_ascii_case(&self.com_key_id) =>
            {
                let message = data.claims.message;
                match message.device_info {
                    Some(info) if message.kind.ends_with("_license_request_info") => {
                        Device::Reported(info)
                    }
                    _ => Device::Untrusted("not a license request info with device_info".into()),
                }
            }
            Ok(_) => Device::Untrusted("license request info names another com_key_id".into()),
            Err(e) => Device::Untrusted(format!("license request info rejected: {e}")),
        }
    }
}

#[derive(Deserialize)]
struct RequestInfoEnvelope {
    com_key_id: String,
    message: RequestInfo,
}

#[derive(Deserialize)]
struct RequestInfo {
    #[serde(rename = "type")]
    kind: String,
    device_info: Option<DeviceInfo>,
}

/// Short licenses that renew. Widevine's CDM renews by itself, at the interval, retrying
/// through the grace; no `renewal_url`, so renewals come back through licensegate. PlayReady and
/// FairPlay have no renewal of their own: their licenses expire in real time and the player asks
/// again (Shaka `drm.renewalIntervalSec`).
fn license_renewal(license: &mut Value, policy: &Policy) {
    license["widevine"] = json!({
        "allow_renewal": true,
        "renewal_delay": policy.renewal_interval_seconds,
        "renewal_recovery": policy.renewal_grace_seconds,
        "renewal_retry_interval": policy.renewal_retry_seconds(),
    });
    let real_time = json!({"real_time_expiration": true});
    license["playready"] = real_time.clone();
    license["fairplay"] = real_time;
}

/// A licensegate policy in Axinom's usage policy terms, for every DRM at once.
fn usage_policy_json(name: &str, policy: &Policy) -> Value {
    const WIDEVINE_LEVELS: [&str; 5] = [
        "SW_SECURE_CRYPTO",
        "SW_SECURE_DECODE",
        "HW_SECURE_CRYPTO",
        "HW_SECURE_DECODE",
        "HW_SECURE_ALL",
    ];
    let level = usize::from(policy.security_level.clamp(1, 5)) - 1;
    let (widevine_hdcp, fairplay_hdcp) = match policy.hdcp {
        Hdcp::None => ("HDCP_NONE", "NONE"),
        Hdcp::V1_4 => ("HDCP_V1", "TYPE_0"),
        Hdcp::V2_2 => ("HDCP_V2_2", "TYPE_1"),
    };
    // PlayReady: 2000 is a software client, 3000 a hardware one.
    let playready_level = if policy.security_level >= 3 {
        3000
    } else {
        2000
    };
    json!({
        "name": name,
        "widevine": {
            "device_security_level": WIDEVINE_LEVELS[level],
            "hdcp": widevine_hdcp,
        },
        "playready": {
            "min_device_security_level": playready_level,
        },
        "fairplay": {
            "hdcp": fairplay_hdcp,
        },
    })
}

#[async_trait]
impl Provider for Axinom {
    fn minting(&self) -> Minting {
        Minting::Reusable
    }

    async fn authorize(&self, request: &LicenseRequest) -> Result<Authorization, Problem> {
        if request.drm == Drm::ClearKey {
            return Err(Problem::drm_not_routed(request.drm.as_str()));
        }
        let now = SystemTime::now();
        let token = self.sign(request, now)?;
        Ok(Authorization {
            headers: vec![(MESSAGE_HEADER, super::header_value(&token)?)],
            expires_at: Some(now + self.token_ttl),
            ..Authorization::default()
        })
    }

    fn keys_from_request(&self) -> bool {
        self.key_source == KeySource::LicenseRequest
    }

    fn refusal_reason(&self, headers: &HeaderMap) -> Option<String> {
        super::reason_in(self.config.error_header.as_ref(), headers)
    }

    fn device(&self, headers: &HeaderMap) -> Device {
        self.device(headers)
    }

    fn reports_devices(&self) -> bool {
        true
    }

    fn internal_headers(&self) -> &[HeaderName] {
        &self.internal_headers
    }
}
