//! Signals, and how licensegate leaves without losing a request.
//!
//! `SIGTERM`: `/readyz` turns 503 and answers start asking clients to reconnect at once, while
//! the listeners keep accepting for `grace_period_seconds` so load balancers move players away
//! without refusals; then the listeners close, and the process exits as soon as no request is
//! in flight, at the latest after `graceful_shutdown_timeout_seconds`.
//! `SIGQUIT`: the same drain of connections, after Pingora handed the listening sockets to the
//! new process (`serve --upgrade`), with `/readyz` still ready: the node stays in service.
//! `SIGINT`: exit at once.

use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownSignal, ShutdownSignalWatch};
use prometheus::IntGauge;
use tokio::signal::unix::{SignalKind, signal};

use crate::http::listener::Drain;

pub struct Signals {
    pub drain: Drain,
    /// How long listeners stay open after `SIGTERM`.
    pub hold: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut terminate), Ok(mut quit), Ok(mut interrupt)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = interrupt.recv() => return ShutdownSignal::FastShutdown,
            _ = quit.recv() => {
                tracing::info!("SIGQUIT: handing the listeners to the new process, then draining");
                self.drain.start();
                return ShutdownSignal::GracefulUpgrade;
            }
            _ = terminate.recv() => {}
        }
        tracing::info!(
            listeners_open_seconds = self.hold.as_secs(),
            "SIGTERM: draining; /readyz answers 503"
        );
        self.drain.withdraw();
        self.drain.start();
        tokio::select! {
            _ = interrupt.recv() => ShutdownSignal::FastShutdown,
            () = tokio::time::sleep(self.hold) => ShutdownSignal::GracefulTerminate,
        }
    }
}

/// Ends the process once Pingora has closed the listeners and no request is in flight, rather
/// than after the whole of Pingora's fixed grace period.
pub fn exit_when_drained(
    mut phases: tokio::sync::broadcast::Receiver<ExecutionPhase>,
    in_flight: IntGauge,
) {
    std::thread::spawn(move || {
        loop {
            match phases.blocking_recv() {
                Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
        // Two idle readings apart, so a request whose headers just arrived is seen.
        let mut idle_readings = 0;
        while idle_readings < 2 {
            std::thread::sleep(Duration::from_millis(50));
            idle_readings = if in_flight.get() == 0 {
                idle_readings + 1
            } else {
                0
            };
        }
        tracing::info!("drained: no request in flight, exiting");
        crate::telemetry::logging::flush();
        std::process::exit(0);
    });
}
