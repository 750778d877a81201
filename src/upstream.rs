//! A vendor's license endpoints as Pingora sees them: resolved from DNS on a schedule, health
//! checked, and turned into `HttpPeer`s whose options make them share pooled HTTP/2 connections.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::TcpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::HttpPeer;
use pingora::protocols::ALPN;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::services::background::GenBackgroundService;
use pingora::{Error, ErrorType, Result};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::config::{Endpoint, Protocol, VendorConfig};

/// The upstream side of one configured vendor.
pub struct Upstream {
    pub vendor: Arc<VendorConfig>,
    /// What these endpoints are for, in the background service's name.
    label: String,
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
    /// Builds the upstream over `endpoints`; its [`Upstream::background`] service must be added
    /// to the server for the endpoint list and health to be kept current.
    pub fn new(
        vendor: Arc<VendorConfig>,
        endpoints: &[Arc<Endpoint>],
        label: String,
        idle_timeout: Duration,
    ) -> Self {
        let discovery = DnsDiscovery {
            endpoints: endpoints.to_vec(),
        };
        let mut balancer = LoadBalancer::from_backends(Backends::new(Box::new(discovery)));
        let mut health_check = TcpHealthCheck::new();
        health_check.peer_template.options.connection_timeout = Some(vendor.connect_timeout);
        balancer.set_health_check(health_check);
        balancer.health_check_frequency = Some(vendor.health_check_interval);
        balancer.update_frequency = Some(vendor.dns_refresh);
        balancer.parallel_health_check = true;
        Self {
            vendor,
            label,
            balancer: Arc::new(balancer),
            idle_timeout,
        }
    }

    /// The service that resolves and health checks the endpoints.
    pub fn background(&self) -> GenBackgroundService<LoadBalancer<RoundRobin>> {
        GenBackgroundService::new(
            format!("endpoints of {}", self.label),
            self.balancer.clone(),
        )
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

    /// Which endpoints these are: the vendor, and the DRM or service they serve.
    pub fn label(&self) -> &str {
        &self.label
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

/// What an endpoint answered to a call licensegate made itself.
pub struct Exchange {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Upstream {
    /// A request licensegate makes itself (a vendor's token service), through Pingora's
    /// connector: the same pooled, multiplexed connections, peer options, endpoint selection,
    /// retries and total budget as a forwarded license request. `request` builds the header
    /// for the endpoint chosen; any failure before an answer moves on to the next attempt.
    pub async fn call(
        &self,
        connector: &Connector,
        request: impl Fn(&Endpoint) -> Result<RequestHeader>,
        body: Bytes,
        max_answer_bytes: usize,
    ) -> Result<Exchange> {
        let started = Instant::now();
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut last_error = None;
        for _ in 0..=self.vendor.retries {
            let remaining = self.vendor.total_timeout.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                break;
            }
            let Some(target) = self.select(&tried) else {
                break;
            };
            tried.push(target.addr.clone());
            let peer = self.peer(&target, remaining.min(self.vendor.read_timeout));
            let header = request(&target.endpoint)?;
            let attempt = exchange(connector, &peer, header, body.clone(), max_answer_bytes);
            match tokio::time::timeout(remaining, attempt).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) => last_error = Some(e),
                Err(_) => {
                    last_error = Some(Error::explain(
                        ErrorType::ReadTimedout,
                        "no answer within the total budget",
                    ))
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            Error::explain(
                ErrorType::ConnectNoRoute,
                format!("{} has no healthy endpoint", self.label),
            )
        }))
    }
}

async fn exchange(
    connector: &Connector,
    peer: &HttpPeer,
    header: RequestHeader,
    body: Bytes,
    max_answer_bytes: usize,
) -> Result<Exchange> {
    let (mut session, _reused) = connector.get_http_session(peer).await?;
    session.write_request_header(Box::new(header)).await?;
    if !body.is_empty() {
        session.write_request_body(body, false).await?;
    }
    session.finish_request_body().await?;
    session.read_response_header().await?;
    let response = session
        .response_header()
        .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no response header"))?;
    let status = response.status.as_u16();
    let headers = response.headers.clone();
    let mut answer = BytesMut::new();
    while let Some(chunk) = session.read_response_body().await? {
        if answer.len() + chunk.len() > max_answer_bytes {
            return Error::e_explain(ErrorType::InvalidHTTPHeader, "answer too large");
        }
        answer.extend_from_slice(&chunk);
    }
    connector
        .release_http_session(session, peer, peer.options.idle_timeout)
        .await;
    Ok(Exchange {
        status,
        headers,
        body: answer.freeze(),
    })
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
