//! Phase "limits": a blocked user, the rates and quota of a request that continues no stream
//! ([`limit_rates`]), and streams: which stream a request continues, if any, and the lease of
//! the one it starts. A request continues a stream only when the store's record of it is the same
//! user's, content's and DRM's (and device's, where the vendor reports one), and only at the
//! license's own cadence is it exempt from rate limits and quota. Everything else is a new
//! stream: limited, device-checked, rate-limited and counted.
//!
//! | step | when | may change |
//! |---|---|---|
//! | [`find_continued`] | in place of the rates, once the challenge is read | `held.quota`: a request beyond its stream's cadence, or refused, pays first |
//! | [`admit_stream`] | after entitlement, before the provider is asked | `held` |
//! | [`admit_on_answer`] | the provider's 2xx answer, where it reports the device | `held` |
//! | [`settle`] | after the answer | the lease: ended, renamed or extended |

use std::sync::Arc;

use bytes::BytesMut;

use super::RequestCtx;
use crate::challenge::{ChallengeInfo, RequestType, widevine};
use crate::clock::now_seconds;
use crate::drm::Drm;
use crate::http::problem::{Problem, Refusal};
use crate::limits::Scope;
use crate::limits::streams::{self, Admitted, Streams};
use crate::rights::auth::Identity;
use crate::state::State;
use crate::store::{Continuation, ContinueAsk, Lease, LeaseAsk, StreamFacts};

/// A user blocked through the admin API gets nothing more, renewals included.
pub(super) async fn check_blocked(
    state: &State,
    identity: Option<&Identity>,
) -> Result<(), Problem> {
    match (&state.blocks, identity) {
        (Some(blocks), Some(identity)) => blocks.check(&identity.user).await,
        _ => Ok(()),
    }
}

/// Phase "limits", rates, for a request that continues no stream: token buckets per client
/// address and per user, a single-use token spent on a new stream, then the user's license
/// quota (a release counts against none). A
/// continuation is limited at its stream's cadence instead ([`admit_stream`]).
pub(super) async fn limit_rates(
    state: &State,
    ctx: &mut RequestCtx,
    identity: Option<&Identity>,
    drm: Drm,
    info: Option<&ChallengeInfo>,
) -> Result<(), Problem> {
    take_rate_tokens(state, ctx, identity, drm).await?;
    let release = info.is_some_and(|info| info.request_type == RequestType::Release);
    // A single-use token buys a new stream; a challenge licensegate cannot read may be one.
    let new_stream = info.is_none_or(|info| info.request_type == RequestType::New);
    if let (Some(tokens), Some(identity), true) = (&state.single_use, identity, new_stream) {
        ctx.held.token = tokens.spend(identity, &ctx.request_id).await?;
    }
    if let (Some(quotas), Some(identity), false) = (&state.quotas, identity, release) {
        ctx.held.quota = quotas.take(&identity.user, &identity.claims, false).await?;
    }
    Ok(())
}

pub(super) async fn take_rate_tokens(
    state: &State,
    ctx: &RequestCtx,
    identity: Option<&Identity>,
    drm: Drm,
) -> Result<(), Problem> {
    if let Some(client) = &ctx.admitted.client {
        state
            .rate_limits
            .take(Scope::Client(client.ip), drm)
            .await?;
    }
    if let Some(identity) = identity {
        state
            .rate_limits
            .take(Scope::User(&identity.user), drm)
            .await?;
    }
    Ok(())
}

/// A request's part in its user's stream limit.
pub(crate) struct StreamHold {
    pub(crate) identity: Arc<Identity>,
    pub(crate) drm: Drm,
    /// What the stream is licensed for, as its lease records it.
    pub(crate) facts: StreamFacts,
    pub(crate) limit: u32,
    /// The lease's length when the license tells none.
    pub(crate) seconds: u64,
    /// The lease's name; `None` until the provider's answer tells which device asked.
    pub(crate) session: Option<String>,
    /// This request started the lease: it ends if no license follows.
    pub(crate) started: bool,
    /// When the lease ends as admission set it (seconds since the epoch; `None`: not set).
    pub(crate) lease_ends_at: Option<u64>,
    /// The lease has a provisional name until the Widevine license tells its session id.
    pub(crate) learn_session: bool,
    /// A Widevine renewal, whose license tells when the next renewal comes.
    pub(crate) renewal: bool,
    /// A Widevine release: the stream ends once the vendor accepts it.
    pub(crate) release: bool,
    /// The player is told the session id (`X-Playback-Session`).
    pub(crate) announce: bool,
    /// The request continues a recorded stream.
    pub(crate) continued: Option<Continued>,
    /// The request failed over: `facts.provider` licensed it, not the provider its lease
    /// was written with.
    pub(crate) failed_over: bool,
    /// The digest of the device `facts.provider` reported, once its answer is read.
    pub(crate) reported_device: Option<String>,
    /// The start of the provider's answer, for the license's identification and policy.
    pub(crate) answer: BytesMut,
    pub(crate) license: Option<widevine::IssuedLicense>,
}

/// What a continuing request knows of its stream's record.
pub(crate) struct Continued {
    /// The device the record holds (a digest; `None`: none reported yet).
    pub(crate) device: Option<String>,
    /// Within the stream's cadence: no rate token or quota refusal was taken.
    pub(crate) exempt: bool,
}

/// What the stream limit needs to know of the license being asked for.
pub(super) struct StreamAsk {
    pub(crate) facts: StreamFacts,
    /// The entitlement service's stream limit for the user.
    pub(crate) granted_limit: Option<u32>,
    /// licensegate answers the license itself.
    pub(crate) local: bool,
    /// The provider's answer tells which device asked.
    pub(crate) device_reported: bool,
}

/// The session a request continues, if it names one: a Widevine renewal or release names its
/// license's, other players the one licensegate told them.
fn named_session(
    drm: Drm,
    info: Option<&ChallengeInfo>,
    player_session: Option<&str>,
) -> Option<String> {
    match info.and_then(|info| info.license_session_id.as_deref()) {
        Some(session_id) if drm == Drm::Widevine => Some(streams::widevine_session(session_id)),
        _ if drm == Drm::Widevine => None,
        _ => player_session.map(str::to_string),
    }
}

fn renews_license(drm: Drm, info: Option<&ChallengeInfo>) -> bool {
    drm == Drm::Widevine && info.is_some_and(|info| info.license_session_id.is_some())
}

fn stream_unknown() -> Problem {
    Problem::new(Refusal::StreamUnknown)
        .with_detail("no live stream of yours holds this license: start a new one")
}

/// The recorded stream a request continues.
pub(super) struct Continuing {
    pub(crate) lease: Lease,
    /// It took rate tokens and quota already: the record as last seen put it beyond its
    /// stream's cadence.
    pub(crate) prepaid: bool,
    /// What it continues, in the stream's cadence ([`cadence_of`]).
    pub(crate) cadence: Vec<String>,
}

/// The recorded stream a request names, looked up before anything else is asked of it: its
/// content is the one the request is for. A Widevine renewal naming no stream of this user's is
/// refused (it can start none); another player's unknown session id is ignored, and the request
/// starts a stream of its own. A request beyond its stream's cadence by the record as last seen
/// is limited here, and a refused one takes rate tokens, so that neither costs entitlement and
/// store calls for free.
pub(super) async fn find_continued(
    state: &State,
    ctx: &mut RequestCtx,
    identity: Option<&Identity>,
    drm: Drm,
    info: Option<&ChallengeInfo>,
    player_session: Option<&str>,
    requested_content: Option<&str>,
) -> Result<Option<Continuing>, Problem> {
    let (Some(streams), Some(identity), Some(_)) = (&state.streams, identity, &state.catalog)
    else {
        return Ok(None);
    };
    if !streams.limited && drm != Drm::Widevine {
        return Ok(None);
    }
    let found = match look_up(
        streams,
        identity,
        drm,
        info,
        player_session,
        requested_content,
    )
    .await
    {
        Ok(found) => found,
        Err(problem) => {
            take_rate_tokens(state, ctx, Some(identity), drm).await?;
            return Err(problem);
        }
    };
    let Some(lease) = found else {
        return Ok(None);
    };
    if info.is_some_and(|info| info.request_type == RequestType::Release) {
        // A release is no license (no quota), but reaches the vendor: it takes rate tokens.
        take_rate_tokens(state, ctx, Some(identity), drm).await?;
        return Ok(Some(Continuing {
            lease,
            prepaid: true,
            cadence: Vec::new(),
        }));
    }
    let cadence = cadence_of(drm, info, &lease.key_ids);
    let continued: Vec<&str> = cadence.iter().map(String::as_str).collect();
    let prepaid = !streams.likely_exempt(&lease, &continued);
    if prepaid {
        limit_as_new(state, ctx, identity, drm).await?;
    }
    Ok(Some(Continuing {
        lease,
        prepaid,
        cadence,
    }))
}

async fn look_up(
    streams: &Streams,
    identity: &Identity,
    drm: Drm,
    info: Option<&ChallengeInfo>,
    player_session: Option<&str>,
    requested_content: Option<&str>,
) -> Result<Option<Lease>, Problem> {
    let renewal =
        drm == Drm::Widevine && info.is_some_and(|info| info.request_type == RequestType::Renewal);
    let Some(session) = named_session(drm, info, player_session) else {
        // A Widevine renewal that names no license renews nothing.
        return if renewal && streams.limited {
            Err(stream_unknown())
        } else {
            Ok(None)
        };
    };
    let mut found = streams.find(&identity.user, &session).await;
    if let (Ok(None), true, Some(cdm_session)) = (
        &found,
        renews_license(drm, info),
        info.and_then(|info| info.cdm_request_id.as_deref()),
    ) {
        found = streams.adopt(&identity.user, cdm_session, &session).await;
    }
    let found = match found {
        Ok(found) => found,
        Err(e) => return store_down(streams, &e).map(|()| None),
    };
    match found {
        Some(lease) if lease.drm == drm.as_str() => {
            if let Some(named) = requested_content
                && named != lease.content
            {
                return Err(Problem::new(Refusal::ContentMismatch).with_detail(format!(
                    "the playback session plays '{}', not '{named}'",
                    lease.content
                )));
            }
            if lease.stopped {
                return Err(streams::stream_stopped());
            }
            Ok(Some(lease))
        }
        // A release of a stream whose lease ran out still reaches the vendor, limited as any
        // request (an offline license is released long after its lease). Without `[streams]`
        // a renewal of a license issued unrecorded (before the store held records, or while it
        // was down) is a license request for the content it names.
        _ if renewal && streams.limited => Err(stream_unknown()),
        _ => Ok(None),
    }
}

/// A store that cannot answer: the request goes on unchecked under `fail_open`, else 503.
fn store_down(streams: &Streams, error: &crate::store::StoreError) -> Result<(), Problem> {
    tracing::error!(error = %error, "stream store unavailable");
    if streams.settings.fail_open {
        streams.count("store_down_allowed");
        Ok(())
    } else {
        streams.count("store_down_refused");
        Err(streams::store_unavailable())
    }
}

/// A request continuing its stream within the cadence: no rate token; the quota counts it
/// while there is some left and never refuses it.
async fn exempt(state: &State, ctx: &mut RequestCtx, identity: &Identity) -> Result<(), Problem> {
    state.rate_limits.exempt();
    if let Some(quotas) = &state.quotas {
        ctx.held.quota = quotas.take(&identity.user, &identity.claims, true).await?;
    }
    Ok(())
}

/// A request limited as the new license it is: rate tokens, and the quota unless it took it.
async fn limit_as_new(
    state: &State,
    ctx: &mut RequestCtx,
    identity: &Identity,
    drm: Drm,
) -> Result<(), Problem> {
    take_rate_tokens(state, ctx, Some(identity), drm).await?;
    if let (Some(quotas), None) = (&state.quotas, &ctx.held.quota) {
        ctx.held.quota = quotas.take(&identity.user, &identity.claims, false).await?;
    }
    Ok(())
}

/// What a request continues, in its stream's cadence: a Widevine renewal; else the license of
/// each key ID it names, else of the stream's; else, naming none, a license.
fn cadence_of(drm: Drm, info: Option<&ChallengeInfo>, stream_key_ids: &[String]) -> Vec<String> {
    let continued = match info {
        Some(info) if drm == Drm::Widevine && info.request_type != RequestType::New => {
            vec![streams::RENEWAL_CADENCE.to_string()]
        }
        Some(info) if !info.key_ids.is_empty() => {
            info.key_ids.iter().map(|kid| kid.to_string()).collect()
        }
        _ => stream_key_ids.to_vec(),
    };
    if continued.is_empty() {
        vec![streams::LICENSE_CADENCE.to_string()]
    } else {
        continued
    }
}

/// What a license starting a stream counts as in its cadence: the first of each continuation.
fn started_cadence(drm: Drm, facts: &StreamFacts) -> Vec<String> {
    let mut started = if drm == Drm::Widevine {
        vec![streams::RENEWAL_CADENCE.to_string()]
    } else if facts.key_ids.is_empty() {
        vec![streams::LICENSE_CADENCE.to_string()]
    } else {
        facts.key_ids.clone()
    };
    started.push(streams::HEARTBEAT_CADENCE.to_string());
    started
}

/// The stream this request continues or starts, decided before the provider is asked (it bills
/// per license); a stream known only by the device the provider reports is decided on the
/// answer ([`admit_on_answer`]). A continuation beyond its stream's cadence is limited as the
/// new license it costs the vendor: rate tokens, and quota.
#[allow(clippy::too_many_arguments)]
pub(super) async fn admit_stream(
    state: &State,
    ctx: &mut RequestCtx,
    identity: &Arc<Identity>,
    drm: Drm,
    info: &ChallengeInfo,
    continuing: Option<Continuing>,
    ask: StreamAsk,
) -> Result<(), Problem> {
    let Some(streams) = &state.streams else {
        return Ok(());
    };
    if !streams.limited && drm != Drm::Widevine {
        return Ok(());
    }
    let user = identity.user.as_str();
    let seconds = streams.lease_seconds(ask.facts.interval);
    let mut hold = StreamHold {
        identity: identity.clone(),
        drm,
        limit: streams.limit_for(Some(&identity.claims), ask.granted_limit),
        seconds,
        session: None,
        started: false,
        lease_ends_at: None,
        learn_session: false,
        renewal: false,
        release: false,
        announce: false,
        continued: None,
        failed_over: false,
        reported_device: None,
        answer: BytesMut::new(),
        license: None,
        facts: ask.facts,
    };
    if let Some(Continuing {
        lease,
        prepaid,
        cadence,
    }) = continuing
    {
        if info.request_type == RequestType::Release {
            // The stream ends once the vendor accepts the release ([`settle`]); the release
            // took its rate tokens ([`find_continued`]).
            hold.session = Some(lease.session);
            hold.release = true;
            ctx.held.stream = Some(hold);
            return Ok(());
        }
        let cadence: Vec<&str> = cadence.iter().map(String::as_str).collect();
        let asked_at = now_seconds();
        let continuation = streams
            .continue_(
                user,
                ContinueAsk {
                    session: &lease.session,
                    content: &hold.facts.content,
                    drm: drm.as_str(),
                    seconds,
                    cadence: &cadence,
                    fallback_interval: streams.settings.renewal_interval.as_secs(),
                },
            )
            .await;
        match continuation {
            Ok(Continuation::Continued {
                lease: record,
                exempt: within,
            }) => {
                match (within, prepaid) {
                    (true, false) => exempt(state, ctx, identity).await?,
                    (false, false) => limit_as_new(state, ctx, identity, drm).await?,
                    (_, true) => {}
                }
                hold.session = Some(lease.session);
                hold.lease_ends_at = Some(asked_at + seconds);
                hold.renewal = drm == Drm::Widevine;
                hold.announce = drm != Drm::Widevine;
                hold.continued = Some(Continued {
                    device: record.device,
                    exempt: within && !prepaid,
                });
                ctx.held.stream = Some(hold);
                return Ok(());
            }
            Ok(Continuation::Stopped) => return Err(streams::stream_stopped()),
            Ok(_) if drm == Drm::Widevine => return Err(stream_unknown()),
            // Ended or displaced since it was looked up: the request starts a stream.
            Ok(_) if !prepaid => limit_as_new(state, ctx, identity, drm).await?,
            Ok(_) => {}
            Err(e) => {
                store_down(streams, &e)?;
                return match prepaid {
                    true => Ok(()),
                    false => limit_as_new(state, ctx, identity, drm).await,
                };
            }
        }
    }
    let session = if drm == Drm::Widevine && info.request_type != RequestType::New {
        // A release of no recorded stream, or a renewal with the store down under
        // `fail_open`: nothing to lease.
        return Ok(());
    } else if drm == Drm::Widevine && !ask.local {
        hold.learn_session = true;
        streams::pending_session(info.cdm_request_id.as_deref(), &ctx.request_id)
    } else if ask.device_reported && !ask.local {
        ctx.held.stream = Some(hold);
        return Ok(());
    } else {
        hold.announce = true;
        streams::issued_session()
    };
    let cadence = started_cadence(drm, &hold.facts);
    let cadence: Vec<&str> = cadence.iter().map(String::as_str).collect();
    let asked_at = now_seconds();
    let decided = streams
        .admit(
            user,
            LeaseAsk {
                session: &session,
                facts: &hold.facts,
                seconds,
                cadence: &cadence,
            },
            hold.limit,
        )
        .await?;
    hold.started = decided == Admitted::Started;
    if decided != Admitted::Unchecked {
        hold.lease_ends_at = Some(asked_at + seconds);
    }
    hold.session = Some(session);
    ctx.held.stream = Some(hold);
    Ok(())
}

/// Phase "limits" on the provider's answer, for the stream: a continuation from another device
/// than its record's is a new stream; a stream known only by the device the provider reports
/// (a new one if it reports none) is admitted now; a device the record lacks is recorded.
/// `device` is the reported device's identity.
pub(super) async fn admit_on_answer(
    state: &State,
    ctx: &mut RequestCtx,
    device: Option<String>,
) -> Result<(), Problem> {
    let (Some(streams), Some(hold)) = (&state.streams, ctx.held.stream.as_ref()) else {
        return Ok(());
    };
    if hold.release {
        return Ok(());
    }
    let digest = device.as_deref().map(streams::device_digest);
    let mut recorded = hold.continued.as_ref().and_then(|c| c.device.clone());
    if let (Some(_), None, Some(digest), Some(session)) =
        (&hold.continued, &recorded, &digest, &hold.session)
    {
        // The first device reported is the stream's: of two devices racing to continue a
        // stream that recorded none, one wins and the other is another device.
        recorded = streams
            .set_device(&hold.identity.user, session, digest)
            .await;
    }
    // A Widevine license is bound to the CDM that asked: its session is its stream whatever
    // device the vendor names.
    // Vendors name a device each their own way: after a failover the device a stream recorded
    // and the one reported are not comparable.
    let another_device = hold.drm != Drm::Widevine
        && !hold.failed_over
        && matches!((&recorded, &digest), (Some(r), Some(d)) if r != d);
    if another_device {
        let was_exempt = hold.continued.as_ref().is_some_and(|c| c.exempt);
        let (drm, identity) = (hold.drm, hold.identity.clone());
        if let Some(hold) = ctx.held.stream.as_mut() {
            hold.continued = None;
            hold.session = None;
            hold.lease_ends_at = None;
        }
        if was_exempt {
            limit_as_new(state, ctx, &identity, drm).await?;
        }
    }
    let Some(hold) = ctx.held.stream.as_mut() else {
        return Ok(());
    };
    hold.reported_device.clone_from(&digest);
    if hold.session.is_none() {
        let session = match &device {
            Some(device) => streams::device_session(device, &hold.facts.content, hold.drm.as_str()),
            None => streams::issued_session(),
        };
        let cadence = started_cadence(hold.drm, &hold.facts);
        let cadence: Vec<&str> = cadence.iter().map(String::as_str).collect();
        let admitted = streams
            .admit(
                &hold.identity.user,
                LeaseAsk {
                    session: &session,
                    facts: &hold.facts,
                    seconds: hold.seconds,
                    cadence: &cadence,
                },
                hold.limit,
            )
            .await?;
        hold.started = admitted == Admitted::Started;
        hold.session = Some(session);
        hold.announce = true;
    }
    if let (Some(digest), Some(session), None) = (&digest, &hold.session, &hold.continued) {
        streams
            .set_device(&hold.identity.user, session, digest)
            .await;
    }
    Ok(())
}

/// Phase "record", the lease: one started for a request that got no license ends, a Widevine
/// lease takes the session id and renewal interval its license tells.
pub(super) async fn settle(state: &State, hold: StreamHold, licensed: bool) {
    let Some(streams) = &state.streams else {
        return;
    };
    let Some(session) = hold.session else {
        return;
    };
    if hold.release {
        if licensed && let Err(e) = streams.end(&hold.identity.user, &session).await {
            tracing::warn!(error = %e, "stream lease not ended on release");
        }
        return;
    }
    if !licensed {
        if hold.started
            && let Err(e) = streams.end(&hold.identity.user, &session).await
        {
            tracing::warn!(error = %e, "lease of a refused stream not ended");
        }
        return;
    }
    // Before any renaming, which carries the lease's provider and device to its new name.
    if hold.failed_over {
        streams
            .set_provider(
                &hold.identity.user,
                &session,
                &hold.facts.provider,
                hold.reported_device.as_deref(),
            )
            .await;
    }
    let Some(license) = hold.license else {
        return;
    };
    let renewal = license.renewal;
    let mut facts = hold.facts;
    let seconds = if renewal.can_renew && renewal.delay_seconds > 0 {
        facts.interval = renewal.delay_seconds.min(streams::MAX_INTERVAL_SECONDS);
        streams.lease_seconds(renewal.delay_seconds)
    } else {
        hold.seconds
    };
    if hold.learn_session && !license.session_id.is_empty() {
        let named = streams::widevine_session(&license.session_id);
        let started = started_cadence(hold.drm, &facts);
        let started: Vec<&str> = started.iter().map(String::as_str).collect();
        streams
            .rename(
                &hold.identity.user,
                &session,
                &named,
                seconds,
                &facts,
                &started,
            )
            .await;
    } else if hold.renewal
        // Unless admission set the lease to end as late already.
        && hold
            .lease_ends_at
            .is_none_or(|ends_at| ends_at < now_seconds() + seconds)
        && let Err(e) = streams.renew(&hold.identity.user, &session, seconds).await
    {
        tracing::warn!(error = %e, "stream lease not extended to the license's renewal");
    }
}
