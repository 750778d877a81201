//! The admin listener: liveness, readiness and metrics, kept off the license listener so they
//! can be firewalled apart from what players reach.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, header};
use pingora::apps::http_app::ServeHttp;
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::problem::Problem;
use crate::server::State;

pub struct AdminApp {
    pub state: Arc<State>,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut response = self.answer(session.req_header(), &request_id);
        if let Ok(value) = http::HeaderValue::from_str(&request_id) {
            response
                .headers_mut()
                .insert(crate::pipeline::REQUEST_ID, value);
        }
        response
    }
}

impl AdminApp {
    fn answer(&self, request: &RequestHeader, request_id: &str) -> Response<Vec<u8>> {
        let problem = |p: Problem| problem(&p, request_id);
        if request.method != Method::GET && request.method != Method::HEAD {
            return problem(Problem::method_not_allowed());
        }
        let path = request.uri.path();
        if let Some(root) = &self.state.config.demo_root
            && path.starts_with(crate::demo::PREFIX)
        {
            return crate::demo::serve(root, path, &request.headers)
                .unwrap_or_else(|| problem(Problem::not_found()));
        }
        match path {
            "/demo" if self.state.config.demo_root.is_some() => Response::builder()
                .status(308)
                .header(header::LOCATION, crate::demo::PREFIX)
                .body(Vec::new())
                .expect("valid response"),
            "/healthz" => json_response(200, json!({"status": "alive"})),
            "/readyz" => self.readiness(),
            "/metrics" => Response::builder()
                .status(200)
                .header(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)
                .body(self.state.metrics.render())
                .expect("valid response"),
            _ => problem(Problem::not_found()),
        }
    }

    /// Ready once every vendor that serves a route has at least one healthy endpoint.
    fn readiness(&self) -> Response<Vec<u8>> {
        let vendors: serde_json::Map<String, serde_json::Value> = self
            .state
            .routed_upstreams()
            .iter()
            .map(|upstream| {
                (
                    upstream.label().to_string(),
                    json!(upstream.healthy_endpoints()),
                )
            })
            .collect();
        let ready = vendors.values().all(|healthy| healthy.as_u64() > Some(0));
        json_response(
            if ready { 200 } else { 503 },
            json!({"ready": ready, "healthy_endpoints": vendors}),
        )
    }
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
        .header(header::CONTENT_TYPE, crate::problem::CONTENT_TYPE)
        .body(problem.to_body(request_id).to_vec())
        .expect("valid response")
}
