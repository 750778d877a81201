//! The edge against hostile clients and misbehaving providers, on real sockets, with Debian's
//! nginx as the provider wherever a real server shows the behaviour.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use licensegate_testkit::{
    Gate, Hypercorn, JWT_SECRET, Nginx, Sim, client, config, fixture, free_ports, gate_command,
    problem, signal, token_signed_with, wait_for_port,
};

const CHALLENGE_30K: usize = 30 * 1024;

fn metric_lines(metrics: &str, name: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|line| line.starts_with(name))
        .map(str::to_string)
        .collect()
}

/// 40 players at once send 30 KiB challenges to a provider that refuses each as soon as its
/// headers arrive and resets the stream with NO_ERROR before reading the body.
async fn early_answers(gate: &Gate) -> Vec<(u16, String)> {
    let client = client();
    let mut players = Vec::new();
    for _ in 0..40 {
        let request = client
            .post(gate.license_url("widevine", Some("movie-1")))
            .body(vec![0x5a; CHALLENGE_30K]);
        players.push(tokio::spawn(async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }));
    }
    let mut answers = Vec::new();
    for player in players {
        answers.push(player.await.unwrap());
    }
    answers
}

#[tokio::test]
async fn an_early_answer_from_nginx_reaches_every_player_and_no_challenge_is_sent_twice() {
    // A small stream window, as a provider may advertise: the challenge cannot leave whole
    // before nginx has answered and reset the stream, so every request meets the early answer
    // while its body is still being written.
    let nginx = Nginx::start(
        r#"listen 127.0.0.1:{port} http2;
        http2_body_preread_size 1k;
        location / { return 403 "refused by nginx\n"; }"#,
    );
    let gate = Gate::start_ready(&config(&[nginx.url("http", "/AcquireLicense")], "")).await;
    for (status, body) in early_answers(&gate).await {
        assert_eq!(status, 403);
        assert_eq!(body, "refused by nginx\n");
    }
    let log = nginx.access_log();
    let request_ids: HashSet<&str> = log
        .iter()
        .map(|line| line.split(' ').next().unwrap())
        .collect();
    assert_eq!(log.len(), 40, "each challenge reached nginx once: {log:?}");
    assert_eq!(request_ids.len(), 40);
    // nginx refuses (REFUSED_STREAM) streams that bring a body before it has its SETTINGS
    // acknowledged: never processed, so sent again, and still logged once. Nothing else is
    // retried.
    let metrics = gate.metrics().await;
    let retries = metric_lines(&metrics, "licensegate_upstream_retries_total{");
    assert!(
        retries
            .iter()
            .all(|line| line.contains("reason=\"refused_stream\"")),
        "{retries:?}"
    );
}

#[tokio::test]
async fn an_early_answer_from_the_simulator_reaches_every_player() {
    let sim = Sim::start(&["--early-answer"]);
    let gate = Gate::start_ready(&config(&[sim.url()], "")).await;
    for (status, body) in early_answers(&gate).await {
        assert_eq!(status, 403);
        assert_eq!(body, "refused before reading the challenge");
    }
    assert_eq!(sim.stats().await["early_answers"], 40);
}

/// nginx reads the whole challenge, then answers; its log shows what reached it.
fn licensing_nginx() -> Nginx {
    Nginx::start(
        r#"listen 127.0.0.1:{port} http2;
        location / { echo_read_request_body; echo "licensed"; }"#,
    )
}

#[tokio::test]
async fn oversized_forwarding_headers_never_reach_a_shared_vendor_connection() {
    let nginx = licensing_nginx();
    let gate = Gate::start_ready(&config(
        &[nginx.url("http", "/AcquireLicense")],
        "max_concurrent_streams = 100",
    ))
    .await;
    let client = client();
    let huge_forwarded_for = vec!["198.51.100.7"; 5500].join(", ");
    let huge_soap_action = format!(
        "\"http://schemas.microsoft.com/DRM/2007/03/protocols/{}\"",
        "A".repeat(70_000)
    );
    let mut players = Vec::new();
    for n in 0..30 {
        let (drm, soap) = if n % 2 == 0 {
            ("widevine", None)
        } else {
            (
                "playready",
                Some("\"http://schemas.microsoft.com/DRM/2007/03/protocols/AcquireLicense\""),
            )
        };
        let mut request = client
            .post(gate.license_url(drm, Some("movie-1")))
            .body(vec![0x11; 2048]);
        if let Some(soap) = soap {
            request = request.header("SOAPAction", soap);
        }
        players.push(tokio::spawn(request.send()));
    }
    let attacks = [
        client
            .post(gate.license_url("widevine", Some("movie-1")))
            .header("X-Forwarded-For", huge_forwarded_for.as_str())
            .body(vec![0x11; 2048]),
        client
            .post(gate.license_url("playready", Some("movie-1")))
            .header("SOAPAction", huge_soap_action.as_str())
            .body(vec![0x11; 2048]),
    ];
    for attack in attacks {
        problem(attack.send().await.unwrap(), 431, "headers_too_large").await;
    }
    let forged = client
        .post(gate.license_url("playready", Some("movie-1")))
        .header(
            "SOAPAction",
            "\"http://evil.example/\r\nX-Injected: 1\"".replace("\r\n", " "),
        )
        .body(vec![0x11; 2048])
        .send()
        .await
        .unwrap();
    problem(forged, 400, "soap_action_invalid").await;
    for player in players {
        let response = player.await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "licensed\n");
    }
    let log = nginx.access_log();
    assert_eq!(
        log.len(),
        30,
        "only the players' challenges, each once: {log:?}"
    );
    for line in &log {
        assert!(
            line.contains("\"127.0.0.1\""),
            "built from the peer: {line}"
        );
    }
    let metrics = gate.metrics().await;
    assert!(metric_lines(&metrics, "licensegate_upstream_retries_total{").is_empty());
}

#[tokio::test]
async fn a_trusted_proxy_chain_is_parsed_and_capped() {
    let nginx = licensing_nginx();
    let gate = Gate::start_ready(
        &config(&[nginx.url("http", "/AcquireLicense")], "")
            .replace("[server]", "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]"),
    )
    .await;
    let client = client();
    let chain = (1..=20)
        .map(|n| format!("203.0.113.{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let response = client
        .post(gate.license_url("widevine", Some("movie-1")))
        .header("X-Forwarded-For", chain)
        .body(vec![0x11; 64])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let garbage = client
        .post(gate.license_url("widevine", Some("movie-1")))
        .header("X-Forwarded-For", "<script>")
        .body(vec![0x11; 64])
        .send()
        .await
        .unwrap();
    problem(garbage, 400, "forwarded_for_invalid").await;
    let log = nginx.access_log();
    assert_eq!(log.len(), 1);
    let forwarded = log[0].split('"').nth(1).unwrap();
    assert_eq!(
        forwarded,
        "203.0.113.14, 203.0.113.15, 203.0.113.16, 203.0.113.17, 203.0.113.18, \
         203.0.113.19, 203.0.113.20, 127.0.0.1"
    );
}

/// Protobuf, by hand: a length-delimited field.
fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![(number << 3) | 2];
    let mut len = bytes.len();
    while len >= 0x80 {
        out.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(bytes);
    out
}

/// A Widevine `SignedMessage` around a `LicenseRequest` of `request_type` whose content
/// identification is `content`.
fn widevine_request(content: Vec<u8>, request_type: u8) -> Vec<u8> {
    let mut request = field(2, &content);
    request.extend_from_slice(&[0x18, request_type]);
    let mut signed = vec![0x08, 0x01];
    signed.extend(field(2, &request));
    signed
}

const KEY_ID_CATALOG: &str = r#"
[content.demo]
key_ids = ["01020304-0506-0708-090a-0b0c0d0e0f10"]
free = true
"#;

#[tokio::test]
async fn every_widevine_key_id_form_is_checked_against_the_content() {
    let sim = Sim::start(&[]);
    let gate = Gate::ready(Gate::start_with_files(
        &format!(
            "{}\n[catalog]\npath = \"${{LG_DIR}}/catalog.toml\"\n",
            config(&[sim.url()], "")
        ),
        &[("catalog.toml", KEY_ID_CATALOG.as_bytes())],
    ))
    .await;
    let client = client();
    let send = |challenge: Vec<u8>| {
        client
            .post(gate.license_url("widevine", Some("demo")))
            .body(challenge)
            .send()
    };
    let demo_kid: Vec<u8> = (1..=16).collect();
    let stranger = vec![0x99; 16];
    // WebmKeyId { header } and InitData { type WEBM, init_data }.
    let webm = |kid: &[u8]| field(2, &field(1, kid));
    let webm_init_data = |kid: &[u8]| {
        let mut init = vec![0x08, 0x02];
        init.extend(field(2, kid));
        field(4, &init)
    };
    for content in [webm(&stranger), webm_init_data(&stranger)] {
        let response = send(widevine_request(content, 1)).await.unwrap();
        problem(response, 403, "kid_not_in_content").await;
    }
    for content in [webm(&demo_kid), webm_init_data(&demo_kid)] {
        assert_eq!(
            send(widevine_request(content, 1)).await.unwrap().status(),
            200
        );
    }
    // A pssh naming content by its id only: what it would unlock cannot be checked.
    let by_content_id = field(1, &field(1, &field(4, b"another-title")));
    let response = send(widevine_request(by_content_id, 1)).await.unwrap();
    problem(response, 403, "key_ids_unreadable").await;
    // A renewal names its license, not key IDs; the content is named by the request.
    let renewal = field(3, &field(1, &field(1, b"session-1")));
    assert_eq!(
        send(widevine_request(renewal, 2)).await.unwrap().status(),
        200
    );
    assert_eq!(sim.stats().await["licenses"], 3);
    let _ = fixture;
}

/// Reads until the server closes the connection; how long that took.
fn time_until_closed(mut stream: TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => {}
        }
    }
}

const SHORT_DEADLINES: &str =
    "[server]\nheader_read_timeout_ms = 1000\nkeepalive_timeout_seconds = 2";

#[tokio::test]
async fn slow_idle_and_lingering_clients_are_cut_within_their_deadlines() {
    let sim = Sim::start(&[]);
    let gate =
        Gate::start_ready(&config(&[sim.url()], "").replace("[server]", SHORT_DEADLINES)).await;
    let addr = format!("127.0.0.1:{}", gate.port);

    let silent = TcpStream::connect(&addr).unwrap();
    let idle =
        tokio::task::spawn_blocking(move || time_until_closed(silent, Duration::from_secs(10)));

    let mut slow = TcpStream::connect(&addr).unwrap();
    let slow_started = Instant::now();
    slow.write_all(b"POST /v1/license/widevine HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let slow_writer = tokio::task::spawn_blocking(move || {
        for n in 0..100 {
            std::thread::sleep(Duration::from_millis(100));
            if slow
                .write_all(format!("X-Slow-{n}: 1\r\n").as_bytes())
                .is_err()
            {
                break;
            }
            let mut probe = [0u8; 1];
            slow.set_nonblocking(true).unwrap();
            let closed = matches!(slow.read(&mut probe), Ok(0));
            slow.set_nonblocking(false).unwrap();
            if closed {
                break;
            }
        }
        slow_started.elapsed()
    });

    let mut lingering = TcpStream::connect(&addr).unwrap();
    lingering
        .write_all(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let lingering = tokio::task::spawn_blocking(move || {
        let mut first = [0u8; 64];
        let _ = lingering.read(&mut first).unwrap();
        time_until_closed(lingering, Duration::from_secs(10))
    });

    let idle = idle.await.unwrap();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_millis(2000),
        "{idle:?}"
    );
    let slow = slow_writer.await.unwrap();
    assert!(
        slow >= Duration::from_millis(900) && slow < Duration::from_millis(2500),
        "{slow:?}"
    );
    let lingering = lingering.await.unwrap();
    assert!(
        lingering >= Duration::from_millis(1500) && lingering < Duration::from_millis(3500),
        "{lingering:?}"
    );
}

/// Passes connections through to `target` until told to stall; from then on it accepts
/// connections and never answers, as a provider endpoint whose TLS stack hangs does.
struct Relay {
    port: u16,
    stall: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    async fn start(target: u16) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stall = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stalling = stall.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                if stalling.load(Ordering::Relaxed) {
                    held.push(inbound);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        Relay { port, stall }
    }

    fn stall(&self) {
        self.stall.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn timed_licenses(gate: &Gate, count: usize) -> Vec<(u16, Duration)> {
    let client = client();
    let mut players = Vec::new();
    for _ in 0..count {
        let request = client
            .post(gate.license_url("widevine", Some("movie-1")))
            .body(vec![0x22; 2048]);
        players.push(tokio::spawn(async move {
            let started = Instant::now();
            let status = request.send().await.map_or(0, |r| r.status().as_u16());
            (status, started.elapsed())
        }));
    }
    let mut results = Vec::new();
    for player in players {
        results.push(player.await.unwrap());
    }
    results
}

#[tokio::test]
async fn a_stalled_tls_endpoint_holds_up_no_request_and_is_ejected() {
    let certificate = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let nginx = Nginx::start_with_files(
        r#"listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        location / { echo_read_request_body; echo "licensed"; }"#,
        &[
            ("cert.pem", certificate.cert.pem().as_bytes()),
            (
                "key.pem",
                certificate.signing_key.serialize_pem().as_bytes(),
            ),
        ],
    );
    let relay = Relay::start(nginx.port).await;
    let total = Duration::from_millis(2000);
    let gate = Gate::start_ready(&config(
        &[
            format!("https://localhost:{}/AcquireLicense", relay.port),
            nginx.url("https", "/AcquireLicense").replace("127.0.0.1", "localhost"),
        ],
        "tls_verify = false\nretries = 2\n[providers.sim.timeouts]\nconnect_ms = 300\nread_ms = 2000\ntotal_ms = 2000",
    ))
    .await;
    relay.stall();

    let first = timed_licenses(&gate, 20).await;
    let succeeded = first.iter().filter(|(status, _)| *status == 200).count();
    for (_, took) in &first {
        assert!(*took <= total + Duration::from_millis(500), "{first:?}");
    }
    assert!(succeeded >= 18, "{first:?}");

    let metrics = gate.metrics().await;
    assert!(
        !metric_lines(&metrics, "licensegate_upstream_ejections_total{").is_empty(),
        "{metrics}"
    );
    let after = timed_licenses(&gate, 20).await;
    for (status, took) in &after {
        assert_eq!(*status, 200, "{after:?}");
        assert!(
            *took < Duration::from_millis(300),
            "nobody waits on the stall: {after:?}"
        );
    }

    // The active check sees the stall too: only nginx counts as healthy.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ready = licensegate_testkit::get_json(&gate.admin("/readyz")).await;
        if ready["healthy_endpoints"]["sim"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_flood_of_idle_connections_leaves_health_checks_and_new_players_served() {
    let (_, hard) = rlimit::Resource::NOFILE.get().unwrap();
    rlimit::Resource::NOFILE.set(hard, hard).unwrap();
    let sim = Sim::start(&[]);
    let gate = Gate::ready(Gate::start_with_open_file_limit(
        &config(&[sim.url()], "").replace("[server]", SHORT_DEADLINES),
        1024,
    ))
    .await;
    let addr = format!("127.0.0.1:{}", gate.port);
    let idle: Vec<TcpStream> = (0..3000)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    assert!(idle.len() > 1024, "{} connections opened", idle.len());

    let health = client().get(gate.admin("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let started = Instant::now();
    let challenge = fixture("license-request-kid-01020304.bin");
    loop {
        let answer = client()
            .post(gate.license_url("widevine", Some("demo")))
            .body(challenge.clone())
            .send()
            .await;
        if answer.is_ok_and(|response| response.status() == 200) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "no license while flooded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = gate.metrics().await;
    let refused: f64 = metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix("licensegate_connections_refused_total{listener=\"license\"} ")
        })
        .unwrap()
        .parse()
        .unwrap();
    assert!(refused > 0.0, "{metrics}");
    assert!(
        gate.log().contains("open_file_limit=1024"),
        "{}",
        gate.log()
    );
    drop(idle);
}

#[tokio::test]
async fn sigterm_answers_every_request_in_flight_and_keeps_accepting_for_the_grace_period() {
    let sim = Sim::start(&["--delay-ms", "2500"]);
    let mut gate = Gate::start_ready(
        &config(&[sim.url()], "")
            .replace("grace_period_seconds = 0", "grace_period_seconds = 1")
            .replace(
                "graceful_shutdown_timeout_seconds = 1",
                "graceful_shutdown_timeout_seconds = 10",
            ),
    )
    .await;
    let client = client();
    let challenge = fixture("license-request-kid-01020304.bin");
    let url = gate.license_url("widevine", Some("demo"));
    let license = |client: &reqwest::Client| client.post(&url).body(challenge.clone()).send();
    let mut players: Vec<_> = (0..8).map(|_| tokio::spawn(license(&client))).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signalled = Instant::now();
    let pid = gate.child().id();
    licensegate_testkit::signal(pid, "TERM");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = reqwest::get(gate.admin("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    // Still accepting: a player whose load balancer has not noticed yet is served.
    players.push(tokio::spawn(license(&client)));
    for player in players {
        let response = player.await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.bytes().await.unwrap().len(),
            licensegate_sim::LICENSE_PREFIX.len() + 32
        );
    }
    let exit = licensegate_testkit::wait_exit(gate.child(), Duration::from_secs(8))
        .expect("exits when drained");
    assert!(exit.success());
    assert!(signalled.elapsed() < Duration::from_secs(7));
    let access_lines = gate
        .log()
        .lines()
        .filter(|line| line.contains("licensegate::access") && line.contains("status=200"))
        .count();
    assert_eq!(access_lines, 9, "{}", gate.log());
}

/// However the provider's HTTP/2 stack ends its answer, the certificate is in the cache before
/// the player sees the end of it: ten requests in a row reach the provider once, every time.
#[tokio::test]
async fn the_service_certificate_reaches_a_real_http2_vendor_once_whatever_its_framing() {
    let hypercorn = Hypercorn::start("certificate_vendor:app", &[]);
    let nginx = Nginx::start(
        r#"listen 127.0.0.1:{port} http2;
        location /last-data { return 200 "service-certificate"; }
        location /trailers {
            add_trailer X-Certificate complete;
            echo_read_request_body;
            echo -n "service-certificate";
        }"#,
    );
    let hypercorn_url = |framing: &str| hypercorn.url(&format!("/cert/{framing}"));
    let providers = [
        hypercorn_url("length"),
        hypercorn_url("split"),
        nginx.url("http", "/last-data"),
        nginx.url("http", "/trailers"),
    ];
    let client = client();
    for repetition in 0..20 {
        let provider = &providers[repetition % providers.len()];
        let gate = Gate::start_ready(&config(std::slice::from_ref(provider), "")).await;
        let before = (hypercorn.requests().await, nginx.access_log().len());
        let mut answers = HashSet::new();
        for _ in 0..10 {
            let response = client
                .post(gate.license_url("widevine", None))
                .body(vec![0x08, 0x04])
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            answers.insert(response.bytes().await.unwrap());
        }
        assert_eq!(answers.len(), 1, "every player got the same certificate");
        let reached = (hypercorn.requests().await - before.0) as usize
            + (nginx.access_log().len() - before.1);
        assert_eq!(reached, 1, "repetition {repetition} via {provider}");
    }
}

const ADMIN_TOKEN: &str = "EDGE-ADMIN-TOKEN-SECRET-42";
const CATALOG_KEY: &str = "EDGE-CATALOG-KEY-SECRET-NOT-HEX";

fn claims() -> serde_json::Value {
    serde_json::json!({"sub": "alice", "exp": 4_000_000_000u64, "entitlements": ["demo"]})
}

/// Writes raw bytes to a listener and reads whatever comes back.
fn raw_exchange(port: u16, request: &[u8]) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
}

#[tokio::test]
async fn no_token_key_or_secret_appears_in_any_output() {
    let sim = Sim::start(&[]);
    let settings = format!(
        r#"
[auth]
[[auth.keys]]
kind = "secret"
algorithm = "HS256"
secret = "{JWT_SECRET}"
[catalog]
path = "${{LG_DIR}}/catalog.toml"
reload_seconds = 1
[devices]
max_per_user = 2
admin_token = "{ADMIN_TOKEN}"
path = "${{LG_DIR}}/devices.db"
"#
    );
    let catalog = "[content.demo]\nkey_ids = [\"01020304-0506-0708-090a-0b0c0d0e0f10\"]\n";
    let gate = Gate::ready(Gate::start_with_files(
        &format!("{}{settings}", config(&[sim.url()], "")),
        &[("catalog.toml", catalog.as_bytes())],
    ))
    .await;
    let token = licensegate_testkit::token(claims());
    let forged = token_signed_with("another-secret-of-at-least-32-bytes-long", claims());
    let client = client();
    let challenge = fixture("license-request-kid-01020304.bin");
    let url = gate.license_url("widevine", Some("demo"));
    let requests = [
        client.post(&url).bearer_auth(&token),
        client.post(format!("{url}&token={token}")),
        client
            .post(&url)
            .header("Origin", "https://player.example")
            .header("Cookie", format!("licensegate_token={token}")),
        client.post(&url).bearer_auth(&forged),
    ];
    for request in requests {
        request.body(challenge.clone()).send().await.unwrap();
    }
    for bearer in [ADMIN_TOKEN, "wrong-admin-token-guess"] {
        client
            .get(gate.admin("/v1/devices/alice"))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap();
    }
    // Requests Pingora cannot parse, carrying the credentials, on both listeners.
    raw_exchange(
        gate.admin_port,
        format!("GET /v1/devices/alice HTTP/1.1\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nBad Header\r\n\r\n").as_bytes(),
    );
    raw_exchange(
        gate.port,
        format!("POST /v1/license/widevine?token={token} HTTP/1.1\r\nAuthorization: Bearer {token}\r\nBad Header\r\n\r\n").as_bytes(),
    );
    // A catalog whose key is no key: the reload fails and says where, not what.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let broken = format!(
        "{catalog}keys = {{ \"01020304-0506-0708-090a-0b0c0d0e0f10\" = \"{CATALOG_KEY}\" }}\n"
    );
    std::fs::write(gate.dir().join("catalog.toml"), broken).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gate.log().contains("catalog not reloaded") {
        assert!(Instant::now() < deadline, "{}", gate.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = gate.log();
    assert!(log.contains("content.demo.keys"), "{log}");
    let token_signature = token.rsplit('.').next().unwrap();
    for secret in [
        JWT_SECRET,
        ADMIN_TOKEN,
        CATALOG_KEY,
        &token,
        token_signature,
        &forged,
    ] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

/// Pingora's socket handover under steady load: the new process takes the listeners, the old
/// one drains, and oha sees no failed request.
#[tokio::test]
async fn an_upgrade_under_steady_oha_load_fails_no_request() {
    let sim = Sim::start(&[]);
    let config = config(&[sim.url()], "").replace(
        "[server]",
        "[server]\nupgrade_socket = \"${LG_DIR}/upgrade.sock\"",
    );
    let mut old = Gate::start_ready(&config).await;
    let challenge = old.dir().join("challenge.bin");
    std::fs::write(&challenge, fixture("license-request-kid-01020304.bin")).unwrap();
    let load = licensegate_testkit::SteadyLoad::start(
        &old.license_url("widevine", Some("demo")),
        &challenge,
        10,
        200,
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut new = licensegate_testkit::gate_command(old.dir(), old.port, old.admin_port)
        .arg("--upgrade")
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old_pid = old.child().id();
    licensegate_testkit::signal(old_pid, "QUIT");
    let exit = licensegate_testkit::wait_exit(old.child(), Duration::from_secs(15));
    assert!(
        exit.is_some_and(|status| status.success()),
        "the old process drains and exits"
    );
    assert!(
        new.try_wait().unwrap().is_none(),
        "the new process serves on"
    );

    load.assert_all_ok(2000, || old.log()).await;
    let _ = new.kill();
    let _ = new.wait();
}

/// A stdout nobody reads, as a stalled pipe to a log collector is: once the pipe's buffer is
/// full, a writer on the request threads would stall every license. Lines leave through the log
/// writer thread instead, and every one of them is there when the pipe is read at last.
#[tokio::test]
async fn licenses_keep_flowing_while_nobody_reads_the_log() {
    const REQUESTS: usize = 1000;
    let sim = Sim::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("licensegate.toml"),
        config(&[sim.url()], ""),
    )
    .unwrap();
    let [port, admin_port] = free_ports();
    let mut child = gate_command(dir.path(), port, admin_port)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_port(port, &mut child);
    let client = client();
    let ready = format!("http://127.0.0.1:{admin_port}/readyz");
    while client.get(&ready).send().await.unwrap().status() != 200 {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let url = format!("http://127.0.0.1:{port}/v1/license/widevine?content=movie-1");
    let challenge = fixture("license-request-kid-01020304.bin");
    let started = Instant::now();
    for _ in 0..REQUESTS {
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            client.post(&url).body(challenge.clone()).send(),
        )
        .await
        .expect("a license waited on a log nobody reads")
        .unwrap();
        assert_eq!(answer.status(), 200);
    }
    let elapsed = started.elapsed();
    let mut stdout = child.stdout.take().unwrap();
    signal(child.id(), "TERM");
    let mut log = String::new();
    stdout.read_to_string(&mut log).unwrap();
    child.wait().unwrap();
    let access_lines = log
        .lines()
        .filter(|line| line.contains("licensegate::access"))
        .count();
    // Far more than the 64 KiB a pipe holds: without the writer thread, requests would have
    // stalled a fifth of the way through.
    assert!(log.len() > 4 * 65536, "{} bytes of log", log.len());
    assert_eq!(access_lines, REQUESTS, "{REQUESTS} licenses in {elapsed:?}");
}

/// A vendor status HTTP does not have (999) is no answer: the player gets
/// `502 vendor_answer_invalid`, not the status.
#[tokio::test]
async fn a_vendor_status_outside_http_is_a_502() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = vec![0; 65536];
                if stream.read(&mut request).await.unwrap_or(0) > 0 {
                    let _ = stream
                        .write_all(b"HTTP/1.1 999 Odd\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    let gate = Gate::start_ready(&config(
        &[format!("http://127.0.0.1:{port}/AcquireLicense")],
        "protocol = \"h1\"\nretries = 0",
    ))
    .await;
    let response = client()
        .post(gate.license_url("widevine", Some("movie-1")))
        .body(vec![0x11; 64])
        .send()
        .await
        .unwrap();
    let body = problem(response, 502, "vendor_answer_invalid").await;
    assert!(body["detail"].as_str().unwrap().contains("999"), "{body}");
}

/// The in-process bucket of each client address that asked; once refilled, dropped within a
/// few seconds: 300 addresses leave no bucket behind.
#[tokio::test]
async fn refilled_rate_limit_buckets_are_freed() {
    let sim = Sim::start(&[]);
    let gate = Gate::start_ready(
        &format!(
            "{}\n[rate_limits.per_client]\nper_second = 1000\nburst = 2\n",
            config(&[sim.url()], "")
        )
        .replace("[server]", "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]"),
    )
    .await;
    let client = client();
    for n in 0..300u32 {
        let response = client
            .post(gate.license_url("widevine", Some("movie-1")))
            .header(
                "X-Forwarded-For",
                format!("10.0.{}.{}", n / 250, n % 250 + 1),
            )
            .body(vec![0x11; 64])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let buckets = |metrics: &str| -> u64 {
        metric_lines(metrics, "licensegate_rate_limit_buckets{limit=\"client\"}")
            .first()
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::MAX)
    };
    assert_eq!(buckets(&gate.metrics().await), 300);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let held = buckets(&gate.metrics().await);
        if held == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{held} buckets still held");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// An IPv6 client may pick any address in its /64: its addresses share one bucket, and another
/// network has its own.
#[tokio::test]
async fn ipv6_clients_are_rate_limited_per_network() {
    let sim = Sim::start(&[]);
    let gate = Gate::start_ready(
        &format!(
            "{}\n[rate_limits.per_client]\nper_second = 0.001\nburst = 1\n",
            config(&[sim.url()], "")
        )
        .replace("[server]", "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]"),
    )
    .await;
    let client = client();
    let mut statuses = Vec::new();
    for address in [
        "2001:db8:1:2::1",
        "2001:db8:1:2:ffff::99",
        "2001:db8:1:3::1",
    ] {
        let response = client
            .post(gate.license_url("widevine", Some("movie-1")))
            .header("X-Forwarded-For", address)
            .body(vec![0x11; 64])
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [200, 429, 200]);
}

/// Reads one HTTP/1.1 answer from `stream`: its head, and the body its `Content-Length` says.
fn read_answer(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).unwrap_or(0) == 0 {
            panic!(
                "connection closed after {:?}",
                String::from_utf8_lossy(&head)
            );
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no Content-Length: {head}"));
    let mut body = vec![0; length];
    stream.read_exact(&mut body).unwrap();
    (head, body)
}

/// Every admin answer says its length, so that the connection it promises to keep serves the
/// next request.
#[tokio::test]
async fn admin_answers_say_their_length_and_keep_their_connection() {
    let sim = Sim::start(&[]);
    let gate = Gate::start_ready(&config(&[sim.url()], "")).await;
    let port: u16 = gate.admin("").rsplit(':').next().unwrap().parse().unwrap();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for path in ["/readyz", "/metrics", "/status/data", "/v1/nothing"] {
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes())
            .unwrap();
        let (head, body) = read_answer(&mut stream);
        assert!(!body.is_empty(), "{path}: {head}");
    }
}

/// Every DRM's request as a player sends it: Widevine, PlayReady, and FairPlay in each of the
/// five envelopes players use.
fn requests_of_every_drm() -> Vec<(&'static str, &'static str, Vec<u8>, &'static str)> {
    use base64::Engine;
    let spc = [&[0u8, 0, 0, 1][..], &[0x5a; 2044]].concat();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&spc);
    let form = "application/x-www-form-urlencoded";
    let apple = serde_json::json!({"fairplay-streaming-request": {"version": 1,
        "streaming-keys": [{"id": 1, "uri": "skd://movie-1", "spc": b64}]}});
    vec![
        (
            "widevine",
            "widevine",
            vec![0x11; 64],
            "application/octet-stream",
        ),
        (
            "playready",
            "playready",
            fixture("license-request-v4.0.xml"),
            "text/xml",
        ),
        ("fairplay", "raw", spc.clone(), "application/octet-stream"),
        ("fairplay", "base64", b64.clone().into_bytes(), "text/plain"),
        ("fairplay", "form", format!("spc={b64}").into_bytes(), form),
        (
            "fairplay",
            "json",
            serde_json::json!({ "spc": b64 }).to_string().into_bytes(),
            "application/json",
        ),
        (
            "fairplay",
            "apple-json",
            apple.to_string().into_bytes(),
            form,
        ),
    ]
}

/// What each DRM's player gets from a vendor that answers 200 with no body.
async fn answers_to_an_empty_200(gate: &Gate) -> Vec<String> {
    let mut answers = Vec::new();
    for (drm, envelope, body, content_type) in requests_of_every_drm() {
        let response = client()
            .post(gate.license_url(drm, Some("movie-1")))
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let code = response
            .json::<serde_json::Value>()
            .await
            .unwrap_or_default()["code"]
            .as_str()
            .unwrap_or("-")
            .to_string();
        answers.push(format!("{envelope}: {status} {code}"));
    }
    answers
}

fn all_refused_as_invalid(answers: &[String]) -> bool {
    answers
        .iter()
        .all(|answer| answer.ends_with(": 502 vendor_answer_invalid"))
}

/// `tests/servers/odd_vendor.py` answering as its mode says, stopped when dropped.
struct OddVendor {
    child: std::process::Child,
    port: u16,
}

impl OddVendor {
    fn start(mode: &str) -> OddVendor {
        let [port] = free_ports();
        let mut child = std::process::Command::new("python3")
            .arg(licensegate_testkit::repository().join("tests/servers/odd_vendor.py"))
            .args([&port.to_string(), mode])
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 with h2 must be installed (scripts/setup.sh installs it)");
        wait_for_port(port, &mut child);
        OddVendor { child, port }
    }
}

impl Drop for OddVendor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 2xx with no body is no license, however the vendor frames it: over HTTP/2 (framed by the
/// Python `h2` library) as HEADERS with END_STREAM, as an empty DATA frame, or with
/// `content-length: 0`, every DRM's player gets `502 vendor_answer_invalid`.
#[tokio::test]
async fn an_empty_2xx_over_http2_is_a_502_for_every_drm() {
    for mode in ["headers-end", "empty-data", "length-zero"] {
        let vendor = OddVendor::start(mode);
        let gate = Gate::start_ready(&config(
            &[format!("http://127.0.0.1:{}/license", vendor.port)],
            "protocol = \"h2\"\nretries = 0",
        ))
        .await;
        let answers = answers_to_an_empty_200(&gate).await;
        assert!(all_refused_as_invalid(&answers), "{mode}: {answers:?}");
    }
}

/// Reads one HTTP/1.1 request with a `Content-Length` body whole, so that closing after the
/// answer sends FIN, not a reset over unread bytes.
async fn read_request(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut request = Vec::new();
    let mut chunk = [0; 8192];
    loop {
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            if request.len() >= end + 4 + length {
                return true;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(read) => request.extend_from_slice(&chunk[..read]),
        }
    }
}

/// The same over HTTP/1.1: `Content-Length: 0`, a chunked body ending at once, a body ended by
/// closing the connection, and `204`.
#[tokio::test]
async fn an_empty_2xx_over_http1_is_a_502_for_every_drm() {
    use tokio::io::AsyncWriteExt;
    let framings: [&[u8]; 4] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ];
    for framing in framings {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let vendor = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if read_request(&mut stream).await {
                        let _ = stream.write_all(framing).await;
                        let _ = stream.shutdown().await;
                    }
                });
            }
        });
        let gate = Gate::start_ready(&config(
            &[format!("http://127.0.0.1:{port}/license")],
            "protocol = \"h1\"\nretries = 0",
        ))
        .await;
        let answers = answers_to_an_empty_200(&gate).await;
        vendor.abort();
        let framing = String::from_utf8_lossy(framing);
        assert!(all_refused_as_invalid(&answers), "{framing}: {answers:?}");
    }
}

/// Players that hang up while the vendor answers are their own outcome, as nginx's 499: twenty
/// of them leave twenty `499 client_closed` access lines and no 5xx in the metrics the error
/// ratio alert reads.
#[tokio::test]
async fn players_hanging_up_are_499_not_errors() {
    let sim = Sim::start(&["--delay-ms", "1500"]);
    let gate = Gate::start_ready(&config(&[sim.url()], "")).await;
    let url = url::Url::parse(&gate.license_url("widevine", Some("movie-1"))).unwrap();
    let request = format!(
        "POST {}?{} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: 64\r\n\r\n",
        url.path(),
        url.query().unwrap()
    );
    let mut players = Vec::new();
    for _ in 0..20 {
        let mut player = TcpStream::connect(("127.0.0.1", gate.port)).unwrap();
        player.write_all(request.as_bytes()).unwrap();
        player.write_all(&[0x11; 64]).unwrap();
        players.push(player);
    }
    std::thread::sleep(Duration::from_millis(300));
    drop(players);
    let deadline = Instant::now() + Duration::from_secs(10);
    let hung_up = loop {
        let lines: Vec<String> = gate
            .log()
            .lines()
            .filter(|line| line.contains("licensegate::access"))
            .map(str::to_string)
            .collect();
        if lines.len() >= 20 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(hung_up.len(), 20, "{hung_up:?}");
    assert!(
        hung_up
            .iter()
            .all(|line| line.contains("status=499") && line.contains("outcome=\"client_closed\"")),
        "{hung_up:?}"
    );
    let metrics = gate.metrics().await;
    let answers = metric_lines(&metrics, "licensegate_requests_total{");
    assert_eq!(
        answers,
        ["licensegate_requests_total{drm=\"widevine\",provider=\"sim\",status=\"499\"} 20"],
        "{metrics}"
    );
}

/// A 502 after the vendor reset its connection keeps the player's connection it promises to
/// keep: the next request on it gets its license.
#[tokio::test]
async fn a_502_after_a_vendor_reset_keeps_the_players_connection() {
    let sim = Sim::start(&["--reset-connections", "1"]);
    let gate = Gate::start_ready(&config(&[sim.url()], "retries = 0")).await;
    let url = url::Url::parse(&gate.license_url("widevine", Some("movie-1"))).unwrap();
    let request = format!(
        "POST {}?{} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 64\r\n\r\n",
        url.path(),
        url.query().unwrap()
    );
    let mut player = TcpStream::connect(("127.0.0.1", gate.port)).unwrap();
    player
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut heads = Vec::new();
    for _ in 0..2 {
        player.write_all(request.as_bytes()).unwrap();
        player.write_all(&[0x11; 64]).unwrap();
        heads.push(read_answer(&mut player).0);
    }
    assert!(heads[0].starts_with("HTTP/1.1 502"), "{heads:?}");
    assert!(
        !heads[0].to_ascii_lowercase().contains("connection: close"),
        "{heads:?}"
    );
    assert!(heads[1].starts_with("HTTP/1.1 200"), "{heads:?}");
}

/// A vendor header of 200 KB is a prompt `502`, over HTTP/1.1 (a raw server) and HTTP/2 (framed
/// by the Python `h2` library, which takes most of two seconds to encode it), not a wait of
/// `read_ms` (10 s) for a 504.
#[tokio::test]
async fn a_200_kb_vendor_header_is_a_prompt_502() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h1_port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_request(&mut stream).await {
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nX-Padding: {}\r\nContent-Length: 2\r\n\r\nok",
                        "a".repeat(200_000)
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                }
            });
        }
    });
    let h2_vendor = OddVendor::start("big-header");
    for (protocol, port) in [("h1", h1_port), ("h2", h2_vendor.port)] {
        let gate = Gate::start_ready(&config(
            &[format!("http://127.0.0.1:{port}/license")],
            &format!("protocol = \"{protocol}\"\nretries = 0\ntimeouts = {{ read_ms = 10000 }}"),
        ))
        .await;
        let started = Instant::now();
        let response = client()
            .post(gate.license_url("widevine", Some("movie-1")))
            .body(vec![0x11; 64])
            .send()
            .await
            .unwrap();
        let elapsed = started.elapsed();
        let status = response.status();
        let body = response.text().await.unwrap();
        eprintln!("{protocol}: {status} after {elapsed:?}");
        assert!(
            status == 502
                && body.contains("vendor_answer_invalid")
                && elapsed < Duration::from_secs(5),
            "{protocol}: {status} after {elapsed:?}: {body}"
        );
    }
}

/// A vendor that sends a 200 with its length and goes away before any of the body: the player
/// gets a 502, not a 200 header cut short.
#[tokio::test]
async fn a_2xx_whose_vendor_leaves_before_its_body_is_a_502() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_request(&mut stream).await {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
                        .await;
                    let _ = stream.shutdown().await;
                }
            });
        }
    });
    let gate = Gate::start_ready(&config(
        &[format!("http://127.0.0.1:{port}/license")],
        "protocol = \"h1\"\nretries = 0",
    ))
    .await;
    let response = client()
        .post(gate.license_url("widevine", Some("movie-1")))
        .body(vec![0x11; 64])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
}

/// An address another process listens on stops licensegate at once, naming the listener:
/// Pingora alone would retry for 30 s and then run on without that listener, a process that
/// serves licenses with no health checks, or is ready with no license API.
#[test]
fn a_listener_address_in_use_stops_licensegate_naming_it() {
    let sim = Sim::start(&[]);
    let plain = config(&[sim.url()], "");
    // The admin listener on every address, at the license listener's port.
    let overlapping = plain.replace(
        "admin = \"127.0.0.1:${LG_ADMIN_PORT}\"",
        "admin = \"0.0.0.0:${LG_PORT}\"",
    );
    assert_ne!(plain, overlapping);
    for (config, held, key, address) in [
        (&plain, Some(0), "listeners.license", "127.0.0.1:{license}"),
        (&plain, Some(1), "listeners.admin", "127.0.0.1:{admin}"),
        (&overlapping, None, "listeners.admin", "0.0.0.0:{license}"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("licensegate.toml"), config).unwrap();
        let ports: [u16; 2] = free_ports();
        let _holder = held.map(|n| std::net::TcpListener::bind(("127.0.0.1", ports[n])).unwrap());
        let mut child = gate_command(dir.path(), ports[0], ports[1])
            .spawn()
            .unwrap();
        let status = licensegate_testkit::wait_exit(&mut child, Duration::from_secs(5))
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("licensegate kept running on a taken {key}");
            });
        assert!(!status.success());
        let log = std::fs::read_to_string(dir.path().join("licensegate.log")).unwrap();
        let address = address
            .replace("{license}", &ports[0].to_string())
            .replace("{admin}", &ports[1].to_string());
        assert!(
            log.contains(&format!("cannot start: {key}: cannot listen on {address}")),
            "{log}"
        );
    }
}
