//! ExpressPlay: a token service per DRM (Widevine, PlayReady, FairPlay) turns the key and
//! policy into an ExpressPlay token and the license URL to redeem it at; the challenge then
//! goes to that URL. Tokens are redeemable until they expire, so one is reused per user,
//! content, DRM and policy. A DRM whose token service is not configured is not served.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, Method, header};
use pingora::connectors::ConnectorOptions;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use serde::Deserialize;

use super::{Authorization, LicenseRequest, Minting, Provider};
use crate::config::{ConfigError, Endpoint, ProviderConfig, parse_endpoint};
use crate::drm::Drm;
use crate::http::problem::{Problem, Refusal};
use crate::policy::Hdcp;
use crate::providers::upstream::Upstream;

/// ExpressPlay's longest (and default) token lifetime.
const MAX_TOKEN_TTL_SECONDS: u64 = 30 * 24 * 3600;
/// A token service answer is one URL; anything longer is not one.
const MAX_ANSWER_BYTES: usize = 16 * 1024;
/// Pooled idle connections to the token service.
const TOKEN_POOL_SIZE: usize = 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The Widevine token service, e.g. `https://wv-gen.test.expressplay.com/hms/wv/token`.
    token_url: Option<String>,
    /// The PlayReady token service, e.g. `https://pr-gen.test.expressplay.com/hms/pr/token`.
    playready_token_url: Option<String>,
    /// What a PlayReady output licensegate's policy does not name may do: `Allow`,
    /// `Disallow` or `SDOnly`; by default allowed unless the policy requires HDCP.
    playready_unknown_output: Option<UnknownOutput>,
    customer_authenticator: String,
    #[serde(default = "default_token_ttl")]
    token_ttl_seconds: u64,
    /// Send the content key with the key ID; off when ExpressPlay stores the keys.
    #[serde(default = "yes")]
    send_content_key: bool,
    /// The FairPlay token service, e.g. `https://fp-gen.test.expressplay.com/hms/fp/token`;
    /// FairPlay tokens carry the content key and the IV from the catalog.
    fairplay_token_url: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
enum UnknownOutput {
    Allow,
    Disallow,
    SDOnly,
}

impl UnknownOutput {
    fn as_str(self) -> &'static str {
        match self {
            UnknownOutput::Allow => "Allow",
            UnknownOutput::Disallow => "Disallow",
            UnknownOutput::SDOnly => "SDOnly",
        }
    }
}

fn default_token_ttl() -> u64 {
    3600
}
fn yes() -> bool {
    true
}

pub(crate) struct ExpressPlay {
    config: Arc<ProviderConfig>,
    token_service: Option<Arc<Upstream>>,
    playready_token_service: Option<Arc<Upstream>>,
    playready_unknown_output: Option<UnknownOutput>,
    fairplay_token_service: Option<Arc<Upstream>>,
    connector: Connector,
    customer_authenticator: String,
    token_ttl: Duration,
    send_content_key: bool,
}

impl ExpressPlay {
    pub(crate) fn new(
        config: Arc<ProviderConfig>,
        idle_timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let settings: Settings = super::settings(&config)?;
        let key = |field: &str| format!("providers.{}.settings.{field}", config.name);
        if settings.customer_authenticator.is_empty() {
            return Err(ConfigError::new(key("customer_authenticator"), "is empty"));
        }
        if !(1..=MAX_TOKEN_TTL_SECONDS).contains(&settings.token_ttl_seconds) {
            return Err(ConfigError::new(
                key("token_ttl_seconds"),
                format!("must be between 1 and {MAX_TOKEN_TTL_SECONDS} (30 days)"),
            ));
        }
        let service = |field: &str, url: Option<String>, label: &str| {
            url.map(|url| {
                let endpoint = parse_endpoint(&url).map_err(|e| ConfigError::new(key(field), e))?;
                Ok::<_, ConfigError>(Arc::new(Upstream::new(
                    config.clone(),
                    &[Arc::new(endpoint)],
                    format!("{} {label}", config.name),
                    idle_timeout,
                )))
            })
            .transpose()
        };
        let token_service = service("token_url", settings.token_url, "token service")?;
        let playready_token_service = service(
            "playready_token_url",
            settings.playready_token_url,
            "PlayReady token service",
        )?;
        let fairplay_token_service = service(
            "fairplay_token_url",
            settings.fairplay_token_url,
            "FairPlay token service",
        )?;
        if token_service.is_none()
            && playready_token_service.is_none()
            && fairplay_token_service.is_none()
        {
            return Err(ConfigError::new(
                format!("providers.{}.settings", config.name),
                "name a token service: token_url (Widevine), playready_token_url or fairplay_token_url",
            ));
        }
        Ok(Self {
            token_service,
            playready_token_service,
            playready_unknown_output: settings.playready_unknown_output,
            fairplay_token_service,
            connector: Connector::new(Some(ConnectorOptions::new(TOKEN_POOL_SIZE))),
            customer_authenticator: settings.customer_authenticator,
            token_ttl: Duration::from_secs(settings.token_ttl_seconds),
            send_content_key: settings.send_content_key,
            config,
        })
    }

    /// The token service's form for `request`.
    fn token_form(&self, request: &LicenseRequest) -> Result<String, Problem> {
        let policy = &request.policy;
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("customerAuthenticator", &self.customer_authenticator);
        form.append_pair("errorFormat", "json");
        self.append_keys(&mut form, request)?;
        form.append_pair("securityLevel", &policy.security_level.to_string());
        let hdcp = match policy.hdcp {
            Hdcp::None => "0",
            Hdcp::V1_4 => "1",
            Hdcp::V2_2 => "2",
        };
        form.append_pair("hdcpOutputControl", hdcp);
        if policy.license_duration_seconds > 0 {
            form.append_pair(
                "licenseDuration",
                &policy.license_duration_seconds.to_string(),
            );
        }
        form.append_pair("expirationTime", &format!("+{}", self.token_ttl.as_secs()));
        form.append_pair("cookie", &request_cookie(request));
        Ok(form.finish())
    }

    /// The PlayReady token service's form: each key ID with its key, the rights (a policy with a
    /// license duration and persistence rents until then; anything else is bought, persistent
    /// only if the policy says so), and output protection levels for the policy's HDCP.
    fn playready_token_form(&self, request: &LicenseRequest) -> Result<String, Problem> {
        let policy = &request.policy;
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("customerAuthenticator", &self.customer_authenticator);
        form.append_pair("errorFormat", "json");
        self.append_keys(&mut form, request)?;
        if let Some(seconds) = rental_seconds(policy) {
            form.append_pair("rightsType", "Rental");
            form.append_pair("rental.periodEndTime", &format!("+{seconds}"));
        } else {
            form.append_pair("rightsType", "BuyToOwn");
        }
        if policy.persistent {
            form.append_pair("generalFlags", PERSISTENT_LICENSE_FLAGS);
        }
        let opls = PlayReadyOutputs::for_hdcp(policy.hdcp);
        for (name, level) in [
            ("analogVideoOPL", opls.analog_video),
            ("compressedDigitalAudioOPL", opls.compressed_digital_audio),
            ("compressedDigitalVideoOPL", opls.compressed_digital_video),
            (
                "uncompressedDigitalAudioOPL",
                opls.uncompressed_digital_audio,
            ),
            (
                "uncompressedDigitalVideoOPL",
                opls.uncompressed_digital_video,
            ),
        ] {
            form.append_pair(name, &level.to_string());
        }
        let unknown = self.playready_unknown_output.unwrap_or(match policy.hdcp {
            Hdcp::None => UnknownOutput::Allow,
            Hdcp::V1_4 | Hdcp::V2_2 => UnknownOutput::Disallow,
        });
        form.append_pair("unknownOutputBehavior", unknown.as_str());
        form.append_pair("expirationTime", &format!("+{}", self.token_ttl.as_secs()));
        form.append_pair("cookie", &request_cookie(request));
        Ok(form.finish())
    }

    /// Each of the content's key IDs, with its key unless ExpressPlay stores the keys.
    fn append_keys(
        &self,
        form: &mut url::form_urlencoded::Serializer<'_, String>,
        request: &LicenseRequest,
    ) -> Result<(), Problem> {
        for kid in &request.content.key_ids {
            form.append_pair("kid", &hex::encode(kid.0));
            if self.send_content_key {
                let Some(key) = request.content.keys.get(kid) else {
                    return Err(Problem::new(Refusal::KeyNotFound).with_detail(format!(
                        "the catalog holds no key for {kid} of '{}'",
                        request.content.id
                    )));
                };
                form.append_pair("contentKey", &hex::encode(key));
            }
        }
        Ok(())
    }

    /// The FairPlay token service's form: the content key and the IV it was packaged with.
    fn fairplay_token_form(&self, request: &LicenseRequest) -> Result<String, Problem> {
        let content = &request.content;
        let missing = |what: String| Problem::new(Refusal::KeyNotFound).with_detail(what);
        // The key the skd URI named (checked against the content), else the content's only one.
        let kid = match (request.key_ids.first(), content.key_ids.as_slice()) {
            (Some(kid), _) | (None, [kid]) => kid,
            (None, _) => {
                return Err(Problem::new(Refusal::KeyIdsUnreadable).with_detail(format!(
                    "'{}' has several keys: name the key's skd URI",
                    content.id
                )));
            }
        };
        let key = content
            .keys
            .get(kid)
            .ok_or_else(|| missing(format!("the catalog holds no key for {kid}")))?;
        let iv = content.fairplay_iv.ok_or_else(|| {
            missing(format!(
                "'{}' has no fairplay_iv in the catalog",
                content.id
            ))
        })?;
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("customerAuthenticator", &self.customer_authenticator);
        form.append_pair("errorFormat", "json");
        form.append_pair("contentKey", &hex::encode(key));
        form.append_pair("iv", &hex::encode(iv));
        if request.policy.license_duration_seconds > 0 {
            form.append_pair(
                "rentalDuration",
                &request.policy.license_duration_seconds.to_string(),
            );
        }
        form.append_pair("expirationTime", &format!("+{}", self.token_ttl.as_secs()));
        Ok(form.finish())
    }

    /// The license path and query from the token service's answer: a `text/uri-list` URL that
    /// carries the token, or (PlayReady) JSON naming the license URL and the token, which then
    /// travels as `ExpressPlayToken`. The URL must point at one of the provider's configured
    /// license endpoints for `drm`.
    fn license_path(&self, answer: &[u8], drm: Drm) -> Result<String, Problem> {
        let invalid =
            |why: &str| Problem::new(Refusal::VendorTokenInvalid).with_detail(why.to_string());
        let text = std::str::from_utf8(answer).map_err(|_| invalid("the answer is not text"))?;
        let (line, token) = if text.trim_start().starts_with('{') {
            let redeem: Redeem =
                serde_json::from_str(text).map_err(|_| invalid("the answer is not its JSON"))?;
            if redeem.token.is_empty() {
                return Err(invalid("the answer holds no token"));
            }
            (redeem.license_acquisition_url, Some(redeem.token))
        } else {
            let line = text
                .lines()
                .map(str::trim)
                .find(|line| !line.is_empty() && !line.starts_with('#'))
                .ok_or_else(|| invalid("the answer holds no URL"))?;
            (line.to_string(), None)
        };
        let url = parse_endpoint(&line).map_err(|_| invalid("the answer is not a URL"))?;
        let known = self
            .config
            .endpoints
            .for_drm(drm)
            .unwrap_or_default()
            .iter()
            .any(|endpoint| same_host(endpoint, &url));
        if !known {
            return Err(invalid(&format!(
                "the license URL's host {} is not among the provider's endpoints",
                url.authority
            )));
        }
        Ok(match token {
            Some(token) => {
                let separator = if url.path_and_query.contains('?') {
                    '&'
                } else {
                    '?'
                };
                let query = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("ExpressPlayToken", &token)
                    .finish();
                format!("{}{separator}{query}", url.path_and_query)
            }
            None => url.path_and_query,
        })
    }
}

/// How long a PlayReady license rents for: a persistent policy's license length. ExpressPlay's
/// rental must be persistent, so a non-persistent policy's license is bought, and lasts the
/// playback session as non-persistent PlayReady licenses do.
fn rental_seconds(policy: &crate::policy::Policy) -> Option<u64> {
    let seconds = policy.license_seconds();
    (policy.persistent && seconds > 0).then_some(seconds)
}

/// How long a token is reused. A PlayReady rental ends a fixed time after its token was
/// issued: a token reused late would rent for less, so it is reused for a tenth of the rental
/// at most.
fn token_reuse(ttl: Duration, drm: Drm, policy: &crate::policy::Policy) -> Duration {
    match (drm, rental_seconds(policy)) {
        (Drm::PlayReady, Some(seconds)) => ttl.min(Duration::from_secs(seconds) / 10),
        _ => ttl,
    }
}

/// Correlates ExpressPlay's redemption logs with ours: the request that minted the token.
fn request_cookie(request: &LicenseRequest) -> String {
    request
        .request_id
        .chars()
        .filter(|c| *c != '-')
        .take(32)
        .collect()
}

/// The PlayReady token service's answer.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Redeem {
    license_acquisition_url: String,
    token: String,
}

/// A persistent PlayReady license (ExpressPlay's `generalFlags`); a rental must be one.
const PERSISTENT_LICENSE_FLAGS: &str = "00000001";

/// PlayReady output protection levels (Microsoft's compliance rules) for a policy's HDCP.
struct PlayReadyOutputs {
    analog_video: u16,
    compressed_digital_audio: u16,
    compressed_digital_video: u16,
    uncompressed_digital_audio: u16,
    uncompressed_digital_video: u16,
}

impl PlayReadyOutputs {
    /// Without HDCP every output passes (100, 400 for compressed video). With HDCP, the
    /// uncompressed digital video output passes only with HDCP engaged (300) and analog video
    /// only with CGMS-A engaged (200). ExpressPlay's token names no HDCP version, so 2.2 asks
    /// what 1.4 does.
    fn for_hdcp(hdcp: Hdcp) -> Self {
        let protected = hdcp != Hdcp::None;
        Self {
            analog_video: if protected { 200 } else { 100 },
            compressed_digital_audio: 100,
            compressed_digital_video: 400,
            uncompressed_digital_audio: 100,
            uncompressed_digital_video: if protected { 300 } else { 100 },
        }
    }
}

/// Only the path and query of a license URL are used, with the configured endpoint's scheme
/// and port: the host is what must be the vendor's (ExpressPlay's PlayReady answer names an
/// `http` URL for a service also reached over `https`).
fn same_host(a: &Endpoint, b: &Endpoint) -> bool {
    a.host.eq_ignore_ascii_case(&b.host)
}

/// ExpressPlay's JSON error body; the field names vary between its services, so both
/// spellings are read.
#[derive(Deserialize, Default)]
struct TokenError {
    #[serde(alias = "code")]
    #[serde(rename = "errorCode")]
    error_code: Option<i64>,
    #[serde(alias = "message")]
    #[serde(rename = "errorMessage")]
    error_message: Option<String>,
}

#[async_trait]
impl Provider for ExpressPlay {
    fn minting(&self) -> Minting {
        Minting::Reusable
    }

    async fn authorize(&self, request: &LicenseRequest) -> Result<Authorization, Problem> {
        let (token_service, form) = match request.drm {
            Drm::Widevine => (&self.token_service, self.token_form(request)?),
            Drm::PlayReady => (
                &self.playready_token_service,
                self.playready_token_form(request)?,
            ),
            Drm::FairPlay => (
                &self.fairplay_token_service,
                self.fairplay_token_form(request)?,
            ),
            Drm::ClearKey => (&None, String::new()),
        };
        let Some(token_service) = token_service else {
            return Err(Problem::drm_not_routed(request.drm.as_str()));
        };
        let form = Bytes::from(form);
        let length = form.len().to_string();
        let now = SystemTime::now();
        let answer = token_service
            .side_call(
                &self.connector,
                "token service",
                |endpoint| {
                    let mut header = RequestHeader::build_no_case(
                        Method::POST,
                        endpoint.path_and_query.as_bytes(),
                        Some(4),
                    )?;
                    header.insert_header(header::HOST, endpoint.authority.as_str())?;
                    header
                        .insert_header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")?;
                    header.insert_header(header::CONTENT_LENGTH, length.as_str())?;
                    Ok(header)
                },
                form,
                MAX_ANSWER_BYTES,
            )
            .await?;
        if answer.status != 200 {
            let error: TokenError = serde_json::from_slice(&answer.body).unwrap_or_default();
            let detail = match (error.error_code, error.error_message) {
                (Some(code), Some(message)) => format!("ExpressPlay {code}: {message}"),
                (Some(code), None) => format!("ExpressPlay {code}"),
                _ => format!("ExpressPlay token service answered {}", answer.status),
            };
            tracing::warn!(provider = %self.config.name, status = answer.status, reason = %detail, "token service refused");
            return Err(Problem::new(Refusal::VendorTokenRefused).with_detail(detail));
        }
        Ok(Authorization {
            path_and_query: Some(self.license_path(&answer.body, request.drm)?),
            expires_at: Some(now + token_reuse(self.token_ttl, request.drm, &request.policy)),
            ..Authorization::default()
        })
    }

    fn refusal_reason(&self, headers: &HeaderMap) -> Option<String> {
        super::reason_in(self.config.error_header.as_ref(), headers)
    }

    fn upstreams(&self) -> Vec<Arc<Upstream>> {
        [
            &self.token_service,
            &self.playready_token_service,
            &self.fairplay_token_service,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }

    fn upstreams_for(&self, drm: Drm) -> Vec<Arc<Upstream>> {
        let service = match drm {
            Drm::Widevine => &self.token_service,
            Drm::PlayReady => &self.playready_token_service,
            Drm::FairPlay => &self.fairplay_token_service,
            Drm::ClearKey => &None,
        };
        service.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    #[test]
    fn a_rental_token_is_reused_for_a_tenth_of_the_rental_at_most() {
        let policy = |persistent, license_duration_seconds| Policy {
            security_level: 1,
            hdcp: Hdcp::None,
            license_duration_seconds,
            persistent,
            renewal_interval_seconds: 0,
            renewal_grace_seconds: 0,
        };
        let hour = Duration::from_secs(3600);
        assert_eq!(
            token_reuse(hour, Drm::PlayReady, &policy(true, 600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            token_reuse(hour, Drm::PlayReady, &policy(true, 864_000)),
            hour
        );
        // Bought, not rented: the token's own lifetime.
        assert_eq!(token_reuse(hour, Drm::PlayReady, &policy(false, 600)), hour);
        assert_eq!(token_reuse(hour, Drm::Widevine, &policy(true, 600)), hour);
    }
}
