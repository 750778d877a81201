//! The running configuration and its reloads. A full reload (`SIGHUP`, or `POST /admin/reload`
//! on the admin listener) reads the config file again and swaps in a whole new [`State`]; the
//! catalog and token key files are also followed on their own schedule. Whatever fails to
//! load is reported and the running version stays in service.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;

use crate::config::{CatalogSettings, Config, ConfigError};
use crate::providers::upstream::Upstream;
use crate::rights::catalog::Contents;
use crate::state::{Assembled, Lifetime, State, assemble, load_resources, resolve};

/// How often refilled rate-limit buckets are dropped, and expired rows of the embedded store.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The state requests start on, and how it came to be.
pub struct Live {
    current: ArcSwap<State>,
    lifetime: Lifetime,
    config_path: Option<PathBuf>,
    /// One reload at a time: two would each build on the same previous state.
    reloading: tokio::sync::Mutex<()>,
    status: Mutex<ReloadStatus>,
}

/// What `/readyz` and the status page show of the configuration.
#[derive(Clone, Debug, Serialize)]
pub struct ReloadStatus {
    pub generation: u64,
    pub(crate) loaded_at: String,
    pub(crate) last_error: Option<String>,
    pub(crate) last_error_at: Option<String>,
}

impl Live {
    pub(crate) fn new(state: State, lifetime: Lifetime, config_path: Option<PathBuf>) -> Self {
        let status = ReloadStatus {
            generation: state.generation,
            loaded_at: crate::clock::rfc3339(SystemTime::now()),
            last_error: None,
            last_error_at: None,
        };
        lifetime
            .metrics
            .config_generation
            .set(state.generation as i64);
        Self {
            current: ArcSwap::from_pointee(state),
            lifetime,
            config_path,
            reloading: tokio::sync::Mutex::new(()),
            status: Mutex::new(status),
        }
    }

    /// The state a request starting now uses, to its end.
    pub(crate) fn current(&self) -> Arc<State> {
        self.current.load_full()
    }

    pub fn lifetime(&self) -> &Lifetime {
        &self.lifetime
    }

    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Reads the config file again and, if it is valid, serves it from the next request on.
    pub(crate) async fn reload(&self) -> Result<u64, ConfigError> {
        let _one_at_a_time = self.reloading.lock().await;
        let outcome = self.load_next().await;
        let now = crate::clock::rfc3339(SystemTime::now());
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let metrics = &self.lifetime.metrics;
        match &outcome {
            Ok(generation) => {
                metrics.config_reloads.with_label_values(&["ok"]).inc();
                metrics.config_generation.set(*generation as i64);
                status.generation = *generation;
                status.loaded_at = now;
                tracing::info!(generation, "configuration reloaded");
            }
            Err(e) => {
                metrics.config_reloads.with_label_values(&["error"]).inc();
                status.last_error = Some(e.to_string());
                status.last_error_at = Some(now);
                tracing::error!(
                    key = %e.key,
                    reason = %e.reason,
                    "configuration not reloaded; the running one stays"
                );
            }
        }
        outcome
    }

    async fn load_next(&self) -> Result<u64, ConfigError> {
        let path = self
            .config_path
            .clone()
            .ok_or_else(|| ConfigError::new("", "licensegate was started without a config file"))?;
        let current = self.current();
        let lifetime = self.lifetime.clone();
        // Files (config, keys, catalog) are read and stores opened off the runtime's threads.
        let Assembled {
            state,
            new_upstreams,
        } = tokio::task::spawn_blocking(move || {
            let config = Config::load(&path)?;
            needs_no_restart(&current.config, &config, lifetime.most_attempts)?;
            for deprecation in &config.deprecations {
                tracing::warn!("{deprecation}");
            }
            let resources = load_resources(&config)?;
            assemble(config, resources, &lifetime, Some(&current))
        })
        .await
        .map_err(|e| ConfigError::new("", format!("loading stopped: {e}")))??;
        resolve(&new_upstreams).await;
        for upstream in &new_upstreams {
            upstream.start_in_background();
        }
        let generation = state.generation;
        self.current.store(Arc::new(state));
        Ok(generation)
    }
}

/// Settings the running process was built with: the listeners and Pingora's own server
/// settings. A new value for any of them is refused by name. `most_attempts` is the bound
/// Pingora's retry loop was built with.
fn needs_no_restart(
    running: &Config,
    next: &Config,
    most_attempts: usize,
) -> Result<(), ConfigError> {
    let (now, then) = (&running.server, &next.server);
    let next_attempts = next.most_attempts();
    let changed = [
        (
            "listeners.license",
            running.license_listener != next.license_listener,
        ),
        (
            "listeners.admin",
            running.admin_listener != next.admin_listener,
        ),
        ("listeners.tls", running.tls != next.tls),
        (
            "listeners.license_max_connections",
            running.license_max_connections != next.license_max_connections,
        ),
        (
            "listeners.admin_max_connections",
            running.admin_max_connections != next.admin_max_connections,
        ),
        ("server.threads", now.threads != then.threads),
        (
            "server.grace_period_seconds",
            now.grace_period_seconds != then.grace_period_seconds,
        ),
        ("server.log_format", now.log_format != then.log_format),
        (
            "server.header_read_timeout_ms",
            now.header_read_timeout != then.header_read_timeout,
        ),
        (
            "server.keepalive_timeout_seconds",
            now.keepalive_timeout != then.keepalive_timeout,
        ),
        (
            "server.upstream_keepalive_pool_size",
            now.upstream_keepalive_pool_size != then.upstream_keepalive_pool_size,
        ),
        (
            "server.graceful_shutdown_timeout_seconds",
            now.graceful_shutdown_timeout_seconds != then.graceful_shutdown_timeout_seconds,
        ),
        (
            "server.upgrade_socket",
            now.upgrade_socket != then.upgrade_socket,
        ),
        (
            "providers.*.retries (more than the most at start)",
            next_attempts > most_attempts,
        ),
    ];
    match changed.iter().find(|(_, differs)| *differs) {
        Some((key, _)) => Err(ConfigError::new(
            *key,
            "cannot change without a restart (or an upgrade, see docs/operations.md)",
        )),
        None => Ok(()),
    }
}

/// Starts the first configuration's endpoint checks, follows the catalog and token key files,
/// and reloads the whole configuration on `SIGHUP`.
pub(crate) struct Reloader {
    live: Arc<Live>,
    /// The first configuration's upstreams, whose resolution and health checks start with the
    /// server's runtime.
    first_upstreams: Mutex<Vec<Arc<Upstream>>>,
    /// Set by a `SIGHUP` that came while the server was being built.
    early_hangup: Arc<AtomicBool>,
}

impl Reloader {
    pub(crate) fn new(
        live: Arc<Live>,
        first_upstreams: Vec<Arc<Upstream>>,
        early_hangup: Arc<AtomicBool>,
    ) -> Self {
        Self {
            live,
            first_upstreams: Mutex::new(first_upstreams),
            early_hangup,
        }
    }

    /// How often the current configuration's files are looked at; `None` for never.
    fn file_interval(state: &State) -> Option<Duration> {
        let intervals = [
            match &state.config.catalog {
                Some(CatalogSettings::File {
                    reload_interval, ..
                }) => Some(*reload_interval),
                _ => None,
            },
            state.config.auth.as_ref().map(|a| a.reload_interval),
        ];
        intervals.into_iter().flatten().min()
    }

    /// Expired rows as the current configuration defines them: its device idle time and quota
    /// period.
    fn sweep_store(state: &State) {
        let Some(store) = &state.store else {
            return;
        };
        let device_idle = state
            .config
            .devices
            .as_ref()
            .map(|devices| devices.slot_idle);
        let quota_period = state
            .config
            .quota
            .as_ref()
            .map(|quota| quota.period.as_secs());
        store.sweep_in_background(move || crate::store::Expired {
            now: crate::clock::now_seconds(),
            device_idle,
            quota_period,
        });
    }

    fn check_files(state: &State) {
        if let Some(Contents::File(catalog)) = &state.catalog {
            match catalog.reload_if_changed() {
                Ok(true) => tracing::info!(entries = catalog.current().len(), "catalog reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "catalog not reloaded; the previous one stays")
                }
            }
        }
        if let Some(auth) = &state.auth {
            match auth.reload_if_changed() {
                Ok(true) => tracing::info!("token keys reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "token keys not reloaded; the previous ones stay")
                }
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let first = std::mem::take(
            &mut *self
                .first_upstreams
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for upstream in first {
            upstream.start_in_background();
        }
        let mut hangups =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(hangups) => Some(hangups),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP cannot reload: no handler");
                    None
                }
            };
        if self.early_hangup.swap(false, Ordering::Relaxed) {
            let _ = self.live.reload().await;
        }
        // Each second, the files of whichever configuration is current are due or not: a
        // reload that adds a catalog or shortens an interval takes effect within a second.
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        let mut last_file_check = tokio::time::Instant::now();
        let mut last_sweep = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticks.tick() => {
                    let state = self.live.current();
                    // A bucket that refilled is a fresh one: memory follows the clients asking
                    // now, not every address that ever asked.
                    if last_sweep.elapsed() >= SWEEP_INTERVAL {
                        state.rate_limits.forget_idle();
                        Self::sweep_store(&state);
                        last_sweep = tokio::time::Instant::now();
                    }
                    if Self::file_interval(&state)
                        .is_some_and(|interval| last_file_check.elapsed() >= interval)
                    {
                        Self::check_files(&state);
                        last_file_check = tokio::time::Instant::now();
                    }
                }
                Some(()) = async {
                    match hangups.as_mut() {
                        Some(hangups) => hangups.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let _ = self.live.reload().await;
                }
            }
        }
    }
}
