//! castLabs DRMtoday: an upfront token in `x-dt-auth-token` (a JWT whose `jti` DRMtoday
//! accepts once), or custom data in `x-dt-custom-data` for merchants authorizing by callback.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderName};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::json;

use super::{
    Authorization, CertificateEncoding, CertificateSource, Device, DeviceInfo, FairPlayWire,
    LicenseRequest, Minting, Provider,
};
use crate::config::{ConfigError, ProviderConfig};
use crate::http::problem::Problem;
use crate::policy::Hdcp;
use licensegate_drm::fairplay::{CkcFormat, CkcSource, SpcFormat};

pub(crate) const AUTH_TOKEN_HEADER: HeaderName = HeaderName::from_static("x-dt-auth-token");
pub(crate) const CUSTOM_DATA_HEADER: HeaderName = HeaderName::from_static("x-dt-custom-data");
pub(crate) const CLIENT_INFO_HEADER: HeaderName = HeaderName::from_static("x-dt-client-info");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    merchant: String,
    #[serde(default)]
    mode: Mode,
    /// Which shared secret signs upfront tokens (the JWT `kid`).
    key_id: Option<String>,
    /// The shared secret, 32 bytes as hex or base64.
    secret: Option<String>,
    #[serde(default = "default_algorithm")]
    algorithm: String,
    #[serde(default = "default_token_ttl")]
    token_ttl_seconds: u64,
}

fn default_algorithm() -> String {
    "HS256".into()
}
fn default_token_ttl() -> u64 {
    60
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    #[default]
    Upfront,
    CustomData,
}

enum Signing {
    Upfront {
        key_id: String,
        algorithm: Algorithm,
        key: EncodingKey,
    },
    CustomData,
}

pub(crate) struct DrmToday {
    config: Arc<ProviderConfig>,
    merchant: String,
    signing: Signing,
    token_ttl: Duration,
    internal_headers: [HeaderName; 1],
}

impl DrmToday {
    pub(crate) fn new(config: Arc<ProviderConfig>) -> Result<Self, ConfigError> {
        let settings: Settings = super::settings(&config)?;
        let key = |field: &str| format!("providers.{}.settings.{field}", config.name);
        if settings.merchant.is_empty() {
            return Err(ConfigError::new(key("merchant"), "is empty"));
        }
        if settings.token_ttl_seconds == 0 {
            return Err(ConfigError::new(
                key("token_ttl_seconds"),
                "must be at least 1",
            ));
        }
        let signing = match settings.mode {
            Mode::CustomData => Signing::CustomData,
            Mode::Upfront => {
                let key_id = settings
                    .key_id
                    .ok_or_else(|| ConfigError::new(key("key_id"), "upfront tokens need it"))?;
                let secret = settings
                    .secret
                    .ok_or_else(|| ConfigError::new(key("secret"), "upfront tokens need it"))?;
                let secret = super::key_bytes(&key("secret"), &secret)?;
                let algorithm = match settings.algorithm.as_str() {
                    "HS256" => Algorithm::HS256,
                    "HS384" => Algorithm::HS384,
                    "HS512" => Algorithm::HS512,
                    _ => {
                        return Err(ConfigError::new(
                            key("algorithm"),
                            "DRMtoday takes HS256, HS384 or HS512",
                        ));
                    }
                };
                Signing::Upfront {
                    key_id,
                    algorithm,
                    key: EncodingKey::from_secret(&secret),
                }
            }
        };
        Ok(Self {
            merchant: settings.merchant,
            signing,
            token_ttl: Duration::from_secs(settings.token_ttl_seconds),
            internal_headers: [CLIENT_INFO_HEADER],
            config,
        })
    }

    /// The customer rights token: what the user may do with the content, as DRMtoday reads it.
    fn rights(&self, request: &LicenseRequest, now: SystemTime) -> String {
        let policy = &request.policy;
        let profile = if policy.license_duration_seconds > 0 {
            let duration = Duration::from_secs(policy.license_duration_seconds);
            json!({"rental": {
                "absoluteExpiration": crate::clock::rfc3339(now + duration),
                "playDuration": duration.as_millis() as u64,
            }})
        } else {
            json!({"purchase": {}})
        };
        let protected = policy.hdcp != Hdcp::None;
        json!([{
            "assetId": request.content.id,
            "profile": profile,
            "outputProtection": {"digital": protected, "analogue": protected, "enforce": protected},
            "storeLicense": policy.persistent,
        }])
        .to_string()
    }

    fn session_data(&self, request: &LicenseRequest) -> String {
        json!({
            "merchant": self.merchant,
            "userId": request.user_or_anonymous(),
            "sessionId": request.request_id,
        })
        .to_string()
    }
}

#[async_trait]
impl Provider for DrmToday {
    fn minting(&self) -> Minting {
        match self.signing {
            Signing::Upfront { .. } => Minting::PerAttempt,
            Signing::CustomData => Minting::Reusable,
        }
    }

    async fn authorize(&self, request: &LicenseRequest) -> Result<Authorization, Problem> {
        let now = SystemTime::now();
        let expires_at = now + self.token_ttl;
        let (name, value) = match &self.signing {
            Signing::CustomData => (
                CUSTOM_DATA_HEADER,
                STANDARD.encode(self.session_data(request)),
            ),
            Signing::Upfront {
                key_id,
                algorithm,
                key,
            } => {
                let seconds =
                    |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
                let mut header = Header::new(*algorithm);
                header.kid = Some(key_id.clone());
                header.typ = Some("JWT".into());
                let claims = json!({
                    "jti": uuid::Uuid::new_v4().to_string(),
                    "iat": seconds(now),
                    "exp": seconds(expires_at),
                    "optData": self.session_data(request),
                    "crt": self.rights(request, now),
                });
                let token = jsonwebtoken::encode(&header, &claims, key)
                    .map_err(|e| super::signing_failed(&self.config.name, e))?;
                (AUTH_TOKEN_HEADER, token)
            }
        };
        // Custom data carries no expiry: DRMtoday asks the merchant about the session.
        let expires_at = match self.signing {
            Signing::Upfront { .. } => Some(expires_at),
            Signing::CustomData => None,
        };
        Ok(Authorization {
            headers: vec![(name, super::header_value(&value)?)],
            expires_at,
            ..Authorization::default()
        })
    }

    fn refusal_reason(&self, headers: &HeaderMap) -> Option<String> {
        super::reason_in(self.config.error_header.as_ref(), headers)
    }

    fn device(&self, headers: &HeaderMap) -> Device {
        client_info(headers)
    }

    fn internal_headers(&self) -> &[HeaderName] {
        &self.internal_headers
    }

    /// DRMtoday's FairPlay server reads a form whose `spc` is URL-encoded base64, and answers
    /// the CKC as base64.
    fn fairplay_wire(&self) -> FairPlayWire {
        FairPlayWire {
            spc: SpcFormat::Form,
            ckc: CkcSource::Declared(CkcFormat::Base64),
        }
    }

    /// Persistable keys are asked for with `offline=true`.
    fn fairplay_fields(&self, request: &LicenseRequest) -> Vec<(&'static str, String)> {
        if request.policy.persistent {
            vec![("offline", "true".into())]
        } else {
            Vec::new()
        }
    }

    fn fairplay_certificate(&self) -> Option<CertificateSource> {
        Some(CertificateSource {
            path_and_query: format!("/license-server-fairplay/cert/{}", self.merchant),
            encoding: CertificateEncoding::Der,
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClientInfo {
    manufacturer: Option<String>,
    model: Option<String>,
    sec_level: Option<serde_json::Value>,
}

/// DRMtoday's description of the device in `x-dt-client-info` (base64 JSON).
fn client_info(headers: &HeaderMap) -> Device {
    let Some(value) = headers.get(CLIENT_INFO_HEADER) else {
        return Device::NotReported;
    };
    let Some(info) = STANDARD
        .decode(value.as_bytes())
        .ok()
        .and_then(|json| serde_json::from_slice::<ClientInfo>(&json).ok())
    else {
        return Device::Untrusted("x-dt-client-info is not base64 JSON".into());
    };
    let model = [info.manufacturer, info.model]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    Device::Reported(DeviceInfo {
        model: (!model.is_empty()).then_some(model),
        platform: info
            .sec_level
            .map(|level| format!("security level {level}")),
        ..DeviceInfo::default()
    })
}
