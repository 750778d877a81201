//! A packager's round trip, through parts nobody here wrote: the `cpix` library asks
//! licensegate's key service for a new title's keys, a real ffmpeg encrypts a clip into
//! fragmented DASH with them and the signaling licensegate returned goes into its manifest,
//! Debian's nginx serves it, and players of it are entitled and licensed by the catalog entry
//! the exchange left: Shaka Player in Chromium plays it through licensegate's ClearKey server
//! (the key from that entry), and pywidevine builds its challenge from the Widevine `pssh`
//! licensegate returned (the key from a vendor given it, as packagers export keys to vendors).

use std::path::Path;
use std::process::Command;

use base64::Engine;
use licensegate_testkit::{Gate, GateConfig, Nginx, Sim, client, repository, user_token};
use serde_json::Value;

use super::e2e::run_player;
use super::sessions::cdm_script;
use super::speke::{ADMIN_TOKEN, KEK, SPEKE_TOKEN, exchange};

const CONTENT: &str = "premiere-2026";

fn config(widevine_vendor: Option<&Sim>) -> String {
    let mut config = GateConfig::new()
        .allowed_origins(&["*"])
        .provider("builtin", "kind = \"clearkey\"")
        .auth("");
    config = match widevine_vendor {
        Some(sim) => config
            .provider(
                "vendor",
                &format!("kind = \"passthrough\"\nendpoints = [\"{}\"]", sim.url()),
            )
            .routes(&[("clearkey", "builtin"), ("widevine", "vendor")]),
        None => config.routes(&[("clearkey", "builtin")]),
    };
    config
        .with(&format!(
            "[admin]\ntoken = \"{ADMIN_TOKEN}\"\n\
             [store]\npath = \"${{LG_DIR}}/licensegate.db\"\n\
             [catalog]\nsource = \"store\"\nkey_encryption_key = \"{KEK}\"\n\
             [speke]\ntoken = \"{SPEKE_TOKEN}\"\nlicense_url = \"http://127.0.0.1:${{LG_PORT}}\"\n\
             [demo]\nroot = \"{}\"\n",
            repository().join("examples/web").display()
        ))
        .build()
}

/// The ffmpeg that encrypts fragments: imageio-ffmpeg's (PyPI), as Debian 12's 5.1 leaves the
/// fragments' sample encryption boxes out (scripts/setup.sh says more).
fn packaging_ffmpeg() -> String {
    let output = Command::new("python3")
        .args([
            "-c",
            "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())",
        ])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "imageio-ffmpeg (scripts/setup.sh installs it): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// Encrypts 6 s of test pattern with `key` under `kid` into single-file DASH in `dir`
/// (`clip.mpd`, `clip-stream0.mp4`), the manifest's `ContentProtection` being what the key
/// service signaled for each DRM system.
fn package(dir: &Path, kid: &str, key: &str, signaling: &[Value]) {
    let compact_kid = kid.replace('-', "");
    let encryption =
        format!("encryption_scheme=cenc-aes-ctr:encryption_key={key}:encryption_kid={compact_kid}");
    let status = Command::new(packaging_ffmpeg())
        .current_dir(dir)
        .args(["-hide_banner", "-v", "error", "-nostdin", "-f", "lavfi"])
        .args(["-i", "testsrc2=duration=6:size=320x240:rate=25"])
        .args([
            "-c:v",
            "libx264",
            "-profile:v",
            "baseline",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-g", "25", "-sc_threshold", "0"])
        .args([
            "-f",
            "dash",
            "-single_file",
            "1",
            "-format_options",
            &encryption,
        ])
        .arg("clip.mpd")
        .status()
        .expect("ffmpeg runs");
    assert!(status.success());

    let mut protection = format!(
        "<ContentProtection schemeIdUri=\"urn:mpeg:dash:mp4protection:2011\" value=\"cenc\" \
         cenc:default_KID=\"{kid}\"/>"
    );
    for system in signaling {
        let system_id = match system["system"].as_str().unwrap() {
            "widevine" => "edef8ba9-79d6-4ace-a3c8-27dcd51d21ed",
            "playready" => "9a04f079-9840-4286-ab92-e65be0885f95",
            "clearkey" => "1077efec-c0b2-4d02-ace3-3c1e52e2fb4b",
            other => panic!("no DASH signaling for {other}"),
        };
        protection.push_str(&format!(
            "<ContentProtection schemeIdUri=\"urn:uuid:{system_id}\">{}</ContentProtection>",
            system["content_protection_data"].as_str().unwrap()
        ));
    }
    let manifest = std::fs::read_to_string(dir.join("clip.mpd")).unwrap();
    let set_start = manifest.find("<AdaptationSet").unwrap();
    let set_end = set_start + manifest[set_start..].find('>').unwrap() + 1;
    let manifest = format!(
        "{}{protection}{}",
        &manifest[..set_end],
        &manifest[set_end..]
    )
    .replacen("<MPD ", "<MPD xmlns:cenc=\"urn:mpeg:cenc:2013\" ", 1);
    std::fs::write(dir.join("clip.mpd"), manifest).unwrap();
}

/// Debian's nginx as the CDN: the packaged files, to pages of any origin.
fn cdn() -> Nginx {
    Nginx::start(
        r#"listen 127.0.0.1:{port};
        root {dir};
        types { application/dash+xml mpd; video/mp4 mp4; }
        add_header Access-Control-Allow-Origin * always;
        add_header Access-Control-Allow-Headers Range always;
        add_header Access-Control-Expose-Headers Content-Range always;
        location / { if ($request_method = OPTIONS) { return 204; } }"#,
    )
}

fn player_url(gate: &Gate, cdn: &Nginx, entitled: &[&str]) -> String {
    format!(
        "http://127.0.0.1:{}/demo/?license=http://127.0.0.1:{}&content={CONTENT}&manifest={}&token={}",
        gate.admin_port,
        gate.port,
        cdn.url("http", "/clip.mpd"),
        user_token("viewer", entitled)
    )
}

#[tokio::test]
async fn a_title_packaged_with_keys_from_the_key_service_plays_and_licenses_its_players() {
    let mut gate = Gate::start_ready(&config(None)).await;
    let kid = uuid::Uuid::new_v4().to_string();
    let answer = exchange(
        &gate,
        CONTENT,
        &[&kid],
        "cenc",
        "clearkey,widevine,playready",
    )
    .unwrap();
    let key = answer["keys"][&kid].as_str().unwrap().to_string();
    let cdn = cdn();
    package(cdn.dir(), &kid, &key, answer["systems"].as_array().unwrap());

    let screenshot = repository().join("target/e2e-packaged-playing.png");
    let state = run_player(&player_url(&gate, &cdn, &[CONTENT]), Some(&screenshot));
    assert!(state["currentTime"].as_f64().unwrap() >= 3.0, "{state}");
    assert!(state["decodedFrames"].as_u64().unwrap() > 0, "{state}");
    assert_eq!(state["license"]["status"], 200, "{state}");
    eprintln!(
        "Shaka played the packaged title {}s; screenshot {}",
        state["currentTime"],
        screenshot.display()
    );
    let state = run_player(&player_url(&gate, &cdn, &["another-title"]), None);
    assert_eq!(state["error"]["status"], 403, "{state}");
    assert_eq!(state["error"]["problem"], "not_entitled", "{state}");
    assert_eq!(state["currentTime"], 0.0, "{state}");

    // The title's Widevine vendor holds its key (packagers export keys to vendors by CPIX too);
    // the platform routes Widevine to it with a reload.
    let service = tempfile::tempdir().unwrap();
    let made = Command::new("python3")
        .arg(cdm_script("widevine_cdm.py"))
        .arg("service")
        .arg(service.path())
        .status()
        .expect("python3 with pywidevine (scripts/setup.sh installs it)");
    assert!(made.success());
    let certificate = service.path().join("service-certificate.bin");
    let service_key = service.path().join("service.pem");
    let sim = Sim::start(&[
        "--widevine-content-key",
        &format!("{kid}:{key}"),
        "--widevine-service-certificate",
        certificate.to_str().unwrap(),
        "--widevine-service-key",
        service_key.to_str().unwrap(),
    ]);
    std::fs::write(gate.dir().join("licensegate.toml"), config(Some(&sim))).unwrap();
    let reloaded = client()
        .post(gate.admin("/admin/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(reloaded.status(), 200, "{}", reloaded.text().await.unwrap());
    gate = Gate::ready(gate).await;

    let widevine = answer["systems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|system| system["system"] == "widevine")
        .unwrap();
    let content = serde_json::json!({
        CONTENT: {"kids": [kid], "keys": {&kid: key}, "pssh": widevine["pssh"]},
    });
    let tokens = serde_json::json!({
        "entitled": user_token("ann", &[CONTENT]),
        "unentitled": user_token("bob", &["another-title"]),
    });
    let run = Command::new("python3")
        .arg(cdm_script("widevine_cdm.py"))
        .arg("packaged")
        .args(["--dir", service.path().to_str().unwrap()])
        .args(["--gate", gate.url("").trim_end_matches('/')])
        .args(["--admin", gate.admin("").trim_end_matches('/')])
        .args(["--admin-token", ADMIN_TOKEN])
        .args(["--tokens", &tokens.to_string()])
        .args(["--content", &content.to_string()])
        .args([
            "--media",
            cdn.dir().join("clip-stream0.mp4").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&run.stdout);
    println!("{report}");
    assert!(
        run.status.success(),
        "{report}\n{}\n{}",
        String::from_utf8_lossy(&run.stderr),
        gate.log()
    );
    assert_eq!(
        report.lines().filter(|l| l.starts_with("ok: ")).count(),
        2,
        "{report}"
    );
    let key_bytes = hex::decode(&key).unwrap();
    let log = gate.log();
    for form in [
        key.clone(),
        base64::engine::general_purpose::STANDARD.encode(&key_bytes),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&key_bytes),
    ] {
        assert!(!log.contains(&form), "the key in the log as {form}");
    }
}
