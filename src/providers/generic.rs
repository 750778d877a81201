//! Any provider whose authorization is headers and query parameters built from the request:
//! EZDRM-style URL parameters, in-house license servers, single-use token services. Values are
//! templates with placeholders (`{user}`, `{content}`, `{kid}`, `{drm}`, `{policy.*}`, `{jwt}`);
//! an optional JWT is signed HS256 or RS256 with configured claims.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use http::{HeaderMap, HeaderName};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::Value;

use super::{Authorization, FairPlayWire, LicenseRequest, Minting, Provider};
use crate::config::{ConfigError, ProviderConfig, SecretEncoding, decode_secret};
use crate::http::problem::Problem;
use crate::policy::Hdcp;
use licensegate_drm::fairplay::{CkcSource, SpcFormat};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    query: BTreeMap<String, String>,
    jwt: Option<JwtSettings>,
    /// The provider accepts each authorization once: mint per attempt, never cache.
    #[serde(default)]
    single_use: bool,
    #[serde(default = "default_token_ttl")]
    token_ttl_seconds: u64,
    /// How the vendor takes the FairPlay SPC: raw, base64, form, form-unescaped, json or
    /// apple-json.
    #[serde(default = "raw_spc")]
    fairplay_body: SpcFormat,
    /// How the vendor answers the CKC: raw, base64, ckc-xml, json, apple-json, or auto (any of
    /// them, as players' readers accept).
    #[serde(default = "auto")]
    fairplay_ckc: String,
}

fn raw_spc() -> SpcFormat {
    SpcFormat::Raw
}

fn auto() -> String {
    "auto".into()
}

fn default_token_ttl() -> u64 {
    3600
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtSettings {
    algorithm: String,
    /// HS256: the shared secret.
    secret: Option<String>,
    #[serde(default)]
    secret_encoding: SecretEncoding,
    /// RS256: a PEM private key file.
    private_key_file: Option<String>,
    key_id: Option<String>,
    /// Claim values; strings are templates, other values are sent as written.
    #[serde(default)]
    claims: BTreeMap<String, toml::Value>,
}

/// A value with placeholders, parsed once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    User,
    Content,
    Kid,
    Kids,
    Drm,
    Policy,
    SecurityLevel,
    Hdcp,
    LicenseDuration,
    RenewalInterval,
    RenewalGrace,
    Persistent,
    RequestId,
    ClientIp,
    Jwt,
}

impl Piece {
    fn named(name: &str) -> Option<Piece> {
        Some(match name {
            "user" => Piece::User,
            "content" => Piece::Content,
            "kid" => Piece::Kid,
            "kids" => Piece::Kids,
            "drm" => Piece::Drm,
            "policy" => Piece::Policy,
            "policy.security_level" => Piece::SecurityLevel,
            "policy.hdcp" => Piece::Hdcp,
            "policy.license_duration_seconds" => Piece::LicenseDuration,
            "policy.renewal_interval_seconds" => Piece::RenewalInterval,
            "policy.renewal_grace_seconds" => Piece::RenewalGrace,
            "policy.persistent" => Piece::Persistent,
            "request_id" => Piece::RequestId,
            "client_ip" => Piece::ClientIp,
            "jwt" => Piece::Jwt,
            _ => return None,
        })
    }

    /// Differs from one request to the next, so an authorization using it cannot be shared.
    fn per_request(&self) -> bool {
        matches!(self, Piece::RequestId | Piece::ClientIp)
    }
}

impl Template {
    /// `{name}` is a placeholder, `{{` and `}}` are literal braces.
    fn parse(key: &str, text: &str) -> Result<Template, ConfigError> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let name: String = chars.by_ref().take_while(|c| *c != '}').collect();
                    let piece = Piece::named(&name).ok_or_else(|| {
                        ConfigError::new(key, format!("unknown placeholder {{{name}}}"))
                    })?;
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(piece);
                }
                '}' => return Err(ConfigError::new(key, "unmatched '}' (write '}}')")),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template(pieces))
    }

    fn uses(&self, wanted: impl Fn(&Piece) -> bool) -> bool {
        self.0.iter().any(wanted)
    }

    fn render(&self, request: &LicenseRequest, jwt: Option<&str>) -> String {
        let mut out = String::new();
        let kid = |kid: &crate::challenge::Kid| hex::encode(kid.0);
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::User => out.push_str(request.user_or_anonymous()),
                Piece::Content => out.push_str(&request.content.id),
                Piece::Kid => {
                    if let Some(first) = request.content.key_ids.first() {
                        out.push_str(&kid(first));
                    }
                }
                Piece::Kids => out.push_str(
                    &request
                        .content
                        .key_ids
                        .iter()
                        .map(kid)
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                Piece::Drm => out.push_str(request.drm.as_str()),
                Piece::Policy => out.push_str(&request.policy_name),
                Piece::SecurityLevel => out.push_str(&request.policy.security_level.to_string()),
                Piece::Hdcp => out.push_str(match request.policy.hdcp {
                    Hdcp::None => "none",
                    Hdcp::V1_4 => "1.4",
                    Hdcp::V2_2 => "2.2",
                }),
                Piece::LicenseDuration => {
                    out.push_str(&request.policy.license_duration_seconds.to_string())
                }
                Piece::RenewalInterval => {
                    out.push_str(&request.policy.renewal_interval_seconds.to_string())
                }
                Piece::RenewalGrace => {
                    out.push_str(&request.policy.renewal_grace_seconds.to_string())
                }
                Piece::Persistent => out.push_str(&request.policy.persistent.to_string()),
                Piece::RequestId => out.push_str(&request.request_id),
                Piece::ClientIp => {
                    if let Some(ip) = request.client_ip {
                        out.push_str(&ip.to_string());
                    }
                }
                Piece::Jwt => out.push_str(jwt.unwrap_or_default()),
            }
        }
        out
    }
}

enum Claim {
    Template(Template),
    Literal(Value),
}

struct Jwt {
    header: Header,
    key: EncodingKey,
    claims: Vec<(String, Claim)>,
}

pub(crate) struct Generic {
    config: Arc<ProviderConfig>,
    fairplay: FairPlayWire,
    /// With the name as configured, for error messages.
    headers: Vec<(HeaderName, String, Template)>,
    query: Vec<(String, Template)>,
    jwt: Option<Jwt>,
    single_use: bool,
    token_ttl: Duration,
}

impl Generic {
    pub(crate) fn new(config: Arc<ProviderConfig>) -> Result<Self, ConfigError> {
        let settings: Settings = super::settings(&config)?;
        let key = |field: &str| format!("providers.{}.settings.{field}", config.name);
        let mut headers = Vec::new();
        for (name, text) in &settings.headers {
            let field = key(&format!("headers.{name}"));
            let header = HeaderName::try_from(name.as_str())
                .map_err(|_| ConfigError::new(&field, "not a header name"))?;
            headers.push((header, name.clone(), Template::parse(&field, text)?));
        }
        let mut query = Vec::new();
        for (name, text) in &settings.query {
            let field = key(&format!("query.{name}"));
            query.push((name.clone(), Template::parse(&field, text)?));
        }
        let jwt = settings
            .jwt
            .map(|jwt| build_jwt(&key("jwt"), jwt))
            .transpose()?;
        let templates = headers
            .iter()
            .map(|(_, name, t)| (key(&format!("headers.{name}")), t))
            .chain(
                query
                    .iter()
                    .map(|(name, t)| (key(&format!("query.{name}")), t)),
            )
            .chain(jwt.iter().flat_map(|jwt| {
                jwt.claims.iter().filter_map(|(name, claim)| match claim {
                    Claim::Template(t) => Some((key(&format!("jwt.claims.{name}")), t)),
                    Claim::Literal(_) => None,
                })
            }));
        for (field, template) in templates {
            if !settings.single_use && template.uses(Piece::per_request) {
                return Err(ConfigError::new(
                    field,
                    "{request_id} and {client_ip} change with every request: set single_use = true",
                ));
            }
            if template.uses(|p| *p == Piece::Jwt) && jwt.is_none() {
                return Err(ConfigError::new(field, "{jwt} needs [settings.jwt]"));
            }
        }
        let fairplay =
            FairPlayWire {
                spc: settings.fairplay_body,
                ckc: match settings.fairplay_ckc.as_str() {
                    "auto" => CkcSource::Any,
                    format => CkcSource::Declared(format.parse().map_err(|e| {
                        ConfigError::new(key("fairplay_ckc"), format!("{e}, or auto"))
                    })?),
                },
            };
        if settings.token_ttl_seconds == 0 {
            return Err(ConfigError::new(
                key("token_ttl_seconds"),
                "must be at least 1",
            ));
        }
        Ok(Self {
            fairplay,
            headers,
            query,
            jwt,
            single_use: settings.single_use,
            token_ttl: Duration::from_secs(settings.token_ttl_seconds),
            config,
        })
    }

    fn sign(
        &self,
        jwt: &Jwt,
        request: &LicenseRequest,
        now: SystemTime,
    ) -> Result<String, Problem> {
        let seconds = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut claims = serde_json::Map::new();
        claims.insert("iat".into(), seconds(now).into());
        claims.insert("exp".into(), seconds(now + self.token_ttl).into());
        claims.insert("jti".into(), uuid::Uuid::new_v4().to_string().into());
        for (name, claim) in &jwt.claims {
            let value = match claim {
                Claim::Template(template) => Value::String(template.render(request, None)),
                Claim::Literal(value) => value.clone(),
            };
            claims.insert(name.clone(), value);
        }
        jsonwebtoken::encode(&jwt.header, &claims, &jwt.key)
            .map_err(|e| super::signing_failed(&self.config.name, e))
    }
}

fn build_jwt(prefix: &str, settings: JwtSettings) -> Result<Jwt, ConfigError> {
    let key = |field: &str| format!("{prefix}.{field}");
    let (algorithm, encoding_key) = match settings.algorithm.as_str() {
        "HS256" => {
            let secret = settings
                .secret
                .ok_or_else(|| ConfigError::new(key("secret"), "HS256 needs a secret"))?;
            let bytes = decode_secret(&secret, settings.secret_encoding)
                .map_err(|e| ConfigError::new(key("secret"), e))?;
            (Algorithm::HS256, EncodingKey::from_secret(&bytes))
        }
        "RS256" => {
            let path = settings.private_key_file.ok_or_else(|| {
                ConfigError::new(key("private_key_file"), "RS256 needs a private key")
            })?;
            let pem = std::fs::read(&path)
                .map_err(|e| ConfigError::new(key("private_key_file"), format!("{path}: {e}")))?;
            let encoding_key = EncodingKey::from_rsa_pem(&pem)
                .map_err(|e| ConfigError::new(key("private_key_file"), e.to_string()))?;
            (Algorithm::RS256, encoding_key)
        }
        _ => return Err(ConfigError::new(key("algorithm"), "HS256 or RS256")),
    };
    let mut header = Header::new(algorithm);
    header.kid = settings.key_id;
    let mut claims = Vec::new();
    for (name, value) in settings.claims {
        let field = key(&format!("claims.{name}"));
        let claim = match value {
            toml::Value::String(text) => {
                let template = Template::parse(&field, &text)?;
                if template.uses(|p| *p == Piece::Jwt) {
                    return Err(ConfigError::new(field, "a claim cannot hold {jwt}"));
                }
                Claim::Template(template)
            }
            other => Claim::Literal(
                serde_json::to_value(other).map_err(|e| ConfigError::new(&field, e.to_string()))?,
            ),
        };
        claims.push((name, claim));
    }
    Ok(Jwt {
        header,
        key: encoding_key,
        claims,
    })
}

#[async_trait]
impl Provider for Generic {
    fn minting(&self) -> Minting {
        if self.single_use {
            Minting::PerAttempt
        } else if self.headers.is_empty() && self.query.is_empty() {
            Minting::Nothing
        } else {
            Minting::Reusable
        }
    }

    async fn authorize(&self, request: &LicenseRequest) -> Result<Authorization, Problem> {
        let now = SystemTime::now();
        let jwt = self
            .jwt
            .as_ref()
            .map(|jwt| self.sign(jwt, request, now))
            .transpose()?;
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, _, template) in &self.headers {
            let value = template.render(request, jwt.as_deref());
            headers.push((name.clone(), super::header_value(&value)?));
        }
        let query = (!self.query.is_empty()).then(|| {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            for (name, template) in &self.query {
                form.append_pair(name, &template.render(request, jwt.as_deref()));
            }
            form.finish()
        });
        Ok(Authorization {
            headers,
            query,
            path_and_query: None,
            expires_at: Some(now + self.token_ttl),
        })
    }

    fn refusal_reason(&self, headers: &HeaderMap) -> Option<String> {
        super::reason_in(self.config.error_header.as_ref(), headers)
    }

    fn fairplay_wire(&self) -> FairPlayWire {
        self.fairplay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_placeholders_and_escaped_braces() {
        let template = Template::parse("k", "Bearer {jwt} {{x}}/{policy.hdcp}").unwrap();
        assert_eq!(
            template.0,
            vec![
                Piece::Text("Bearer ".into()),
                Piece::Jwt,
                Piece::Text(" {x}/".into()),
                Piece::Hdcp
            ]
        );
        let err = Template::parse("providers.v.settings.query.p", "{usr}").unwrap_err();
        assert_eq!(err.key, "providers.v.settings.query.p");
        assert!(err.reason.contains("{usr}"));
        assert!(Template::parse("k", "a}b").is_err());
    }
}
