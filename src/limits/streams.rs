//! Concurrent stream limits. A stream holds a lease on one of its user's slots for its renewal
//! interval plus a grace period; each renewal extends it, a release ends it, and a stream that
//! stops renewing lets its lease run out. Which requests belong to one stream depends on the DRM:
//!
//! - Widevine: the `session_id` of the license's identification, which the vendor sets in the
//!   license (read from the answer) and the CDM sends back in every renewal and release.
//! - Others: the session id licensegate told the player (`X-Playback-Session` on the answer)
//!   and the player sends back (`X-Playback-Session`, or `?session=`). A request naming none
//!   is a new stream: on a vendor that reports devices, the device's (one per device, content
//!   and DRM, decided on the answer); else a new session licensegate issues before the vendor
//!   is asked.
//!
//! Each lease records what its stream was licensed for (content, DRM, provider, policy, key IDs,
//! device): a request that names a session continues it only if the record is the same user's,
//! content's and DRM's (and device's, where the vendor reports one). A session id the player
//! makes up continues nothing.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use pingora::prelude::RequestHeader;
use prometheus::{HistogramVec, IntCounterVec};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::clock::now_seconds;
use crate::config::{OnLimit, StreamSettings};
use crate::http::problem::{Problem, Refusal};
use crate::store::{
    Continuation, ContinueAsk, Lease, LeaseAsk, Shared, StoreError, StreamDecision, StreamFacts,
};
use crate::telemetry::metrics::Metrics;

pub(crate) const SESSION_HEADER: &str = "X-Playback-Session";
const MAX_SESSION_LEN: usize = 128;

/// The playback session id the player sent, if any.
pub(crate) fn player_session(request: &RequestHeader) -> Result<Option<String>, Problem> {
    crate::http::headers::query_or_header(request, "session", SESSION_HEADER)
        .map_err(|_| session_invalid())?
        .map(valid_session)
        .transpose()
}

/// A session id as licensegate issues and accepts them; anything else reaches no store or log.
pub(crate) fn valid_session(session: String) -> Result<String, Problem> {
    let well_formed = !session.is_empty()
        && session.len() <= MAX_SESSION_LEN
        && session
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b));
    if well_formed {
        Ok(session)
    } else {
        Err(session_invalid())
    }
}

fn session_invalid() -> Problem {
    Problem::new(Refusal::StreamSessionInvalid).with_detail(format!(
        "{SESSION_HEADER} must be 1 to {MAX_SESSION_LEN} letters, digits, '.', '_', '-' or ':'"
    ))
}

fn digest(parts: &[&[u8]]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hex::encode(&hash.finalize()[..12])
}

/// The stream of a Widevine license, by its `session_id`.
pub(crate) fn widevine_session(session_id: &[u8]) -> String {
    if session_id.len() <= 32 {
        format!("wv-{}", hex::encode(session_id))
    } else {
        format!("wv-{}", digest(&[session_id]))
    }
}

/// The stream of a device the vendor reported, playing one content in one DRM.
pub(crate) fn device_session(device: &str, content: &str, drm: &str) -> String {
    format!(
        "dev-{}",
        digest(&[device.as_bytes(), content.as_bytes(), drm.as_bytes()])
    )
}

/// A device as a stream's record keeps it: a digest, never the vendor's identifiers.
pub(crate) fn device_digest(device: &str) -> String {
    digest(&[device.as_bytes()])
}

/// A Widevine renewal, in its stream's cadence.
pub(crate) const RENEWAL_CADENCE: &str = "renewal";
/// A license naming no key ID (a FairPlay SPC whose content lists none), in its stream's
/// cadence.
pub(crate) const LICENSE_CADENCE: &str = "license";
/// A heartbeat (`POST /v1/streams/{session}`), in its stream's cadence.
pub(crate) const HEARTBEAT_CADENCE: &str = "heartbeat";

/// A stream licensegate's own license server names for the player.
pub(crate) fn issued_session() -> String {
    format!("lg-{}", uuid::Uuid::new_v4().simple())
}

const PENDING: &str = "pending-";

/// The lease of a Widevine license whose session id only its answer tells: named after the
/// CDM's own id for its session (which the license echoes, and its renewals carry) and this
/// request, so that a renewal can find it should the renaming be lost.
pub(crate) fn pending_session(cdm_request_id: Option<&[u8]>, request_id: &str) -> String {
    format!("{}{request_id}", pending_prefix(cdm_request_id))
}

/// The start of every provisional lease of the CDM session `cdm_request_id`.
pub(crate) fn pending_prefix(cdm_request_id: Option<&[u8]>) -> String {
    match cdm_request_id {
        Some(id) => format!("{PENDING}{}-", digest(&[id])),
        None => format!("{PENDING}-"),
    }
}

/// What the store said to a stream asking to play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admitted {
    Started,
    Renewed,
    /// Let through without a lease: the store is down and `fail_open` is set.
    Unchecked,
}

pub(crate) struct Streams {
    pub(crate) settings: StreamSettings,
    /// `[streams]` is configured: streams are limited, and every DRM's are recorded. Without
    /// it, a store still records Widevine licenses, so that their renewals continue only what
    /// they started.
    pub(crate) limited: bool,
    store: Arc<Shared>,
    /// Sessions this instance saw the store hold live, keyed by [`live_key`]: their record, and
    /// the end of their lease as the store last set it (seconds since the epoch). A request
    /// naming one finds what it may continue without a lookup; only the store's continuation
    /// of exactly that lease, for the same content and DRM, confirms it ([`Self::continue_`]).
    live: moka::sync::Cache<String, Arc<Lease>>,
    decisions: IntCounterVec,
    duration: HistogramVec,
}

/// Longer than any license's renewal delay; a vendor's larger one is taken as this.
pub(crate) const MAX_INTERVAL_SECONDS: u64 = 366 * 24 * 3600;

/// Seen-live sessions kept at most: enough for every stream of a busy instance.
const LIVE_SESSIONS_KEPT: u64 = 1_000_000;

pub(crate) fn store_unavailable() -> Problem {
    Problem::new(Refusal::StreamStoreUnavailable)
        .with_detail("the stream limit cannot be checked right now")
}

pub(crate) fn stream_stopped() -> Problem {
    Problem::new(Refusal::StreamStopped)
        .with_detail("a newer stream of this user took this stream's place")
}

fn live_key(user: &str, session: &str) -> String {
    format!("{}:{user}{session}", user.len())
}

impl Streams {
    pub(crate) fn new(settings: StreamSettings, store: Arc<Shared>, metrics: &Metrics) -> Self {
        Self::build(settings, true, store, metrics)
    }

    /// Widevine licenses recorded in a store configured for something else: no limit, and a
    /// store that cannot answer lets renewals through as the deployment did not ask for
    /// stream limits.
    pub(crate) fn records_only(store: Arc<Shared>, metrics: &Metrics) -> Self {
        let settings = StreamSettings {
            max_per_user: crate::store::UNLIMITED,
            claim: String::new(),
            on_limit: OnLimit::Refuse,
            renewal_interval: Duration::from_secs(300),
            grace: Duration::from_secs(60),
            fail_open: true,
        };
        Self::build(settings, false, store, metrics)
    }

    fn build(
        settings: StreamSettings,
        limited: bool,
        store: Arc<Shared>,
        metrics: &Metrics,
    ) -> Self {
        let lease = settings.renewal_interval + settings.grace;
        Self {
            settings,
            limited,
            store,
            live: moka::sync::Cache::builder()
                .max_capacity(LIVE_SESSIONS_KEPT)
                // Only bounds memory: whether a session is live is the lease end it holds.
                .time_to_idle(lease)
                .support_invalidation_closures()
                .build(),
            decisions: metrics.stream_decisions.clone(),
            duration: metrics.stream_store_duration.clone(),
        }
    }

    /// The user's limit: the token's claim if it has one, else the entitlement's, else the
    /// configured default.
    pub(crate) fn limit_for(
        &self,
        claims: Option<&serde_json::Map<String, Value>>,
        granted: Option<u32>,
    ) -> u32 {
        if !self.limited {
            return crate::store::UNLIMITED;
        }
        crate::rights::auth::claimed_limit(
            claims,
            &self.settings.claim,
            granted,
            self.settings.max_per_user,
        )
    }

    /// How long a lease lasts: the renewal interval (the license's, else the policy's, else the
    /// configured one) plus the grace period.
    pub(crate) fn lease_seconds(&self, interval_seconds: u64) -> u64 {
        let interval = if interval_seconds > 0 {
            interval_seconds.min(MAX_INTERVAL_SECONDS)
        } else {
            self.settings.renewal_interval.as_secs()
        };
        interval + self.settings.grace.as_secs()
    }

    /// Starts `ask.session`'s lease for `user` (or renews it, if it is already this content's
    /// and DRM's), or refuses.
    pub(crate) async fn admit(
        &self,
        user: &str,
        ask: LeaseAsk<'_>,
        limit: u32,
    ) -> Result<Admitted, Problem> {
        let stop_oldest = self.settings.on_limit == OnLimit::StopOldest;
        let decided = self
            .timed(
                "acquire",
                self.store
                    .store
                    .acquire_stream(user, ask, limit, stop_oldest, now_seconds()),
            )
            .await;
        match decided {
            Ok(StreamDecision::Started { stopped }) => {
                self.count("started");
                self.seen_started(user, ask.session, ask.facts, ask.seconds, ask.cadence);
                if let Some(stopped) = stopped {
                    self.live.invalidate(&live_key(user, &stopped));
                    self.count("stopped_oldest");
                    tracing::info!(stopped = %stopped, "a new stream displaced the oldest");
                }
                Ok(Admitted::Started)
            }
            Ok(StreamDecision::Renewed) => {
                self.count("renewed");
                Ok(Admitted::Renewed)
            }
            Ok(StreamDecision::Stopped) => {
                self.live.invalidate(&live_key(user, ask.session));
                self.count("stopped_refused");
                Err(stream_stopped())
            }
            Ok(StreamDecision::Conflict) => Err(Problem::new(Refusal::ContentMismatch)
                .with_detail("the playback session plays other content or another DRM")),
            Ok(StreamDecision::Full {
                active,
                oldest_expires_at,
            }) => {
                self.count("refused");
                let expires =
                    crate::clock::rfc3339(UNIX_EPOCH + Duration::from_secs(oldest_expires_at));
                Err(Problem::new(Refusal::StreamLimitReached)
                    .with_detail(format!(
                        "{active} of {limit} streams playing; the first to stop renewing frees its slot, \
                         at the latest at {expires}"
                    ))
                    .with_extension("active_streams", active.into())
                    .with_extension("stream_limit", limit.into())
                    .with_extension("oldest_expires_at", expires.into()))
            }
            Err(e) => {
                tracing::error!(error = %e, "stream store unavailable");
                if self.settings.fail_open {
                    self.count("store_down_allowed");
                    return Ok(Admitted::Unchecked);
                }
                self.count("store_down_refused");
                Err(store_unavailable())
            }
        }
    }

    /// The live lease a request names, as this instance last saw the store hold it, else as
    /// the store tells.
    pub(crate) async fn find(
        &self,
        user: &str,
        session: &str,
    ) -> Result<Option<Lease>, StoreError> {
        if let Some(seen) = self.live.get(&live_key(user, session))
            && seen.expires_at > now_seconds()
        {
            return Ok(Some(Lease::clone(&seen)));
        }
        let lease = self.lease(user, session).await?;
        if let Some(lease) = &lease {
            self.seen_live(user, lease);
        }
        Ok(lease)
    }

    /// A lease this instance just started (or renamed), so that the stream's next request
    /// finds it without a lookup.
    fn seen_started(
        &self,
        user: &str,
        session: &str,
        facts: &StreamFacts,
        seconds: u64,
        cadence: &[&str],
    ) {
        let now = now_seconds();
        self.seen_live(
            user,
            &Lease {
                session: session.to_string(),
                content: facts.content.clone(),
                drm: facts.drm.clone(),
                started_at: now,
                expires_at: now + seconds,
                stopped: false,
                provider: facts.provider.clone(),
                policy: facts.policy.clone(),
                interval: facts.interval,
                device: None,
                key_ids: facts.key_ids.clone(),
                cadence: crate::store::cadence::start(cadence, now),
            },
        );
    }

    fn seen_live(&self, user: &str, lease: &Lease) {
        if lease.stopped {
            self.live.invalidate(&live_key(user, &lease.session));
            return;
        }
        self.live
            .insert(live_key(user, &lease.session), Arc::new(lease.clone()));
    }

    /// The provisional lease of the CDM session a Widevine renewal names, should its renaming
    /// have been lost (licensegate stopped between the answer and the rename): it takes the
    /// name the license told.
    pub(crate) async fn adopt(
        &self,
        user: &str,
        cdm_request_id: &[u8],
        to: &str,
    ) -> Result<Option<Lease>, StoreError> {
        let adopted = self
            .timed(
                "adopt",
                self.store.store.adopt_stream(
                    user,
                    &pending_prefix(Some(cdm_request_id)),
                    to,
                    now_seconds(),
                ),
            )
            .await?;
        if adopted.is_some() {
            self.count("adopted");
        }
        Ok(adopted)
    }

    /// Continues the stream a request names: the store extends exactly that lease if it is
    /// still this content's and DRM's, and tells whether the request keeps to the stream's
    /// cadence.
    pub(crate) async fn continue_(
        &self,
        user: &str,
        ask: ContinueAsk<'_>,
    ) -> Result<Continuation, StoreError> {
        let continued = self
            .timed(
                "continue",
                self.store.store.continue_stream(user, ask, now_seconds()),
            )
            .await;
        match &continued {
            Ok(Continuation::Continued { lease, exempt }) => {
                self.seen_live(user, lease);
                self.count(if *exempt {
                    "continued"
                } else {
                    "continued_beyond_cadence"
                });
            }
            Ok(Continuation::Stopped) => {
                self.live.invalidate(&live_key(user, ask.session));
                self.count("stopped_refused");
            }
            Ok(_) => self.live.invalidate(&live_key(user, ask.session)),
            Err(_) => {}
        }
        continued
    }

    /// Records the device the vendor reported for a stream that has none recorded; returns the
    /// device its record holds (`None`: none, or the store could not say).
    pub(crate) async fn set_device(
        &self,
        user: &str,
        session: &str,
        device: &str,
    ) -> Option<String> {
        self.live.invalidate(&live_key(user, session));
        match self
            .timed(
                "set_device",
                self.store
                    .store
                    .set_stream_device(user, session, device, now_seconds()),
            )
            .await
        {
            Ok(recorded) => recorded,
            Err(e) => {
                tracing::warn!(error = %e, "stream's device not recorded");
                None
            }
        }
    }

    /// Whether a continuation of `cadence` would be exempt by the record as this instance last
    /// saw it; the store's continuation decides ([`Self::continue_`]).
    pub(crate) fn likely_exempt(&self, lease: &Lease, cadence: &[&str]) -> bool {
        let interval = match lease.interval {
            0 => self.settings.renewal_interval.as_secs(),
            recorded => recorded,
        };
        crate::store::cadence::due(
            &lease.cadence,
            cadence,
            (interval / 2).max(1),
            now_seconds(),
        )
    }

    /// The session's live lease, if any.
    pub(crate) async fn lease(
        &self,
        user: &str,
        session: &str,
    ) -> Result<Option<Lease>, StoreError> {
        self.timed(
            "lookup",
            self.store.store.stream(user, session, now_seconds()),
        )
        .await
    }

    /// Extends a live, not stopped lease by `seconds` from now (a heartbeat, a live renewal, the
    /// renewal a license asks for); returns the lease as it stands.
    pub(crate) async fn renew(
        &self,
        user: &str,
        session: &str,
        seconds: u64,
    ) -> Result<Option<Lease>, StoreError> {
        let renewed = self
            .timed(
                "renew",
                self.store
                    .store
                    .renew_stream(user, session, seconds, now_seconds()),
            )
            .await;
        match &renewed {
            Ok(Some(lease)) if lease.stopped => {
                self.live.invalidate(&live_key(user, session));
                self.count("stopped_refused");
            }
            Ok(Some(lease)) => {
                self.seen_live(user, lease);
                self.count("renewed");
            }
            Ok(None) => self.live.invalidate(&live_key(user, session)),
            Err(_) => {}
        }
        renewed
    }

    /// The session id the answer told: the lease taken under a provisional name moves to it,
    /// with the license's renewal interval.
    pub(crate) async fn rename(
        &self,
        user: &str,
        from: &str,
        to: &str,
        seconds: u64,
        facts: &StreamFacts,
        started_cadence: &[&str],
    ) {
        self.live.invalidate(&live_key(user, from));
        match self
            .timed(
                "rename",
                self.store.store.rename_stream(
                    user,
                    from,
                    to,
                    seconds,
                    facts.interval,
                    now_seconds(),
                ),
            )
            .await
        {
            Ok(true) => self.seen_started(user, to, facts, seconds, started_cadence),
            Ok(false) => {}
            // The provisional lease stays: the stream's first renewal adopts it.
            Err(e) => tracing::warn!(error = %e, "stream lease not renamed"),
        }
    }

    /// Records the provider a failed-over request got its license from, and the device digest
    /// it reported: the stream's renewals go there, and are held to that device.
    pub(crate) async fn set_provider(
        &self,
        user: &str,
        session: &str,
        provider: &str,
        device: Option<&str>,
    ) {
        self.live.invalidate(&live_key(user, session));
        if let Err(e) = self
            .timed(
                "set_provider",
                self.store.store.set_stream_provider(
                    user,
                    session,
                    provider,
                    device,
                    now_seconds(),
                ),
            )
            .await
        {
            tracing::warn!(error = %e, "the provider a stream failed over to is not recorded");
        }
    }

    pub(crate) async fn end(&self, user: &str, session: &str) -> Result<bool, StoreError> {
        self.live.invalidate(&live_key(user, session));
        let ended = self
            .timed("end", self.store.store.end_stream(user, session))
            .await;
        if matches!(ended, Ok(true)) {
            self.count("released");
        }
        ended
    }

    pub(crate) async fn list(&self, user: &str) -> Result<Vec<Lease>, StoreError> {
        self.timed("list", self.store.store.streams(user, now_seconds()))
            .await
    }

    pub(crate) async fn end_all(&self, user: &str) -> Result<u64, StoreError> {
        // Every key of this user, and only theirs: the key starts with the user's length.
        let prefix = live_key(user, "");
        if let Err(e) = self
            .live
            .invalidate_entries_if(move |key, _| key.starts_with(&prefix))
        {
            tracing::warn!(error = %e, "seen-live streams not forgotten");
        }
        self.timed("end_all", self.store.store.end_streams(user))
            .await
    }

    async fn timed<T>(
        &self,
        operation: &str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.store.observed(&self.duration, operation, call).await
    }

    pub(crate) fn count(&self, decision: &str) {
        self.decisions.with_label_values(&[decision]).inc();
    }
}
