//! Phase "inspect answer": the provider's answer read as it arrives: its status and headers,
//! the limits decided on it, the answer held or read whole, and what the player receives.

use super::*;

/// More than any Widevine license; past it the answer is not read for its session.
const MAX_LICENSE_READ_BYTES: usize = 64 * 1024;

/// The most a vendor's answer headers may hold, names and values together.
const MAX_VENDOR_HEADER_BYTES: usize = 64 * 1024;

/// Phase "inspect response", as the answer's body and trailers arrive from the provider (before
/// the player sees them): the total budget holds, and the service certificate enters the cache
/// the moment the answer is complete.
pub(crate) fn capture_answer(
    ctx: &mut RequestCtx,
    body: Option<&Bytes>,
    end_of_stream: bool,
    trailers: bool,
) -> pingora::Result<Release> {
    if past_deadline(ctx) {
        return Error::e_explain(ErrorType::ReadTimedout, "answer outlived the total budget");
    }
    if let Some(filler) = ctx
        .plan
        .as_mut()
        .and_then(|plan| plan.service_certificate.as_mut())
    {
        if trailers {
            filler.response_trailers();
        } else {
            filler.response_body(body, end_of_stream);
        }
    }
    ctx.forward.answer_bytes += body.map_or(0, Bytes::len);
    let complete =
        end_of_stream || trailers || ctx.forward.declared_length == Some(ctx.forward.answer_bytes);
    let success = ctx.forward.status.is_some_and(|s| (200..300).contains(&s));
    if complete && success && ctx.forward.answer_bytes == 0 {
        ctx.answer.pending_problem = Some(empty_answer());
        return Error::e_explain(ErrorType::InternalError, "empty 2xx answer");
    }
    let release = if ctx.forward.held_until_body && ctx.forward.answer_bytes > 0 {
        ctx.forward.held_until_body = false;
        Release::Now
    } else {
        Release::NotYet
    };
    if let Some(hold) = ctx.held.stream.as_mut()
        && success
        && (hold.learn_session || hold.renewal)
        && hold.license.is_none()
    {
        if let Some(chunk) = body {
            if hold.answer.len() + chunk.len() <= MAX_LICENSE_READ_BYTES {
                hold.answer.extend_from_slice(chunk);
            } else {
                // No license is this large: it is not read at all.
                hold.learn_session = false;
                hold.renewal = false;
                hold.answer = BytesMut::new();
            }
        }
        if complete && (hold.learn_session || hold.renewal) {
            read_license(hold);
        }
    }
    if complete && ctx.forward.finished.is_none() {
        ctx.forward.finished = Some(Instant::now());
    }
    Ok(release)
}

/// Whether a held answer may go to the player now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Release {
    Now,
    NotYet,
}

pub(super) fn read_license(hold: &mut StreamHold) {
    hold.license = widevine::read_license(&hold.answer);
    hold.answer = BytesMut::new();
}

/// Phase "inspect response": note what the provider said, and hold a license back from a device
/// beyond the user's limit. A 2xx answer that must be read before the player sees it (a FairPlay
/// CKC to re-wrap, a provider that refuses inside 2xx answers) is collected whole; any other
/// 2xx is held until its first byte, since a 2xx without a body is refused: the return value
/// asks the caller to hold the response. Otherwise the answer passes unchanged.
pub(crate) async fn inspect_response(
    state: &State,
    ctx: &mut RequestCtx,
    status: u16,
    headers: &http::HeaderMap,
) -> pingora::Result<bool> {
    ctx.forward.status = Some(status);
    ctx.answer.status = status;
    if let Some(target) = &ctx.forward.target {
        target.state.record_success();
    }
    if !(100..=599).contains(&status) {
        // A status HTTP does not have: no player could tell what it means.
        ctx.answer.pending_problem = Some(Problem::new(Refusal::VendorAnswerInvalid).with_detail(
            format!("the vendor answered status {status}, which HTTP does not have"),
        ));
        return Error::e_explain(ErrorType::InternalError, "vendor status outside HTTP");
    }
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > MAX_VENDOR_HEADER_BYTES {
        // No license needs it, and a player may not take it.
        ctx.answer.pending_problem = Some(Problem::new(Refusal::VendorAnswerInvalid).with_detail(
            format!("the vendor's answer headers exceed {MAX_VENDOR_HEADER_BYTES} bytes"),
        ));
        return Error::e_explain(ErrorType::InternalError, "vendor headers too large");
    }
    let Some(plan) = ctx.plan.as_mut() else {
        return Ok(false);
    };
    if (400..600).contains(&status) && !plan.fallbacks.is_empty() {
        let reason = plan.provider.refusal_reason(headers);
        if let Some(failover) = FailoverReason::for_answer(status, reason.is_some()) {
            // Nothing of this answer reaches the player: the next provider is asked.
            ctx.forward.vendor_reason = reason;
            ctx.forward.failing_over = Some(failover);
            return Error::e_explain(
                ErrorType::HTTPStatus(status),
                "the provider issued no license; failing over",
            );
        }
    }
    if let Some(filler) = plan.service_certificate.as_mut() {
        filler.response_header(status, headers);
    }
    ctx.forward.declared_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok())
        .and_then(|length| length.parse().ok());
    if (200..300).contains(&status) && (status == 204 || ctx.forward.declared_length == Some(0)) {
        // No body follows, so no body filter would see it: refused here, before the device or
        // stream limits count a license that is not there, and before any of it reaches the
        // player.
        ctx.answer.pending_problem = Some(empty_answer());
        return Error::e_explain(ErrorType::InternalError, "empty 2xx answer");
    }
    if !(200..300).contains(&status) {
        ctx.answer.outcome = "vendor_refused";
        ctx.forward.vendor_reason = plan.provider.refusal_reason(headers);
    } else if plan.service_certificate.is_none() {
        let admitted = admit_on_answer(state, ctx, headers).await;
        if let Err(problem) = admitted {
            ctx.answer.status = problem.status;
            ctx.answer.outcome = problem.code;
            ctx.answer.held_back = Some(problem.to_body(&ctx.request_id));
        }
    }
    let Some(plan) = ctx.plan.as_mut() else {
        return Ok(false);
    };
    let success = (200..300).contains(&status) && ctx.answer.held_back.is_none();
    let read_whole = success && (plan.fairplay.is_some() || plan.provider.refuses_in_answers());
    if read_whole {
        ctx.answer.whole_answer = Some(WholeAnswer::default());
    }
    // Until a byte arrives, a 2xx may still turn out empty, or its vendor may go away before
    // sending what its length promised: the player sees a 502 then, not a 200 cut short.
    ctx.forward.held_until_body = success && !read_whole;
    Ok(read_whole || ctx.forward.held_until_body)
}

/// A 2xx answer without a body: no license, whichever DRM.
fn empty_answer() -> Problem {
    Problem::new(Refusal::VendorAnswerInvalid).with_detail("the vendor's 2xx answer has no body")
}

/// Phase "limits" on a provider's 2xx answer: the device limit and, for a stream known only by
/// the device, the stream limit. A refusal holds the license back.
async fn admit_on_answer(
    state: &State,
    ctx: &mut RequestCtx,
    headers: &http::HeaderMap,
) -> Result<(), Problem> {
    let Some(plan) = ctx.plan.as_ref() else {
        return Ok(());
    };
    if plan.device_limit.is_none() && ctx.held.stream.is_none() {
        return Ok(());
    }
    let device = plan.provider.device(headers);
    let reported = match &device {
        crate::providers::Device::Reported(info) => match &state.devices {
            Some(devices) => crate::limits::devices::identity(&devices.settings, info),
            None => info.client_token.clone().or_else(|| info.device_id.clone()),
        },
        _ => None,
    };
    // Every license touches its device's slot, continuations included: a slot freed by the
    // admin API or gone idle is taken again, or refused.
    if let (Some(devices), Some(limit)) = (&state.devices, &plan.device_limit) {
        devices.admit(&limit.user, &device, limit.limit).await?;
    }
    limits::admit_on_answer(state, ctx, reported).await
}

/// The provider's answer as the player receives it: provider-internal headers removed, our
/// request id and CORS added.
pub(crate) fn vendor_answer_headers(
    state: &State,
    ctx: &mut RequestCtx,
    response: &mut pingora::http::ResponseHeader,
) -> pingora::Result<()> {
    if ctx.answer.held_back.is_some() {
        // Nothing of the provider's answer may reach the player: not its headers either.
        let mut refusal = pingora::http::ResponseHeader::build(ctx.answer.status, Some(6))?;
        refusal.insert_header(header::CONTENT_TYPE, problem::CONTENT_TYPE)?;
        let length = ctx.answer.held_back.as_ref().map_or(0, Bytes::len);
        refusal.insert_header(header::CONTENT_LENGTH, length.to_string())?;
        refusal.insert_header(header::CACHE_CONTROL, "no-store")?;
        *response = refusal;
    } else if let Some(plan) = &ctx.plan {
        for name in plan.provider.internal_headers() {
            response.remove_header(name);
        }
    }
    response.insert_header(crate::http::headers::REQUEST_ID, ctx.request_id.as_str())?;
    if let Some(session) = announced_session(ctx) {
        response.insert_header(streams::SESSION_HEADER, session)?;
    }
    cors::decorate(&state.config.cors, &ctx.admitted.origin, response);
    if let Some(whole) = ctx.answer.whole_answer.as_mut() {
        whole.header = Some(Box::new(response.clone()));
    }
    Ok(())
}

/// The session id the player is told, unless its license is held back.
fn announced_session(ctx: &RequestCtx) -> Option<&str> {
    if ctx.answer.held_back.is_some() {
        return None;
    }
    ctx.held
        .stream
        .as_ref()
        .filter(|hold| hold.announce)
        .and_then(|hold| hold.session.as_deref())
}

/// The body the player receives: the provider's; the refusal in place of a held-back license;
/// or, for an answer read whole, what [`finish_whole_answer`] makes of it, with the header that
/// replaces the provider's (returned).
pub(crate) fn answer_body(
    state: &State,
    ctx: &mut RequestCtx,
    body: &mut Option<Bytes>,
    end_of_stream: bool,
) -> pingora::Result<Option<Box<pingora::http::ResponseHeader>>> {
    if ctx.answer.held_back.is_some() {
        *body = if end_of_stream {
            ctx.answer.held_back.take()
        } else {
            None
        };
        return Ok(None);
    }
    let Some(whole) = ctx.answer.whole_answer.as_mut() else {
        return Ok(None);
    };
    if let Some(chunk) = body.take() {
        if whole.body.len() + chunk.len() > fairplay::MAX_ANSWER_BYTES {
            ctx.answer.pending_problem = Some(
                Problem::new(Refusal::VendorAnswerInvalid).with_detail(format!(
                    "the answer exceeds {} bytes",
                    fairplay::MAX_ANSWER_BYTES
                )),
            );
            return Error::e_explain(ErrorType::InternalError, "answer too large to read whole");
        }
        whole.body.extend_from_slice(&chunk);
    }
    if !end_of_stream {
        return Ok(None);
    }
    let (header, answer) = finish_whole_answer(state, ctx)?;
    *body = Some(answer);
    Ok(header)
}

/// The answer read whole ended with trailers: they are dropped, and the body goes out in their
/// place.
pub(crate) fn answer_trailers(
    state: &State,
    ctx: &mut RequestCtx,
) -> pingora::Result<(Option<Bytes>, Option<Box<pingora::http::ResponseHeader>>)> {
    if ctx.answer.whole_answer.is_none() {
        return Ok((None, None));
    }
    let (header, body) = finish_whole_answer(state, ctx)?;
    Ok((Some(body), header))
}

/// Phase "inspect response" for an answer read whole: a refusal inside a 2xx becomes the
/// player's problem; a FairPlay CKC goes back in the player's envelope; anything else passes
/// unchanged. Returns the header to send in place of the provider's (`None`: keep it).
fn finish_whole_answer(
    state: &State,
    ctx: &mut RequestCtx,
) -> pingora::Result<(Option<Box<pingora::http::ResponseHeader>>, Bytes)> {
    let (Some(whole), Some(plan)) = (ctx.answer.whole_answer.take(), ctx.plan.as_ref()) else {
        return Error::e_explain(ErrorType::InternalError, "no answer or plan to finish");
    };
    let Some(mut header) = whole.header else {
        return Error::e_explain(ErrorType::InternalError, "answer body before its header");
    };
    let body = whole.body.freeze();
    let converted = match plan.provider.refusal_in_answer(&body) {
        Some(refusal) => {
            ctx.forward.vendor_reason = Some(bounded_reason(&refusal));
            Err(Problem::new(Refusal::VendorRefused)
                .with_detail(format!("{}: {}", refusal.code, refusal.message))
                .with_extension("vendor_code", refusal.code.into())
                .with_extension("vendor_message", refusal.message.into()))
        }
        None => match &plan.fairplay {
            Some(leg) => leg
                .answering
                .answer(plan.provider.as_ref(), &body)
                .map(|ckc| (ckc, leg.answering.format.content_type())),
            None => return Ok((None, body)),
        },
    };
    match converted {
        Ok((ckc, content_type)) => {
            // Pingora downgrades the version and marks a length-less answer chunked only after
            // `response_filter`, where this header was kept.
            header.set_version(http::Version::HTTP_11);
            header.remove_header(&header::TRANSFER_ENCODING);
            header.insert_header(header::CONTENT_TYPE, content_type)?;
            header.insert_header(header::CONTENT_LENGTH, ckc.len().to_string())?;
            header.remove_header(&header::CONTENT_ENCODING);
            Ok((Some(header), ckc))
        }
        Err(problem) => {
            ctx.answer.status = problem.status;
            ctx.answer.outcome = problem.code;
            let body = problem.to_body(&ctx.request_id);
            let mut refusal = pingora::http::ResponseHeader::build(problem.status, Some(6))?;
            refusal.insert_header(header::CONTENT_TYPE, problem::CONTENT_TYPE)?;
            refusal.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
            refusal.insert_header(header::CACHE_CONTROL, "no-store")?;
            refusal.insert_header(crate::http::headers::REQUEST_ID, ctx.request_id.as_str())?;
            cors::decorate(&state.config.cors, &ctx.admitted.origin, &mut refusal);
            Ok((Some(Box::new(refusal)), body))
        }
    }
}

fn bounded_reason(refusal: &crate::providers::AnswerRefusal) -> String {
    let mut reason = format!("{}: {}", refusal.code, refusal.message);
    if reason.len() > 256 {
        let cut = (0..=256)
            .rev()
            .find(|i| reason.is_char_boundary(*i))
            .unwrap_or(0);
        reason.truncate(cut);
    }
    reason
}
