//! Device limits: the device read from the provider's answer (the simulator in Axinom mode names
//! it from the challenge's Widevine client identification), slots per user in the embedded
//! store or a real Redis shared by two licensegate instances, and the admin API.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use licensegate_testkit::{
    Gate, GateConfig, Redis, RedisSentinel, Sim, client, fixture, problem, user_token,
};
use serde_json::Value;

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
const CATALOG: &str = r#"
[content.demo]
key_ids = ["01020304-0506-0708-090a-0b0c0d0e0f10"]
"#;

fn user(name: &str) -> String {
    user_token(name, &["*"])
}

/// The Widevine fixture with `device` as its client identification: a request from that
/// device. Protobuf keeps the last occurrence of a field, so appending field 1 to the
/// LicenseRequest sets it.
fn challenge_from(device: &str) -> Vec<u8> {
    let signed = fixture("license-request-kid-01020304.bin");
    let mut fields = Vec::new();
    let mut at = 0;
    let varint = |bytes: &[u8], at: &mut usize| {
        let (mut value, mut shift) = (0u64, 0);
        loop {
            let byte = bytes[*at];
            *at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                return value;
            }
        }
    };
    while at < signed.len() {
        let key = varint(&signed, &mut at);
        let value = match key & 7 {
            0 => {
                let start = at;
                varint(&signed, &mut at);
                signed[start..at].to_vec()
            }
            2 => {
                let len = varint(&signed, &mut at) as usize;
                at += len;
                signed[at - len..at].to_vec()
            }
            other => panic!("wire type {other} not expected in the fixture"),
        };
        fields.push((key, value));
    }
    let put_varint = |out: &mut Vec<u8>, mut n: u64| loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    };
    let mut out = Vec::new();
    for (key, value) in fields {
        put_varint(&mut out, key);
        if key & 7 == 2 {
            let mut value = value;
            if key >> 3 == 2 {
                value.push(0x0a);
                put_varint(&mut value, device.len() as u64);
                value.extend_from_slice(device.as_bytes());
            }
            put_varint(&mut out, value.len() as u64);
            out.extend_from_slice(&value);
        } else {
            out.extend_from_slice(&value);
        }
    }
    out
}

fn config(sim: &Sim, devices: &str) -> String {
    // Each gate keeps its embedded store in its own directory.
    let store = if devices.contains("store =") || devices.contains("path =") {
        ""
    } else {
        "path = \"${LG_DIR}/devices.db\""
    };
    GateConfig::new()
        .auth("")
        .catalog()
        .provider(
            "axinom",
            &licensegate_testkit::axinom_provider("axinom", sim),
        )
        .routes(&[("widevine", "axinom")])
        .with(&format!(
            "[devices]\nadmin_token = \"{ADMIN_TOKEN}\"\n{devices}\n{store}"
        ))
        .build()
}

async fn start(config: &str) -> Gate {
    Gate::ready(Gate::start_with_files(
        config,
        &[("catalog.toml", CATALOG.as_bytes())],
    ))
    .await
}

async fn license(gate: &Gate, who: &str, device: &str) -> reqwest::Response {
    client()
        .post(gate.license_url("widevine", Some("demo")))
        .bearer_auth(user(who))
        .body(challenge_from(device))
        .send()
        .await
        .unwrap()
}

async fn admin(
    gate: &Gate,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> reqwest::Response {
    let mut request = client().request(method, gate.admin(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn registered(gate: &Gate, who: &str) -> Vec<String> {
    let response = admin(
        gate,
        reqwest::Method::GET,
        &format!("/v1/devices/{who}"),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|slot| slot["device"].as_str().unwrap().to_string())
        .collect()
}

const LICENSE_PREFIX: &[u8] = b"licensegate-sim license\n";

#[tokio::test]
async fn a_device_beyond_the_limit_gets_no_license_until_a_slot_frees() {
    let sim = Sim::start(&["--vendor", "axinom"]);
    let gate = start(&config(&sim, "max_per_user = 2\nslot_idle_seconds = 2")).await;
    for device in ["phone", "laptop", "phone"] {
        let response = license(&gate, "ann", device).await;
        assert_eq!(response.status(), 200, "{device}");
        assert!(response.headers().get("x-axdrm-message").is_none());
        assert!(response.bytes().await.unwrap().starts_with(LICENSE_PREFIX));
    }
    let response = license(&gate, "ann", "tv").await;
    assert!(response.headers().get("x-axdrm-message").is_none());
    let body = problem(response, 403, "device_limit_reached").await;
    assert_eq!(body["registered_devices"], 2);
    assert_eq!(body["device_limit"], 2);
    assert!(
        body["oldest_slot_frees_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert!(!body.to_string().contains("licensegate-sim license"));
    // The provider did issue (and would bill) that license; licensegate held it back.
    assert_eq!(sim.stats().await["licenses"], 4);
    // Another user has slots of their own.
    assert_eq!(license(&gate, "bob", "tv").await.status(), 200);

    // The admin API: the token is required, then it lists and frees slots.
    let list = "/v1/devices/ann";
    assert_eq!(
        admin(&gate, reqwest::Method::GET, list, None)
            .await
            .status(),
        401
    );
    let wrong = admin(
        &gate,
        reqwest::Method::GET,
        list,
        Some("admin-token-0123456789abcdeX"),
    )
    .await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.headers()["www-authenticate"], "Bearer");
    let devices = registered(&gate, "ann").await;
    assert_eq!(devices.len(), 2, "{devices:?}");
    let phone = devices
        .iter()
        .find(|d| {
            // The simulator names a device after the SHA-256 of its client identification.
            d.ends_with(&hex::encode(
                &<sha2::Sha256 as sha2::Digest>::digest(b"phone")[..8],
            ))
        })
        .unwrap()
        .clone();
    let path = format!("/v1/devices/ann/{phone}");
    assert_eq!(
        admin(&gate, reqwest::Method::DELETE, &path, Some(ADMIN_TOKEN))
            .await
            .status(),
        200
    );
    assert_eq!(
        admin(&gate, reqwest::Method::DELETE, &path, Some(ADMIN_TOKEN))
            .await
            .status(),
        404
    );
    assert_eq!(license(&gate, "ann", "tv").await.status(), 200);
    assert_eq!(license(&gate, "ann", "phone").await.status(), 403);

    // Slots idle for 2 s free themselves.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(license(&gate, "ann", "phone").await.status(), 200);
    assert_eq!(license(&gate, "ann", "console").await.status(), 200);
    let metrics = gate.metrics().await;
    assert!(
        metrics.contains("licensegate_device_decisions_total{decision=\"refused\"} 2"),
        "{metrics}"
    );
    let cleared = admin(&gate, reqwest::Method::DELETE, list, Some(ADMIN_TOKEN)).await;
    assert_eq!(cleared.json::<Value>().await.unwrap()["removed"], 2);
}

#[tokio::test]
async fn a_forged_license_request_info_is_not_trusted() {
    let sim = Sim::start(&["--vendor", "axinom", "--request-info-key", &"11".repeat(32)]);
    let gate = start(&config(&sim, "max_per_user = 2")).await;
    let response = license(&gate, "ann", "phone").await;
    let body = problem(response, 403, "device_unknown").await;
    assert!(
        body["detail"].as_str().unwrap().contains("rejected"),
        "{body}"
    );
    assert!(registered(&gate, "ann").await.is_empty());

    // Configured to let unidentified devices through, it still registers nothing.
    let gate = start(&config(&sim, "max_per_user = 2\nuntrusted = \"allow\"")).await;
    let response = license(&gate, "ann", "phone").await;
    assert_eq!(response.status(), 200);
    assert!(registered(&gate, "ann").await.is_empty());
}

#[tokio::test]
async fn two_instances_sharing_redis_enforce_one_limit_without_races() {
    let redis = Redis::start();
    let sim = Sim::start(&["--vendor", "axinom"]);
    let devices = format!(
        "max_per_user = 3\nstore = \"redis\"\nredis_url = \"{}\"",
        redis.url()
    );
    let (a, b) = (
        start(&config(&sim, &devices)).await,
        start(&config(&sim, &devices)).await,
    );
    let token = user("ann");
    let client = client();
    let requests = (0..50).map(|i| {
        let device = format!("device-{}", i % 10);
        let gate = if i % 2 == 0 { &a } else { &b };
        let request = client
            .post(gate.license_url("widevine", Some("demo")))
            .bearer_auth(&token)
            .body(challenge_from(&device))
            .send();
        async move {
            let response = request.await.unwrap();
            let status = response.status().as_u16();
            let body = response.bytes().await.unwrap();
            (device, status, body.starts_with(LICENSE_PREFIX))
        }
    });
    let mut outcomes: HashMap<String, Vec<(u16, bool)>> = HashMap::new();
    for (device, status, licensed) in futures_util::future::join_all(requests).await {
        outcomes.entry(device).or_default().push((status, licensed));
    }
    let licensed: HashSet<&String> = outcomes
        .iter()
        .filter(|(_, results)| results.iter().any(|(_, licensed)| *licensed))
        .map(|(device, _)| device)
        .collect();
    assert_eq!(licensed.len(), 3, "{outcomes:?}");
    for (device, results) in &outcomes {
        let expected = if licensed.contains(device) {
            (200, true)
        } else {
            (403, false)
        };
        assert!(
            results.iter().all(|r| *r == expected),
            "{device}: {results:?}"
        );
    }
    assert_eq!(registered(&a, "ann").await.len(), 3);
    assert_eq!(registered(&b, "ann").await.len(), 3);
}

#[tokio::test]
async fn an_unreachable_store_fails_closed() {
    let sim = Sim::start(&["--vendor", "axinom"]);
    let nothing = licensegate_testkit::free_port();
    let devices = format!(
        "max_per_user = 3\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:{nothing}\"\nstore_timeout_ms = 300"
    );
    let gate = start(&config(&sim, &devices)).await;
    let response = license(&gate, "ann", "phone").await;
    let body = problem(response, 503, "device_store_unavailable").await;
    assert!(!body.to_string().contains("licensegate-sim"));
    let response = admin(
        &gate,
        reqwest::Method::GET,
        "/v1/devices/ann",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(response.status(), 503);
}

#[tokio::test]
async fn the_embedded_store_keeps_every_device_across_kill_9() {
    let sim = Sim::start(&["--vendor", "axinom"]);
    let mut gate = start(&config(
        &sim,
        "max_per_user = 1000\npath = \"${LG_DIR}/devices.db\"",
    ))
    .await;
    let token = user("ann");
    let url = gate.license_url("widevine", Some("demo"));
    let admitted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (url, token, admitted) = (url.clone(), token.clone(), admitted.clone());
        workers.push(tokio::spawn(async move {
            let client = client();
            for n in 0.. {
                let device = format!("w{worker}-d{n}");
                let response = client
                    .post(&url)
                    .bearer_auth(&token)
                    .body(challenge_from(&device))
                    .send()
                    .await;
                match response {
                    Ok(response) if response.status() == 200 => {
                        admitted.lock().unwrap().push(device)
                    }
                    _ => return,
                }
            }
        }));
    }
    while admitted.lock().unwrap().len() < 40 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gate.crash_and_restart();
    for worker in workers {
        worker.await.unwrap();
    }
    let gate = Gate::ready(gate).await;
    let registered: HashSet<String> = registered(&gate, "ann").await.into_iter().collect();
    let admitted = admitted.lock().unwrap().clone();
    assert!(admitted.len() >= 40);
    for device in &admitted {
        let id = hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(device.as_bytes())[..8]);
        assert!(
            registered.iter().any(|r| r.ends_with(&id)),
            "{device} was licensed before the crash but is not registered"
        );
    }
}

/// Redis Sentinel with a master and a replica, two instances: the master is killed while a
/// player keeps asking both. Until the sentinel has promoted the replica every answer is a license or
/// `503 device_store_unavailable`, never a wrong one; then licenses flow again, and the limit
/// still holds (the registrations replicated before the kill survive).
#[tokio::test]
async fn a_sentinel_failover_costs_503s_for_a_bounded_time_and_no_wrong_answer() {
    let mut redis = RedisSentinel::start();
    let sim = Sim::start(&["--vendor", "axinom"]);
    let devices = format!(
        "max_per_user = 3\n[store]\nkind = \"redis\"\nsentinels = [\"{}\"]\n\
         master_name = \"{}\"\ntimeout_ms = 300",
        redis.sentinel_url(),
        RedisSentinel::MASTER_NAME
    );
    let (gate, other) = (
        start(&config(&sim, &devices)).await,
        start(&config(&sim, &devices)).await,
    );
    for device in ["phone", "tablet", "tv"] {
        assert_eq!(
            license(&gate, "ann", device).await.status(),
            200,
            "{device}"
        );
    }
    assert_eq!(license(&other, "ann", "laptop").await.status(), 403);
    redis.wait_for_replica();

    let killed = Instant::now();
    redis.kill_master();
    let mut answers = Vec::new();
    let mut last_refusal = None;
    while killed.elapsed() < Duration::from_secs(30) {
        // The two instances in turn, each asking for a registered device.
        let instance = if answers.len() % 2 == 0 {
            &gate
        } else {
            &other
        };
        let response = license(instance, "ann", "phone").await;
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap();
        match status {
            200 => assert!(body.starts_with(LICENSE_PREFIX)),
            503 => {
                let problem: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(problem["code"], "device_store_unavailable", "{problem}");
                last_refusal = Some(killed.elapsed());
            }
            other => panic!("a wrong answer during the failover: {other}"),
        }
        answers.push(status);
        if let Some(refused) = last_refusal
            && killed.elapsed() > refused + Duration::from_secs(2)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outage = last_refusal.expect("killing the master refused nothing");
    // The sentinel declares the master down after 1 s, then elects and promotes the replica.
    assert!(
        outage < Duration::from_secs(10),
        "503s for {outage:?}: {answers:?}"
    );
    assert_eq!(answers.last(), Some(&200), "{answers:?}");
    assert_eq!(redis.current_master_port(), Some(redis.replica_port));
    eprintln!("sentinel failover: 503 device_store_unavailable for {outage:?}");
    for instance in [&gate, &other] {
        assert_eq!(
            license(instance, "ann", "laptop").await.status(),
            403,
            "the limit survived the failover"
        );
        assert_eq!(registered(instance, "ann").await.len(), 3);
    }
}
