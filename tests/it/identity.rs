//! Who may play what: tokens, catalog, key IDs, entitlement, the built-in ClearKey server and
//! HLS keys, against a real licensegate (and simulator, where a provider is involved).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use licensegate_testkit::{
    Gate, GateConfig, JWT_SECRET, Sim, client, fixture, now, problem, token, token_signed_with,
    user_token,
};
use serde_json::{Value, json};

const DEMO_KID_B64: &str = "AQIDBAUGBwgJCgsMDQ4PEA";

const CATALOG: &str = r#"
[content.demo]
key_ids = ["01020304-0506-0708-090a-0b0c0d0e0f10"]
keys = { "01020304-0506-0708-090a-0b0c0d0e0f10" = "00112233445566778899aabbccddeeff" }
tiers = ["basic"]

[content.other]
key_ids = ["a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf"]

[content.playready-sample]
key_ids = ["33e0008c-c444-4770-9899-a321e079dd36"]

[content.radio]
key_ids = ["b0b1b2b3-b4b5-b6b7-b8b9-babbbcbdbebf"]
free = true

[content.hls-movie.hls]
key = "000102030405060708090a0b0c0d0e0f"
iv = "0f0e0d0c0b0a09080706050403020100"
"#;

fn user(entitlements: &[&str]) -> String {
    user_token("alice", entitlements)
}

/// Every DRM but ClearKey goes to `sim`; ClearKey is answered by licensegate itself.
fn base(sim_url: &str) -> GateConfig {
    GateConfig::new()
        .provider(
            "sim",
            &format!("kind = \"passthrough\"\nendpoints = [\"{sim_url}\"]"),
        )
        .provider("builtin", "kind = \"clearkey\"")
        .routes(&[
            ("widevine", "sim"),
            ("playready", "sim"),
            ("fairplay", "sim"),
            ("clearkey", "builtin"),
        ])
        .catalog()
}

fn config(sim_url: &str, extra: &str) -> String {
    base(sim_url).with(extra).build()
}

/// With user tokens (the cookie named `lg`) and the catalog.
async fn gate(sim: &Sim, extra: &str) -> Gate {
    Gate::ready(Gate::start_with_files(
        &base(&sim.url()).auth("cookie = \"lg\"").with(extra).build(),
        &[("catalog.toml", CATALOG.as_bytes())],
    ))
    .await
}

fn clearkey_request(kid_b64: &str) -> String {
    format!(r#"{{"kids":["{kid_b64}"],"type":"temporary"}}"#)
}

#[tokio::test]
async fn clearkey_demo_key_for_the_entitled_user_only() {
    let sim = Sim::start(&[]);
    let gate = gate(&sim, "").await;
    let client = client();
    let response = client
        .post(gate.license_url("clearkey", Some("demo")))
        .bearer_auth(user(&["demo"]))
        .body(fixture("clearkey-request-kid-01020304.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let keys: Value = response.json().await.unwrap();
    assert_eq!(keys["keys"][0]["kid"], DEMO_KID_B64);
    // 00112233445566778899aabbccddeeff in unpadded base64url.
    assert_eq!(keys["keys"][0]["k"], "ABEiM0RVZneImaq7zN3u_w");
    assert_eq!(keys["type"], "temporary");

    // Entitled through a tier, and found by its key ID alone.
    let response = client
        .post(gate.license_url("clearkey", None))
        .bearer_auth(user(&["tier:basic"]))
        .body(clearkey_request(DEMO_KID_B64))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let response = client
        .post(gate.license_url("clearkey", Some("demo")))
        .bearer_auth(user(&["other", "series-*"]))
        .body(clearkey_request(DEMO_KID_B64))
        .send()
        .await
        .unwrap();
    problem(response, 403, "not_entitled").await;
    assert_eq!(sim.stats().await["requests"], 1, "only this /stats call");
}

#[tokio::test]
async fn tokens_from_header_query_and_cookie_and_each_refusal() {
    let sim = Sim::start(&[]);
    let gate = gate(&sim, "").await;
    let client = client();
    let body = clearkey_request(DEMO_KID_B64);
    let good = user(&["demo"]);
    let url = gate.license_url("clearkey", Some("demo"));
    for request in [
        client.post(&url).bearer_auth(&good),
        client.post(format!("{url}&token={good}")),
        client
            .post(&url)
            .header("Origin", "https://player.example")
            .header("Cookie", format!("theme=dark; lg={good}")),
    ] {
        assert_eq!(
            request.body(body.clone()).send().await.unwrap().status(),
            200
        );
    }
    // A cookie stands for the user only on a request from a listed origin: a cross-site form
    // from elsewhere is refused, and one without Origin finds no token.
    let cross_site = client
        .post(&url)
        .header("Origin", "https://evil.example")
        .header("Cookie", format!("lg={good}"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    problem(cross_site, 403, "origin_not_allowed").await;
    let no_origin = client
        .post(&url)
        .header("Cookie", format!("lg={good}"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    problem(no_origin, 401, "token_missing").await;
    let response = client
        .post(&url)
        .header("Origin", "https://player.example")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://player.example"
    );
    problem(response, 401, "token_missing").await;
    let expired = token(json!({"sub": "alice", "exp": now() - 120, "entitlements": ["demo"]}));
    let early = token(json!({"sub": "alice", "exp": now() + 600, "nbf": now() + 300}));
    let forged = token_signed_with(
        "a different secret, long enough!!",
        json!({"sub": "alice", "exp": now() + 600}),
    );
    for (bad, code) in [
        (expired, "token_expired"),
        (early, "token_not_yet_valid"),
        (forged.clone(), "token_signature"),
        ("garbage".to_string(), "token_malformed"),
    ] {
        let response = client
            .post(&url)
            .bearer_auth(&bad)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let problem = problem(response, 401, code).await;
        assert!(
            !problem.to_string().contains(&bad),
            "the token is echoed back"
        );
    }
    let log = gate.log();
    assert!(
        !log.contains(&good) && !log.contains(&forged),
        "a token reached the log"
    );
}

#[tokio::test]
async fn audience_issuer_and_kid_are_enforced() {
    let sim = Sim::start(&[]);
    let auth = format!(
        r#"
[auth]
issuer = "portal"
audience = "licensegate"
[[auth.keys]]
kind = "secret"
algorithm = "HS256"
kid = "k1"
secret = "{JWT_SECRET}"
"#
    );
    let gate = Gate::ready(Gate::start_with_files(
        &config(&sim.url(), &auth),
        &[("catalog.toml", CATALOG.as_bytes())],
    ))
    .await;
    let sign = |claims: Value, kid: &str| {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.into());
        encode(
            &header,
            &claims,
            &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        )
        .unwrap()
    };
    let claims = |iss: &str, aud: &str| json!({"sub": "alice", "exp": now() + 600, "iss": iss, "aud": aud, "entitlements": ["demo"]});
    let client = client();
    for (token, status, code) in [
        (sign(claims("portal", "licensegate"), "k1"), 200, "ok"),
        (sign(claims("portal", "other"), "k1"), 401, "token_audience"),
        (
            sign(claims("evil", "licensegate"), "k1"),
            401,
            "token_issuer",
        ),
        (
            sign(claims("portal", "licensegate"), "k9"),
            401,
            "token_unknown_kid",
        ),
    ] {
        let response = client
            .post(gate.license_url("clearkey", Some("demo")))
            .bearer_auth(token)
            .body(clearkey_request(DEMO_KID_B64))
            .send()
            .await
            .unwrap();
        if status == 200 {
            assert_eq!(response.status(), 200);
        } else {
            problem(response, status, code).await;
        }
    }
}

#[tokio::test]
async fn jwks_rotation_accepts_old_and_new_then_drops_the_removed_key() {
    let sim = Sim::start(&[]);
    let jwks = |name: &str| fixture(&format!("jwt/{name}"));
    let auth = r#"
[auth]
reload_seconds = 1
[[auth.keys]]
kind = "jwks"
path = "${LG_DIR}/jwks.json"
"#;
    let gate = Gate::ready(Gate::start_with_files(
        &config(&sim.url(), auth),
        &[
            ("catalog.toml", CATALOG.as_bytes()),
            ("jwks.json", &jwks("jwks-a.json")),
        ],
    ))
    .await;
    let sign = |kid: &str, pem: &str| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.into());
        let key = EncodingKey::from_rsa_pem(&fixture(&format!("jwt/{pem}"))).unwrap();
        encode(
            &header,
            &json!({"sub": "alice", "exp": now() + 600, "entitlements": ["demo"]}),
            &key,
        )
        .unwrap()
    };
    let (old, new) = (sign("a", "rsa-private.pem"), sign("b", "rsa2-private.pem"));
    let client = client();
    let status = |token: String| {
        let request = client
            .post(gate.license_url("clearkey", Some("demo")))
            .bearer_auth(token)
            .body(clearkey_request(DEMO_KID_B64));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(old.clone()).await, 200);
    assert_eq!(status(new.clone()).await, 401);

    rotate(&gate, &jwks("jwks-ab.json"));
    wait_until(|| status(new.clone()), 200).await;
    assert_eq!(
        status(old.clone()).await,
        200,
        "both keys valid during rotation"
    );

    rotate(&gate, &jwks("jwks-b.json"));
    wait_until(|| status(old.clone()), 401).await;
    assert_eq!(status(new.clone()).await, 200);
}

fn rotate(gate: &Gate, jwks: &[u8]) {
    let path = gate.dir().join("jwks.json");
    std::fs::write(&path, jwks).unwrap();
    // Filesystems may keep one mtime for quick successive writes; make the change visible.
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(1))
        .unwrap();
}

async fn wait_until<F, Fut>(check: F, expected: u16)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let got = check().await;
        if got == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still {got}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn key_ids_must_belong_to_the_requested_content() {
    let sim = Sim::start(&[]);
    let gate = gate(&sim, "").await;
    let client = client();
    let everything = user(&["*"]);
    let widevine = fixture("license-request-kid-01020304.bin");
    // The fixture's KID is demo's: fine for demo, refused under another title.
    let response = client
        .post(gate.license_url("widevine", Some("demo")))
        .bearer_auth(&everything)
        .body(widevine.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = client
        .post(gate.license_url("widevine", Some("other")))
        .bearer_auth(&everything)
        .body(widevine.clone())
        .send()
        .await
        .unwrap();
    problem(response, 403, "kid_not_in_content").await;
    let response = client
        .post(gate.license_url("clearkey", Some("other")))
        .bearer_auth(&everything)
        .body(clearkey_request(DEMO_KID_B64))
        .send()
        .await
        .unwrap();
    problem(response, 403, "kid_not_in_content").await;
    // PlayReady's sample challenge resolves by its KID when no content id is given.
    let response = client
        .post(gate.license_url("playready", None))
        .bearer_auth(&everything)
        .body(fixture("license-request-v4.0.xml"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for (drm, body) in [
        ("widevine", b"\x08\x01\x12\xff\xff".to_vec()),
        ("playready", b"<soap:Envelope>".to_vec()),
        ("clearkey", b"{\"kids\":[\"AQID\"]}".to_vec()),
    ] {
        let response = client
            .post(gate.license_url(drm, Some("demo")))
            .bearer_auth(&everything)
            .body(body)
            .send()
            .await
            .unwrap();
        problem(response, 400, "challenge_malformed").await;
    }
    let response = client
        .post(gate.license_url("widevine", Some("no-such-title")))
        .bearer_auth(&everything)
        .body(widevine)
        .send()
        .await
        .unwrap();
    problem(response, 404, "content_unknown").await;
    assert_eq!(
        sim.stats().await["licenses"],
        2,
        "only the two allowed requests reached the provider"
    );
}

#[tokio::test]
async fn free_content_needs_a_token_but_no_entitlement() {
    let sim = Sim::start(&[]);
    let gate = gate(&sim, "").await;
    // FairPlay's SPC is opaque: the content id alone decides.
    let response = client()
        .post(gate.license_url("fairplay", Some("radio")))
        .bearer_auth(user(&[]))
        .body(b"\x00\x00\x00\x01opaque-spc".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn hls_key_for_entitled_users() {
    let sim = Sim::start(&[]);
    let gate = gate(&sim, "").await;
    let client = client();
    let url = gate.url("/v1/hls/key?content=hls-movie");
    let response = client
        .get(&url)
        .bearer_auth(user(&["hls-*"]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert_eq!(
        response.bytes().await.unwrap().to_vec(),
        hex::decode("000102030405060708090a0b0c0d0e0f").unwrap()
    );
    let response = client
        .get(&url)
        .bearer_auth(user(&["demo"]))
        .send()
        .await
        .unwrap();
    problem(response, 403, "not_entitled").await;
    let response = client.get(&url).send().await.unwrap();
    problem(response, 401, "token_missing").await;
    let response = client
        .get(gate.url("/v1/hls/key?content=demo"))
        .bearer_auth(user(&["demo"]))
        .send()
        .await
        .unwrap();
    problem(response, 404, "key_not_found").await;
    let metrics = gate.metrics().await;
    assert!(metrics.contains(
        "licensegate_license_request_duration_seconds_count{drm=\"hls-aes\",outcome=\"ok\",provider=\"-\"} 1"
    ), "{metrics}");
}

/// A stand-in for the platform's entitlement service: allows `demo` for alice, counts calls,
/// and hangs when told to.
struct EntitlementService {
    port: u16,
    calls: Arc<AtomicU64>,
}

impl EntitlementService {
    async fn start(hang: bool) -> EntitlementService {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let calls = Arc::new(AtomicU64::new(0));
        let counter = calls.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let counter = counter.clone();
                            async move {
                                use http_body_util::BodyExt;
                                counter.fetch_add(1, Ordering::SeqCst);
                                let body = request.into_body().collect().await.unwrap().to_bytes();
                                let asked: Value = serde_json::from_slice(&body).unwrap();
                                if hang {
                                    tokio::time::sleep(Duration::from_secs(30)).await;
                                }
                                let allow = asked["user"] == "alice" && asked["content"] == "demo";
                                let answer = json!({"allow": allow}).to_string();
                                Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .header("Content-Type", "application/json")
                                        .header("Cache-Control", "max-age=300")
                                        .body(http_body_util::Full::new(bytes::Bytes::from(answer)))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        EntitlementService { port, calls }
    }

    fn config(&self, timeout_ms: u64) -> String {
        format!(
            "[entitlement.service]\nurl = \"http://127.0.0.1:{}/entitle\"\ntimeout_ms = {timeout_ms}\n",
            self.port
        )
    }
}

#[tokio::test]
async fn entitlement_service_answers_are_cached() {
    let sim = Sim::start(&[]);
    let service = EntitlementService::start(false).await;
    let gate = gate(&sim, &service.config(1000)).await;
    let client = client();
    for _ in 0..3 {
        let response = client
            .post(gate.license_url("clearkey", Some("demo")))
            .bearer_auth(user(&[]))
            .body(clearkey_request(DEMO_KID_B64))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        service.calls.load(Ordering::SeqCst),
        1,
        "answers are cached"
    );
    let refused = token(json!({"sub": "mallory", "exp": now() + 600}));
    let response = client
        .post(gate.license_url("clearkey", Some("demo")))
        .bearer_auth(refused)
        .body(clearkey_request(DEMO_KID_B64))
        .send()
        .await
        .unwrap();
    problem(response, 403, "not_entitled").await;
}

#[tokio::test]
async fn a_hanging_entitlement_service_is_a_503_within_its_timeout() {
    let sim = Sim::start(&[]);
    let service = EntitlementService::start(true).await;
    let gate = gate(&sim, &service.config(300)).await;
    let started = Instant::now();
    let response = client()
        .post(gate.license_url("clearkey", Some("demo")))
        .bearer_auth(user(&[]))
        .body(clearkey_request(DEMO_KID_B64))
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
    problem(response, 503, "entitlement_unavailable").await;
}

/// An entitlement service answering 64 MiB bodies, with a `Content-Length` or chunked; how
/// many bytes it managed to send.
async fn flooding_entitlement_service(chunked: bool) -> (u16, Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const FLOOD: usize = 64 << 20;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut request = [0; 4096];
                let _ = stream.read(&mut request).await;
                let head = if chunked {
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_string()
                } else {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        FLOOD + 2
                    )
                };
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let piece = vec![b' '; 64 * 1024];
                for _ in 0..FLOOD / piece.len() {
                    let written = if chunked {
                        let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
                        framed.extend_from_slice(&piece);
                        framed.extend_from_slice(b"\r\n");
                        stream.write_all(&framed).await
                    } else {
                        stream.write_all(&piece).await
                    };
                    if written.is_err() {
                        return;
                    }
                    counter.fetch_add(piece.len() as u64, Ordering::SeqCst);
                }
                let _ = stream
                    .write_all(if chunked {
                        b"2\r\n{}\r\n0\r\n\r\n" as &[u8]
                    } else {
                        b"{}"
                    })
                    .await;
            });
        }
    });
    (port, sent)
}

/// Six 64 MiB entitlement answers at once are refused (`503 entitlement_unavailable`) without
/// being read: the service gets a few MiB out before the connection closes, and licensegate's
/// memory does not grow with them.
#[tokio::test]
async fn oversized_entitlement_answers_are_refused_unread() {
    let sim = Sim::start(&[]);
    for chunked in [false, true] {
        let (port, sent) = flooding_entitlement_service(chunked).await;
        let gate = gate(
            &sim,
            &format!("[entitlement.service]\nurl = \"http://127.0.0.1:{port}/entitle\"\ntimeout_ms = 5000\n"),
        )
        .await;
        let before = gate.rss_kib();
        let client = client();
        let players: Vec<_> = (0..6)
            .map(|n| {
                client
                    .post(gate.license_url("clearkey", Some("demo")))
                    .bearer_auth(user_token(&format!("viewer-{n}"), &[]))
                    .body(clearkey_request(DEMO_KID_B64))
                    .send()
            })
            .collect();
        for answer in futures_util::future::join_all(players).await {
            let body = problem(answer.unwrap(), 503, "entitlement_unavailable").await;
            assert!(
                body["detail"].as_str().unwrap().contains("exceeds"),
                "{body}"
            );
        }
        let grown_kib = gate.rss_kib().saturating_sub(before);
        let sent_mib = sent.load(Ordering::SeqCst) >> 20;
        eprintln!(
            "chunked {chunked}: licensegate grew {grown_kib} KiB; the service sent {sent_mib} MiB"
        );
        assert!(grown_kib < 16 * 1024, "licensegate grew {grown_kib} KiB");
        assert!(sent_mib < 6 * 16, "the service sent {sent_mib} MiB");
    }
}

#[tokio::test]
async fn catalog_reload_under_load_fails_no_request() {
    let sim = Sim::start(&[]);
    let gate = Arc::new(gate(&sim, "").await);
    let client = client();
    let token = user(&["demo"]);
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (client, gate, token) = (client.clone(), gate.clone(), token.clone());
        workers.push(tokio::spawn(async move {
            let mut ok = 0;
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                let response = client
                    .post(gate.license_url("clearkey", Some("demo")))
                    .bearer_auth(&token)
                    .body(clearkey_request(DEMO_KID_B64))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
                ok += 1;
            }
            ok
        }));
    }
    for generation in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let grown = format!(
            "{CATALOG}\n[content.extra-{generation}]\nkey_ids = [\"c0c1c2c3-c4c5-c6c7-c8c9-cacbcccdce{generation:02x}\"]\n"
        );
        let path = gate.dir().join("catalog.toml");
        std::fs::write(&path, grown).unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(generation + 1))
            .unwrap();
    }
    let mut total = 0;
    for worker in workers {
        total += worker.await.unwrap();
    }
    assert!(total > 100, "only {total} requests ran");
    let log = gate.log();
    assert!(log.matches("catalog reloaded").count() >= 3, "{log}");
}

/// A player following the DASH-IF license request model reads the problem type alone: a new
/// token for insufficient proof, the user told when not authorized; licensegate's code beside.
#[tokio::test]
async fn refusals_carry_the_dashif_problem_types() {
    let sim = Sim::start(&[]);
    let gate = gate(&sim, "").await;
    let url = gate.license_url("clearkey", Some("demo"));
    let body = clearkey_request(DEMO_KID_B64);
    let missing = client().post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    let missing = problem(missing, 401, "token_missing").await;
    let expired_token =
        token(json!({"sub": "alice", "entitlements": ["demo"], "exp": now() - 3600}));
    let expired = client()
        .post(&url)
        .bearer_auth(expired_token)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let expired = problem(expired, 401, "token_expired").await;
    for answer in [&missing, &expired] {
        assert_eq!(
            answer["type"],
            "https://dashif.org/drm-problems/insufficient-proof-of-authorization"
        );
        assert_eq!(answer["title"], "Not authorized");
    }
    let refused = client()
        .post(&url)
        .bearer_auth(user(&["other"]))
        .body(body)
        .send()
        .await
        .unwrap();
    let refused = problem(refused, 403, "not_entitled").await;
    assert_eq!(
        refused["type"],
        "https://dashif.org/drm-problems/not-authorized"
    );
    assert_eq!(refused["title"], "Not authorized");
}
