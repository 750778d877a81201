//! The work licensegate adds to every license request, outside of waiting on the network.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::HeaderValue;
use licensegate::config::{Config, CorsSettings};
use licensegate::cors::Origin;
use licensegate::drm::Drm;
use licensegate::metrics::Metrics;
use licensegate::pipeline::{self, RequestCtx};
use licensegate::problem::Problem;
use licensegate::service_certificate::{Lookup, ServiceCertificates};
use pingora::prelude::RequestHeader;

const CONFIG: &str = r#"
[listeners]
license = "127.0.0.1:8080"
admin = "127.0.0.1:9090"
[vendors.sim]
kind = "passthrough"
endpoints = ["https://license.example.com/AcquireLicense"]
[routes]
widevine = "sim"
"#;

fn player_request() -> RequestHeader {
    let mut request =
        RequestHeader::build("POST", b"/v1/license/widevine?content=movie-123", None).unwrap();
    request
        .insert_header("Origin", "https://player.example")
        .unwrap();
    request
        .insert_header("Content-Type", "application/octet-stream")
        .unwrap();
    request
        .insert_header("Authorization", "Bearer abc.def.ghi")
        .unwrap();
    request
}

fn admission(c: &mut Criterion) {
    let request = player_request();
    let cors = CorsSettings {
        any_origin: false,
        origins: vec!["https://player.example".into()],
        allowed_headers: String::new(),
        expose_headers: "X-Request-Id".into(),
        max_age_seconds: 600,
    };
    c.bench_function("admission/route+origin+content_id", |b| {
        b.iter(|| {
            let route = pipeline::route(&request.method, request.uri.path());
            let origin = Origin::of(&cors, request.headers.get("Origin"));
            let content = pipeline::content_id(black_box(&request));
            black_box((route.is_ok(), origin, content))
        })
    });
    c.bench_function("admission/new_request_ctx", |b| {
        b.iter(|| black_box(RequestCtx::new()))
    });
}

fn forward(c: &mut Criterion) {
    let config = Config::parse(CONFIG, &|_| None).unwrap();
    let vendor = config.routes[&Drm::Widevine].clone();
    let mut ctx = RequestCtx::new();
    ctx.drm = Some(Drm::Widevine);
    ctx.challenge_len = 2048;
    ctx.forward.endpoint = Some(vendor.endpoints[0].clone());
    let request = player_request();
    let ip = Some("203.0.113.7".parse().unwrap());
    c.bench_function("forward/upstream_request_header", |b| {
        b.iter(|| black_box(pipeline::upstream_request(&ctx, &request, ip).unwrap()))
    });
}

fn answers(c: &mut Criterion) {
    c.bench_function("answer/problem_json", |b| {
        b.iter(|| black_box(Problem::body_too_large(65536).to_body("4b9f2c1e-request")))
    });
    let certificates = ServiceCertificates::new(["sim"].into_iter(), Duration::from_secs(3600));
    if let Some(Lookup::Miss(mut filler)) = certificates.lookup("sim").now_or_never() {
        filler.response_header(
            200,
            Some(&HeaderValue::from_static("application/octet-stream")),
        );
        filler.response_body(Some(&Bytes::from(vec![8u8; 700])), true);
    }
    let certificates = Arc::new(certificates);
    c.bench_function("answer/service_certificate_hit", |b| {
        b.iter(|| {
            let hit = certificates
                .lookup("sim")
                .now_or_never()
                .expect("a hit never waits");
            assert!(matches!(hit, Lookup::Hit(_)));
        })
    });
    let metrics = Metrics::new();
    c.bench_function("record/latency_and_counters", |b| {
        b.iter(|| {
            metrics
                .license_duration
                .with_label_values(&["widevine", "sim", "ok"])
                .observe(0.0031);
            metrics
                .requests
                .with_label_values(&["widevine", "sim", "200"])
                .inc();
        })
    });
}

criterion_group!(benches, admission, forward, answers);
criterion_main!(benches);
