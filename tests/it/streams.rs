//! Concurrent stream limits, renewals and revocation, rate limits and quotas: Widevine players
//! (the test kit's player model) against the simulator issuing licenses that name their session
//! and renew every few seconds; licensegate's ClearKey server with its own session ids; the
//! embedded store and a real Redis shared by two instances.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use licensegate_testkit::{
    Gate, GateConfig, Hypercorn, Player, Redis, RedisCluster, RedisSentinel, Sim, client, fixture,
    problem, user_token,
};
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
const KID: &str = "01020304-0506-0708-090a-0b0c0d0e0f10";
/// The simulator's licenses ask for a renewal every this many seconds.
const RENEWAL_SECONDS: u64 = 4;

fn catalog() -> String {
    format!(
        "[content.demo]\nkey_ids = [\"{KID}\"]\nkeys = {{ \"{KID}\" = \"000102030405060708090a0b0c0d0e0f\" }}\n"
    )
}

/// Widevine through a passthrough provider to `sim`, ClearKey answered by licensegate.
fn config(sim: &Sim, extra: &str) -> String {
    GateConfig::new()
        .auth("")
        .catalog()
        .provider(
            "sim",
            &format!("kind = \"passthrough\"\nendpoints = [\"{}\"]", sim.url()),
        )
        .provider("builtin", "kind = \"clearkey\"")
        .routes(&[("widevine", "sim"), ("clearkey", "builtin")])
        .with(&format!("[admin]\ntoken = \"{ADMIN_TOKEN}\"\n{extra}"))
        .build()
}

fn streams(limit: u32, on_limit: &str) -> String {
    format!(
        "[streams]\nmax_per_user = {limit}\non_limit = \"{on_limit}\"\ngrace_seconds = 2\n\
         [store]\npath = \"${{LG_DIR}}/licensegate.db\"\n"
    )
}

async fn start(config: &str) -> Gate {
    Gate::ready(Gate::start_with_files(
        config,
        &[("catalog.toml", catalog().as_bytes())],
    ))
    .await
}

fn sim() -> Sim {
    Sim::start(&["--widevine-renewal-seconds", &RENEWAL_SECONDS.to_string()])
}

fn player(gate: &Gate, user: &str) -> Player {
    Player::new(
        gate.license_url("widevine", Some("demo")),
        user_token(user, &["*"]),
    )
}

fn challenge() -> Vec<u8> {
    fixture("license-request-kid-01020304.bin")
}

async fn admin(gate: &Gate, method: reqwest::Method, path: &str) -> (u16, Value) {
    let response = client()
        .request(method, gate.admin(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn active_streams(gate: &Gate, user: &str) -> u64 {
    let (status, body) = admin(
        gate,
        reqwest::Method::GET,
        &format!("/v1/users/{user}/streams"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["active"].as_u64().unwrap()
}

#[tokio::test]
async fn a_third_stream_waits_for_a_release_or_a_silent_stream_to_expire() {
    let sim = sim();
    let gate = start(&config(&sim, &streams(2, "refuse"))).await;
    let (mut one, mut two, mut three) = (
        player(&gate, "ann"),
        player(&gate, "ann"),
        player(&gate, "ann"),
    );
    assert_eq!(one.start(challenge()).await.code(), "ok");
    assert_eq!(two.start(challenge()).await.code(), "ok");
    assert_eq!(
        one.renewal_delay(),
        Some(Duration::from_secs(RENEWAL_SECONDS))
    );
    let refused = three.start(challenge()).await;
    assert_eq!(refused.code(), "stream_limit_reached");
    let body = refused.json();
    assert_eq!(
        (
            body["active_streams"].as_u64(),
            body["stream_limit"].as_u64()
        ),
        (Some(2), Some(2))
    );
    assert!(body["oldest_expires_at"].as_str().is_some(), "{body}");
    // The refused start never reached the vendor: it bills per license.
    assert_eq!(sim.stats().await["licenses"], 2);

    assert_eq!(one.release().await.code(), "ok");
    assert_eq!(sim.stats().await["live_widevine_sessions"], 1);
    assert_eq!(three.start(challenge()).await.code(), "ok");
    assert_eq!(active_streams(&gate, "ann").await, 2);

    // `two` stops renewing; `three` plays on. The lease lasts the renewal delay plus the
    // grace: before then a fourth player is refused, after it the slot is free.
    let silent_since = Instant::now();
    let mut four = player(&gate, "ann");
    let renewals = three
        .play_for(Duration::from_secs(RENEWAL_SECONDS) + Duration::from_millis(500))
        .await;
    assert_eq!(renewals, ["ok"]);
    assert_eq!(four.start(challenge()).await.code(), "stream_limit_reached");
    let lease = Duration::from_secs(RENEWAL_SECONDS + 2);
    tokio::time::sleep(
        (lease + Duration::from_millis(1100)).saturating_sub(silent_since.elapsed()),
    )
    .await;
    assert_eq!(four.start(challenge()).await.code(), "ok");
    // The silent player's stream has ended: its renewal continues nothing, and starts nothing.
    let late = two.renew().await;
    assert_eq!((late.status, late.code()), (404, "stream_unknown".into()));
    let metrics = reqwest::get(gate.admin("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "licensegate_stream_decisions_total{decision=\"refused\"}",
        "licensegate_stream_decisions_total{decision=\"released\"} 1",
        "licensegate_license_request_types_total{drm=\"widevine\",type=\"renewal\"}",
        "licensegate_license_request_types_total{drm=\"widevine\",type=\"release\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
    assert!(
        gate.log().contains("request_type=\"renewal\""),
        "{}",
        gate.log()
    );
}

/// However the vendor's HTTP/2 stack ends a license (END_STREAM on its DATA frame, or on an empty
/// frame of its own 20 ms later, as hypercorn may), licensegate reads the license: each lease
/// takes its session's name, and each release ends it.
#[tokio::test]
async fn every_lease_takes_its_license_session_however_the_vendor_ends_the_answer() {
    let sim = sim();
    let relay = Hypercorn::start("relay_vendor:app", &[("RELAY_TO", &sim.url())]);
    for framing in ["together", "late-end"] {
        let config = GateConfig::new()
            .auth("")
            .catalog()
            .provider(
                "relay",
                &format!(
                    "kind = \"passthrough\"\nendpoints = [\"{}\"]\nprotocol = \"h2\"",
                    relay.url(&format!("/{framing}"))
                ),
            )
            .routes(&[("widevine", "relay")])
            .with(&format!(
                "[admin]\ntoken = \"{ADMIN_TOKEN}\"\n{}",
                streams(6, "refuse")
            ))
            .build();
        let gate = start(&config).await;
        let mut players: Vec<Player> = (0..6).map(|_| player(&gate, "lena")).collect();
        for player in &mut players {
            assert_eq!(player.start(challenge()).await.code(), "ok", "{framing}");
        }
        let (_, body) = admin(&gate, reqwest::Method::GET, "/v1/users/lena/streams").await;
        let named = body["streams"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|lease| lease["session"].as_str().unwrap().starts_with("wv-"))
            .count();
        assert_eq!(named, 6, "{framing}: {body}");
        for player in &mut players {
            assert_eq!(player.release().await.code(), "ok", "{framing}");
        }
        assert_eq!(active_streams(&gate, "lena").await, 0, "{framing}");
    }
}

#[tokio::test]
async fn stop_oldest_lets_the_new_stream_play_and_refuses_the_oldest_renewal() {
    let sim = sim();
    let gate = start(&config(&sim, &streams(2, "stop_oldest"))).await;
    let (mut one, mut two, mut three) = (
        player(&gate, "bob"),
        player(&gate, "bob"),
        player(&gate, "bob"),
    );
    // Leases keep their start to the second: "oldest" is told apart a second later.
    assert_eq!(one.start(challenge()).await.code(), "ok");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(two.start(challenge()).await.code(), "ok");
    assert_eq!(three.start(challenge()).await.code(), "ok");
    let refused = one.renew().await;
    assert_eq!(refused.code(), "stream_stopped");
    assert_eq!(two.renew().await.code(), "ok");
    assert_eq!(three.renew().await.code(), "ok");
    assert_eq!(active_streams(&gate, "bob").await, 2);
}

/// An entitlement service whose answer for everyone flips when told, never cached.
async fn entitlement_service(allow: Arc<AtomicBool>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let allow = allow.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request| {
                    let allow = allow.load(Ordering::SeqCst);
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("Content-Type", "application/json")
                                .header("Cache-Control", "no-store")
                                .body(http_body_util::Full::new(bytes::Bytes::from(
                                    json!({"allow": allow}).to_string(),
                                )))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

#[tokio::test]
async fn revoked_entitlement_and_blocked_users_stop_at_the_next_renewal() {
    let sim = sim();
    let allow = Arc::new(AtomicBool::new(true));
    let port = entitlement_service(allow.clone()).await;
    let gate = start(&config(
        &sim,
        &format!(
            "{}[entitlement.service]\nurl = \"http://127.0.0.1:{port}/entitle\"\ntimeout_ms = 1000\n",
            streams(3, "refuse")
        ),
    ))
    .await;
    // The token entitles to nothing: only the service does.
    let token = |user: &str| user_token(user, &[]);
    let mut carol = Player::new(gate.license_url("widevine", Some("demo")), token("carol"));
    assert_eq!(carol.start(challenge()).await.code(), "ok");
    assert_eq!(
        carol
            .play_for(Duration::from_secs(RENEWAL_SECONDS) + Duration::from_millis(200))
            .await,
        ["ok"]
    );
    allow.store(false, Ordering::SeqCst);
    let stopped_within = Instant::now();
    assert_eq!(
        carol
            .play_for(Duration::from_secs(RENEWAL_SECONDS * 2))
            .await,
        ["not_entitled"]
    );
    assert!(
        stopped_within.elapsed()
            <= Duration::from_secs(RENEWAL_SECONDS) + Duration::from_millis(500)
    );

    allow.store(true, Ordering::SeqCst);
    let mut dave = Player::new(gate.license_url("widevine", Some("demo")), token("dave"));
    assert_eq!(dave.start(challenge()).await.code(), "ok");
    let (status, _) = admin(
        &gate,
        reqwest::Method::POST,
        "/v1/users/dave/block?seconds=600",
    )
    .await;
    assert_eq!(status, 200);
    let blocked_within = Instant::now();
    let codes = dave
        .play_for(Duration::from_secs(RENEWAL_SECONDS * 2))
        .await;
    assert_eq!(codes, ["user_blocked"]);
    assert!(
        blocked_within.elapsed()
            <= Duration::from_secs(RENEWAL_SECONDS) + Duration::from_millis(500)
    );
    let refused = client()
        .post(gate.license_url("clearkey", Some("demo")))
        .bearer_auth(token("dave"))
        .body("{\"kids\":[\"AQIDBAUGBwgJCgsMDQ4PEA\"],\"type\":\"temporary\"}")
        .send()
        .await
        .unwrap();
    let body = problem(refused, 403, "user_blocked").await;
    assert!(body["blocked_until"].as_str().is_some(), "{body}");
    let (status, _) = admin(&gate, reqwest::Method::DELETE, "/v1/users/dave/block").await;
    assert_eq!(status, 200);
    assert_eq!(dave.start(challenge()).await.code(), "ok");
}

#[tokio::test]
async fn clearkey_sessions_are_issued_renewed_by_heartbeat_and_ended() {
    let sim = sim();
    let gate = start(&config(&sim, &streams(1, "refuse"))).await;
    let license = |session: Option<&str>| {
        let mut request = client()
            .post(gate.license_url("clearkey", Some("demo")))
            .bearer_auth(user_token("erin", &["*"]))
            .header("Origin", "https://player.example")
            .body("{\"kids\":[\"AQIDBAUGBwgJCgsMDQ4PEA\"],\"type\":\"temporary\"}");
        if let Some(session) = session {
            request = request.header("X-Playback-Session", session);
        }
        request.send()
    };
    let first = license(None).await.unwrap();
    assert_eq!(first.status(), 200);
    let session = first.headers()["x-playback-session"]
        .to_str()
        .unwrap()
        .to_string();
    let exposed = first.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(exposed.contains("X-Playback-Session"), "{exposed}");
    // The same session asking again is a renewal; another is a second stream, over the limit.
    assert_eq!(license(Some(&session)).await.unwrap().status(), 200);
    problem(license(None).await.unwrap(), 403, "stream_limit_reached").await;
    let heartbeat = |method: reqwest::Method, session: &str| {
        client()
            .request(method, gate.url(&format!("/v1/streams/{session}")))
            .bearer_auth(user_token("erin", &["*"]))
            .send()
    };
    let renewed = heartbeat(reqwest::Method::POST, &session).await.unwrap();
    assert_eq!(renewed.status(), 200);
    let renewed: Value = renewed.json().await.unwrap();
    assert_eq!(renewed["renew_within_seconds"], 300, "{renewed}");
    problem(
        heartbeat(reqwest::Method::POST, "someone-else")
            .await
            .unwrap(),
        404,
        "stream_unknown",
    )
    .await;
    // Another user cannot end it.
    let foreign = client()
        .delete(gate.url(&format!("/v1/streams/{session}")))
        .bearer_auth(user_token("mallory", &["*"]))
        .send()
        .await
        .unwrap();
    problem(foreign, 404, "stream_unknown").await;
    assert_eq!(
        heartbeat(reqwest::Method::DELETE, &session)
            .await
            .unwrap()
            .status(),
        200
    );
    problem(
        heartbeat(reqwest::Method::POST, &session).await.unwrap(),
        404,
        "stream_unknown",
    )
    .await;
    assert_eq!(license(None).await.unwrap().status(), 200);
    problem(
        license(Some("bad session!")).await.unwrap(),
        400,
        "stream_session_invalid",
    )
    .await;
}

#[tokio::test]
async fn two_instances_on_one_redis_hand_out_exactly_the_limit_and_kill_9_loses_nothing() {
    let redis = Redis::start();
    let sim = sim();
    let extra = format!(
        "[streams]\nmax_per_user = 3\ngrace_seconds = 60\n[store]\nkind = \"redis\"\nredis_url = \"{}\"\n",
        redis.url()
    );
    let mut first = start(&config(&sim, &extra)).await;
    let second = start(&config(&sim, &extra)).await;
    let mut starts = Vec::new();
    for i in 0..50 {
        let gate = if i % 2 == 0 { &first } else { &second };
        let mut player = player(gate, "frank");
        starts.push(tokio::spawn(async move {
            player.start(challenge()).await.code()
        }));
    }
    let mut codes = Vec::new();
    for start in starts {
        codes.push(start.await.unwrap());
    }
    let admitted = codes.iter().filter(|code| *code == "ok").count();
    let refused = codes
        .iter()
        .filter(|code| *code == "stream_limit_reached")
        .count();
    assert_eq!((admitted, refused), (3, 47), "{codes:?}");
    assert_eq!(
        sim.stats().await["licenses"],
        3,
        "the refused starts reached no vendor"
    );
    assert_eq!(active_streams(&first, "frank").await, 3);
    first.crash_and_restart();
    let first = Gate::ready(first).await;
    assert_eq!(active_streams(&first, "frank").await, 3);
    assert_eq!(
        player(&first, "frank").start(challenge()).await.code(),
        "stream_limit_reached"
    );
    assert_eq!(
        player(&second, "frank").start(challenge()).await.code(),
        "stream_limit_reached"
    );
}

#[tokio::test]
async fn the_embedded_store_keeps_every_lease_across_kill_9() {
    let sim = sim();
    let mut gate = start(&config(&sim, &streams(3, "refuse"))).await;
    let mut players: Vec<Player> = (0..3).map(|_| player(&gate, "gina")).collect();
    for player in &mut players {
        assert_eq!(player.start(challenge()).await.code(), "ok");
    }
    gate.crash_and_restart();
    let gate = Gate::ready(gate).await;
    assert_eq!(active_streams(&gate, "gina").await, 3);
    assert_eq!(
        player(&gate, "gina").start(challenge()).await.code(),
        "stream_limit_reached"
    );
    // The leases kept their names: the players renew them.
    for player in &mut players {
        player.set_url(gate.license_url("widevine", Some("demo")));
        assert_eq!(player.renew().await.code(), "ok");
    }
}

#[tokio::test]
async fn a_burst_over_the_rate_gets_429_and_renewals_pass() {
    let sim = sim();
    let gate = start(&config(
        &sim,
        &format!(
            "{}[rate_limits.per_user]\nper_second = 1\nburst = 3\n",
            streams(5, "refuse")
        ),
    ))
    .await;
    let mut players: Vec<Player> = (0..5).map(|_| player(&gate, "hank")).collect();
    let mut codes = Vec::new();
    for player in &mut players {
        codes.push(player.start(challenge()).await.code());
    }
    assert_eq!(codes, ["ok", "ok", "ok", "rate_limited", "rate_limited"]);
    let refused = client()
        .post(gate.license_url("widevine", Some("demo")))
        .bearer_auth(user_token("hank", &["*"]))
        .body(challenge())
        .send()
        .await
        .unwrap();
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    problem(refused, 429, "rate_limited").await;
    // The bucket is empty, yet every live stream renews at its license's cadence (half its
    // renewal delay)...
    tokio::time::sleep(Duration::from_secs(RENEWAL_SECONDS / 2)).await;
    for player in players.iter_mut().take(3) {
        assert_eq!(player.renew().await.code(), "ok");
    }
    // ...and no faster: a renewal sent again at once is a license like any other, and takes
    // what the bucket refilled meanwhile (2 s at 1/s).
    let mut replays = Vec::new();
    for _ in 0..4 {
        replays.push(players[0].renew().await.code());
    }
    let licensed = replays.iter().filter(|code| *code == "ok").count();
    assert!(licensed <= 3, "{replays:?}");
    assert_eq!(replays.last().map(String::as_str), Some("rate_limited"));
    assert_eq!(sim.stats().await["licenses"], 6 + licensed as u64);
}

/// How many times licensegate looked a stream's lease up in the store.
async fn lease_lookups(gate: &Gate) -> u64 {
    gate.metrics()
        .await
        .lines()
        .find(|line| {
            line.starts_with("licensegate_stream_store_duration_seconds_count")
                && line.contains("operation=\"lookup\"")
        })
        .map_or(0, |line| line.rsplit(' ').next().unwrap().parse().unwrap())
}

#[tokio::test]
async fn a_renewal_of_a_stream_ended_elsewhere_is_refused_before_it_displaces_another() {
    let sim = sim();
    let shared = tempfile::tempdir().unwrap();
    let config = config(
        &sim,
        &format!(
            "[streams]\nmax_per_user = 1\non_limit = \"stop_oldest\"\ngrace_seconds = 2\n\
             [store]\npath = \"{}\"\n[rate_limits.per_user]\nper_second = 0.01\nburst = 2\n",
            shared.path().join("licensegate.db").display()
        ),
    );
    let (gate, other_instance) = (start(&config).await, start(&config).await);
    let cadence = Duration::from_secs(RENEWAL_SECONDS / 2);
    let mut first = player(&gate, "jill");
    assert_eq!(first.start(challenge()).await.code(), "ok");
    tokio::time::sleep(cadence).await;
    assert_eq!(first.renew().await.code(), "ok");
    let (status, body) = admin(
        &other_instance,
        reqwest::Method::DELETE,
        "/v1/users/jill/streams",
    )
    .await;
    assert_eq!((status, &body["ended"]), (200, &json!(1)), "{body}");
    let mut second = player(&gate, "jill");
    assert_eq!(second.start(challenge()).await.code(), "ok");
    tokio::time::sleep(cadence).await;
    // This instance saw the first stream live; the store's continuation finds it ended, and
    // the renewal starts nothing: refused before the vendor, and before it displaces anyone.
    let renewal = first.renew().await;
    assert_eq!(
        (renewal.status, renewal.code()),
        (404, "stream_unknown".to_string())
    );
    assert_eq!(second.renew().await.code(), "ok");
    assert_eq!(active_streams(&gate, "jill").await, 1);
    assert_eq!(sim.stats().await["licenses"], 4);
    // Every renewal found its stream in what this instance saw, without a lookup.
    assert_eq!(lease_lookups(&gate).await, 0);
}

#[tokio::test]
async fn a_session_continues_only_its_own_content_and_at_its_cadence() {
    let sim = sim();
    let other_kid = "11223344-5566-7788-99aa-bbccddeeff00";
    let catalog = format!(
        "{}[content.other]\nkey_ids = [\"{other_kid}\"]\nkeys = {{ \"{other_kid}\" = \"000102030405060708090a0b0c0d0e0f\" }}\n",
        catalog()
    );
    let gate = Gate::ready(Gate::start_with_files(
        &config(
            &sim,
            "[streams]\nmax_per_user = 5\nrenewal_interval_seconds = 8\ngrace_seconds = 30\n\
             [store]\npath = \"${LG_DIR}/licensegate.db\"\n\
             [rate_limits.per_user]\nper_second = 0.01\nburst = 3\n",
        ),
        &[("catalog.toml", catalog.as_bytes())],
    ))
    .await;
    let license = |content: &str, kid: &str, session: Option<&str>| {
        let mut request = client()
            .post(gate.license_url("clearkey", Some(content)))
            .bearer_auth(user_token("kate", &["*"]))
            .body(format!("{{\"kids\":[\"{kid}\"],\"type\":\"temporary\"}}"));
        if let Some(session) = session {
            request = request.header("X-Playback-Session", session);
        }
        request.send()
    };
    let demo_kid = "AQIDBAUGBwgJCgsMDQ4PEA";
    let first = license("demo", demo_kid, None).await.unwrap();
    assert_eq!(first.status(), 200);
    let session = first.headers()["x-playback-session"]
        .to_str()
        .unwrap()
        .to_string();
    // The live session buys no keys of other content (and the refusal takes a token)...
    problem(
        license("other", "ESIzRFVmd4iZqrvM3e7_AA", Some(&session))
            .await
            .unwrap(),
        403,
        "content_mismatch",
    )
    .await;
    // ...the same keys again at once are beyond the stream's cadence: they take the last
    // token...
    let at_once = license("demo", demo_kid, Some(&session)).await.unwrap();
    assert_eq!(at_once.status(), 200);
    problem(
        license("demo", demo_kid, Some(&session)).await.unwrap(),
        429,
        "rate_limited",
    )
    .await;
    // ...and a session id licensegate never issued continues nothing: a new stream, limited.
    problem(
        license("demo", demo_kid, Some("lg-made-up")).await.unwrap(),
        429,
        "rate_limited",
    )
    .await;
    // Half the renewal interval later, the stream's keys come again without a token. (The
    // cadence counts whole seconds: a window of 4 keeps "at once" inside the first one.)
    tokio::time::sleep(Duration::from_secs(4)).await;
    let again = license("demo", demo_kid, Some(&session)).await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["x-playback-session"], session.as_str());
    assert_eq!(active_streams(&gate, "kate").await, 1);
}

#[tokio::test]
async fn a_quota_caps_licenses_per_period() {
    let sim = sim();
    let gate = start(&config(
        &sim,
        &format!(
            "{}[quota]\nlicenses_per_user = 2\nperiod_seconds = 3600\n",
            streams(5, "refuse")
        ),
    ))
    .await;
    let mut one = player(&gate, "iris");
    assert_eq!(one.start(challenge()).await.code(), "ok");
    assert_eq!(player(&gate, "iris").start(challenge()).await.code(), "ok");
    let over = player(&gate, "iris").start(challenge()).await;
    assert_eq!(
        (over.status, over.code()),
        (429, "quota_exceeded".to_string())
    );
    assert_eq!(over.json()["license_quota"], 2);
    // A live stream's renewal at its cadence is not cut off by the quota; sent again at once,
    // it is.
    tokio::time::sleep(Duration::from_secs(RENEWAL_SECONDS / 2)).await;
    assert_eq!(one.renew().await.code(), "ok");
    assert_eq!(one.renew().await.code(), "quota_exceeded");
    assert_eq!(sim.stats().await["licenses"], 3);
}

#[tokio::test]
async fn two_instances_on_one_redis_share_one_rate_limit() {
    let redis = Redis::start();
    let sim = Sim::start(&[]);
    let (rate, burst) = (20.0, 5);
    let extra = format!(
        "[rate_limits]\nshared = true\n[rate_limits.per_user]\nper_second = {rate}\nburst = {burst}\n\
         [store]\nkind = \"redis\"\nredis_url = \"{}\"\n",
        redis.url()
    );
    let gates = [
        start(&config(&sim, &extra)).await,
        start(&config(&sim, &extra)).await,
    ];
    let urls: Vec<String> = gates
        .iter()
        .map(|g| g.license_url("widevine", Some("demo")))
        .collect();
    let run = Duration::from_secs(4);
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..8 {
        let url = urls[worker % 2].clone();
        workers.push(tokio::spawn(async move {
            let (mut allowed, mut limited) = (Vec::new(), 0u64);
            let token = user_token("jack", &["*"]);
            let client = client();
            while started.elapsed() < run {
                let response = client
                    .post(&url)
                    .bearer_auth(&token)
                    .body(challenge())
                    .send()
                    .await
                    .unwrap();
                match response.status().as_u16() {
                    200 => allowed.push(Instant::now()),
                    429 => limited += 1,
                    other => panic!("unexpected {other}"),
                }
            }
            (allowed, limited)
        }));
    }
    let (mut allowed, mut limited) = (Vec::new(), 0);
    for worker in workers {
        let (a, l) = worker.await.unwrap();
        allowed.extend(a);
        limited += l;
    }
    allowed.sort();
    assert!(
        limited > allowed.len() as u64,
        "the load exceeds the limit: {limited} refused"
    );
    // The burst passes at once; after it, one request per interval across both instances.
    // Measured from the first answer to the last, so the instances' warm-up does not count.
    let (first, last) = (allowed[0], allowed[allowed.len() - 1]);
    let seconds = last.duration_since(first).as_secs_f64();
    let measured = (allowed.len() - burst as usize) as f64 / seconds;
    assert!(
        (measured - rate).abs() <= rate * 0.05,
        "{} allowed ({limited} refused) over {seconds:.2} s: {measured:.2}/s, configured {rate}/s",
        allowed.len()
    );
}

/// A provider of `kind` on `sim`, with the simulator's credentials.
fn vendor_provider(kind: &str, sim: &Sim) -> String {
    match kind {
        "axinom" => licensegate_testkit::axinom_provider("vendor", sim),
        _ => format!(
            "kind = \"{kind}\"\nendpoints = [\"{}\"]\n[providers.vendor.settings]\n\
             site_id = \"SIM0\"\nsite_key = \"sim-site-key-0123456789abcdefghi\"\n\
             access_key = \"sim-access-key\"",
            sim.url()
        ),
    }
}

/// With a stream limit every license renews: the vendor's authorization (Axinom's entitlement
/// message, PallyCon's policy) asks for the streams' interval and grace, so the vendor's license
/// tells the CDM when to renew and when to stop, and its renewals keep the lease.
#[tokio::test]
async fn vendor_licenses_renew_on_the_stream_interval_licensegate_asks_for() {
    for kind in ["axinom", "pallycon"] {
        // No renewal of the simulator's own: only the vendor terms can ask for one.
        let sim = Sim::start(&["--vendor", kind]);
        let config = GateConfig::new()
            .auth("")
            .catalog()
            .provider("vendor", &vendor_provider(kind, &sim))
            .routes(&[("widevine", "vendor")])
            .with(
                "[streams]\nmax_per_user = 1\nrenewal_interval_seconds = 3\ngrace_seconds = 2\n\
                 [store]\npath = \"${LG_DIR}/licensegate.db\"\n",
            )
            .build();
        let gate = start(&config).await;
        let mut one = player(&gate, "ann");
        let started = one.start(challenge()).await;
        assert_eq!(started.code(), "ok", "{kind}: {}", started.status);
        let license = licensegate_drm::challenge::widevine::read_license(&started.body)
            .expect("a Widevine license");
        let renewal = license.renewal;
        assert!(renewal.can_renew, "{kind}");
        assert_eq!(
            (renewal.delay_seconds, renewal.license_duration_seconds),
            (3, 5),
            "{kind}: renew every interval, expire after interval + grace"
        );
        if kind == "axinom" {
            assert_eq!(
                (renewal.recovery_seconds, renewal.retry_interval_seconds),
                (2, 1),
                "Axinom: recover within the grace, retrying"
            );
            let stats = sim.stats().await;
            let token = stats["last_license_request_headers"]["x-axdrm-message"]
                .as_str()
                .unwrap();
            let envelope: Value = serde_json::from_slice(
                &URL_SAFE_NO_PAD
                    .decode(token.split('.').nth(1).unwrap())
                    .unwrap(),
            )
            .unwrap();
            let terms = &envelope["message"]["license"];
            for drm in ["playready", "fairplay"] {
                assert_eq!(terms[drm]["real_time_expiration"], true, "{terms}");
            }
            assert!(
                terms["widevine"].get("renewal_url").is_none(),
                "renewals come back through licensegate: {terms}"
            );
        }
        assert_eq!(
            one.play_for(Duration::from_millis(6500)).await,
            ["ok", "ok"],
            "{kind}"
        );
        assert_eq!(
            player(&gate, "ann").start(challenge()).await.code(),
            "stream_limit_reached",
            "{kind}: the renewed lease still holds the only slot"
        );
        assert_eq!(sim.stats().await["live_widevine_sessions"], 1, "{kind}");
    }
}

/// A Redis Cluster of three masters: each user's keys share a hash tag, so each decision is
/// one script on one slot, and two instances still hand out exactly the limit for every user
/// at once, their keys spread over the masters.
#[tokio::test]
async fn two_instances_on_a_redis_cluster_hand_out_exactly_the_limit_per_user() {
    let cluster = RedisCluster::start();
    let sim = sim();
    let nodes: Vec<String> = cluster
        .urls()
        .iter()
        .map(|url| format!("\"{url}\""))
        .collect();
    let extra = format!(
        "[streams]\nmax_per_user = 3\ngrace_seconds = 60\n[store]\nkind = \"redis\"\n\
         cluster_nodes = [{}]\n[rate_limits]\nshared = true\n\
         per_user = {{ per_second = 1000, burst = 1000 }}\n",
        nodes.join(", ")
    );
    let first = start(&config(&sim, &extra)).await;
    let second = start(&config(&sim, &extra)).await;
    let users = ["frank", "gina", "hugo", "ines", "jack", "kate"];
    let mut starts = Vec::new();
    for i in 0..120 {
        let gate = if i % 2 == 0 { &first } else { &second };
        let user = users[i % users.len()];
        let mut player = player(gate, user);
        starts.push(tokio::spawn(async move {
            (user, player.start(challenge()).await.code())
        }));
    }
    let mut admitted = std::collections::BTreeMap::new();
    for start in starts {
        let (user, code) = start.await.unwrap();
        assert!(
            code == "ok" || code == "stream_limit_reached",
            "{user}: {code}"
        );
        if code == "ok" {
            *admitted.entry(user).or_insert(0) += 1;
        }
    }
    assert_eq!(
        admitted.values().collect::<Vec<_>>(),
        [&3; 6],
        "{admitted:?}"
    );
    for user in users {
        assert_eq!(active_streams(&second, user).await, 3, "{user}");
    }
    let spread = cluster.keys_per_node();
    assert!(
        spread.iter().filter(|keys| **keys > 0).count() >= 2,
        "the users' keys all landed on one master: {spread:?}"
    );
}

/// How long licenses kept failing after the store came back: players start streams without
/// pause while `kill` takes the store away for two seconds and `restart` brings it back.
async fn recovery_after_an_outage(
    gate: &Gate,
    kill: impl FnOnce(),
    restart: impl FnOnce(),
) -> Duration {
    let running = Arc::new(AtomicBool::new(true));
    let players: Vec<_> = (0..4)
        .map(|lane| {
            let url = gate.license_url("widevine", Some("demo"));
            let running = running.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for n in 0.. {
                    if !running.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut player = Player::new(
                        url.clone(),
                        user_token(&format!("viewer-{lane}-{n}"), &["*"]),
                    );
                    let code = player.start(challenge()).await.code();
                    answers.push((Instant::now(), code));
                }
                answers
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let down = Instant::now();
    tokio::task::block_in_place(kill);
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(restart);
    let back = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    running.store(false, Ordering::Relaxed);
    let mut answers = Vec::new();
    for player in players {
        answers.extend(player.await.unwrap());
    }
    let before: Vec<_> = answers.iter().filter(|(at, _)| *at < down).collect();
    assert!(
        before.len() > 10 && before.iter().all(|(_, code)| code == "ok"),
        "{before:?}"
    );
    let refused: Vec<_> = answers.iter().filter(|(_, code)| code != "ok").collect();
    assert!(!refused.is_empty(), "the outage was not seen");
    assert!(
        refused
            .iter()
            .all(|(_, code)| code == "stream_store_unavailable"),
        "{refused:?}"
    );
    let last_refused = refused.iter().map(|(at, _)| *at).max().unwrap();
    let licensed_after = answers.iter().filter(|(at, _)| *at > last_refused).count();
    assert!(licensed_after > 10, "{answers:?}");
    last_refused.saturating_duration_since(back)
}

fn outage_config(sim: &Sim, store: &str) -> String {
    config(
        sim,
        &format!(
            "[streams]\nmax_per_user = 5\n[store]\nkind = \"redis\"\ntimeout_ms = 200\n{store}"
        ),
    )
}

/// Within about one store timeout of the store's return, whatever the topology.
const RECOVERY_BOUND: Duration = Duration::from_millis(1000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn licenses_resume_as_soon_as_a_restarted_redis_answers() {
    let mut redis = Redis::start();
    let sim = sim();
    let gate = start(&outage_config(
        &sim,
        &format!("redis_url = \"{}\"\n", redis.url()),
    ))
    .await;
    let redis = std::sync::Mutex::new(&mut redis);
    let gap = recovery_after_an_outage(
        &gate,
        || redis.lock().unwrap().kill(),
        || redis.lock().unwrap().restart(),
    )
    .await;
    eprintln!("single Redis: licenses failed for {gap:?} after its return");
    assert!(gap < RECOVERY_BOUND, "{gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn licenses_resume_as_soon_as_a_restarted_sentinel_master_answers() {
    let mut redis = RedisSentinel::start();
    let sim = sim();
    let gate = start(&outage_config(
        &sim,
        &format!(
            "sentinels = [\"{}\"]\nmaster_name = \"{}\"\n",
            redis.sentinel_url(),
            RedisSentinel::MASTER_NAME
        ),
    ))
    .await;
    let redis = std::sync::Mutex::new(&mut redis);
    let gap = recovery_after_an_outage(
        &gate,
        || redis.lock().unwrap().kill_master(),
        || redis.lock().unwrap().restart_master(),
    )
    .await;
    eprintln!("Redis Sentinel: licenses failed for {gap:?} after the master's return");
    assert!(gap < RECOVERY_BOUND, "{gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn licenses_resume_as_soon_as_a_restarted_cluster_master_answers() {
    let mut cluster = RedisCluster::start();
    let sim = sim();
    let nodes: Vec<String> = cluster
        .urls()
        .iter()
        .map(|url| format!("\"{url}\""))
        .collect();
    let gate = start(&outage_config(
        &sim,
        &format!("cluster_nodes = [{}]\n", nodes.join(", ")),
    ))
    .await;
    let cluster = std::sync::Mutex::new(&mut cluster);
    let gap = recovery_after_an_outage(
        &gate,
        || cluster.lock().unwrap().kill_node(1),
        || {
            let mut cluster = cluster.lock().unwrap();
            let restarted = Instant::now();
            cluster.restart_node(1);
            cluster.wait_until_whole();
            eprintln!(
                "Redis Cluster: whole again {:?} after the master restarted",
                restarted.elapsed()
            );
        },
    )
    .await;
    eprintln!("Redis Cluster: licenses failed for {gap:?} after the cluster was whole again");
    assert!(gap < RECOVERY_BOUND, "{gap:?}");
}

/// Leases of players who never come back leave the embedded store within a sweep or two of
/// running out, without those users asking again.
#[tokio::test]
async fn the_embedded_store_forgets_run_out_leases_of_users_who_never_return() {
    let sim = Sim::start(&["--widevine-renewal-seconds", "1"]);
    let gate = start(&config(
        &sim,
        "[streams]\nmax_per_user = 2\ngrace_seconds = 1\n\
         [store]\npath = \"${LG_DIR}/licensegate.db\"\n",
    ))
    .await;
    for n in 0..200 {
        let mut player = player(&gate, &format!("passer-by-{n}"));
        assert_eq!(player.start(challenge()).await.code(), "ok");
    }
    let database = rusqlite::Connection::open_with_flags(
        gate.dir().join("licensegate.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let leases = || -> i64 {
        database
            .query_row("SELECT COUNT(*) FROM streams", [], |row| row.get(0))
            .unwrap()
    };
    // Leases last about two seconds: on a busy machine the first may be gone already.
    assert!(leases() > 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while leases() > 0 {
        assert!(Instant::now() < deadline, "{} leases left", leases());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A single-use token buys one new stream, fleet-wide: its renewals pass, a replay (here or on
/// the other instance) is `token_replayed`, a token without `jti` or living too long is refused,
/// and a request that bought no license gives its token back.
#[tokio::test]
async fn a_single_use_token_buys_one_stream_across_the_fleet() {
    let sim = sim();
    let redis = Redis::start();
    let config = GateConfig::new()
        .auth("single_use_claim = \"once\"\nsingle_use_max_lifetime_seconds = 3600\n")
        .catalog()
        .provider(
            "sim",
            &format!("kind = \"passthrough\"\nendpoints = [\"{}\"]", sim.url()),
        )
        .routes(&[("widevine", "sim")])
        .with(&format!(
            "[streams]\nmax_per_user = 5\n[store]\nkind = \"redis\"\nredis_url = \"{}\"\n",
            redis.url()
        ))
        .build();
    let (first, second) = (start(&config).await, start(&config).await);
    let once = |jti: &str, lifetime: u64| {
        licensegate_testkit::token(json!({
            "sub": "uma", "entitlements": ["*"], "exp": licensegate_testkit::now() + lifetime,
            "once": true, "jti": jti,
        }))
    };
    let token = once("ticket-1", 600);
    let mut player = Player::new(first.license_url("widevine", Some("demo")), token.clone());
    assert_eq!(player.start(challenge()).await.code(), "ok");
    assert_eq!(player.renew().await.code(), "ok");
    let vendor_licenses = || async { sim.stats().await["licenses"].as_u64().unwrap() };
    let licensed = vendor_licenses().await;
    for gate in [&first, &second] {
        let mut replay = Player::new(gate.license_url("widevine", Some("demo")), token.clone());
        let answer = replay.start(challenge()).await;
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (401, "token_replayed")
        );
        assert_eq!(
            answer.json()["type"],
            "https://dashif.org/drm-problems/insufficient-proof-of-authorization"
        );
    }
    assert_eq!(
        vendor_licenses().await,
        licensed,
        "a replay reached the vendor"
    );
    // Its renewals still pass after the replays.
    assert_eq!(player.renew().await.code(), "ok");

    // Without the claim the token is an ordinary one; with it, it needs a jti and a short life.
    let ordinary = user_token("uma", &["*"]);
    for _ in 0..2 {
        let mut again = Player::new(
            second.license_url("widevine", Some("demo")),
            ordinary.clone(),
        );
        assert_eq!(again.start(challenge()).await.code(), "ok");
    }
    let no_jti = licensegate_testkit::token(json!({
        "sub": "uma", "entitlements": ["*"], "exp": licensegate_testkit::now() + 600, "once": true,
    }));
    for refused in [no_jti, once("ticket-2", 7200)] {
        let mut player = Player::new(second.license_url("widevine", Some("demo")), refused);
        assert_eq!(player.start(challenge()).await.code(), "token_malformed");
    }

    // Accepted a little past its exp (auth.leeway_seconds), it is remembered as long.
    let late = licensegate_testkit::token(json!({
        "sub": "uma", "entitlements": ["*"], "exp": licensegate_testkit::now() - 10,
        "once": true, "jti": "ticket-late",
    }));
    for (gate, code) in [(&first, "ok"), (&second, "token_replayed")] {
        let mut player = Player::new(gate.license_url("widevine", Some("demo")), late.clone());
        assert_eq!(player.start(challenge()).await.code(), code);
    }

    // A request refused after spending its token (content it is not entitled to) gives it back.
    let narrow = licensegate_testkit::token(json!({
        "sub": "uma", "entitlements": ["other"], "exp": licensegate_testkit::now() + 600,
        "once": true, "jti": "ticket-3",
    }));
    let mut refused = Player::new(first.license_url("widevine", Some("demo")), narrow.clone());
    assert_eq!(refused.start(challenge()).await.code(), "not_entitled");
    let mut refused_again = Player::new(second.license_url("widevine", Some("demo")), narrow);
    assert_eq!(
        refused_again.start(challenge()).await.code(),
        "not_entitled"
    );
}
