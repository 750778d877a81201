//! Failover between vendors: a route or a content names providers in order, and a request the
//! first one provably did not license goes to the next, with that vendor's own authorization.
//! The failing vendors are Debian's nginx (answering as a vendor's gateway would) and the
//! simulator; every test counts what each vendor saw.

use std::time::Duration;

use licensegate_sim::license_for as sim_license;
use licensegate_testkit::{
    AXINOM_COM_KEY, AXINOM_COM_KEY_ID, DRMTODAY_SECRET, FIXTURE_CATALOG, Gate, GateConfig, Nginx,
    Sim, client, fixture, free_port, problem, user_token,
};
use serde_json::Value;

const ADMIN_TOKEN: &str = "failover-admin-token-0123456789";
const SOAP_ACTION: &str = "\"http://schemas.microsoft.com/DRM/2007/03/protocols/AcquireLicense\"";

fn axinom(name: &str, endpoint: &str) -> String {
    format!(
        "kind = \"axinom\"\nendpoints = [\"{endpoint}\"]\n[providers.{name}.settings]\n\
         com_key_id = \"{AXINOM_COM_KEY_ID}\"\ncom_key = \"{AXINOM_COM_KEY}\""
    )
}

/// DRMtoday, told to read a refusal's reason where the failing nginx writes it.
fn drmtoday(name: &str, endpoint: &str) -> String {
    format!(
        "kind = \"drmtoday\"\nendpoints = [\"{endpoint}\"]\nerror_header = \"X-AxDRM-ErrorMessage\"\n\
         [providers.{name}.settings]\n\
         merchant = \"sim-merchant\"\nkey_id = \"sim-key\"\nsecret = \"{DRMTODAY_SECRET}\"\n\
         algorithm = \"HS512\""
    )
}

/// Widevine and PlayReady routed to `primary`, then `backup`.
async fn gate(primary: &str, backup: &str, extra: &str) -> Gate {
    gate_with_catalog(primary, backup, extra, FIXTURE_CATALOG).await
}

async fn gate_with_catalog(primary: &str, backup: &str, extra: &str, catalog: &str) -> Gate {
    let config = GateConfig::new()
        .auth("")
        .catalog()
        .provider("primary", primary)
        .provider("backup", backup)
        .with(&format!(
            "[routes]\nwidevine = [\"primary\", \"backup\"]\nplayready = [\"primary\", \"backup\"]\n\
             [admin]\ntoken = \"{ADMIN_TOKEN}\"\n{extra}"
        ))
        .build();
    Gate::ready(Gate::start_with_files(
        &config,
        &[("catalog.toml", catalog.as_bytes())],
    ))
    .await
}

fn widevine() -> Vec<u8> {
    fixture("license-request-kid-01020304.bin")
}

async fn license(gate: &Gate, content: &str) -> reqwest::Response {
    client()
        .post(gate.license_url("widevine", Some(content)))
        .bearer_auth(user_token("ann", &["*"]))
        .body(widevine())
        .send()
        .await
        .unwrap()
}

async fn licenses(sim: &Sim) -> u64 {
    sim.stats().await["licenses"].as_u64().unwrap()
}

/// `licensegate_provider_failovers_total` by reason (`None`: every reason).
async fn failovers(gate: &Gate, reason: Option<&str>) -> f64 {
    gate.metrics()
        .await
        .lines()
        .filter(|line| line.starts_with("licensegate_provider_failovers_total{"))
        .filter(|line| reason.is_none_or(|reason| line.contains(&format!("reason=\"{reason}\""))))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

fn access_lines(gate: &Gate) -> Vec<String> {
    gate.log()
        .lines()
        .filter(|line| line.contains("licensegate::access"))
        .map(str::to_string)
        .collect()
}

/// A vendor's gateway in front of its license service, answering every request with `status`
/// and a reason in Axinom's header.
fn failing_vendor(status: u16) -> Nginx {
    Nginx::start(&format!(
        r#"listen 127.0.0.1:{{port}} http2;
        location / {{
            add_header X-AxDRM-ErrorMessage "nginx answered {status}" always;
            return {status} "no license\n";
        }}"#
    ))
}

/// A gateway's own error page: no vendor reason.
fn failing_gateway(status: u16) -> Nginx {
    Nginx::start(&format!(
        r#"listen 127.0.0.1:{{port}} http2;
        location / {{ return {status} "gateway error\n"; }}"#
    ))
}

/// Neither provider retries: each failover is the next of Pingora's attempts.
fn without_retries(provider: String) -> String {
    format!("retries = 0\n{provider}")
}

#[tokio::test]
async fn answers_that_say_no_license_was_issued_go_to_the_next_vendor_and_others_do_not() {
    let backup = Sim::start(&["--vendor", "drmtoday"]);
    let mut backup_licenses = 0;
    for status in [503, 429, 500] {
        let nginx = failing_vendor(status);
        let gate = gate(
            &without_retries(axinom("primary", &nginx.url("http", "/AcquireLicense"))),
            &without_retries(drmtoday("backup", &backup.url())),
            "",
        )
        .await;
        let response = license(&gate, "demo").await;
        assert_eq!(response.status(), 200, "{status}");
        let request_id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(
            response.bytes().await.unwrap().as_ref(),
            sim_license(&widevine()),
            "{status}"
        );
        backup_licenses += 1;
        assert_eq!(licenses(&backup).await, backup_licenses, "{status}");
        let seen = nginx.settled_access_log().await;
        assert_eq!(seen.len(), 1, "{status}: {seen:?}");
        assert!(
            seen[0].starts_with(&format!("{request_id} {status} ")),
            "{seen:?}"
        );
        let reason = format!("answer_{status}");
        assert_eq!(failovers(&gate, Some(&reason)).await, 1.0, "{status}");
        let access = access_lines(&gate);
        assert_eq!(access.len(), 1, "{access:?}");
        assert!(access[0].contains("provider=\"backup\""), "{access:?}");
        assert!(
            access[0].contains(&format!("failed_over=\"primary:{reason}\"")),
            "{access:?}"
        );
        let log = gate.log();
        assert!(
            log.contains(&format!("nginx answered {status}")),
            "the failing vendor's reason is kept: {log}"
        );
    }

    // A gateway's 502 or 504 does not tell whether the license service behind it finished,
    // nor does a 500 or 503 without the vendor's reason (Envoy's "upstream connect error or
    // disconnect/reset before headers"): the answer is the player's, and the next vendor is
    // not asked.
    for (status, nginx) in [
        (502, failing_vendor(502)),
        (504, failing_vendor(504)),
        (503, failing_gateway(503)),
        (500, failing_gateway(500)),
    ] {
        let gate = gate(
            &axinom("primary", &nginx.url("http", "/AcquireLicense")),
            &drmtoday("backup", &backup.url()),
            "",
        )
        .await;
        let response = license(&gate, "demo").await;
        assert_eq!(response.status(), status);
        assert_eq!(nginx.settled_access_log().await.len(), 1);
        assert_eq!(licenses(&backup).await, backup_licenses, "{status}");
        assert_eq!(failovers(&gate, None).await, 0.0);
    }

    // The last vendor of the list failing too: its own answer reaches the player.
    let nginx = failing_vendor(503);
    let refusing = failing_vendor(503);
    let gate = gate(
        &axinom("primary", &nginx.url("http", "/AcquireLicense")),
        &drmtoday("backup", &refusing.url("http", "/AcquireLicense")),
        "",
    )
    .await;
    let response = license(&gate, "demo").await;
    assert_eq!(response.status(), 503);
    assert_eq!(nginx.settled_access_log().await.len(), 1);
    assert_eq!(refusing.settled_access_log().await.len(), 1);
    assert_eq!(failovers(&gate, Some("answer_503")).await, 1.0);
}

#[tokio::test]
async fn a_vendor_nobody_can_reach_is_failed_over_and_the_gate_stays_ready() {
    let backup = Sim::start(&["--vendor", "drmtoday"]);
    let nowhere = format!("http://127.0.0.1:{}/AcquireLicense", free_port());
    // Ready: the route's second provider has a healthy endpoint.
    let gate = gate(
        &axinom("primary", &nowhere),
        &drmtoday("backup", &backup.url()),
        "",
    )
    .await;
    for n in 0..6 {
        let response = license(&gate, "demo").await;
        assert_eq!(response.status(), 200, "request {n}");
    }
    assert_eq!(licenses(&backup).await, 6);
    // Its health check failing, no attempt is made on it at all.
    assert_eq!(failovers(&gate, Some("no_healthy_endpoint")).await, 6.0);
    let ready = client().get(gate.admin("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

/// The primary's listener between two health checks is gone, or its HTTP/2 stack refuses
/// every stream: its retries spent (or none allowed), the request goes to the backup.
#[tokio::test]
async fn a_vendor_failing_between_health_checks_is_failed_over_after_its_retries() {
    let backup = Sim::start(&["--vendor", "drmtoday"]);
    let refusing = Sim::start(&["--vendor", "axinom", "--refuse-connections", "1000"]);
    for (retries, refuse) in [(2, false), (0, false), (0, true), (2, true)] {
        let primary = Sim::start(&["--vendor", "axinom"]);
        let endpoint = if refuse {
            refusing.url()
        } else {
            primary.url()
        };
        let config = GateConfig::new()
            .auth("")
            .catalog()
            .with(&format!(
                "[providers.primary]\nhealth_check_interval_seconds = 3600\nretries = {retries}\n{}",
                axinom("primary", &endpoint)
            ))
            .provider("backup", &drmtoday("backup", &backup.url()))
            .with("[routes]\nwidevine = [\"primary\", \"backup\"]")
            .build();
        let gate = Gate::ready(Gate::start_with_files(
            &config,
            &[("catalog.toml", FIXTURE_CATALOG.as_bytes())],
        ))
        .await;
        // Gone after its one health check passed.
        drop(primary);
        let before = licenses(&backup).await;
        for n in 0..3 {
            let response = license(&gate, "demo").await;
            assert_eq!(response.status(), 200, "retries {retries}, request {n}");
        }
        assert_eq!(licenses(&backup).await, before + 3);
        let connect = failovers(&gate, Some("connect")).await;
        let ejected = failovers(&gate, Some("no_healthy_endpoint")).await;
        assert_eq!(connect + ejected, 3.0, "retries {retries}, refuse {refuse}");
        assert!(connect >= 1.0, "retries {retries}, refuse {refuse}");
        if refuse && retries > 0 {
            // Each refused stream was retried on a new connection before the failover.
            let metrics = gate.metrics().await;
            assert!(
                metrics.lines().any(|line| line.starts_with(
                    "licensegate_upstream_retries_total{provider=\"primary\",reason=\"goaway\"}"
                )),
                "{metrics}"
            );
        }
    }
}

/// Three providers in order: the first answers 503, the second 429, the third licenses.
#[tokio::test]
async fn a_list_of_three_is_asked_in_order() {
    let first = failing_vendor(503);
    let second = failing_vendor(429);
    let third = Sim::start(&["--vendor", "axinom"]);
    let config = GateConfig::new()
        .auth("")
        .catalog()
        .provider(
            "first",
            &axinom("first", &first.url("http", "/AcquireLicense")),
        )
        .provider(
            "second",
            &drmtoday("second", &second.url("http", "/AcquireLicense")),
        )
        .provider("third", &axinom("third", &third.url()))
        .with("[routes]\nwidevine = [\"first\", \"second\", \"third\"]")
        .build();
    let gate = Gate::ready(Gate::start_with_files(
        &config,
        &[("catalog.toml", FIXTURE_CATALOG.as_bytes())],
    ))
    .await;
    assert_eq!(license(&gate, "demo").await.status(), 200);
    assert_eq!(
        (
            first.settled_access_log().await.len(),
            second.settled_access_log().await.len()
        ),
        (1, 1)
    );
    assert_eq!(licenses(&third).await, 1);
    let access = access_lines(&gate);
    assert!(
        access[0].contains("failed_over=\"first:answer_503,second:answer_429\""),
        "{access:?}"
    );
    assert!(access[0].contains("provider=\"third\""), "{access:?}");
}

#[tokio::test]
async fn a_failing_token_service_hands_the_request_on_before_any_challenge_leaves() {
    let expressplay = Sim::start(&["--vendor", "expressplay", "--authenticator", "the-real-one"]);
    let base = format!("http://127.0.0.1:{}", expressplay.port);
    let primary = format!(
        "kind = \"expressplay\"\nendpoints = [\"{base}/hms/wv/rights/\"]\n\
         [providers.primary.settings]\ntoken_url = \"{base}/hms/wv/token\"\n\
         playready_token_url = \"{base}/hms/pr/token\"\n\
         customer_authenticator = \"sim-authenticator\""
    );
    let backup = Sim::start(&["--vendor", "drmtoday"]);
    let gate = gate(&primary, &drmtoday("backup", &backup.url()), "").await;
    let response = license(&gate, "demo").await;
    assert_eq!(response.status(), 200);
    let stats = expressplay.stats().await;
    assert_eq!(stats["token_requests"], 1);
    assert_eq!(
        stats["last_license_request_uri"],
        Value::Null,
        "no challenge reached the first vendor"
    );
    assert_eq!(stats["licenses"], 0);
    assert_eq!(licenses(&backup).await, 1);
    assert_eq!(failovers(&gate, Some("authorization")).await, 1.0);
}

#[tokio::test]
async fn a_request_the_first_vendor_may_have_licensed_never_reaches_a_second() {
    let backup = Sim::start(&["--vendor", "drmtoday"]);
    // The challenge left, and no answer came in time.
    let slow = Sim::start(&["--vendor", "axinom", "--delay-ms", "3000"]);
    let gate_on_slow = gate(
        &format!(
            "{}\n[providers.primary.timeouts]\nread_ms = 800\ntotal_ms = 1000",
            axinom("primary", &slow.url())
        ),
        &drmtoday("backup", &backup.url()),
        "",
    )
    .await;
    problem(
        license(&gate_on_slow, "demo").await,
        504,
        "upstream_timeout",
    )
    .await;
    // The challenge reached the first vendor, which may yet license it.
    assert!(
        slow.stats().await["last_license_request_uri"].is_string(),
        "the challenge reached the first vendor"
    );
    // The connection reset once the challenge arrived.
    let resetting = Sim::start(&["--vendor", "axinom", "--reset-connections", "1"]);
    let gate_on_reset = gate(
        &axinom("primary", &resetting.url()),
        &drmtoday("backup", &backup.url()),
        "",
    )
    .await;
    let response = license(&gate_on_reset, "demo").await;
    assert_eq!(response.status(), 502);
    assert_eq!(resetting.stats().await["resets"], 1);
    assert_eq!(licenses(&backup).await, 0, "the second vendor saw nothing");
    for gate in [&gate_on_slow, &gate_on_reset] {
        assert_eq!(failovers(gate, None).await, 0.0);
    }
}

#[tokio::test]
async fn a_content_names_its_own_providers_in_order() {
    let primary = Sim::start(&["--vendor", "axinom"]);
    let nginx = failing_vendor(503);
    let catalog = FIXTURE_CATALOG.replace(
        "keys = { \"01020304",
        "providers = [\"backup\", \"primary\"]\nkeys = { \"01020304",
    );
    let gate = gate_with_catalog(
        &axinom("primary", &primary.url()),
        &drmtoday("backup", &nginx.url("http", "/AcquireLicense")),
        "",
        &catalog,
    )
    .await;
    // `demo` lists the backup first: it fails, and the route's first provider licenses.
    let response = license(&gate, "demo").await;
    assert_eq!(response.status(), 200);
    assert_eq!(nginx.settled_access_log().await.len(), 1);
    assert_eq!(licenses(&primary).await, 1);
    let metrics = gate.metrics().await;
    assert!(
        metrics.lines().any(|line| line.starts_with(
            "licensegate_provider_failovers_total{drm=\"widevine\",from=\"backup\",reason=\"answer_503\",to=\"primary\"} 1"
        )),
        "{metrics}"
    );
    // Content without a list takes the route's order: the primary answers at once.
    let response = client()
        .post(gate.license_url("playready", Some("playready-sample")))
        .bearer_auth(user_token("ann", &["*"]))
        .header("SOAPAction", SOAP_ACTION)
        .body(fixture("license-request-v4.0.xml"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(nginx.settled_access_log().await.len(), 1);
    assert_eq!(licenses(&primary).await, 2);
}

#[tokio::test]
async fn a_stream_that_failed_over_continues_with_the_vendor_that_licensed_it() {
    let nginx = failing_vendor(503);
    let backup = Sim::start(&["--vendor", "axinom"]);
    // DRMtoday reports no device: the stream's lease is written at admission, naming the
    // primary, and must name the backup once it licenses.
    let gate = gate(
        &drmtoday("primary", &nginx.url("http", "/AcquireLicense")),
        &axinom("backup", &backup.url()),
        "[store]\npath = \"${LG_DIR}/licensegate.db\"\n[streams]\nmax_per_user = 2\n",
    )
    .await;
    let playready = |session: Option<&str>| {
        let mut request = client()
            .post(gate.license_url("playready", Some("playready-sample")))
            .bearer_auth(user_token("ann", &["*"]))
            .header("SOAPAction", SOAP_ACTION)
            .body(fixture("license-request-v4.0.xml"));
        if let Some(session) = session {
            request = request.header("X-Playback-Session", session);
        }
        request.send()
    };
    let first = playready(None).await.unwrap();
    assert_eq!(first.status(), 200);
    let session = first.headers()["x-playback-session"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(nginx.settled_access_log().await.len(), 1);
    // The lease is settled once the answer has gone out.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let streams = gate.admin_json("/v1/users/ann/streams", ADMIN_TOKEN).await;
        if streams["streams"][0]["provider"] == "backup" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{streams}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let next = playready(Some(&session)).await.unwrap();
    assert_eq!(next.status(), 200);
    assert_eq!(next.headers()["x-playback-session"], session.as_str());
    assert_eq!(
        nginx.settled_access_log().await.len(),
        1,
        "the stream's next license went to the vendor that licensed it"
    );
    assert_eq!(licenses(&backup).await, 2);
}

/// A FairPlay request whose key IDs licensegate could not read (no skd URI) reaches no provider
/// that issues whatever key the SPC asks for: not as the first, and not failed over to.
#[tokio::test]
async fn an_unread_fairplay_key_never_fails_over_to_a_vendor_issuing_what_the_spc_asks() {
    let nginx = failing_vendor(503);
    let issuing_any_key = Sim::start(&["--vendor", "axinom"]);
    let kid = "0a0b0c0d-0000-4000-8000-00000000f00d";
    let other_kid = "0a0b0c0e-0000-4000-8000-00000000f00d";
    let catalog = format!(
        "[content.movie]\nkey_ids = [\"{kid}\"]\n\n\
         [content.movie-from-any-key]\nkey_ids = [\"{other_kid}\"]\nproviders = [\"backup\", \"primary\"]\n"
    );
    let config = GateConfig::new()
        .auth("")
        .catalog()
        .provider(
            "primary",
            &without_retries(drmtoday("primary", &nginx.url("http", "/AcquireLicense"))),
        )
        .provider(
            "backup",
            &format!(
                "{}\nmessage_version = 2\nkey_source = \"license_request\"",
                axinom("backup", &issuing_any_key.url())
            ),
        )
        .with("[routes]\nfairplay = [\"primary\", \"backup\"]")
        .build();
    let gate = Gate::ready(Gate::start_with_files(
        &config,
        &[("catalog.toml", catalog.as_bytes())],
    ))
    .await;
    let mut spc = vec![0, 0, 0, 1];
    spc.resize(2500, 0x5a);
    let fairplay = |content: &str, skd: Option<&str>| {
        let mut request = client()
            .post(gate.license_url("fairplay", Some(content)))
            .bearer_auth(user_token("ann", &["*"]))
            .body(spc.clone());
        if let Some(skd) = skd {
            request = request.header("X-FairPlay-Uri", skd);
        }
        request.send()
    };
    let licensed = || async { issuing_any_key.stats().await["fairplay_licenses"].clone() };

    // Unread key IDs: the primary's refusal is the answer, the backup is not asked.
    let response = fairplay("movie", None).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(licensed().await, 0);
    assert_eq!(failovers(&gate, None).await, 0.0);
    // Such a provider first in the content's list: refused before any vendor is asked.
    let response = fairplay("movie-from-any-key", None).await.unwrap();
    problem(response, 403, "key_ids_unreadable").await;
    assert_eq!(nginx.settled_access_log().await.len(), 1);
    // The key named by its skd URI: checked against the content, so the backup may license it.
    let skd = format!("skd://{kid}:0123456789ABCDEF0123456789ABCDEF");
    let response = fairplay("movie", Some(&skd)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(licensed().await, 1);
    assert_eq!(failovers(&gate, Some("answer_503")).await, 1.0);
}
