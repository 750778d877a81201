//! Debian's Prometheus scraping a licensegate under a short burst of mixed traffic: what it
//! stores agrees with what the test sent, the recording rules of `deploy/prometheus` evaluate,
//! and every query of the Grafana dashboard in `deploy/grafana` parses and returns data.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use licensegate_testkit::{
    Gate, GateConfig, Prometheus, Sim, client, fixture, repository, user_token,
};
use serde_json::Value;

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
const KID: &str = "01020304-0506-0708-090a-0b0c0d0e0f10";

/// Widevine through a generic provider that mints a cached header per user; PlayReady to a
/// vendor that answers after the read timeout, so that its requests fail and its endpoint is
/// ejected. Device and stream limits on the embedded store.
fn config(sim: &Sim, slow: &Sim) -> String {
    GateConfig::new()
        .auth("")
        .catalog()
        .provider(
            "vendor",
            &format!(
                "kind = \"generic\"\nendpoints = [\"{}\"]\n\
                 [providers.vendor.settings]\nheaders = {{ \"X-User\" = \"{{user}}\" }}",
                sim.url()
            ),
        )
        .provider(
            "slow",
            &format!(
                "kind = \"passthrough\"\nendpoints = [\"{}\"]\nhealth_check = \"connect\"\n\
                 retries = 0\nejection_consecutive_failures = 3\ntimeouts = {{ read_ms = 200 }}",
                slow.url()
            ),
        )
        .routes(&[("widevine", "vendor"), ("playready", "slow")])
        .with(&format!(
            "[admin]\ntoken = \"{ADMIN_TOKEN}\"\n[devices]\nmax_per_user = 3\n\
             [streams]\nmax_per_user = 50\n[store]\npath = \"${{LG_DIR}}/licensegate.db\"\n"
        ))
        .build()
}

fn catalog() -> String {
    format!(
        "[content.demo]\nkey_ids = [\"{KID}\"]\n\
         [content.playready-sample]\nkey_ids = [\"33e0008c-c444-4770-9899-a321e079dd36\"]\n"
    )
}

/// The deployed rules, evaluated every second instead of every 30.
fn rules_for_test(dir: &std::path::Path) -> std::path::PathBuf {
    let rules =
        std::fs::read_to_string(repository().join("deploy/prometheus/licensegate.rules.yml"))
            .unwrap()
            .replace("interval: 30s", "interval: 1s");
    let path = dir.join("licensegate.rules.yml");
    std::fs::write(&path, rules).unwrap();
    path
}

/// Sends `challenge` as `user` for `content`; the answer's outcome as licensegate labels it
/// (`ok` or the problem's code) and the time it took.
async fn license(
    gate: &Gate,
    drm: &str,
    user: &str,
    content: &str,
    challenge: Vec<u8>,
) -> (String, Duration) {
    let started = Instant::now();
    let response = client()
        .post(gate.license_url(drm, Some(content)))
        .bearer_auth(user_token(user, &["*"]))
        .body(challenge)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.bytes().await.unwrap();
    let elapsed = started.elapsed();
    let outcome = if status.is_success() {
        "ok".to_string()
    } else {
        let problem: Value = serde_json::from_slice(&body).unwrap();
        problem["code"].as_str().unwrap().to_string()
    };
    (outcome, elapsed)
}

fn value(sample: &Value) -> f64 {
    sample["value"][1].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_real_prometheus_agrees_with_the_traffic_and_runs_every_rule_and_dashboard_query() {
    let sim = Sim::start(&[]);
    let slow = Sim::start(&["--delay-ms", "1000"]);
    let gate = Gate::start_with_files(
        &config(&sim, &slow),
        &[("catalog.toml", catalog().as_bytes())],
    );
    let gate = Gate::ready(gate).await;
    let rules = rules_for_test(gate.dir());
    let prometheus = Prometheus::start(&[format!("127.0.0.1:{}", gate.admin_port)], &[rules]);
    prometheus.wait_for_scrapes(1).await;

    // The traffic: 40 licenses for 8 users, 8 at a time; a service certificate request; vendor
    // failures for PlayReady; one refused request without a token; a reload.
    let mut sent: BTreeMap<String, u64> = BTreeMap::new();
    let mut ok_latencies = Vec::new();
    let challenge = fixture("license-request-kid-01020304.bin");
    let playready = fixture("license-request-v4.0.xml");
    // Two phases with a scrape between, so that every counter is seen increasing (a series'
    // first sample has no rate).
    for rounds in [0..2, 2..5] {
        for _ in rounds {
            let requests = (0..8).map(|i| {
                // Eight users, each asking once per round: the vendor authorization is minted
                // in the first round and reused from the cache after.
                let user = format!("user-{i}");
                let challenge = challenge.clone();
                let gate = &gate;
                async move { license(gate, "widevine", &user, "demo", challenge).await }
            });
            for (outcome, elapsed) in futures_util::future::join_all(requests).await {
                if outcome == "ok" {
                    ok_latencies.push(elapsed);
                }
                *sent.entry(outcome).or_default() += 1;
            }
        }
        for _ in 0..2 {
            let (outcome, _) = license(
                &gate,
                "playready",
                "user-1",
                "playready-sample",
                playready.clone(),
            )
            .await;
            *sent.entry(outcome).or_default() += 1;
        }
        prometheus.wait_for_scrapes(1).await;
    }
    let (outcome, _) = license(&gate, "widevine", "user-0", "demo", vec![0x08, 0x04]).await;
    *sent.entry(outcome).or_default() += 1;
    let anonymous = client()
        .post(gate.license_url("widevine", Some("demo")))
        .body(challenge.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    *sent.entry("token_missing".into()).or_default() += 1;
    let reload = client()
        .post(gate.admin("/admin/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);
    // 40 licenses and the service certificate, fetched from the vendor the first time.
    assert_eq!(sent["ok"], 41, "{sent:?}\n{}", gate.log());
    assert!(
        sent.contains_key("upstream_timeout"),
        "PlayReady fails at its vendor: {sent:?}"
    );

    prometheus.wait_for_scrapes(2).await;
    // Counts are exact: every answer the test got is one observation, under its outcome.
    let stored: BTreeMap<String, u64> = prometheus
        .query("sum by (outcome) (licensegate_license_request_duration_seconds_count)")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|sample| {
            (
                sample["metric"]["outcome"].as_str().unwrap().to_string(),
                value(sample) as u64,
            )
        })
        .collect();
    assert_eq!(stored, sent);

    // Latency: Prometheus' p99 estimate lies within the bucket that holds the client's own
    // p99 (which includes the network, so is never below licensegate's).
    ok_latencies.sort();
    let client_p99 = ok_latencies[ok_latencies.len() * 99 / 100 - 1].as_secs_f64();
    let upper = licensegate::telemetry::metrics::LATENCY_BUCKETS
        .iter()
        .copied()
        .find(|bound| *bound >= client_p99)
        .unwrap_or(f64::INFINITY);
    let estimate = prometheus
        .query(
            "histogram_quantile(0.99, sum by (le) \
             (licensegate_license_request_duration_seconds_bucket{outcome=\"ok\"}))",
        )
        .await;
    let estimate = value(&estimate[0]);
    assert!(
        estimate > 0.0 && estimate <= upper,
        "p99 {estimate} s beyond the bucket of the client's p99 {client_p99} s"
    );

    // Every recording rule has a value.
    for rule in [
        "licensegate:license_requests:rate1m",
        "licensegate:license_errors:ratio_rate5m",
        "licensegate:license_latency_seconds:p50_5m",
        "licensegate:license_latency_seconds:p99_5m",
        "licensegate:upstream_requests:rate1m",
        "licensegate:upstream_latency_seconds:p50_5m",
        "licensegate:upstream_latency_seconds:p99_5m",
    ] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let samples = prometheus.query(rule).await;
            if samples
                .as_array()
                .unwrap()
                .iter()
                .any(|sample| value(sample).is_finite())
            {
                break;
            }
            assert!(Instant::now() < deadline, "{rule} has no value: {samples}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // Every dashboard query, with its variables at "All", returns data.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repository().join("deploy/grafana/licensegate.json")).unwrap(),
    )
    .unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*")
                .replace("$drm", ".*")
                .replace("$provider", ".*");
            let samples = prometheus.query(&expr).await;
            assert!(
                !samples.as_array().unwrap().is_empty(),
                "panel '{}' has no data: {expr}",
                panel["title"]
            );
            queries += 1;
        }
    }
    assert!(queries >= 14, "{queries} queries");
}
