//! Turns the validated [`Config`] into a Pingora server: the license listener (the proxy), the
//! admin listener, and one background service per routed vendor for DNS and health checks.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::config::Config;
use crate::drm::Drm;
use crate::metrics::Metrics;
use crate::proxy::LicenseProxy;
use crate::service_certificate::ServiceCertificates;
use crate::upstream::Upstream;

/// Everything a request may consult, built once at start.
pub struct State {
    pub config: Config,
    pub upstreams: HashMap<Drm, Arc<Upstream>>,
    pub metrics: Metrics,
    pub service_certificates: ServiceCertificates,
    routed: Vec<Arc<Upstream>>,
}

impl State {
    /// Every vendor that serves at least one route, once.
    pub fn routed_upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.routed.iter()
    }
}

/// Builds the server; `run_forever` (or `run`) starts it.
pub fn build(config: Config) -> Result<Server, Box<pingora::Error>> {
    let mut server = Server::new_with_opt_and_conf(None, server_conf(&config));

    let mut by_vendor: BTreeMap<String, Arc<Upstream>> = BTreeMap::new();
    for vendor in config.routes.values() {
        if by_vendor.contains_key(&vendor.name) {
            continue;
        }
        let (upstream, discovery) =
            Upstream::new(vendor.clone(), config.server.upstream_idle_timeout);
        server.add_service(discovery);
        by_vendor.insert(vendor.name.clone(), Arc::new(upstream));
    }
    let upstreams = config
        .routes
        .iter()
        .map(|(drm, vendor)| (*drm, by_vendor[&vendor.name].clone()))
        .collect();
    let service_certificates = ServiceCertificates::new(
        by_vendor.keys().map(String::as_str),
        config.server.service_certificate_ttl,
    );
    let state = Arc::new(State {
        upstreams,
        metrics: Metrics::new(),
        service_certificates,
        routed: by_vendor.into_values().collect(),
        config,
    });

    let mut license = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        LicenseProxy {
            state: state.clone(),
        },
        "license API",
    );
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    license
        .app_logic_mut()
        .expect("a fresh service has its app")
        .server_options = Some(options);
    let license_addr = state.config.license_listener.to_string();
    match &state.config.tls {
        Some(tls) => {
            let mut settings =
                TlsSettings::intermediate(&tls.cert.to_string_lossy(), &tls.key.to_string_lossy())?;
            settings.enable_h2();
            license.add_tls_with_settings(&license_addr, None, settings);
        }
        None => license.add_tcp(&license_addr),
    }
    server.add_service(license);

    let mut admin = Service::new(
        "admin API".to_string(),
        AdminApp {
            state: state.clone(),
        },
    );
    admin.add_tcp(&state.config.admin_listener.to_string());
    server.add_service(admin);
    Ok(server)
}

fn server_conf(config: &Config) -> ServerConf {
    let server = &config.server;
    let most_attempts = config
        .vendors
        .values()
        .map(|vendor| vendor.retries + 1)
        .max()
        .unwrap_or(1);
    ServerConf {
        threads: server.threads,
        grace_period_seconds: Some(server.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(server.graceful_shutdown_timeout_seconds),
        upstream_keepalive_pool_size: server.upstream_keepalive_pool_size,
        // Pingora's loop bound; each vendor's own count is enforced per request.
        max_retries: most_attempts,
        ..ServerConf::default()
    }
}
