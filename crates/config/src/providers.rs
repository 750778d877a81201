//! `[providers.NAME]`: each license service licensegate forwards to, its endpoints and timeouts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProviderFile {
    pub kind: ProviderKind,
    #[serde(default)]
    pub endpoints: Endpoints,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default = "yes")]
    pub tls_verify: bool,
    #[serde(default)]
    pub timeouts: TimeoutsFile,
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
    /// The FairPlay application certificate, DER or base64 (PEM armour allowed), served at
    /// `/v1/fairplay/certificate` in place of fetching the provider's.
    pub fairplay_certificate_file: Option<String>,
    /// The provider's own settings; their shape belongs to the provider's provider, which checks them.
    pub settings: Option<toml::Value>,
}

/// License URLs: one list for every DRM, or a list per DRM for providers with a host per DRM.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Endpoints {
    Shared(Vec<String>),
    PerDrm(BTreeMap<String, Vec<String>>),
}

impl Default for Endpoints {
    fn default() -> Self {
        Endpoints::Shared(Vec::new())
    }
}

pub(super) fn default_max_streams() -> usize {
    100
}

pub(super) fn default_retries() -> usize {
    2
}

pub(super) fn default_health_check_seconds() -> u64 {
    5
}

pub(super) fn default_dns_refresh_seconds() -> u64 {
    60
}

pub(super) fn default_health_check_path() -> String {
    "/".into()
}

pub(super) fn default_ejection_failures() -> u32 {
    3
}

pub(super) fn default_ejection_seconds() -> u64 {
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

/// What config must know of a provider kind before building it.
pub struct KindFacts {
    /// Licensegate answers itself: the kind has no endpoints.
    pub answers_locally: bool,
    /// Its authorization names content and key IDs, which only the catalog knows.
    pub needs_catalog: bool,
    /// It reads `[providers.NAME.settings]`.
    pub takes_settings: bool,
    /// The DRMs a route may send it.
    pub drms: &'static [Drm],
    /// DRMs it serves only when a setting names their service: the DRM and the settings key.
    pub drm_settings: &'static [(Drm, &'static str)],
    /// The response header in which the vendor explains a refusal, unless configured.
    pub reason_header: Option<&'static str>,
}

/// A vendor's cloud: endpoints, settings, an authorization naming the content, any DRM.
const VENDOR: KindFacts = KindFacts {
    answers_locally: false,
    needs_catalog: true,
    takes_settings: true,
    drms: &Drm::ALL,
    drm_settings: &[],
    reason_header: None,
};

/// The DRMs a vendor licenses; ClearKey is licensegate's own to answer.
const VENDOR_DRMS: [Drm; 3] = [Drm::Widevine, Drm::PlayReady, Drm::FairPlay];

impl ProviderKind {
    pub fn facts(self) -> &'static KindFacts {
        match self {
            // Forwards the challenge as it came, with no authorization.
            ProviderKind::Passthrough => &KindFacts {
                answers_locally: false,
                needs_catalog: false,
                takes_settings: false,
                drms: &Drm::ALL,
                drm_settings: &[],
                reason_header: None,
            },
            // licensegate's own ClearKey server: no endpoints; keys from the catalog when one
            // is configured.
            ProviderKind::Clearkey => &KindFacts {
                answers_locally: true,
                needs_catalog: false,
                takes_settings: false,
                drms: &[Drm::ClearKey],
                drm_settings: &[],
                reason_header: None,
            },
            // An entitlement message names the content's key IDs; Axinom explains refusals in
            // a header.
            ProviderKind::Axinom => &KindFacts {
                drms: &VENDOR_DRMS,
                reason_header: Some("X-AxDRM-ErrorMessage"),
                ..VENDOR
            },
            // A token service per DRM: a DRM whose service is not configured is not served.
            ProviderKind::Expressplay => &KindFacts {
                drms: &VENDOR_DRMS,
                drm_settings: &[
                    (Drm::Widevine, "token_url"),
                    (Drm::PlayReady, "playready_token_url"),
                    (Drm::FairPlay, "fairplay_token_url"),
                ],
                ..VENDOR
            },
            ProviderKind::Drmtoday | ProviderKind::Pallycon => &KindFacts {
                drms: &VENDOR_DRMS,
                ..VENDOR
            },
            ProviderKind::Generic => &VENDOR,
        }
    }
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
pub(super) struct TimeoutsFile {
    pub connect_ms: u64,
    pub read_ms: u64,
    pub total_ms: u64,
}

impl Default for TimeoutsFile {
    fn default() -> Self {
        Self {
            connect_ms: 1000,
            read_ms: 5000,
            total_ms: 10000,
        }
    }
}

#[derive(Debug, PartialEq)]
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
    /// The FairPlay application certificate (DER) from `fairplay_certificate_file`.
    pub fairplay_certificate: Option<bytes::Bytes>,
    /// Checked and read by the provider kind's own code.
    pub settings: Option<toml::Value>,
}

/// A provider's license URLs: one set for every DRM, or one per DRM.
#[derive(Debug, PartialEq)]
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

pub(super) fn validate_provider(
    name: &str,
    provider: ProviderFile,
) -> Result<ProviderConfig, ConfigError> {
    let key = |field: &str| format!("providers.{name}.{field}");
    let endpoints = match &provider.endpoints {
        Endpoints::Shared(urls) => EndpointSets::Shared(endpoint_list(&key("endpoints"), urls)?),
        Endpoints::PerDrm(per_drm) => {
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
    let facts = provider.kind.facts();
    match (facts.answers_locally, has_endpoints) {
        (true, true) => {
            return Err(ConfigError::new(
                key("endpoints"),
                "licensegate answers for this kind itself: it has no endpoints",
            ));
        }
        (false, false) => {
            return Err(ConfigError::new(key("endpoints"), "list at least one URL"));
        }
        _ => {}
    }
    let needs_settings = facts.takes_settings;
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
        at_least_one(key(field), value)?;
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
    at_least_one(
        key("health_check_interval_seconds"),
        provider.health_check_interval_seconds,
    )?;
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
    at_least_one(key("dns_refresh_seconds"), provider.dns_refresh_seconds)?;
    let error_header = provider
        .error_header
        .or_else(|| default_error_header(provider.kind).map(str::to_string))
        .map(|header| {
            HeaderName::try_from(header.as_str())
                .map_err(|_| ConfigError::new(key("error_header"), "not a valid header name"))
        })
        .transpose()?;
    let fairplay_certificate = provider
        .fairplay_certificate_file
        .map(|path| {
            let key = key("fairplay_certificate_file");
            let bytes =
                std::fs::read(&path).map_err(|e| ConfigError::new(&key, format!("{path}: {e}")))?;
            certificate_der(&bytes)
                .map_err(|reason| ConfigError::new(key, format!("{path}: {reason}")))
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
        fairplay_certificate,
        settings: provider.settings,
    })
}

/// A FairPlay certificate as DER, from DER, base64 text, or PEM (Apple hands out DER `.cer`
/// files; vendors' endpoints and consoles also give base64).
pub fn certificate_der(bytes: &[u8]) -> Result<bytes::Bytes, String> {
    use base64::Engine;
    const DER_SEQUENCE: u8 = 0x30;
    if bytes.first() == Some(&DER_SEQUENCE) {
        return Ok(bytes::Bytes::copy_from_slice(bytes));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "neither DER nor base64".to_string())?;
    let body: String = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .map_err(|_| "neither DER nor base64".to_string())?;
    if der.first() != Some(&DER_SEQUENCE) {
        return Err("not a certificate (no DER sequence)".into());
    }
    Ok(der.into())
}

/// Where each provider documents its refusal reason, unless the config says otherwise.
pub(super) fn default_error_header(kind: ProviderKind) -> Option<&'static str> {
    kind.facts().reason_header
}

pub(super) fn endpoint_list(key: &str, urls: &[String]) -> Result<Vec<Arc<Endpoint>>, ConfigError> {
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

impl ProviderConfig {
    /// Why this provider cannot serve `drm`, if it cannot: its kind never does, a setting
    /// naming the DRM's service is missing, or it has no endpoints for it.
    pub fn cannot_serve(&self, drm: Drm) -> Option<String> {
        let facts = self.kind.facts();
        if !facts.drms.contains(&drm) {
            return Some(format!("'{}' does not serve {drm}", self.name));
        }
        let missing = facts.drm_settings.iter().find(|(served, key)| {
            *served == drm
                && self
                    .settings
                    .as_ref()
                    .and_then(|settings| settings.get(key))
                    .is_none()
        });
        if let Some((_, key)) = missing {
            return Some(format!(
                "'{}' serves {drm} only with providers.{}.settings.{key}",
                self.name, self.name
            ));
        }
        if !facts.answers_locally && self.endpoints.for_drm(drm).is_none() {
            return Some(format!("'{}' has no endpoints for {drm}", self.name));
        }
        None
    }
}

/// A route's providers as the file names them: one, or several asked in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RouteFile {
    One(String),
    InOrder(Vec<String>),
}

impl RouteFile {
    pub fn into_names(self) -> Vec<String> {
        match self {
            RouteFile::One(name) => vec![name],
            RouteFile::InOrder(names) => names,
        }
    }
}

/// Providers one request may be sent to in turn: each failover adds a vendor's timeout to
/// what the player may wait.
pub const MAX_PROVIDERS_IN_ORDER: usize = 4;

/// The providers `names` lists, checked as a list asked in order (a route, or a catalog entry's
/// `providers`). `drm`: the DRM a route sends every one of them.
pub fn providers_in_order(
    key: &str,
    names: &[String],
    providers: &BTreeMap<String, Arc<ProviderConfig>>,
    drm: Option<Drm>,
) -> Result<Vec<Arc<ProviderConfig>>, ConfigError> {
    if names.is_empty() {
        return Err(ConfigError::new(key, "name at least one provider"));
    }
    if names.len() > MAX_PROVIDERS_IN_ORDER {
        return Err(ConfigError::new(
            key,
            format!("at most {MAX_PROVIDERS_IN_ORDER} providers may be asked in turn"),
        ));
    }
    let mut listed: Vec<Arc<ProviderConfig>> = Vec::with_capacity(names.len());
    for name in names {
        let Some(provider) = providers.get(name) else {
            return Err(ConfigError::new(
                key,
                format!("no provider named '{name}' under [providers]"),
            ));
        };
        if listed.iter().any(|earlier| earlier.name == *name) {
            return Err(ConfigError::new(key, format!("'{name}' is named twice")));
        }
        let facts = provider.kind.facts();
        if names.len() > 1 && facts.answers_locally {
            return Err(ConfigError::new(
                key,
                format!(
                    "'{name}' answers locally and never fails: it cannot take part in a failover list"
                ),
            ));
        }
        if let Some(why) = drm.and_then(|drm| provider.cannot_serve(drm)) {
            return Err(ConfigError::new(key, why));
        }
        listed.push(provider.clone());
    }
    Ok(listed)
}
