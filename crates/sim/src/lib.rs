//! `licensegate-sim`: the license-server side for tests, local development and load tests.
//!
//! Answers are derived from the challenge, so a test can prove that bytes travelled unchanged
//! in both directions. Failures (status, delay, connection reset, GOAWAY) are injected by flag
//! or, for direct calls, by request header. With `--vendor`, license requests must also pass
//! that vendor's authorization checks ([`vendors`]).

pub mod fairplay;
pub mod playready_server;
pub mod sessions;
pub mod vendors;
pub mod widevine_server;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Notify};

use fairplay::Envelope;
use vendors::{SimVendor, VendorArgs, VendorSim};

/// The start of every license the simulator issues; the rest is SHA-256 of the challenge.
pub const LICENSE_PREFIX: &[u8] = b"licensegate-sim license\n";
/// `SignedMessage{type=SERVICE_CERTIFICATE, msg="licensegate-sim service certificate"}`.
pub const SERVICE_CERTIFICATE: &[u8] = b"\x08\x05\x12\x23licensegate-sim service certificate";
const MAX_CHALLENGE_BYTES: usize = 1024 * 1024;

/// The license the simulator answers for `challenge`.
pub fn license_for(challenge: &[u8]) -> Vec<u8> {
    if challenge == [0x08, 0x04] {
        return SERVICE_CERTIFICATE.to_vec();
    }
    let mut license = LICENSE_PREFIX.to_vec();
    license.extend_from_slice(&Sha256::digest(challenge));
    license
}

/// How the simulator misbehaves; every field is off by default.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Faults {
    /// Answer every license request with this status instead of 200.
    #[arg(long)]
    pub status: Option<u16>,
    /// The refusal reason sent with --status, in --reason-header.
    #[arg(long, default_value = "refused by licensegate-sim")]
    pub reason: String,
    /// The header a refusal reason travels in (vendors each have their own).
    #[arg(long, default_value = "X-AxDRM-ErrorMessage")]
    pub reason_header: String,
    /// Wait this long before answering.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Reset (TCP RST) this many of the first connections that send a request. Connections
    /// that send nothing (TCP health checks) are not counted.
    #[arg(long, default_value_t = 0)]
    pub reset_connections: u64,
    /// Send GOAWAY on a connection after it has served this many requests.
    #[arg(long)]
    pub goaway_after: Option<u64>,
    /// Refuse this many of the first HTTP/2 connections that open a stream: once the first
    /// HEADERS frame arrives, answer GOAWAY(last stream id 0, NO_ERROR), which tells the
    /// client that no stream on it was processed (RFC 9113 section 6.8).
    #[arg(long, default_value_t = 0)]
    pub refuse_connections: u64,
    /// Refuse every license request with 403 as soon as its headers arrive, without reading
    /// the challenge: over HTTP/2 the stream then ends with RST_STREAM(NO_ERROR), which RFC
    /// 9113 section 8.1 allows (nginx's `return` does the same).
    #[arg(long)]
    pub early_answer: bool,
}

#[derive(Default)]
struct Stats {
    connections: AtomicU64,
    /// Connections that sent at least one byte: what a proxy's pool really opened.
    request_connections: AtomicU64,
    resets: AtomicU64,
    refused_connections: AtomicU64,
    early_answers: AtomicU64,
    requests: AtomicU64,
    licenses: AtomicU64,
    service_certificates: AtomicU64,
    refusals: AtomicU64,
    token_requests: AtomicU64,
    fairplay_licenses: AtomicU64,
    certificates: AtomicU64,
}

/// The latest license request, for tests that check what the proxy forwards.
#[derive(Default)]
struct LastRequest {
    headers: Option<HeaderMap>,
    uri: Option<String>,
    refusal: Option<String>,
    /// SHA-256 of the last SPC taken out of its envelope, and the form fields beside it.
    spc_sha256: Option<String>,
    fairplay_fields: Vec<(String, String)>,
}

struct Sim {
    faults: Faults,
    vendor: VendorSim,
    sessions: sessions::Sessions,
    /// The faithful Widevine license server, when content keys are given.
    widevine: Option<widevine_server::WidevineServer>,
    /// The faithful PlayReady license server, when content keys are given.
    playready: Option<playready_server::PlayReadyServer>,
    stats: Stats,
    last: Mutex<LastRequest>,
}

/// Serves until the process ends.
pub async fn serve(
    listener: TcpListener,
    faults: Faults,
    vendor: VendorArgs,
) -> std::io::Result<()> {
    let sim = Arc::new(Sim {
        faults,
        sessions: sessions::Sessions::new(vendor.widevine_renewal_seconds),
        widevine: widevine_server(&vendor)?,
        playready: playready_server(&vendor)?,
        vendor: VendorSim::new(vendor),
        stats: Stats::default(),
        last: Mutex::new(LastRequest::default()),
    });
    loop {
        let (stream, _) = listener.accept().await?;
        sim.stats.connections.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        tokio::spawn(accept(sim.clone(), stream));
    }
}

/// The faithful Widevine license server the flags ask for, if any.
fn widevine_server(
    vendor: &VendorArgs,
) -> std::io::Result<Option<widevine_server::WidevineServer>> {
    if vendor.widevine_content_keys.is_empty() {
        return Ok(None);
    }
    let keys = content_keys("--widevine-content-key", &vendor.widevine_content_keys)?
        .into_iter()
        .map(|(kid, key)| (kid.to_vec(), key))
        .collect();
    let service = match (
        &vendor.widevine_service_certificate,
        &vendor.widevine_service_key,
    ) {
        (Some(certificate), Some(key)) => {
            Some((std::fs::read(certificate)?, std::fs::read_to_string(key)?))
        }
        _ => None,
    };
    let renewal = sessions::renewal_every(vendor.widevine_renewal_seconds.unwrap_or(300));
    widevine_server::WidevineServer::new(keys, service, renewal)
        .map(Some)
        .map_err(invalid)
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, what)
}

/// `KID:KEY` pairs (hex, the KID with or without dashes) as a flag lists them.
fn content_keys(
    flag: &str,
    pairs: &[String],
) -> std::io::Result<std::collections::HashMap<[u8; 16], [u8; 16]>> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once(':')
                .and_then(|(kid, key)| {
                    let kid: [u8; 16] = hex::decode(kid.replace('-', "")).ok()?.try_into().ok()?;
                    let key: [u8; 16] = hex::decode(key).ok()?.try_into().ok()?;
                    Some((kid, key))
                })
                .ok_or_else(|| invalid(format!("{flag} {pair}: not KID:KEY")))
        })
        .collect()
}

/// The faithful PlayReady license server the flags ask for, if any.
fn playready_server(
    vendor: &VendorArgs,
) -> std::io::Result<Option<playready_server::PlayReadyServer>> {
    let Some(key) = &vendor.playready_server_key else {
        return Ok(None);
    };
    let keys = content_keys("--playready-content-key", &vendor.playready_content_keys)?;
    let key = hex::decode(key).map_err(|_| invalid("--playready-server-key: not hex".into()))?;
    playready_server::PlayReadyServer::new(keys, &key)
        .map(Some)
        .map_err(invalid)
}

async fn accept(sim: Arc<Sim>, stream: TcpStream) {
    let mut first = [0u8; 1];
    if !matches!(stream.peek(&mut first).await, Ok(n) if n > 0) {
        return;
    }
    let number = sim
        .stats
        .request_connections
        .fetch_add(1, Ordering::Relaxed)
        + 1;
    if number <= sim.faults.reset_connections {
        sim.stats.resets.fetch_add(1, Ordering::Relaxed);
        reset(stream);
        return;
    }
    if number <= sim.faults.reset_connections + sim.faults.refuse_connections {
        if refuse_after_first_stream(stream).await.is_ok() {
            sim.stats
                .refused_connections
                .fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    serve_connection(sim, stream).await;
}

/// Reads the client preface and frames up to the first HEADERS, then refuses everything on
/// the connection with our SETTINGS and a GOAWAY naming stream 0 as the last one processed.
async fn refuse_after_first_stream(mut stream: TcpStream) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const FRAME_HEADERS: u8 = 1;
    let mut preface = [0u8; 24];
    stream.read_exact(&mut preface).await?;
    loop {
        let mut header = [0u8; 9];
        stream.read_exact(&mut header).await?;
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; length];
        stream.read_exact(&mut payload).await?;
        if header[3] == FRAME_HEADERS {
            break;
        }
    }
    let settings = [0, 0, 0, 4, 0, 0, 0, 0, 0];
    let goaway = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    stream.write_all(&settings).await?;
    stream.write_all(&goaway).await?;
    stream.shutdown().await?;
    // Whatever the client still sends is read and dropped, so closing sends no RST that could
    // overtake the GOAWAY.
    let mut sink = [0u8; 4096];
    let drain = async {
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    Ok(())
}

fn reset(stream: TcpStream) {
    // Linger zero turns the close into an RST, as a crashed or overloaded server would send.
    if let Ok(stream) = stream.into_std() {
        let socket = socket2::Socket::from(stream);
        let _ = socket.set_linger(Some(Duration::ZERO));
    }
}

async fn serve_connection(sim: Arc<Sim>, stream: TcpStream) {
    let served = Arc::new(AtomicU64::new(0));
    let goaway = Arc::new(Notify::new());
    let service = {
        let sim = sim.clone();
        let goaway = goaway.clone();
        service_fn(move |request| {
            let sim = sim.clone();
            let goaway = goaway.clone();
            let count = served.fetch_add(1, Ordering::Relaxed) + 1;
            async move {
                let response = handle(&sim, request).await;
                if sim.faults.goaway_after.is_some_and(|limit| count >= limit) {
                    goaway.notify_one();
                }
                Ok::<_, Infallible>(response)
            }
        })
    };
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = goaway.notified() => connection.as_mut().graceful_shutdown(),
        }
    }
}

async fn handle(sim: &Sim, request: Request<Incoming>) -> Response<Full<Bytes>> {
    sim.stats.requests.fetch_add(1, Ordering::Relaxed);
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/stats") => stats(sim).await,
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET | &Method::POST, "/hms/wv/token") => expressplay_token(sim, request).await,
        (&Method::GET | &Method::POST, "/hms/fp/token") => expressplay_token(sim, request).await,
        (&Method::GET | &Method::POST, "/hms/pr/token") => expressplay_token(sim, request).await,
        (&Method::POST, "/license-server-fairplay/") => {
            fairplay(sim, request, Envelope::Form, Envelope::Base64).await
        }
        (&Method::POST, "/ri/licenseManager.do") => {
            fairplay(sim, request, Envelope::FormUnescaped, Envelope::Base64).await
        }
        (&Method::POST, "/hms/fp/rights/") => {
            fairplay(sim, request, Envelope::Raw, Envelope::Raw).await
        }
        (&Method::POST, path) if path.starts_with("/fairplay/") => {
            match Envelope::named(&path["/fairplay/".len()..]) {
                Some(envelope) => fairplay(sim, request, envelope, envelope).await,
                None => text(StatusCode::NOT_FOUND, "no such FairPlay envelope"),
            }
        }
        (&Method::GET, "/ri/fpsKeyManager.do") => pallycon_certificate(sim, request.uri()),
        (&Method::GET, path) if path.starts_with("/license-server-fairplay/cert/") => {
            drmtoday_certificate(sim, &path["/license-server-fairplay/cert/".len()..])
        }
        (&Method::POST, path) if path.ends_with("/AcquireLicense") || path == "/hms/wv/rights/" => {
            license(sim, request).await
        }
        _ => text(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

async fn license(sim: &Sim, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if sim.faults.early_answer {
        sim.stats.early_answers.fetch_add(1, Ordering::Relaxed);
        return text(
            StatusCode::FORBIDDEN,
            "refused before reading the challenge",
        );
    }
    let (parts, body) = request.into_parts();
    let header_number = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let delay = header_number("X-Sim-Delay-Ms").unwrap_or(sim.faults.delay_ms);
    let status = header_number("X-Sim-Status")
        .and_then(|s| u16::try_from(s).ok())
        .or(sim.faults.status);
    let challenge = match Limited::new(body, MAX_CHALLENGE_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "challenge unreadable"),
    };
    {
        let mut last = sim.last.lock().await;
        last.headers = Some(parts.headers.clone());
        last.uri = parts.uri.path_and_query().map(ToString::to_string);
        last.refusal = None;
    }
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if let Some(status) = status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = text(status, "licensegate-sim refusal");
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::try_from(sim.faults.reason_header.as_str()),
            header::HeaderValue::try_from(sim.faults.reason.as_str()),
        ) {
            response.headers_mut().insert(name, value);
        }
        return response;
    }
    let mut granted = vendors::Granted::default();
    if challenge.as_ref() == [0x08, 0x04] {
        sim.stats
            .service_certificates
            .fetch_add(1, Ordering::Relaxed);
    } else {
        match sim
            .vendor
            .check_license(&parts.uri, &parts.headers, &challenge)
        {
            Ok(passed) => granted = passed,
            Err(refusal) => return refused(sim, refusal).await,
        }
        sim.stats.licenses.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(server) = &sim.widevine
        && vendors::drm_of(&parts.headers, &challenge) == Some(licensegate_drm::drm::Drm::Widevine)
    {
        let answer = match (challenge.as_ref(), &server.service_certificate) {
            ([0x08, 0x04], Some(certificate)) => Ok(certificate.clone()),
            _ => server.answer(&challenge),
        };
        return faithful(sim, granted.headers, "application/octet-stream", answer).await;
    }
    if let Some(server) = &sim.playready
        && vendors::drm_of(&parts.headers, &challenge) == Some(licensegate_drm::drm::Drm::PlayReady)
    {
        let answer = server.answer(&challenge);
        return faithful(sim, granted.headers, "text/xml; charset=utf-8", answer).await;
    }
    // Axinom serves FairPlay on the same path as every other DRM: the raw SPC in, the CKC out.
    let answer = if sim.vendor.vendor() == SimVendor::Axinom
        && vendors::drm_of(&parts.headers, &challenge) == Some(licensegate_drm::drm::Drm::FairPlay)
    {
        sim.last.lock().await.spc_sha256 = Some(hex::encode(Sha256::digest(&challenge)));
        sim.stats.fairplay_licenses.fetch_add(1, Ordering::Relaxed);
        fairplay::ckc_for(&challenge)
    } else if let Some(answer) = sim.sessions.answer(&challenge, granted.renewal.as_ref()) {
        match answer {
            sessions::Answer::License(license) => license,
            sessions::Answer::UnknownSession => {
                return refused(
                    sim,
                    vendors::Refusal {
                        status: 403,
                        reason: "renewal for a session this server did not issue".into(),
                    },
                )
                .await;
            }
        }
    } else {
        license_for(&challenge)
    };
    ok(granted.headers, "application/octet-stream", answer)
}

/// A faithful license server's answer, or its refusal as the vendor would send it.
async fn faithful(
    sim: &Sim,
    answer_headers: vendors::AnswerHeaders,
    content_type: &'static str,
    answer: Result<Vec<u8>, widevine_server::Refused>,
) -> Response<Full<Bytes>> {
    match answer {
        Ok(answer) => ok(answer_headers, content_type, answer),
        Err(why) => {
            refused(
                sim,
                vendors::Refusal {
                    status: why.status,
                    reason: why.reason,
                },
            )
            .await
        }
    }
}

fn ok(
    answer_headers: vendors::AnswerHeaders,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response<Full<Bytes>> {
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type);
    for (name, value) in answer_headers {
        response = response.header(name, value);
    }
    response
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

/// A vendor's refusal: its status with the reason in the reason header; PallyCon answers every
/// refusal as 200 with `{"errorCode","message"}` in the body.
async fn refused(sim: &Sim, refusal: vendors::Refusal) -> Response<Full<Bytes>> {
    sim.stats.refusals.fetch_add(1, Ordering::Relaxed);
    sim.last.lock().await.refusal = Some(refusal.reason.clone());
    if sim.vendor.vendor() == SimVendor::Pallycon {
        let body = json!({
            "errorCode": (u32::from(refusal.status) * 10).to_string(),
            "message": refusal.reason,
        });
        return Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("valid response");
    }
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = text(status, "licensegate-sim refusal");
    if let (Ok(name), Ok(value)) = (
        header::HeaderName::try_from(sim.faults.reason_header.as_str()),
        header::HeaderValue::try_from(refusal.reason.as_str()),
    ) {
        response.headers_mut().insert(name, value);
    }
    response
}

/// A FairPlay license request in `envelope`, answered in `answer_envelope` after the vendor's
/// authorization checks.
async fn fairplay(
    sim: &Sim,
    request: Request<Incoming>,
    envelope: Envelope,
    answer_envelope: Envelope,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_CHALLENGE_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "request unreadable"),
    };
    {
        let mut last = sim.last.lock().await;
        last.headers = Some(parts.headers.clone());
        last.uri = parts.uri.path_and_query().map(ToString::to_string);
        last.refusal = None;
    }
    if sim.faults.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(sim.faults.delay_ms)).await;
    }
    let received = match fairplay::read(envelope, &body) {
        Ok(received) => received,
        Err(reason) => {
            return refused(
                sim,
                vendors::Refusal {
                    status: 400,
                    reason: format!("FairPlay request not understood: {reason}"),
                },
            )
            .await;
        }
    };
    {
        let mut last = sim.last.lock().await;
        last.spc_sha256 = Some(hex::encode(Sha256::digest(&received.spc)));
        last.fairplay_fields = received.fields.clone();
    }
    let answer_headers = match sim.vendor.check_fairplay(&parts.uri, &parts.headers) {
        Ok(headers) => headers,
        Err(refusal) => return refused(sim, refusal).await,
    };
    sim.stats.fairplay_licenses.fetch_add(1, Ordering::Relaxed);
    let ckc = fairplay::ckc_for(&received.spc);
    let content_type = match answer_envelope {
        Envelope::Raw => "application/octet-stream",
        Envelope::Json | Envelope::AppleJson => "application/json",
        _ => "text/plain",
    };
    ok(
        answer_headers,
        content_type,
        fairplay::answer(answer_envelope, &ckc, received.key_id.as_ref()),
    )
}

/// DRMtoday's certificate endpoint: DER, per merchant.
fn drmtoday_certificate(sim: &Sim, merchant: &str) -> Response<Full<Bytes>> {
    if merchant != sim.vendor.merchant() {
        return text(StatusCode::NOT_FOUND, "unknown merchant");
    }
    sim.stats.certificates.fetch_add(1, Ordering::Relaxed);
    ok(
        Vec::new(),
        "application/octet-stream",
        fairplay::certificate(),
    )
}

/// PallyCon's certificate endpoint: base64 text, per site.
fn pallycon_certificate(sim: &Sim, uri: &http::Uri) -> Response<Full<Bytes>> {
    let site = uri.query().and_then(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "siteId")
            .map(|(_, v)| v.into_owned())
    });
    if site.as_deref() != Some(sim.vendor.site_id()) {
        return text(StatusCode::NOT_FOUND, "unknown site");
    }
    sim.stats.certificates.fetch_add(1, Ordering::Relaxed);
    let body = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        fairplay::certificate(),
    );
    ok(Vec::new(), "text/plain", body.into_bytes())
}

/// ExpressPlay's token service: parameters from the query or a form body.
async fn expressplay_token(sim: &Sim, request: Request<Incoming>) -> Response<Full<Bytes>> {
    sim.stats.token_requests.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = request.into_parts();
    let Ok(form) = Limited::new(body, MAX_CHALLENGE_BYTES).collect().await else {
        return text(StatusCode::PAYLOAD_TOO_LARGE, "form unreadable");
    };
    let form = form.to_bytes();
    let query = parts.uri.query().unwrap_or_default().as_bytes();
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query)
        .chain(url::form_urlencoded::parse(&form))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("127.0.0.1")
        .to_string();
    let answer = match parts.uri.path() {
        "/hms/fp/token" => sim.vendor.expressplay_fairplay_token(&params, &host),
        "/hms/pr/token" => sim.vendor.expressplay_playready_token(&params, &host),
        _ => sim.vendor.expressplay_token(&params, &host),
    };
    Response::builder()
        .status(answer.status)
        .header(header::CONTENT_TYPE, answer.content_type)
        .body(Full::new(Bytes::from(answer.body)))
        .expect("valid response")
}

async fn stats(sim: &Sim) -> Response<Full<Bytes>> {
    let stats = &sim.stats;
    let last = sim.last.lock().await;
    let last_headers = last.headers.as_ref().map(|headers| {
        headers
            .iter()
            .map(|(name, value)| {
                (
                    name.to_string(),
                    json!(String::from_utf8_lossy(value.as_bytes())),
                )
            })
            .collect::<serde_json::Map<_, _>>()
    });
    let body = json!({
        "connections": stats.connections.load(Ordering::Relaxed),
        "request_connections": stats.request_connections.load(Ordering::Relaxed),
        "resets": stats.resets.load(Ordering::Relaxed),
        "refused_connections": stats.refused_connections.load(Ordering::Relaxed),
        "early_answers": stats.early_answers.load(Ordering::Relaxed),
        "requests": stats.requests.load(Ordering::Relaxed),
        "licenses": stats.licenses.load(Ordering::Relaxed),
        "service_certificates": stats.service_certificates.load(Ordering::Relaxed),
        "refusals": stats.refusals.load(Ordering::Relaxed),
        "token_requests": stats.token_requests.load(Ordering::Relaxed),
        "fairplay_licenses": stats.fairplay_licenses.load(Ordering::Relaxed),
        "certificates": stats.certificates.load(Ordering::Relaxed),
        "last_spc_sha256": last.spc_sha256,
        "last_fairplay_fields": last.fairplay_fields,
        "tokens_issued": sim.vendor.tokens_issued(),
        "last_token_rights": sim.vendor.last_rights().into_iter().collect::<Vec<_>>(),
        "upfront_tokens_redeemed": sim.vendor.jtis_seen(),
        "last_license_request_headers": last_headers,
        "last_license_request_uri": last.uri,
        "last_refusal": last.refusal,
        "live_widevine_sessions": sim.sessions.live()
            + sim.widevine.as_ref().map_or(0, widevine_server::WidevineServer::live),
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn licenses_are_deterministic_and_distinct() {
        assert_eq!(license_for(b"abc"), license_for(b"abc"));
        assert_ne!(license_for(b"abc"), license_for(b"abd"));
        assert!(license_for(b"abc").starts_with(LICENSE_PREFIX));
        assert_eq!(license_for(&[8, 4]), SERVICE_CERTIFICATE);
        assert_eq!(
            SERVICE_CERTIFICATE[3] as usize,
            SERVICE_CERTIFICATE.len() - 4
        );
    }
}
