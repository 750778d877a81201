//! A real player: Shaka Player in Debian's headless Chromium plays the encrypted demo stream
//! from licensegate's demo page, with licensegate's built-in ClearKey server as license server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use licensegate_testkit::{Gate, GateConfig, user_token};
use serde_json::Value;

const DEMO_KEY: &str = "00112233445566778899aabbccddeeff";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn config(catalog_key: &str) -> (String, String) {
    config_for(catalog_key, &["*"])
}

/// The demo page, on the admin listener, is another origin than the license API: `origins`
/// are those allowed to call it.
fn config_for(catalog_key: &str, origins: &[&str]) -> (String, String) {
    let root = repo().join("examples/web");
    let config = GateConfig::new()
        .allowed_origins(origins)
        .provider("builtin", "kind = \"clearkey\"")
        .routes(&[("clearkey", "builtin")])
        .auth("")
        .with(&format!(
            "[catalog]\npath = \"${{LG_DIR}}/catalog.toml\"\n[demo]\nroot = \"{}\"",
            root.display()
        ))
        .build();
    let catalog = format!(
        "[content.demo]\nkey_ids = [\"01020304-0506-0708-090a-0b0c0d0e0f10\"]\nkeys = {{ \"01020304-0506-0708-090a-0b0c0d0e0f10\" = \"{catalog_key}\" }}\n"
    );
    (config, catalog)
}

fn token(entitlements: &[&str]) -> String {
    user_token("viewer", entitlements)
}

/// What the player did on the Shaka page, read by `tests/e2e/play.mjs` in Chromium.
fn play(gate: &Gate, token: Option<&str>, screenshot: Option<&Path>) -> Value {
    play_page(gate, "", token, screenshot)
}

/// What the player did on the demo page `page` (`""`: Shaka's, `dashjs.html`: dash.js's).
fn play_page(gate: &Gate, page: &str, token: Option<&str>, screenshot: Option<&Path>) -> Value {
    let license = format!("http://127.0.0.1:{}", gate.port);
    let mut url = format!(
        "http://127.0.0.1:{}/demo/{page}?license={license}",
        gate.admin_port
    );
    if let Some(token) = token {
        url.push_str(&format!("&token={token}"));
    }
    run_player(&url, screenshot)
}

/// What the player on the page at `url` did within 20 s (`tests/e2e/play.mjs`, in Chromium).
pub(super) fn run_player(url: &str, screenshot: Option<&Path>) -> Value {
    let mut command = Command::new("node");
    command
        .current_dir(repo().join("tests/e2e"))
        .arg("play.mjs")
        .arg(url)
        .arg("20");
    if let Some(path) = screenshot {
        command.arg(path);
    }
    let output = command
        .output()
        .expect("node runs (scripts/setup.sh installs it)");
    assert!(
        output.status.success(),
        "play.mjs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&output.stdout));
    })
}

#[tokio::test]
async fn shaka_plays_through_licensegate_and_reads_its_refusals() {
    let (config, catalog) = config(DEMO_KEY);
    let gate = Gate::start_with_files(&config, &[("catalog.toml", catalog.as_bytes())]);
    let started = Instant::now();

    let screenshot = repo().join("target/e2e-playing.png");
    let state = play(&gate, Some(&token(&["demo"])), Some(&screenshot));
    assert!(state["currentTime"].as_f64().unwrap() >= 3.0, "{state}");
    assert!(state["decodedFrames"].as_u64().unwrap() > 0, "{state}");
    assert_eq!(state["license"]["status"], 200, "{state}");
    eprintln!(
        "played {}s in Chromium; the page measured the license at {} ms; screenshot {}",
        state["currentTime"],
        state["license"]["ms"],
        screenshot.display()
    );
    let metrics = gate.metrics().await;
    assert!(
        metrics.contains(
            "licensegate_license_request_duration_seconds_count{drm=\"clearkey\",outcome=\"ok\",provider=\"builtin\"} 1"
        ),
        "{metrics}"
    );

    for (token, status, code) in [
        (None, 401, "token_missing"),
        (Some("not-a-token".to_string()), 401, "token_malformed"),
        (Some(token(&["another-title"])), 403, "not_entitled"),
    ] {
        let state = play(&gate, token.as_deref(), None);
        assert_eq!(state["error"]["status"], status, "{state}");
        // The player read licensegate's problem JSON: CORS let it through.
        assert_eq!(state["error"]["problem"], code, "{state}");
        assert_eq!(state["currentTime"], 0.0, "{state}");
    }
    eprintln!("end-to-end cases took {:?}", started.elapsed());
}

/// dash.js, the DASH-IF reference player, sends its license requests with credentials (it does
/// whenever it sends an Authorization header): from an origin listed by name, the answers allow
/// them, so it plays, and it reads the refusal of a user not entitled.
#[tokio::test]
async fn dashjs_plays_with_credentials_from_a_listed_origin_and_reads_its_refusals() {
    let (config, catalog) = config_for(DEMO_KEY, &["http://127.0.0.1:${LG_ADMIN_PORT}"]);
    let gate = Gate::start_with_files(&config, &[("catalog.toml", catalog.as_bytes())]);
    let screenshot = repo().join("target/e2e-dashjs-playing.png");
    let state = play_page(
        &gate,
        "dashjs.html",
        Some(&token(&["demo"])),
        Some(&screenshot),
    );
    assert!(state["currentTime"].as_f64().unwrap() >= 3.0, "{state}");
    assert!(state["decodedFrames"].as_u64().unwrap() > 0, "{state}");
    assert_eq!(state["license"]["status"], 200, "{state}");
    eprintln!(
        "dash.js played {}s in Chromium; screenshot {}",
        state["currentTime"],
        screenshot.display()
    );
    let state = play_page(&gate, "dashjs.html", Some(&token(&["another-title"])), None);
    assert_eq!(state["error"]["status"], 403, "{state}");
    assert_eq!(state["error"]["problem"], "not_entitled", "{state}");
    assert_eq!(state["currentTime"], 0.0, "{state}");
}

#[tokio::test]
async fn a_wrong_key_in_the_catalog_plays_nothing() {
    let (config, catalog) = config("ffeeddccbbaa99887766554433221100");
    let gate = Gate::start_with_files(&config, &[("catalog.toml", catalog.as_bytes())]);
    let state = play(&gate, Some(&token(&["demo"])), None);
    assert_eq!(
        state["license"]["status"], 200,
        "the license itself is served: {state}"
    );
    assert!(
        !state["error"].is_null(),
        "Shaka must fail to decrypt: {state}"
    );
    assert_eq!(state["currentTime"], 0.0, "{state}");
    assert_eq!(state["playing"], false, "{state}");
}

/// The status page in Chromium while licenses flow: its charts draw the traffic, and a user's
/// device is looked up and freed from the page with the admin token. The screenshot is kept in
/// `target/status-page.png`.
#[tokio::test]
async fn the_status_page_charts_traffic_and_frees_a_device_from_the_page() {
    const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
    let sim = licensegate_testkit::Sim::start(&["--vendor", "axinom"]);
    let config = GateConfig::new()
        .provider(
            "axinom",
            &licensegate_testkit::axinom_provider("axinom", &sim),
        )
        .routes(&[("widevine", "axinom")])
        .auth("")
        .catalog()
        .with(&format!(
            "[devices]\nmax_per_user = 3\n[store]\npath = \"${{LG_DIR}}/licensegate.db\"\n\
             [admin]\ntoken = \"{ADMIN_TOKEN}\"\nstatus_root = \"{}\"",
            repo().join("web/status").display()
        ))
        .build();
    let catalog = "[content.demo]\nkey_ids = [\"01020304-0506-0708-090a-0b0c0d0e0f10\"]\n";
    let gate = Gate::ready(Gate::start_with_files(
        &config,
        &[("catalog.toml", catalog.as_bytes())],
    ))
    .await;
    let license_url = gate.license_url("widevine", Some("demo"));
    // The viewer registers a device once; the steady traffic comes from another user.
    let send = move |user: &'static str| {
        let url = license_url.clone();
        async move {
            licensegate_testkit::client()
                .post(url)
                .bearer_auth(user_token(user, &["*"]))
                .body(licensegate_testkit::fixture(
                    "license-request-kid-01020304.bin",
                ))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        send("viewer").await,
        200,
        "the viewer's device is registered"
    );
    let traffic = tokio::spawn(async move {
        let until = Instant::now() + std::time::Duration::from_secs(40);
        while Instant::now() < until {
            send("traffic").await;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });

    let screenshot = repo().join("target/status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let url = format!("http://127.0.0.1:{}/status", gate.admin_port);
    let shot = screenshot.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .current_dir(repo().join("tests/e2e"))
            .arg("status.mjs")
            .args([url.as_str(), ADMIN_TOKEN, "viewer"])
            .arg(&shot)
            .output()
            .expect("node runs (scripts/setup.sh installs it)")
    })
    .await
    .unwrap();
    traffic.abort();
    assert!(
        output.status.success(),
        "status.mjs failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        gate.log()
    );
    let page: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(page["samples"].as_u64().unwrap() >= 4, "{page}");
    assert!(
        page["peakRate"].as_f64().unwrap() > 1.0,
        "the charts drew no traffic: {page}"
    );
    assert_eq!(page["errors"], serde_json::json!([]), "{page}");
    assert_eq!(
        (
            page["devicesBefore"].as_u64(),
            page["devicesAfter"].as_u64()
        ),
        (Some(1), Some(0)),
        "{page}"
    );
    let devices: Value = licensegate_testkit::client()
        .get(gate.admin("/v1/devices/viewer"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        devices["devices"],
        serde_json::json!([]),
        "freed from the page"
    );
    let size = std::fs::metadata(&screenshot).unwrap().len();
    assert!(size > 20_000, "screenshot of {size} bytes");
    eprintln!("status page screenshot: {}", screenshot.display());
}
