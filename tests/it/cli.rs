//! The `licensegate` command line as operators use it.

use std::process::Command;

const SECRET_ENV: &[(&str, &str)] = &[("LICENSEGATE_JWT_SECRET", licensegate_testkit::JWT_SECRET)];

fn licensegate(args: &[&str]) -> std::process::Output {
    licensegate_with_env(args, &[])
}

fn licensegate_with_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_licensegate"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

#[test]
fn check_accepts_every_shipped_config() {
    // Examples name TLS files by environment variable, as a deployment would.
    let tls = tempfile::tempdir().unwrap();
    let (cert, key) = (tls.path().join("cert.pem"), tls.path().join("key.pem"));
    let certificate = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(&cert, certificate.cert.pem()).unwrap();
    std::fs::write(&key, certificate.signing_key.serialize_pem()).unwrap();
    let devices_db = tls.path().join("devices.db");
    let env = [
        ("LICENSEGATE_TLS_CERT", cert.to_str().unwrap()),
        ("LICENSEGATE_TLS_KEY", key.to_str().unwrap()),
        SECRET_ENV[0],
        // The provider examples' secrets; only their shape is checked.
        ("AXINOM_COM_KEY_ID", "69e54088-e9e0-4530-8c1a-1eb6dcd0d14e"),
        (
            "AXINOM_COM_KEY",
            "4861292d027e269791093327e62ceefdbea489a4c7e5a4974cc904b840fd7c0f",
        ),
        ("EXPRESSPLAY_AUTHENTICATOR", "check-only"),
        ("DRMTODAY_MERCHANT", "check-only"),
        ("DRMTODAY_KEY_ID", "check-only"),
        (
            "DRMTODAY_SECRET",
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        ),
        ("PALLYCON_SITE_ID", "CHCK"),
        ("PALLYCON_SITE_KEY", "check-only-site-key-32-character"),
        ("PALLYCON_ACCESS_KEY", "check-only"),
        ("LICENSEGATE_ADMIN_TOKEN", "check-only-admin-token"),
        ("LICENSEGATE_DEVICES_DB", devices_db.to_str().unwrap()),
    ];
    let mut checked = 0;
    for dir in ["conf", "conf/examples"] {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "toml") {
                let output =
                    licensegate_with_env(&["check", "--config", path.to_str().unwrap()], &env);
                assert!(
                    output.status.success(),
                    "{}: {}",
                    path.display(),
                    String::from_utf8_lossy(&output.stderr)
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 2, "only {checked} configs found");
}

#[test]
fn check_names_the_bad_key_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string("conf/licensegate.toml").unwrap();
    let bad = shipped.replace("connect_ms = 1000", "connect_ms = 1000\nconect_ms = 5");
    assert_ne!(
        bad, shipped,
        "the shipped config changed shape; update this test"
    );
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, bad).unwrap();
    let output = licensegate_with_env(&["check", "--config", path.to_str().unwrap()], SECRET_ENV);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("providers.sim.timeouts.conect_ms"),
        "{stderr}"
    );
}

/// `check` reports what would stop `serve`, naming the key; values (URLs with passwords,
/// secrets) stay out of the message.
#[test]
fn check_fails_where_serve_would() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string("conf/licensegate.toml").unwrap();
    // The cases bring stores of their own.
    let store = "[store]\npath = \"${LICENSEGATE_STORE_PATH:-licensegate.db}\"\n";
    assert!(shipped.contains(store));
    let shipped = shipped.replace(store, "");
    let devices = "\n[devices]\nmax_per_user = 2\n";
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let empty = empty.to_str().unwrap();
    let cases = [
        (
            shipped.replace("demo.toml}", "missing.toml}"),
            "catalog.path",
        ),
        (
            format!(
                "{shipped}{devices}[store]\nkind = \"redis\"\nredis_url = \"redis://:pw-s3cr3t@\"\n"
            ),
            "store.redis_url",
        ),
        (
            // Written where it used to live, the key is still read, and named where it lives now.
            format!("{shipped}{devices}path = \"/nonexistent-dir/devices.db\"\n"),
            "store.path",
        ),
        (
            shipped.replace(
                "[server]",
                &format!("[listeners.tls]\ncert = \"{empty}\"\nkey = \"{empty}\"\n[server]"),
            ),
            "listeners.tls",
        ),
        (
            shipped.replace("threads = 2", "threads = = 2"),
            "(syntax) line 14, column",
        ),
    ];
    for (config, key) in cases {
        let path = dir.path().join("case.toml");
        std::fs::write(&path, &config).unwrap();
        let output =
            licensegate_with_env(&["check", "--config", path.to_str().unwrap()], SECRET_ENV);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{key}: {stderr}");
        assert!(stderr.contains(key), "{key}: {stderr}");
        assert!(!stderr.contains("s3cr3t"), "{stderr}");
    }
}

#[test]
fn check_names_an_unset_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("env.toml");
    let shipped = std::fs::read_to_string("conf/licensegate.toml").unwrap();
    std::fs::write(
        &path,
        shipped.replace(
            "${LICENSEGATE_SIM_URL:-http://127.0.0.1:8090/AcquireLicense}",
            "${LICENSEGATE_TEST_UNSET_URL}",
        ),
    )
    .unwrap();
    let output = licensegate_with_env(&["check", "--config", path.to_str().unwrap()], SECRET_ENV);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("providers.sim.endpoints[0]")
            && stderr.contains("LICENSEGATE_TEST_UNSET_URL"),
        "{stderr}"
    );
}

#[test]
fn version_prints_the_crate_version() {
    let output = licensegate(&["--version"]);
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("licensegate {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn keys_derive_prints_the_key_in_hex_and_base64() {
    let output = licensegate(&[
        "keys",
        "derive",
        "--seed",
        "XVBovsmzhP9gRIZxWfFta3VVRPzVEWmJsazEJ46I",
        "--kid",
        "339C45B5-FB6D-4BD9-994C-EABD9D41C95B",
    ]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("key hex a537cdc0ca65841406d525e7bf22d754"),
        "{stdout}"
    );
    assert!(
        stdout.contains("key b64 pTfNwMplhBQG1SXnvyLXVA=="),
        "{stdout}"
    );
    let output = licensegate(&["keys", "derive", "--seed", "short", "--kid", "x"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--seed"));
}

#[test]
fn kids_lists_every_key_id_of_the_demo_manifest() {
    let output = licensegate(&["kids", "--mpd", "tests/fixtures/clearkey-demo.mpd"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let kid = "01020304-0506-0708-090a-0b0c0d0e0f10";
    for label in ["default_KID", "clearkey", "playready", "widevine"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(label) && l.ends_with(kid)),
            "{label} missing:\n{stdout}"
        );
    }
    assert!(stdout.starts_with("adaptation set 0 (video)"), "{stdout}");
}

#[test]
fn token_mints_a_jwt_the_shipped_config_accepts() {
    let output = licensegate_with_env(
        &[
            "token",
            "--sub",
            "alice",
            "--entitle",
            "demo",
            "--entitle",
            "tier:gold",
        ],
        SECRET_ENV,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(licensegate_testkit::JWT_SECRET.as_bytes()),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(
        claims["entitlements"],
        serde_json::json!(["demo", "tier:gold"])
    );
    let output = licensegate(&["token", "--sub", "alice"]);
    assert!(!output.status.success(), "no secret, no token");
}

/// The container health check: ready only while `/readyz` says 200.
#[tokio::test]
async fn probe_succeeds_only_against_a_ready_licensegate() {
    let gate = licensegate_testkit::Gate::start_ready(
        &licensegate_testkit::GateConfig::new()
            .provider("builtin", "kind = \"clearkey\"")
            .routes(&[("clearkey", "builtin")])
            .build(),
    )
    .await;
    let admin = format!("127.0.0.1:{}", gate.admin_port);
    let ready = licensegate(&["probe", "--admin", &admin]);
    assert!(ready.status.success(), "{ready:?}");
    let alive = licensegate(&["probe", "--admin", &admin, "--path", "/healthz"]);
    assert!(alive.status.success(), "{alive:?}");
    let missing = licensegate(&["probe", "--admin", &admin, "--path", "/nothing-here"]);
    assert!(!missing.status.success(), "{missing:?}");
    // As the image runs it: the admin listener from the environment, on every address.
    let every_address = format!("0.0.0.0:{}", gate.admin_port);
    let from_env = licensegate_with_env(&["probe"], &[("LICENSEGATE_ADMIN_ADDR", &every_address)]);
    assert!(from_env.status.success(), "{from_env:?}");
    let nothing = format!("127.0.0.1:{}", licensegate_testkit::free_port());
    let refused = licensegate(&["probe", "--admin", &nothing]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("/readyz"),
        "{refused:?}"
    );
}
