//! A provider's license endpoints as Pingora sees them: resolved from DNS on a schedule, health
//! checked, and turned into `HttpPeer`s whose options make them share pooled HTTP/2 connections.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::connectors::TransportConnector;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::HttpPeer;
use pingora::protocols::ALPN;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::{Error, ErrorType, Result};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::config::{Endpoint, HealthCheckKind, Protocol, ProviderConfig};
use crate::http::problem::{Problem, upstream_failure};

/// The upstream side of one configured provider.
pub struct Upstream {
    pub(crate) provider: Arc<ProviderConfig>,
    /// What these endpoints are for, in the background service's name.
    label: String,
    balancer: Arc<LoadBalancer<RoundRobin>>,
    idle_timeout: Duration,
    /// Stops the resolution and health checks started by a reload once this upstream is no
    /// longer in any configuration a request uses.
    retire: OnceLock<tokio::sync::watch::Sender<bool>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(retire) = self.retire.get() {
            retire.send_replace(true);
        }
    }
}

/// A chosen endpoint: where to connect, what to say to it, and what we know of its health.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub endpoint: Arc<Endpoint>,
    pub state: Arc<EndpointState>,
}

/// What requests learn about one resolved endpoint as they use it.
///
/// Stream turns: Pingora takes an h2 connection out of its pool while it opens a stream on it,
/// and a request arriving in that moment finds no connection and opens another (its v2 connector
/// documents this false negative). Taking streams one request at a time per backend closes the
/// window: a burst shares one connection instead of opening one per request. A turn lasts from
/// choosing the backend until Pingora hands over the stream: microseconds on a warm pool, a
/// handshake on a cold one, and as long as a stalled endpoint keeps the handshake hanging, which
/// is why waiting for a turn is bounded.
///
/// Ejection: consecutive connect failures or timeouts take the endpoint out of rotation for a
/// while (passive outlier detection, as Envoy does), without waiting for the next health check.
#[derive(Default)]
pub struct EndpointState {
    turn: Arc<Mutex<()>>,
    consecutive_failures: AtomicU32,
    /// Milliseconds since [`epoch`] until which the endpoint is out of rotation; 0 when in.
    ejected_until: AtomicU64,
}

/// The time base of ejection deadlines, so they fit in an atomic.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn millis_since_epoch(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_millis() as u64
}

impl EndpointState {
    /// The turn to open a stream, or `None` when another request has held it for `wait`.
    pub(crate) async fn take_turn(&self, wait: Duration) -> Option<OwnedMutexGuard<()>> {
        if let Ok(turn) = self.turn.clone().try_lock_owned() {
            return Some(turn);
        }
        pingora::time::timeout(wait, self.turn.clone().lock_owned())
            .await
            .ok()
    }

    pub(crate) fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && millis_since_epoch(Instant::now()) < until
    }

    /// The endpoint answered: whatever it said, it is reachable.
    pub(crate) fn record_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// A connect failure or a timeout. Returns true when this failure ejects the endpoint.
    pub(crate) fn record_failure(&self, provider: &ProviderConfig) -> bool {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let threshold = provider.ejection_consecutive_failures;
        if threshold == 0 || failures < threshold || self.is_ejected() {
            return false;
        }
        let until = millis_since_epoch(Instant::now() + provider.ejection_duration).max(1);
        self.ejected_until.store(until, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        true
    }
}

impl Upstream {
    /// Builds the upstream over `endpoints`; its [`Upstream::background`] service must be added
    /// to the server for the endpoint list and health to be kept current.
    pub fn new(
        provider: Arc<ProviderConfig>,
        endpoints: &[Arc<Endpoint>],
        label: String,
        idle_timeout: Duration,
    ) -> Self {
        let discovery = DnsDiscovery {
            endpoints: endpoints.to_vec(),
        };
        let mut balancer = LoadBalancer::from_backends(Backends::new(Box::new(discovery)));
        balancer.set_health_check(Box::new(EndpointProbe {
            provider: provider.clone(),
            transport: TransportConnector::new(None),
            http: Connector::new(None),
        }));
        balancer.health_check_frequency = Some(provider.health_check_interval);
        balancer.update_frequency = Some(provider.dns_refresh);
        balancer.parallel_health_check = true;
        Self {
            provider,
            label,
            balancer: Arc::new(balancer),
            idle_timeout,
            retire: OnceLock::new(),
        }
    }

    /// Starts resolving and health checking the endpoints on the running server's runtime,
    /// until the upstream is dropped (a reload retired it) or the process ends.
    pub(crate) fn start_in_background(&self) {
        let (retire, retired) = tokio::sync::watch::channel(false);
        if self.retire.set(retire).is_err() {
            return;
        }
        let balancer = self.balancer.clone();
        tokio::spawn(async move {
            use pingora::services::background::BackgroundService;
            balancer.start(retired).await;
        });
    }

    /// Resolves the endpoints now, as the background service then does on its schedule.
    pub(crate) async fn discover(&self) -> Result<()> {
        self.balancer.update().await
    }

    /// A healthy endpoint to try, preferring one in rotation and not among `avoid` (endpoints
    /// this request already tried or found stuck), so a retry moves on when there is
    /// somewhere to move to. When every healthy endpoint is ejected, an ejected one is still
    /// better than refusing outright, unless `another_provider_waits`: the request then
    /// fails over.
    pub(crate) fn select(
        &self,
        avoid: &[SocketAddr],
        another_provider_waits: bool,
    ) -> Option<Target> {
        const MAX_ITERATIONS: usize = 256;
        let in_rotation = |backend: &Backend| {
            backend
                .ext
                .get::<Arc<EndpointState>>()
                .is_some_and(|s| !s.is_ejected())
        };
        let backend = self
            .balancer
            .select_with(b"", MAX_ITERATIONS, |backend, healthy| {
                healthy && in_rotation(backend) && !avoid.contains(&backend.addr)
            })
            .or_else(|| {
                self.balancer
                    .select_with(b"", MAX_ITERATIONS, |backend, healthy| {
                        healthy && in_rotation(backend)
                    })
            })
            .or_else(|| {
                (!another_provider_waits)
                    .then(|| self.balancer.select(b"", MAX_ITERATIONS))
                    .flatten()
            })?;
        let endpoint = backend.ext.get::<Arc<Endpoint>>()?.clone();
        let state = backend.ext.get::<Arc<EndpointState>>()?.clone();
        Some(Target {
            addr: backend.addr,
            endpoint,
            state,
        })
    }

    /// Which endpoints these are: the provider, and the DRM or service they serve.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// The longest a new connection may take: TCP, then the TLS handshake.
    pub(crate) fn connection_setup_timeout(&self) -> Duration {
        connection_setup_timeout(&self.provider)
    }

    /// Whether requests share connections, so that taking streams in turn pays off.
    pub(crate) fn multiplexes(&self) -> bool {
        self.provider.protocol != Protocol::H1
    }

    /// Endpoints that pass their health check and are not ejected.
    pub(crate) fn healthy_endpoints(&self) -> usize {
        let backends = self.balancer.backends();
        backends
            .get_backend()
            .iter()
            .filter(|backend| {
                backends.ready(backend)
                    && backend
                        .ext
                        .get::<Arc<EndpointState>>()
                        .is_some_and(|state| !state.is_ejected())
            })
            .count()
    }

    /// The peer for one attempt, with every timeout cut to what is left of the request's
    /// budget (`remaining`): connecting, the TLS handshake and each read. Everything that goes
    /// into Pingora's pool key is derived from the config alone, so all requests to an
    /// endpoint share its connections.
    pub(crate) fn peer(&self, target: &Target, remaining: Duration) -> HttpPeer {
        let mut peer = endpoint_peer(
            &self.provider,
            target.addr.clone(),
            &target.endpoint,
            remaining,
        );
        let options = &mut peer.options;
        options.max_h2_streams = self.provider.max_concurrent_streams;
        options.idle_timeout = Some(self.idle_timeout);
        // Keeps pooled h2 connections from dying silently behind NATs and load balancers.
        options.h2_ping_interval = Some(Duration::from_secs(30));
        peer
    }
}

/// What an endpoint answered to a call licensegate made itself.
pub(crate) struct Exchange {
    pub(crate) status: u16,
    pub(crate) body: Bytes,
}

impl Upstream {
    /// A request licensegate makes itself for `purpose` (a token service, a certificate
    /// endpoint), through Pingora's connector: the same pooled, multiplexed connections, peer
    /// options, endpoint selection, retries and total budget as a forwarded license request.
    /// `request` builds the header for the endpoint chosen. A failure to get any answer is told
    /// as every vendor failure is: 502 or 504 naming the provider and the purpose; what the
    /// answer itself says is the caller's to judge.
    pub(crate) async fn side_call(
        &self,
        connector: &Connector,
        purpose: &str,
        request: impl Fn(&Endpoint) -> Result<RequestHeader>,
        body: Bytes,
        max_answer_bytes: usize,
    ) -> std::result::Result<Exchange, Problem> {
        let name = &self.provider.name;
        self.call(connector, request, body, max_answer_bytes)
            .await
            .map_err(|e| {
                tracing::warn!(provider = %name, error = %e, "{purpose} call failed");
                upstream_failure(&e)
                    .with_detail(format!("{name} {purpose}: {}", e.etype().as_str()))
            })
    }

    /// Any failure before an answer moves on to the next endpoint, within the budget.
    async fn call(
        &self,
        connector: &Connector,
        request: impl Fn(&Endpoint) -> Result<RequestHeader>,
        body: Bytes,
        max_answer_bytes: usize,
    ) -> Result<Exchange> {
        let started = Instant::now();
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut last_error = None;
        for _ in 0..=self.provider.retries {
            let remaining = self
                .provider
                .total_timeout
                .saturating_sub(started.elapsed());
            if remaining.is_zero() {
                break;
            }
            let Some(target) = self.select(&tried, false) else {
                break;
            };
            tried.push(target.addr.clone());
            let peer = self.peer(&target, remaining);
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
        body: answer.freeze(),
    })
}

/// Resolves every endpoint's host on each refresh, so a provider moving its IPs is followed
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
                        // Pingora keeps the previous Backend (and this state) while the
                        // resolved set is unchanged.
                        backend.ext.insert(Arc::new(EndpointState::default()));
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
            tracing::warn!(failures = %failures.join("; "), "some provider endpoints did not resolve");
        }
        Ok((backends, HashMap::new()))
    }
}

fn connection_setup_timeout(provider: &ProviderConfig) -> Duration {
    provider.connect_timeout * 2
}

/// How to reach one endpoint: TLS and SNI from its URL, the provider's protocol and
/// verification, and timeouts cut to `remaining`.
fn endpoint_peer(
    provider: &ProviderConfig,
    addr: SocketAddr,
    endpoint: &Endpoint,
    remaining: Duration,
) -> HttpPeer {
    let sni = if endpoint.tls {
        endpoint.host.clone()
    } else {
        String::new()
    };
    let mut peer = HttpPeer::new(addr, endpoint.tls, sni);
    let options = &mut peer.options;
    options.alpn = match provider.protocol {
        Protocol::H2 => ALPN::H2,
        Protocol::H2OrH1 => ALPN::H2H1,
        Protocol::H1 => ALPN::H1,
    };
    options.connection_timeout = Some(provider.connect_timeout.min(remaining));
    options.total_connection_timeout = Some(connection_setup_timeout(provider).min(remaining));
    let read_timeout = provider.read_timeout.min(remaining);
    options.read_timeout = Some(read_timeout);
    options.write_timeout = Some(read_timeout);
    options.verify_cert = provider.tls_verify;
    options.verify_hostname = provider.tls_verify;
    peer
}

/// The active health check: a connect (with the TLS handshake on https endpoints), or a whole
/// HTTP exchange, each within the provider's connect and read timeouts. An endpoint that accepts
/// TCP and then stalls fails both; a plain TCP check would call it healthy.
struct EndpointProbe {
    provider: Arc<ProviderConfig>,
    transport: TransportConnector,
    http: Connector,
}

#[async_trait]
impl HealthCheck for EndpointProbe {
    async fn check(&self, target: &Backend) -> Result<()> {
        let Some(endpoint) = target.ext.get::<Arc<Endpoint>>() else {
            return Error::e_explain(ErrorType::ConnectNoRoute, "backend without endpoint");
        };
        // Within the provider's own timeouts, with no request budget to cut them.
        let peer = endpoint_peer(&self.provider, target.addr.clone(), endpoint, Duration::MAX);
        match self.provider.health_check {
            HealthCheckKind::Connect => self.transport.new_stream(&peer).await.map(drop),
            HealthCheckKind::Http => self.http_exchange(&peer, endpoint).await,
        }
    }

    fn health_threshold(&self, _success: bool) -> usize {
        1
    }
}

impl EndpointProbe {
    async fn http_exchange(&self, peer: &HttpPeer, endpoint: &Endpoint) -> Result<()> {
        let (mut session, _) = self.http.get_http_session(peer).await?;
        let mut request =
            RequestHeader::build("GET", self.provider.health_check_path.as_bytes(), None)?;
        request.insert_header(http::header::HOST, endpoint.authority.as_str())?;
        session.write_request_header(Box::new(request)).await?;
        session.finish_request_body().await?;
        let exchange = async {
            session.read_response_header().await?;
            while session.read_response_body().await?.is_some() {}
            Ok::<_, Box<Error>>(())
        };
        tokio::time::timeout(self.provider.read_timeout, exchange)
            .await
            .map_err(|_| Error::explain(ErrorType::ReadTimedout, "health check answer"))??;
        match session.response_header().map(|h| h.status.as_u16()) {
            Some(status) if status < 500 => Ok(()),
            status => Error::e_explain(
                ErrorType::HTTPStatus(status.unwrap_or(0)),
                "health check answered with a server error",
            ),
        }
    }
}
