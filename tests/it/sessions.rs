//! Sessions and renewals the player cannot forge: what a request says of its session (a header,
//! a renewal, a content id) is checked against the stream licensegate recorded, for the same
//! user, content, DRM and device, on the embedded store and on a real Redis. Widevine players
//! are the test kit's CDM model against the simulator; PlayReady challenges are the fixture,
//! whose `CustomData` the simulator in Axinom mode reports as the device.

use std::time::Duration;

use licensegate_drm::challenge::RequestType;
use licensegate_testkit::{Gate, GateConfig, Player, Redis, Sim, client, fixture, user_token};
use serde_json::Value;

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
const DEMO_KID: &str = "01020304-0506-0708-090a-0b0c0d0e0f10";
const PLAYREADY_KID: &str = "33e0008c-c444-4770-9899-a321e079dd36";
const SOAP_ACTION: &str = "\"http://schemas.microsoft.com/DRM/2007/03/protocols/AcquireLicense\"";
/// The simulator's Widevine licenses ask for a renewal every this many seconds.
const RENEWAL_SECONDS: u64 = 4;

/// `demo` (the Widevine fixture's key), `other` (the PlayReady fixture's) and ten more, each with
/// a ClearKey key.
fn catalog() -> String {
    let mut catalog = format!(
        "[content.demo]\nkey_ids = [\"{DEMO_KID}\"]\nkeys = {{ \"{DEMO_KID}\" = \"000102030405060708090a0b0c0d0e0f\" }}\n\
         [content.other]\nkey_ids = [\"{PLAYREADY_KID}\"]\nkeys = {{ \"{PLAYREADY_KID}\" = \"101112131415161718191a1b1c1d1e1f\" }}\n"
    );
    for n in 0..10 {
        let kid = format!("aaaaaaaa-0000-0000-0000-0000000000{n:02}");
        catalog.push_str(&format!(
            "[content.movie-{n}]\nkey_ids = [\"{kid}\"]\nkeys = {{ \"{kid}\" = \"202122232425262728292a2b2c2d2e2f\" }}\n"
        ));
    }
    catalog
}

/// Where the gate keeps its state: each test runs on both.
enum Store {
    Embedded,
    Redis(Redis),
}

impl Store {
    fn both() -> [Store; 2] {
        [Store::Embedded, Store::Redis(Redis::start())]
    }

    fn toml(&self) -> String {
        match self {
            Store::Embedded => "[store]\npath = \"${LG_DIR}/licensegate.db\"\n".into(),
            Store::Redis(redis) => {
                format!(
                    "[store]\nkind = \"redis\"\nredis_url = \"{}\"\n",
                    redis.url()
                )
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Store::Embedded => "embedded",
            Store::Redis(_) => "redis",
        }
    }
}

/// Every DRM to `vendor` (a provider body) but ClearKey, which licensegate answers; `extra`
/// adds sections.
fn config(vendor: &str, store: &Store, extra: &str) -> String {
    GateConfig::new()
        .auth("")
        .catalog()
        .provider("vendor", vendor)
        .provider("builtin", "kind = \"clearkey\"")
        .routes(&[
            ("widevine", "vendor"),
            ("playready", "vendor"),
            ("clearkey", "builtin"),
        ])
        .with(&format!(
            "[admin]\ntoken = \"{ADMIN_TOKEN}\"\n{}{extra}",
            store.toml()
        ))
        .build()
}

fn passthrough(sim: &Sim) -> String {
    format!("kind = \"passthrough\"\nendpoints = [\"{}\"]", sim.url())
}

async fn start(config: &str) -> Gate {
    Gate::ready(Gate::start_with_files(
        config,
        &[("catalog.toml", catalog().as_bytes())],
    ))
    .await
}

/// The simulator, and a gate on `store` forwarding every DRM but ClearKey to it.
async fn passthrough_gate(store: &Store, extra: &str) -> (Sim, Gate) {
    let sim = sim();
    let gate = start(&config(&passthrough(&sim), store, extra)).await;
    (sim, gate)
}

fn sim() -> Sim {
    Sim::start(&["--widevine-renewal-seconds", &RENEWAL_SECONDS.to_string()])
}

fn widevine_challenge() -> Vec<u8> {
    fixture("license-request-kid-01020304.bin")
}

/// The PlayReady fixture, sent from `device`.
fn playready_from(device: &str) -> String {
    String::from_utf8(fixture("license-request-v4.0.xml"))
        .unwrap()
        .replace("User=Roland", &format!("device={device}"))
}

struct Answer {
    status: u16,
    code: String,
    session: Option<String>,
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let session = response
        .headers()
        .get("x-playback-session")
        .map(|v| v.to_str().unwrap().to_string());
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let code = if (200..300).contains(&status) {
        "ok".to_string()
    } else {
        body["code"].as_str().unwrap_or("?").to_string()
    };
    Answer {
        status,
        code,
        session,
    }
}

async fn playready(gate: &Gate, user: &str, device: &str, session: Option<&str>) -> Answer {
    let mut request = client()
        .post(gate.license_url("playready", Some("other")))
        .bearer_auth(user_token(user, &["*"]))
        .header("SOAPAction", SOAP_ACTION)
        .body(playready_from(device));
    if let Some(session) = session {
        request = request.header("X-Playback-Session", session);
    }
    answer(request.send().await.unwrap()).await
}

async fn clearkey(gate: &Gate, user: &str, content: &str, session: Option<&str>) -> Answer {
    let kid = if content == "demo" {
        "AQIDBAUGBwgJCgsMDQ4PEA".to_string()
    } else {
        let n: u8 = content.trim_start_matches("movie-").parse().unwrap();
        let mut kid = [0xaa, 0xaa, 0xaa, 0xaa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        kid[15] = n;
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, kid)
    };
    let mut request = client()
        .post(gate.license_url("clearkey", Some(content)))
        .bearer_auth(user_token(user, &["*"]))
        .body(format!("{{\"kids\":[\"{kid}\"],\"type\":\"temporary\"}}"));
    if let Some(session) = session {
        request = request.header("X-Playback-Session", session);
    }
    answer(request.send().await.unwrap()).await
}

async fn admin_get(gate: &Gate, path: &str) -> Value {
    gate.admin_json(path, ADMIN_TOKEN).await
}

async fn active_streams(gate: &Gate, user: &str) -> u64 {
    admin_get(gate, &format!("/v1/users/{user}/streams")).await["active"]
        .as_u64()
        .unwrap()
}

async fn vendor_licenses(sim: &Sim) -> u64 {
    sim.stats().await["licenses"].as_u64().unwrap()
}

/// 1. Device limit 1, with rate limits: a PlayReady request naming the live session of another
/// device is that device's own stream, and gets no license beyond the limit.
#[tokio::test]
async fn another_devices_session_takes_a_device_slot_of_its_own() {
    for store in Store::both() {
        let sim = Sim::start(&["--vendor", "axinom"]);
        let gate = start(&config(
            &licensegate_testkit::axinom_provider("vendor", &sim),
            &store,
            "[devices]\nmax_per_user = 1\n[streams]\nmax_per_user = 5\n\
             [rate_limits.per_user]\nper_second = 100\nburst = 100\n",
        ))
        .await;
        let tv = playready(&gate, "ann", "tv", None).await;
        assert_eq!(tv.code, "ok", "{}", store.name());
        let session = tv.session.expect("the stream's session is announced");
        let phone = playready(&gate, "ann", "phone", Some(&session)).await;
        assert_eq!(
            (phone.status, phone.code.as_str()),
            (403, "device_limit_reached"),
            "{}",
            store.name()
        );
        let devices = admin_get(&gate, "/v1/devices/ann").await;
        assert_eq!(
            devices["devices"].as_array().map(Vec::len),
            Some(1),
            "{devices}"
        );
        // The device the stream belongs to continues it.
        assert_eq!(
            playready(&gate, "ann", "tv", Some(&session)).await.code,
            "ok"
        );
    }
}

/// 2. Stream limit 1: a live session's id buys no keys of other content, and players sharing a
/// session id they made up are each a stream, refused before the vendor.
#[tokio::test]
async fn one_session_id_buys_no_second_stream() {
    for store in Store::both() {
        let (sim, gate) = passthrough_gate(&store, "[streams]\nmax_per_user = 1\n").await;
        let first = clearkey(&gate, "bea", "demo", None).await;
        assert_eq!(first.code, "ok");
        let session = first.session.unwrap();
        for n in 0..10 {
            let other = clearkey(&gate, "bea", &format!("movie-{n}"), Some(&session)).await;
            assert_eq!(
                (other.status, other.code.as_str()),
                (403, "content_mismatch"),
                "{}",
                store.name()
            );
        }
        assert_eq!(active_streams(&gate, "bea").await, 1);

        let mut codes = Vec::new();
        for _ in 0..10 {
            codes.push(playready(&gate, "cleo", "tv", Some("made-up")).await.code);
        }
        assert_eq!(codes[0], "ok", "{}", store.name());
        assert!(
            codes[1..].iter().all(|code| code == "stream_limit_reached"),
            "{codes:?}"
        );
        assert_eq!(active_streams(&gate, "cleo").await, 1);
        assert_eq!(vendor_licenses(&sim).await, 1, "{}", store.name());
    }
}

/// 3. Quota 2 a day and a per-user burst of 2: a PlayReady stream asking again for its keys at
/// once, heartbeats beyond the stream's cadence and replays of a Widevine renewal are limited
/// like any request.
#[tokio::test]
async fn quota_and_rates_hold_for_continuations_beyond_their_cadence() {
    for store in Store::both() {
        let (sim, gate) = passthrough_gate(
            &store,
            "[streams]\nmax_per_user = 5\n[quota]\nlicenses_per_user = 2\nperiod_seconds = 86400\n\
             [rate_limits.per_user]\nper_second = 0.001\nburst = 2\n",
        )
        .await;
        let first = playready(&gate, "dora", "tv", None).await;
        assert_eq!(first.code, "ok");
        let session = first.session.unwrap();
        let mut licensed = 1;
        for _ in 0..50 {
            if playready(&gate, "dora", "tv", Some(&session)).await.code == "ok" {
                licensed += 1;
            }
        }
        assert_eq!(licensed, 2, "{}", store.name());
        assert_eq!(vendor_licenses(&sim).await, 2, "{}", store.name());
        let heartbeat = || {
            client()
                .post(gate.url(&format!("/v1/streams/{session}")))
                .bearer_auth(user_token("dora", &["*"]))
                .send()
        };
        let beat = answer(heartbeat().await.unwrap()).await;
        assert_eq!((beat.status, beat.code.as_str()), (429, "rate_limited"));

        let mut player = Player::new(
            gate.license_url("widevine", Some("demo")),
            user_token("emil", &["*"]),
        );
        assert_eq!(player.start(widevine_challenge()).await.code(), "ok");
        tokio::time::sleep(Duration::from_secs(RENEWAL_SECONDS / 2)).await;
        let renewal = player.continuation(RequestType::Renewal);
        let mut codes = Vec::new();
        for _ in 0..20 {
            codes.push(player.send(renewal.clone()).await.code());
        }
        // At its cadence, and no more: the replays find the quota used up (the license and
        // its renewal counted), then the bucket too.
        assert_eq!(codes[0], "ok", "{}", store.name());
        assert!(
            codes[1..]
                .iter()
                .all(|code| code == "quota_exceeded" || code == "rate_limited"),
            "{codes:?}"
        );
        assert_eq!(vendor_licenses(&sim).await, 4, "{}", store.name());
    }
}

/// 4. A renewal is for its license's content and its user: a revoked entitlement ends the
/// stream whatever content the player names, and another user's token renews nothing.
#[tokio::test]
async fn a_renewal_is_for_its_licenses_content_and_user() {
    for store in Store::both() {
        let (sim, gate) = passthrough_gate(&store, "[streams]\nmax_per_user = 5\n").await;
        let widevine = |content: &str| gate.license_url("widevine", Some(content));
        let mut ann = Player::new(widevine("demo"), user_token("ann", &["demo", "other"]));
        assert_eq!(ann.start(widevine_challenge()).await.code(), "ok");
        tokio::time::sleep(Duration::from_secs(RENEWAL_SECONDS / 2)).await;
        let renewal = ann.continuation(RequestType::Renewal);
        let licenses = vendor_licenses(&sim).await;

        // Another user, with free slots, renews nothing of ann's.
        let mut mallory = Player::new(widevine("demo"), user_token("mallory", &["*"]));
        let foreign = mallory.send(renewal.clone()).await;
        assert_eq!(
            (foreign.status, foreign.code()),
            (404, "stream_unknown".into())
        );
        assert_eq!(active_streams(&gate, "mallory").await, 0);

        // ann's entitlement to demo ends; she still has other.
        let mut revoked = Player::new(widevine("other"), user_token("ann", &["other"]));
        let named_other = revoked.send(renewal.clone()).await;
        assert_eq!(
            (named_other.status, named_other.code()),
            (403, "content_mismatch".into()),
            "{}",
            store.name()
        );
        revoked.set_url(gate.license_url("widevine", None));
        let unnamed = revoked.send(renewal.clone()).await;
        assert_eq!(
            (unnamed.status, unnamed.code()),
            (403, "not_entitled".into())
        );
        // The revoked stream ended at once.
        assert_eq!(active_streams(&gate, "ann").await, 0);
        assert_eq!(vendor_licenses(&sim).await, licenses);
    }
}

/// 5. A player that leaves `?content=` out, as the catalog lets it, renews and releases.
#[tokio::test]
async fn renewals_and_releases_need_no_content_id() {
    for store in Store::both() {
        let (sim, gate) = passthrough_gate(&store, "[streams]\nmax_per_user = 5\n").await;
        let mut player = Player::new(
            gate.license_url("widevine", None),
            user_token("finn", &["demo"]),
        );
        assert_eq!(player.start(widevine_challenge()).await.code(), "ok");
        tokio::time::sleep(Duration::from_secs(RENEWAL_SECONDS / 2)).await;
        assert_eq!(player.renew().await.code(), "ok", "{}", store.name());
        assert_eq!(player.release().await.code(), "ok", "{}", store.name());
        assert_eq!(active_streams(&gate, "finn").await, 0);
        assert_eq!(sim.stats().await["live_widevine_sessions"], 0);
    }
}

/// Without `[streams]`, a store (here one kept for a quota) still records Widevine licenses:
/// a renewal continues only its own license's content and needs no content id. A renewal the
/// user holds no record of (a license issued before the store held records, or while it was
/// down) is a license request for the content it names: no stream limit was asked for, and
/// playback must not stop for it.
#[tokio::test]
async fn without_stream_limits_a_store_still_binds_renewals_to_their_license() {
    for store in Store::both() {
        let (_vendor, gate) = passthrough_gate(&store, "[quota]\nlicenses_per_user = 100\n").await;
        let mut ann = Player::new(
            gate.license_url("widevine", None),
            user_token("ann", &["demo", "other"]),
        );
        assert_eq!(ann.start(widevine_challenge()).await.code(), "ok");
        tokio::time::sleep(Duration::from_secs(RENEWAL_SECONDS / 2)).await;
        let renewal = ann.continuation(RequestType::Renewal);
        let mut mallory = Player::new(
            gate.license_url("widevine", Some("demo")),
            user_token("mallory", &["*"]),
        );
        assert_eq!(
            mallory.send(renewal.clone()).await.code(),
            "ok",
            "{}",
            store.name()
        );
        let leases = admin_get(&gate, "/v1/users/mallory/streams").await["streams"].clone();
        assert_eq!(leases.as_array().map(Vec::len), Some(0), "{leases}");
        let mut elsewhere = Player::new(
            gate.license_url("widevine", Some("other")),
            user_token("ann", &["demo", "other"]),
        );
        assert_eq!(
            elsewhere.send(renewal.clone()).await.code(),
            "content_mismatch"
        );
        assert_eq!(ann.send(renewal).await.code(), "ok", "{}", store.name());
    }
}

/// A stream's continuation counted by both instances' metrics under `decision`.
async fn stream_decisions(gates: &[&Gate], decision: &str) -> u64 {
    let mut total = 0;
    for gate in gates {
        total += gate
            .metrics()
            .await
            .lines()
            .find(|line| {
                line.starts_with("licensegate_stream_decisions_total")
                    && line.contains(&format!("decision=\"{decision}\""))
            })
            .map_or(0, |line| line.rsplit(' ').next().unwrap().parse().unwrap());
    }
    total
}

/// Two instances on one store (an SQLite file, a Redis, a three-master Redis Cluster, a Redis
/// master behind Sentinel) agree: twenty players at once continuing one stream, half of them
/// through each instance, find it within its cadence exactly once between them, and the store
/// records one device.
#[tokio::test]
async fn two_instances_exempt_a_stream_once_per_cadence_whatever_the_store() {
    let shared = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let cluster = licensegate_testkit::RedisCluster::start();
    let sentinel = licensegate_testkit::RedisSentinel::start();
    let nodes: Vec<String> = cluster
        .urls()
        .iter()
        .map(|url| format!("\"{url}\""))
        .collect();
    let stores = [
        format!(
            "[store]\npath = \"{}\"\n",
            shared.path().join("licensegate.db").display()
        ),
        format!(
            "[store]\nkind = \"redis\"\nredis_url = \"{}\"\n",
            redis.url()
        ),
        format!(
            "[store]\nkind = \"redis\"\ncluster_nodes = [{}]\n",
            nodes.join(", ")
        ),
        format!(
            "[store]\nkind = \"redis\"\nsentinels = [\"{}\"]\nmaster_name = \"{}\"\n",
            sentinel.sentinel_url(),
            licensegate_testkit::RedisSentinel::MASTER_NAME
        ),
    ];
    for store in stores {
        let sim = Sim::start(&["--vendor", "axinom"]);
        let config = GateConfig::new()
            .auth("")
            .catalog()
            .provider(
                "vendor",
                &licensegate_testkit::axinom_provider("vendor", &sim),
            )
            .routes(&[("playready", "vendor")])
            .with(&format!(
                "[admin]\ntoken = \"{ADMIN_TOKEN}\"\n{store}[streams]\nmax_per_user = 5\n\
                 renewal_interval_seconds = 8\n[devices]\nmax_per_user = 5\n"
            ))
            .build();
        let (first, second) = (start(&config).await, start(&config).await);
        let started = playready(&first, "ivy", "tv", None).await;
        assert_eq!(started.code, "ok", "{store}");
        let session = started.session.unwrap();
        // The cadence is half the interval, counted in whole seconds: past the start's window
        // the first continuation is due, and the twenty finish long before its own window ends
        // (a 1 s window let a slow machine's twenty straddle two).
        tokio::time::sleep(Duration::from_secs(4)).await;
        let mut continuations = Vec::new();
        for n in 0..20 {
            let gate = if n % 2 == 0 { &first } else { &second };
            continuations.push(playready(gate, "ivy", "tv", Some(&session)));
        }
        for answer in futures_util::future::join_all(continuations).await {
            assert_eq!(answer.code, "ok", "{store}");
            assert_eq!(answer.session.as_deref(), Some(session.as_str()));
        }
        let gates = [&first, &second];
        assert_eq!(stream_decisions(&gates, "continued").await, 1, "{store}");
        assert_eq!(
            stream_decisions(&gates, "continued_beyond_cadence").await,
            19,
            "{store}"
        );
        assert_eq!(active_streams(&first, "ivy").await, 1, "{store}");
        let streams = admin_get(&second, "/v1/users/ivy/streams").await;
        assert!(streams["streams"][0]["device"].is_string(), "{streams}");
        let devices = admin_get(&second, "/v1/devices/ivy").await;
        assert_eq!(
            devices["devices"].as_array().map(Vec::len),
            Some(1),
            "{devices}"
        );
    }
}

/// The Widevine fixture asking for an OFFLINE license: its license type (a varint in the
/// content identification, `10 01` before the request id's `1a 10`) set to 2.
fn offline_challenge() -> Vec<u8> {
    let mut challenge = widevine_challenge();
    let at = challenge
        .windows(4)
        .position(|w| w == [0x10, 0x01, 0x1a, 0x10])
        .expect("the fixture's license type");
    challenge[at + 1] = 0x02;
    challenge
}

/// 6. An OFFLINE request under a policy without persistence never reaches the vendor.
#[tokio::test]
async fn an_offline_request_under_a_streaming_policy_never_reaches_the_vendor() {
    let (sim, gate) = passthrough_gate(
        &Store::Embedded,
        "[entitlement]\nclaim = \"entitlements\"\ndefault_policy = \"streaming\"\n\
         [policies.streaming]\npersistent = false\n",
    )
    .await;
    let response = client()
        .post(gate.license_url("widevine", Some("demo")))
        .bearer_auth(user_token("gus", &["*"]))
        .body(offline_challenge())
        .send()
        .await
        .unwrap();
    let refused = answer(response).await;
    assert_eq!(
        (refused.status, refused.code.as_str()),
        (403, "persistence_not_allowed")
    );
    assert_eq!(vendor_licenses(&sim).await, 0);
}

/// 7. The Widevine service certificate is public: no token, but rate limited.
#[tokio::test]
async fn the_service_certificate_needs_no_token_and_is_rate_limited() {
    let (_vendor, gate) = passthrough_gate(
        &Store::Embedded,
        "[rate_limits.per_client]\nper_second = 0.001\nburst = 2\n",
    )
    .await;
    let mut codes = Vec::new();
    for _ in 0..3 {
        let response = client()
            .post(gate.license_url("widevine", None))
            .body(vec![0x08, 0x04])
            .send()
            .await
            .unwrap();
        codes.push(answer(response).await.code);
    }
    assert_eq!(codes, ["ok", "ok", "rate_limited"]);
}

/// 8. With a stream limit, a PlayReady request naming no session is a new stream, refused
/// beyond the limit before the vendor issues (and bills) its license.
#[tokio::test]
async fn a_stream_beyond_the_limit_is_refused_before_the_vendor() {
    for store in Store::both() {
        let (sim, gate) = passthrough_gate(&store, "[streams]\nmax_per_user = 1\n").await;
        assert_eq!(playready(&gate, "hugo", "tv", None).await.code, "ok");
        let second = playready(&gate, "hugo", "phone", None).await;
        assert_eq!(
            (second.status, second.code.as_str()),
            (403, "stream_limit_reached")
        );
        assert_eq!(vendor_licenses(&sim).await, 1, "{}", store.name());
    }
}

/// pywidevine, a real Widevine CDM implementation from PyPI, on devices the test makes, through
/// licensegate to the simulator's faithful license server: new licenses whose keys decrypt the
/// demo stream (Debian's ffmpeg; a wrong key must not), renewals and releases built as a CDM
/// does, OFFLINE, privacy mode, multi-key content, a stream limit of 2, and cross-user and
/// cross-content renewals refused (`tests/cdm/widevine_cdm.py`).
#[tokio::test]
async fn a_real_widevine_cdm_gets_working_keys_and_cannot_forge_its_sessions() {
    let keys = tempfile::tempdir().unwrap();
    let made = std::process::Command::new("python3")
        .arg(cdm_script("widevine_cdm.py"))
        .arg("service")
        .arg(keys.path())
        .status()
        .expect("python3 with pywidevine (scripts/setup.sh installs it)");
    assert!(made.success());
    let content = conformance_content();
    let (catalog, mut sim_args) = conformance_catalog(&content, "--widevine-content-key");
    sim_args.extend([
        "--widevine-renewal-seconds".into(),
        "4".into(),
        "--widevine-service-certificate".into(),
        keys.path()
            .join("service-certificate.bin")
            .display()
            .to_string(),
        "--widevine-service-key".into(),
        keys.path().join("service.pem").display().to_string(),
    ]);
    let sim = Sim::start(&sim_args.iter().map(String::as_str).collect::<Vec<_>>());
    let gate = conformance_gate(&sim, "widevine", &catalog, 300).await;
    let report = run_cdm(
        "widevine_cdm.py",
        &["--dir".into(), keys.path().display().to_string()],
        &gate,
        &content,
        &["ann", "bob", "cleo", "dave", "erin", "finn"],
    )
    .await;
    assert_eq!(
        report.lines().filter(|l| l.starts_with("ok: ")).count(),
        8,
        "{report}"
    );
}

pub(super) fn cdm_script(name: &str) -> std::path::PathBuf {
    licensegate_testkit::repository()
        .join("tests/cdm")
        .join(name)
}

/// Runs a CDM conformance script's scenarios against `gate` (tokens for `users`, entitled to
/// everything); returns its report, one `ok:` line per scenario.
async fn run_cdm(
    script: &str,
    args: &[String],
    gate: &Gate,
    content: &Value,
    users: &[&str],
) -> String {
    let tokens: serde_json::Map<String, Value> = users
        .iter()
        .map(|user| (user.to_string(), Value::from(user_token(user, &["*"]))))
        .collect();
    let media = licensegate_testkit::repository().join("examples/web/media/video_cenc.mp4");
    let mut command = std::process::Command::new("python3");
    command
        .arg(cdm_script(script))
        .arg("run")
        .args(args)
        .args(["--gate", gate.url("").trim_end_matches('/')])
        .args(["--admin", gate.admin("").trim_end_matches('/')])
        .args(["--admin-token", ADMIN_TOKEN])
        .args(["--tokens", &Value::Object(tokens).to_string()])
        .args(["--content", &content.to_string()])
        .args(["--media", &media.display().to_string()]);
    let run = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&run.stdout).into_owned();
    println!("{report}");
    assert!(
        run.status.success(),
        "{report}\n{}\n{}",
        String::from_utf8_lossy(&run.stderr),
        gate.log()
    );
    report
}

/// The content of the CDM conformance tests: key IDs and keys, for the catalog, the simulator's
/// license server and the CDM's checks.
fn conformance_content() -> Value {
    let key = |kid: &str, key: &str| serde_json::json!({"kids": [kid], "keys": {kid: key}});
    let (multi_1, multi_2) = (
        "bbbbbbbb-0000-0000-0000-000000000001",
        "bbbbbbbb-0000-0000-0000-000000000002",
    );
    serde_json::json!({
        "demo": key(DEMO_KID, "00112233445566778899aabbccddeeff"),
        "offline-demo": key("aaaaaaaa-0000-0000-0000-000000000001", "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1"),
        "other": key("cccccccc-0000-0000-0000-000000000001", "c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1"),
        "multi": {
            "kids": [multi_1, multi_2],
            "keys": {multi_1: "b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1", multi_2: "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2"},
        },
    })
}

/// The catalog of `content` (`offline-demo` under the persistent policy), and the simulator's
/// `flag` for each of its keys.
fn conformance_catalog(content: &Value, flag: &str) -> (String, Vec<String>) {
    let mut catalog = String::new();
    let mut sim_args = Vec::new();
    for (id, entry) in content.as_object().unwrap() {
        let kids: Vec<&str> = entry["kids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kid| kid.as_str().unwrap())
            .collect();
        for kid in &kids {
            sim_args.push(flag.to_string());
            sim_args.push(format!("{kid}:{}", entry["keys"][kid].as_str().unwrap()));
        }
        let policy = if id == "offline-demo" {
            "download"
        } else {
            "streaming"
        };
        catalog.push_str(&format!(
            "[content.{id}]\nkey_ids = {kids:?}\npolicy = \"{policy}\"\n"
        ));
    }
    (catalog, sim_args)
}

/// The gate of the CDM conformance tests: `drm` to the simulator, a stream limit of 2 renewing
/// every `interval` seconds, a streaming and a persistent policy.
async fn conformance_gate(sim: &Sim, drm: &str, catalog: &str, interval: u64) -> Gate {
    let config = GateConfig::new()
        .auth("")
        .catalog()
        .provider("vendor", &passthrough(sim))
        .routes(&[(drm, "vendor")])
        .with(&format!(
            "[admin]\ntoken = \"{ADMIN_TOKEN}\"\n{}[streams]\nmax_per_user = 2\n\
             renewal_interval_seconds = {interval}\n\
             [entitlement]\nclaim = \"entitlements\"\ndefault_policy = \"streaming\"\n\
             [policies.streaming]\npersistent = false\n[policies.download]\npersistent = true\n",
            Store::Embedded.toml()
        ))
        .build();
    Gate::ready(Gate::start_with_files(
        &config,
        &[("catalog.toml", catalog.as_bytes())],
    ))
    .await
}

/// pyplayready, a real PlayReady CDM implementation from PyPI, on a device the test makes,
/// through licensegate to the simulator's faithful license server: XMR licenses whose keys
/// decrypt the demo stream (a wrong key must not), multi-key content, the stream's license
/// asked again at its cadence, a stream limit of 2, cross-user and cross-content continuations
/// (`tests/cdm/playready_cdm.py`).
#[tokio::test]
async fn a_real_playready_cdm_gets_working_keys_and_cannot_forge_its_sessions() {
    let keys = tempfile::tempdir().unwrap();
    let public = keys.path().join("server.pub");
    let made = std::process::Command::new("python3")
        .arg(cdm_script("playready_cdm.py"))
        .arg("server-key")
        .arg(&public)
        .output()
        .expect("python3 with pyplayready (scripts/setup.sh installs it)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let private = String::from_utf8(made.stdout).unwrap().trim().to_string();
    let content = conformance_content();
    let (catalog, mut sim_args) = conformance_catalog(&content, "--playready-content-key");
    sim_args.extend(["--playready-server-key".into(), private]);
    let sim = Sim::start(&sim_args.iter().map(String::as_str).collect::<Vec<_>>());
    let interval = 4;
    let gate = conformance_gate(&sim, "playready", &catalog, interval).await;
    let report = run_cdm(
        "playready_cdm.py",
        &[
            "--server-public".into(),
            public.display().to_string(),
            "--interval".into(),
            interval.to_string(),
        ],
        &gate,
        &content,
        &["ann", "bob", "cleo", "dora"],
    )
    .await;
    assert_eq!(
        report.lines().filter(|l| l.starts_with("ok: ")).count(),
        5,
        "{report}"
    );
}
