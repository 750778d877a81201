//! Phase "forward": the endpoint and budget of each attempt, the request the provider sees,
//! and whether a failed attempt may be retried (only when the challenge provably never arrived).

use super::*;

/// Phase "forward", each attempt: the next endpoint, with what is left of the total budget
/// bounding every wait (a turn on the endpoint's connection, connecting, the TLS handshake,
/// reading); on a multiplexed endpoint, in turn with other requests (see [`crate::providers::upstream::EndpointState`]).
/// A provider that cannot take the request hands it to the next of the plan's list.
pub(crate) async fn choose_peer(state: &State, ctx: &mut RequestCtx) -> Result<HttpPeer, Problem> {
    if let Some(reason) = ctx.forward.failing_over.take() {
        fail_over(state, ctx, reason).await?;
    }
    loop {
        match choose_endpoint(state, ctx).await? {
            Ok(peer) => return Ok(peer),
            Err(reason) => fail_over(state, ctx, reason).await?,
        }
    }
}

/// The current provider's next endpoint, or why the request leaves it for the next provider
/// (only when there is one).
async fn choose_endpoint(
    state: &State,
    ctx: &mut RequestCtx,
) -> Result<Result<HttpPeer, FailoverReason>, Problem> {
    let Some(plan) = &ctx.plan else {
        return Err(Problem::internal());
    };
    let upstream = plan.upstream.clone();
    let started = *ctx.forward.started.get_or_insert_with(Instant::now);
    ctx.forward.first_started.get_or_insert(started);
    let budget = upstream.provider.total_timeout;
    let out_of_time = || {
        Problem::upstream_timeout(format!(
            "{} did not answer within {} ms",
            upstream.provider.name,
            budget.as_millis()
        ))
    };
    if started.elapsed() >= budget {
        return Err(out_of_time());
    }
    let can_fail_over = !plan.fallbacks.is_empty();
    if let Authorizing::PerAttempt(request) = &plan.authorizing {
        match state
            .authorizations
            .authorization(&upstream.provider.name, plan.provider.as_ref(), request)
            .await
        {
            Ok(authorization) => ctx.forward.authorization = Some(authorization),
            Err(problem) if problem.status >= 500 && can_fail_over => {
                return Ok(Err(FailoverReason::Authorization));
            }
            Err(problem) => return Err(problem),
        }
    }
    loop {
        let remaining = budget.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            return Err(out_of_time());
        }
        let Some(target) = upstream.select(&ctx.forward.avoid, can_fail_over) else {
            if can_fail_over {
                return Ok(Err(FailoverReason::NoHealthyEndpoint));
            }
            return Err(Problem::upstream_unavailable(format!(
                "{} has no healthy endpoint",
                upstream.provider.name
            )));
        };
        if upstream.multiplexes() {
            let wait = remaining.min(upstream.connection_setup_timeout());
            let Some(turn) = target.state.take_turn(wait).await else {
                // Another request has been opening a connection there for as long as that may
                // take: the endpoint is stalled, and this request moves on.
                note_endpoint_failure(state, &upstream, &target);
                ctx.forward.avoid.push(target.addr);
                continue;
            };
            ctx.forward.stream_turn = Some(turn);
            // Pingora's timer fires up to a tick late: a turn granted then has no time left.
            if started.elapsed() >= budget {
                return Err(out_of_time());
            }
        }
        let peer = upstream.peer(&target, budget.saturating_sub(started.elapsed()));
        ctx.forward.tried.push(target.addr.clone());
        ctx.forward.avoid.push(target.addr.clone());
        ctx.forward.target = Some(target);
        ctx.forward.status = None;
        return Ok(Ok(peer));
    }
}

/// Why a request left a provider for the next of its list. Each is a failure after which the
/// provider provably issued no license: a vendor bills per license, and a request that may
/// have been licensed is never sent to a second one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailoverReason {
    /// Every endpoint failing its health check, ejected, or stalled opening a connection.
    NoHealthyEndpoint,
    /// Its attempts (retries included) failed before the challenge arrived.
    Connect,
    /// Its token service (or its per-attempt authorization) failed: nothing was sent to the
    /// license service.
    Authorization,
    /// It answered 429.
    TooManyRequests,
    /// It answered 500 with its own refusal reason.
    InternalError,
    /// It answered 503 with its own refusal reason.
    Unavailable,
}

impl FailoverReason {
    /// Whether an answer says no license was issued, so another provider may be asked: too
    /// many requests, or a server error the license service itself explains (its refusal
    /// reason header). A bare 5xx may come from a gateway in front of it (Envoy's 503
    /// "upstream connect error or disconnect/reset before headers" follows a challenge that
    /// may have arrived), and 502 and 504 never tell whether the service finished.
    pub(crate) fn for_answer(status: u16, vendor_explains: bool) -> Option<Self> {
        match (status, vendor_explains) {
            (429, _) => Some(FailoverReason::TooManyRequests),
            (500, true) => Some(FailoverReason::InternalError),
            (503, true) => Some(FailoverReason::Unavailable),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FailoverReason::NoHealthyEndpoint => "no_healthy_endpoint",
            FailoverReason::Connect => "connect",
            FailoverReason::Authorization => "authorization",
            FailoverReason::TooManyRequests => "answer_429",
            FailoverReason::InternalError => "answer_500",
            FailoverReason::Unavailable => "answer_503",
        }
    }
}

/// Hands the request to the next provider of the plan's list, with that provider's own
/// authorization; a fallback whose token service fails passes it on again.
async fn fail_over(
    state: &State,
    ctx: &mut RequestCtx,
    mut reason: FailoverReason,
) -> Result<(), Problem> {
    loop {
        let Some(plan) = ctx.plan.as_mut() else {
            return Err(Problem::internal());
        };
        let Some(next) = plan.fallbacks.next() else {
            return Err(Problem::internal());
        };
        let Some(upstream) = next.route.upstream(plan.drm).cloned() else {
            return Err(Problem::internal());
        };
        let from = std::mem::replace(&mut plan.upstream, upstream);
        let from = from.provider.name.clone();
        let to = next.route.config.name.clone();
        state
            .metrics
            .provider_failovers
            .with_label_values(&[plan.drm.as_str(), &from, &to, reason.as_str()])
            .inc();
        tracing::warn!(
            request_id = %ctx.request_id,
            from = %from,
            to = %to,
            reason = reason.as_str(),
            vendor_reason = ctx.forward.vendor_reason.as_deref(),
            "provider failover"
        );
        plan.provider = next.route.provider.clone();
        if let Some(leg) = next.fairplay {
            plan.challenge_len = leg.body.len();
            plan.fairplay = Some(leg);
        }
        plan.authorizing = Authorizing::Nothing;
        let request = plan.license_request.clone();
        let can_fail_over_again = !plan.fallbacks.is_empty();
        ctx.admitted.provider_config = Some(next.route.config.clone());
        if let Some(hold) = ctx.held.stream.as_mut() {
            hold.facts.provider = to;
            hold.failed_over = true;
        }
        ctx.forward.failovers.push((from, reason));
        let forward = &mut ctx.forward;
        forward.tried_before = forward.tried.len();
        forward.avoid.clear();
        forward.started = None;
        forward.target = None;
        forward.authorization = None;
        forward.status = None;
        forward.vendor_reason = None;
        forward.declared_length = None;
        ctx.answer.status = 0;
        ctx.answer.outcome = "ok";
        let Some(request) = request else {
            return Ok(());
        };
        match authorizing_for(state, &next.route, &request).await {
            Ok(authorizing) => {
                if let Some(plan) = ctx.plan.as_mut() {
                    plan.authorizing = authorizing;
                }
                return Ok(());
            }
            Err(problem) if problem.status >= 500 && can_fail_over_again => {
                reason = FailoverReason::Authorization;
            }
            Err(problem) => return Err(problem),
        }
    }
}

/// The attempt has its stream, or has failed: the next request may take its turn.
pub(crate) fn end_stream_turn(ctx: &mut RequestCtx) {
    ctx.forward.stream_turn = None;
}

fn note_endpoint_failure(state: &State, upstream: &Upstream, target: &Target) {
    if target.state.record_failure(&upstream.provider) {
        let endpoint = target.addr.to_string();
        state
            .metrics
            .upstream_ejections
            .with_label_values(&[upstream.provider.name.as_str(), endpoint.as_str()])
            .inc();
        tracing::warn!(
            provider = %upstream.provider.name,
            endpoint,
            seconds = upstream.provider.ejection_duration.as_secs(),
            "endpoint ejected after consecutive connect failures or timeouts"
        );
    }
}

/// Why a failed attempt may be made again: the challenge provably never reached the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryReason {
    /// No connection was made.
    Connect,
    /// The provider's HTTP/2 stack reset the stream with REFUSED_STREAM: not processed.
    RefusedStream,
    /// A GOAWAY whose last stream id is below this stream's: not processed (RFC 9113 §6.8).
    GoAway,
}

impl RetryReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RetryReason::Connect => "connect",
            RetryReason::RefusedStream => "refused_stream",
            RetryReason::GoAway => "goaway",
        }
    }
}

/// Phase "forward", after a failed connection attempt: nothing was sent, so the endpoint's
/// failure counts towards its ejection, and another attempt may follow.
/// Once the provider's own retries are spent, the request may fail over instead.
pub(crate) fn connect_failed(
    state: &State,
    ctx: &mut RequestCtx,
    session: &Session,
) -> Option<RetryReason> {
    if let (Some(plan), Some(target)) = (&ctx.plan, &ctx.forward.target) {
        note_endpoint_failure(state, &plan.upstream, target);
    }
    if ctx.answer.pending_problem.is_some() {
        return None;
    }
    if may_retry(ctx, session) {
        return Some(RetryReason::Connect);
    }
    consider_failover(ctx, session, FailoverReason::Connect);
    None
}

/// Phase "forward", after an attempt failed once its request was (at least partly) sent. A
/// provider bills every license it issues, so the challenge goes out again only when the provider
/// said it did not process the stream; anything else, a broken connection included, may have
/// produced a license and ends the request.
pub(crate) fn attempt_failed(
    state: &State,
    ctx: &mut RequestCtx,
    session: &Session,
    error: &Error,
) -> Option<RetryReason> {
    if ctx.forward.failing_over.is_some() {
        // The provider answered that it issued nothing (see `inspect_response`).
        return None;
    }
    let timed_out = matches!(
        error.etype(),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout
    );
    if let (true, None, Some(plan), Some(target)) = (
        timed_out,
        ctx.forward.status,
        &ctx.plan,
        &ctx.forward.target,
    ) {
        note_endpoint_failure(state, &plan.upstream, target);
    }
    let reason = never_processed(error)?;
    if ctx.forward.status.is_some() {
        return None;
    }
    if may_retry(ctx, session) {
        return Some(reason);
    }
    consider_failover(ctx, session, FailoverReason::Connect);
    None
}

/// Marks the request for the next provider of its list, if it has one and nothing of an answer
/// has reached the player.
pub(crate) fn consider_failover(ctx: &mut RequestCtx, session: &Session, reason: FailoverReason) {
    let has_next = ctx
        .plan
        .as_ref()
        .is_some_and(|plan| !plan.fallbacks.is_empty());
    if has_next && session.response_written().is_none() {
        ctx.forward.failing_over = Some(reason);
    }
}

/// Reads the HTTP/2 stream error under a Pingora error, if the provider's stack said it did not
/// process the stream.
fn never_processed(error: &Error) -> Option<RetryReason> {
    let h2 = error.root_cause().downcast_ref::<h2::Error>()?;
    if !h2.is_remote() {
        return None;
    }
    if h2.is_go_away() {
        Some(RetryReason::GoAway)
    } else if h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
        Some(RetryReason::RefusedStream)
    } else {
        None
    }
}

/// Whether the request's total budget is spent; a provider trickling its answer is cut there.
pub(super) fn past_deadline(ctx: &RequestCtx) -> bool {
    match (&ctx.plan, ctx.forward.started) {
        (Some(plan), Some(started)) => started.elapsed() > plan.upstream.provider.total_timeout,
        _ => false,
    }
}

/// The request the provider sees: our path and host, the DRM's content type, and only the
/// headers we decide on. The player's credentials and hop-by-hop headers never leave.
pub fn upstream_request(ctx: &RequestCtx) -> pingora::Result<RequestHeader> {
    let (Some(plan), Some(target)) = (&ctx.plan, &ctx.forward.target) else {
        return Error::e_explain(ErrorType::InternalError, "no plan or endpoint");
    };
    let endpoint = &target.endpoint;
    let authorization = match &plan.authorizing {
        Authorizing::Ready(authorization) => Some(authorization.as_ref()),
        Authorizing::PerAttempt(_) => ctx.forward.authorization.as_deref(),
        Authorizing::Nothing => None,
    };
    let path = authorization
        .and_then(|a| a.path_and_query.as_deref())
        .unwrap_or(&endpoint.path_and_query);
    let path = match authorization.and_then(|a| a.query.as_deref()) {
        Some(query) if path.contains('?') => Cow::Owned(format!("{path}&{query}")),
        Some(query) => Cow::Owned(format!("{path}?{query}")),
        None => Cow::Borrowed(path),
    };
    let mut request = RequestHeader::build_no_case(Method::POST, path.as_bytes(), Some(10))?;
    request.insert_header(header::HOST, endpoint.authority.as_str())?;
    let content_type = plan
        .fairplay
        .as_ref()
        .map_or(plan.drm.upstream_content_type(), |leg| leg.content_type);
    request.insert_header(header::CONTENT_TYPE, content_type)?;
    request.insert_header(
        header::CONTENT_LENGTH,
        HeaderValue::from(plan.challenge_len),
    )?;
    if let Some(action) = &plan.soap_action {
        request.insert_header("SOAPAction", action)?;
    }
    if let Some(client) = &ctx.admitted.client {
        request.insert_header("X-Forwarded-For", &client.forwarded_for)?;
    }
    request.insert_header(crate::http::headers::REQUEST_ID, ctx.request_id.as_str())?;
    request.insert_header(crate::http::trace::TRACEPARENT, ctx.trace.traceparent())?;
    if let Some(state) = &ctx.trace.state {
        request.insert_header(crate::http::trace::TRACESTATE, state.as_str())?;
    }
    for (name, value) in authorization.map_or(&[][..], |a| a.headers.as_slice()) {
        request.insert_header(name.clone(), value.clone())?;
    }
    Ok(request)
}

/// Whether a failed attempt may be tried again: within the provider's retry count and total
/// budget, and only while nothing of the answer has reached the player.
pub(crate) fn may_retry(ctx: &RequestCtx, session: &Session) -> bool {
    let Some(upstream) = ctx.plan.as_ref().map(|plan| &plan.upstream) else {
        return false;
    };
    let within_budget = ctx
        .forward
        .started
        .is_some_and(|started| started.elapsed() < upstream.provider.total_timeout);
    ctx.forward.tried.len() - ctx.forward.tried_before <= upstream.provider.retries
        && within_budget
        && session.response_written().is_none()
}

/// Phase "forward", the body of each attempt: the player's challenge, or the FairPlay SPC
/// re-wrapped for the provider. Pingora hands over the whole buffered body once per attempt.
pub(crate) fn upstream_body(ctx: &RequestCtx, body: &mut Option<Bytes>) {
    if let (Some(leg), Some(chunk)) = (
        ctx.plan.as_ref().and_then(|plan| plan.fairplay.as_ref()),
        body.as_mut(),
    ) && !chunk.is_empty()
    {
        *chunk = leg.body.clone();
    }
}
