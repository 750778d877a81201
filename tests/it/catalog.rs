//! A catalog kept in the store: entries put through the admin API license at once, keys sealed
//! at rest and never told back, a key ID belongs to one content, the key encryption key rotates,
//! and two instances on one Redis see each other's changes within the cache's TTL.

use std::time::{Duration, Instant};

use licensegate_testkit::{Gate, GateConfig, Redis, client, problem, user_token};
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
const KEK: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const NEXT_KEK: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";
/// The content key the tests store; it must never be read back from the store or an answer.
const KEY_HEX: &str = "00112233445566778899aabbccddeeff";
const KID: &str = "01020304-0506-0708-090a-0b0c0d0e0f10";
/// `KID` as a ClearKey request names it (base64url).
const KID_B64: &str = "AQIDBAUGBwgJCgsMDQ4PEA";

fn config(store: &str, catalog_extra: &str) -> String {
    GateConfig::new()
        .provider("builtin", "kind = \"clearkey\"")
        .routes(&[("clearkey", "builtin")])
        .auth("")
        .with(&format!(
            "[admin]\ntoken = \"{ADMIN_TOKEN}\"\n\
             [catalog]\nsource = \"store\"\ncache_seconds = 1\n{catalog_extra}\n{store}"
        ))
        .build()
}

fn embedded() -> String {
    "[store]\npath = \"${LG_DIR}/licensegate.db\"\n".to_string()
}

fn with_kek(kek: &str, previous: &[&str]) -> String {
    let previous: Vec<String> = previous.iter().map(|k| format!("\"{k}\"")).collect();
    format!(
        "key_encryption_key = \"{kek}\"\nprevious_key_encryption_keys = [{}]",
        previous.join(", ")
    )
}

async fn admin(
    gate: &Gate,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = client()
        .request(method, gate.admin(path))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

async fn clearkey(gate: &Gate, content: &str) -> reqwest::Response {
    client()
        .post(gate.license_url("clearkey", Some(content)))
        .bearer_auth(user_token("ann", &["*"]))
        .body(format!(
            "{{\"kids\":[\"{KID_B64}\"],\"type\":\"temporary\"}}"
        ))
        .send()
        .await
        .unwrap()
}

fn movie() -> Value {
    json!({"key_ids": [KID], "keys": {KID: KEY_HEX}})
}

#[tokio::test]
async fn entries_put_through_the_admin_api_license_and_their_keys_stay_sealed() {
    let gate = Gate::start_ready(&config(&embedded(), &with_kek(KEK, &[]))).await;
    problem(clearkey(&gate, "movie-1").await, 404, "content_unknown").await;

    let put = admin(
        &gate,
        reqwest::Method::PUT,
        "/v1/catalog/movie-1",
        Some(movie()),
    )
    .await;
    assert_eq!(put.status(), 201);
    let told = put.text().await.unwrap();
    assert!(!told.contains(KEY_HEX), "{told}");
    let told: Value = serde_json::from_str(&told).unwrap();
    assert_eq!(told["key_ids"], json!([KID]));
    assert_eq!(told["keys"], 1);

    // This instance sees its own put at once, its earlier "unknown" notwithstanding.
    let license = clearkey(&gate, "movie-1").await;
    assert_eq!(license.status(), 200);
    let license: Value = license.json().await.unwrap();
    assert_eq!(license["keys"][0]["kid"], KID_B64);
    assert_eq!(license["keys"][0]["k"], "ABEiM0RVZneImaq7zN3u_w");

    // Found by its key ID too, with no content id named.
    let by_kid = client()
        .post(gate.license_url("clearkey", None))
        .bearer_auth(user_token("ann", &["*"]))
        .body(format!(
            "{{\"kids\":[\"{KID_B64}\"],\"type\":\"temporary\"}}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(by_kid.status(), 200);

    let read = admin(&gate, reqwest::Method::GET, "/v1/catalog/movie-1", None).await;
    assert_eq!(read.status(), 200);
    let read = read.text().await.unwrap();
    assert!(!read.contains(KEY_HEX), "{read}");

    let page: Value = admin(&gate, reqwest::Method::GET, "/v1/catalog?limit=10", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["entries"][0]["id"], "movie-1");
    assert_eq!(page["next"], Value::Null);

    // At rest: the record holds the key ID in the clear and the key only sealed.
    let database = rusqlite::Connection::open(gate.dir().join("licensegate.db")).unwrap();
    let record: String = database
        .query_row(
            "SELECT record FROM catalog WHERE id = 'movie-1'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert!(record.contains(KID), "{record}");
    assert!(!record.to_lowercase().contains(KEY_HEX), "{record}");
    assert!(!gate.log().contains(KEY_HEX));

    // A key ID belongs to one content.
    let taken = admin(
        &gate,
        reqwest::Method::PUT,
        "/v1/catalog/movie-2",
        Some(movie()),
    )
    .await;
    let body = problem(taken, 409, "catalog_key_id_taken").await;
    assert_eq!(body["owner"], "movie-1");
    // Invalid entries are refused with the key path, and without the value.
    let invalid = admin(
        &gate,
        reqwest::Method::PUT,
        "/v1/catalog/movie-3",
        Some(json!({"key_ids": ["0a0b0c0d-0506-0708-090a-0b0c0d0e0f10"], "keys": {"0a0b0c0d-0506-0708-090a-0b0c0d0e0f10": "abc"}})),
    )
    .await;
    let body = problem(invalid, 422, "catalog_entry_invalid").await;
    assert!(body["key"].as_str().unwrap().contains("keys"), "{body}");
    let without_token = client()
        .get(gate.admin("/v1/catalog/movie-1"))
        .send()
        .await
        .unwrap();
    problem(without_token, 401, "admin_token_invalid").await;

    let deleted = admin(&gate, reqwest::Method::DELETE, "/v1/catalog/movie-1", None).await;
    assert_eq!(deleted.status(), 200);
    problem(clearkey(&gate, "movie-1").await, 404, "content_unknown").await;
    let gone = admin(&gate, reqwest::Method::DELETE, "/v1/catalog/movie-1", None).await;
    problem(gone, 404, "content_unknown").await;
}

#[tokio::test]
async fn the_key_encryption_key_rotates_and_a_record_needs_one_that_opens_it() {
    let mut gate = Gate::start_ready(&config(&embedded(), &with_kek(KEK, &[]))).await;
    let put = admin(
        &gate,
        reqwest::Method::PUT,
        "/v1/catalog/movie-1",
        Some(movie()),
    )
    .await;
    assert_eq!(put.status(), 201);
    let dir = gate.dir().to_path_buf();

    // The new key seals from now on; the old one, kept as previous, still opens the record.
    std::fs::write(
        dir.join("licensegate.toml"),
        config(&embedded(), &with_kek(NEXT_KEK, &[KEK])),
    )
    .unwrap();
    gate.crash_and_restart();
    let mut gate = Gate::ready(gate).await;
    assert_eq!(clearkey(&gate, "movie-1").await.status(), 200);

    // Without it, the record does not open: 503, and no key in any line.
    std::fs::write(
        dir.join("licensegate.toml"),
        config(&embedded(), &with_kek(NEXT_KEK, &[])),
    )
    .unwrap();
    gate.crash_and_restart();
    let gate = Gate::ready(gate).await;
    problem(clearkey(&gate, "movie-1").await, 503, "catalog_unavailable").await;
    assert!(!gate.log().contains(KEY_HEX));
}

#[tokio::test]
async fn two_instances_on_one_redis_see_each_others_changes_within_the_ttl() {
    let redis = Redis::start();
    let store = format!(
        "[store]\nkind = \"redis\"\nredis_url = \"{}\"\n",
        redis.url()
    );
    let first = Gate::start_ready(&config(&store, &with_kek(KEK, &[]))).await;
    let second = Gate::start_ready(&config(&store, &with_kek(KEK, &[]))).await;
    problem(clearkey(&second, "movie-1").await, 404, "content_unknown").await;

    let put = admin(
        &first,
        reqwest::Method::PUT,
        "/v1/catalog/movie-1",
        Some(movie()),
    )
    .await;
    assert_eq!(put.status(), 201);
    let started = Instant::now();
    while clearkey(&second, "movie-1").await.status() != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the second instance never saw it"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The key ID is taken fleet-wide.
    let taken = admin(
        &second,
        reqwest::Method::PUT,
        "/v1/catalog/movie-2",
        Some(movie()),
    )
    .await;
    problem(taken, 409, "catalog_key_id_taken").await;

    let deleted = admin(&first, reqwest::Method::DELETE, "/v1/catalog/movie-1", None).await;
    assert_eq!(deleted.status(), 200);
    let started = Instant::now();
    while clearkey(&second, "movie-1").await.status() != 404 {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the second instance kept it"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_bulk_import_stores_the_good_lines_and_names_each_bad_one() {
    let gate = Gate::start_ready(&config(&embedded(), &with_kek(KEK, &[]))).await;
    let other_kid = "0b0b0b0b-0506-0708-090a-0b0c0d0e0f10";
    let lines = [
        json!({"id": "movie-1", "key_ids": [KID], "keys": {KID: KEY_HEX}}).to_string(),
        "{not json".to_string(),
        json!({"key_ids": [other_kid]}).to_string(),
        json!({"id": "movie-3", "key_ids": [other_kid], "keys": {other_kid: "abc"}}).to_string(),
        json!({"id": "movie-4", "key_ids": [KID], "keys": {KID: KEY_HEX}}).to_string(),
        json!({"id": "movie-5", "key_ids": [other_kid], "policy": "nowhere"}).to_string(),
        String::new(),
        json!({"id": "movie-6", "key_ids": [other_kid], "keys": {other_kid: KEY_HEX}}).to_string(),
    ];
    // Sent in pieces that split lines, as a stream arrives.
    let body = lines.join("\n");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body
        .as_bytes()
        .chunks(7)
        .map(|chunk| Ok(chunk.to_vec()))
        .collect();
    let response = client()
        .post(gate.admin("/v1/catalog/import"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(!text.contains(KEY_HEX), "{text}");
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["lines"], 7, "{report}");
    assert_eq!(report["created"], 2, "{report}");
    assert_eq!(report["failed"], 5, "{report}");
    let errors: Vec<(u64, &str)> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        errors,
        [
            (2, "catalog_entry_invalid"),
            (3, "catalog_entry_invalid"),
            (4, "catalog_entry_invalid"),
            (5, "catalog_key_id_taken"),
            (6, "catalog_entry_invalid"),
        ],
        "{report}"
    );
    assert_eq!(report["errors"][2]["id"], "movie-3");
    assert!(
        report["errors"][2]["key"]
            .as_str()
            .unwrap()
            .contains("keys")
    );
    assert_eq!(report["errors"][4]["key"], "content.movie-5.policy");
    assert_eq!(clearkey(&gate, "movie-1").await.status(), 200);
    assert!(!gate.log().contains(KEY_HEX));
}

fn cli(gate: &Gate, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_licensegate"))
        .args(args)
        .arg("--config")
        .arg(gate.dir().join("licensegate.toml"))
        .env("LG_DIR", gate.dir())
        .env("LG_PORT", "1")
        .env("LG_ADMIN_PORT", "2")
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_command_line_imports_a_catalog_file_and_exports_what_a_second_store_takes_back() {
    let first = Gate::start_ready(&config(&embedded(), &with_kek(KEK, &[]))).await;
    let file = first.dir().join("catalog.toml");
    let mut text = String::new();
    for n in 0..600u32 {
        let kid = format!("{n:08x}-0000-4000-8000-000000000000");
        text.push_str(&format!(
            "[content.title-{n}]\nkey_ids = [\"{kid}\"]\nkeys = {{ \"{kid}\" = \"{KEY_HEX}\" }}\n"
        ));
    }
    std::fs::write(&file, text).unwrap();
    let imported = cli(&first, &["catalog", "import", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&imported.stderr);
    assert!(imported.status.success(), "{stderr}");
    assert!(stderr.contains("600 lines, 600 created"), "{stderr}");
    let kid = uuid::Uuid::parse_str("00000257-0000-4000-8000-000000000000").unwrap();
    use base64::Engine;
    let kid = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(kid.as_bytes());
    let license = client()
        .post(first.license_url("clearkey", Some("title-599")))
        .bearer_auth(user_token("ann", &["*"]))
        .body(format!("{{\"kids\":[\"{kid}\"],\"type\":\"temporary\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(license.status(), 200);

    let exported = cli(&first, &["catalog", "export"]);
    assert!(exported.status.success());
    let ndjson = String::from_utf8(exported.stdout).unwrap();
    assert_eq!(ndjson.lines().count(), 600);
    assert!(ndjson.contains(KEY_HEX), "an export carries the keys");

    let second = Gate::start_ready(&config(&embedded(), &with_kek(NEXT_KEK, &[]))).await;
    let path = second.dir().join("export.ndjson");
    std::fs::write(&path, &ndjson).unwrap();
    let imported = cli(&second, &["catalog", "import", path.to_str().unwrap()]);
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let again = cli(&second, &["catalog", "export"]);
    assert_eq!(String::from_utf8(again.stdout).unwrap(), ndjson);

    // A refused entry fails the command and is named.
    std::fs::write(&path, "{\"id\": \"x\", \"key_ids\": [\"nope\"]}\n").unwrap();
    let refused = cli(&second, &["catalog", "import", path.to_str().unwrap()]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("line 1 (x) content.x.key_ids"), "{stderr}");
}
