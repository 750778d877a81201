//! The admin listener: liveness, readiness and metrics, kept off the license listener so they
//! can be firewalled apart from what players reach.

mod catalog;
pub(crate) mod demo;
mod speke;

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, header};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use serde_json::json;

use crate::http::problem::{Problem, Refusal};
use crate::state::State;
use crate::state::reload::Live;

pub(crate) struct AdminApp {
    pub(crate) live: Arc<Live>,
}

/// Pingora's ready-made app for this (`ServeHttp`) logs the raw bytes of a request it cannot
/// parse, bearer token included, and the request URI on write errors; this one logs neither.
#[async_trait]
impl HttpServerApp for AdminApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut http: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match http.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::info!(error = e.etype().as_str(), "admin request not readable");
                return None;
            }
        }
        let connections = &self.live.lifetime().admin_connections;
        connections.request_started(http.client_addr());
        let state = self.live.current();
        let server = &state.config.server;
        http.set_keepalive((!*shutdown.borrow()).then_some(server.keepalive_timeout.as_secs()));
        http.set_write_timeout(Some(server.answer_write_timeout));
        let response = self.response(&state, &mut http).await;
        let (mut parts, body) = response.into_parts();
        // Without a length the player cannot tell where the answer ends on a connection kept
        // for its next request.
        parts
            .headers
            .entry(header::CONTENT_LENGTH)
            .or_insert_with(|| http::HeaderValue::from(body.len()));
        let header: ResponseHeader = parts.into();
        let head_only = http.req_header().method == Method::HEAD;
        let mut written = http.write_response_header(Box::new(header)).await;
        if written.is_ok() && !body.is_empty() && !head_only {
            written = http.write_response_body(body.into(), true).await;
        }
        connections.request_finished(http.client_addr());
        if let Err(e) = written {
            tracing::info!(error = e.etype().as_str(), "admin answer not delivered");
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&http);
        match http.finish().await {
            Ok(reusable) => {
                reusable.map(|stream| ReusedHttpStream::from_reusable_stream(stream, settings))
            }
            Err(_) => None,
        }
    }
}

impl AdminApp {
    async fn response(&self, state: &State, session: &mut ServerSession) -> Response<Vec<u8>> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let request = session.req_header();
        let server = &state.config.server;
        let mut response = if let Err(refusal) = crate::http::headers::check_limits(request, server)
        {
            problem(&refusal, &request_id)
        } else {
            let path = request.uri.path();
            if let Some(rest) = path.strip_prefix(DEVICES_PREFIX) {
                self.devices(state, request, rest, &request_id).await
            } else if let Some(rest) = path.strip_prefix(USERS_PREFIX) {
                self.users(state, request, rest, &request_id).await
            } else if path == catalog::CATALOG_PATH
                || path.starts_with(&format!("{}/", catalog::CATALOG_PATH))
            {
                self.catalog(state, session, &request_id).await
            } else if path == speke::SPEKE_PATH {
                self.speke(state, session, &request_id).await
            } else if path == RELOAD_PATH {
                self.reload(state, request, &request_id).await
            } else {
                self.answer(state, request, &request_id).await
            }
        };
        if let Ok(value) = http::HeaderValue::from_str(&request_id) {
            response
                .headers_mut()
                .insert(crate::http::headers::REQUEST_ID, value);
        }
        response
    }
}

/// `POST /admin/reload`: the whole configuration, as `SIGHUP` does.
const RELOAD_PATH: &str = "/admin/reload";

/// `GET /v1/devices/{user}`, `DELETE /v1/devices/{user}`, `DELETE /v1/devices/{user}/{device}`.
const DEVICES_PREFIX: &str = "/v1/devices/";
const USERS_PREFIX: &str = "/v1/users/";

impl AdminApp {
    async fn devices(
        &self,
        state: &State,
        request: &RequestHeader,
        rest: &str,
        request_id: &str,
    ) -> Response<Vec<u8>> {
        let problem = |p: Problem| problem(&p, request_id);
        let Some(devices) = &state.devices else {
            return problem(Problem::not_found().with_detail("device limits are not configured"));
        };
        if let Some(refused) = self.unauthorized(state, request, request_id) {
            return refused;
        }
        let decoded: Vec<String> = rest
            .split('/')
            .map(crate::http::headers::path_segment)
            .collect();
        let unavailable = |e: crate::store::StoreError| {
            tracing::error!(error = %e, "device store unavailable for the admin API");
            problem(Problem::new(Refusal::DeviceStoreUnavailable))
        };
        match (&request.method, decoded.as_slice()) {
            (&Method::GET, [user]) if !user.is_empty() => match devices.list(user).await {
                Ok(slots) => json_response(
                    200,
                    json!({
                        "user": user,
                        "default_limit": devices.settings.max_per_user,
                        "slot_idle_seconds": devices.settings.slot_idle.as_secs(),
                        "devices": slots,
                    }),
                ),
                Err(e) => unavailable(e),
            },
            (&Method::DELETE, [user]) if !user.is_empty() => match devices.remove_all(user).await {
                Ok(removed) => json_response(200, json!({"user": user, "removed": removed})),
                Err(e) => unavailable(e),
            },
            (&Method::DELETE, [user, device]) if !user.is_empty() && !device.is_empty() => {
                match devices.remove(user, device).await {
                    Ok(true) => json_response(200, json!({"user": user, "removed": 1})),
                    Ok(false) => problem(
                        Problem::new(Refusal::DeviceNotRegistered)
                            .with_detail(format!("'{user}' has no device '{device}'")),
                    ),
                    Err(e) => unavailable(e),
                }
            }
            (&Method::GET | &Method::DELETE, _) => problem(Problem::not_found()),
            _ => problem(Problem::method_not_allowed()),
        }
    }

    /// Answers once the reload is done: the new generation, or why the running one stays.
    async fn reload(
        &self,
        state: &State,
        request: &RequestHeader,
        request_id: &str,
    ) -> Response<Vec<u8>> {
        if let Some(refused) = self.unauthorized(state, request, request_id) {
            return refused;
        }
        if request.method != Method::POST {
            return problem(&Problem::method_not_allowed(), request_id);
        }
        match self.live.reload().await {
            Ok(generation) => {
                json_response(200, json!({"reloaded": true, "generation": generation}))
            }
            Err(e) => problem(
                &Problem::new(Refusal::ConfigNotReloaded)
                    .with_detail(e.to_string())
                    .with_extension("key", e.key.clone().into()),
                request_id,
            ),
        }
    }

    /// The admin API answers only with `admin.token` configured, and only to its bearer.
    /// The refusal of a request without the admin token (`None`: authorized).
    fn unauthorized(
        &self,
        state: &State,
        request: &RequestHeader,
        request_id: &str,
    ) -> Option<Response<Vec<u8>>> {
        let Some(admin_token) = &state.config.admin.token else {
            return Some(problem(
                &Problem::not_found().with_detail("the admin API needs admin.token"),
                request_id,
            ));
        };
        if !bearer_matches(request, admin_token) {
            let mut response = problem(&Problem::new(Refusal::AdminTokenInvalid), request_id);
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return Some(response);
        }
        None
    }

    /// `POST /v1/users/{user}/block[?seconds=N]`, `DELETE /v1/users/{user}/block`;
    /// `GET /v1/users/{user}/streams`, `DELETE /v1/users/{user}/streams[/{session}]`.
    async fn users(
        &self,
        state: &State,
        request: &RequestHeader,
        rest: &str,
        request_id: &str,
    ) -> Response<Vec<u8>> {
        let problem = |p: Problem| problem(&p, request_id);
        if let Some(refused) = self.unauthorized(state, request, request_id) {
            return refused;
        }
        let decoded: Vec<String> = rest
            .split('/')
            .map(crate::http::headers::path_segment)
            .collect();
        let unavailable = |e: crate::store::StoreError| {
            tracing::error!(error = %e, "store unavailable for the admin API");
            problem(Problem::new(Refusal::StreamStoreUnavailable))
        };
        let no_streams =
            || problem(Problem::not_found().with_detail("stream limits are not configured"));
        match (&request.method, decoded.as_slice()) {
            (method, [user, what]) if what == "block" && !user.is_empty() => {
                let Some(blocks) = &state.blocks else {
                    return problem(Problem::not_found());
                };
                match *method {
                    Method::POST => {
                        let seconds = crate::http::headers::query_parameter(request, "seconds");
                        let until = match seconds.map(|s| s.parse::<u64>()) {
                            None => None,
                            Some(Ok(seconds)) if seconds > 0 => {
                                Some(crate::clock::now_seconds() + seconds)
                            }
                            Some(_) => {
                                return problem(
                                    Problem::new(Refusal::AdminRequestInvalid)
                                        .with_detail("seconds must be a positive whole number"),
                                );
                            }
                        };
                        match blocks.block(user, until).await {
                            Ok(()) => {
                                tracing::info!(user = %user, until, "user blocked");
                                json_response(
                                    200,
                                    json!({"user": user, "blocked": true, "until": until}),
                                )
                            }
                            Err(e) => unavailable(e),
                        }
                    }
                    Method::DELETE => match blocks.unblock(user).await {
                        Ok(was) => json_response(
                            200,
                            json!({"user": user, "blocked": false, "was_blocked": was}),
                        ),
                        Err(e) => unavailable(e),
                    },
                    _ => problem(Problem::method_not_allowed()),
                }
            }
            (&Method::GET, [user, what]) if what == "streams" && !user.is_empty() => {
                let Some(streams) = &state.streams else {
                    return no_streams();
                };
                match streams.list(user).await {
                    Ok(leases) => json_response(
                        200,
                        json!({
                            "user": user,
                            "default_limit": streams.limited.then_some(streams.settings.max_per_user),
                            "active": leases.iter().filter(|lease| !lease.stopped).count(),
                            "streams": leases,
                        }),
                    ),
                    Err(e) => unavailable(e),
                }
            }
            (&Method::DELETE, [user, what]) if what == "streams" && !user.is_empty() => {
                let Some(streams) = &state.streams else {
                    return no_streams();
                };
                match streams.end_all(user).await {
                    Ok(ended) => json_response(200, json!({"user": user, "ended": ended})),
                    Err(e) => unavailable(e),
                }
            }
            (&Method::DELETE, [user, what, session])
                if what == "streams" && !user.is_empty() && !session.is_empty() =>
            {
                let Some(streams) = &state.streams else {
                    return no_streams();
                };
                match streams.end(user, session).await {
                    Ok(true) => json_response(200, json!({"user": user, "ended": 1})),
                    Ok(false) => problem(Problem::new(Refusal::StreamUnknown)),
                    Err(e) => unavailable(e),
                }
            }
            (&Method::GET | &Method::DELETE | &Method::POST, _) => problem(Problem::not_found()),
            _ => problem(Problem::method_not_allowed()),
        }
    }

    async fn answer(
        &self,
        state: &State,
        request: &RequestHeader,
        request_id: &str,
    ) -> Response<Vec<u8>> {
        let problem = |p: Problem| problem(&p, request_id);
        if request.method != Method::GET && request.method != Method::HEAD {
            return problem(Problem::method_not_allowed());
        }
        let path = request.uri.path();
        if let Some(root) = &state.config.demo_root
            && path.starts_with(crate::admin::demo::PREFIX)
        {
            return crate::admin::demo::serve(root, path, &request.headers)
                .await
                .unwrap_or_else(|| problem(Problem::not_found()));
        }
        match path {
            "/demo" if state.config.demo_root.is_some() => Response::builder()
                .status(308)
                .header(header::LOCATION, crate::admin::demo::PREFIX)
                .body(Vec::new())
                .expect("valid response"),
            "/healthz" => json_response(200, json!({"status": "alive"})),
            "/readyz" => self.readiness(state),
            "/status" | "/status/" => page("text/html; charset=utf-8", STATUS_PAGE),
            "/status/app.js" => page("text/javascript; charset=utf-8", STATUS_SCRIPT),
            "/status/data" => self.status_data(state),
            "/status/uPlot.iife.min.js" | "/status/uPlot.min.css" => {
                let name = path.trim_start_matches("/status/");
                let file = state
                    .config
                    .admin
                    .status_root
                    .join("node_modules/uplot/dist")
                    .join(name);
                match tokio::fs::read(&file).await {
                    Ok(bytes) => Response::builder()
                        .status(200)
                        .header(header::CONTENT_TYPE, crate::admin::demo::content_type(&file))
                        .header(header::CACHE_CONTROL, "max-age=3600")
                        .body(bytes)
                        .expect("valid response"),
                    Err(_) => problem(Problem::not_found().with_detail(
                        "the chart library is missing: run npm ci in admin.status_root (web/status)",
                    )),
                }
            }
            "/metrics" => {
                let healthy = &state.metrics.upstream_healthy_endpoints;
                // Endpoint sets a reload removed drop out of the scrape.
                healthy.reset();
                for upstream in state.routed_upstreams() {
                    healthy
                        .with_label_values(&[upstream.label()])
                        .set(upstream.healthy_endpoints() as i64);
                }
                crate::telemetry::logging::count_dropped_lines(&state.metrics.log_lines_dropped);
                let (clients, users) = state.rate_limits.buckets();
                let buckets = &state.metrics.rate_limit_buckets;
                buckets.with_label_values(&["client"]).set(clients as i64);
                buckets.with_label_values(&["user"]).set(users as i64);
                Response::builder()
                    .status(200)
                    .header(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)
                    .body(state.metrics.render())
                    .expect("valid response")
            }
            _ => problem(Problem::not_found()),
        }
    }

    /// The status page's numbers: cumulative counts since start (the page turns them into rates
    /// and quantiles between two looks), endpoint health, and the configuration.
    fn status_data(&self, state: &State) -> Response<Vec<u8>> {
        let snapshot = state.metrics.snapshot();
        let endpoints: Vec<serde_json::Value> = state
            .routed_upstreams()
            .iter()
            .map(|upstream| {
                json!({
                    "upstream": upstream.label(),
                    "healthy": upstream.healthy_endpoints(),
                })
            })
            .collect();
        json_response(
            200,
            json!({
                "time_ms": std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                "metrics": snapshot,
                "endpoints": endpoints,
                "config": self.live.status(),
                "draining": state.drain.withdrawn(),
                "admin_api": state.config.admin.token.is_some(),
                "devices": state.devices.is_some(),
                "streams": state.streams.as_ref().is_some_and(|streams| streams.limited),
            }),
        )
    }

    /// Ready once every route has a provider (the first of its list, or one it fails over to)
    /// with a healthy endpoint in each of its upstreams, and
    /// until shutdown begins (load balancers then move players elsewhere while this process
    /// still answers).
    fn readiness(&self, state: &State) -> Response<Vec<u8>> {
        if state.drain.withdrawn() {
            return json_response(503, json!({"ready": false, "draining": true}));
        }
        let providers: serde_json::Map<String, serde_json::Value> = state
            .routed_upstreams()
            .iter()
            .map(|upstream| {
                (
                    upstream.label().to_string(),
                    json!(upstream.healthy_endpoints()),
                )
            })
            .collect();
        let ready = state.routes_servable();
        json_response(
            if ready { 200 } else { 503 },
            json!({
                "ready": ready,
                "healthy_endpoints": providers,
                "config": self.live.status(),
            }),
        )
    }
}

/// The whole request body, at most `limit` bytes, within `timeout`.
async fn read_body(
    session: &mut ServerSession,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Vec<u8>, Problem> {
    let read = async {
        let mut body = Vec::new();
        while let Some(chunk) = session.read_request_body().await.map_err(|e| {
            Problem::new(Refusal::AdminRequestInvalid).with_detail(e.etype().as_str())
        })? {
            if body.len() + chunk.len() > limit {
                return Err(Problem::body_too_large(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    pingora::time::timeout(timeout, read)
        .await
        .map_err(|_| Problem::new(Refusal::ChallengeTimeout))?
}

/// Compares digests, so neither the token's bytes nor its length leak through timing.
fn bearer_matches(request: &RequestHeader, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let Some(given) = request
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
    else {
        return false;
    };
    Sha256::digest(given.trim().as_bytes())
        .ct_eq(&Sha256::digest(expected.as_bytes()))
        .into()
}

fn json_response(status: u16, body: serde_json::Value) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(body.to_string().into_bytes())
        .expect("valid response")
}

fn problem(problem: &Problem, request_id: &str) -> Response<Vec<u8>> {
    Response::builder()
        .status(problem.status)
        .header(header::CONTENT_TYPE, crate::http::problem::CONTENT_TYPE)
        .body(problem.to_body(request_id).to_vec())
        .expect("valid response")
}

/// The status page is licensegate's own code, built into the binary; only its chart library
/// is read from disk.
const STATUS_PAGE: &str = include_str!("../../web/status/index.html");
const STATUS_SCRIPT: &str = include_str!("../../web/status/app.js");

fn page(content_type: &str, body: &str) -> Response<Vec<u8>> {
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-store")
        .body(body.as_bytes().to_vec())
        .expect("valid response")
}
