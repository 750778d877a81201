//! The work licensegate adds to every license request, outside of waiting on the network.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::HeaderValue;
use licensegate::cdm::service_certificate::{Lookup, ServiceCertificates};
use licensegate::config::{Config, CorsSettings};
use licensegate::drm::Drm;
use licensegate::http::cors::Origin;
use licensegate::http::problem::Problem;
use licensegate::pipeline::{self, RequestCtx};
use licensegate::providers::LicenseRequest;
use licensegate::providers::authorizations::AuthorizationCache;
use licensegate::providers::axinom::Axinom;
use licensegate::rights::catalog::Content;
use licensegate::telemetry::metrics::Metrics;
use pingora::prelude::RequestHeader;

const CONFIG: &str = r#"
[listeners]
license = "127.0.0.1:8080"
admin = "127.0.0.1:9090"
[providers.sim]
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

/// The state a request of `CONFIG` starts on.
fn state() -> Arc<licensegate::state::State> {
    let config = Config::parse(CONFIG, &|_| None).unwrap();
    let resources = licensegate::state::load_resources(&config).unwrap();
    let lifetime = licensegate::state::Lifetime::default();
    Arc::new(
        licensegate::state::assemble(config, resources, &lifetime, None)
            .unwrap()
            .state,
    )
}

fn admission(c: &mut Criterion) {
    let request = player_request();
    let state = state();
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
        b.iter(|| black_box(RequestCtx::new(state.clone())))
    });
}

fn forward(c: &mut Criterion) {
    let config = Config::parse(CONFIG, &|_| None).unwrap();
    let provider = config.routes[&Drm::Widevine][0].clone();
    let endpoints = provider.endpoints.for_drm(Drm::Widevine).unwrap();
    let mut ctx = RequestCtx::new(state());
    ctx.plan = Some(pipeline::ForwardPlan {
        drm: Drm::Widevine,
        provider: licensegate::providers::build(&provider, Duration::from_secs(60)).unwrap(),
        upstream: std::sync::Arc::new(licensegate::providers::upstream::Upstream::new(
            provider.clone(),
            endpoints,
            "sim".into(),
            Duration::from_secs(60),
        )),
        authorizing: pipeline::Authorizing::Nothing,
        device_limit: None,
        service_certificate: None,
        soap_action: None,
        challenge_len: 2048,
        fairplay: None,
        fallbacks: Default::default(),
        license_request: None,
    });
    ctx.forward.target = Some(licensegate::providers::upstream::Target {
        addr: pingora::protocols::l4::socket::SocketAddr::Inet("127.0.0.1:8090".parse().unwrap()),
        endpoint: provider.endpoints.for_drm(Drm::Widevine).unwrap()[0].clone(),
        state: Default::default(),
    });
    let forwarded = http::HeaderValue::from_static("198.51.100.1");
    let client = licensegate::http::forwarded::client_address(
        "203.0.113.7".parse().unwrap(),
        [&forwarded],
        &[],
    )
    .unwrap();
    ctx.admitted.client = Some(client);
    c.bench_function("forward/upstream_request_header", |b| {
        b.iter(|| black_box(pipeline::upstream_request(&ctx).unwrap()))
    });
}

fn answers(c: &mut Criterion) {
    c.bench_function("answer/problem_json", |b| {
        b.iter(|| black_box(Problem::body_too_large(65536).to_body("4b9f2c1e-request")))
    });
    let certificates = ServiceCertificates::new(["sim"].into_iter(), Duration::from_secs(3600));
    if let Some(Lookup::Miss(mut filler)) = certificates
        .lookup("sim", Duration::from_secs(1))
        .now_or_never()
    {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        filler.response_header(200, &headers);
        filler.response_body(Some(&Bytes::from(vec![8u8; 700])), true);
    }
    let certificates = Arc::new(certificates);
    c.bench_function("answer/service_certificate_hit", |b| {
        b.iter(|| {
            let hit = certificates
                .lookup("sim", Duration::from_secs(1))
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

fn identity(c: &mut Criterion) {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use licensegate::config::{AuthKeySource, AuthSettings, SingleUse, TokenSource};
    use licensegate::rights::auth::{Authenticator, Cookies};

    const SECRET: &[u8] = b"bench-secret-0123456789abcdef-0123456789";
    let settings = AuthSettings {
        sources: vec![TokenSource::Header],
        query_parameter: "token".into(),
        cookie: "lg".into(),
        user_claim: "sub".into(),
        leeway_seconds: 30,
        issuer: None,
        audience: None,
        reload_interval: Duration::from_secs(5),
        cache_entries: 1_000_000,
        cache_max_bytes: 1 << 30,
        max_token_bytes: 8192,
        single_use: SingleUse {
            every_token: false,
            claim: None,
            max_lifetime: Duration::from_secs(86_400),
        },
        keys: vec![AuthKeySource::Secret {
            algorithm: Algorithm::HS256,
            secret: SECRET.to_vec(),
            kid: None,
        }],
    };
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let sign = |n: u64| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": format!("user-{n}"), "exp": exp, "entitlements": ["demo"]}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    };
    let with_token = |token: &str| {
        let mut request = player_request();
        request
            .insert_header("Authorization", format!("Bearer {token}"))
            .unwrap();
        request
    };
    let auth = Authenticator::new(&settings).unwrap();
    let cached = with_token(&sign(0));
    auth.authenticate(&cached, Cookies::Admitted).unwrap();
    c.bench_function("identity/token_cached", |b| {
        b.iter(|| black_box(auth.authenticate(&cached, Cookies::Admitted).unwrap()))
    });
    // A token never seen before on every iteration (signed outside the timing): signature
    // check, claims, and the cache insert.
    let mut serial = 0;
    c.bench_function("identity/token_uncached_hs256", |b| {
        b.iter_batched(
            || {
                serial += 1;
                with_token(&sign(serial))
            },
            |request| black_box(auth.authenticate(&request, Cookies::Admitted).unwrap()),
            criterion::BatchSize::SmallInput,
        )
    });
}

fn key_ids(c: &mut Criterion) {
    use licensegate::challenge;
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (drm, file) in [
        (Drm::Widevine, "license-request-kid-01020304.bin"),
        (Drm::PlayReady, "license-request-v4.0.xml"),
        (Drm::ClearKey, "clearkey-request-kid-01020304.json"),
    ] {
        let body = std::fs::read(fixtures.join(file)).unwrap();
        c.bench_function(&format!("key_ids/{drm}"), |b| {
            b.iter(|| black_box(challenge::parse(drm, black_box(&body)).unwrap()))
        });
    }
}

const AXINOM_CONFIG: &str = r#"
[listeners]
license = "127.0.0.1:8080"
admin = "127.0.0.1:9090"
[catalog]
path = "conf/catalog/demo.toml"
[providers.axinom]
kind = "axinom"
endpoints = ["https://drm-widevine-licensing.axtest.net/AcquireLicense"]
[providers.axinom.settings]
com_key_id = "69e54088-e9e0-4530-8c1a-1eb6dcd0d14e"
com_key = "4861292d027e269791093327e62ceefdbea489a4c7e5a4974cc904b840fd7c0f"
[routes]
widevine = "axinom"
"#;

fn providers(c: &mut Criterion) {
    let config = Config::parse(AXINOM_CONFIG, &|_| None).unwrap();
    let vendor_config = config.providers["axinom"].clone();
    let axinom = Axinom::new(vendor_config.clone()).unwrap();
    let provider = licensegate::providers::build(&vendor_config, Duration::from_secs(60)).unwrap();
    let kid = "01020304-0506-0708-090a-0b0c0d0e0f10".parse().unwrap();
    let request = LicenseRequest {
        request_id: "bench".into(),
        user: Some("alice".into()),
        content: Arc::new(Content {
            id: "movie-123".into(),
            key_ids: vec![kid],
            keys: Default::default(),
            policy: None,
            providers: Vec::new(),
            free: false,
            tiers: Vec::new(),
            hls: None,
            fairplay_iv: None,
            territories: None,
        }),
        drm: Drm::Widevine,
        key_ids: vec![kid],
        policy_name: "default".into(),
        policy: config.policies["default"].clone(),
        client_ip: None,
    };
    c.bench_function("provider/axinom_mint", |b| {
        b.iter(|| black_box(axinom.sign(black_box(&request), SystemTime::now()).unwrap()))
    });
    let tokens = AuthorizationCache::new(&config.authorization_cache, &Metrics::new());
    let hit = || {
        tokens
            .authorization("axinom", provider.as_ref(), &request)
            .now_or_never()
            .expect("a cache hit completes at once")
            .unwrap()
    };
    hit();
    c.bench_function("provider/token_cache_hit", |b| b.iter(|| black_box(hit())));
}

criterion_group!(
    benches, admission, forward, answers, identity, key_ids, providers
);
criterion_main!(benches);
