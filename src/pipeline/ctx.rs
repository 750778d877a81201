//! The request's memory, grouped by the phase that owns each part ([`RequestCtx`]), and what
//! admission hands the phases after it: a [`ForwardPlan`], or a [`LocalAnswer`].

use super::*;

pub(super) const CONTENT_ID_HEADER: &str = "X-Content-Id";
pub(super) const MAX_CONTENT_ID_LEN: usize = 256;

/// What the pipeline knows about one request, grouped by the phase that owns each part.
pub struct RequestCtx {
    /// The configuration this request started on; a reload does not change it mid-request.
    pub(crate) state: Arc<State>,
    pub(crate) request_id: String,
    /// The caller's trace continued, or one started for this request.
    pub(crate) trace: TraceContext,
    pub(crate) started: Instant,
    /// Whether the connection's clock counts this request (see [`crate::http::listener`]).
    pub(crate) connection_busy: bool,
    /// Admission's findings: who asks, for what, and which rule let them.
    pub admitted: Admitted,
    /// What the request holds against its user's limits, settled once it is answered.
    pub(crate) held: Held,
    /// What the forward phases work from; set when admission forwards.
    pub plan: Option<ForwardPlan>,
    pub forward: Forwarding,
    /// What the player is answered.
    pub(crate) answer: PlayerAnswer,
    pub(super) _in_flight: Option<InFlight>,
}

/// What admission learns, for the phases after it, metrics and the access line.
pub struct Admitted {
    pub origin: Origin,
    /// The DRM name, or the HLS label, for metrics and logs.
    pub(crate) label: &'static str,
    /// The provider serving the request, once routed (for metrics and logs).
    pub(crate) provider_config: Option<Arc<ProviderConfig>>,
    /// The player's address and the `X-Forwarded-For` built for the provider.
    pub client: Option<ClientAddress>,
    pub(crate) request_type: Option<RequestType>,
    /// The envelope a FairPlay player sent its SPC in.
    pub(crate) fairplay_format: Option<&'static str>,
    pub(crate) content_id: Option<String>,
    /// Which entitlement rule allowed the request (free, token, service...).
    pub(crate) entitled_by: Option<&'static str>,
}

impl Default for Admitted {
    fn default() -> Self {
        Self {
            origin: Origin::Absent,
            label: "-",
            provider_config: None,
            client: None,
            request_type: None,
            fairplay_format: None,
            content_id: None,
            entitled_by: None,
        }
    }
}

/// Set by the limits phase; the finish gives back or keeps what the answer earned.
#[derive(Default)]
pub(crate) struct Held {
    /// The stream this request starts, renews or ends, once the limits phase has looked.
    pub(crate) stream: Option<StreamHold>,
    /// A license counted against the user's quota, given back if none is issued.
    pub(crate) quota: Option<QuotaTaken>,
    /// A single-use token this request spent, given back if it buys no license.
    pub(crate) token: Option<crate::rights::single_use::SpentToken>,
}

/// What the player gets, decided by the answer phases (or a failure) and recorded at the end.
pub(crate) struct PlayerAnswer {
    pub(crate) status: u16,
    /// What the answer was, as a stable word for logs and the outcome label.
    pub(crate) outcome: &'static str,
    /// The refusal sent in place of a license the player must not get.
    pub(crate) held_back: Option<Bytes>,
    /// The provider's answer, read whole before the player sees any of it.
    pub(crate) whole_answer: Option<WholeAnswer>,
    /// A refusal decided in a phase that can only return a Pingora error; `fail_to_proxy`
    /// answers with it.
    pub(crate) pending_problem: Option<Problem>,
}

impl Default for PlayerAnswer {
    fn default() -> Self {
        Self {
            status: 0,
            outcome: "ok",
            held_back: None,
            whole_answer: None,
            pending_problem: None,
        }
    }
}

/// The upstream leg: attempts, timings and what the provider said.
#[derive(Default)]
pub struct Forwarding {
    /// Endpoints an attempt went to, in order.
    pub tried: Vec<SocketAddr>,
    /// Endpoints the next choice avoids: those tried, and those found stuck opening a
    /// connection.
    pub(crate) avoid: Vec<SocketAddr>,
    /// When the current provider's first attempt began: its budget counts from there.
    pub(crate) started: Option<Instant>,
    /// When the first provider's first attempt began: the upstream time of the request.
    pub(crate) first_started: Option<Instant>,
    pub(crate) finished: Option<Instant>,
    pub target: Option<Target>,
    /// The authorization of the current attempt, when it is minted per attempt.
    pub(crate) authorization: Option<Arc<Authorization>>,
    /// Held from choosing a backend until Pingora hands over the stream (see [`crate::providers::upstream::EndpointState`]).
    pub(crate) stream_turn: Option<OwnedMutexGuard<()>>,
    pub(crate) status: Option<u16>,
    pub(crate) vendor_reason: Option<String>,
    /// The answer's `Content-Length`: its last byte ends it, whenever the provider's HTTP/2
    /// stack sends END_STREAM (Pingora stops reading once an HTTP/1.1 player has the whole
    /// length, and never passes on a late END_STREAM).
    pub(crate) declared_length: Option<usize>,
    /// Bytes of the answer read so far.
    pub(crate) answer_bytes: usize,
    /// A 2xx answer of unknown length, held from the player until its first byte shows it is
    /// not empty.
    pub(crate) held_until_body: bool,
    /// Set when the current provider could not take the request: the next attempt goes to the
    /// next provider of the plan's list.
    pub(crate) failing_over: Option<FailoverReason>,
    /// The providers that could not take the request, in order, and why.
    pub(crate) failovers: Vec<(String, FailoverReason)>,
    /// How many of `tried` went to providers failed over from: the current provider's retries
    /// count from there.
    pub(crate) tried_before: usize,
}

impl RequestCtx {
    pub fn new(state: Arc<State>) -> Self {
        let id = uuid::Uuid::new_v4();
        Self {
            state,
            request_id: id.to_string(),
            trace: TraceContext::start(&id),
            started: Instant::now(),
            connection_busy: false,
            admitted: Admitted::default(),
            held: Held::default(),
            plan: None,
            forward: Forwarding::default(),
            answer: PlayerAnswer::default(),
            _in_flight: None,
        }
    }

    pub(crate) fn provider_name(&self) -> &str {
        self.admitted
            .provider_config
            .as_ref()
            .map_or("-", |config| config.name.as_str())
    }
}

/// What licensegate answers itself, without a provider.
pub(crate) struct LocalAnswer {
    pub(crate) status: u16,
    pub(crate) outcome: &'static str,
    pub(crate) content_type: Option<HeaderValue>,
    pub(crate) body: Bytes,
    pub(crate) preflight: bool,
    /// How long the answer may be reused; `None`: never (`no-store`).
    pub(crate) max_age: Option<std::time::Duration>,
    /// `Retry-After` seconds of a refusal that passes with time.
    pub(crate) retry_after: Option<u64>,
    /// The playback session the answer started or renewed, told to the player.
    pub(crate) session: Option<String>,
}

impl LocalAnswer {
    pub(super) fn problem(problem: &Problem, request_id: &str) -> Self {
        Self {
            status: problem.status,
            outcome: problem.code,
            content_type: Some(HeaderValue::from_static(problem::CONTENT_TYPE)),
            body: problem.to_body(request_id),
            preflight: false,
            max_age: None,
            retry_after: problem.retry_after,
            session: None,
        }
    }

    pub(super) fn certificate(certificate: Certificate) -> Self {
        Self {
            status: 200,
            outcome: "service_certificate_cached",
            content_type: certificate.content_type,
            body: certificate.body,
            preflight: false,
            max_age: None,
            retry_after: None,
            session: None,
        }
    }
}

pub(crate) enum Admission {
    Forward(Box<ForwardPlan>),
    Answer(LocalAnswer),
}

/// What admission decided for a request a provider answers.
pub struct ForwardPlan {
    pub drm: Drm,
    pub provider: Arc<dyn Provider>,
    pub upstream: Arc<Upstream>,
    pub authorizing: Authorizing,
    pub device_limit: Option<DeviceLimit>,
    /// Set when this request forwards the Widevine service certificate request to fill the cache.
    pub service_certificate: Option<Filler>,
    /// The validated SOAPAction of a PlayReady challenge.
    pub soap_action: Option<HeaderValue>,
    pub challenge_len: usize,
    /// A FairPlay request re-wrapped for the provider, and how its answer goes back.
    pub fairplay: Option<FairPlayLeg>,
    /// The providers asked next, in order, should this one not take the request.
    pub fallbacks: Fallbacks,
    /// What the fallbacks' authorizations are minted from; `None`: they need none.
    pub license_request: Option<Arc<LicenseRequest>>,
}

/// The providers a request may fail over to, next first.
#[derive(Default)]
pub struct Fallbacks(std::collections::VecDeque<Fallback>);

impl Fallbacks {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn next(&mut self) -> Option<Fallback> {
        self.0.pop_front()
    }
}

impl FromIterator<Fallback> for Fallbacks {
    fn from_iter<I: IntoIterator<Item = Fallback>>(fallbacks: I) -> Self {
        Self(fallbacks.into_iter().collect())
    }
}

/// A provider a request fails over to, with the challenge as that provider takes it.
pub(crate) struct Fallback {
    pub(crate) route: ProviderRoute,
    pub(crate) fairplay: Option<FairPlayLeg>,
}

/// The FairPlay SPC in the provider's envelope, sent in place of the player's body.
pub struct FairPlayLeg {
    pub(crate) body: Bytes,
    pub(crate) content_type: &'static str,
    pub(crate) answering: fairplay::Answering,
}

/// A provider's answer collected whole, and the header that goes with it to the player.
#[derive(Default)]
pub(crate) struct WholeAnswer {
    pub(crate) header: Option<Box<pingora::http::ResponseHeader>>,
    pub(crate) body: BytesMut,
}

/// What the provider sees with the challenge besides it.
pub enum Authorizing {
    /// Nothing: a passthrough provider, or the service certificate request.
    Nothing,
    /// One authorization for every attempt (minted once, or from the authorization cache).
    Ready(Arc<Authorization>),
    /// Minted anew for each attempt from this request (single-use tokens).
    PerAttempt(Box<LicenseRequest>),
}

/// Whose devices count, and how many may hold a license.
pub struct DeviceLimit {
    pub(crate) user: String,
    pub(crate) limit: u32,
}

pub enum Route {
    License(Drm),
    HlsKey,
    FairPlayCertificate,
    /// A player's heartbeat (`POST`) or end (`DELETE`) of its playback session.
    Stream(String),
    Preflight,
}

pub(super) const HLS_KEY_PATH: &str = "/v1/hls/key";
pub(super) const STREAMS_PREFIX: &str = "/v1/streams/";
pub(super) const FAIRPLAY_CERTIFICATE_PATH: &str = "/v1/fairplay/certificate";
/// The metrics and log label of HLS AES-128 key requests, in place of a DRM name.
pub(crate) const HLS_LABEL: &str = "hls-aes";
