//! Territories: content played only where its catalog entry allows, the player's country from a
//! MaxMind-format database nobody here wrote (one written with the PyPI package mmdb-writer, and
//! the GeoLite2 database the PyPI package maxminddb-geolite2 ships) or from a trusted CDN's
//! header; renewals checked again; the database read again when it changes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use licensegate_testkit::{
    Gate, GateConfig, Player, Sim, client, fixture, problem, repository, user_token,
};
use serde_json::Value;

const KID: &str = "01020304-0506-0708-090a-0b0c0d0e0f10";
const KID_B64: &str = "AQIDBAUGBwgJCgsMDQ4PEA";
const GERMANY: &str = "203.0.113.5";
const UNITED_STATES: &str = "198.51.100.7";
const NOWHERE: &str = "192.0.2.1";
const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

fn catalog() -> String {
    let entry = |id: &str, rule: &str| {
        format!(
            "[content.{id}]\nkey_ids = [\"{KID}\"]\nkeys = {{ \"{KID}\" = \"00112233445566778899aabbccddeeff\" }}\n{rule}\n"
        )
    };
    // One key ID may serve one content only; each entry here names the demo key's content
    // under another key ID but the first.
    [
        entry("euro", "territories = { allow = [\"DE\", \"AT\"] }"),
        entry("world", "territories = { block = [\"US\"] }")
            .replace(KID, "a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf"),
        entry("open", "").replace(KID, "b0b1b2b3-b4b5-b6b7-b8b9-babbbcbdbebf"),
    ]
    .concat()
}

fn script() -> PathBuf {
    repository().join("tests/territories/write_db.py")
}

/// A country database written with mmdb-writer, in `path`.
fn write_database(path: &Path, mappings: &[&str]) {
    let status = Command::new("python3")
        .arg(script())
        .arg(path)
        .args(mappings)
        .status()
        .expect("python3 with mmdb-writer (scripts/setup.sh installs it)");
    assert!(status.success());
}

fn geolite2() -> String {
    let output = Command::new("python3")
        .arg(script())
        .arg("--geolite2")
        .output()
        .expect("python3 with maxminddb-geolite2 (scripts/setup.sh installs it)");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

fn config(database: &str, trusted_proxies: &str, extra: &str) -> String {
    GateConfig::new()
        .auth("")
        .catalog()
        .provider("builtin", "kind = \"clearkey\"")
        .routes(&[("clearkey", "builtin")])
        .with(&format!(
            "[territories]\ndatabase = \"{database}\"\nreload_seconds = 1\n\
             country_header = \"CF-IPCountry\"\n{extra}"
        ))
        .build()
        .replace(
            "[server]",
            &format!("[server]\ntrusted_proxies = {trusted_proxies}"),
        )
}

async fn start(config: &str) -> Gate {
    Gate::ready(Gate::start_with_files(
        config,
        &[("catalog.toml", catalog().as_bytes())],
    ))
    .await
}

/// A ClearKey request for `content` from a player the trusted proxy in front says is at
/// `address`, with the CDN's country header when given.
async fn license(
    gate: &Gate,
    content: &str,
    address: &str,
    country: Option<&str>,
) -> reqwest::Response {
    let kid = match content {
        "euro" => KID_B64,
        "world" => "oKGio6SlpqeoqaqrrK2urw",
        _ => "sLGys7S1tre4ubq7vL2-vw",
    };
    let mut request = client()
        .post(gate.license_url("clearkey", Some(content)))
        .bearer_auth(user_token("ann", &["*"]))
        .header("X-Forwarded-For", address);
    if let Some(country) = country {
        request = request.header("CF-IPCountry", country);
    }
    request
        .body(format!("{{\"kids\":[\"{kid}\"],\"type\":\"temporary\"}}"))
        .send()
        .await
        .unwrap()
}

async fn refused(response: reqwest::Response, country: Option<&str>) {
    let body = problem(response, 403, "territory_not_allowed").await;
    assert_eq!(
        body["type"],
        "https://dashif.org/drm-problems/not-authorized"
    );
    assert_eq!(body["country"].as_str(), country, "{body}");
}

#[tokio::test]
async fn content_plays_only_in_its_territories_by_a_written_database() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("countries.mmdb");
    write_database(&database, &["203.0.113.0/24=DE", "198.51.100.0/24=US"]);
    let gate = start(&config(
        database.to_str().unwrap(),
        "[\"127.0.0.1/32\"]",
        "",
    ))
    .await;
    for content in ["euro", "world", "open"] {
        assert_eq!(
            license(&gate, content, GERMANY, None).await.status(),
            200,
            "{content}"
        );
    }
    refused(
        license(&gate, "euro", UNITED_STATES, None).await,
        Some("US"),
    )
    .await;
    refused(
        license(&gate, "world", UNITED_STATES, None).await,
        Some("US"),
    )
    .await;
    assert_eq!(
        license(&gate, "open", UNITED_STATES, None).await.status(),
        200
    );
    // An address the database does not know: refused where territories matter.
    refused(license(&gate, "euro", NOWHERE, None).await, None).await;
    assert_eq!(license(&gate, "open", NOWHERE, None).await.status(), 200);
    // The CDN's header, from the trusted proxy, says where the player is.
    assert_eq!(
        license(&gate, "euro", UNITED_STATES, Some("DE"))
            .await
            .status(),
        200
    );
    refused(
        license(&gate, "euro", GERMANY, Some("US")).await,
        Some("US"),
    )
    .await;
    refused(license(&gate, "euro", GERMANY, Some("XX")).await, None).await;

    // The database changes: within its reload period licensegate answers by the new one.
    write_database(&database, &["203.0.113.0/24=DE", "198.51.100.0/24=AT"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = license(&gate, "euro", UNITED_STATES, None).await.status();
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the new database was never read");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The log line follows the swap, written by the logger's own thread.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gate.log().contains("territory database reloaded") {
        assert!(Instant::now() < deadline, "the reload was not logged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A peer that is not a trusted proxy is the player: its forwarded address and country header
/// are not believed.
#[tokio::test]
async fn an_untrusted_peer_cannot_claim_a_country() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("countries.mmdb");
    write_database(&database, &["203.0.113.0/24=DE"]);
    let gate = start(&config(database.to_str().unwrap(), "[]", "")).await;
    refused(license(&gate, "euro", GERMANY, Some("DE")).await, None).await;
}

/// MaxMind's own GeoLite2 data (as packaged on PyPI), IPv4 and IPv6.
#[tokio::test]
async fn the_geolite2_database_places_players() {
    let gate = start(&config(&geolite2(), "[\"127.0.0.1/32\"]", "")).await;
    assert_eq!(
        license(&gate, "euro", "194.25.2.129", None).await.status(),
        200
    );
    refused(license(&gate, "euro", "8.8.8.8", None).await, Some("US")).await;
    refused(
        license(&gate, "world", "2001:4860:4860::8888", None).await,
        Some("US"),
    )
    .await;
    refused(
        license(&gate, "euro", "81.2.69.142", None).await,
        Some("GB"),
    )
    .await;
}

/// A stream's renewals are checked as its first license was: a player who moved out of the
/// territories loses it.
#[tokio::test]
async fn renewals_are_checked_again() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("countries.mmdb");
    write_database(&database, &["203.0.113.0/24=DE", "198.51.100.0/24=US"]);
    let sim = Sim::start(&["--widevine-renewal-seconds", "4"]);
    let config = GateConfig::new()
        .auth("")
        .catalog()
        .provider(
            "sim",
            &format!("kind = \"passthrough\"\nendpoints = [\"{}\"]", sim.url()),
        )
        .provider("builtin", "kind = \"clearkey\"")
        .routes(&[("widevine", "sim"), ("clearkey", "builtin")])
        .with(&format!(
            "[territories]\ndatabase = \"{}\"\n[streams]\nmax_per_user = 2\n\
             [store]\npath = \"${{LG_DIR}}/licensegate.db\"\n[admin]\ntoken = \"{ADMIN_TOKEN}\"\n",
            database.display()
        ))
        .build()
        .replace("[server]", "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]");
    let gate = start(&config).await;
    let mut player = Player::new(
        gate.license_url("widevine", Some("euro")),
        user_token("ann", &["*"]),
    );
    player.set_header("X-Forwarded-For", GERMANY);
    assert_eq!(
        player
            .start(fixture("license-request-kid-01020304.bin"))
            .await
            .code(),
        "ok"
    );
    assert_eq!(player.renew().await.code(), "ok");
    player.set_header("X-Forwarded-For", UNITED_STATES);
    let answer = player.renew().await;
    assert_eq!(answer.code(), "territory_not_allowed", "{}", answer.json());
    let active: Value = gate.admin_json("/v1/users/ann/streams", ADMIN_TOKEN).await;
    assert_eq!(
        active["active"], 0,
        "the refused stream must not keep its slot: {active}"
    );

    // A ClearKey stream's heartbeat, its renewal, is checked the same way.
    let licensed = client()
        .post(gate.license_url("clearkey", Some("euro")))
        .bearer_auth(user_token("ann", &["*"]))
        .header("X-Forwarded-For", GERMANY)
        .body(format!(
            "{{\"kids\":[\"{KID_B64}\"],\"type\":\"temporary\"}}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(licensed.status(), 200);
    let stream = licensed.headers()["X-Playback-Session"]
        .to_str()
        .unwrap()
        .to_string();
    let heartbeat = |address: &'static str| {
        client()
            .post(gate.url(&format!("/v1/streams/{stream}")))
            .bearer_auth(user_token("ann", &["*"]))
            .header("X-Forwarded-For", address)
            .send()
    };
    assert_eq!(heartbeat(GERMANY).await.unwrap().status(), 200);
    refused(heartbeat(UNITED_STATES).await.unwrap(), Some("US")).await;
}
