//! What stands between a listening socket and the HTTP app on it: a cap on open connections,
//! deadlines for clients that stall before or between requests, and the drain on shutdown.
//!
//! Pingora bounds none of these: a connection that never finishes its headers, or never sends
//! a byte, stays open until the process ends, and every accepted connection costs a file
//! descriptor that the admin listener then lacks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::server::ShutdownWatch;
use prometheus::IntCounter;
use tokio::sync::{Semaphore, watch};

/// How long a client may take before and between its requests.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    /// From accepting the connection to its first request's complete headers.
    pub(crate) header_read: Duration,
    /// From the end of one request to the next one's complete headers.
    pub(crate) keepalive: Duration,
}

/// The connections open on one listener, so the pipeline can tell the watchdog when a request
/// begins and ends. Keyed by the client's address, unique per open connection on a listener.
#[derive(Default)]
pub struct Connections {
    open: Mutex<HashMap<SocketAddr, Arc<ConnectionClock>>>,
}

impl Connections {
    /// A request's headers have arrived on the connection from `client`.
    pub(crate) fn request_started(&self, client: Option<&SocketAddr>) {
        if let Some(clock) = self.clock(client) {
            clock.in_flight.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The request is answered; the connection is idle unless another is in flight.
    pub(crate) fn request_finished(&self, client: Option<&SocketAddr>) {
        if let Some(clock) = self.clock(client) {
            clock
                .idle_since_ms
                .store(clock.elapsed_ms(), Ordering::Release);
            clock.served.store(true, Ordering::Release);
            clock.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn clock(&self, client: Option<&SocketAddr>) -> Option<Arc<ConnectionClock>> {
        let client = client?;
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(client)
            .cloned()
    }

    fn open(&self, client: SocketAddr) -> Arc<ConnectionClock> {
        let clock = Arc::new(ConnectionClock {
            opened: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
            served: AtomicBool::new(false),
        });
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(client, clock.clone());
        clock
    }

    fn close(&self, client: &SocketAddr, clock: &Arc<ConnectionClock>) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The address may already belong to a newer connection.
        if open
            .get(client)
            .is_some_and(|known| Arc::ptr_eq(known, clock))
        {
            open.remove(client);
        }
    }
}

struct ConnectionClock {
    opened: Instant,
    in_flight: AtomicU32,
    idle_since_ms: AtomicU64,
    served: AtomicBool,
}

impl ConnectionClock {
    fn elapsed_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    /// When the connection must have delivered its next request's headers; `None` while a
    /// request is in flight (its own timeouts bound it).
    fn deadline(&self, deadlines: &Deadlines) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if !self.served.load(Ordering::Acquire) {
            return Some(self.opened + deadlines.header_read);
        }
        let idle_since =
            self.opened + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(idle_since + deadlines.keepalive)
    }
}

/// Cuts a connection that is past its deadline; returns when it is.
async fn watchdog(clock: &ConnectionClock, deadlines: Deadlines) {
    loop {
        match clock.deadline(&deadlines) {
            Some(deadline) if Instant::now() >= deadline => return,
            Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
            // A request in flight: look again when it may have ended.
            None => tokio::time::sleep(deadlines.header_read).await,
        }
    }
}

/// The drain every listener follows on shutdown or upgrade: answers say `Connection: close`,
/// HTTP/2 connections get GOAWAY. Set by licensegate's own signal handling as soon as the
/// signal arrives (not only when Pingora stops the listeners), so clients move away while
/// this process still answers them.
#[derive(Clone)]
pub struct Drain {
    sender: Arc<watch::Sender<bool>>,
    withdrawn: Arc<AtomicBool>,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            sender: Arc::new(watch::channel(false).0),
            withdrawn: Arc::default(),
        }
    }
}

impl Drain {
    pub(crate) fn start(&self) {
        self.sender.send_replace(true);
    }

    /// Tells load balancers to stop sending (`/readyz` 503). Not on an upgrade: the new
    /// process shares the listening sockets, and the node stays in service.
    pub(crate) fn withdraw(&self) {
        self.withdrawn.store(true, Ordering::Release);
    }

    pub(crate) fn withdrawn(&self) -> bool {
        self.withdrawn.load(Ordering::Acquire)
    }

    fn watch(&self) -> ShutdownWatch {
        self.sender.subscribe()
    }
}

/// A listener's app behind the cap and the deadlines.
pub(crate) struct Listener<A> {
    app: Arc<A>,
    permits: Arc<Semaphore>,
    connections: Arc<Connections>,
    deadlines: Deadlines,
    refused: IntCounter,
    drain: Drain,
    follow_pingora_shutdown: Once,
}

impl<A> Listener<A> {
    pub(crate) fn new(
        app: A,
        max_connections: usize,
        connections: Arc<Connections>,
        deadlines: Deadlines,
        refused: IntCounter,
        drain: Drain,
    ) -> Self {
        Self {
            app: Arc::new(app),
            permits: Arc::new(Semaphore::new(max_connections)),
            connections,
            deadlines,
            refused,
            drain,
            follow_pingora_shutdown: Once::new(),
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Listener<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.follow_pingora_shutdown.call_once(|| {
            let mut shutdown = shutdown.clone();
            let drain = self.drain.clone();
            tokio::spawn(async move {
                if shutdown.wait_for(|stopping| *stopping).await.is_ok() {
                    drain.start();
                }
            });
        });
        let Ok(_permit) = self.permits.clone().try_acquire_owned() else {
            // Closing at once keeps the descriptors the admin listener and providers need.
            self.refused.inc();
            return None;
        };
        let client = stream
            .get_socket_digest()
            .and_then(|digest| digest.peer_addr().cloned());
        let drain = self.drain.watch();
        let Some(client) = client else {
            return self.app.process_new(stream, &drain).await;
        };
        let clock = self.connections.open(client.clone());
        let served = tokio::select! {
            reused = self.app.process_new(stream, &drain) => reused,
            () = watchdog(&clock, self.deadlines) => None,
        };
        self.connections.close(&client, &clock);
        served
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

/// Raises the soft open-file limit to the hard one, as nginx's `worker_rlimit_nofile` does,
/// and returns the limit now in force.
pub(crate) fn raise_open_file_limit() -> std::io::Result<u64> {
    let (_, hard) = rlimit::Resource::NOFILE.get()?;
    rlimit::Resource::NOFILE.set(hard, hard)?;
    Ok(hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadlines() -> Deadlines {
        Deadlines {
            header_read: Duration::from_secs(10),
            keepalive: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_new_connection_has_the_header_deadline_and_a_busy_one_none() {
        let clock = ConnectionClock {
            opened: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
            served: AtomicBool::new(false),
        };
        assert_eq!(
            clock.deadline(&deadlines()),
            Some(clock.opened + Duration::from_secs(10))
        );
        clock.in_flight.store(1, Ordering::Release);
        assert_eq!(clock.deadline(&deadlines()), None);
        clock.in_flight.store(0, Ordering::Release);
        clock.served.store(true, Ordering::Release);
        clock.idle_since_ms.store(5_000, Ordering::Release);
        assert_eq!(
            clock.deadline(&deadlines()),
            Some(clock.opened + Duration::from_secs(65))
        );
    }
}
