//! The key service packagers call (SPEKE v2.0, CPIX 2.3), exercised through the `cpix` library
//! from PyPI: keys and signaling for the key IDs the packager chose, the same keys for the same
//! request, the catalog entry it leaves licensing players, and SPEKE's own refusals.

use std::process::Command;

use base64::Engine;
use licensegate_testkit::{Gate, GateConfig, client, problem, repository, user_token};
use serde_json::Value;

pub(super) const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
pub(super) const SPEKE_TOKEN: &str = "speke-token-0123456789abcdef";
pub(super) const KEK: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const SEED: &str = "XVBovsmzhP9gRIZxWfFta3VVRPzVEWmJsazEJ46I";
const K1: &str = "11111111-2222-4333-8444-555555555501";
const K2: &str = "11111111-2222-4333-8444-555555555502";
const K3: &str = "11111111-2222-4333-8444-555555555503";

fn config() -> String {
    config_with_store("[store]\npath = \"${LG_DIR}/licensegate.db\"\n")
}

fn config_with_store(store: &str) -> String {
    GateConfig::new()
        .provider("builtin", "kind = \"clearkey\"")
        .routes(&[("clearkey", "builtin")])
        .auth("")
        .with(&format!(
            "[admin]\ntoken = \"{ADMIN_TOKEN}\"\n{store}\
             [catalog]\nsource = \"store\"\ncache_seconds = 1\nkey_encryption_key = \"{KEK}\"\n\
             [key_seeds]\nstudio = \"{SEED}\"\n\
             [speke]\ntoken = \"{SPEKE_TOKEN}\"\nlicense_url = \"https://license.example.com\"\n"
        ))
        .build()
}

/// One exchange through the cpix library; `Err` holds what licensegate answered instead.
pub(super) fn exchange(
    gate: &Gate,
    content: &str,
    kids: &[&str],
    scheme: &str,
    systems: &str,
) -> Result<Value, String> {
    exchange_for(gate, content, kids, scheme, systems, None)
}

/// The same, naming a recipient certificate made in `recipient`, the keys decrypted with its key.
fn exchange_for(
    gate: &Gate,
    content: &str,
    kids: &[&str],
    scheme: &str,
    systems: &str,
    recipient: Option<&std::path::Path>,
) -> Result<Value, String> {
    // scripts/setup.sh installs the library apart: its `construct` is not pywidevine's.
    let output = Command::new("python3")
        .env("PYTHONPATH", repository().join("target/python-cpix"))
        .arg(repository().join("tests/speke/exchange.py"))
        .arg(gate.admin("/speke/v2"))
        .arg(SPEKE_TOKEN)
        .arg(content)
        .arg(kids.join(","))
        .arg(scheme)
        .arg(systems)
        .args(recipient)
        .output()
        .unwrap();
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

async fn clearkey_key(
    gate: &Gate,
    content: &str,
    kid: &str,
    user: &str,
    entitled: &[&str],
) -> reqwest::Response {
    let kid = uuid::Uuid::parse_str(kid).unwrap();
    let kid = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(kid.as_bytes());
    client()
        .post(gate.license_url("clearkey", Some(content)))
        .bearer_auth(user_token(user, entitled))
        .body(format!("{{\"kids\":[\"{kid}\"],\"type\":\"temporary\"}}"))
        .send()
        .await
        .unwrap()
}

fn b64url_of_hex(hex_key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hex::decode(hex_key).unwrap())
}

#[tokio::test]
async fn a_packager_gets_keys_and_signaling_and_the_entry_it_leaves_licenses_players() {
    let gate = Gate::start_ready(&config()).await;
    let answer = exchange(&gate, "movie-9", &[K1, K2], "cenc", "widevine,playready").unwrap();
    let keys = answer["keys"].as_object().unwrap();
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[K1], keys[K2]);
    // The same request again: the same keys.
    let again = exchange(&gate, "movie-9", &[K1, K2], "cenc", "widevine,playready").unwrap();
    assert_eq!(again["keys"], answer["keys"]);

    let systems = answer["systems"].as_array().unwrap();
    assert_eq!(systems.len(), 4);
    for system in systems {
        let media = system["hls_media"].as_str().unwrap();
        let master = system["hls_master"].as_str().unwrap();
        assert_eq!(
            media.strip_prefix("#EXT-X-KEY:"),
            master.strip_prefix("#EXT-X-SESSION-KEY:")
        );
        let protection = system["content_protection_data"].as_str().unwrap();
        assert!(protection.contains("<cenc:pssh"), "{protection}");
        let pssh = base64::engine::general_purpose::STANDARD
            .decode(system["pssh"].as_str().unwrap())
            .unwrap();
        assert_eq!(&pssh[4..8], b"pssh");
        if system["system"] == "playready" {
            assert!(protection.contains("<mspr:pro"), "{protection}");
            assert!(
                media.contains("KEYFORMAT=\"com.microsoft.playready\""),
                "{media}"
            );
        }
    }

    // The entry the exchange left: both key IDs, their keys, and players licensed with them.
    let entry: Value = gate.admin_json("/v1/catalog/movie-9", ADMIN_TOKEN).await;
    assert_eq!(entry["keys"], 2, "{entry}");
    let license = clearkey_key(&gate, "movie-9", K1, "ann", &["movie-9"]).await;
    assert_eq!(license.status(), 200);
    let license: Value = license.json().await.unwrap();
    assert_eq!(
        license["keys"][0]["k"],
        b64url_of_hex(keys[K1].as_str().unwrap())
    );
    problem(
        clearkey_key(&gate, "movie-9", K1, "bob", &["other"]).await,
        403,
        "not_entitled",
    )
    .await;

    // FairPlay: cbcs, HLS signaling with the skd URI licensegate's FairPlay requests read.
    let fairplay = exchange(&gate, "movie-10", &[K3], "cbcs", "fairplay").unwrap();
    let media = fairplay["systems"][0]["hls_media"].as_str().unwrap();
    assert!(media.contains(&format!("URI=\"skd://{K3}\"")), "{media}");
    assert!(
        media.contains("KEYFORMAT=\"com.apple.streamingkeydelivery\""),
        "{media}"
    );

    // A key ID of another content is refused, and nothing is written.
    let refused = exchange(&gate, "movie-11", &[K1], "cenc", "widevine").unwrap_err();
    assert!(
        refused.contains("422") && refused.contains("belongs to another content"),
        "{refused}"
    );
    let missing = client()
        .get(gate.admin("/v1/catalog/movie-11"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    problem(missing, 404, "content_unknown").await;
    assert!(!gate.log().contains(keys[K1].as_str().unwrap()));
}

#[tokio::test]
async fn new_key_ids_of_a_seeded_content_get_the_seeds_keys() {
    let gate = Gate::start_ready(&config()).await;
    let put = client()
        .put(gate.admin("/v1/catalog/seeded"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"key_ids": [K1], "key_seed": "studio"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let answer = exchange(&gate, "seeded", &[K1, K2], "cenc", "widevine").unwrap();
    let seed = licensegate::keyseed::KeySeed::parse(SEED).unwrap();
    for kid in [K1, K2] {
        let derived = hex::encode(seed.derive(kid.parse().unwrap()));
        assert_eq!(answer["keys"][kid], derived.as_str());
    }
}

#[tokio::test]
async fn keys_go_encrypted_to_the_recipient_certificate_a_request_names() {
    let gate = Gate::start_ready(&config()).await;
    let plain = exchange(&gate, "movie-20", &[K1], "cbcs", "widevine,fairplay").unwrap();
    let recipient = tempfile::tempdir().unwrap();
    let encrypted = exchange_for(
        &gate,
        "movie-20",
        &[K1],
        "cbcs",
        "widevine,fairplay",
        Some(recipient.path()),
    )
    .unwrap();
    assert_eq!(encrypted["keys"], plain["keys"]);
    assert!(!gate.log().contains(plain["keys"][K1].as_str().unwrap()));
}

async fn speke(
    gate: &Gate,
    version: Option<&str>,
    body: String,
) -> (u16, String, reqwest::header::HeaderMap) {
    let mut request = client()
        .post(gate.admin("/speke/v2"))
        .bearer_auth(SPEKE_TOKEN)
        .header("content-type", "application/xml");
    if let Some(version) = version {
        request = request.header("X-Speke-Version", version);
    }
    let response = request.body(body).send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, response.text().await.unwrap(), headers)
}

fn document(content: &str) -> String {
    document_for(content, K1)
}

fn document_for(content: &str, kid: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<cpix:CPIX contentId="{content}" version="2.3" xmlns:cpix="urn:dashif:org:cpix" xmlns:pskc="urn:ietf:params:xml:ns:keyprov:pskc">
<cpix:ContentKeyList><cpix:ContentKey kid="{kid}" commonEncryptionScheme="cenc"/></cpix:ContentKeyList>
<cpix:DRMSystemList><cpix:DRMSystem kid="{kid}" systemId="edef8ba9-79d6-4ace-a3c8-27dcd51d21ed"><cpix:PSSH/></cpix:DRMSystem></cpix:DRMSystemList>
<cpix:ContentKeyUsageRuleList><cpix:ContentKeyUsageRule kid="{kid}" intendedTrackType="ALL"><cpix:VideoFilter/></cpix:ContentKeyUsageRule></cpix:ContentKeyUsageRuleList>
</cpix:CPIX>"#
    )
}

/// Two instances of a fleet (one Redis) asked at the same moment for the same new key ID of
/// the same content: each generates a key, one write wins, and both answer the key stored.
#[tokio::test]
async fn instances_asked_at_once_for_a_new_key_id_answer_the_one_key_stored() {
    let redis = licensegate_testkit::Redis::start();
    let store = format!(
        "[store]\nkind = \"redis\"\nredis_url = \"{}\"\n",
        redis.url()
    );
    let (first, second) = (
        Gate::start_ready(&config_with_store(&store)).await,
        Gate::start_ready(&config_with_store(&store)).await,
    );
    let plain_value = |answer: &str| {
        let start = answer.find("<pskc:PlainValue>").unwrap() + "<pskc:PlainValue>".len();
        let end = start + answer[start..].find('<').unwrap();
        answer[start..end].to_string()
    };
    for round in 0..20 {
        let (content, kid) = (
            format!("race-{round}"),
            format!("22222222-2222-4333-8444-5555555555{round:02}"),
        );
        let ((status_1, answer_1, _), (status_2, answer_2, _)) = tokio::join!(
            speke(&first, Some("2.0"), document_for(&content, &kid)),
            speke(&second, Some("2.0"), document_for(&content, &kid)),
        );
        assert_eq!((status_1, status_2), (200, 200), "{answer_1}\n{answer_2}");
        let key = plain_value(&answer_1);
        assert_eq!(key, plain_value(&answer_2), "round {round}");
        let license: Value = clearkey_key(&second, &content, &kid, "ann", &[&content])
            .await
            .json()
            .await
            .unwrap();
        let stored = base64::engine::general_purpose::STANDARD
            .decode(&key)
            .unwrap();
        assert_eq!(
            license["keys"][0]["k"],
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(stored),
            "round {round}"
        );
    }
}

#[tokio::test]
async fn malformed_requests_are_answered_as_speke_specifies() {
    let gate = Gate::start_ready(&config()).await;
    let (status, body, headers) = speke(&gate, None, document("m")).await;
    assert_eq!((status, body.as_str()), (422, "Unsupported SPEKE version"));
    assert!(
        headers["x-speke-user-agent"]
            .to_str()
            .unwrap()
            .starts_with("licensegate/")
    );
    let (status, body, headers) = speke(&gate, Some("2.0"), document("")).await;
    assert_eq!((status, body.as_str()), (422, "Missing CPIX@contentId"));
    assert_eq!(headers["x-speke-version"], "2.0");
    let entity = document("m").replacen(
        "?>",
        "?><!DOCTYPE cpix:CPIX [<!ENTITY secret SYSTEM \"file:///etc/hostname\">]>",
        1,
    );
    let (status, body, _) = speke(&gate, Some("2.0"), entity).await;
    assert_eq!(status, 422);
    assert!(body.starts_with("Malformed CPIX document"), "{body}");
    let (status, _, _) = speke(&gate, Some("2.0"), "x".repeat(2 * 1024 * 1024)).await;
    assert_eq!(status, 413);
    let wrong_token = client()
        .post(gate.admin("/speke/v2"))
        .bearer_auth(ADMIN_TOKEN)
        .header("X-Speke-Version", "2.0")
        .body(document("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_token.status(), 401);
    let (status, body, _) = speke(&gate, Some("2.0"), document("movie-1")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<pskc:PlainValue>"), "{body}");
}
