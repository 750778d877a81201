//! Phase "admit": everything decided before a vendor is asked, in the order [`admit`] calls
//! it: route, limits and origin, client address, authenticate, read challenge, the stream it
//! continues or the rates, resolve content, check key IDs, entitle, persistence, stream limit,
//! authorize with the provider; or an answer licensegate gives itself.

use super::local_answers::{fairplay_certificate, hls_key, preflight, service_certificate};
use super::*;
use crate::config::MAX_PROVIDERS_IN_ORDER;

/// Phase 1: which endpoint of our API this is.
pub fn route(method: &Method, path: &str) -> Result<Route, Problem> {
    if path == FAIRPLAY_CERTIFICATE_PATH {
        return match *method {
            Method::GET => Ok(Route::FairPlayCertificate),
            Method::OPTIONS => Ok(Route::Preflight),
            _ => Err(Problem::method_not_allowed()),
        };
    }
    if path == HLS_KEY_PATH {
        return match *method {
            Method::GET => Ok(Route::HlsKey),
            Method::OPTIONS => Ok(Route::Preflight),
            _ => Err(Problem::method_not_allowed()),
        };
    }
    if let Some(session) = path.strip_prefix(STREAMS_PREFIX) {
        return match *method {
            Method::POST | Method::DELETE => Ok(Route::Stream(session.to_string())),
            Method::OPTIONS => Ok(Route::Preflight),
            _ => Err(Problem::method_not_allowed()),
        };
    }
    let Some(drm_name) = path.strip_prefix("/v1/license/") else {
        return Err(Problem::not_found());
    };
    let drm = drm_name
        .parse::<Drm>()
        .map_err(|()| Problem::unknown_drm(drm_name))?;
    match *method {
        Method::POST => Ok(Route::License(drm)),
        Method::OPTIONS => Ok(Route::Preflight),
        _ => Err(Problem::method_not_allowed()),
    }
}

/// Phases up to the forward: route, authenticate, read the challenge, resolve the content,
/// check its key IDs, entitle, pick the provider, and answer locally where licensegate can.
/// `Forward` leaves everything the forward needs in `ctx`.
pub(crate) async fn admit(
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<Admission, Problem> {
    ctx._in_flight = Some(InFlight::enter(&state.metrics.in_flight));
    let request = session.req_header();
    if let Some(trace) = TraceContext::continued(&request.headers) {
        ctx.trace = trace;
    }
    crate::http::headers::check_limits(request, &state.config.server)?;
    ctx.admitted.origin = Origin::of(&state.config.cors, request.headers.get(header::ORIGIN));
    if matches!(ctx.admitted.origin, Origin::Refused) {
        // A browser enforces CORS only on reading the answer; the request itself (and the
        // license or device slot it spends) must be refused here.
        return Err(Problem::origin_not_allowed());
    }
    ctx.admitted.client = client_address(state, session)?;
    let drm = match route(&request.method, request.uri.path())? {
        Route::Preflight => return preflight(ctx),
        Route::HlsKey => return hls_key(state, session, ctx).await,
        Route::FairPlayCertificate => return fairplay_certificate(state, session, ctx).await,
        Route::Stream(id) => return heartbeat::stream_heartbeat(state, session, ctx, id).await,
        Route::License(drm) => drm,
    };
    ctx.admitted.label = drm.as_str();
    let route = state
        .route(drm)
        .next()
        .ok_or_else(|| Problem::drm_not_routed(drm.as_str()))?
        .clone();
    ctx.admitted.provider_config = Some(route.config.clone());
    // The Widevine service certificate is public: its request needs no token, and is known
    // only once the challenge is read. Any other request without a valid token is refused
    // before its body is read.
    let authenticated = authenticate(state, session.req_header(), &ctx.admitted.origin);
    if authenticated.is_err() && !may_be_service_certificate_request(drm, session.req_header()) {
        authenticated.clone()?;
    }
    let soap_action = match drm {
        Drm::PlayReady => Some(crate::cdm::playready::soap_action(
            session.req_header().headers.get("SOAPAction"),
        )?),
        _ => None,
    };

    let challenge = read_challenge(session, &state.config.server).await?;
    let player = match drm {
        Drm::FairPlay => {
            let player = fairplay::read_request(
                &challenge,
                &session.req_header().headers,
                &state.config.fairplay,
            )?;
            ctx.admitted.fairplay_format = Some(player.spc.format.as_str());
            Some(player)
        }
        _ => None,
    };
    let fairplay_leg = |provider: &ProviderRoute, request: Option<&LicenseRequest>| {
        player.as_ref().map(|player| {
            let (body, content_type) =
                fairplay::vendor_body(provider.provider.as_ref(), request, player);
            FairPlayLeg {
                body,
                content_type,
                answering: fairplay::Answering::new(&state.config.fairplay, &player.spc.format),
            }
        })
    };
    let plan =
        |provider: &ProviderRoute, authorizing, device_limit, fairplay: Option<FairPlayLeg>| {
            Ok::<_, Problem>(ForwardPlan {
                drm,
                provider: provider.provider.clone(),
                upstream: provider
                    .upstream(drm)
                    .ok_or_else(|| Problem::drm_not_routed(drm.as_str()))?
                    .clone(),
                authorizing,
                device_limit,
                service_certificate: None,
                soap_action: soap_action.clone(),
                challenge_len: fairplay
                    .as_ref()
                    .map_or(challenge.len(), |leg| leg.body.len()),
                fairplay,
                fallbacks: Fallbacks::default(),
                license_request: None,
            })
        };
    let fallbacks = |chain: &[ProviderRoute], request: Option<&LicenseRequest>| {
        chain
            .iter()
            .skip(1)
            .map(|route| Fallback {
                route: route.clone(),
                fairplay: fairplay_leg(route, request),
            })
            .collect()
    };
    if drm.is_service_certificate_request(&challenge) {
        let identity = authenticated.ok().flatten();
        take_rate_tokens(state, ctx, identity.as_deref(), drm).await?;
        let plan = plan(&route, Authorizing::Nothing, None, None)?;
        return service_certificate(state, &route, plan).await;
    }
    let identity = authenticated?;
    check_blocked(state, identity.as_deref()).await?;
    let requested_id = match content_id(session.req_header())? {
        Some(id) => Some(id),
        None => player
            .as_ref()
            .and_then(fairplay::PlayerRequest::content_id)
            .map(valid_content_id)
            .transpose()?,
    };
    let mut parsed = challenge::parse(drm, &challenge);
    // The SPC names no key; the skd URI the player was given does.
    if let (Ok(info), Some(kid)) = (
        &mut parsed,
        player.as_ref().and_then(fairplay::PlayerRequest::kid),
    ) {
        info.key_ids.push(kid);
    }
    if let Ok(info) = &parsed {
        ctx.admitted.request_type = Some(info.request_type);
        state
            .metrics
            .license_request_types
            .with_label_values(&[drm.as_str(), info.request_type.as_str()])
            .inc();
    }
    let player_session = streams::player_session(session.req_header())?;
    let continued = limits::find_continued(
        state,
        ctx,
        identity.as_deref(),
        drm,
        parsed.as_ref().ok(),
        player_session.as_deref(),
        requested_id.as_deref(),
    )
    .await?;
    if continued.is_none() {
        limits::limit_rates(state, ctx, identity.as_deref(), drm, parsed.as_ref().ok()).await?;
    }
    let Some(catalog) = &state.catalog else {
        // Without a catalog licensegate forwards for whatever content the player names.
        ctx.admitted.content_id = Some(requested_id.ok_or_else(Problem::content_id_missing)?);
        let mut plan = plan(
            &route,
            Authorizing::Nothing,
            None,
            fairplay_leg(&route, None),
        )?;
        let chain: Vec<ProviderRoute> = state.route(drm).cloned().collect();
        plan.fallbacks = fallbacks(&chain, None);
        return Ok(Admission::Forward(Box::new(plan)));
    };
    let info = parsed.map_err(|e| Problem::new(Refusal::ChallengeMalformed).with_detail(e.0))?;
    // A continuation is for its stream's content, whatever else the request names.
    let requested_id = continued
        .as_ref()
        .map(|continuing| continuing.lease.content.clone())
        .or(requested_id);
    let content = resolve_content(catalog, requested_id.as_deref(), &info).await?;
    ctx.admitted.content_id = Some(content.id.clone());
    // Entitlement is checked for one content; the vendor must not be told of another.
    if let Some(named) = player
        .as_ref()
        .and_then(fairplay::PlayerRequest::content_id)
        && named != content.id
    {
        return Err(Problem::new(Refusal::ContentMismatch)
            .with_detail(format!("'{}' and '{named}'", content.id)));
    }
    check_key_ids(drm, &info, &content)?;
    let client_ip = ctx.admitted.client.as_ref().map(|client| client.ip);
    let entitled = match state
        .entitlements
        .entitle(identity.as_deref(), &content, drm.as_str(), client_ip)
        .await
    {
        // A renewal is checked as a new license is: a player who moved out of the content's
        // territories loses the stream.
        Ok(grant) => {
            check_territory(state, ctx, &session.req_header().headers, &content).map(|()| grant)
        }
        Err(problem) => Err(problem),
    };
    let grant = match entitled {
        Ok(grant) => grant,
        Err(problem) => {
            if let (Some(continuing), Some(streams), Some(identity), 403) =
                (&continued, &state.streams, &identity, problem.status)
            {
                // Entitlement ended (or the player left the territories): the stream's slot
                // frees now, not when its lease runs out.
                let _ = streams.end(&identity.user, &continuing.lease.session).await;
            }
            return Err(problem);
        }
    };
    ctx.admitted.entitled_by = Some(grant.basis);
    if info.persistent && !grant.policy.persistent {
        return Err(
            Problem::new(Refusal::PersistenceNotAllowed).with_detail(format!(
                "policy '{}' does not allow persistent licenses",
                grant.policy_name
            )),
        );
    }
    let max_devices = grant.max_devices;
    let mut chain = providers_in_order(state, drm, &content, continued.as_ref());
    let provider = chain
        .first()
        .cloned()
        .ok_or_else(|| no_provider_serves(drm, &content))?;
    ctx.admitted.provider_config = Some(provider.config.clone());
    if drm == Drm::FairPlay && info.key_ids.is_empty() {
        // Such a provider would license a key of other content than the one checked.
        if provider.provider.keys_from_request() {
            return Err(Problem::new(Refusal::KeyIdsUnreadable).with_detail(
                "this provider issues whatever key the SPC asks for: name the key's skd URI \
                 (X-FairPlay-Uri, or Apple's JSON uri)",
            ));
        }
        chain.retain(|route| !route.provider.keys_from_request());
    }
    // Pingora's attempt bound counts on at most this many providers.
    chain.truncate(MAX_PROVIDERS_IN_ORDER);
    let interval = match grant.policy.renewal_interval_seconds {
        0 => state
            .streams
            .as_ref()
            .map_or(0, |streams| streams.settings.renewal_interval.as_secs()),
        seconds => seconds,
    };
    let stream_ask = limits::StreamAsk {
        facts: crate::store::StreamFacts {
            content: content.id.clone(),
            drm: drm.as_str().to_string(),
            provider: provider.config.name.clone(),
            policy: grant.policy_name.clone(),
            interval,
            key_ids: content_key_ids(&info, &content),
        },
        granted_limit: grant.max_streams,
        local: provider.config.kind.facts().answers_locally,
        device_reported: provider.provider.reports_devices(),
    };
    if let Some(identity) = &identity {
        limits::admit_stream(state, ctx, identity, drm, &info, continued, stream_ask).await?;
    }
    let device_limit = match (&state.devices, &identity) {
        (Some(devices), Some(identity)) => Some(DeviceLimit {
            user: identity.user.clone(),
            limit: devices.limit_for(Some(&identity.claims), max_devices),
        }),
        _ => None,
    };
    let request = LicenseRequest {
        request_id: ctx.request_id.clone(),
        user: identity.as_ref().map(|identity| identity.user.clone()),
        content,
        drm,
        key_ids: info.key_ids.clone(),
        policy_name: grant.policy_name,
        policy: grant.policy,
        client_ip,
    };
    let fairplay = fairplay_leg(&provider, Some(&request));
    let fallbacks: Fallbacks = fallbacks(&chain, Some(&request));
    let license_request = (!fallbacks.is_empty()).then(|| Arc::new(request.clone()));
    let authorizing = match authorize(state, &provider, request, &info).await {
        // Its token service failed: nothing reached the vendor, and the next provider is asked.
        Err(problem) if problem.status >= 500 && !fallbacks.is_empty() => {
            ctx.forward.failing_over = Some(FailoverReason::Authorization);
            Authorizing::Nothing
        }
        Err(problem) => return Err(problem),
        Ok(Authorized::Locally(mut answer)) => {
            answer.session = ctx
                .held
                .stream
                .as_ref()
                .filter(|hold| hold.announce)
                .and_then(|hold| hold.session.clone());
            return Ok(Admission::Answer(answer));
        }
        Ok(Authorized::Forward(authorizing)) => authorizing,
    };
    let mut plan = plan(&provider, authorizing, device_limit, fairplay)?;
    plan.fallbacks = fallbacks;
    plan.license_request = license_request;
    Ok(Admission::Forward(Box::new(plan)))
}

/// The providers a request is sent to, in the order they are asked: the content's list, or
/// the route's. A stream's continuations go first to the provider that licensed it, while it
/// is configured; a Widevine renewal or release only there, as its license server alone knows
/// the session. Of a list, only the providers that serve the DRM are asked.
fn providers_in_order(
    state: &State,
    drm: Drm,
    content: &Content,
    continued: Option<&limits::Continuing>,
) -> Vec<ProviderRoute> {
    let listed: Vec<&ProviderRoute> = if content.providers.is_empty() {
        state.route(drm).collect()
    } else {
        content
            .providers
            .iter()
            .filter_map(|name| state.providers.get(name))
            .collect()
    };
    let recorded = continued.and_then(|continuing| state.providers.get(&continuing.lease.provider));
    let in_order: Vec<&ProviderRoute> = match recorded {
        Some(recorded) if drm == Drm::Widevine => vec![recorded],
        Some(recorded) => std::iter::once(recorded)
            .chain(
                listed
                    .into_iter()
                    .filter(|route| route.config.name != recorded.config.name),
            )
            .collect(),
        None => listed,
    };
    // Only the first may answer from licensegate itself: the others are failed over to.
    in_order
        .into_iter()
        .filter(|route| route.serves(drm))
        .enumerate()
        .filter(|(place, route)| *place == 0 || route.upstream(drm).is_some())
        .map(|(_, route)| route.clone())
        .collect()
}

/// Why no provider takes a content's request for `drm`: the ones it names serve other DRMs.
fn no_provider_serves(drm: Drm, content: &Content) -> Problem {
    if content.providers.is_empty() {
        return Problem::drm_not_routed(drm.as_str());
    }
    Problem::new(Refusal::DrmNotEnabled).with_detail(format!(
        "'{}' is licensed by {}, which do not serve {drm}",
        content.id,
        content.providers.join(", ")
    ))
}

fn client_address(state: &State, session: &Session) -> Result<Option<ClientAddress>, Problem> {
    let Some(peer) = session
        .client_addr()
        .and_then(|addr| addr.as_inet())
        .map(|addr| addr.ip())
    else {
        return Ok(None);
    };
    forwarded::client_address(
        peer,
        session.req_header().headers.get_all("X-Forwarded-For"),
        &state.config.server.trusted_proxies,
    )
    .map(Some)
}

/// Entitled, but in a territory the content may be played in? (`[territories]`)
pub(super) fn check_territory(
    state: &State,
    ctx: &RequestCtx,
    headers: &http::HeaderMap,
    content: &Content,
) -> Result<(), Problem> {
    match &state.territories {
        Some(territories) => territories.check(content, ctx.admitted.client.as_ref(), headers),
        None => Ok(()),
    }
}

pub(super) fn authenticate(
    state: &State,
    request: &RequestHeader,
    origin: &Origin,
) -> Result<Option<Arc<Identity>>, Problem> {
    let cookies = if origin.admits_cookies(&state.config.cors) {
        Cookies::Admitted
    } else {
        Cookies::Ignored
    };
    state
        .auth
        .as_ref()
        .map(|auth| auth.authenticate(request, cookies))
        .transpose()
}

/// Whether the request may be the two-byte Widevine service certificate request, which needs
/// no token.
fn may_be_service_certificate_request(drm: Drm, request: &RequestHeader) -> bool {
    let length = request
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    drm == Drm::Widevine && length.is_none_or(|length| length == 2)
}

/// Reads the whole challenge into Pingora's retry buffer, so that every attempt, retries
/// included, sends it unchanged.
async fn read_challenge(
    session: &mut Session,
    server: &crate::config::ServerSettings,
) -> Result<Bytes, Problem> {
    let limit = server.max_challenge_bytes;
    let declared = session
        .req_header()
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(Problem::body_too_large(limit));
    }
    session.enable_retry_buffering();
    let read = async {
        // Most challenges arrive in one chunk, which is kept as it came; only a challenge in
        // several chunks is copied into one buffer.
        let mut first: Option<Bytes> = None;
        let mut joined: Option<BytesMut> = None;
        let mut len = 0;
        while let Some(chunk) = session.read_request_body().await.map_err(|e| {
            Problem::new(Refusal::ChallengeUnreadable).with_detail(e.etype().as_str())
        })? {
            len += chunk.len();
            if len > limit {
                return Err(Problem::body_too_large(limit));
            }
            match (&mut joined, first.take()) {
                (Some(joined), _) => joined.extend_from_slice(&chunk),
                (None, None) => first = Some(chunk),
                (None, Some(earlier)) => {
                    let mut buffer = BytesMut::with_capacity(declared.unwrap_or(len).min(limit));
                    buffer.extend_from_slice(&earlier);
                    buffer.extend_from_slice(&chunk);
                    joined = Some(buffer);
                }
            }
        }
        Ok(joined.map_or_else(|| first.unwrap_or_default(), BytesMut::freeze))
    };
    // Pingora's timer wheel: one registration per 10 ms tick shared by every request, where
    // tokio's timer takes a lock and an entry per request.
    let body = pingora::time::timeout(server.challenge_read_timeout, read)
        .await
        .map_err(|_| Problem::new(Refusal::ChallengeTimeout))??;
    if body.is_empty() {
        return Err(Problem::body_empty());
    }
    Ok(body)
}

/// The content id the request names, if any (`?content=` first, then `X-Content-Id`).
pub fn content_id(request: &RequestHeader) -> Result<Option<String>, Problem> {
    crate::http::headers::query_or_header(request, "content", CONTENT_ID_HEADER)
        .map_err(|_| Problem::content_id_invalid())?
        .map(valid_content_id)
        .transpose()
}

/// A content id as the catalog spells them; anything else never reaches a log or a provider.
fn valid_content_id(id: impl Into<String>) -> Result<String, Problem> {
    let id = id.into();
    let well_formed = !id.is_empty()
        && id.len() <= MAX_CONTENT_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:/".contains(&b));
    if well_formed {
        Ok(id)
    } else {
        Err(Problem::content_id_invalid())
    }
}

/// The content asked for: named by the request, or else found by the challenge's key IDs.
pub(super) async fn resolve_content(
    catalog: &Contents,
    requested: Option<&str>,
    info: &ChallengeInfo,
) -> Result<Arc<Content>, Problem> {
    let unknown = |what: String| Problem::new(Refusal::ContentUnknown).with_detail(what);
    match requested {
        Some(id) => catalog
            .get(id)
            .await?
            .ok_or_else(|| unknown(format!("no content '{id}'"))),
        None => {
            let Some(first) = info.key_ids.first() else {
                return Err(Problem::content_id_missing());
            };
            catalog
                .by_kid(first)
                .await?
                .ok_or_else(|| unknown(format!("no content holds key ID {first}")))
        }
    }
}

/// Entitlement to one content must never yield another's keys: every key ID the challenge
/// names belongs to the content, and a challenge whose keys cannot be read is not forwarded.
fn check_key_ids(drm: Drm, info: &ChallengeInfo, content: &Content) -> Result<(), Problem> {
    let unreadable =
        info.unreadable_key_ids || (info.key_ids.is_empty() && !info.renews_existing_license);
    if drm.challenge_names_key_ids() && unreadable {
        return Err(Problem::new(Refusal::KeyIdsUnreadable)
            .with_detail("the challenge identifies content without key IDs"));
    }
    match info
        .key_ids
        .iter()
        .find(|kid| !content.key_ids.contains(kid))
    {
        Some(stranger) => Err(Problem::new(Refusal::KidNotInContent)
            .with_detail(format!("{stranger} does not belong to '{}'", content.id))),
        None => Ok(()),
    }
}

/// The key IDs a stream is licensed for: the challenge's, else (a Widevine renewal, a FairPlay
/// SPC) the content's.
fn content_key_ids(info: &ChallengeInfo, content: &Content) -> Vec<String> {
    let kids = if info.key_ids.is_empty() {
        &content.key_ids
    } else {
        &info.key_ids
    };
    kids.iter().map(|kid| kid.to_string()).collect()
}

enum Authorized {
    Locally(LocalAnswer),
    Forward(Authorizing),
}

/// Phase "authorize with provider": licensegate's own license, or what the provider needs to see
/// with the challenge (reused from the token cache, or left to mint per attempt).
async fn authorize(
    state: &State,
    provider: &ProviderRoute,
    request: LicenseRequest,
    challenge: &ChallengeInfo,
) -> Result<Authorized, Problem> {
    if let Some(license) = provider.provider.answer_locally(&request, challenge) {
        let license = license?;
        return Ok(Authorized::Locally(LocalAnswer {
            status: 200,
            outcome: "ok",
            content_type: Some(HeaderValue::from_static(license.content_type)),
            body: license.body,
            preflight: false,
            max_age: None,
            retry_after: None,
            session: None,
        }));
    }
    // Nothing is minted (a token service may bill for it) for a DRM this provider has no
    // endpoint for.
    if provider.upstream(request.drm).is_none() {
        return Err(Problem::drm_not_routed(request.drm.as_str()));
    }
    authorizing_for(state, provider, &request)
        .await
        .map(Authorized::Forward)
}

/// What `provider` needs to see with the challenge: an authorization from the cache or minted
/// now, or one left to mint per attempt.
pub(super) async fn authorizing_for(
    state: &State,
    provider: &ProviderRoute,
    request: &LicenseRequest,
) -> Result<Authorizing, Problem> {
    if provider.provider.minting() == Minting::PerAttempt {
        return Ok(Authorizing::PerAttempt(Box::new(request.clone())));
    }
    let authorization = state
        .authorizations
        .authorization(&provider.config.name, provider.provider.as_ref(), request)
        .await?;
    Ok(Authorizing::Ready(authorization))
}
