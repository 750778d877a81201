//! Answers licensegate gives itself before any vendor is asked: a CORS preflight, an HLS key, the
//! FairPlay application certificate, the Widevine service certificate from memory, and the JSON
//! of a stream's heartbeat.

use super::admit::{authenticate, content_id, resolve_content};
use super::*;

pub(super) fn preflight(ctx: &RequestCtx) -> Result<Admission, Problem> {
    if matches!(ctx.admitted.origin, Origin::Refused) {
        return Err(Problem::origin_not_allowed());
    }
    Ok(Admission::Answer(LocalAnswer {
        status: 204,
        outcome: "preflight",
        content_type: None,
        body: Bytes::new(),
        preflight: true,
        max_age: None,
        retry_after: None,
        session: None,
    }))
}

/// `GET /v1/hls/key?content=ID`: the AES-128 key of an HLS stream, with the same
/// authentication and entitlement as a license.
pub(super) async fn hls_key(
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<Admission, Problem> {
    ctx.admitted.label = HLS_LABEL;
    let identity = authenticate(state, session.req_header(), &ctx.admitted.origin)?;
    let Some(catalog) = &state.catalog else {
        return Err(Problem::not_found().with_detail("HLS keys need a catalog"));
    };
    let id = content_id(session.req_header())?.ok_or_else(Problem::content_id_missing)?;
    let content = resolve_content(catalog, Some(&id), &ChallengeInfo::default()).await?;
    ctx.admitted.content_id = Some(content.id.clone());
    let grant = state
        .entitlements
        .entitle(
            identity.as_deref(),
            &content,
            HLS_LABEL,
            ctx.admitted.client.as_ref().map(|client| client.ip),
        )
        .await?;
    ctx.admitted.entitled_by = Some(grant.basis);
    check_territory(state, ctx, &session.req_header().headers, &content)?;
    let Some(hls) = &content.hls else {
        return Err(Problem::new(Refusal::KeyNotFound)
            .with_detail(format!("'{}' has no HLS key", content.id)));
    };
    Ok(Admission::Answer(LocalAnswer {
        status: 200,
        outcome: "ok",
        content_type: Some(HeaderValue::from_static("application/octet-stream")),
        body: Bytes::copy_from_slice(&hls.key),
        preflight: false,
        max_age: None,
        retry_after: None,
        session: None,
    }))
}

/// `GET /v1/fairplay/certificate[?content=ID]`: the FairPlay application certificate (DER) of
/// the provider serving FairPlay, or of the content's provider. It is public (every player of
/// the service holds it), so no token is asked for.
pub(super) async fn fairplay_certificate(
    state: &State,
    session: &Session,
    ctx: &mut RequestCtx,
) -> Result<Admission, Problem> {
    ctx.admitted.label = Drm::FairPlay.as_str();
    // The certificate is the first provider's: a failover list names providers holding the
    // same FairPlay credentials.
    let route = state
        .route(Drm::FairPlay)
        .next()
        .ok_or_else(|| Problem::drm_not_routed(Drm::FairPlay.as_str()))?;
    let provider = match (content_id(session.req_header())?, &state.catalog) {
        (Some(id), Some(catalog)) => {
            let content = resolve_content(catalog, Some(&id), &ChallengeInfo::default()).await?;
            ctx.admitted.content_id = Some(content.id.clone());
            match content.providers.first() {
                Some(name) => state.providers.get(name).ok_or_else(Problem::internal)?,
                None => route,
            }
        }
        _ => route,
    };
    ctx.admitted.provider_config = Some(provider.config.clone());
    let certificate = state.fairplay_certificates.get(provider).await?;
    Ok(Admission::Answer(LocalAnswer {
        status: 200,
        outcome: "certificate",
        content_type: Some(HeaderValue::from_static("application/octet-stream")),
        body: certificate,
        preflight: false,
        max_age: Some(state.config.fairplay.certificate_cache),
        retry_after: None,
        session: None,
    }))
}

/// The Widevine service certificate: from memory, or forwarded once to fill memory.
pub(super) async fn service_certificate(
    state: &State,
    route: &ProviderRoute,
    mut plan: ForwardPlan,
) -> Result<Admission, Problem> {
    let cache = &state.metrics.service_certificate_cache;
    let wait = route.config.total_timeout;
    match state
        .service_certificates
        .lookup(&route.config.name, wait)
        .await
    {
        Lookup::Hit(certificate) => {
            cache.with_label_values(&["hit"]).inc();
            Ok(Admission::Answer(LocalAnswer::certificate(certificate)))
        }
        Lookup::Miss(filler) => {
            cache.with_label_values(&["miss"]).inc();
            plan.service_certificate = Some(filler);
            Ok(Admission::Forward(Box::new(plan)))
        }
    }
}

pub(super) fn json_answer(
    status: u16,
    outcome: &'static str,
    body: serde_json::Value,
) -> LocalAnswer {
    LocalAnswer {
        status,
        outcome,
        content_type: Some(HeaderValue::from_static("application/json")),
        body: Bytes::from(body.to_string()),
        preflight: false,
        max_age: None,
        retry_after: None,
        session: None,
    }
}
