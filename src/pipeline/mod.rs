//! One license request, phase by phase, top to bottom. The Pingora hooks in `hooks.rs` only call
//! these phases; what a phase learns lives in [`RequestCtx`], the pipeline's memory.
//!
//! | Pingora hook | phase | may change |
//! |---|---|---|
//! | `early_request_filter` | (connection clock) | `connection_busy` |
//! | `request_filter` | [`admit`]: route, limits and origin, client address, authenticate, read challenge, the stream it continues or the rates ([`limits`]), resolve content, check key IDs, entitle, persistence, stream limit, authorize with provider; or [`answer`] locally | `admitted`, `held`, and `plan`, which it creates |
//! | `upstream_peer` | [`choose_peer`]: endpoint, budget, stream turn, per-attempt authorization; failover to the plan's next provider | `forward`, `plan` (provider, authorization), `admitted.provider_config`, `held.stream` (its provider) |
//! | `connected_to_upstream` | [`end_stream_turn`] | `forward.stream_turn` |
//! | `upstream_request_filter` | [`upstream_request`]: the request the provider sees | nothing |
//! | `fail_to_connect`, `error_while_proxy` | [`connect_failed`], [`attempt_failed`]: retry only when the challenge provably never arrived; once retries are spent, fail over | `forward` |
//! | `upstream_response_filter` | [`inspect_response`]: an answer saying no license was issued fails over; the provider's reason, device limit, the stream of the device it reports, certificate fill | `forward`, `answer`, `plan`, `held.stream` |
//! | `upstream_response_body_filter`, `..._trailer_filter` | [`capture_answer`]: total budget, certificate fill, the license read into the stream's hold | `plan`, `forward`, `answer`, `held.stream` |
//! | `response_filter`, `response_body_filter` | [`vendor_answer_headers`], [`answer_body`]: an answer read whole judged before it is sent | `answer`, `forward.vendor_reason` |
//! | `fail_to_proxy` | [`fail`]: a problem, or cutting a stream already begun | `answer` |
//! | `logging` | [`settle`]: quota given back, the lease ended, named or extended; [`record`]: metrics and the access line | `held` |
//!
//! The files, in call order: `ctx.rs` (the request's memory and what admission hands on),
//! `admit.rs` (admission, then its checks in the order it calls them), `local_answers.rs` (a
//! preflight, an HLS key, the certificates), `heartbeat.rs` (a stream's heartbeat), `limits.rs`
//! (blocks, rates, quota, and which stream a request continues or starts), `forward.rs`,
//! `vendor_answer.rs`, `answer.rs` (licensegate's own answers, admission's included) and
//! `finish.rs`; `hooks.rs` wires them into Pingora.
//!
//! Admission hands the forward phases a [`ForwardPlan`]: what they need is there by
//! construction, and they find no plan only if Pingora calls them out of order (an internal
//! error, never a panic).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, StatusCode, header};
use pingora::prelude::{HttpPeer, RequestHeader, Session};
use pingora::protocols::l4::socket::SocketAddr;
use pingora::proxy::FailToProxy;
use pingora::{Error, ErrorSource, ErrorType};

use crate::cdm::fairplay;
use crate::cdm::service_certificate::{Certificate, Filler, Lookup};
use crate::challenge::{self, ChallengeInfo, RequestType, widevine};
use crate::config::ProviderConfig;
use crate::drm::Drm;
use crate::http::cors::{self, Origin};
use crate::http::forwarded::{self, ClientAddress};
use crate::http::problem::{self, Problem, Refusal};
use crate::http::trace::TraceContext;
use crate::limits::QuotaTaken;
use crate::limits::streams;
use crate::providers::ProviderRoute;
use crate::providers::upstream::{Target, Upstream};
use crate::providers::{Authorization, LicenseRequest, Minting, Provider};
use crate::rights::auth::{Cookies, Identity};
use crate::rights::catalog::{Content, Contents};
use crate::state::State;
use crate::telemetry::metrics::InFlight;
use std::borrow::Cow;
use tokio::sync::OwnedMutexGuard;

mod admit;
mod answer;
mod ctx;
mod finish;
mod forward;
mod heartbeat;
pub(crate) mod hooks;
mod limits;
mod local_answers;
mod vendor_answer;

pub use admit::*;
use admit::{authenticate, check_territory, resolve_content};
pub(crate) use answer::*;
pub use ctx::*;
pub(crate) use finish::*;
use forward::past_deadline;
pub use forward::*;
pub(crate) use limits::StreamHold;
use limits::{check_blocked, take_rate_tokens};
use local_answers::json_answer;
use vendor_answer::read_license;
pub(crate) use vendor_answer::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(
            route(&Method::POST, "/v1/license/widevine"),
            Ok(Route::License(Drm::Widevine))
        ));
        assert!(matches!(
            route(&Method::OPTIONS, "/v1/license/clearkey"),
            Ok(Route::Preflight)
        ));
        assert_eq!(
            route(&Method::GET, "/v1/license/widevine")
                .err()
                .unwrap()
                .status,
            405
        );
        assert_eq!(
            route(&Method::POST, "/v1/license/primetime")
                .err()
                .unwrap()
                .code,
            "unknown_drm"
        );
        assert_eq!(
            route(&Method::POST, "/v2/x").err().unwrap().code,
            "not_found"
        );
        assert_eq!(
            route(&Method::POST, "/v1/license/widevine/")
                .err()
                .unwrap()
                .code,
            "unknown_drm"
        );
    }

    fn request(uri: &str, header: Option<&str>) -> RequestHeader {
        let mut request = RequestHeader::build("POST", uri.as_bytes(), None).unwrap();
        if let Some(value) = header {
            request.insert_header(CONTENT_ID_HEADER, value).unwrap();
        }
        request
    }

    #[test]
    fn content_id_from_query_then_header() {
        let id = content_id(&request(
            "/v1/license/widevine?content=movie%2F1",
            Some("other"),
        ));
        assert_eq!(id.unwrap().as_deref(), Some("movie/1"));
        assert_eq!(
            content_id(&request("/x", Some("ep-2"))).unwrap().as_deref(),
            Some("ep-2")
        );
        assert_eq!(content_id(&request("/x", None)).unwrap(), None);
        for bad in ["/x?content=", "/x?content=a%20b", "/x?content=%3Cscript%3E"] {
            assert_eq!(
                content_id(&request(bad, None)).unwrap_err().code,
                "content_id_invalid",
                "{bad}"
            );
        }
        let long = format!("/x?content={}", "a".repeat(257));
        assert!(content_id(&request(&long, None)).is_err());
    }
}
