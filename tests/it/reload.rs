//! Whole-configuration reloads (`SIGHUP` and `POST /admin/reload`) under steady oha load: the
//! route switches after each one, no request fails, and a config that does not load changes
//! nothing and is reported.

use std::time::{Duration, Instant};

use licensegate_testkit::{Gate, GateConfig, Sim, SteadyLoad, client, fixture, get_json};
use serde_json::Value;

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

/// Widevine to a passthrough provider named after its simulator.
fn routed_to(name: &str, sim: &Sim) -> String {
    GateConfig::new()
        .provider(
            name,
            &format!("kind = \"passthrough\"\nendpoints = [\"{}\"]", sim.url()),
        )
        .routes(&[("widevine", name)])
        .with(&format!("[admin]\ntoken = \"{ADMIN_TOKEN}\""))
        .build()
}

async fn licenses(sim: &Sim) -> u64 {
    sim.stats().await["licenses"].as_u64().unwrap()
}

async fn readiness(gate: &Gate) -> Value {
    get_json(&gate.admin("/readyz")).await
}

async fn post_reload(gate: &Gate) -> (u16, Value) {
    let response = client()
        .post(gate.admin("/admin/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn wait_for_generation(gate: &Gate, generation: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if readiness(gate).await["config"]["generation"] == generation {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("generation {generation} never served:\n{}", gate.log());
}

/// After a reload to `to`, new requests reach `to` and no longer `from` (requests in flight
/// when the reload happened may still land on `from`: they finish where they started).
async fn assert_routed(from: &Sim, to: &Sim) {
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (from_before, to_before) = (licenses(from).await, licenses(to).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        licenses(from).await,
        from_before,
        "the old route still serves"
    );
    assert!(
        licenses(to).await > to_before,
        "the new route serves nothing"
    );
}

#[tokio::test]
async fn ten_reloads_under_steady_load_switch_routes_and_fail_no_request() {
    let (a, b) = (Sim::start(&[]), Sim::start(&[]));
    let mut gate = Gate::start_ready(&routed_to("a", &a)).await;
    let config_path = gate.dir().join("licensegate.toml");
    let challenge = gate.dir().join("challenge.bin");
    std::fs::write(&challenge, fixture("license-request-kid-01020304.bin")).unwrap();
    let load = SteadyLoad::start(
        &gate.license_url("widevine", Some("demo")),
        &challenge,
        14,
        200,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let pid = gate.child().id();
    for round in 0..10u64 {
        let (from, to, name) = if round % 2 == 0 {
            (&a, &b, "b")
        } else {
            (&b, &a, "a")
        };
        std::fs::write(&config_path, routed_to(name, to)).unwrap();
        let generation = round + 2;
        if round % 2 == 0 {
            let (status, body) = post_reload(&gate).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["generation"], generation);
        } else {
            licensegate_testkit::signal(pid, "HUP");
            wait_for_generation(&gate, generation).await;
        }
        assert_routed(from, to).await;

        if round == 4 {
            // A route to a provider that does not exist: refused by its key path, and
            // the running configuration keeps serving.
            let good = std::fs::read_to_string(&config_path).unwrap();
            std::fs::write(
                &config_path,
                good.replace(&format!("widevine = \"{name}\""), "widevine = \"z\""),
            )
            .unwrap();
            let (status, body) = post_reload(&gate).await;
            assert_eq!(
                (status, body["code"].as_str()),
                (422, Some("config_not_reloaded")),
                "{body}"
            );
            assert_eq!(body["key"], "routes.widevine", "{body}");
            let ready = readiness(&gate).await;
            assert_eq!(ready["config"]["generation"], generation, "{ready}");
            assert!(
                ready["config"]["last_error"]
                    .as_str()
                    .unwrap()
                    .contains("routes.widevine"),
                "{ready}"
            );
            assert_routed(from, to).await;
            // A new listener address needs a restart, and the error says which key.
            std::fs::write(&config_path, good.replace("${LG_ADMIN_PORT}", "1")).unwrap();
            let (status, body) = post_reload(&gate).await;
            assert_eq!(
                (status, body["key"].as_str()),
                (422, Some("listeners.admin")),
                "{body}"
            );
            std::fs::write(&config_path, good).unwrap();
        }
    }

    load.assert_all_ok(2500, || gate.log()).await;
    let metrics = gate.metrics().await;
    for line in [
        "licensegate_config_reloads_total{result=\"ok\"} 10",
        "licensegate_config_reloads_total{result=\"error\"} 2",
        "licensegate_config_generation 11",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    assert!(
        gate.log().contains("configuration not reloaded"),
        "the failed reload is logged"
    );
}

/// A reload that leaves a provider's settings alone keeps its upstream: no endpoint is
/// resolved or probed again, and its pooled connection carries on. A provider that keeps its
/// name but changes its endpoint gets a new upstream.
#[tokio::test]
async fn an_unchanged_provider_keeps_its_upstream_and_a_changed_one_moves() {
    let (sim, other) = (Sim::start(&[]), Sim::start(&[]));
    // Probes that only connect, once at start and then not for an hour: a new upstream shows
    // as one more connection, its first probe.
    let routed = |sim: &Sim| {
        routed_to("a", sim)
            .replace(
                "health_check_interval_seconds = 1",
                "health_check_interval_seconds = 3600",
            )
            .replace(
                "kind = \"passthrough\"",
                "health_check = \"connect\"\nkind = \"passthrough\"",
            )
    };
    let config = routed(&sim);
    let gate = Gate::start_ready(&config).await;
    let challenge = fixture("license-request-kid-01020304.bin");
    let send = || async {
        let response = client()
            .post(gate.license_url("widevine", Some("demo")))
            .body(challenge.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    };
    send().await;
    let connections = || async { sim.stats().await["connections"].as_u64().unwrap() };
    let before = connections().await;
    for generation in 2..=4 {
        std::fs::write(
            gate.dir().join("licensegate.toml"),
            config.replace("[admin]", &format!("[admin]\n# generation {generation}")),
        )
        .unwrap();
        let (status, body) = post_reload(&gate).await;
        assert_eq!(
            (status, body["generation"].as_u64()),
            (200, Some(generation))
        );
        send().await;
    }
    // The one connection more is the one that asks the simulator for its stats.
    assert_eq!(
        connections().await,
        before + 1,
        "a reload probed or connected to an unchanged provider again"
    );

    std::fs::write(gate.dir().join("licensegate.toml"), routed(&other)).unwrap();
    let (status, body) = post_reload(&gate).await;
    assert_eq!((status, body["generation"].as_u64()), (200, Some(5)));
    send().await;
    assert_eq!(
        other.stats().await["licenses"],
        1,
        "the changed endpoint serves"
    );
}
