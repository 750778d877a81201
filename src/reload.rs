//! Follows changes to the files the config points at: the catalog and the token keys. A file
//! that fails validation is reported and the running version stays in service.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::server::State;

pub struct Reloader {
    state: Arc<State>,
    interval: Duration,
}

impl Reloader {
    /// `None` when there is nothing to follow.
    pub fn new(state: Arc<State>) -> Option<Self> {
        let intervals = [
            state.config.catalog.as_ref().map(|c| c.reload_interval),
            state.config.auth.as_ref().map(|a| a.reload_interval),
        ];
        let interval = intervals.into_iter().flatten().min()?;
        Some(Self { state, interval })
    }

    fn check(&self) {
        if let Some(catalog) = &self.state.catalog {
            match catalog.reload_if_changed() {
                Ok(true) => tracing::info!(entries = catalog.current().len(), "catalog reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "catalog not reloaded; the previous one stays")
                }
            }
        }
        if let Some(auth) = &self.state.auth {
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
        let mut ticks = tokio::time::interval(self.interval);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticks.tick() => self.check(),
            }
        }
    }
}
