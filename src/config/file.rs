//! The TOML file's shape, exactly as operators write it. Unknown keys are errors so a typo
//! never silently falls back to a default.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::drm::Drm;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listeners: Listeners,
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub cors: Cors,
    #[serde(default)]
    pub providers: BTreeMap<String, Provider>,
    #[serde(default)]
    pub routes: BTreeMap<Drm, String>,
    pub auth: Option<Auth>,
    pub catalog: Option<Catalog>,
    #[serde(default)]
    pub key_seeds: BTreeMap<String, String>,
    #[serde(default)]
    pub entitlement: Entitlement,
    #[serde(default)]
    pub policies: BTreeMap<String, Policy>,
    pub demo: Option<Demo>,
    #[serde(default)]
    pub authorization_cache: AuthorizationCache,
    pub devices: Option<Devices>,
}

/// Device limits: how many devices a user may license on, counted from the providers' answers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Devices {
    pub max_per_user: u32,
    /// A token claim that overrides `max_per_user` for its user.
    #[serde(default = "default_max_devices_claim")]
    pub claim: String,
    /// A slot unused this long frees itself.
    #[serde(default = "default_slot_idle_seconds")]
    pub slot_idle_seconds: u64,
    /// Which device_info field identifies a device, in order of preference; Android devices
    /// use `android_identity` (seed 001: the certificate serial number is shared by every
    /// desktop browser, but identifies an Android device).
    #[serde(default = "default_identity")]
    pub identity: Vec<DeviceField>,
    #[serde(default = "default_android_identity")]
    pub android_identity: Vec<DeviceField>,
    /// What to do when the provider reports no device.
    #[serde(default = "default_unreported")]
    pub unreported: DeviceDecision,
    /// What to do when the provider's device report fails verification.
    #[serde(default = "default_untrusted")]
    pub untrusted: DeviceDecision,
    #[serde(default)]
    pub store: DeviceStoreKind,
    /// The embedded store's file.
    #[serde(default = "default_devices_path")]
    pub path: String,
    pub redis_url: Option<String>,
    #[serde(default = "default_store_timeout_ms")]
    pub store_timeout_ms: u64,
    /// Serve licenses while the store is unreachable (no limit is enforced then).
    #[serde(default)]
    pub fail_open: bool,
    /// Bearer token for the admin API's device endpoints.
    pub admin_token: Option<String>,
}

fn default_max_devices_claim() -> String {
    "max_devices".into()
}
fn default_slot_idle_seconds() -> u64 {
    30 * 24 * 3600
}
fn default_identity() -> Vec<DeviceField> {
    vec![DeviceField::ClientToken, DeviceField::DeviceId]
}
fn default_android_identity() -> Vec<DeviceField> {
    vec![
        DeviceField::DeviceCertificateSerialNumber,
        DeviceField::DeviceId,
    ]
}
fn default_unreported() -> DeviceDecision {
    DeviceDecision::Allow
}
fn default_untrusted() -> DeviceDecision {
    DeviceDecision::Refuse
}
fn default_devices_path() -> String {
    "devices.db".into()
}
fn default_store_timeout_ms() -> u64 {
    200
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceField {
    ClientToken,
    DeviceCertificateSerialNumber,
    DeviceId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceDecision {
    Allow,
    Refuse,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStoreKind {
    #[default]
    Embedded,
    Redis,
}

/// Provider authorizations (signed messages, token URLs) kept for reuse.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthorizationCache {
    pub max_entries: u64,
    pub max_bytes: u64,
    /// An authorization leaves the cache this long before it expires, so one handed out at
    /// the last moment still outlives the provider call.
    pub safety_margin_seconds: u64,
}

impl Default for AuthorizationCache {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_bytes: 64 * 1024 * 1024,
            safety_margin_seconds: 60,
        }
    }
}

/// The demo page and stream, served under `/demo/` on the admin listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Demo {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub root: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
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
    pub keys: Vec<AuthKey>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenSource {
    Header,
    Query,
    Cookie,
}

fn default_token_sources() -> Vec<TokenSource> {
    vec![TokenSource::Header, TokenSource::Query, TokenSource::Cookie]
}
fn default_query_parameter() -> String {
    "token".into()
}
fn default_cookie() -> String {
    "licensegate_token".into()
}
fn default_user_claim() -> String {
    "sub".into()
}
fn default_leeway() -> u64 {
    30
}
fn default_reload_seconds() -> u64 {
    5
}
fn default_cache_entries() -> u64 {
    100_000
}
fn default_auth_cache_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_max_token_bytes() -> usize {
    8 * 1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum AuthKey {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub path: String,
    #[serde(default = "default_reload_seconds")]
    pub reload_seconds: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Entitlement {
    /// The token claim listing what the user may play: content ids, glob patterns such as
    /// `series-12/*`, or `tier:NAME` for catalog entries of that tier.
    pub claim: String,
    pub default_policy: String,
    pub service: Option<EntitlementService>,
}

impl Default for Entitlement {
    fn default() -> Self {
        Self {
            claim: "entitlements".into(),
            default_policy: "default".into(),
            service: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntitlementService {
    pub url: String,
    #[serde(default = "default_entitlement_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_entitlement_cache")]
    pub cache_seconds: u64,
    #[serde(default = "default_cache_entries")]
    pub cache_entries: u64,
    /// Allow with the default policy when the service cannot answer (default: refuse).
    #[serde(default)]
    pub fail_open: bool,
}

fn default_entitlement_timeout() -> u64 {
    500
}
fn default_entitlement_cache() -> u64 {
    60
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// 1 (software) to 5 (hardware secure decode), Widevine's scale.
    #[serde(default = "default_security_level")]
    pub security_level: u8,
    #[serde(default)]
    pub hdcp: Hdcp,
    /// 0 for no limit.
    #[serde(default)]
    pub license_duration_seconds: u64,
    #[serde(default)]
    pub persistent: bool,
    /// 0 for no renewal.
    #[serde(default)]
    pub renewal_interval_seconds: u64,
}

fn default_security_level() -> u8 {
    1
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Hdcp {
    #[default]
    #[serde(rename = "none")]
    None,
    #[serde(rename = "1.4")]
    V1_4,
    #[serde(rename = "2.2")]
    V2_2,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listeners {
    pub license: String,
    pub admin: String,
    pub tls: Option<Tls>,
    /// Connections each listener serves at once; beyond that new ones are closed on accept, so
    /// a flood on the license listener leaves the admin listener (and its health checks) alive.
    #[serde(default = "default_license_max_connections")]
    pub license_max_connections: usize,
    #[serde(default = "default_admin_max_connections")]
    pub admin_max_connections: usize,
}

fn default_license_max_connections() -> usize {
    10_000
}
fn default_admin_max_connections() -> usize {
    64
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub threads: usize,
    pub grace_period_seconds: u64,
    pub graceful_shutdown_timeout_seconds: u64,
    pub upstream_keepalive_pool_size: usize,
    pub upstream_idle_timeout_seconds: u64,
    pub max_challenge_bytes: usize,
    pub challenge_read_timeout_ms: u64,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout_ms: u64,
    /// How long an idle keep-alive connection (HTTP/1.1 or HTTP/2) stays open.
    pub keepalive_timeout_seconds: u64,
    /// How long one write of an answer to a client may block.
    pub answer_write_timeout_ms: u64,
    /// Request header limits, answered with 431.
    pub max_header_bytes: usize,
    pub max_header_count: usize,
    /// Proxies (CIDRs) whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
    pub service_certificate_ttl_seconds: u64,
    pub log_format: LogFormat,
    /// Where a new process started with `serve --upgrade` takes over the listening sockets.
    pub upgrade_socket: String,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            threads: 2,
            grace_period_seconds: 5,
            graceful_shutdown_timeout_seconds: 10,
            upstream_keepalive_pool_size: 128,
            upstream_idle_timeout_seconds: 60,
            max_challenge_bytes: 64 * 1024,
            challenge_read_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            keepalive_timeout_seconds: 60,
            answer_write_timeout_ms: 10_000,
            max_header_bytes: 16 * 1024,
            max_header_count: 64,
            trusted_proxies: Vec::new(),
            service_certificate_ttl_seconds: 3600,
            log_format: LogFormat::Text,
            upgrade_socket: "/tmp/licensegate-upgrade.sock".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cors {
    pub allowed_origins: Vec<String>,
    pub allowed_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age_seconds: u64,
}

impl Default for Cors {
    fn default() -> Self {
        Self {
            allowed_origins: vec!["*".into()],
            allowed_headers: [
                "Authorization",
                "Content-Type",
                "X-Content-Id",
                "SOAPAction",
                "X-Request-Id",
            ]
            .map(String::from)
            .to_vec(),
            expose_headers: Vec::new(),
            max_age_seconds: 600,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub kind: ProviderKind,
    #[serde(default)]
    pub endpoints: Endpoints,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default = "yes")]
    pub tls_verify: bool,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default = "default_max_streams")]
    pub max_concurrent_streams: usize,
    #[serde(default = "default_retries")]
    pub retries: usize,
    #[serde(default = "default_health_check_seconds")]
    pub health_check_interval_seconds: u64,
    #[serde(default)]
    pub health_check: HealthCheckKind,
    /// The path an `http` health check asks for.
    #[serde(default = "default_health_check_path")]
    pub health_check_path: String,
    /// Consecutive connect failures or timeouts that take an endpoint out of rotation
    /// (0: never), and for how long.
    #[serde(default = "default_ejection_failures")]
    pub ejection_consecutive_failures: u32,
    #[serde(default = "default_ejection_seconds")]
    pub ejection_seconds: u64,
    #[serde(default = "default_dns_refresh_seconds")]
    pub dns_refresh_seconds: u64,
    /// The response header in which this provider explains a refusal.
    pub error_header: Option<String>,
    /// The provider's own settings; their shape belongs to the provider's provider, which checks them.
    pub settings: Option<toml::Value>,
}

/// License URLs: one list for every DRM, or a list per DRM for providers with a host per DRM.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Endpoints {
    Shared(Vec<String>),
    PerDrm(BTreeMap<String, Vec<String>>),
}

impl Default for Endpoints {
    fn default() -> Self {
        Endpoints::Shared(Vec::new())
    }
}

fn yes() -> bool {
    true
}
fn default_max_streams() -> usize {
    100
}
fn default_retries() -> usize {
    2
}
fn default_health_check_seconds() -> u64 {
    5
}
fn default_dns_refresh_seconds() -> u64 {
    60
}
fn default_health_check_path() -> String {
    "/".into()
}
fn default_ejection_failures() -> u32 {
    3
}
fn default_ejection_seconds() -> u64 {
    30
}

/// How an endpoint is judged alive between requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    /// A TCP connect and, on https endpoints, the TLS handshake.
    #[default]
    Connect,
    /// A whole HTTP exchange in the provider's protocol (HTTP/2 where configured): any answer
    /// below 500 counts as alive.
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Forwards the challenge as-is with no provider authorization.
    Passthrough,
    /// licensegate's own ClearKey license server, answering from the catalog's keys.
    Clearkey,
    /// Axinom DRM: a signed entitlement message in `X-AxDRM-Message`.
    Axinom,
    /// ExpressPlay: a license URL with a token from its token service.
    Expressplay,
    /// castLabs DRMtoday: an upfront token or custom data.
    Drmtoday,
    /// PallyCon (DoveRunner): `pallycon-customdata-v2`.
    Pallycon,
    /// Headers, query parameters and an optional JWT from templates.
    Generic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Protocol {
    /// HTTP/2 only: ALPN h2 over TLS, prior knowledge (h2c) over plain http.
    #[default]
    #[serde(rename = "h2")]
    H2,
    /// HTTP/2 when the provider's TLS endpoint offers it, else HTTP/1.1.
    #[serde(rename = "h2-or-h1")]
    H2OrH1,
    #[serde(rename = "h1")]
    H1,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub connect_ms: u64,
    pub read_ms: u64,
    pub total_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect_ms: 1000,
            read_ms: 5000,
            total_ms: 10000,
        }
    }
}
