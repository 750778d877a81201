//! Each provider kind against simulators that check requests as each vendor documents:
//! player -> licensegate -> licensegate-sim --vendor X, and the simulators' refusals back.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use licensegate_sim::license_for as sim_license;
use licensegate_testkit::{
    AXINOM_COM_KEY, AXINOM_COM_KEY_ID, DRMTODAY_SECRET, FIXTURE_CATALOG, Gate, GateConfig, Sim,
    client, fixture, get_json, now, problem, user_token,
};
use serde_json::{Value, json};
use sha2::Sha256;

const WIDEVINE_KID: &str = "01020304-0506-0708-090a-0b0c0d0e0f10";
const PALLYCON_SITE_KEY: &str = "sim-site-key-0123456789abcdefghi";

fn user(name: &str) -> String {
    user_token(name, &["*"])
}

/// Routes Widevine and PlayReady to the provider `provider` (a `[providers.provider]` table body).
fn config(provider: &str, extra: &str) -> String {
    GateConfig::new()
        .auth("")
        .catalog()
        .provider("provider", provider)
        .routes(&[("widevine", "provider"), ("playready", "provider")])
        .with(extra)
        .build()
}

async fn start_gate(provider: &str, extra: &str) -> Gate {
    Gate::ready(Gate::start_with_files(
        &config(provider, extra),
        &[("catalog.toml", FIXTURE_CATALOG.as_bytes())],
    ))
    .await
}

fn axinom(sim: &Sim, settings: &str) -> String {
    let base = format!("http://127.0.0.1:{}", sim.port);
    format!(
        r#"kind = "axinom"
endpoints = {{ widevine = ["{base}/widevine/AcquireLicense"], playready = ["{base}/playready/AcquireLicense"] }}
[providers.provider.settings]
com_key_id = "{AXINOM_COM_KEY_ID}"
com_key = "{AXINOM_COM_KEY}"
{settings}
"#
    )
}

/// The fixtures' catalog with a key for the PlayReady sample, which ExpressPlay's token carries.
fn catalog_with_playready_key() -> String {
    format!(
        "{FIXTURE_CATALOG}keys = {{ \"33e0008c-c444-4770-9899-a321e079dd36\" = \"000102030405060708090a0b0c0d0e0f\" }}\n"
    )
}

async fn post(
    gate: &Gate,
    drm: &str,
    content: &str,
    who: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    client()
        .post(gate.license_url(drm, Some(content)))
        .bearer_auth(user(who))
        .header("Origin", "https://player.example")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// `n` license requests from `who` for demo at once.
async fn burst(gate: &Gate, who: &str, n: usize, challenge: &[u8]) -> Vec<reqwest::Response> {
    let token = user(who);
    let client = client();
    let requests = (0..n).map(|_| {
        client
            .post(gate.license_url("widevine", Some("demo")))
            .bearer_auth(&token)
            .body(challenge.to_vec())
            .send()
    });
    futures_util::future::join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

/// The value of one sample of `name` whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// HS256 checked with nothing but HMAC-SHA256 over `header.payload`, independent of the code
/// (and the JWT library) that signed it; returns the payload.
fn verify_hs256(token: &str, key: &[u8]) -> Value {
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(signed.as_bytes());
    let expected = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    assert_eq!(signature, expected, "HS256 signature");
    let (header, payload) = signed.split_once('.').unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    assert_eq!(header["alg"], "HS256");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn axinom_licenses_pass_the_simulated_service_byte_for_byte() {
    let sim = Sim::start(&["--vendor", "axinom"]);
    let gate = start_gate(&axinom(&sim, ""), "").await;
    let widevine = fixture("license-request-kid-01020304.bin");
    let response = post(&gate, "widevine", "demo", "ann", widevine.clone()).await;
    assert_eq!(response.status(), 200);
    // The signed license request info is for licensegate, never for the player.
    assert!(response.headers().get("x-axdrm-message").is_none());
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        sim_license(&widevine)
    );

    let stats = sim.stats().await;
    assert_eq!(
        stats["last_license_request_uri"], "/widevine/AcquireLicense",
        "Widevine goes to its own license URL"
    );
    let token = stats["last_license_request_headers"]["x-axdrm-message"]
        .as_str()
        .unwrap();
    let envelope = verify_hs256(token, &hex::decode(AXINOM_COM_KEY).unwrap());
    assert_eq!(envelope["version"], 1);
    assert_eq!(envelope["com_key_id"], AXINOM_COM_KEY_ID);
    let message = &envelope["message"];
    assert_eq!(message["type"], "entitlement_message");
    assert_eq!(message["version"], 2);
    assert_eq!(
        message["content_keys_source"]["inline"][0]["id"],
        WIDEVINE_KID
    );
    let policy_name = message["content_keys_source"]["inline"][0]["usage_policy"].clone();
    assert_eq!(
        message["content_key_usage_policies"][0]["name"],
        policy_name
    );
    assert_eq!(
        message["license_server"]["return_license_request_info"],
        true
    );
    let expiration =
        chrono::DateTime::parse_from_rfc3339(envelope["expiration_date"].as_str().unwrap())
            .unwrap();
    let begin =
        chrono::DateTime::parse_from_rfc3339(envelope["begin_date"].as_str().unwrap()).unwrap();
    assert!(begin.timestamp() <= now() as i64 && expiration.timestamp() > now() as i64);

    let playready = fixture("license-request-v4.0.xml");
    let response = post(
        &gate,
        "playready",
        "playready-sample",
        "ann",
        playready.clone(),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        sim_license(&playready)
    );
    let stats = sim.stats().await;
    assert_eq!(
        stats["last_license_request_uri"],
        "/playready/AcquireLicense"
    );
    assert_eq!(stats["refusals"], 0);
}

#[tokio::test]
async fn axinom_message_version_1_lists_the_key_ids() {
    let sim = Sim::start(&["--vendor", "axinom"]);
    let gate = start_gate(&axinom(&sim, "message_version = 1"), "").await;
    let widevine = fixture("license-request-kid-01020304.bin");
    let response = post(&gate, "widevine", "demo", "ann", widevine).await;
    assert_eq!(response.status(), 200);
    let stats = sim.stats().await;
    let token = stats["last_license_request_headers"]["x-axdrm-message"]
        .as_str()
        .unwrap();
    let envelope = verify_hs256(token, &hex::decode(AXINOM_COM_KEY).unwrap());
    assert_eq!(
        envelope["message"],
        json!({"type": "entitlement_message", "key_ids": [WIDEVINE_KID]})
    );
}

#[tokio::test]
async fn axinom_refusals_reach_the_player_with_the_vendor_reason() {
    let widevine = fixture("license-request-kid-01020304.bin");
    let other_key = "00".repeat(32);
    for (sim_args, expected) in [
        (
            vec!["--vendor", "axinom", "--com-key", other_key.as_str()],
            "signature invalid",
        ),
        (
            vec![
                "--vendor",
                "axinom",
                "--com-key-id",
                "00000000-0000-0000-0000-000000000001",
            ],
            "Unknown communication key ID",
        ),
    ] {
        let sim = Sim::start(&sim_args);
        let gate = start_gate(&axinom(&sim, ""), "").await;
        let response = post(&gate, "widevine", "demo", "ann", widevine.clone()).await;
        assert_eq!(response.status(), 401);
        let reason = response.headers()["x-axdrm-errormessage"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(reason.contains(expected), "{reason}");
        let exposed = response.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        assert!(exposed.contains("x-axdrm-errormessage"));
        let body = response.bytes().await.unwrap();
        assert_ne!(body.as_ref(), sim_license(&widevine));
        // The access line is written once the answer has left.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let logged = |log: &str| log.contains("vendor_refused") && log.contains(expected);
        while !logged(&gate.log()) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(logged(&gate.log()), "{}", gate.log());
    }
}

#[tokio::test]
async fn the_axinom_simulator_refuses_what_axinom_refuses() {
    let sim = Sim::start(&["--vendor", "axinom"]);
    let widevine = fixture("license-request-kid-01020304.bin");
    let sign = |message: Value, key: &[u8], extra: Value| {
        let mut claims = json!({"version": 1, "com_key_id": AXINOM_COM_KEY_ID, "message": message});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(key),
        )
        .unwrap()
    };
    let key = hex::decode(AXINOM_COM_KEY).unwrap();
    let other_kid =
        json!({"type": "entitlement_message", "key_ids": ["a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf"]});
    let right_kid = json!({"type": "entitlement_message", "key_ids": [WIDEVINE_KID]});
    let cases = [
        (sign(right_kid.clone(), &key, json!({})), 200, ""),
        (
            sign(other_kid, &key, json!({})),
            403,
            "not in the entitlement message",
        ),
        // The key's hex text instead of its bytes: the mistake **Azure Media Services with Axinom**
        // (docs/sources.md) warns about.
        (
            sign(right_kid.clone(), AXINOM_COM_KEY.as_bytes(), json!({})),
            401,
            "signature invalid",
        ),
        (
            sign(
                right_kid.clone(),
                &key,
                json!({"expiration_date": "2020-01-01T00:00:00Z"}),
            ),
            403,
            "expiration_date",
        ),
        (
            sign(
                json!({"type": "license_request_info", "key_ids": [WIDEVINE_KID]}),
                &key,
                json!({}),
            ),
            400,
            "entitlement_message",
        ),
    ];
    for (token, status, reason) in cases {
        let response = client()
            .post(sim.url())
            .header("X-AxDRM-Message", token)
            .body(widevine.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{reason}");
        if status != 200 {
            let given = response.headers()["x-axdrm-errormessage"].to_str().unwrap();
            assert!(given.contains(reason), "{given}");
        }
    }
}

#[tokio::test]
async fn one_axinom_mint_serves_200_concurrent_requests_until_it_expires() {
    let sim = Sim::start(&["--vendor", "axinom"]);
    // Messages live 6 s and leave the cache 2 s early.
    let gate = start_gate(
        &axinom(&sim, "token_ttl_seconds = 6"),
        "[authorization_cache]\nsafety_margin_seconds = 2",
    )
    .await;
    let widevine = fixture("license-request-kid-01020304.bin");
    for response in burst(&gate, "ann", 200, &widevine).await {
        assert_eq!(response.status(), 200);
    }
    let metrics = gate.metrics().await;
    let count = |result| {
        metric(
            &metrics,
            "licensegate_token_cache_total",
            &[("provider", "provider"), ("result", result)],
        )
    };
    assert_eq!(count("miss"), 1.0, "one mint");
    assert_eq!(count("hit"), 199.0);
    assert_eq!(
        metric(
            &metrics,
            "licensegate_token_mint_duration_seconds_count",
            &[("provider", "provider")]
        ),
        1.0
    );
    // Another user is another entitlement.
    assert_eq!(
        post(&gate, "widevine", "demo", "bob", widevine.clone())
            .await
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(4100)).await;
    assert_eq!(
        post(&gate, "widevine", "demo", "ann", widevine)
            .await
            .status(),
        200
    );
    let metrics = gate.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "licensegate_token_cache_total",
            &[("provider", "provider"), ("result", "miss")]
        ),
        3.0,
        "ann's message expired and was minted again, bob had his own"
    );
    assert_eq!(sim.stats().await["licenses"], 202);
}

/// ExpressPlay with its Widevine token service only.
fn expressplay_widevine_only(sim: &Sim, settings: &str) -> String {
    let base = format!("http://127.0.0.1:{}", sim.port);
    format!(
        r#"kind = "expressplay"
endpoints = ["{base}/hms/wv/rights/"]
[providers.provider.settings]
token_url = "{base}/hms/wv/token"
customer_authenticator = "sim-authenticator"
{settings}
"#
    )
}

#[tokio::test]
async fn expressplay_one_token_call_for_200_concurrent_requests() {
    let sim = Sim::start(&["--vendor", "expressplay"]);
    let gate = start_gate(
        &expressplay(&sim, "token_ttl_seconds = 6"),
        "[authorization_cache]\nsafety_margin_seconds = 2",
    )
    .await;
    let widevine = fixture("license-request-kid-01020304.bin");
    for response in burst(&gate, "ann", 200, &widevine).await {
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.bytes().await.unwrap().as_ref(),
            sim_license(&widevine)
        );
    }
    let stats = sim.stats().await;
    assert_eq!(stats["token_requests"], 1);
    assert_eq!(stats["licenses"], 200);
    let uri = stats["last_license_request_uri"].as_str().unwrap();
    assert!(
        uri.starts_with("/hms/wv/rights/?ExpressPlayToken="),
        "{uri}"
    );
    tokio::time::sleep(Duration::from_millis(4100)).await;
    assert_eq!(
        post(&gate, "widevine", "demo", "ann", widevine)
            .await
            .status(),
        200
    );
    assert_eq!(
        sim.stats().await["token_requests"],
        2,
        "an expired token is replaced"
    );
}

/// ExpressPlay with its Widevine and PlayReady token services, as [`config`] routes both DRMs.
fn expressplay(sim: &Sim, settings: &str) -> String {
    let base = format!("http://127.0.0.1:{}", sim.port);
    expressplay_widevine_only(
        sim,
        &format!("playready_token_url = \"{base}/hms/pr/token\"\n{settings}"),
    )
    .replace(
        &format!("endpoints = [\"{base}/hms/wv/rights/\"]"),
        &format!(
            "endpoints = {{ widevine = [\"{base}/hms/wv/rights/\"], playready = [\"{base}/playready/AcquireLicense\"] }}"
        ),
    )
}

/// The token's rights as the simulator's token service received them.
fn token_rights(stats: &Value) -> std::collections::BTreeMap<String, String> {
    stats["last_token_rights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_string(),
                pair[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn post_playready(gate: &Gate, who: &str) -> reqwest::Response {
    client()
        .post(gate.license_url("playready", Some("playready-sample")))
        .bearer_auth(user(who))
        .header(
            "SOAPAction",
            "\"http://schemas.microsoft.com/DRM/2007/03/protocols/AcquireLicense\"",
        )
        .body(fixture("license-request-v4.0.xml"))
        .send()
        .await
        .unwrap()
}

/// ExpressPlay's PlayReady token service: the policy's rights and output protection go in the
/// token request, the license URL and token come back as JSON, and the challenge redeems the
/// token (`ExpressPlayToken`) at that URL; tokens are cached like Widevine's.
#[tokio::test]
async fn expressplay_playready_tokens_carry_the_policy_and_are_redeemed() {
    let sim = Sim::start(&["--vendor", "expressplay"]);
    let catalog = catalog_with_playready_key();
    let gate = Gate::ready(Gate::start_with_files(
        &config(&expressplay(&sim, ""), ""),
        &[("catalog.toml", catalog.as_bytes())],
    ))
    .await;
    let playready = fixture("license-request-v4.0.xml");
    for _ in 0..2 {
        let response = post_playready(&gate, "ann").await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.bytes().await.unwrap().as_ref(),
            sim_license(&playready)
        );
    }
    let stats = sim.stats().await;
    assert_eq!(
        stats["token_requests"], 1,
        "the second request reused the token"
    );
    assert_eq!(stats["licenses"], 2);
    let uri = stats["last_license_request_uri"].as_str().unwrap();
    assert!(
        uri.starts_with("/playready/AcquireLicense?ExpressPlayToken="),
        "{uri}"
    );
    let rights = token_rights(&stats);
    for (name, value) in [
        ("kid", "33e0008cc44447709899a321e079dd36"),
        ("rightsType", "BuyToOwn"),
        ("analogVideoOPL", "100"),
        ("compressedDigitalAudioOPL", "100"),
        ("compressedDigitalVideoOPL", "400"),
        ("uncompressedDigitalAudioOPL", "100"),
        ("uncompressedDigitalVideoOPL", "100"),
        ("unknownOutputBehavior", "Allow"),
        ("errorFormat", "json"),
    ] {
        assert_eq!(
            rights.get(name).map(String::as_str),
            Some(value),
            "{name}: {rights:?}"
        );
    }
    assert!(!rights.contains_key("generalFlags"), "{rights:?}");

    // A persistent policy with a duration rents until then; HDCP protects the outputs.
    let sim = Sim::start(&["--vendor", "expressplay"]);
    let gate = Gate::ready(Gate::start_with_files(
        &config(
            &expressplay(&sim, ""),
            "[entitlement]\ndefault_policy = \"rental\"\n[policies.rental]\nhdcp = \"1.4\"\n\
             persistent = true\nlicense_duration_seconds = 7200\n",
        ),
        &[("catalog.toml", catalog.as_bytes())],
    ))
    .await;
    assert_eq!(post_playready(&gate, "ann").await.status(), 200);
    let rights = token_rights(&sim.stats().await);
    for (name, value) in [
        ("rightsType", "Rental"),
        ("rental.periodEndTime", "+7200"),
        ("generalFlags", "00000001"),
        ("analogVideoOPL", "200"),
        ("uncompressedDigitalVideoOPL", "300"),
        ("unknownOutputBehavior", "Disallow"),
    ] {
        assert_eq!(
            rights.get(name).map(String::as_str),
            Some(value),
            "{name}: {rights:?}"
        );
    }

    // The token service's refusal reaches the player as for Widevine.
    let sim = Sim::start(&["--vendor", "expressplay", "--authenticator", "the-real-one"]);
    let gate = Gate::ready(Gate::start_with_files(
        &config(&expressplay(&sim, ""), ""),
        &[("catalog.toml", catalog.as_bytes())],
    ))
    .await;
    let body = problem(
        post_playready(&gate, "ann").await,
        502,
        "vendor_token_refused",
    )
    .await;
    assert_eq!(
        body["detail"],
        "ExpressPlay -2018: Authentication token invalid"
    );
    assert_eq!(sim.stats().await["licenses"], 0);
}

/// `tests/servers/expressplay_pr_vendor.py`: ExpressPlay's PlayReady token service and license
/// server, written apart from licensegate and its simulator from ExpressPlay's public
/// documentation (HTTP/1.1 only), stopped when dropped.
struct DocumentedExpressPlay {
    child: std::process::Child,
    port: u16,
}

impl DocumentedExpressPlay {
    fn start(authenticator: &str) -> Self {
        let [port] = licensegate_testkit::free_ports();
        let mut child = std::process::Command::new("python3")
            .arg(licensegate_testkit::repository().join("tests/servers/expressplay_pr_vendor.py"))
            .args([&port.to_string(), authenticator])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("python3 must be installed");
        licensegate_testkit::wait_for_port(port, &mut child);
        Self { child, port }
    }

    async fn stats(&self) -> Value {
        get_json(&format!("http://127.0.0.1:{}/stats", self.port)).await
    }
}

impl Drop for DocumentedExpressPlay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// licensegate's PlayReady token requests pass an ExpressPlay written from its documentation
/// by someone else, for a bought and a rented license, and its token redeems there.
#[tokio::test]
async fn expressplay_playready_passes_a_vendor_written_from_the_documentation() {
    let catalog = catalog_with_playready_key();
    for (policy, rights) in [
        ("", "BuyToOwn"),
        (
            "[entitlement]\ndefault_policy = \"rental\"\n[policies.rental]\nhdcp = \"2.2\"\n\
             persistent = true\nlicense_duration_seconds = 600\n",
            "Rental",
        ),
    ] {
        let vendor = DocumentedExpressPlay::start("documented-authenticator");
        let base = format!("http://127.0.0.1:{}", vendor.port);
        let config = GateConfig::new()
            .auth("")
            .catalog()
            .provider(
                "provider",
                &format!(
                    "kind = \"expressplay\"\nprotocol = \"h1\"\n\
                     endpoints = {{ playready = [\"{base}/playready/rightsmanager.asmx\"] }}\n\
                     [providers.provider.settings]\nplayready_token_url = \"{base}/hms/pr/token\"\n\
                     customer_authenticator = \"documented-authenticator\"\n"
                ),
            )
            .routes(&[("playready", "provider")])
            .with(policy)
            .build();
        let gate = Gate::ready(Gate::start_with_files(
            &config,
            &[("catalog.toml", catalog.as_bytes())],
        ))
        .await;
        for _ in 0..2 {
            let response = post_playready(&gate, "ann").await;
            assert_eq!(response.status(), 200, "{rights}");
            assert_eq!(
                response.text().await.unwrap(),
                "<AcquireLicenseResponse token-ok/>",
                "{rights}"
            );
        }
        let stats = vendor.stats().await;
        assert_eq!(stats["token_requests"], 1, "{rights}: {stats}");
        assert_eq!(stats["licenses"], 2, "{rights}: {stats}");
        assert_eq!(stats["last_rights"]["rightsType"], rights, "{stats}");
        if rights == "Rental" {
            // A rental counts from its token: a token is reused for a tenth of the rental at
            // most (60 s here, the cache's margin taking half), so a license is never rented
            // for much less than the policy says.
            assert_eq!(
                stats["last_rights"]["rental.periodEndTime"], "+600",
                "{stats}"
            );
        }
    }
}

/// `licensegate check` on `config` with `catalog` beside it: whether it passed, and what it
/// said.
fn check_config(config: &str, catalog: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("catalog.toml"), catalog).unwrap();
    let path = dir.path().join("licensegate.toml");
    std::fs::write(&path, config).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_licensegate"))
        .args(["check", "--config"])
        .arg(&path)
        .env("LG_DIR", dir.path())
        .env("LG_PORT", "1")
        .env("LG_ADMIN_PORT", "2")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout),
    )
}

/// The PallyCon token the simulator last received, decoded.
async fn last_pallycon_token(sim: &Sim) -> Value {
    let stats = sim.stats().await;
    let header = stats["last_license_request_headers"]["pallycon-customdata-v2"]
        .as_str()
        .unwrap()
        .to_string();
    serde_json::from_slice(&STANDARD.decode(header).unwrap()).unwrap()
}

/// A route or a catalog entry naming a provider for a DRM it cannot serve is refused by
/// `check`, naming the key: a kind that never serves it, or an ExpressPlay provider without
/// that DRM's token service.
#[tokio::test]
async fn check_refuses_a_provider_for_a_drm_it_cannot_serve() {
    let check = |config: String, catalog: String| check_config(&config, &catalog);
    let sim = Sim::start(&[]);
    // The Widevine-only ExpressPlay provider routed PlayReady (what config() does).
    let (ok, said) = check(
        config(&expressplay_widevine_only(&sim, ""), ""),
        FIXTURE_CATALOG.to_string(),
    );
    assert!(!ok, "{said}");
    assert!(
        said.contains("routes.playready: 'provider' serves playready only with providers.provider.settings.playready_token_url"),
        "{said}"
    );
    // With its PlayReady token service it passes.
    let (ok, said) = check(
        config(&expressplay(&sim, ""), ""),
        FIXTURE_CATALOG.to_string(),
    );
    assert!(ok, "{said}");
    // Axinom never serves ClearKey.
    let axinom_clearkey = GateConfig::new()
        .auth("")
        .catalog()
        .provider("provider", &axinom(&sim, ""))
        .routes(&[("clearkey", "provider")])
        .build();
    let (ok, said) = check(axinom_clearkey, FIXTURE_CATALOG.to_string());
    assert!(!ok, "{said}");
    assert!(
        said.contains("routes.clearkey: 'provider' does not serve clearkey"),
        "{said}"
    );
    // A catalog entry naming a provider that serves none of the routed DRMs.
    let widevine_only = expressplay_widevine_only(&sim, "")
        .replace("[providers.provider.", "[providers.widevine-only.");
    let playready_routed = GateConfig::new()
        .auth("")
        .catalog()
        .provider("provider", &expressplay(&sim, ""))
        .provider("widevine-only", &widevine_only)
        .routes(&[("playready", "provider")])
        .build();
    let naming_widevine_only = FIXTURE_CATALOG.replace(
        "[content.playready-sample]\n",
        "[content.playready-sample]\nprovider = \"widevine-only\"\n",
    );
    let (ok, said) = check(playready_routed, naming_widevine_only.clone());
    assert!(!ok, "{said}");
    assert!(
        said.contains("content.playready-sample.provider: serves none of the routed DRMs (playready): 'widevine-only' serves playready only with"),
        "{said}"
    );
    // Routed Widevine too, the entry passes; its PlayReady requests are refused naming the
    // provider, before any token is asked for.
    let both_routed = GateConfig::new()
        .auth("")
        .catalog()
        .provider("provider", &expressplay(&sim, ""))
        .provider("widevine-only", &widevine_only)
        .routes(&[("widevine", "provider"), ("playready", "provider")])
        .build();
    let (ok, said) = check(both_routed.clone(), naming_widevine_only.clone());
    assert!(ok, "{said}");
    let gate = Gate::ready(Gate::start_with_files(
        &both_routed,
        &[("catalog.toml", naming_widevine_only.as_bytes())],
    ))
    .await;
    let body = problem(post_playready(&gate, "ann").await, 404, "drm_not_enabled").await;
    assert_eq!(
        body["detail"],
        "'playready-sample' is licensed by widevine-only, which do not serve playready"
    );
}

#[tokio::test]
async fn expressplay_token_service_errors_reach_the_player_as_502_with_the_code() {
    let sim = Sim::start(&["--vendor", "expressplay", "--authenticator", "the-real-one"]);
    let gate = start_gate(&expressplay(&sim, ""), "").await;
    let widevine = fixture("license-request-kid-01020304.bin");
    let response = post(&gate, "widevine", "demo", "ann", widevine.clone()).await;
    let body = problem(response, 502, "vendor_token_refused").await;
    assert_eq!(
        body["detail"],
        "ExpressPlay -2018: Authentication token invalid"
    );
    assert_eq!(sim.stats().await["licenses"], 0);

    // Without the key, ExpressPlay must find it by KID, and this account stores none.
    let sim = Sim::start(&["--vendor", "expressplay"]);
    let gate = start_gate(&expressplay(&sim, "send_content_key = false"), "").await;
    let response = post(&gate, "widevine", "demo", "ann", widevine).await;
    let body = problem(response, 502, "vendor_token_refused").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("ExpressPlay -4019"),
        "{body}"
    );
}

#[tokio::test]
async fn the_expressplay_simulator_applies_seed_004s_parameter_rules() {
    let sim = Sim::start(&["--vendor", "expressplay"]);
    let token_url = format!("http://127.0.0.1:{}/hms/wv/token", sim.port);
    let good = [
        ("customerAuthenticator", "sim-authenticator"),
        ("errorFormat", "json"),
        ("kid", "0102030405060708090a0b0c0d0e0f10"),
        ("contentKey", "00112233445566778899aabbccddeeff"),
        ("securityLevel", "1"),
        ("hdcpOutputControl", "0"),
    ];
    let call = |overrides: Vec<(&'static str, &'static str)>| {
        let mut form: Vec<(&str, &str)> = good
            .iter()
            .filter(|(k, _)| !overrides.iter().any(|(o, _)| o == k))
            .copied()
            .collect();
        form.extend(overrides.into_iter().filter(|(_, v)| !v.is_empty()));
        client().post(&token_url).form(&form).send()
    };
    let response = call(vec![]).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/uri-list");
    for (overrides, code) in [
        (vec![("securityLevel", "7")], -7004),
        (vec![("securityLevel", "")], -7003),
        (vec![("hdcpOutputControl", "")], -7006),
        (vec![("kid", "0102")], -4020),
        (vec![("kid", "")], -4018),
        (vec![("contentKey", "zz")], -2027),
        (vec![("customerAuthenticator", "")], -2017),
        (vec![("licenseDuration", "soon")], -7007),
        (vec![("expirationTime", "+99999999")], -2002),
        (vec![("wvExtension", "toolong,AAAA")], -2036),
    ] {
        let response = call(overrides.clone()).await.unwrap();
        assert!(response.status().is_client_error(), "{overrides:?}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["errorCode"], code, "{overrides:?}");
    }
}

fn drmtoday(sim: &Sim) -> String {
    format!(
        r#"kind = "drmtoday"
endpoints = ["{}"]
retries = 2
[providers.provider.settings]
merchant = "sim-merchant"
key_id = "sim-key"
secret = "{DRMTODAY_SECRET}"
algorithm = "HS512"
"#,
        sim.url()
    )
}

#[tokio::test]
async fn drmtoday_upfront_tokens_are_minted_per_attempt_and_never_reused() {
    // The first connection is refused with GOAWAY before any stream was processed: that
    // request is retried with a token of its own.
    let sim = Sim::start(&["--vendor", "drmtoday", "--refuse-connections", "1"]);
    let gate = start_gate(&drmtoday(&sim), "").await;
    let widevine = fixture("license-request-kid-01020304.bin");
    for response in burst(&gate, "ann", 50, &widevine).await {
        assert_eq!(response.status(), 200);
        assert!(response.headers().get("x-dt-client-info").is_none());
        assert_eq!(
            response.bytes().await.unwrap().as_ref(),
            sim_license(&widevine)
        );
    }
    let stats = sim.stats().await;
    assert_eq!(stats["refusals"], 0, "no jti was replayed");
    assert_eq!(stats["upfront_tokens_redeemed"], 50);
    assert_eq!(stats["refused_connections"], 1);
    let metrics = gate.metrics().await;
    let single_use = metric(
        &metrics,
        "licensegate_token_cache_total",
        &[("provider", "provider"), ("result", "single_use")],
    );
    assert!(
        single_use > 50.0,
        "the retried attempt minted again: {single_use}"
    );
    let resent = metric(
        &metrics,
        "licensegate_upstream_retries_total",
        &[("provider", "provider"), ("reason", "goaway")],
    );
    assert_eq!(
        resent,
        single_use - 50.0,
        "every re-mint was a GOAWAY retry"
    );

    // The token that reached DRMtoday is a signed JWT with its JSON-string claims.
    let upfront = stats["last_license_request_headers"]["x-dt-auth-token"]
        .as_str()
        .unwrap()
        .to_string();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(upfront.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], "sim-key");
    assert_eq!(header["alg"], "HS512");
    // Replaying it straight to DRMtoday fails: a token is good once.
    let replay = client()
        .post(sim.url())
        .header("x-dt-auth-token", &upfront)
        .body(widevine)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 403);
    assert!(
        replay.headers()["x-axdrm-errormessage"]
            .to_str()
            .unwrap()
            .contains("already used")
    );
}

fn pallycon(sim: &Sim, access_key: &str) -> String {
    format!(
        r#"kind = "pallycon"
endpoints = ["{}"]
error_header = "X-AxDRM-ErrorMessage"
[providers.provider.settings]
site_id = "SIM0"
site_key = "{PALLYCON_SITE_KEY}"
access_key = "{access_key}"
"#,
        sim.url()
    )
}

/// A site whose console accepts tokens for 5 s: every request over 20 s is licensed, because a
/// token is reused for at most half its validity; each new token is stamped afresh.
#[tokio::test]
async fn pallycon_tokens_are_reused_within_half_the_site_validity_only() {
    let sim = Sim::start(&["--vendor", "pallycon", "--token-validity-seconds", "5"]);
    let provider = format!(
        "{}token_validity_seconds = 5\n",
        pallycon(&sim, "sim-access-key")
    );
    // No safety margin: the reuse tested is the provider's own, not the cache's.
    let gate = start_gate(
        &provider,
        "[authorization_cache]\nsafety_margin_seconds = 0\n",
    )
    .await;
    let widevine = fixture("license-request-kid-01020304.bin");
    let started = std::time::Instant::now();
    let mut requests = 0;
    // Each token's stamp, and when the request that first carried it (minted it) ended.
    let mut minted_by = std::collections::BTreeMap::new();
    while started.elapsed() < Duration::from_secs(20) {
        let sent = std::time::Instant::now();
        let response = post(&gate, "widevine", "demo", "ann", widevine.clone()).await;
        let ended = std::time::Instant::now();
        assert_eq!(
            response.status(),
            200,
            "request {requests} at {:?}",
            started.elapsed()
        );
        requests += 1;
        let token = last_pallycon_token(&sim).await;
        let stamp = token["timestamp"].as_str().unwrap().to_string();
        match minted_by.get(&stamp) {
            // Minted after its request was sent and reused until 2 s after (half of the 5 s,
            // less the second the timestamp drops): a request sent more than 2 s after the
            // minting one ended would have carried a token older than that. How loaded the
            // machine is moves both ends alike.
            Some(minted_by_end) => {
                let gap = sent.saturating_duration_since(*minted_by_end);
                assert!(
                    gap <= Duration::from_millis(2250),
                    "token {stamp} carried by a request sent {gap:?} after its minting one ended"
                );
            }
            None => {
                minted_by.insert(stamp, ended);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(sim.stats().await["licenses"], requests);
    assert!(
        minted_by.len() >= 5,
        "{} tokens for {requests} requests",
        minted_by.len()
    );
    let metrics = gate.metrics().await;
    assert!(
        metric(
            &metrics,
            "licensegate_token_cache_total",
            &[("provider", "provider"), ("result", "hit")]
        ) > 0.0,
        "tokens are still reused within their half"
    );
}

#[tokio::test]
async fn pallycon_tokens_pass_hash_and_policy_checks_and_are_reused() {
    let sim = Sim::start(&["--vendor", "pallycon"]);
    let gate = start_gate(&pallycon(&sim, "sim-access-key"), "").await;
    let widevine = fixture("license-request-kid-01020304.bin");
    for _ in 0..2 {
        let response = post(&gate, "widevine", "demo", "ann", widevine.clone()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.bytes().await.unwrap().as_ref(),
            sim_license(&widevine)
        );
    }
    let playready = fixture("license-request-v4.0.xml");
    let response = post(&gate, "playready", "playready-sample", "ann", playready).await;
    assert_eq!(response.status(), 200);
    let token = last_pallycon_token(&sim).await;
    assert_eq!(token["drm_type"], "PlayReady");
    assert_eq!(token["user_id"], "ann");
    assert_eq!(token["cid"], "playready-sample");
    let metrics = gate.metrics().await;
    let count = |result| {
        metric(
            &metrics,
            "licensegate_token_cache_total",
            &[("provider", "provider"), ("result", result)],
        )
    };
    assert_eq!((count("miss"), count("hit")), (2.0, 1.0));

    let sim = Sim::start(&["--vendor", "pallycon"]);
    let gate = start_gate(&pallycon(&sim, "a-wrong-access-key"), "").await;
    // PallyCon refuses with a 200 whose body is its error object: the player gets a refusal.
    let response = post(&gate, "widevine", "demo", "ann", widevine).await;
    let body = problem(response, 403, "vendor_refused").await;
    assert_eq!(body["vendor_code"], "4010");
    assert!(
        body["vendor_message"]
            .as_str()
            .unwrap()
            .contains("hash mismatch"),
        "{body}"
    );
}

#[tokio::test]
async fn generic_templates_fill_headers_query_and_a_signed_jwt() {
    let sim = Sim::start(&[]);
    let provider = format!(
        r#"kind = "generic"
endpoints = ["{}?account=7"]
[providers.provider.settings]
headers = {{ "X-License-Auth" = "Bearer {{jwt}}", "X-Asset" = "{{content}}/{{drm}}" }}
query = {{ pX = "{{kid}}", level = "{{policy.security_level}}" }}
[providers.provider.settings.jwt]
algorithm = "HS256"
secret = "generic-secret"
key_id = "k1"
claims = {{ sub = "{{user}}", content = "{{content}}", tier = 3 }}
"#,
        sim.url()
    );
    let gate = start_gate(&provider, "").await;
    let widevine = fixture("license-request-kid-01020304.bin");
    let response = post(&gate, "widevine", "demo", "ann", widevine.clone()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        sim_license(&widevine)
    );
    let stats = sim.stats().await;
    assert_eq!(
        stats["last_license_request_uri"],
        "/AcquireLicense?account=7&level=1&pX=0102030405060708090a0b0c0d0e0f10"
    );
    let headers = &stats["last_license_request_headers"];
    assert_eq!(headers["x-asset"], "demo/widevine");
    let jwt = headers["x-license-auth"]
        .as_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap();
    let claims = verify_hs256(jwt, b"generic-secret");
    assert_eq!(claims["sub"], "ann");
    assert_eq!(claims["content"], "demo");
    assert_eq!(claims["tier"], 3);
    assert!(claims["jti"].is_string() && claims["exp"].as_u64() > Some(now()));
}

#[tokio::test]
async fn vendor_settings_errors_name_their_key() {
    let sim = Sim::start(&[]);
    for (provider, key) in [
        (
            axinom(&sim, "").replace(AXINOM_COM_KEY, "abcd"),
            "providers.provider.settings.com_key",
        ),
        (
            expressplay(&sim, "token_ttl_seconds = 0"),
            "providers.provider.settings.token_ttl_seconds",
        ),
        (
            pallycon(&sim, "k").replace(PALLYCON_SITE_KEY, "short"),
            "providers.provider.settings.site_key",
        ),
        (
            format!("{}token_validity_seconds = 0\n", pallycon(&sim, "k")),
            "providers.provider.settings.token_validity_seconds",
        ),
        (
            format!(
                "kind = \"generic\"\nendpoints = [\"{}\"]\n[providers.provider.settings]\nquery = {{ p = \"{{usr}}\" }}",
                sim.url()
            ),
            "providers.provider.settings.query.p",
        ),
        (
            format!(
                "kind = \"generic\"\nendpoints = [\"{}\"]\n[providers.provider.settings]\nheaders = {{ X-Ip = \"{{client_ip}}\" }}",
                sim.url()
            ),
            "providers.provider.settings.headers.X-Ip",
        ),
    ] {
        let (ok, said) = check_config(&config(&provider, ""), FIXTURE_CATALOG);
        assert!(!ok);
        assert!(said.contains(key), "{key}: {said}");
    }
}

#[tokio::test]
async fn drmtoday_custom_data_is_reused_per_user_and_content() {
    let sim = Sim::start(&["--vendor", "drmtoday"]);
    let provider = format!(
        r#"kind = "drmtoday"
endpoints = ["{}"]
[providers.provider.settings]
merchant = "sim-merchant"
mode = "custom_data"
"#,
        sim.url()
    );
    let gate = start_gate(&provider, "").await;
    let widevine = fixture("license-request-kid-01020304.bin");
    for _ in 0..2 {
        let response = post(&gate, "widevine", "demo", "ann", widevine.clone()).await;
        assert_eq!(response.status(), 200);
    }
    let stats = sim.stats().await;
    let headers = &stats["last_license_request_headers"];
    assert!(headers.get("x-dt-auth-token").is_none());
    let custom: Value = serde_json::from_slice(
        &STANDARD
            .decode(headers["x-dt-custom-data"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(custom["merchant"], "sim-merchant");
    assert_eq!(custom["userId"], "ann");
    assert!(custom["sessionId"].is_string());
    let metrics = gate.metrics().await;
    let count = |result| {
        metric(
            &metrics,
            "licensegate_token_cache_total",
            &[("provider", "provider"), ("result", result)],
        )
    };
    assert_eq!((count("miss"), count("hit")), (1.0, 1.0));
}
