//! A vendor's license endpoints as Pingora sees them: resolved from DNS on a schedule, health
//! checked, and turned into `HttpPeer`s whose options make them share pooled HTTP/2 connections.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::TcpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::HttpPeer;
use pingora::protocols::ALPN;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::services::background::{GenBackgroundService, background_service};
use pingora::{Error, ErrorType, Result};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::config::{Endpoint, Protocol, VendorConfig};

/// The upstream side of one configured vendor.
pub struct Upstream {
    pub vendor: Arc<VendorConfig>,
    balancer: Arc<LoadBalancer<RoundRobin>>,
    idle_timeout: Duration,
}

/// A chosen endpoint: where to connect and what to say to it.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub endpoint: Arc<Endpoint>,
    pub gate: Arc<StreamGate>,
}

/// Pingora takes an h2 connection out of its pool while it opens a stream on it, and a request
/// arriving in that moment finds no connection and opens another (its v2 connector documents
/// this false negative). Taking streams one request at a time per backend closes the window:
/// a burst shares one connection instead of opening one per request. The turn lasts from
/// choosing the backend until Pingora hands over the stream, a few microseconds on a warm pool.
#[derive(Default)]
pub struct StreamGate(Arc<Mutex<()>>);

impl StreamGate {
    pub async fn take_turn(&self) -> OwnedMutexGuard<()> {
        self.0.clone().lock_owned().await
    }
}

impl Upstream {
    /// Builds the upstream and the background service that keeps its endpoint list and health
    /// current; the service must be added to the server for either to happen.
    pub fn new(
        vendor: Arc<VendorConfig>,
        idle_timeout: Duration,
    ) -> (Self, GenBackgroundService<LoadBalancer<RoundRobin>>) {
        let discovery = DnsDiscovery {
            endpoints: vendor.endpoints.clone(),
        };
        let mut balancer = LoadBalancer::from_backends(Backends::new(Box::new(discovery)));
        let mut health_check = TcpHealthCheck::new();
        health_check.peer_template.options.connection_timeout = Some(vendor.connect_timeout);
        balancer.set_health_check(health_check);
        balancer.health_check_frequency = Some(vendor.health_check_interval);
        balancer.update_frequency = Some(vendor.dns_refresh);
        balancer.parallel_health_check = true;
        let service = background_service(&format!("endpoints of {}", vendor.name), balancer);
        let upstream = Self {
            vendor,
            balancer: service.task(),
            idle_timeout,
        };
        (upstream, service)
    }

    /// A healthy endpoint not yet `tried` by this request, so a retry moves on when there is
    /// somewhere to move to; with every healthy endpoint tried, any healthy one.
    pub fn select(&self, tried: &[SocketAddr]) -> Option<Target> {
        const MAX_ITERATIONS: usize = 256;
        let backend = self
            .balancer
            .select_with(b"", MAX_ITERATIONS, |backend, healthy| {
                healthy && !tried.contains(&backend.addr)
            })
            .or_else(|| self.balancer.select(b"", MAX_ITERATIONS))?;
        let endpoint = backend.ext.get::<Arc<Endpoint>>()?.clone();
        let gate = backend.ext.get::<Arc<StreamGate>>()?.clone();
        Some(Target {
            addr: backend.addr,
            endpoint,
            gate,
        })
    }

    /// Whether requests share connections, so that taking streams in turn pays off.
    pub fn multiplexes(&self) -> bool {
        self.vendor.protocol != Protocol::H1
    }

    pub fn healthy_endpoints(&self) -> usize {
        let backends = self.balancer.backends();
        backends
            .get_backend()
            .iter()
            .filter(|backend| backends.ready(backend))
            .count()
    }

    /// The peer for one attempt. Everything that goes into Pingora's pool key is derived from
    /// the config alone, so all requests to an endpoint share its connections.
    pub fn peer(&self, target: &Target, read_timeout: Duration) -> HttpPeer {
        let endpoint = &target.endpoint;
        let sni = if endpoint.tls {
            endpoint.host.clone()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(target.addr.clone(), endpoint.tls, sni);
        let options = &mut peer.options;
        options.alpn = match self.vendor.protocol {
            Protocol::H2 => ALPN::H2,
            Protocol::H2OrH1 => ALPN::H2H1,
            Protocol::H1 => ALPN::H1,
        };
        options.max_h2_streams = self.vendor.max_concurrent_streams;
        options.connection_timeout = Some(self.vendor.connect_timeout);
        options.total_connection_timeout = Some(self.vendor.connect_timeout * 2);
        options.read_timeout = Some(read_timeout);
        options.write_timeout = Some(read_timeout);
        options.idle_timeout = Some(self.idle_timeout);
        options.verify_cert = self.vendor.tls_verify;
        options.verify_hostname = self.vendor.tls_verify;
        // Keeps pooled h2 connections from dying silently behind NATs and load balancers.
        options.h2_ping_interval = Some(Duration::from_secs(30));
        peer
    }
}

/// Resolves every endpoint's host on each refresh, so a vendor moving its IPs is followed
/// without a restart. A failed lookup keeps the previous list (Pingora ignores a failed update).
struct DnsDiscovery {
    endpoints: Vec<Arc<Endpoint>>,
}

#[async_trait]
impl ServiceDiscovery for DnsDiscovery {
    async fn discover(&self) -> Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut backends = BTreeSet::new();
        let mut failures = Vec::new();
        for endpoint in &self.endpoints {
            match tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port)).await {
                Ok(addrs) => {
                    for addr in addrs {
                        let mut backend = Backend::new(&addr.to_string())?;
                        backend.ext.insert(endpoint.clone());
                        // Pingora keeps the previous Backend (and this gate) while the
                        // resolved set is unchanged.
                        backend.ext.insert(Arc::new(StreamGate::default()));
                        backends.insert(backend);
                    }
                }
                Err(e) => failures.push(format!("{}: {e}", endpoint.host)),
            }
        }
        if backends.is_empty() {
            return Error::e_explain(
                ErrorType::ConnectNoRoute,
                format!("no endpoint resolved ({})", failures.join("; ")),
            );
        }
        if !failures.is_empty() {
            tracing::warn!(failures = %failures.join("; "), "some vendor endpoints did not resolve");
        }
        Ok((backends, HashMap::new()))
    }
}
