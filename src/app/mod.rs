//! The composition root: turns the validated [`Config`] into a Pingora server, the license
//! listener (the proxy), the admin listener, and one background service per routed provider for
//! DNS and health checks. Only `main` uses it.

pub mod catalog;
pub mod probe;
pub mod shutdown;

use std::sync::Arc;

use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::config::{Config, ConfigError};
use crate::http::listener::{self, Deadlines, Listener};
use crate::pipeline::hooks::LicenseProxy;
use crate::providers::upstream::Upstream;
use crate::state::reload::{Live, Reloader};
use crate::state::{Assembled, Lifetime, assemble, load_resources, resolve};

/// Builds the server and the state its requests share; `upgrade` takes the listening sockets
/// from a running licensegate (`docs/operations.md`, upgrades) instead of binding them.
pub fn build(
    config: Config,
    config_path: Option<std::path::PathBuf>,
    upgrade: bool,
    early_hangup: Arc<std::sync::atomic::AtomicBool>,
) -> Result<(Server, Arc<Live>), ConfigError> {
    if !upgrade {
        listeners_free(&config)?;
    }
    let resources = load_resources(&config)?;
    let options = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let conf = server_conf(&config);
    let lifetime = Lifetime {
        most_attempts: conf.max_retries,
        ..Lifetime::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(options), conf);
    let Assembled {
        state,
        new_upstreams,
    } = assemble(config, resources, &lifetime, None)?;
    resolve_before_serving(&new_upstreams);
    let live = Arc::new(Live::new(state, lifetime.clone(), config_path));
    server.add_service(pingora::services::background::background_service(
        "reloader",
        Reloader::new(live.clone(), new_upstreams, early_hangup),
    ));

    let state = live.current();
    let (license_cap, admin_cap) = connection_caps(&state.config);
    let deadlines = Deadlines {
        header_read: state.config.server.header_read_timeout,
        keepalive: state.config.server.keepalive_timeout,
    };
    let refused = |name: &str| {
        lifetime
            .metrics
            .connections_refused
            .with_label_values(&[name])
    };

    let mut proxy =
        pingora::proxy::http_proxy(&server.configuration, LicenseProxy { live: live.clone() });
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    options.h2_idle_timeout = Some(state.config.server.keepalive_timeout);
    proxy.server_options = Some(options);
    let mut license = Service::new(
        "license API".to_string(),
        Listener::new(
            proxy,
            license_cap,
            lifetime.license_connections.clone(),
            deadlines,
            refused("license"),
            lifetime.drain.clone(),
        ),
    );
    let license_addr = state.config.license_listener.to_string();
    match &state.config.tls {
        Some(tls) => {
            let mut settings =
                TlsSettings::intermediate(&tls.cert.to_string_lossy(), &tls.key.to_string_lossy())
                    .map_err(|e| ConfigError::new("listeners.tls", e.to_string()))?;
            settings.enable_h2();
            license.add_tls_with_settings(&license_addr, None, settings);
        }
        None => license.add_tcp(&license_addr),
    }
    server.add_service(license);

    let mut admin = Service::new(
        "admin API".to_string(),
        Listener::new(
            AdminApp { live: live.clone() },
            admin_cap,
            lifetime.admin_connections.clone(),
            deadlines,
            refused("admin"),
            lifetime.drain.clone(),
        ),
    );
    admin.add_tcp(&state.config.admin_listener.to_string());
    server.add_service(admin);
    Ok((server, live))
}

/// Refuses to start on an address another socket listens on. Pingora would try to bind it for
/// 30 s and then stop only that listener's service, leaving a process that serves licenses with
/// no health checks or metrics, or answers ready with no license API. (An upgrade takes the
/// running process's sockets, which are in use by design.)
fn listeners_free(config: &Config) -> Result<(), ConfigError> {
    // Both held at once, as Pingora will hold them: the two may overlap (`0.0.0.0:P` and
    // `127.0.0.1:P`). Bound as Pingora binds (SO_REUSEADDR, dual-stack IPv6), so a port left
    // in TIME_WAIT by a restart is free.
    let mut held = Vec::new();
    for (key, address) in [
        ("listeners.license", config.license_listener),
        ("listeners.admin", config.admin_listener),
    ] {
        let listener = std::net::TcpListener::bind(address)
            .map_err(|e| ConfigError::new(key, format!("cannot listen on {address}: {e}")))?;
        held.push(listener);
    }
    Ok(())
}

/// Resolves every endpoint once before the listeners open. Otherwise the first requests (and,
/// on an upgrade, those arriving the moment the new process takes the sockets) would find no
/// endpoint until the background services' first run. A failure is logged; the background
/// services keep trying.
fn resolve_before_serving(upstreams: &[Arc<Upstream>]) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    runtime.block_on(resolve(upstreams));
}

/// Room kept for everything but the listeners' connections: provider connections, the device
/// database, key and catalog files, logs.
const RESERVED_DESCRIPTORS: u64 = 256;

/// Each listener's connection cap, after raising the open-file limit; when the limit cannot
/// hold both caps, the license listener's gives way so the admin listener keeps answering. A
/// provider spoken to over HTTP/1.1 takes a connection per request in flight, so with one each
/// player connection is budgeted two descriptors.
fn connection_caps(config: &Config) -> (usize, usize) {
    let (license, admin) = (config.license_max_connections, config.admin_max_connections);
    let limit = match listener::raise_open_file_limit() {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "open file limit unknown; connection caps as configured");
            return (license, admin);
        }
    };
    let per_player = if config
        .providers
        .values()
        .any(|provider| provider.protocol != crate::config::Protocol::H2)
    {
        2
    } else {
        1
    };
    let room = limit.saturating_sub(RESERVED_DESCRIPTORS + admin as u64) as usize / per_player;
    let license = if license > room {
        tracing::warn!(
            open_file_limit = limit,
            configured = license,
            applied = room.max(1),
            "listeners.license_max_connections exceeds what the open file limit allows"
        );
        room.max(1)
    } else {
        license
    };
    tracing::info!(
        open_file_limit = limit,
        license_max_connections = license,
        admin_max_connections = admin,
        "connection limits"
    );
    (license, admin)
}

fn server_conf(config: &Config) -> ServerConf {
    let server = &config.server;
    let most_attempts = config.most_attempts();
    ServerConf {
        threads: server.threads,
        // licensegate keeps its listeners open for its own grace period before it hands
        // Pingora the shutdown (see `shutdown.rs`); Pingora's grace period is then the time
        // left for requests in flight, and the process exits as soon as none is.
        grace_period_seconds: Some(server.graceful_shutdown_timeout_seconds),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: server.upgrade_socket.to_string_lossy().into_owned(),
        upstream_keepalive_pool_size: server.upstream_keepalive_pool_size,
        // Pingora's loop bound; each provider's own count is enforced per request.
        max_retries: most_attempts,
        ..ServerConf::default()
    }
}
