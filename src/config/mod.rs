//! Configuration in layers: the TOML file's shape (`file`), environment substitution (`env`),
//! and the validated internal [`Config`] that the rest of licensegate sees. Every error names
//! the key path it is about.

mod env;
mod file;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use crate::drm::Drm;
use crate::keyseed::KeySeed;
pub use file::{
    DeviceDecision, DeviceField, DeviceStoreKind, Hdcp, HealthCheckKind, LogFormat, Policy,
    Protocol, ProviderKind, SecretEncoding, TokenSource,
};
pub use jsonwebtoken::Algorithm;

/// The largest challenge Pingora's retry buffer holds whole; beyond it a retry would send a
/// truncated body, so licensegate refuses such bodies instead.
pub const RETRY_BUFFER_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug)]
pub struct Config {
    pub license_listener: SocketAddr,
    pub admin_listener: SocketAddr,
    pub license_max_connections: usize,
    pub admin_max_connections: usize,
    pub tls: Option<TlsFiles>,
    pub server: ServerSettings,
    pub cors: CorsSettings,
    pub providers: BTreeMap<String, Arc<ProviderConfig>>,
    pub routes: BTreeMap<Drm, Arc<ProviderConfig>>,
    pub auth: Option<AuthSettings>,
    pub catalog: Option<CatalogSettings>,
    pub key_seeds: BTreeMap<String, KeySeed>,
    pub entitlement: EntitlementSettings,
    pub policies: BTreeMap<String, Arc<Policy>>,
    /// The directory served under `/demo/` on the admin listener, when enabled.
    pub demo_root: Option<PathBuf>,
    pub authorization_cache: AuthorizationCacheSettings,
    pub devices: Option<DeviceSettings>,
    /// Warnings about old names the file still uses.
    pub deprecations: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct DeviceSettings {
    pub max_per_user: u32,
    pub claim: String,
    pub slot_idle: Duration,
    pub identity: Vec<DeviceField>,
    pub android_identity: Vec<DeviceField>,
    pub unreported: DeviceDecision,
    pub untrusted: DeviceDecision,
    pub store: DeviceStoreConfig,
    pub store_timeout: Duration,
    pub fail_open: bool,
    pub admin_token: Option<String>,
}

#[derive(Debug, Clone)]
pub enum DeviceStoreConfig {
    Embedded(PathBuf),
    Redis(String),
}

#[derive(Debug, Clone)]
pub struct AuthorizationCacheSettings {
    pub max_entries: u64,
    pub max_bytes: u64,
    pub safety_margin: Duration,
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
    pub keys: Vec<AuthKeySource>,
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

#[derive(Debug)]
pub struct CatalogSettings {
    pub path: PathBuf,
    pub reload_interval: Duration,
}

#[derive(Debug)]
pub struct EntitlementSettings {
    pub claim: String,
    pub default_policy: String,
    pub service: Option<EntitlementServiceSettings>,
}

#[derive(Debug, Clone)]
pub struct EntitlementServiceSettings {
    pub url: url::Url,
    pub timeout: Duration,
    pub cache_ttl: Duration,
    pub cache_entries: u64,
    pub fail_open: bool,
}

/// The policy used where neither content nor entitlement names one and the config defines
/// no `[policies.default]`: software security, no output protection, no expiry.
const BUILT_IN_DEFAULT_POLICY: Policy = Policy {
    security_level: 1,
    hdcp: Hdcp::None,
    license_duration_seconds: 0,
    persistent: false,
    renewal_interval_seconds: 0,
};

#[derive(Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug)]
pub struct ServerSettings {
    pub threads: usize,
    pub grace_period_seconds: u64,
    pub graceful_shutdown_timeout_seconds: u64,
    pub upstream_keepalive_pool_size: usize,
    pub upstream_idle_timeout: Duration,
    pub max_challenge_bytes: usize,
    /// How long a player may take to send its challenge once the headers arrived.
    pub challenge_read_timeout: Duration,
    pub header_read_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub answer_write_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_header_count: usize,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub service_certificate_ttl: Duration,
    pub log_format: LogFormat,
    pub upgrade_socket: PathBuf,
}

#[derive(Debug)]
pub struct CorsSettings {
    pub any_origin: bool,
    pub origins: Vec<String>,
    /// Pre-joined header values: they are sent on every answer.
    pub allowed_headers: String,
    pub expose_headers: String,
    pub max_age_seconds: u64,
}

#[derive(Debug)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    pub endpoints: EndpointSets,
    pub protocol: Protocol,
    pub tls_verify: bool,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub total_timeout: Duration,
    pub max_concurrent_streams: usize,
    pub retries: usize,
    pub health_check_interval: Duration,
    pub health_check: HealthCheckKind,
    pub health_check_path: String,
    pub ejection_consecutive_failures: u32,
    pub ejection_duration: Duration,
    pub dns_refresh: Duration,
    pub error_header: Option<HeaderName>,
    /// Checked and read by the provider's provider (`crate::providers`).
    pub settings: Option<toml::Value>,
}

/// A provider's license URLs: one set for every DRM, or one per DRM.
#[derive(Debug)]
pub enum EndpointSets {
    Shared(Vec<Arc<Endpoint>>),
    PerDrm(BTreeMap<Drm, Vec<Arc<Endpoint>>>),
}

impl EndpointSets {
    pub fn for_drm(&self, drm: Drm) -> Option<&[Arc<Endpoint>]> {
        match self {
            EndpointSets::Shared(endpoints) if !endpoints.is_empty() => Some(endpoints),
            EndpointSets::Shared(_) => None,
            EndpointSets::PerDrm(sets) => sets.get(&drm).map(Vec::as_slice),
        }
    }

    /// Each set with the DRM it is for (`None`: every DRM).
    pub fn sets(&self) -> Vec<(Option<Drm>, &[Arc<Endpoint>])> {
        match self {
            EndpointSets::Shared(endpoints) if endpoints.is_empty() => Vec::new(),
            EndpointSets::Shared(endpoints) => vec![(None, endpoints.as_slice())],
            EndpointSets::PerDrm(sets) => sets
                .iter()
                .map(|(drm, endpoints)| (Some(*drm), endpoints.as_slice()))
                .collect(),
        }
    }
}

/// One license URL of a provider, taken apart once at start so requests only copy pieces.
#[derive(Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `host[:port]` as the `Host` header / `:authority` carries it.
    pub authority: String,
    pub path_and_query: String,
}

impl Config {
    /// Reads, substitutes and validates the file at `path` against the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path.display().to_string(), e.to_string()))?;
        Self::parse(&text, &|name| std::env::var(name).ok())
    }

    pub fn parse(
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut tree: toml::Value = toml::from_str(text).map_err(|e| syntax_error(text, &e))?;
        let deprecations = rename_deprecated_sections(&mut tree)?;
        env::substitute(&mut tree, "", lookup)?;
        let file: file::FileConfig = serde_path_to_error::deserialize(tree).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::new(
                if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                without_values(e.into_inner().message()),
            )
        })?;
        let mut config = validate(file)?;
        config.deprecations = deprecations;
        Ok(config)
    }
}

/// Sections renamed in 0.2, still read under their old names for one release.
const RENAMED_SECTIONS: [(&str, &str); 2] = [
    ("vendors", "providers"),
    ("token_cache", "authorization_cache"),
];

/// Moves a section written under its old name to the new one, and says so.
fn rename_deprecated_sections(tree: &mut toml::Value) -> Result<Vec<String>, ConfigError> {
    let mut deprecations = Vec::new();
    let Some(table) = tree.as_table_mut() else {
        return Ok(deprecations);
    };
    for (old, new) in RENAMED_SECTIONS {
        let Some(section) = table.remove(old) else {
            continue;
        };
        if table.contains_key(new) {
            return Err(ConfigError::new(
                old,
                format!("[{old}] is the old name of [{new}]; keep only [{new}]"),
            ));
        }
        table.insert(new.to_string(), section);
        deprecations.push(format!(
            "[{old}] is deprecated and read as [{new}] (errors name it so); rename it, the old \
             name goes in the next release"
        ));
    }
    Ok(deprecations)
}

/// A TOML syntax error as `line L, column C: reason`; the offending text is not repeated, as
/// it may be a secret.
pub fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let key = match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |at| at + 1) + 1;
            format!("(syntax) line {line}, column {column}")
        }
        None => "(syntax)".into(),
    };
    ConfigError::new(key, error.message().to_string())
}

/// A deserializer's message without the value it quotes (`invalid type: string "s3cr3t",
/// expected u64` becomes `invalid type: string, expected u64`): the value may be a secret, and
/// the key path already says where to look.
pub fn without_values(message: &str) -> String {
    // Other messages quote names (unknown fields, variants), which are worth showing.
    if !message.starts_with("invalid ") {
        return message.to_string();
    }
    let mut out = String::with_capacity(message.len());
    let mut quote: Option<char> = None;
    for c in message.chars() {
        match quote {
            Some(open) if c == open => quote = None,
            Some(_) => {}
            None if c == '"' || c == '`' => {
                quote = Some(c);
                if out.ends_with(' ') {
                    out.pop();
                }
            }
            None => out.push(c),
        }
    }
    out
}

fn validate(file: file::FileConfig) -> Result<Config, ConfigError> {
    let license_listener = socket_addr("listeners.license", &file.listeners.license)?;
    let admin_listener = socket_addr("listeners.admin", &file.listeners.admin)?;
    if license_listener == admin_listener {
        return Err(ConfigError::new(
            "listeners.admin",
            "must differ from listeners.license",
        ));
    }
    for (key, value) in [
        (
            "listeners.license_max_connections",
            file.listeners.license_max_connections,
        ),
        (
            "listeners.admin_max_connections",
            file.listeners.admin_max_connections,
        ),
    ] {
        if value == 0 {
            return Err(ConfigError::new(key, "must be at least 1"));
        }
    }
    let license_max_connections = file.listeners.license_max_connections;
    let admin_max_connections = file.listeners.admin_max_connections;
    let tls = file
        .listeners
        .tls
        .map(|tls| {
            for (key, value) in [("cert", &tls.cert), ("key", &tls.key)] {
                if !Path::new(value).is_file() {
                    return Err(ConfigError::new(
                        format!("listeners.tls.{key}"),
                        format!("no file at '{value}'"),
                    ));
                }
            }
            Ok(TlsFiles {
                cert: tls.cert.into(),
                key: tls.key.into(),
            })
        })
        .transpose()?;

    let server = validate_server(file.server)?;

    let mut providers = BTreeMap::new();
    for (name, provider) in file.providers {
        let checked = validate_vendor(&name, provider)?;
        providers.insert(name, Arc::new(checked));
    }

    let mut routes = BTreeMap::new();
    for (drm, provider_name) in file.routes {
        let Some(provider) = providers.get(&provider_name) else {
            return Err(ConfigError::new(
                format!("routes.{drm}"),
                format!("no provider named '{provider_name}' under [providers]"),
            ));
        };
        if provider.kind == ProviderKind::Clearkey && drm != Drm::ClearKey {
            return Err(ConfigError::new(
                format!("routes.{drm}"),
                format!(
                    "'{provider_name}' is the built-in ClearKey server; it serves only clearkey"
                ),
            ));
        }
        if provider.kind != ProviderKind::Clearkey && provider.endpoints.for_drm(drm).is_none() {
            return Err(ConfigError::new(
                format!("routes.{drm}"),
                format!("'{provider_name}' has no endpoints for {drm}"),
            ));
        }
        routes.insert(drm, provider.clone());
    }
    if routes.is_empty() {
        return Err(ConfigError::new(
            "routes",
            "route at least one DRM to a provider",
        ));
    }

    let cors = validate_cors(file.cors, providers.values())?;
    let auth = file.auth.map(validate_auth).transpose()?;
    if file.devices.is_some() && auth.is_none() {
        return Err(ConfigError::new(
            "devices",
            "device limits count per user: configure [auth]",
        ));
    }
    if file.catalog.is_none() {
        // Provider authorizations name content and key IDs, which only the catalog knows.
        let authorizing = providers
            .values()
            .find(|v| !matches!(v.kind, ProviderKind::Passthrough | ProviderKind::Clearkey));
        if let Some(provider) = authorizing {
            return Err(ConfigError::new(
                format!("providers.{}.kind", provider.name),
                "this provider needs the content's key IDs: configure [catalog]",
            ));
        }
    }
    let catalog = file
        .catalog
        .map(|catalog| {
            if catalog.reload_seconds == 0 {
                return Err(ConfigError::new(
                    "catalog.reload_seconds",
                    "must be at least 1",
                ));
            }
            Ok(CatalogSettings {
                path: catalog.path.into(),
                reload_interval: Duration::from_secs(catalog.reload_seconds),
            })
        })
        .transpose()?;
    let mut key_seeds = BTreeMap::new();
    for (name, text) in file.key_seeds {
        let seed =
            KeySeed::parse(&text).map_err(|e| ConfigError::new(format!("key_seeds.{name}"), e))?;
        key_seeds.insert(name, seed);
    }
    let mut policies = BTreeMap::new();
    for (name, policy) in file.policies {
        if !(1..=5).contains(&policy.security_level) {
            return Err(ConfigError::new(
                format!("policies.{name}.security_level"),
                "must be between 1 and 5",
            ));
        }
        policies.insert(name, Arc::new(policy));
    }
    let entitlement = validate_entitlement(file.entitlement, &mut policies)?;
    let demo_root = match file.demo {
        Some(demo) if demo.enabled => {
            let root = PathBuf::from(&demo.root);
            if !root.join("index.html").is_file() {
                return Err(ConfigError::new(
                    "demo.root",
                    format!("'{}' has no index.html", demo.root),
                ));
            }
            Some(root)
        }
        _ => None,
    };
    Ok(Config {
        license_listener,
        admin_listener,
        license_max_connections,
        admin_max_connections,
        tls,
        server,
        cors,
        providers,
        routes,
        auth,
        catalog,
        key_seeds,
        entitlement,
        policies,
        demo_root,
        authorization_cache: validate_token_cache(file.authorization_cache)?,
        devices: file.devices.map(validate_devices).transpose()?,
        deprecations: Vec::new(),
    })
}

fn validate_devices(devices: file::Devices) -> Result<DeviceSettings, ConfigError> {
    if devices.max_per_user == 0 {
        return Err(ConfigError::new(
            "devices.max_per_user",
            "must be at least 1",
        ));
    }
    if devices.slot_idle_seconds == 0 {
        return Err(ConfigError::new(
            "devices.slot_idle_seconds",
            "must be at least 1",
        ));
    }
    if devices.store_timeout_ms == 0 {
        return Err(ConfigError::new(
            "devices.store_timeout_ms",
            "must be at least 1",
        ));
    }
    for (key, list) in [
        ("devices.identity", &devices.identity),
        ("devices.android_identity", &devices.android_identity),
    ] {
        if list.is_empty() {
            return Err(ConfigError::new(key, "name at least one device_info field"));
        }
    }
    let store = match devices.store {
        DeviceStoreKind::Embedded => DeviceStoreConfig::Embedded(devices.path.into()),
        DeviceStoreKind::Redis => {
            let url = devices.redis_url.ok_or_else(|| {
                ConfigError::new("devices.redis_url", "the redis store needs a URL")
            })?;
            if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                return Err(ConfigError::new(
                    "devices.redis_url",
                    "must be a redis:// or rediss:// URL",
                ));
            }
            DeviceStoreConfig::Redis(url)
        }
    };
    if devices.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
        return Err(ConfigError::new(
            "devices.admin_token",
            "must be at least 16 characters",
        ));
    }
    Ok(DeviceSettings {
        max_per_user: devices.max_per_user,
        claim: devices.claim,
        slot_idle: Duration::from_secs(devices.slot_idle_seconds),
        identity: devices.identity,
        android_identity: devices.android_identity,
        unreported: devices.unreported,
        untrusted: devices.untrusted,
        store,
        store_timeout: Duration::from_millis(devices.store_timeout_ms),
        fail_open: devices.fail_open,
        admin_token: devices.admin_token,
    })
}

fn validate_token_cache(
    cache: file::AuthorizationCache,
) -> Result<AuthorizationCacheSettings, ConfigError> {
    if cache.max_entries == 0 {
        return Err(ConfigError::new(
            "authorization_cache.max_entries",
            "must be at least 1",
        ));
    }
    if cache.max_bytes < cache.max_entries {
        return Err(ConfigError::new(
            "authorization_cache.max_bytes",
            "must be at least authorization_cache.max_entries",
        ));
    }
    Ok(AuthorizationCacheSettings {
        max_entries: cache.max_entries,
        max_bytes: cache.max_bytes,
        safety_margin: Duration::from_secs(cache.safety_margin_seconds),
    })
}

fn validate_auth(auth: file::Auth) -> Result<AuthSettings, ConfigError> {
    if auth.sources.is_empty() {
        return Err(ConfigError::new(
            "auth.sources",
            "name at least one token source",
        ));
    }
    if auth.keys.is_empty() {
        return Err(ConfigError::new("auth.keys", "configure at least one key"));
    }
    if auth.reload_seconds == 0 {
        return Err(ConfigError::new(
            "auth.reload_seconds",
            "must be at least 1",
        ));
    }
    if auth.cache_entries == 0 {
        return Err(ConfigError::new("auth.cache_entries", "must be at least 1"));
    }
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
    let mut keys = Vec::with_capacity(auth.keys.len());
    for (index, key) in auth.keys.into_iter().enumerate() {
        let at = |field: &str| format!("auth.keys[{index}].{field}");
        let algorithm_of = |name: &str| {
            name.parse::<Algorithm>().map_err(|_| {
                ConfigError::new(at("algorithm"), format!("'{name}' is not a JWT algorithm"))
            })
        };
        keys.push(match key {
            file::AuthKey::Secret {
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
            file::AuthKey::Pem {
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
            file::AuthKey::Jwks { path } => AuthKeySource::Jwks { path: path.into() },
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

fn validate_entitlement(
    entitlement: file::Entitlement,
    policies: &mut BTreeMap<String, Arc<Policy>>,
) -> Result<EntitlementSettings, ConfigError> {
    if !policies.contains_key(&entitlement.default_policy) {
        if entitlement.default_policy != "default" {
            return Err(ConfigError::new(
                "entitlement.default_policy",
                format!(
                    "no policy named '{}' under [policies]",
                    entitlement.default_policy
                ),
            ));
        }
        policies.insert("default".into(), Arc::new(BUILT_IN_DEFAULT_POLICY));
    }
    let service = entitlement
        .service
        .map(|service| {
            let url = url::Url::parse(&service.url)
                .ok()
                .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
                .ok_or_else(|| {
                    ConfigError::new("entitlement.service.url", "not an http(s) URL with a host")
                })?;
            if service.timeout_ms == 0 {
                return Err(ConfigError::new(
                    "entitlement.service.timeout_ms",
                    "must be at least 1",
                ));
            }
            Ok(EntitlementServiceSettings {
                url,
                timeout: Duration::from_millis(service.timeout_ms),
                cache_ttl: Duration::from_secs(service.cache_seconds),
                cache_entries: service.cache_entries,
                fail_open: service.fail_open,
            })
        })
        .transpose()?;
    Ok(EntitlementSettings {
        claim: entitlement.claim,
        default_policy: entitlement.default_policy,
        service,
    })
}

fn validate_server(server: file::Server) -> Result<ServerSettings, ConfigError> {
    if server.threads == 0 {
        return Err(ConfigError::new("server.threads", "must be at least 1"));
    }
    if server.max_challenge_bytes == 0 || server.max_challenge_bytes > RETRY_BUFFER_BYTES {
        return Err(ConfigError::new(
            "server.max_challenge_bytes",
            format!("must be between 1 and {RETRY_BUFFER_BYTES}"),
        ));
    }
    if server.challenge_read_timeout_ms == 0 {
        return Err(ConfigError::new(
            "server.challenge_read_timeout_ms",
            "must be at least 1",
        ));
    }
    // Upper bounds: Pingora refuses more than 256 headers and the h2 crate more than 64 KiB
    // of them before licensegate could answer with problem JSON; times stay well clear of
    // overflowing a deadline.
    for (key, value, most) in [
        (
            "server.header_read_timeout_ms",
            server.header_read_timeout_ms,
            600_000,
        ),
        (
            "server.keepalive_timeout_seconds",
            server.keepalive_timeout_seconds,
            3600,
        ),
        (
            "server.answer_write_timeout_ms",
            server.answer_write_timeout_ms,
            600_000,
        ),
        (
            "server.max_header_bytes",
            server.max_header_bytes as u64,
            65_536,
        ),
        (
            "server.max_header_count",
            server.max_header_count as u64,
            256,
        ),
    ] {
        if !(1..=most).contains(&value) {
            return Err(ConfigError::new(
                key,
                format!("must be between 1 and {most}"),
            ));
        }
    }
    let mut trusted_proxies = Vec::with_capacity(server.trusted_proxies.len());
    for (index, text) in server.trusted_proxies.iter().enumerate() {
        let net = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                ConfigError::new(
                    format!("server.trusted_proxies[{index}]"),
                    format!("'{text}' is not an address or CIDR"),
                )
            })?;
        trusted_proxies.push(net);
    }
    if server.upstream_keepalive_pool_size == 0 {
        return Err(ConfigError::new(
            "server.upstream_keepalive_pool_size",
            "must be at least 1",
        ));
    }
    if server.upstream_idle_timeout_seconds == 0 {
        return Err(ConfigError::new(
            "server.upstream_idle_timeout_seconds",
            "must be at least 1 (0 would disable connection reuse)",
        ));
    }
    Ok(ServerSettings {
        threads: server.threads,
        grace_period_seconds: server.grace_period_seconds,
        graceful_shutdown_timeout_seconds: server.graceful_shutdown_timeout_seconds,
        upstream_keepalive_pool_size: server.upstream_keepalive_pool_size,
        upstream_idle_timeout: Duration::from_secs(server.upstream_idle_timeout_seconds),
        max_challenge_bytes: server.max_challenge_bytes,
        challenge_read_timeout: Duration::from_millis(server.challenge_read_timeout_ms),
        header_read_timeout: Duration::from_millis(server.header_read_timeout_ms),
        keepalive_timeout: Duration::from_secs(server.keepalive_timeout_seconds),
        answer_write_timeout: Duration::from_millis(server.answer_write_timeout_ms),
        max_header_bytes: server.max_header_bytes,
        max_header_count: server.max_header_count,
        trusted_proxies,
        service_certificate_ttl: Duration::from_secs(server.service_certificate_ttl_seconds),
        log_format: server.log_format,
        upgrade_socket: server.upgrade_socket.into(),
    })
}

fn validate_vendor(name: &str, provider: file::Provider) -> Result<ProviderConfig, ConfigError> {
    let key = |field: &str| format!("providers.{name}.{field}");
    let endpoints = match &provider.endpoints {
        file::Endpoints::Shared(urls) => {
            EndpointSets::Shared(endpoint_list(&key("endpoints"), urls)?)
        }
        file::Endpoints::PerDrm(per_drm) => {
            let mut sets = BTreeMap::new();
            for (drm_name, urls) in per_drm {
                let set_key = format!("{}.{drm_name}", key("endpoints"));
                let drm = drm_name
                    .parse::<Drm>()
                    .map_err(|()| ConfigError::new(&set_key, "not a DRM name"))?;
                let list = endpoint_list(&set_key, urls)?;
                if list.is_empty() {
                    return Err(ConfigError::new(set_key, "list at least one URL"));
                }
                sets.insert(drm, list);
            }
            EndpointSets::PerDrm(sets)
        }
    };
    let has_endpoints = !endpoints.sets().is_empty();
    match provider.kind {
        ProviderKind::Clearkey if has_endpoints => {
            return Err(ConfigError::new(
                key("endpoints"),
                "the built-in ClearKey server has no endpoints",
            ));
        }
        ProviderKind::Clearkey => {}
        _ if !has_endpoints => {
            return Err(ConfigError::new(key("endpoints"), "list at least one URL"));
        }
        _ => {}
    }
    let needs_settings = !matches!(
        provider.kind,
        ProviderKind::Passthrough | ProviderKind::Clearkey
    );
    if needs_settings != provider.settings.is_some() {
        let reason = if needs_settings {
            "this kind of provider needs its [settings]"
        } else {
            "this kind of provider takes no settings"
        };
        return Err(ConfigError::new(key("settings"), reason));
    }
    let plain_http_fallback = provider.protocol == Protocol::H2OrH1
        && endpoints
            .sets()
            .iter()
            .any(|(_, set)| set.iter().any(|e| !e.tls));
    if plain_http_fallback {
        return Err(ConfigError::new(
            key("protocol"),
            "h2-or-h1 needs https endpoints (ALPN); use h2 (prior knowledge) or h1 for http://",
        ));
    }
    let timeouts = &provider.timeouts;
    for (field, value) in [
        ("timeouts.connect_ms", timeouts.connect_ms),
        ("timeouts.read_ms", timeouts.read_ms),
        ("timeouts.total_ms", timeouts.total_ms),
    ] {
        if value == 0 {
            return Err(ConfigError::new(key(field), "must be at least 1"));
        }
    }
    if timeouts.total_ms < timeouts.connect_ms {
        return Err(ConfigError::new(
            key("timeouts.total_ms"),
            "must be at least timeouts.connect_ms",
        ));
    }
    if !(1..=1000).contains(&provider.max_concurrent_streams) {
        return Err(ConfigError::new(
            key("max_concurrent_streams"),
            "must be between 1 and 1000",
        ));
    }
    if provider.retries > 10 {
        return Err(ConfigError::new(key("retries"), "must be at most 10"));
    }
    if provider.health_check_interval_seconds == 0 {
        return Err(ConfigError::new(
            key("health_check_interval_seconds"),
            "must be at least 1",
        ));
    }
    if !provider.health_check_path.starts_with('/') {
        return Err(ConfigError::new(
            key("health_check_path"),
            "must be a path starting with /",
        ));
    }
    if provider.ejection_consecutive_failures > 0
        && !(1..=86_400).contains(&provider.ejection_seconds)
    {
        return Err(ConfigError::new(
            key("ejection_seconds"),
            "must be between 1 and 86400 while ejection_consecutive_failures is set",
        ));
    }
    if provider.dns_refresh_seconds == 0 {
        return Err(ConfigError::new(
            key("dns_refresh_seconds"),
            "must be at least 1",
        ));
    }
    let error_header = provider
        .error_header
        .or_else(|| default_error_header(provider.kind).map(str::to_string))
        .map(|header| {
            HeaderName::try_from(header.as_str())
                .map_err(|_| ConfigError::new(key("error_header"), "not a valid header name"))
        })
        .transpose()?;
    Ok(ProviderConfig {
        name: name.to_string(),
        kind: provider.kind,
        endpoints,
        protocol: provider.protocol,
        tls_verify: provider.tls_verify,
        connect_timeout: Duration::from_millis(timeouts.connect_ms),
        read_timeout: Duration::from_millis(timeouts.read_ms),
        total_timeout: Duration::from_millis(timeouts.total_ms),
        max_concurrent_streams: provider.max_concurrent_streams,
        retries: provider.retries,
        health_check_interval: Duration::from_secs(provider.health_check_interval_seconds),
        health_check: provider.health_check,
        health_check_path: provider.health_check_path,
        ejection_consecutive_failures: provider.ejection_consecutive_failures,
        ejection_duration: Duration::from_secs(provider.ejection_seconds),
        dns_refresh: Duration::from_secs(provider.dns_refresh_seconds),
        error_header,
        settings: provider.settings,
    })
}

/// Where each provider documents its refusal reason, unless the config says otherwise.
fn default_error_header(kind: ProviderKind) -> Option<&'static str> {
    match kind {
        ProviderKind::Axinom => Some("X-AxDRM-ErrorMessage"),
        _ => None,
    }
}

fn endpoint_list(key: &str, urls: &[String]) -> Result<Vec<Arc<Endpoint>>, ConfigError> {
    let mut endpoints: Vec<Arc<Endpoint>> = Vec::with_capacity(urls.len());
    for (index, url) in urls.iter().enumerate() {
        let endpoint = parse_endpoint(url)
            .map_err(|reason| ConfigError::new(format!("{key}[{index}]"), reason))?;
        if endpoints
            .iter()
            .any(|e| e.host == endpoint.host && e.port == endpoint.port)
        {
            return Err(ConfigError::new(
                format!("{key}[{index}]"),
                "another endpoint already uses this host and port",
            ));
        }
        endpoints.push(Arc::new(endpoint));
    }
    Ok(endpoints)
}

fn validate_cors<'a>(
    cors: file::Cors,
    providers: impl Iterator<Item = &'a Arc<ProviderConfig>>,
) -> Result<CorsSettings, ConfigError> {
    let any_origin = cors.allowed_origins.iter().any(|o| o == "*");
    for (index, origin) in cors.allowed_origins.iter().enumerate() {
        if origin != "*" && !is_origin(origin) {
            return Err(ConfigError::new(
                format!("cors.allowed_origins[{index}]"),
                format!("'{origin}' is not an origin (scheme://host[:port], no path)"),
            ));
        }
    }
    for (field, names) in [
        ("allowed_headers", &cors.allowed_headers),
        ("expose_headers", &cors.expose_headers),
    ] {
        for (index, name) in names.iter().enumerate() {
            if HeaderName::try_from(name.as_str()).is_err() {
                return Err(ConfigError::new(
                    format!("cors.{field}[{index}]"),
                    format!("'{name}' is not a header name"),
                ));
            }
        }
    }
    // Players read the request id and the providers' refusal reasons, so those are always exposed.
    let mut expose: Vec<String> = vec!["X-Request-Id".into()];
    expose.extend(providers.filter_map(|v| v.error_header.as_ref().map(|h| h.to_string())));
    expose.extend(cors.expose_headers);
    expose.sort_by_key(|h| h.to_ascii_lowercase());
    expose.dedup_by_key(|h| h.to_ascii_lowercase());
    Ok(CorsSettings {
        any_origin,
        origins: cors.allowed_origins,
        allowed_headers: cors.allowed_headers.join(", "),
        expose_headers: expose.join(", "),
        max_age_seconds: cors.max_age_seconds,
    })
}

fn socket_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::new(key, format!("'{value}' is not an ip:port address")))
}

fn is_origin(origin: &str) -> bool {
    url::Url::parse(origin).is_ok_and(|url| {
        matches!(url.scheme(), "http" | "https")
            && url.host().is_some()
            && url.path() == "/"
            && !origin.ends_with('/')
            && url.query().is_none()
    })
}

pub fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    let url = url::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    let tls = match url.scheme() {
        "https" => true,
        "http" => false,
        other => return Err(format!("scheme '{other}' is not http or https")),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials do not belong in an endpoint URL".into());
    }
    let host = match url.host() {
        Some(url::Host::Domain(domain)) => domain.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err("the URL has no host".into()),
    };
    let port = url
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    let host_for_header = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let authority = match url.port() {
        Some(port) => format!("{host_for_header}:{port}"),
        None => host_for_header,
    };
    let path_and_query = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    };
    Ok(Endpoint {
        tls,
        host,
        port,
        authority,
        path_and_query,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [listeners]
        license = "127.0.0.1:8080"
        admin = "127.0.0.1:9090"
        [providers.sim]
        kind = "passthrough"
        endpoints = ["http://127.0.0.1:8090/AcquireLicense"]
        error_header = "X-AxDRM-ErrorMessage"
        [routes]
        widevine = "sim"
    "#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, &|_| None)
    }

    #[test]
    fn minimal_file_gets_production_defaults() {
        let config = parse(MINIMAL).unwrap();
        let provider = &config.routes[&Drm::Widevine];
        assert_eq!(provider.max_concurrent_streams, 100);
        assert_eq!(provider.protocol, Protocol::H2);
        assert_eq!(config.server.max_challenge_bytes, 65536);
        let endpoint = &provider.endpoints.for_drm(Drm::Widevine).unwrap()[0];
        assert_eq!(endpoint.authority, "127.0.0.1:8090");
        assert_eq!(endpoint.path_and_query, "/AcquireLicense");
        assert!(!endpoint.tls);
        let exposed = config.cors.expose_headers.to_ascii_lowercase();
        assert!(exposed.contains("x-axdrm-errormessage"), "{exposed}");
        assert!(config.cors.expose_headers.contains("X-Request-Id"));
    }

    #[test]
    fn errors_name_the_place_not_the_value() {
        let text = format!("{MINIMAL}\n[auth]\nkeys = \"s3cr3t-value\"");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.key, "auth.keys");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        let syntax = parse("[listeners]\nlicense = \"127.0.0.1:1\"\nadmin = s3cr3t\n").unwrap_err();
        assert!(
            syntax.key.starts_with("(syntax) line 3, column 9"),
            "{syntax}"
        );
        assert!(!syntax.to_string().contains("s3cr3t"), "{syntax}");
        let endpoint = parse(&MINIMAL.replace(
            "http://127.0.0.1:8090/AcquireLicense",
            "http//provider?key=s3cr3t",
        ))
        .unwrap_err();
        assert!(!endpoint.to_string().contains("s3cr3t"), "{endpoint}");
    }

    #[test]
    fn old_section_names_are_read_with_a_warning() {
        let old = MINIMAL.replace("[providers.sim]", "[vendors.sim]");
        let config = parse(&format!("{old}\n[token_cache]\nmax_entries = 7")).unwrap();
        assert!(config.providers.contains_key("sim"));
        assert_eq!(config.authorization_cache.max_entries, 7);
        assert_eq!(config.deprecations.len(), 2, "{:?}", config.deprecations);
        let both = format!("{old}\n[providers.other]\nkind = \"passthrough\"");
        assert_eq!(parse(&both).unwrap_err().key, "vendors");
        assert!(parse(MINIMAL).unwrap().deprecations.is_empty());
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let err = parse(&MINIMAL.replace("kind = ", "knd = \"x\"\nkind = ")).unwrap_err();
        assert_eq!(err.key, "providers.sim.knd");
        assert!(err.reason.contains("knd"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_full_key_path() {
        let text = format!("{MINIMAL}\n[providers.sim.timeouts]\nread_ms = \"soon\"");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.key, "providers.sim.timeouts.read_ms", "{err}");
    }

    #[test]
    fn route_to_a_missing_vendor_is_refused() {
        let err =
            parse(&MINIMAL.replace("widevine = \"sim\"", "playready = \"axinom\"")).unwrap_err();
        assert_eq!(err.key, "routes.playready");
    }

    #[test]
    fn unknown_drm_in_routes_is_refused() {
        let err = parse(&MINIMAL.replace("widevine = \"sim\"", "primetime = \"sim\"")).unwrap_err();
        assert!(err.key.starts_with("routes"), "{err}");
    }

    #[test]
    fn bad_values_name_their_keys() {
        let cases = [
            ("\"127.0.0.1:9090\"", "\"localhost\"", "listeners.admin"),
            (
                "\"http://127.0.0.1:8090/AcquireLicense\"",
                "\"ftp://x/\"",
                "providers.sim.endpoints[0]",
            ),
            (
                "error_header = \"X-AxDRM-ErrorMessage\"",
                "retries = 99",
                "providers.sim.retries",
            ),
            (
                "error_header = \"X-AxDRM-ErrorMessage\"",
                "error_header = \"bad header\"",
                "providers.sim.error_header",
            ),
        ];
        for (from, to, key) in cases {
            let err = parse(&MINIMAL.replace(from, to)).unwrap_err();
            assert_eq!(err.key, key, "{err}");
        }
    }

    #[test]
    fn challenge_limit_cannot_exceed_the_retry_buffer() {
        let err = parse(&format!("{MINIMAL}\n[server]\nmax_challenge_bytes = 70000")).unwrap_err();
        assert_eq!(err.key, "server.max_challenge_bytes");
    }

    #[test]
    fn endpoints_keep_query_and_bracket_ipv6() {
        let endpoint = parse_endpoint("https://[::1]:8443/rights/?token=a").unwrap();
        assert_eq!(endpoint.authority, "[::1]:8443");
        assert_eq!(endpoint.path_and_query, "/rights/?token=a");
        assert_eq!(endpoint.port, 8443);
        let endpoint = parse_endpoint("https://drm.example.com/AcquireLicense").unwrap();
        assert_eq!(
            (endpoint.port, endpoint.authority.as_str()),
            (443, "drm.example.com")
        );
    }

    #[test]
    fn origins_are_validated() {
        assert!(is_origin("https://player.example.com"));
        assert!(is_origin("http://localhost:3000"));
        assert!(!is_origin("https://player.example.com/"));
        assert!(!is_origin("https://player.example.com/app"));
        assert!(!is_origin("player.example.com"));
    }
}
