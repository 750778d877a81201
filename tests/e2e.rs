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
    let root = repo().join("examples/web");
    // The demo page, on the admin listener, is another origin than the license API.
    let config = GateConfig::new()
        .allowed_origins(&["*"])
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

/// What the player did on the page, read by `tests/e2e/play.mjs` in Chromium.
fn play(gate: &Gate, token: Option<&str>, screenshot: Option<&Path>) -> Value {
    let license = format!("http://127.0.0.1:{}", gate.port);
    let mut url = format!(
        "http://127.0.0.1:{}/demo/?license={license}",
        gate.admin_port
    );
    if let Some(token) = token {
        url.push_str(&format!("&token={token}"));
    }
    let mut command = Command::new("node");
    command
        .current_dir(repo().join("tests/e2e"))
        .arg("play.mjs")
        .arg(&url)
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
