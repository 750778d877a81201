//! License providers. Each provider is one file implementing [`Provider`]: how a license request is
//! authorized with it, and what its answer says about the device and any refusal. The pipeline
//! speaks only this trait; it knows no provider by name.

pub mod authorizations;
pub mod axinom;
pub(crate) mod clearkey;
pub(crate) mod drmtoday;
pub(crate) mod expressplay;
pub(crate) mod generic;
pub(crate) mod pallycon;
pub(crate) mod passthrough;
pub mod upstream;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::de::DeserializeOwned;

use crate::challenge::{ChallengeInfo, Kid};
use crate::config::{ConfigError, ProviderConfig, ProviderKind};
use crate::drm::Drm;
use crate::http::problem::Problem;
use crate::policy::Policy;
use crate::providers::upstream::Upstream;
use crate::rights::catalog::Content;
use licensegate_drm::fairplay::{CkcFormat, CkcSource, SpcFormat};

/// A refusal reason is logged, and a runaway one must not flood the log line.
const MAX_REASON_LEN: usize = 256;

/// Everything the pipeline has resolved about one license request by the time a provider is
/// asked to authorize it.
#[derive(Debug, Clone)]
pub struct LicenseRequest {
    pub request_id: String,
    /// The authenticated user; `None` when licensegate runs without `[auth]`.
    pub user: Option<String>,
    pub content: Arc<Content>,
    pub drm: Drm,
    /// The key IDs inside the challenge (a subset of the content's).
    pub key_ids: Vec<Kid>,
    pub policy_name: String,
    pub policy: Arc<Policy>,
    pub client_ip: Option<IpAddr>,
}

impl LicenseRequest {
    /// The user as providers that require one see it.
    pub(crate) fn user_or_anonymous(&self) -> &str {
        self.user.as_deref().unwrap_or("anonymous")
    }
}

/// What goes with the challenge to the provider.
#[derive(Debug, Default)]
pub struct Authorization {
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Replaces the configured endpoint's path and query (a token URL).
    pub(crate) path_and_query: Option<String>,
    /// Appended to the endpoint's query (templated parameters), already encoded.
    pub(crate) query: Option<String>,
    /// When the provider stops accepting it; `None` when it does not expire.
    pub(crate) expires_at: Option<SystemTime>,
}

impl Authorization {
    /// Bytes held in memory, for the cache's weight bound.
    pub(crate) fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        headers
            + self.path_and_query.as_ref().map_or(0, String::len)
            + self.query.as_ref().map_or(0, String::len)
            + 64
    }
}

/// How a provider's authorizations may be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Minting {
    /// The provider needs no authorization.
    Nothing,
    /// Valid for many requests until it expires: cached per user, content, DRM and policy.
    Reusable,
    /// Good for one request only: minted for every attempt, retries included.
    PerAttempt,
}

/// What licensegate answers itself, for providers that are licensegate.
pub struct LocalLicense {
    pub content_type: &'static str,
    pub(crate) body: Bytes,
}

/// The device that asked, as far as the provider's answer tells.
#[derive(Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    NotReported,
    /// The provider reported a device, but the report failed verification.
    Untrusted(String),
    Reported(DeviceInfo),
}

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct DeviceInfo {
    pub client_token: Option<String>,
    pub(crate) device_certificate_serial_number: Option<String>,
    pub(crate) device_id: Option<String>,
    pub(crate) platform: Option<String>,
    pub(crate) model: Option<String>,
}

/// How a provider takes the FairPlay SPC and gives back the CKC.
#[derive(Debug, Clone, Copy)]
pub struct FairPlayWire {
    pub spc: SpcFormat,
    pub(crate) ckc: CkcSource,
}

impl FairPlayWire {
    /// The SPC as the CDM made it, the CKC as the key server made it (Axinom, ExpressPlay).
    pub(crate) const RAW: FairPlayWire = FairPlayWire {
        spc: SpcFormat::Raw,
        ckc: CkcSource::Declared(CkcFormat::Raw),
    };
}

/// A refusal a provider sends inside a 2xx answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerRefusal {
    pub code: String,
    pub(crate) message: String,
}

/// Where a provider serves its FairPlay application certificate, on its FairPlay endpoints.
#[derive(Debug, Clone)]
pub struct CertificateSource {
    pub path_and_query: String,
    pub(crate) encoding: CertificateEncoding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CertificateEncoding {
    Der,
    Base64,
}

#[async_trait]
pub trait Provider: Send + Sync {
    fn minting(&self) -> Minting;

    /// The authorization for `request`; called once per cache fill, or once per attempt for
    /// single-use authorizations.
    async fn authorize(&self, request: &LicenseRequest) -> Result<Authorization, Problem>;

    /// The license itself, for providers that are licensegate; others forward.
    fn answer_locally(
        &self,
        _request: &LicenseRequest,
        _challenge: &ChallengeInfo,
    ) -> Option<Result<LocalLicense, Problem>> {
        None
    }

    /// Why the provider refused, from its answer's headers.
    fn refusal_reason(&self, headers: &HeaderMap) -> Option<String>;

    /// The device the provider's answer reports; read only when device limits need it.
    fn device(&self, _headers: &HeaderMap) -> Device {
        Device::NotReported
    }

    /// Whether [`Provider::device`] may report the device that asked: a stream is then known
    /// by its device, on the answer.
    fn reports_devices(&self) -> bool {
        false
    }

    /// Response headers meant for licensegate, stripped before the player sees the answer.
    fn internal_headers(&self) -> &[HeaderName] {
        &[]
    }

    /// The FairPlay envelopes the provider speaks.
    fn fairplay_wire(&self) -> FairPlayWire {
        FairPlayWire::RAW
    }

    /// Form fields the provider reads beside a FairPlay SPC sent as a form.
    fn fairplay_fields(&self, _request: &LicenseRequest) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Where the provider serves its FairPlay certificate, if it does.
    fn fairplay_certificate(&self) -> Option<CertificateSource> {
        None
    }

    /// Whether the provider issues keys for whatever key IDs the license request names, so a
    /// request whose key IDs licensegate cannot read must not reach it.
    fn keys_from_request(&self) -> bool {
        false
    }

    /// Whether the provider may refuse inside a 2xx answer: its answers are then read whole
    /// before the player sees any of them.
    fn refuses_in_answers(&self) -> bool {
        false
    }

    /// The refusal inside a whole 2xx answer, if it is one.
    fn refusal_in_answer(&self, _body: &[u8]) -> Option<AnswerRefusal> {
        None
    }

    /// Endpoints the provider calls itself (token services), whose discovery and health checks
    /// the server runs.
    fn upstreams(&self) -> Vec<Arc<Upstream>> {
        Vec::new()
    }

    /// The ones of [`Provider::upstreams`] a request for `drm` needs.
    fn upstreams_for(&self, _drm: Drm) -> Vec<Arc<Upstream>> {
        self.upstreams()
    }
}

/// A provider: its provider and, unless licensegate answers for it itself, the upstreams that
/// reach its license endpoints.
#[derive(Clone)]
pub(crate) struct ProviderRoute {
    pub(crate) config: Arc<ProviderConfig>,
    pub(crate) provider: Arc<dyn Provider>,
    /// By the DRM each set serves; `None` for a set serving every DRM.
    upstreams: Vec<(Option<Drm>, Arc<Upstream>)>,
    /// The DRMs it serves, worked out once from its config rather than per request.
    serves: Vec<Drm>,
}

impl ProviderRoute {
    pub(crate) fn new(
        config: Arc<ProviderConfig>,
        provider: Arc<dyn Provider>,
        upstreams: Vec<(Option<Drm>, Arc<Upstream>)>,
    ) -> Self {
        let serves = Drm::ALL
            .into_iter()
            .filter(|drm| config.cannot_serve(*drm).is_none())
            .collect();
        Self {
            config,
            provider,
            upstreams,
            serves,
        }
    }

    /// Whether a request for `drm` may be sent to it ([`ProviderConfig::cannot_serve`]).
    pub(crate) fn serves(&self, drm: Drm) -> bool {
        self.serves.contains(&drm)
    }

    /// Each set of license endpoints, by the DRM it serves (`None`: every DRM).
    pub(crate) fn upstream_sets(&self) -> &[(Option<Drm>, Arc<Upstream>)] {
        &self.upstreams
    }

    /// Every upstream a request for `drm` through this provider needs: its license endpoints
    /// and its own services (token services).
    pub(crate) fn upstreams_for(&self, drm: Drm) -> impl Iterator<Item = Arc<Upstream>> {
        self.upstream(drm)
            .cloned()
            .into_iter()
            .chain(self.provider.upstreams_for(drm))
    }

    /// The license endpoints serving `drm`.
    pub(crate) fn upstream(&self, drm: Drm) -> Option<&Arc<Upstream>> {
        self.upstreams
            .iter()
            .find(|(set, _)| *set == Some(drm) || set.is_none())
            .map(|(_, upstream)| upstream)
    }
}

/// The provider for a configured provider; a bad setting is a config error naming its key.
pub fn build(
    config: &Arc<ProviderConfig>,
    idle_timeout: std::time::Duration,
) -> Result<Arc<dyn Provider>, ConfigError> {
    Ok(match config.kind {
        ProviderKind::Passthrough => Arc::new(passthrough::Passthrough::new(config.clone())),
        ProviderKind::Clearkey => Arc::new(clearkey::ClearKey),
        ProviderKind::Axinom => Arc::new(axinom::Axinom::new(config.clone())?),
        ProviderKind::Expressplay => {
            Arc::new(expressplay::ExpressPlay::new(config.clone(), idle_timeout)?)
        }
        ProviderKind::Drmtoday => Arc::new(drmtoday::DrmToday::new(config.clone())?),
        ProviderKind::Pallycon => Arc::new(pallycon::PallyCon::new(config.clone())?),
        ProviderKind::Generic => Arc::new(generic::Generic::new(config.clone())?),
    })
}

/// The provider's `[settings]` in its provider's shape; errors name the key under `settings`.
fn settings<T: DeserializeOwned>(config: &ProviderConfig) -> Result<T, ConfigError> {
    let prefix = format!("providers.{}.settings", config.name);
    let value = config
        .settings
        .clone()
        .ok_or_else(|| ConfigError::new(&prefix, "missing"))?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." {
            prefix.clone()
        } else {
            format!("{prefix}.{path}")
        };
        ConfigError::new(key, e.into_inner().message().to_string())
    })
}

/// Key material as providers hand it out: hex, or base64 (standard or URL-safe).
fn key_bytes(key: &str, text: &str) -> Result<Vec<u8>, ConfigError> {
    let text = text.trim();
    if text.len().is_multiple_of(2)
        && let Ok(bytes) = hex::decode(text)
    {
        return Ok(bytes);
    }
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
        .map_err(|_| ConfigError::new(key, "neither hex nor base64"))
}

/// The refusal reason a provider put in `header`, bounded.
fn reason_in(header: Option<&HeaderName>, headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header?)?;
    let mut reason = String::from_utf8_lossy(value.as_bytes()).into_owned();
    reason.truncate(MAX_REASON_LEN);
    Some(reason)
}

fn header_value(text: &str) -> Result<HeaderValue, Problem> {
    HeaderValue::try_from(text).map_err(|_| {
        Problem::internal().with_detail("a provider authorization is not a valid header value")
    })
}

/// A signing failure is licensegate's fault (a key it was configured with), never the player's.
fn signing_failed(provider: &str, error: impl std::fmt::Display) -> Problem {
    tracing::error!(provider, %error, "cannot sign a provider authorization");
    Problem::internal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_as_hex_then_base64() {
        assert_eq!(key_bytes("k", "00ff").unwrap(), vec![0, 255]);
        assert_eq!(key_bytes("k", "AP8=").unwrap(), vec![0, 255]);
        assert_eq!(key_bytes("k", "AP8").unwrap(), vec![0, 255]);
        assert_eq!(key_bytes("k", "not a key!").unwrap_err().key, "k");
    }
}
