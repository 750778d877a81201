//! Configuration in layers: the TOML file's shape (`file`), environment substitution (`env`),
//! and the validated internal [`Config`] that the rest of licensegate sees. Every error names
//! the key path it is about.

pub mod policy;

mod auth;
mod authorization_cache;
mod catalog;
mod cors;
mod devices;
mod entitlement;
mod env;
mod fairplay;
mod limits;
mod providers;
mod server;
mod speke;
mod store;
mod streams;
mod territories;

use std::collections::BTreeMap;

use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::policy::Policy;
pub use auth::*;
pub use authorization_cache::*;
pub use catalog::*;
pub use cors::*;
pub use devices::*;
pub use entitlement::*;
pub use fairplay::*;
pub use jsonwebtoken::Algorithm;
use licensegate_drm::drm::Drm;
use licensegate_drm::keyseed::KeySeed;
pub use limits::*;
pub use providers::*;
pub use server::*;
pub use speke::*;
pub use store::*;
pub use streams::*;
pub use territories::*;

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
    /// The providers that serve each DRM, in the order they are asked: the first, then the
    /// next only when one could not take the request (failover).
    pub routes: BTreeMap<Drm, Vec<Arc<ProviderConfig>>>,
    pub auth: Option<AuthSettings>,
    pub catalog: Option<CatalogSettings>,
    /// The key service for packagers, when configured.
    pub speke: Option<SpekeSettings>,
    pub territories: Option<TerritorySettings>,
    pub key_seeds: BTreeMap<String, KeySeed>,
    pub entitlement: EntitlementSettings,
    pub policies: BTreeMap<String, Arc<Policy>>,
    /// The directory served under `/demo/` on the admin listener, when enabled.
    pub demo_root: Option<PathBuf>,
    pub authorization_cache: AuthorizationCacheSettings,
    pub devices: Option<DeviceSettings>,
    pub streams: Option<StreamSettings>,
    pub rate_limits: RateLimitSettings,
    pub quota: Option<QuotaSettings>,
    pub admin: AdminSettings,
    /// Where devices, streams, quotas and blocks live; `None` when nothing needs a store.
    pub store: Option<StoreSettings>,
    pub fairplay: FairPlaySettings,
    /// Warnings about old names the file still uses.
    pub deprecations: Vec<String>,
}

impl Config {
    /// The most attempts one request may take: each provider of a failover list makes up to
    /// its retries + 1, and a list names at most [`MAX_PROVIDERS_IN_ORDER`]. Pingora's retry
    /// bound, fixed when the server starts.
    pub fn most_attempts(&self) -> usize {
        let per_provider = self
            .providers
            .values()
            .map(|provider| provider.retries + 1)
            .max()
            .unwrap_or(1);
        per_provider * MAX_PROVIDERS_IN_ORDER
    }
}

/// The file as operators write it; each section's shape lives in its own module. Unknown keys
/// are errors, so a typo never silently falls back to a default.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    pub listeners: ListenersFile,
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub cors: CorsFile,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderFile>,
    #[serde(default)]
    pub routes: BTreeMap<Drm, RouteFile>,
    pub auth: Option<AuthFile>,
    pub catalog: Option<CatalogFile>,
    pub speke: Option<SpekeFile>,
    pub territories: Option<TerritoriesFile>,
    #[serde(default)]
    pub key_seeds: BTreeMap<String, String>,
    #[serde(default)]
    pub entitlement: EntitlementFile,
    #[serde(default)]
    pub policies: BTreeMap<String, PolicyFile>,
    pub demo: Option<DemoFile>,
    #[serde(default)]
    pub authorization_cache: AuthorizationCacheFile,
    pub devices: Option<DevicesFile>,
    pub streams: Option<StreamsFile>,
    #[serde(default)]
    pub rate_limits: RateLimitsFile,
    pub quota: Option<QuotaFile>,
    #[serde(default)]
    pub admin: AdminFile,
    #[serde(default)]
    pub store: StoreFile,
    #[serde(default)]
    pub fairplay: FairPlayFile,
}

/// The demo page and stream, served under `/demo/` on the admin listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoFile {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Needed only when enabled.
    pub root: Option<String>,
}

fn default_reload_seconds() -> u64 {
    5
}
fn default_cache_entries() -> u64 {
    100_000
}

fn yes() -> bool {
    true
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
        let mut deprecations = rename_deprecated_sections(&mut tree)?;
        deprecations.extend(move_deprecated_keys(&mut tree)?);
        env::substitute(&mut tree, "", lookup)?;
        let file: FileConfig = serde_path_to_error::deserialize(tree).map_err(|e| {
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

/// Counts and durations that must not be zero.
fn at_least_one<T: PartialEq + Default>(
    key: impl Into<String>,
    value: T,
) -> Result<(), ConfigError> {
    if value == T::default() {
        return Err(ConfigError::new(key, "must be at least 1"));
    }
    Ok(())
}

/// Sections renamed in 0.2, still read under their old names for one release.
const RENAMED_SECTIONS: [(&str, &str); 2] = [
    ("vendors", "providers"),
    ("token_cache", "authorization_cache"),
];

/// Keys that moved to another section in 0.3, still read where they were for one release.
const MOVED_KEYS: [(&str, &str, &str, &str); 5] = [
    ("devices", "store", "store", "kind"),
    ("devices", "path", "store", "path"),
    ("devices", "redis_url", "store", "redis_url"),
    ("devices", "store_timeout_ms", "store", "timeout_ms"),
    ("devices", "admin_token", "admin", "token"),
];

/// Moves a key written where it used to live to its new section, and says so.
fn move_deprecated_keys(tree: &mut toml::Value) -> Result<Vec<String>, ConfigError> {
    let mut deprecations = Vec::new();
    let Some(table) = tree.as_table_mut() else {
        return Ok(deprecations);
    };
    for (old_section, old_key, new_section, new_key) in MOVED_KEYS {
        let Some(value) = table
            .get_mut(old_section)
            .and_then(toml::Value::as_table_mut)
            .and_then(|section| section.remove(old_key))
        else {
            continue;
        };
        let target = table
            .entry(new_section)
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .ok_or_else(|| ConfigError::new(new_section, "must be a table"))?;
        if target.contains_key(new_key) {
            return Err(ConfigError::new(
                format!("{old_section}.{old_key}"),
                format!("set twice: remove it, {new_section}.{new_key} replaces it"),
            ));
        }
        target.insert(new_key.to_string(), value);
        deprecations.push(format!(
            "{old_section}.{old_key} is now {new_section}.{new_key}"
        ));
    }
    Ok(deprecations)
}

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

fn validate(file: FileConfig) -> Result<Config, ConfigError> {
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
        at_least_one(key, value)?;
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
        let checked = validate_provider(&name, provider)?;
        providers.insert(name, Arc::new(checked));
    }

    let mut routes = BTreeMap::new();
    for (drm, route) in file.routes {
        let names = route.into_names();
        routes.insert(
            drm,
            providers_in_order(&format!("routes.{drm}"), &names, &providers, Some(drm))?,
        );
    }
    if routes.is_empty() {
        return Err(ConfigError::new(
            "routes",
            "route at least one DRM to a provider",
        ));
    }

    let cors = validate_cors(file.cors, providers.values())?;
    let auth = file.auth.map(validate_auth).transpose()?;
    let per_user = [
        ("devices", file.devices.is_some()),
        ("streams", file.streams.is_some()),
        ("quota", file.quota.is_some()),
        ("rate_limits.per_user", file.rate_limits.per_user.is_some()),
    ];
    if let Some((section, _)) = per_user.iter().find(|(_, set)| *set)
        && auth.is_none()
    {
        return Err(ConfigError::new(
            *section,
            "counts per user: configure [auth]",
        ));
    }
    if file.streams.is_some() && file.catalog.is_none() {
        return Err(ConfigError::new(
            "streams",
            "a stream is counted per content and renews against it: configure [catalog]",
        ));
    }
    let store = validate_store(file.store)?;
    let rate_limits = validate_rate_limits(file.rate_limits)?;
    if rate_limits.shared && !matches!(store.backend, StoreBackend::Redis(_)) {
        return Err(ConfigError::new(
            "rate_limits.shared",
            "a fleet-wide limit is counted in Redis: set store.kind = \"redis\"",
        ));
    }
    let admin = validate_admin(file.admin)?;
    if auth.as_ref().is_some_and(|auth| auth.single_use.enabled()) && file.streams.is_none() {
        // Without stream records a renewal of another DRM than Widevine looks new, and would
        // be refused as a replay.
        return Err(ConfigError::new(
            "auth.single_use",
            "renewals are told from new streams by their stream records: configure [streams]",
        ));
    }
    // A Widevine renewal must reach the provider that licensed its session, which only the
    // stream's record tells once a request can fail over: with two providers of Widevine, a
    // route's list or a catalog entry's may name both (records are per user and content).
    let widevine_forwarders = providers
        .values()
        .filter(|provider| {
            provider.cannot_serve(Drm::Widevine).is_none() && !provider.kind.facts().answers_locally
        })
        .count();
    let widevine_may_fail_over =
        auth.is_some() && file.catalog.is_some() && widevine_forwarders > 1;
    if routes
        .get(&Drm::Widevine)
        .is_some_and(|list| list.len() > 1)
        && (auth.is_none() || file.catalog.is_none())
    {
        return Err(ConfigError::new(
            "routes.widevine",
            "a Widevine renewal must reach the provider that licensed its session, which \
             licensegate records per user and content: configure [auth] and [catalog]",
        ));
    }
    let needs_store = file.devices.is_some()
        || file.streams.is_some()
        || widevine_may_fail_over
        || file.quota.is_some()
        || admin.token.is_some()
        || rate_limits.shared
        || auth.as_ref().is_some_and(|auth| auth.single_use.enabled())
        || file
            .catalog
            .as_ref()
            .is_some_and(|catalog| catalog.source == CatalogSourceName::Store);
    if file.catalog.is_none() {
        // Provider authorizations name content and key IDs, which only the catalog knows.
        let authorizing = providers
            .values()
            .find(|provider| provider.kind.facts().needs_catalog);
        if let Some(provider) = authorizing {
            return Err(ConfigError::new(
                format!("providers.{}.kind", provider.name),
                "this provider needs the content's key IDs: configure [catalog]",
            ));
        }
    }
    let catalog = file.catalog.map(validate_catalog).transpose()?;
    let catalog_in_store = matches!(catalog, Some(CatalogSettings::Store(_)));
    let territories = file.territories.map(validate_territories).transpose()?;
    let speke = file
        .speke
        .map(|speke| validate_speke(speke, catalog_in_store))
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
        policies.insert(name, Arc::new(Policy::from(policy)));
    }
    let entitlement = validate_entitlement(file.entitlement, &mut policies)?;
    let streams = file.streams.map(validate_streams).transpose()?;
    if let Some(streams) = &streams {
        renew_for_streams(&mut policies, streams);
    }
    let demo_root = match file.demo {
        Some(demo) if demo.enabled => {
            let Some(root) = demo.root else {
                return Err(ConfigError::new(
                    "demo.root",
                    "the directory of the demo page is required while the demo is enabled",
                ));
            };
            let path = PathBuf::from(&root);
            if !path.join("index.html").is_file() {
                return Err(ConfigError::new(
                    "demo.root",
                    format!("'{root}' has no index.html"),
                ));
            }
            Some(path)
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
        speke,
        territories,
        key_seeds,
        entitlement,
        policies,
        demo_root,
        authorization_cache: validate_authorization_cache(file.authorization_cache)?,
        fairplay: validate_fairplay(file.fairplay)?,
        devices: file.devices.map(validate_devices).transpose()?,
        streams,
        rate_limits,
        quota: file.quota.map(validate_quota).transpose()?,
        admin,
        store: needs_store.then_some(store),
        deprecations: Vec::new(),
    })
}

#[cfg(test)]
mod tests;
