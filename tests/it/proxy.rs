//! licensegate against a real simulator, both as processes on loopback.

use std::time::{Duration, Instant};

use licensegate_sim::{LICENSE_PREFIX, SERVICE_CERTIFICATE};
use licensegate_testkit::{Gate, Sim, client, config, fixture, problem};
use sha2::{Digest, Sha256};

fn expected_license(challenge: &[u8]) -> Vec<u8> {
    // Recomputed here rather than calling the simulator's code, so a drift on either side shows.
    let mut license = LICENSE_PREFIX.to_vec();
    license.extend_from_slice(&Sha256::digest(challenge));
    license
}

#[tokio::test]
async fn fixtures_come_back_as_exactly_the_vendors_bytes() {
    let sim = Sim::start(&[]);
    let gate = Gate::start_ready(&config(&[sim.url()], "")).await;
    let client = client();

    let widevine = fixture("license-request-kid-01020304.bin");
    let response = client
        .post(gate.license_url("widevine", Some("demo")))
        .header("Authorization", "Bearer user-token")
        .header("Cookie", "session=secret")
        .body(widevine.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(
        &response.bytes().await.unwrap()[..],
        expected_license(&widevine)
    );
    let seen = &sim.stats().await["last_license_request_headers"];
    assert_eq!(seen["content-type"], "application/octet-stream");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert!(seen.get("authorization").is_none(), "{seen}");
    assert!(seen.get("cookie").is_none(), "{seen}");

    let playready = fixture("license-request-v4.0.xml");
    let response = client
        .post(gate.license_url("playready", None))
        .header("X-Content-Id", "demo")
        .body(playready.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        &response.bytes().await.unwrap()[..],
        expected_license(&playready)
    );
    let seen = &sim.stats().await["last_license_request_headers"];
    assert_eq!(seen["content-type"], "text/xml; charset=utf-8");
    assert_eq!(
        seen["soapaction"],
        "\"http://schemas.microsoft.com/DRM/2007/03/protocols/AcquireLicense\""
    );
}

#[tokio::test]
async fn concurrent_requests_share_at_most_two_upstream_connections() {
    let sim = Sim::start(&[]);
    let gate = Gate::start_ready(&config(&[sim.url()], "")).await;
    let client = client();
    let url = gate.license_url("widevine", Some("demo"));
    let challenge = fixture("license-request-kid-01020304.bin");
    let expected = expected_license(&challenge);
    let mut workers = Vec::new();
    for _ in 0..20 {
        let (client, url, challenge, expected) = (
            client.clone(),
            url.clone(),
            challenge.clone(),
            expected.clone(),
        );
        workers.push(tokio::spawn(async move {
            for _ in 0..10 {
                let response = client
                    .post(&url)
                    .body(challenge.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                assert_eq!(&response.bytes().await.unwrap()[..], expected);
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let stats = sim.stats().await;
    assert_eq!(stats["licenses"], 200);
    let connections = stats["request_connections"].as_u64().unwrap();
    // One is this test's own /stats call; the rest is licensegate's pool.
    assert!(
        connections - 1 <= 2,
        "licensegate opened {} connections",
        connections - 1
    );
}

#[tokio::test]
async fn service_certificate_is_forwarded_once_then_served_from_memory() {
    let sim = Sim::start(&[]);
    let gate = Gate::start_ready(&config(&[sim.url()], "")).await;
    let client = client();
    let url = gate.license_url("widevine", None);
    let requests = (0..10).map(|_| {
        let client = client.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let response = client
                .post(&url)
                .body(vec![0x08, 0x04])
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap()
        })
    });
    for request in requests {
        assert_eq!(&request.await.unwrap()[..], SERVICE_CERTIFICATE);
    }
    assert_eq!(sim.stats().await["service_certificates"], 1);
    let metrics = gate.metrics().await;
    assert!(
        metrics.contains("licensegate_service_certificate_cache_total{result=\"hit\"} 9"),
        "{metrics}"
    );
    assert!(metrics.contains("licensegate_service_certificate_cache_total{result=\"miss\"} 1"));
}

#[tokio::test]
async fn a_connection_reset_after_the_challenge_left_is_not_sent_again() {
    // The provider may have issued (and billed) a license before the connection broke, so the
    // player gets a 502 instead of a second license; the next request is served.
    let sim = Sim::start(&["--reset-connections", "1"]);
    let gate = Gate::start_ready(&config(&[sim.url()], "retries = 2")).await;
    let challenge = fixture("license-request-kid-01020304.bin");
    let license = || {
        client()
            .post(gate.license_url("widevine", Some("demo")))
            .body(challenge.clone())
            .send()
    };
    problem(license().await.unwrap(), 502, "upstream_error").await;
    let response = license().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        &response.bytes().await.unwrap()[..],
        expected_license(&challenge)
    );
    let stats = sim.stats().await;
    assert_eq!(stats["resets"], 1);
    assert_eq!(stats["licenses"], 1);
    assert!(
        !gate
            .metrics()
            .await
            .contains("licensegate_upstream_retries_total{")
    );
}

#[tokio::test]
async fn goaway_from_the_vendor_loses_no_request() {
    let sim = Sim::start(&["--goaway-after", "3"]);
    let gate = Gate::start_ready(&config(&[sim.url()], "")).await;
    let client = client();
    let challenge = fixture("license-request-kid-01020304.bin");
    for _ in 0..20 {
        let response = client
            .post(gate.license_url("widevine", Some("demo")))
            .body(challenge.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(sim.stats().await["licenses"], 20);
}

#[tokio::test]
async fn a_second_endpoint_takes_over_from_a_dead_one() {
    let sim = Sim::start(&[]);
    let dead = format!(
        "http://127.0.0.1:{}/AcquireLicense",
        licensegate_testkit::free_port()
    );
    let gate = Gate::start_ready(&config(&[dead, sim.url()], "retries = 1")).await;
    let client = client();
    for _ in 0..6 {
        let response = client
            .post(gate.license_url("clearkey", Some("demo")))
            .body(r#"{"kids":["AQIDBAUGBwgJCgsMDQ4PEA"],"type":"temporary"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(sim.stats().await["licenses"], 6);
}

#[tokio::test]
async fn dead_upstream_is_a_502_within_the_connect_timeout() {
    let dead = format!(
        "http://127.0.0.1:{}/AcquireLicense",
        licensegate_testkit::free_port()
    );
    let gate = Gate::start(&config(
        &[dead],
        "[providers.sim.timeouts]\nconnect_ms = 500\nread_ms = 1000\ntotal_ms = 2000",
    ));
    let started = Instant::now();
    let response = client()
        .post(gate.license_url("widevine", Some("demo")))
        .body(vec![1, 2, 3])
        .send()
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    problem(response, 502, "upstream_unavailable").await;
    // The health check soon marks the endpoint dead and readiness follows.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = reqwest::get(gate.admin("/readyz")).await.unwrap().status();
        if status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "readyz stayed {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn slow_upstream_is_a_504_within_the_read_timeout() {
    let sim = Sim::start(&["--delay-ms", "5000"]);
    let gate = Gate::start_ready(&config(
        &[sim.url()],
        "[providers.sim.timeouts]\nconnect_ms = 500\nread_ms = 400\ntotal_ms = 3000",
    ))
    .await;
    let started = Instant::now();
    let response = client()
        .post(gate.license_url("widevine", Some("demo")))
        .body(vec![1, 2, 3])
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(1000), "{elapsed:?}");
    problem(response, 504, "upstream_timeout").await;
}

#[tokio::test]
async fn oversized_and_empty_challenges_are_refused_without_reaching_the_vendor() {
    let sim = Sim::start(&[]);
    let gate = Gate::start_ready(&config(&[sim.url()], "")).await;
    let client = client();
    let response = client
        .post(gate.license_url("widevine", Some("demo")))
        .body(vec![7u8; 65 * 1024])
        .send()
        .await
        .unwrap();
    problem(response, 413, "body_too_large").await;
    let response = client
        .post(gate.license_url("widevine", Some("demo")))
        .send()
        .await
        .unwrap();
    problem(response, 400, "challenge_missing").await;
    let response = client
        .post(gate.license_url("widevine", None))
        .body(vec![1, 2, 3])
        .send()
        .await
        .unwrap();
    problem(response, 400, "content_id_missing").await;
    assert_eq!(sim.stats().await["licenses"], 0);
}

#[tokio::test]
async fn chunked_oversized_challenge_is_refused_too() {
    let sim = Sim::start(&[]);
    let gate = Gate::start_ready(&config(&[sim.url()], "")).await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..65).map(|_| Ok(vec![7u8; 1024])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let response = client()
        .post(gate.license_url("widevine", Some("demo")))
        .body(body)
        .send()
        .await
        .unwrap();
    problem(response, 413, "body_too_large").await;
    assert_eq!(sim.stats().await["licenses"], 0);
}

#[tokio::test]
async fn routing_errors_are_problem_json_with_cors() {
    let sim = Sim::start(&[]);
    let gate = Gate::start_ready(&config(&[sim.url()], "")).await;
    let client = client();
    let response = client
        .post(gate.url("/v1/license/primetime"))
        .header("Origin", "https://player.example")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://player.example"
    );
    assert!(
        response.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("x-request-id")
    );
    problem(response, 404, "unknown_drm").await;
    let response = client
        .get(gate.url("/v1/license/widevine"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "POST, OPTIONS");
    problem(response, 405, "method_not_allowed").await;
    let response = client.post(gate.url("/admin")).send().await.unwrap();
    problem(response, 404, "not_found").await;
}

#[tokio::test]
async fn preflight_is_answered_locally() {
    let sim = Sim::start(&[]);
    let gate = Gate::start_ready(&config(&[sim.url()], "")).await;
    let client = client();
    let response = client
        .request(reqwest::Method::OPTIONS, gate.license_url("widevine", None))
        .header("Origin", "https://player.example")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let headers = response.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://player.example"
    );
    assert!(
        headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"));
    assert_eq!(headers["access-control-max-age"], "600");
    let response = client
        .request(reqwest::Method::OPTIONS, gate.license_url("widevine", None))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin")
    );
    problem(response, 403, "origin_not_allowed").await;
    assert_eq!(
        sim.stats().await["requests"],
        1,
        "only this /stats call reached the provider"
    );
}

#[tokio::test]
async fn vendor_refusal_passes_through_unchanged_with_its_reason() {
    let sim = Sim::start(&["--status", "403", "--reason", "Entitlement message expired"]);
    let gate = Gate::start_ready(&config(&[sim.url()], "")).await;
    let response = client()
        .post(gate.license_url("widevine", Some("demo")))
        .header("Origin", "https://player.example")
        .body(vec![1, 2, 3])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let headers = response.headers().clone();
    assert_eq!(
        headers["x-axdrm-errormessage"],
        "Entitlement message expired"
    );
    assert!(
        headers["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("x-axdrm-errormessage")
    );
    assert_eq!(
        &response.bytes().await.unwrap()[..],
        b"licensegate-sim refusal"
    );
    let metrics = gate.metrics().await;
    assert!(
        metrics.contains(
            "licensegate_requests_total{drm=\"widevine\",provider=\"sim\",status=\"403\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn metrics_show_license_latency_by_drm_vendor_and_outcome() {
    let sim = Sim::start(&[]);
    let gate = Gate::start_ready(&config(&[sim.url()], "")).await;
    let client = client();
    for _ in 0..3 {
        let response = client
            .post(gate.license_url("playready", Some("demo")))
            .body(fixture("license-request-v4.0.xml"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    let metrics = gate.metrics().await;
    assert!(metrics.contains(
        "licensegate_license_request_duration_seconds_count{drm=\"playready\",outcome=\"ok\",provider=\"sim\"} 3"
    ), "{metrics}");
    assert!(metrics.contains("licensegate_license_request_duration_seconds_bucket{drm=\"playready\",outcome=\"ok\",provider=\"sim\",le=\"0.0005\"}"));
    assert!(metrics.contains(
        "licensegate_upstream_duration_seconds_count{provider=\"sim\",status=\"200\"} 3"
    ));
    assert!(
        metrics
            .contains("licensegate_upstream_connections_total{provider=\"sim\",reused=\"true\"} 2")
    );
    assert!(metrics.contains("licensegate_in_flight_requests 0"));
    let health = reqwest::get(gate.admin("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(health.headers().contains_key("x-request-id"));
    let missing = reqwest::get(gate.admin("/nothing-here")).await.unwrap();
    problem(missing, 404, "not_found").await;
}

#[tokio::test]
async fn players_may_speak_http2_to_licensegate() {
    let sim = Sim::start(&[]);
    let gate = Gate::start_ready(&config(&[sim.url()], "")).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let challenge = fixture("license-request-kid-01020304.bin");
    let response = client
        .post(gate.license_url("widevine", Some("demo")))
        .body(challenge.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(
        &response.bytes().await.unwrap()[..],
        expected_license(&challenge)
    );
    let response = client.post(gate.url("/nowhere")).send().await.unwrap();
    problem(response, 404, "not_found").await;
}

#[tokio::test]
async fn one_access_line_per_request_and_no_secret_in_the_log() {
    let sim = Sim::start(&["--status", "403", "--reason", "Key not allowed"]);
    let gate = Gate::start_ready(&config(&[sim.url()], "")).await;
    let client = client();
    let challenge = b"CHALLENGE-BYTES-MUST-NOT-BE-LOGGED".to_vec();
    let response = client
        .post(format!(
            "{}&token=QUERY-SECRET",
            gate.license_url("widevine", Some("movie-7"))
        ))
        .header("Authorization", "Bearer HEADER-SECRET")
        .header("Cookie", "session=COOKIE-SECRET")
        .body(challenge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = client
        .post(format!(
            "{}?token=QUERY-SECRET",
            gate.url("/v1/license/primetime")
        ))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = gate.log();
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("licensegate::access"))
        .collect();
    assert_eq!(access.len(), 2, "{log}");
    assert!(
        access[0].contains("movie-7") && access[0].contains("Key not allowed"),
        "{log}"
    );
    assert!(access[1].contains("unknown_drm"), "{log}");
    for secret in [
        "QUERY-SECRET",
        "HEADER-SECRET",
        "COOKIE-SECRET",
        "CHALLENGE-BYTES",
    ] {
        assert!(
            !log.contains(secret),
            "{secret} leaked into the log:\n{log}"
        );
    }
}

#[tokio::test]
async fn the_license_listener_speaks_tls_with_http2() {
    let sim = Sim::start(&[]);
    let certificate = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let tls = "[listeners.tls]\ncert = \"${LG_DIR}/cert.pem\"\nkey = \"${LG_DIR}/key.pem\"\n";
    let gate = Gate::ready(Gate::start_with_files(
        &config(&[sim.url()], "").replace("[server]", &format!("{tls}\n[server]")),
        &[
            ("cert.pem", certificate.cert.pem().as_bytes()),
            (
                "key.pem",
                certificate.signing_key.serialize_pem().as_bytes(),
            ),
        ],
    ))
    .await;
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(certificate.cert.pem().as_bytes()).unwrap(),
        )
        .resolve("localhost", ([127, 0, 0, 1], gate.port).into())
        .build()
        .unwrap();
    let challenge = fixture("license-request-kid-01020304.bin");
    let response = client
        .post(format!(
            "https://localhost:{}/v1/license/widevine?content=demo",
            gate.port
        ))
        .body(challenge.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.version(),
        reqwest::Version::HTTP_2,
        "ALPN chose h2"
    );
    assert_eq!(response.status(), 200);
    assert_eq!(
        &response.bytes().await.unwrap()[..],
        expected_license(&challenge)
    );
}

/// W3C trace context: a player's trace reaches the vendor under licensegate's own span, with
/// its `tracestate`; without one (or with an invalid one) licensegate starts a trace named
/// after the request id. The access line carries the trace id beside the request id.
#[tokio::test]
async fn trace_context_is_continued_to_the_vendor_or_started() {
    let sim = Sim::start(&[]);
    let gate = Gate::start_ready(&config(&[sim.url()], "")).await;
    let send = |traceparent: Option<&'static str>| {
        let mut request = client()
            .post(gate.license_url("widevine", Some("demo")))
            .body(fixture("license-request-kid-01020304.bin"));
        if let Some(parent) = traceparent {
            request = request
                .header("traceparent", parent)
                .header("tracestate", "player=abc");
        }
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_string()
        }
    };

    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    send(Some(caller)).await;
    let seen = &sim.stats().await["last_license_request_headers"];
    let parent = seen["traceparent"].as_str().unwrap();
    let fields: Vec<&str> = parent.split('-').collect();
    assert_eq!(
        fields[..2],
        ["00", "4bf92f3577b34da6a3ce929d0e0e4736"],
        "{parent}"
    );
    assert_ne!(
        fields[2], "00f067aa0ba902b7",
        "licensegate's span is the vendor's parent"
    );
    assert_eq!(fields[3], "01", "the sampled flag is kept");
    assert_eq!(seen["tracestate"], "player=abc");

    for traceparent in [
        None,
        Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
    ] {
        let request_id = send(traceparent).await;
        let seen = &sim.stats().await["last_license_request_headers"];
        let parent = seen["traceparent"].as_str().unwrap();
        assert!(
            parent.starts_with(&format!("00-{}-", request_id.replace('-', ""))),
            "{parent} for request {request_id}"
        );
        assert!(seen.get("tracestate").is_none(), "{seen}");
    }

    let log = gate.log();
    assert!(
        log.lines().any(|line| line.contains("request_id=")
            && line.contains("trace_id=4bf92f3577b34da6a3ce929d0e0e4736")),
        "{log}"
    );
}
