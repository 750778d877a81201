//! Phase "answer" for everything licensegate says itself: CORS, request id, problem JSON.

use super::*;

/// Phase "answer" for everything licensegate says itself: CORS, request id, problem JSON.
pub(crate) async fn answer(
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
    answer: LocalAnswer,
) -> pingora::Result<()> {
    let mut response = pingora::http::ResponseHeader::build(answer.status, Some(8))?;
    if let Some(content_type) = &answer.content_type {
        response.insert_header(header::CONTENT_TYPE, content_type)?;
    }
    response.insert_header(header::CONTENT_LENGTH, answer.body.len().to_string())?;
    response.insert_header(crate::http::headers::REQUEST_ID, ctx.request_id.as_str())?;
    match answer.max_age {
        Some(age) => response.insert_header(
            header::CACHE_CONTROL,
            format!("public, max-age={}", age.as_secs()),
        )?,
        None => response.insert_header(header::CACHE_CONTROL, "no-store")?,
    };
    if answer.status == 405 {
        let path = session.req_header().uri.path();
        let allow = if path == HLS_KEY_PATH || path == FAIRPLAY_CERTIFICATE_PATH {
            "GET, OPTIONS"
        } else if path.starts_with(STREAMS_PREFIX) {
            "POST, DELETE, OPTIONS"
        } else {
            "POST, OPTIONS"
        };
        response.insert_header(header::ALLOW, allow)?;
    }
    if answer.status == 401 {
        response.insert_header(header::WWW_AUTHENTICATE, "Bearer")?;
    }
    if let Some(seconds) = answer.retry_after {
        response.insert_header(header::RETRY_AFTER, seconds.to_string())?;
    }
    if let Some(session) = &answer.session {
        response.insert_header(streams::SESSION_HEADER, session.as_str())?;
    }
    if answer.preflight {
        cors::decorate_preflight(&state.config.cors, &ctx.admitted.origin, &mut response);
    } else {
        cors::decorate(&state.config.cors, &ctx.admitted.origin, &mut response);
    }
    // A body we did not read would be taken for the next request on this connection.
    if !session.is_body_done() {
        session.set_keepalive(None);
    }
    ctx.answer.status = answer.status;
    ctx.answer.outcome = answer.outcome;
    let empty = answer.body.is_empty();
    session
        .write_response_header(Box::new(response), empty)
        .await?;
    if !empty {
        session.write_response_body(Some(answer.body), true).await?;
    }
    Ok(())
}

pub(crate) fn problem_answer(problem: &Problem, ctx: &RequestCtx) -> LocalAnswer {
    LocalAnswer::problem(problem, &ctx.request_id)
}
