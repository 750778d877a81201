//! A stream's heartbeat, for DRMs without native renewal: `POST /v1/streams/{session}` renews
//! the lease of a stream licensegate recorded for this user, `DELETE` ends it. It may change
//! `content_id` and `entitled_by`.

use std::time::{Duration, UNIX_EPOCH};

use http::Method;
use pingora::prelude::Session;

use super::{
    Admission, RequestCtx, check_territory, json_answer, resolve_content, take_rate_tokens,
};
use crate::challenge::ChallengeInfo;
use crate::drm::Drm;
use crate::http::problem::{Problem, Refusal};
use crate::limits::streams::{self, Streams};
use crate::rights::auth::Identity;
use crate::state::State;
use crate::store::{Continuation, ContinueAsk, Lease};

/// `POST /v1/streams/{session}` renews a playback session's lease, for DRMs without native
/// renewal; `DELETE` ends it. A heartbeat is a continuation: the token, the block list and the
/// entitlement are checked again, and beyond the stream's cadence it takes rate tokens.
pub(super) async fn stream_heartbeat(
    state: &State,
    session: &Session,
    ctx: &mut RequestCtx,
    id: String,
) -> Result<Admission, Problem> {
    ctx.admitted.label = "stream";
    let Some(streams) = state.streams.as_ref().filter(|streams| streams.limited) else {
        return Err(Problem::not_found().with_detail("stream limits are not configured"));
    };
    let id = streams::valid_session(crate::http::headers::path_segment(&id))?;
    let identity = super::authenticate(state, session.req_header(), &ctx.admitted.origin)?
        .ok_or_else(Problem::internal)?;
    super::check_blocked(state, Some(&identity)).await?;
    let unavailable = |e: crate::store::StoreError| {
        tracing::error!(error = %e, "stream store unavailable");
        streams::store_unavailable()
    };
    let user = identity.user.as_str();
    if session.req_header().method == Method::DELETE {
        return match streams.end(user, &id).await.map_err(unavailable)? {
            true => Ok(Admission::Answer(json_answer(
                200,
                "stream_ended",
                serde_json::json!({"session": id, "ended": true}),
            ))),
            false => Err(Problem::new(Refusal::StreamUnknown)),
        };
    }
    let mut charged = false;
    let headers = session.req_header().headers.clone();
    let heartbeat = heartbeat_of(state, streams, ctx, &identity, &id, &headers, &mut charged).await;
    if heartbeat.is_err() && !charged {
        // A refused heartbeat is a request like any other.
        take_rate_tokens(state, ctx, Some(&identity), Drm::ClearKey).await?;
    }
    let (lease, seconds) = heartbeat?;
    let expires_at = crate::clock::rfc3339(UNIX_EPOCH + Duration::from_secs(lease.expires_at));
    let mut answer = json_answer(
        200,
        "stream_renewed",
        serde_json::json!({
            "session": id,
            "expires_at": expires_at,
            "renew_within_seconds": seconds.saturating_sub(streams.settings.grace.as_secs()),
        }),
    );
    answer.session = Some(id);
    Ok(Admission::Answer(answer))
}

/// A heartbeat's continuation of its stream, entitlement checked again: the lease as it stands,
/// and the seconds it lasts. Beyond the stream's cadence it takes rate tokens (it is no license,
/// so no quota), before the entitlement is asked when the record as last seen says so.
async fn heartbeat_of(
    state: &State,
    streams: &Streams,
    ctx: &mut RequestCtx,
    identity: &Identity,
    id: &str,
    headers: &http::HeaderMap,
    charged: &mut bool,
) -> Result<(Lease, u64), Problem> {
    let unavailable = |e: crate::store::StoreError| {
        tracing::error!(error = %e, "stream store unavailable");
        streams::store_unavailable()
    };
    let user = identity.user.as_str();
    let lease = streams
        .find(user, id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| {
            Problem::new(Refusal::StreamUnknown)
                .with_detail("no live stream by that id: start one with a license request")
        })?;
    let drm = lease.drm.parse::<Drm>().unwrap_or(Drm::ClearKey);
    let prepaid = !streams.likely_exempt(&lease, &[streams::HEARTBEAT_CADENCE]);
    if prepaid {
        *charged = true;
        take_rate_tokens(state, ctx, Some(identity), drm).await?;
    }
    ctx.admitted.content_id = Some(lease.content.clone());
    if let Some(catalog) = &state.catalog {
        let content =
            resolve_content(catalog, Some(&lease.content), &ChallengeInfo::default()).await?;
        let client_ip = ctx.admitted.client.as_ref().map(|client| client.ip);
        let entitled = match state
            .entitlements
            .entitle(Some(identity), &content, &lease.drm, client_ip)
            .await
        {
            Ok(grant) => check_territory(state, ctx, headers, &content).map(|()| grant),
            Err(problem) => Err(problem),
        };
        match entitled {
            Ok(grant) => ctx.admitted.entitled_by = Some(grant.basis),
            Err(problem) => {
                if problem.status == 403 {
                    // Entitlement ended, or the player left the content's territories: the
                    // slot frees now, not when the lease runs out.
                    let _ = streams.end(user, id).await;
                }
                return Err(problem);
            }
        }
    }
    let seconds = streams.lease_seconds(lease.interval);
    let continued = streams
        .continue_(
            user,
            ContinueAsk {
                session: id,
                content: &lease.content,
                drm: &lease.drm,
                seconds,
                cadence: &[streams::HEARTBEAT_CADENCE],
                fallback_interval: streams.settings.renewal_interval.as_secs(),
            },
        )
        .await
        .map_err(unavailable)?;
    match continued {
        Continuation::Continued { lease, exempt } => {
            match (exempt, prepaid) {
                (true, false) => state.rate_limits.exempt(),
                (false, false) => {
                    *charged = true;
                    take_rate_tokens(state, ctx, Some(identity), drm).await?
                }
                (_, true) => {}
            }
            Ok((*lease, seconds))
        }
        Continuation::Stopped => Err(streams::stream_stopped()),
        Continuation::Unknown | Continuation::Mismatch => Err(Problem::new(Refusal::StreamUnknown)),
    }
}
