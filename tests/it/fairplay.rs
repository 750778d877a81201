//! FairPlay end to end: every envelope players send, through every provider kind, against
//! simulators that read each vendor's envelope as the vendor documents it; the CKC back in the
//! player's envelope; content from skd URIs; the application certificate.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use licensegate_sim::fairplay::{certificate, ckc_for};
use licensegate_testkit::{
    AXINOM_COM_KEY, AXINOM_COM_KEY_ID, DRMTODAY_SECRET, Gate, GateConfig, Sim, client, problem,
    user_token,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const GENERIC_BODIES: [&str; 6] = [
    "raw",
    "base64",
    "form",
    "form-unescaped",
    "json",
    "apple-json",
];

/// Bytes that look like an SPC (version 1, then noise) of `len` bytes, different per `seed`.
fn spc(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut bytes = vec![0, 0, 0, 1];
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

fn kid(index: usize) -> String {
    format!("{index:08x}-0000-4000-8000-00000000f00d")
}

/// Every provider under test: its name, the `[providers.NAME]` body, and the content served
/// through it.
struct Vendors {
    sims: Vec<Sim>,
    providers: Vec<(String, String)>,
}

fn vendors() -> Vendors {
    let axinom = Sim::start(&["--vendor", "axinom"]);
    let drmtoday = Sim::start(&["--vendor", "drmtoday"]);
    let pallycon = Sim::start(&["--vendor", "pallycon"]);
    let expressplay = Sim::start(&["--vendor", "expressplay"]);
    let generic = Sim::start(&[]);
    let base = |sim: &Sim| format!("http://127.0.0.1:{}", sim.port);
    let mut providers = vec![
        (
            "axinom".to_string(),
            format!(
                r#"kind = "axinom"
endpoints = {{ fairplay = ["{}/AcquireLicense"] }}
[providers.axinom.settings]
com_key_id = "{AXINOM_COM_KEY_ID}"
com_key = "{AXINOM_COM_KEY}""#,
                base(&axinom)
            ),
        ),
        (
            "drmtoday".to_string(),
            format!(
                r#"kind = "drmtoday"
endpoints = {{ fairplay = ["{}/license-server-fairplay/"] }}
[providers.drmtoday.settings]
merchant = "sim-merchant"
key_id = "sim-key"
secret = "{DRMTODAY_SECRET}""#,
                base(&drmtoday)
            ),
        ),
        (
            "pallycon".to_string(),
            format!(
                r#"kind = "pallycon"
endpoints = {{ fairplay = ["{}/ri/licenseManager.do"] }}
[providers.pallycon.settings]
site_id = "SIM0"
site_key = "sim-site-key-0123456789abcdefghi"
access_key = "sim-access-key""#,
                base(&pallycon)
            ),
        ),
        (
            "expressplay".to_string(),
            format!(
                r#"kind = "expressplay"
endpoints = {{ fairplay = ["{0}/hms/fp/rights/"] }}
[providers.expressplay.settings]
token_url = "{0}/hms/wv/token"
fairplay_token_url = "{0}/hms/fp/token"
customer_authenticator = "sim-authenticator""#,
                base(&expressplay)
            ),
        ),
    ];
    for body in GENERIC_BODIES {
        providers.push((
            format!("generic-{body}"),
            format!(
                r#"kind = "generic"
endpoints = ["{}/fairplay/{body}"]
[providers.generic-{body}.settings]
fairplay_body = "{body}""#,
                base(&generic)
            ),
        ));
    }
    Vendors {
        sims: vec![axinom, drmtoday, pallycon, expressplay, generic],
        providers,
    }
}

impl Vendors {
    fn sim_for(&self, provider: &str) -> &Sim {
        let index = match provider {
            "axinom" => 0,
            "drmtoday" => 1,
            "pallycon" => 2,
            "expressplay" => 3,
            _ => 4,
        };
        &self.sims[index]
    }

    /// One content per provider (`fp-<provider>`, key ID `kid(i)`), plus `other` with its own
    /// key, and the gate routing FairPlay to the first provider.
    async fn gate(&self, extra: &str) -> Gate {
        let mut catalog = String::new();
        let mut config = GateConfig::new().auth("").catalog();
        for (index, (name, body)) in self.providers.iter().enumerate() {
            config = config.with(&format!("[providers.{name}]\n{body}"));
            catalog.push_str(&format!(
                "[content.fp-{name}]\nkey_ids = [\"{kid}\"]\nkeys = {{ \"{kid}\" = \"00112233445566778899aabbccddeeff\" }}\nfairplay_iv = \"0123456789abcdef0123456789abcdef\"\nprovider = \"{name}\"\n\n",
                kid = kid(index)
            ));
        }
        catalog.push_str(&format!(
            "[content.other]\nkey_ids = [\"{}\"]\nprovider = \"{}\"\n",
            kid(99),
            self.providers[0].0
        ));
        let config = config
            .routes(&[("fairplay", &self.providers[0].0)])
            .with(extra)
            .build();
        Gate::ready(Gate::start_with_files(
            &config,
            &[("catalog.toml", catalog.as_bytes())],
        ))
        .await
    }
}

/// The envelopes players send, by name: the body and its content type.
fn player_bodies(spc: &[u8], uri: &str) -> Vec<(&'static str, Vec<u8>, Option<&'static str>)> {
    let b64 = STANDARD.encode(spc);
    let escape =
        |text: &str| url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
    let whole_escaped = escape(&format!("spc={b64}"));
    let form = "application/x-www-form-urlencoded";
    vec![
        ("raw", spc.to_vec(), None),
        ("raw", spc.to_vec(), Some("application/octet-stream")),
        ("base64", b64.clone().into_bytes(), Some("text/plain")),
        ("form", format!("spc={b64}").into_bytes(), Some(form)),
        (
            "form",
            format!("spc={}", escape(&b64)).into_bytes(),
            Some(form),
        ),
        ("form", whole_escaped.clone().into_bytes(), Some(form)),
        ("form", escape(&whole_escaped).into_bytes(), None),
        (
            "json",
            json!({ "spc": b64 }).to_string().into_bytes(),
            Some("application/json"),
        ),
        (
            "apple-json",
            json!({"fairplay-streaming-request": {"version": 1, "streaming-keys": [
                {"id": 7, "uri": uri, "spc": b64}]}})
            .to_string()
            .into_bytes(),
            Some(form),
        ),
    ]
}

/// The CKC out of the player's envelope, as that player reads it.
fn player_reads(format: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    match format {
        "raw" => {
            assert_eq!(content_type, "application/octet-stream");
            body.to_vec()
        }
        "base64" | "form" => {
            assert_eq!(content_type, "text/plain");
            STANDARD.decode(body).unwrap()
        }
        "json" => {
            let value: Value = serde_json::from_slice(body).unwrap();
            STANDARD.decode(value["ckc"].as_str().unwrap()).unwrap()
        }
        "apple-json" => {
            let value: Value = serde_json::from_slice(body).unwrap();
            let key = &value["fairplay-streaming-response"]["streaming-keys"][0];
            assert_eq!(key["id"], 7);
            STANDARD.decode(key["ckc"].as_str().unwrap()).unwrap()
        }
        other => panic!("no player format {other}"),
    }
}

/// Whether the gate's log holds `needle` within a few seconds (the access line follows the
/// answer).
async fn logged(gate: &Gate, needle: &str) -> bool {
    for _ in 0..60 {
        if gate.log().contains(needle) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

async fn post(
    gate: &Gate,
    query: &str,
    body: Vec<u8>,
    content_type: Option<&str>,
) -> reqwest::Response {
    let mut request = client()
        .post(format!("{}{query}", gate.license_url("fairplay", None)))
        .bearer_auth(user_token("ann", &["*"]))
        .header("Origin", "https://player.example")
        .body(body);
    if let Some(content_type) = content_type {
        request = request.header("Content-Type", content_type);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn every_player_envelope_through_every_provider_kind_carries_spc_and_ckc_unchanged() {
    let vendors = vendors();
    let gate = vendors.gate("").await;
    let mut seed = 0u64;
    for (index, (provider, _)) in vendors.providers.iter().enumerate() {
        let sim = vendors.sim_for(provider);
        let uri = format!("skd://{}", kid(index));
        for case in 0..player_bodies(&[0], &uri).len() {
            seed += 1;
            // 2 to 10 KiB, a different size and content every time.
            let spc = spc(2048 + (seed as usize * 997) % 8192, seed);
            let (format, body, content_type) = player_bodies(&spc, &uri).swap_remove(case);
            let response = post(
                &gate,
                &format!("?content=fp-{provider}"),
                body,
                content_type,
            )
            .await;
            let status = response.status();
            let headers = response.headers().clone();
            let answer = response.bytes().await.unwrap();
            assert_eq!(
                status,
                200,
                "{provider} with a {format} player: {}",
                String::from_utf8_lossy(&answer)
            );
            let content_type = headers["content-type"].to_str().unwrap();
            assert_eq!(
                player_reads(format, content_type, &answer),
                ckc_for(&spc),
                "{provider} with a {format} player"
            );
            assert_eq!(headers["content-length"], answer.len().to_string().as_str());
            assert_eq!(
                headers["access-control-allow-origin"],
                "https://player.example"
            );
            let stats = sim.stats().await;
            assert_eq!(
                stats["last_spc_sha256"],
                hex::encode(Sha256::digest(&spc)),
                "{provider} received another SPC from a {format} player"
            );
        }
    }
    let stats = vendors.sim_for("drmtoday").stats().await;
    assert_eq!(stats["last_fairplay_fields"], json!([]));
}

#[tokio::test]
async fn persistent_policies_ask_drmtoday_for_offline_keys() {
    let vendors = vendors();
    let gate = vendors
        .gate("[policies.default]\npersistent = true\nlicense_duration_seconds = 86400")
        .await;
    let spc = spc(4096, 42);
    let response = post(&gate, "?content=fp-drmtoday", spc.clone(), None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().as_ref(), ckc_for(&spc));
    let stats = vendors.sim_for("drmtoday").stats().await;
    assert_eq!(stats["last_fairplay_fields"], json!([["offline", "true"]]));
}

#[tokio::test]
async fn answers_follow_the_configured_format_when_set() {
    let vendors = vendors();
    let gate = vendors
        .gate("[fairplay]\nanswer_format = \"ckc-xml\"")
        .await;
    let spc = spc(3000, 7);
    let response = post(&gate, "?content=fp-pallycon", spc.clone(), None).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let inner = text
        .strip_prefix("<ckc>")
        .unwrap()
        .strip_suffix("</ckc>")
        .unwrap();
    assert_eq!(STANDARD.decode(inner).unwrap(), ckc_for(&spc));
}

#[tokio::test]
async fn malformed_requests_are_400_and_reach_no_vendor() {
    let vendors = vendors();
    let gate = vendors.gate("").await;
    let form = Some("application/x-www-form-urlencoded");
    let oversized = STANDARD.encode(vec![7u8; 64 * 1024 + 1]);
    for (body, content_type) in [
        (b"spc=not*base64!".to_vec(), form),
        (b"spc=AAAA&assetId".to_vec(), form),
        (b"spc".to_vec(), form),
        (br#"{"ckc":"AAAA"}"#.to_vec(), None),
        (b"not an spc at all!".to_vec(), Some("text/plain")),
        (br#"["spc"]"#.to_vec(), None),
        (br#"{"spc":"AAAA""#.to_vec(), None),
        (
            br#"{"fairplay-streaming-request":{"version":1,"streaming-keys":[]}}"#.to_vec(),
            None,
        ),
    ] {
        let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
        let response = post(&gate, "?content=fp-axinom", body, content_type).await;
        assert_eq!(response.status(), 400, "{shown}");
        problem(response, 400, "challenge_malformed").await;
    }
    // An SPC beyond any real one is refused before it is read whole.
    let response = post(
        &gate,
        "?content=fp-axinom",
        format!("spc={oversized}").into_bytes(),
        form,
    )
    .await;
    problem(response, 413, "body_too_large").await;
    let stats = vendors.sim_for("axinom").stats().await;
    assert_eq!(stats["last_license_request_uri"], Value::Null);
}

#[tokio::test]
async fn skd_uris_name_the_content_and_a_stranger_key_is_refused() {
    let vendors = vendors();
    let gate = vendors
        .gate(
            "[fairplay]\nskd_patterns = [\"^skd://keys\\\\.example/movies/(?P<content>[a-z-]+)$\"]",
        )
        .await;
    let kid0 = kid(0);
    let kid0_hex = kid0.replace('-', "");
    let b64 = STANDARD.encode(spc(2500, 3));
    let apple = |uri: &str| {
        json!({"fairplay-streaming-request": {"version": 1, "streaming-keys": [
            {"id": 1, "uri": uri, "spc": b64}]}})
        .to_string()
        .into_bytes()
    };
    // Axinom's form, DRMtoday's, EZDRM's, a configured pattern, and the host as content.
    for (uri, in_header) in [
        (
            format!("skd://{kid0}:0123456789ABCDEF0123456789ABCDEF"),
            false,
        ),
        (
            format!("skd://drmtoday?assetId=fp-axinom&variantId=hd&keyId={kid0_hex}"),
            false,
        ),
        (format!("skd://fps.ezdrm.com/;{kid0}"), true),
        ("skd://keys.example/movies/fp-axinom".to_string(), true),
        ("skd://fp-axinom".to_string(), false),
    ] {
        let response = if in_header {
            client()
                .post(gate.license_url("fairplay", None))
                .bearer_auth(user_token("ann", &["*"]))
                .header("X-FairPlay-Uri", &uri)
                .body(spc(2500, 3))
                .send()
                .await
                .unwrap()
        } else {
            post(&gate, "", apple(&uri), None).await
        };
        assert_eq!(response.status(), 200, "{uri}");
        let request_id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        // Without a caller's trace, the trace is named after the request.
        let trace_id = request_id.replace('-', "");
        let line = format!(
            "request_id={request_id} trace_id={trace_id} drm=\"fairplay\" provider=\"axinom\" \
             content_id=\"fp-axinom\""
        );
        assert!(logged(&gate, &line).await, "{uri}");
    }
    // Apple's Safari sample names the content in the form.
    let form = format!("spc={b64}&assetId=fp-axinom");
    let response = post(
        &gate,
        "",
        form.into_bytes(),
        Some("application/x-www-form-urlencoded"),
    )
    .await;
    assert_eq!(response.status(), 200);
    // A key of another content, named beside the content: refused before any vendor call.
    let before = vendors.sim_for("axinom").stats().await["fairplay_licenses"].clone();
    let stranger = format!("skd://{}", kid(99));
    let response = post(&gate, "?content=fp-axinom", apple(&stranger), None).await;
    problem(response, 403, "kid_not_in_content").await;
    let uri = format!(
        "skd://drmtoday?assetId=fp-axinom&keyId={}",
        kid(1).replace('-', "")
    );
    let response = post(&gate, "", apple(&uri), None).await;
    problem(response, 403, "kid_not_in_content").await;
    let response = post(&gate, "", apple("https://not-skd/"), None).await;
    problem(response, 400, "challenge_malformed").await;
    let response = post(
        &gate,
        "",
        apple("skd://drmtoday?assetId=fp-axinom&keyId=zz"),
        None,
    )
    .await;
    problem(response, 400, "challenge_malformed").await;
    // Entitlement is decided for the content the query names: the skd URI may not name another.
    let response = post(
        &gate,
        "?content=fp-axinom",
        apple("skd://drmtoday?assetId=fp-pallycon"),
        None,
    )
    .await;
    problem(response, 403, "content_mismatch").await;
    let after = vendors.sim_for("axinom").stats().await["fairplay_licenses"].clone();
    assert_eq!(before, after);
}

#[tokio::test]
async fn pallycon_refusals_inside_200_answers_become_problems() {
    // A wrong access key: PallyCon refuses the token, with a 200.
    let pallycon = Sim::start(&["--vendor", "pallycon"]);
    let provider = format!(
        r#"kind = "pallycon"
endpoints = {{ fairplay = ["http://127.0.0.1:{}/ri/licenseManager.do"] }}
[providers.pallycon.settings]
site_id = "SIM0"
site_key = "sim-site-key-0123456789abcdefghi"
access_key = "a-wrong-access-key""#,
        pallycon.port
    );
    let broken = Vendors {
        sims: Vec::new(),
        providers: vec![("pallycon".into(), provider)],
    };
    let gate = broken.gate("").await;
    let response = post(&gate, "?content=fp-pallycon", spc(2048, 9), None).await;
    let headers = response.headers().clone();
    let body = problem(response, 403, "vendor_refused").await;
    assert_eq!(body["vendor_code"], "4010");
    assert!(
        body["vendor_message"]
            .as_str()
            .unwrap()
            .contains("hash mismatch")
    );
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://player.example"
    );
    assert!(logged(&gate, "4010: hash mismatch").await);
}

#[tokio::test]
async fn certificates_are_fetched_once_for_100_players_and_served_as_der() {
    let vendors = vendors();
    let gate = vendors.gate("").await;
    for provider in ["drmtoday", "pallycon"] {
        let url = gate.url(&format!("/v1/fairplay/certificate?content=fp-{provider}"));
        let client = client();
        let requests = (0..100).map(|_| {
            client
                .get(&url)
                .header("Origin", "https://player.example")
                .send()
        });
        for response in futures_util::future::join_all(requests).await {
            let response = response.unwrap();
            assert_eq!(response.status(), 200, "{provider}");
            assert!(
                response.headers()["cache-control"]
                    .to_str()
                    .unwrap()
                    .starts_with("public, max-age=")
            );
            assert_eq!(
                response.headers()["access-control-allow-origin"],
                "https://player.example"
            );
            assert_eq!(response.bytes().await.unwrap().as_ref(), certificate());
        }
        let stats = vendors.sim_for(provider).stats().await;
        assert_eq!(stats["certificates"], 1, "{provider}");
    }
    // A provider with no certificate endpoint and no file.
    let response = client()
        .get(gate.url("/v1/fairplay/certificate?content=fp-axinom"))
        .send()
        .await
        .unwrap();
    problem(response, 404, "certificate_unavailable").await;
}

#[tokio::test]
async fn a_configured_certificate_file_is_served_without_asking_the_vendor() {
    let sim = Sim::start(&[]);
    let der = certificate();
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        STANDARD.encode(&der)
    );
    let config = GateConfig::new()
        .provider(
            "vendor",
            &format!(
                "kind = \"passthrough\"\nendpoints = [\"{}/fairplay/raw\"]\nfairplay_certificate_file = \"${{LG_DIR}}/fps.pem\"",
                sim.url().trim_end_matches("/AcquireLicense")
            ),
        )
        .routes(&[("fairplay", "vendor")])
        .build();
    let gate = Gate::ready(Gate::start_with_files(
        &config,
        &[("fps.pem", pem.as_bytes())],
    ))
    .await;
    let response = client()
        .get(gate.url("/v1/fairplay/certificate"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().as_ref(), der);
    // Without a catalog, the content comes from the skd URI, and the player's envelope still
    // goes both ways.
    let spc = spc(5000, 11);
    let body = json!({ "spc": STANDARD.encode(&spc) }).to_string();
    let response = client()
        .post(gate.license_url("fairplay", None))
        .header("X-FairPlay-Uri", "skd://movie-9")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        STANDARD.decode(answer["ckc"].as_str().unwrap()).unwrap(),
        ckc_for(&spc)
    );
    assert!(logged(&gate, "content_id=\"movie-9\"").await);
}

/// Debian's nginx as the vendor over h2c: it echoes the base64 SPC back as the CKC, and answers
/// PallyCon's 200-with-error. The envelopes and the held answer work with a server not ours.
#[tokio::test]
async fn nginx_as_an_h2_vendor_echoes_and_refuses_inside_a_200() {
    let nginx = licensegate_testkit::Nginx::start(
        r#"listen 127.0.0.1:{port} http2;
        location /echo { echo_read_request_body; echo_request_body; }
        location /refuse { default_type application/json;
            return 200 '{"errorCode":"8001","message":"Invalid token"}'; }"#,
    );
    let vendors = Vendors {
        sims: Vec::new(),
        providers: vec![
            (
                "echo".into(),
                format!(
                    "kind = \"generic\"\nendpoints = [\"{}\"]\n[providers.echo.settings]\nfairplay_body = \"base64\"\nfairplay_ckc = \"base64\"",
                    nginx.url("http", "/echo")
                ),
            ),
            (
                "refuse".into(),
                format!(
                    "kind = \"pallycon\"\nendpoints = [\"{}\"]\n[providers.refuse.settings]\nsite_id = \"S\"\nsite_key = \"sim-site-key-0123456789abcdefghi\"\naccess_key = \"k\"",
                    nginx.url("http", "/refuse")
                ),
            ),
        ],
    };
    let gate = vendors.gate("").await;
    for seed in 0..10 {
        let spc = spc(2048 + seed as usize * 800, 100 + seed);
        let body = json!({ "spc": STANDARD.encode(&spc) })
            .to_string()
            .into_bytes();
        let response = post(&gate, "?content=fp-echo", body, None).await;
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(
            STANDARD.decode(answer["ckc"].as_str().unwrap()).unwrap(),
            spc
        );
    }
    let response = post(&gate, "?content=fp-refuse", spc(3000, 1), None).await;
    let body = problem(response, 403, "vendor_refused").await;
    assert_eq!(body["vendor_code"], "8001");
    assert_eq!(body["vendor_message"], "Invalid token");
    // nginx writes its access line after the answer has gone out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while nginx.access_log().len() < 11 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(nginx.access_log().len(), 11);
}
