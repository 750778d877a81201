//! Phases after the answer: a failure turned into the player's problem, the stores settled,
//! and the request recorded in metrics and the access line.

use super::*;

/// Phase "answer" after a forward failed: the problem decided earlier or read from the error,
/// unless part of the provider's answer already left, when all that is left is to cut the stream.
pub(crate) async fn fail(
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
    error: &Error,
) -> FailToProxy {
    if player_went_away(error) {
        // Nothing can reach the player, and nothing failed on our side or the vendor's.
        let gone = Problem::new(Refusal::ClientClosed);
        ctx.answer.status = gone.status;
        ctx.answer.outcome = gone.code;
        return FailToProxy {
            error_code: 0,
            can_reuse_downstream: false,
        };
    }
    let problem = match (ctx.answer.pending_problem.take(), ctx.forward.failing_over) {
        (Some(problem), _) => problem,
        // Pingora's attempts ran out before the next provider could be asked.
        (None, Some(reason)) => Problem::upstream_unavailable(format!(
            "{} could not take the request ({}) and no attempt was left",
            ctx.provider_name(),
            reason.as_str()
        )),
        (None, None) => crate::http::problem::upstream_failure(error),
    };
    let status = problem.status;
    let can_reuse_downstream = if session.response_written().is_none() {
        let local = problem_answer(&problem, ctx);
        answer(state, session, ctx, local).await.is_ok()
    } else {
        ctx.answer.outcome = problem.code;
        false
    };
    FailToProxy {
        error_code: status,
        can_reuse_downstream,
    }
}

/// The player hung up, reset its stream, or stopped reading the answer. Other errors Pingora
/// ascribes to the player (a request it refuses to forward) are answered as failures.
fn player_went_away(error: &Error) -> bool {
    use ErrorType::*;
    *error.esource() == ErrorSource::Downstream
        && matches!(
            error.etype(),
            ConnectionClosed | ReadError | WriteError | ReadTimedout | WriteTimedout | H2Error
        )
}

/// Phase "record", the stores: a count against the quota and a single-use token that bought no
/// license are given back, and the stream's lease settled ([`limits::settle`]).
pub(crate) async fn settle(state: &State, ctx: &mut RequestCtx, error: Option<&Error>) {
    let licensed = (200..300).contains(&ctx.answer.status) && ctx.answer.outcome == "ok";
    // An answer that ended in a way no body filter saw (no length, and END_STREAM after the
    // player's side was done) was still read whole if the request ended without an error.
    if let Some(hold) = ctx.held.stream.as_mut()
        && licensed
        && error.is_none()
        && hold.license.is_none()
        && !hold.answer.is_empty()
    {
        read_license(hold);
    }
    if let (Some(taken), Some(quotas)) = (ctx.held.quota.take(), &state.quotas)
        && !licensed
    {
        quotas.refund(&taken).await;
    }
    // A license the vendor issued and licensegate passed on stays bought even if the player
    // hung up before its last byte: the token is given back only for a license never issued.
    let vendor_issued = ctx.forward.status.is_some_and(|s| (200..300).contains(&s))
        && ctx.answer.held_back.is_none()
        && ctx.answer.pending_problem.is_none();
    if let (Some(token), Some(tokens)) = (ctx.held.token.take(), &state.single_use)
        && !licensed
        && !vendor_issued
    {
        tokens.give_back(token).await;
    }
    if let Some(hold) = ctx.held.stream.take() {
        limits::settle(state, hold, licensed).await;
    }
}

/// Phase "record": metrics and the one log line. Never the challenge, the license or secrets.
pub(crate) fn record(state: &State, ctx: &RequestCtx, error: Option<&Error>) {
    let total = ctx.started.elapsed();
    let upstream_finished = ctx.forward.finished.unwrap_or_else(Instant::now);
    let since = |started: Instant| upstream_finished.saturating_duration_since(started);
    let upstream_time = ctx.forward.first_started.map(since);
    // The provider's histogram holds its own time, not that of the providers failed over from.
    let provider_time = ctx.forward.started.map(since);
    let drm = ctx.admitted.label;
    let provider = ctx.provider_name();
    // StatusCode's label is a static string, where a formatted number is an allocation.
    let status = StatusCode::from_u16(ctx.answer.status).ok();
    let status = status.as_ref().map_or("invalid", StatusCode::as_str);
    let metrics = &state.metrics;
    metrics
        .license_duration
        .with_label_values(&[drm, provider, ctx.answer.outcome])
        .observe(total.as_secs_f64());
    metrics
        .requests
        .with_label_values(&[drm, provider, status])
        .inc();
    if let Some(provider_time) = provider_time {
        let upstream_status = ctx.forward.status.map(StatusCode::from_u16);
        let upstream_status = match &upstream_status {
            None => "error",
            Some(Ok(status)) => status.as_str(),
            Some(Err(_)) => "invalid",
        };
        metrics
            .upstream_duration
            .with_label_values(&[provider, upstream_status])
            .observe(provider_time.as_secs_f64());
    }
    // Built only for a request that failed over: "provider:reason" for each provider left.
    let failed_over = (!ctx.forward.failovers.is_empty()).then(|| {
        ctx.forward
            .failovers
            .iter()
            .map(|(from, reason)| format!("{from}:{}", reason.as_str()))
            .collect::<Vec<_>>()
            .join(",")
    });
    tracing::info!(
        target: "licensegate::access",
        request_id = %ctx.request_id,
        trace_id = %ctx.trace.trace_id,
        drm,
        provider,
        content_id = ctx.admitted.content_id.as_deref().unwrap_or("-"),
        request_type = ctx.admitted.request_type.map(RequestType::as_str),
        entitled_by = ctx.admitted.entitled_by,
        status = ctx.answer.status,
        outcome = ctx.answer.outcome,
        total_ms = millis(total),
        upstream_ms = upstream_time.map(millis),
        attempts = ctx.forward.tried.len(),
        failed_over = failed_over.as_deref(),
        vendor_reason = ctx.forward.vendor_reason.as_deref(),
        fairplay_format = ctx.admitted.fairplay_format,
        error = error.map(|e| e.etype().as_str()),
    );
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}
