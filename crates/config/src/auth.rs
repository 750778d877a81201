//! `[auth]`: where user tokens come from and the keys that verify them.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuthFile {
    #[serde(default = "default_token_sources")]
    pub sources: Vec<TokenSource>,
    #[serde(default = "default_query_parameter")]
    pub query_parameter: String,
    #[serde(default = "default_cookie")]
    pub cookie: String,
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    #[serde(default = "default_reload_seconds")]
    pub reload_seconds: u64,
    #[serde(default = "default_cache_entries")]
    pub cache_entries: u64,
    /// The verified-token cache's budget in bytes, beside its entry count.
    #[serde(default = "default_auth_cache_bytes")]
    pub cache_max_bytes: u64,
    /// Tokens longer than this are refused before any parsing or signature work.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Every token buys one new stream.
    #[serde(default)]
    pub single_use: bool,
    /// A claim that makes the token carrying it (`true`) single-use where `single_use` is off.
    pub single_use_claim: Option<String>,
    /// The longest a single-use token may live: its record is kept until it expires.
    #[serde(default = "default_single_use_max_lifetime")]
    pub single_use_max_lifetime_seconds: u64,
    pub keys: Vec<AuthKey>,
}

pub(super) fn default_single_use_max_lifetime() -> u64 {
    86_400
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenSource {
    Header,
    Query,
    Cookie,
}

pub(super) fn default_token_sources() -> Vec<TokenSource> {
    vec![TokenSource::Header, TokenSource::Query, TokenSource::Cookie]
}

pub(super) fn default_query_parameter() -> String {
    "token".into()
}

pub(super) fn default_cookie() -> String {
    "licensegate_token".into()
}

pub(super) fn default_user_claim() -> String {
    "sub".into()
}

pub(super) fn default_leeway() -> u64 {
    30
}

pub(super) fn default_auth_cache_bytes() -> u64 {
    64 * 1024 * 1024
}

pub(super) fn default_max_token_bytes() -> usize {
    8 * 1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub(super) enum AuthKey {
    /// A shared HMAC secret.
    Secret {
        algorithm: String,
        secret: String,
        #[serde(default)]
        encoding: SecretEncoding,
        kid: Option<String>,
    },
    /// A public key file (RSA, EC or Ed25519) in PEM.
    Pem {
        algorithm: String,
        path: String,
        kid: Option<String>,
    },
    /// A JWKS file; each key is selected by its `kid`.
    Jwks { path: String },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretEncoding {
    #[default]
    Text,
    Hex,
    Base64,
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub sources: Vec<TokenSource>,
    pub query_parameter: String,
    pub cookie: String,
    pub user_claim: String,
    pub leeway_seconds: u64,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub reload_interval: Duration,
    pub cache_entries: u64,
    pub cache_max_bytes: u64,
    pub max_token_bytes: usize,
    pub single_use: SingleUse,
    pub keys: Vec<AuthKeySource>,
}

/// Which tokens buy one new stream only, and how long one may live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SingleUse {
    pub every_token: bool,
    pub claim: Option<String>,
    pub max_lifetime: Duration,
}

impl SingleUse {
    /// Whether any token can be single-use (and so the store is needed).
    pub fn enabled(&self) -> bool {
        self.every_token || self.claim.is_some()
    }
}

#[derive(Debug, Clone)]
pub enum AuthKeySource {
    Secret {
        algorithm: Algorithm,
        secret: Vec<u8>,
        kid: Option<String>,
    },
    Pem {
        algorithm: Algorithm,
        path: PathBuf,
        kid: Option<String>,
    },
    Jwks {
        path: PathBuf,
    },
}

pub(super) fn validate_auth(auth: AuthFile) -> Result<AuthSettings, ConfigError> {
    if auth.sources.is_empty() {
        return Err(ConfigError::new(
            "auth.sources",
            "name at least one token source",
        ));
    }
    if auth.keys.is_empty() {
        return Err(ConfigError::new("auth.keys", "configure at least one key"));
    }
    at_least_one("auth.reload_seconds", auth.reload_seconds)?;
    at_least_one("auth.cache_entries", auth.cache_entries)?;
    if auth.cache_max_bytes < auth.cache_entries {
        return Err(ConfigError::new(
            "auth.cache_max_bytes",
            "must be at least auth.cache_entries",
        ));
    }
    if !(256..=65536).contains(&auth.max_token_bytes) {
        return Err(ConfigError::new(
            "auth.max_token_bytes",
            "must be between 256 and 65536",
        ));
    }
    at_least_one(
        "auth.single_use_max_lifetime_seconds",
        auth.single_use_max_lifetime_seconds,
    )?;
    if auth.single_use_claim.as_deref() == Some("") {
        return Err(ConfigError::new(
            "auth.single_use_claim",
            "name a claim, or leave the key out",
        ));
    }
    let mut keys = Vec::with_capacity(auth.keys.len());
    for (index, key) in auth.keys.into_iter().enumerate() {
        let at = |field: &str| format!("auth.keys[{index}].{field}");
        let algorithm_of = |name: &str| {
            name.parse::<Algorithm>().map_err(|_| {
                ConfigError::new(at("algorithm"), format!("'{name}' is not a JWT algorithm"))
            })
        };
        keys.push(match key {
            AuthKey::Secret {
                algorithm,
                secret,
                encoding,
                kid,
            } => {
                let algorithm = algorithm_of(&algorithm)?;
                if !matches!(
                    algorithm,
                    Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
                ) {
                    return Err(ConfigError::new(
                        at("algorithm"),
                        "a secret signs HS256, HS384 or HS512",
                    ));
                }
                let secret = decode_secret(&secret, encoding)
                    .map_err(|e| ConfigError::new(at("secret"), e))?;
                if secret.len() < 32 {
                    return Err(ConfigError::new(at("secret"), "use at least 32 bytes"));
                }
                AuthKeySource::Secret {
                    algorithm,
                    secret,
                    kid,
                }
            }
            AuthKey::Pem {
                algorithm,
                path,
                kid,
            } => {
                let algorithm = algorithm_of(&algorithm)?;
                if matches!(
                    algorithm,
                    Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
                ) {
                    return Err(ConfigError::new(
                        at("algorithm"),
                        "HMAC algorithms take kind = \"secret\"",
                    ));
                }
                AuthKeySource::Pem {
                    algorithm,
                    path: path.into(),
                    kid,
                }
            }
            AuthKey::Jwks { path } => AuthKeySource::Jwks { path: path.into() },
        });
    }
    Ok(AuthSettings {
        sources: auth.sources,
        query_parameter: auth.query_parameter,
        cookie: auth.cookie,
        user_claim: auth.user_claim,
        leeway_seconds: auth.leeway_seconds,
        issuer: auth.issuer,
        audience: auth.audience,
        reload_interval: Duration::from_secs(auth.reload_seconds),
        cache_entries: auth.cache_entries,
        cache_max_bytes: auth.cache_max_bytes,
        max_token_bytes: auth.max_token_bytes,
        single_use: SingleUse {
            every_token: auth.single_use,
            claim: auth.single_use_claim,
            max_lifetime: Duration::from_secs(auth.single_use_max_lifetime_seconds),
        },
        keys,
    })
}

pub fn decode_secret(text: &str, encoding: SecretEncoding) -> Result<Vec<u8>, String> {
    use base64::Engine;
    match encoding {
        SecretEncoding::Text => Ok(text.as_bytes().to_vec()),
        SecretEncoding::Hex => hex::decode(text.trim()).map_err(|_| "not hex".to_string()),
        SecretEncoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| "not base64".to_string()),
    }
}
