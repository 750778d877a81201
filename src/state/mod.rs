//! The state requests start on: everything built from one configuration ([`State`], by
//! [`assemble`]), what outlives configurations ([`Lifetime`]), and the files a configuration
//! names, loaded before it is used.

pub(crate) mod reload;

use std::collections::HashMap;
use std::sync::Arc;

use crate::cdm::service_certificate::ServiceCertificates;
use crate::config::{CatalogSettings, Config, ConfigError};
use crate::drm::Drm;
use crate::http::listener::{Connections, Drain};
use crate::limits::devices::Devices;
use crate::providers::authorizations::AuthorizationCache;
use crate::providers::upstream::Upstream;
use crate::providers::{Provider, ProviderRoute};
use crate::rights::auth::Authenticator;
use crate::rights::catalog::{CatalogStore, Contents, References};
use crate::rights::entitlement::Entitlements;
use crate::rights::stored_catalog::StoredCatalog;
use crate::telemetry::metrics::Metrics;

/// Everything a request may consult, built from one configuration. A reload builds the next
/// one and swaps it in whole (`reload.rs`); a request finishes on the one it started with.
pub struct State {
    pub(crate) config: Config,
    /// 1 at start, one more for each reload.
    pub(crate) generation: u64,
    pub(crate) providers: HashMap<String, ProviderRoute>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) service_certificates: ServiceCertificates,
    pub(crate) fairplay_certificates: crate::cdm::fairplay::Certificates,
    pub(crate) auth: Option<Authenticator>,
    pub(crate) catalog: Option<Contents>,
    pub(crate) entitlements: Entitlements,
    pub(crate) authorizations: AuthorizationCache,
    pub(crate) store: Option<Arc<crate::store::Shared>>,
    pub(crate) devices: Option<Devices>,
    pub(crate) streams: Option<crate::limits::streams::Streams>,
    pub(crate) rate_limits: Arc<crate::limits::RateLimits>,
    pub(crate) quotas: Option<crate::limits::Quotas>,
    pub(crate) single_use: Option<crate::rights::single_use::SingleUseTokens>,
    pub(crate) territories: Option<crate::rights::territory::Territories>,
    /// Users blocked through the admin API; checked when an admin token is configured.
    pub(crate) blocks: Option<crate::limits::Blocks>,
    /// Set once shutdown or upgrade begins.
    pub(crate) drain: Drain,
}

/// What outlives every configuration: the metrics, the listeners' counters, the drain, and
/// the bound on attempts Pingora was built with.
#[derive(Clone, Default)]
pub struct Lifetime {
    pub metrics: Arc<Metrics>,
    pub drain: Drain,
    pub license_connections: Arc<Connections>,
    pub(crate) admin_connections: Arc<Connections>,
    pub(crate) most_attempts: usize,
}

/// A state, and the upstreams it made whose resolution and health checks must start.
pub struct Assembled {
    pub state: State,
    pub new_upstreams: Vec<Arc<Upstream>>,
}

/// Builds the state for `config`. Against the `previous` state, a provider whose settings are
/// unchanged keeps its upstreams (pooled connections, health, ejections), an unchanged store
/// stays open, and unchanged rate limits keep their buckets.
pub fn assemble(
    config: Config,
    resources: Resources,
    lifetime: &Lifetime,
    previous: Option<&State>,
) -> Result<Assembled, ConfigError> {
    let mut new_upstreams = Vec::new();
    let mut providers = HashMap::new();
    for (name, provider_config) in &config.providers {
        let kept = previous
            .filter(|previous| {
                previous.config.server.upstream_idle_timeout == config.server.upstream_idle_timeout
            })
            .and_then(|previous| previous.providers.get(name))
            .filter(|route| *route.config == **provider_config)
            .map(|route| route.upstream_sets().to_vec());
        let upstreams = match kept {
            Some(upstreams) => upstreams,
            None => provider_config
                .endpoints
                .sets()
                .into_iter()
                .map(|(drm, endpoints)| {
                    let label = match drm {
                        Some(drm) => format!("{name} ({drm})"),
                        None => name.clone(),
                    };
                    let upstream = Arc::new(Upstream::new(
                        provider_config.clone(),
                        endpoints,
                        label,
                        config.server.upstream_idle_timeout,
                    ));
                    new_upstreams.push(upstream.clone());
                    (drm, upstream)
                })
                .collect(),
        };
        let provider = resources.providers_by_name[name].clone();
        new_upstreams.extend(provider.upstreams());
        providers.insert(
            name.clone(),
            ProviderRoute::new(provider_config.clone(), provider, upstreams),
        );
    }
    let metrics = lifetime.metrics.clone();
    let service_certificates = ServiceCertificates::new(
        config.providers.keys().map(String::as_str),
        config.server.service_certificate_ttl,
    );
    let authorizations = AuthorizationCache::new(&config.authorization_cache, &metrics);
    let kept_store = previous
        .filter(|previous| previous.config.store == config.store)
        .and_then(|previous| previous.store.clone());
    let store = match kept_store {
        Some(store) => Some(store),
        None => config
            .store
            .as_ref()
            .map(crate::store::Shared::open)
            .transpose()?
            .map(Arc::new),
    };
    let devices = config
        .devices
        .clone()
        .zip(store.clone())
        .map(|(settings, store)| Devices::new(settings, store, &metrics));
    let streams = store.clone().map(|store| match config.streams.clone() {
        Some(settings) => crate::limits::streams::Streams::new(settings, store, &metrics),
        None => crate::limits::streams::Streams::records_only(store, &metrics),
    });
    let quotas = config
        .quota
        .clone()
        .zip(store.clone())
        .map(|(settings, store)| crate::limits::Quotas::new(settings, store, &metrics));
    let single_use = config.auth.as_ref().and_then(|auth| {
        crate::rights::single_use::SingleUseTokens::new(
            &auth.single_use,
            auth.leeway_seconds,
            store.clone(),
        )
    });
    let blocks = config
        .admin
        .token
        .as_ref()
        .and(store.clone())
        .map(|store| crate::limits::Blocks::new(store, config.admin.block_check, &metrics));
    let rate_limits = match previous.filter(|previous| {
        previous.config.rate_limits == config.rate_limits
            && same_store(previous.store.as_ref(), store.as_ref())
    }) {
        Some(previous) => previous.rate_limits.clone(),
        None => Arc::new(crate::limits::RateLimits::new(
            &config.rate_limits,
            store.clone(),
            &metrics,
        )),
    };
    let catalog = match (&config.catalog, resources.catalog, &store) {
        (Some(CatalogSettings::Store(settings)), _, Some(store)) => {
            Some(Contents::Stored(Box::new(StoredCatalog::new(
                store.clone(),
                settings,
                References::of(&config),
            ))))
        }
        (_, file, _) => file.map(Contents::File),
    };
    let state = State {
        generation: previous.map_or(1, |previous| previous.generation + 1),
        providers,
        metrics,
        service_certificates,
        fairplay_certificates: crate::cdm::fairplay::Certificates::new(&config.fairplay),
        auth: resources.auth,
        catalog,
        entitlements: Entitlements::new(&config.entitlement, &config.policies),
        authorizations,
        store,
        devices,
        streams,
        rate_limits,
        quotas,
        single_use,
        territories: resources.territories,
        blocks,
        drain: lifetime.drain.clone(),
        config,
    };
    Ok(Assembled {
        state,
        new_upstreams,
    })
}

fn same_store(
    a: Option<&Arc<crate::store::Shared>>,
    b: Option<&Arc<crate::store::Shared>>,
) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

impl State {
    /// The providers that serve `drm` unless the content names others, in the order they are
    /// asked.
    pub(crate) fn route(&self, drm: Drm) -> impl Iterator<Item = &ProviderRoute> {
        self.config
            .routes
            .get(&drm)
            .into_iter()
            .flatten()
            .filter_map(|provider| self.providers.get(&provider.name))
    }

    /// Every upstream a routed request may need: the license endpoints and token services of
    /// every provider a route names, failover ones included.
    pub(crate) fn routed_upstreams(&self) -> Vec<Arc<Upstream>> {
        let mut upstreams: Vec<Arc<Upstream>> = Vec::new();
        for drm in self.config.routes.keys() {
            for upstream in self.route(*drm).flat_map(|route| route.upstreams_for(*drm)) {
                if !upstreams.iter().any(|known| Arc::ptr_eq(known, &upstream)) {
                    upstreams.push(upstream);
                }
            }
        }
        upstreams
    }

    /// Whether every routed DRM has a provider whose endpoints and token services all have a
    /// healthy endpoint: the first of its list, or one it fails over to.
    pub(crate) fn routes_servable(&self) -> bool {
        self.config.routes.keys().all(|drm| {
            self.route(*drm).any(|route| {
                route
                    .upstreams_for(*drm)
                    .all(|upstream| upstream.healthy_endpoints() > 0)
            })
        })
    }
}

/// Files the config points at (keys, catalog), loaded and validated; `licensegate check`
/// runs this too, so a bad key file or catalog entry fails the check.
pub struct Resources {
    pub auth: Option<Authenticator>,
    pub(crate) territories: Option<crate::rights::territory::Territories>,
    pub(crate) catalog: Option<CatalogStore>,
    pub(crate) providers_by_name: HashMap<String, Arc<dyn Provider>>,
}

pub fn load_resources(config: &Config) -> Result<Resources, ConfigError> {
    if let Some(tls) = &config.tls {
        check_tls(tls)?;
    }
    if let Some(store) = &config.store {
        crate::store::Shared::check(store)?;
    }
    let auth = config.auth.as_ref().map(Authenticator::new).transpose()?;
    let territories = config
        .territories
        .as_ref()
        .map(crate::rights::territory::Territories::new)
        .transpose()?;
    let catalog = match &config.catalog {
        Some(CatalogSettings::File { path, .. }) => Some(
            CatalogStore::open(path, References::of(config))
                .map_err(|e| ConfigError::new(format!("catalog.path: {}", e.key), e.reason))?,
        ),
        _ => None,
    };
    let mut providers_by_name = HashMap::new();
    for (name, provider) in &config.providers {
        let provider = crate::providers::build(provider, config.server.upstream_idle_timeout)?;
        providers_by_name.insert(name.clone(), provider);
    }
    Ok(Resources {
        auth,
        territories,
        catalog,
        providers_by_name,
    })
}

/// Pingora loads the certificate and key only when the listener starts, and panics on a bad
/// file; loading them here turns that into an error naming the key.
fn check_tls(tls: &crate::config::TlsFiles) -> Result<(), ConfigError> {
    let (cert, key) = (tls.cert.to_string_lossy(), tls.key.to_string_lossy());
    let Ok(Some((certs, private_key))) = pingora::tls::load_certs_and_key_files(&cert, &key) else {
        return Err(ConfigError::new(
            "listeners.tls",
            "cert must hold a PEM certificate chain and key a PEM private key",
        ));
    };
    pingora::tls::install_default_crypto_provider();
    pingora::tls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map(drop)
        .map_err(|e| {
            ConfigError::new(
                "listeners.tls.key",
                format!("not usable with the certificate: {e}"),
            )
        })
}

/// Resolves each upstream's endpoints once; a failure is logged and left to the background
/// service, so a resolver that hangs holds nothing up for long.
pub(crate) async fn resolve(upstreams: &[Arc<Upstream>]) {
    for upstream in upstreams {
        let resolved =
            tokio::time::timeout(std::time::Duration::from_secs(5), upstream.discover()).await;
        if !matches!(resolved, Ok(Ok(()))) {
            tracing::warn!(endpoints = upstream.label(), "endpoints not resolved yet");
        }
    }
}
