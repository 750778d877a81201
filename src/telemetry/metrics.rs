//! Prometheus metrics. One registry per process, owned by the server state so tests can start
//! servers side by side without sharing counters.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// From half a millisecond (a cached answer) to ten seconds (a provider at its timeout).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub struct Metrics {
    registry: Registry,
    pub license_duration: HistogramVec,
    pub(crate) upstream_duration: HistogramVec,
    pub requests: IntCounterVec,
    pub in_flight: IntGauge,
    pub(crate) upstream_connections: IntCounterVec,
    pub(crate) service_certificate_cache: IntCounterVec,
    pub(crate) authorization_cache: IntCounterVec,
    pub(crate) token_mint_duration: HistogramVec,
    pub(crate) device_decisions: IntCounterVec,
    pub(crate) device_store_duration: HistogramVec,
    pub(crate) upstream_retries: IntCounterVec,
    pub(crate) provider_failovers: IntCounterVec,
    pub(crate) upstream_ejections: IntCounterVec,
    pub(crate) connections_refused: IntCounterVec,
    pub(crate) stream_decisions: IntCounterVec,
    pub(crate) stream_store_duration: HistogramVec,
    pub(crate) rate_limit_decisions: IntCounterVec,
    pub(crate) rate_limit_buckets: IntGaugeVec,
    pub(crate) license_request_types: IntCounterVec,
    pub(crate) config_reloads: IntCounterVec,
    pub(crate) config_generation: IntGauge,
    pub(crate) upstream_healthy_endpoints: IntGaugeVec,
    pub(crate) log_lines_dropped: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let license_duration = HistogramVec::new(
            HistogramOpts::new(
                "licensegate_license_request_duration_seconds",
                "Time from request to the last byte of the answer, per DRM, provider and outcome",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["drm", "provider", "outcome"],
        )
        .expect("valid histogram");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "licensegate_upstream_duration_seconds",
                "Time spent on the provider's license endpoint, retries included",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["provider", "status"],
        )
        .expect("valid histogram");
        let requests = IntCounterVec::new(
            Opts::new(
                "licensegate_requests_total",
                "Answered license API requests",
            ),
            &["drm", "provider", "status"],
        )
        .expect("valid counter");
        let in_flight = IntGauge::new(
            "licensegate_in_flight_requests",
            "License API requests being handled now",
        )
        .expect("valid gauge");
        let upstream_connections = IntCounterVec::new(
            Opts::new(
                "licensegate_upstream_connections_total",
                "Upstream requests by whether they rode a pooled connection",
            ),
            &["provider", "reused"],
        )
        .expect("valid counter");
        let service_certificate_cache = IntCounterVec::new(
            Opts::new(
                "licensegate_service_certificate_cache_total",
                "Widevine service certificate requests answered from memory (hit) or forwarded (miss)",
            ),
            &["result"],
        )
        .expect("valid counter");
        let authorization_cache = IntCounterVec::new(
            Opts::new(
                "licensegate_token_cache_total",
                "Provider authorizations: reused (hit), minted for the cache (miss), minted per \
                 attempt (single_use), or failed (error)",
            ),
            &["provider", "result"],
        )
        .expect("valid counter");
        let token_mint_duration = HistogramVec::new(
            HistogramOpts::new(
                "licensegate_token_mint_duration_seconds",
                "Time to mint one provider authorization, token service calls included",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["provider"],
        )
        .expect("valid histogram");
        let device_decisions = IntCounterVec::new(
            Opts::new(
                "licensegate_device_decisions_total",
                "Device limit decisions: registered (a new slot), known, refused (limit reached), \
                 unidentified_*, store_down_*",
            ),
            &["decision"],
        )
        .expect("valid counter");
        let device_store_duration = HistogramVec::new(
            HistogramOpts::new(
                "licensegate_device_store_duration_seconds",
                "Device store call latency",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["operation"],
        )
        .expect("valid histogram");
        let stream_decisions = IntCounterVec::new(
            Opts::new(
                "licensegate_stream_decisions_total",
                "Stream limit decisions: started, renewed, released, refused (limit reached), \
                 stopped_oldest (displaced by a new stream), stopped_refused (a displaced \
                 stream's renewal), unknown, store_down_*",
            ),
            &["decision"],
        )
        .expect("valid counter");
        let stream_store_duration = HistogramVec::new(
            HistogramOpts::new(
                "licensegate_stream_store_duration_seconds",
                "Stream lease, quota and block store call latency",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["operation"],
        )
        .expect("valid histogram");
        let rate_limit_decisions = IntCounterVec::new(
            Opts::new(
                "licensegate_rate_limit_decisions_total",
                "Rate limit and quota decisions per limit (client, user, quota, blocked) and \
                 decision (allowed, refused, renewal_exempt, store_down_*)",
            ),
            &["limit", "decision"],
        )
        .expect("valid counter");
        let license_request_types = IntCounterVec::new(
            Opts::new(
                "licensegate_license_request_types_total",
                "License requests per DRM and request type (new, renewal, release)",
            ),
            &["drm", "type"],
        )
        .expect("valid counter");
        let upstream_retries = IntCounterVec::new(
            Opts::new(
                "licensegate_upstream_retries_total",
                "Attempts made again, by why the earlier one provably never reached the provider: \
                 connect (no connection), refused_stream or goaway (the provider's HTTP/2 stack \
                 says it did not process the stream); challenge re-sends are the last two",
            ),
            &["provider", "reason"],
        )
        .expect("valid counter");
        let provider_failovers = IntCounterVec::new(
            Opts::new(
                "licensegate_provider_failovers_total",
                "Requests moved on to the next provider of their list, by the provider that could \
                 not take them, the one asked next, and why: no_healthy_endpoint, connect \
                 (every attempt failed to connect), authorization (its token service failed), \
                 answer_429, answer_500 or answer_503 (it answered that it issued nothing)",
            ),
            &["drm", "from", "to", "reason"],
        )
        .expect("valid counter");
        let upstream_ejections = IntCounterVec::new(
            Opts::new(
                "licensegate_upstream_ejections_total",
                "Endpoints taken out of rotation after consecutive connect failures or timeouts",
            ),
            &["provider", "endpoint"],
        )
        .expect("valid counter");
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "licensegate_connections_refused_total",
                "Connections closed on accept because the listener was at its connection cap",
            ),
            &["listener"],
        )
        .expect("valid counter");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "licensegate_config_reloads_total",
                "Whole-configuration reloads (SIGHUP or POST /admin/reload): ok, or error (the \
                 running configuration stayed)",
            ),
            &["result"],
        )
        .expect("valid counter");
        let config_generation = IntGauge::new(
            "licensegate_config_generation",
            "The configuration in service: 1 at start, one more for each reload",
        )
        .expect("valid gauge");
        let rate_limit_buckets = IntGaugeVec::new(
            Opts::new(
                "licensegate_rate_limit_buckets",
                "In-process token buckets held per limit (client, user), set at each scrape: \
                 buckets that refilled are dropped every few seconds",
            ),
            &["limit"],
        )
        .expect("valid gauge");
        let upstream_healthy_endpoints = IntGaugeVec::new(
            Opts::new(
                "licensegate_upstream_healthy_endpoints",
                "Endpoints of each routed provider's endpoint set that pass their health check \
                 and are not ejected, as /readyz counts them",
            ),
            &["upstream"],
        )
        .expect("valid gauge");
        let log_lines_dropped = IntCounter::new(
            "licensegate_log_lines_dropped_total",
            "Log lines (access lines among them) dropped because the log writer thread fell a \
             whole queue behind stdout",
        )
        .expect("valid counter");
        // A series that appears already at 1 has no increase to alert on: the ones alerts
        // watch exist at 0 from the start.
        for result in ["ok", "error"] {
            config_reloads.with_label_values(&[result]);
        }
        for decision in ["store_down_allowed", "store_down_refused"] {
            device_decisions.with_label_values(&[decision]);
            stream_decisions.with_label_values(&[decision]);
        }
        for collector in [
            Box::new(upstream_retries.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(provider_failovers.clone()),
            Box::new(upstream_healthy_endpoints.clone()),
            Box::new(rate_limit_buckets.clone()),
            Box::new(log_lines_dropped.clone()),
            Box::new(config_reloads.clone()),
            Box::new(config_generation.clone()),
            Box::new(upstream_ejections.clone()),
            Box::new(connections_refused.clone()),
            Box::new(license_duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(requests.clone()),
            Box::new(in_flight.clone()),
            Box::new(upstream_connections.clone()),
            Box::new(service_certificate_cache.clone()),
            Box::new(authorization_cache.clone()),
            Box::new(token_mint_duration.clone()),
            Box::new(device_decisions.clone()),
            Box::new(device_store_duration.clone()),
            Box::new(stream_decisions.clone()),
            Box::new(stream_store_duration.clone()),
            Box::new(rate_limit_decisions.clone()),
            Box::new(license_request_types.clone()),
        ] {
            registry.register(collector).expect("unique metric names");
        }
        Self {
            registry,
            license_duration,
            upstream_duration,
            requests,
            in_flight,
            upstream_connections,
            service_certificate_cache,
            authorization_cache,
            token_mint_duration,
            device_decisions,
            device_store_duration,
            upstream_retries,
            provider_failovers,
            upstream_ejections,
            connections_refused,
            stream_decisions,
            stream_store_duration,
            rate_limit_decisions,
            rate_limit_buckets,
            license_request_types,
            config_reloads,
            config_generation,
            upstream_healthy_endpoints,
            log_lines_dropped,
        }
    }

    /// What the status page draws, summed over DRMs and providers: answers per outcome, the
    /// license latency histogram, and ejections per endpoint; all cumulative since start.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot {
            bounds: LATENCY_BUCKETS.to_vec(),
            latency_counts: vec![0; LATENCY_BUCKETS.len() + 1],
            in_flight: self.in_flight.get(),
            ..Snapshot::default()
        };
        let label = |metric: &prometheus::proto::Metric, name: &str| {
            metric
                .get_label()
                .iter()
                .find(|pair| pair.name() == name)
                .map(|pair| pair.value().to_string())
                .unwrap_or_default()
        };
        for family in self.registry.gather() {
            match family.name() {
                "licensegate_license_request_duration_seconds" => {
                    for metric in family.get_metric() {
                        let histogram = metric.get_histogram();
                        *snapshot
                            .outcomes
                            .entry(label(metric, "outcome"))
                            .or_default() += histogram.get_sample_count();
                        for (n, bucket) in histogram.get_bucket().iter().enumerate() {
                            snapshot.latency_counts[n] += bucket.cumulative_count();
                        }
                        snapshot.latency_counts[LATENCY_BUCKETS.len()] +=
                            histogram.get_sample_count();
                    }
                }
                "licensegate_upstream_ejections_total" => {
                    for metric in family.get_metric() {
                        *snapshot
                            .ejections
                            .entry(label(metric, "endpoint"))
                            .or_default() += metric.get_counter().get_value() as u64;
                    }
                }
                _ => {}
            }
        }
        snapshot
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding to a Vec cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts a request as in flight for exactly as long as the guard lives, whichever way the
/// request ends.
pub(crate) struct InFlight(IntGauge);

impl InFlight {
    pub(crate) fn enter(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_labels_and_in_flight_returns_to_zero() {
        let metrics = Metrics::new();
        metrics
            .license_duration
            .with_label_values(&["widevine", "sim", "ok"])
            .observe(0.003);
        {
            let _guard = InFlight::enter(&metrics.in_flight);
            assert_eq!(metrics.in_flight.get(), 1);
        }
        assert_eq!(metrics.in_flight.get(), 0);
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(text.contains(
            "licensegate_license_request_duration_seconds_bucket{drm=\"widevine\",outcome=\"ok\",provider=\"sim\",le=\"0.005\"} 1"
        ), "{text}");
    }
}

#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Snapshot {
    /// Answers per outcome (`ok` or a problem's code).
    pub(crate) outcomes: std::collections::BTreeMap<String, u64>,
    /// The latency buckets' upper bounds in seconds; `latency_counts` has one more, +Inf.
    pub(crate) bounds: Vec<f64>,
    pub(crate) latency_counts: Vec<u64>,
    /// Ejections per endpoint address.
    pub(crate) ejections: std::collections::BTreeMap<String, u64>,
    pub(crate) in_flight: i64,
}
