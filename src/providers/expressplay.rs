//! ExpressPlay (Widevine): the token service turns the key and policy into a license URL
//! carrying an ExpressPlay token; the challenge then goes to that URL. Tokens are redeemable
//! until they expire, so a URL is reused per user, content and policy.

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
    /// The token service, e.g. `https://wv-gen.test.expressplay.com/hms/wv/token`.
    token_url: String,
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

fn default_token_ttl() -> u64 {
    3600
}
fn yes() -> bool {
    true
}

pub(crate) struct ExpressPlay {
    config: Arc<ProviderConfig>,
    token_service: Arc<Upstream>,
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
        let token_endpoint = parse_endpoint(&settings.token_url)
            .map_err(|e| ConfigError::new(key("token_url"), e))?;
        if settings.customer_authenticator.is_empty() {
            return Err(ConfigError::new(key("customer_authenticator"), "is empty"));
        }
        if !(1..=MAX_TOKEN_TTL_SECONDS).contains(&settings.token_ttl_seconds) {
            return Err(ConfigError::new(
                key("token_ttl_seconds"),
                format!("must be between 1 and {MAX_TOKEN_TTL_SECONDS} (30 days)"),
            ));
        }
        let token_service = Arc::new(Upstream::new(
            config.clone(),
            &[Arc::new(token_endpoint)],
            format!("{} token service", config.name),
            idle_timeout,
        ));
        let fairplay_token_service = settings
            .fairplay_token_url
            .map(|url| {
                let endpoint = parse_endpoint(&url)
                    .map_err(|e| ConfigError::new(key("fairplay_token_url"), e))?;
                Ok::<_, ConfigError>(Arc::new(Upstream::new(
                    config.clone(),
                    &[Arc::new(endpoint)],
                    format!("{} FairPlay token service", config.name),
                    idle_timeout,
                )))
            })
            .transpose()?;
        Ok(Self {
            token_service,
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
        // Correlates ExpressPlay's redemption logs with ours: the request that minted the token.
        let cookie: String = request
            .request_id
            .chars()
            .filter(|c| *c != '-')
            .take(32)
            .collect();
        form.append_pair("cookie", &cookie);
        Ok(form.finish())
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

    /// The license path and query from the token service's `text/uri-list` answer; the URL
    /// must point at one of the provider's configured license endpoints for `drm`.
    fn license_path(&self, answer: &[u8], drm: Drm) -> Result<String, Problem> {
        let invalid =
            |why: &str| Problem::new(Refusal::VendorTokenInvalid).with_detail(why.to_string());
        let text = std::str::from_utf8(answer).map_err(|_| invalid("the answer is not text"))?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty() && !line.starts_with('#'))
            .ok_or_else(|| invalid("the answer holds no URL"))?;
        let url = parse_endpoint(line).map_err(|_| invalid("the answer is not a URL"))?;
        let known = self
            .config
            .endpoints
            .for_drm(drm)
            .unwrap_or_default()
            .iter()
            .any(|endpoint| same_origin(endpoint, &url));
        if !known {
            return Err(invalid(&format!(
                "the license URL's host {} is not among the provider's endpoints",
                url.authority
            )));
        }
        Ok(url.path_and_query)
    }
}

fn same_origin(a: &Endpoint, b: &Endpoint) -> bool {
    a.tls == b.tls && a.port == b.port && a.host.eq_ignore_ascii_case(&b.host)
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
        let (token_service, form) = match (request.drm, &self.fairplay_token_service) {
            (Drm::Widevine, _) => (&self.token_service, self.token_form(request)?),
            (Drm::FairPlay, Some(service)) => (service, self.fairplay_token_form(request)?),
            _ => return Err(Problem::drm_not_routed(request.drm.as_str())),
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
            expires_at: Some(now + self.token_ttl),
            ..Authorization::default()
        })
    }

    fn refusal_reason(&self, headers: &HeaderMap) -> Option<String> {
        super::reason_in(self.config.error_header.as_ref(), headers)
    }

    fn upstreams(&self) -> Vec<Arc<Upstream>> {
        std::iter::once(self.token_service.clone())
            .chain(self.fairplay_token_service.clone())
            .collect()
    }
}
