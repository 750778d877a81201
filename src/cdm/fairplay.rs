//! FairPlay around the pipeline: the player's request out of its envelope, the content its skd
//! URI names, the CKC back in the player's envelope, and the application certificate. The wire
//! formats themselves live in `licensegate_drm::fairplay`.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, header};
use licensegate_drm::fairplay::{self as wire, CkcFormat, RequestFormat, SkdKey, SpcRequest};
use moka::future::Cache;
use pingora::connectors::ConnectorOptions;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use regex::Regex;
use serde_json::Value;

use crate::challenge::Kid;
use crate::config::{FairPlaySettings, certificate_der};
use crate::drm::Drm;
use crate::http::problem::{Problem, Refusal};
use crate::providers::ProviderRoute;
use crate::providers::{CertificateEncoding, LicenseRequest, Provider};

/// The header in which a player may name the key's skd URI (hls.js hands it to
/// `licenseXhrSetup`, native apps have it from the playlist).
pub(crate) const URI_HEADER: &str = "X-FairPlay-Uri";
/// A CKC is a few KiB; the vendor's answer around it is read whole, up to this.
pub(crate) const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// Certificates are about a kilobyte; anything far larger is not one.
const MAX_CERTIFICATE_BYTES: usize = 64 * 1024;
const CERTIFICATE_POOL_SIZE: usize = 4;

/// A player's FairPlay request, read and ready to re-wrap.
#[derive(Debug)]
pub(crate) struct PlayerRequest {
    pub(crate) spc: SpcRequest,
    /// What the skd URI says, from the request itself or [`URI_HEADER`].
    pub(crate) skd: Option<SkdKey>,
    pub(crate) uri: Option<String>,
}

impl PlayerRequest {
    /// The content the request names besides `?content=` and `X-Content-Id`: the form's
    /// `assetId`, else the skd URI's.
    pub(crate) fn content_id(&self) -> Option<&str> {
        self.spc
            .asset_id
            .as_deref()
            .or_else(|| self.skd.as_ref()?.content_id.as_deref())
    }

    pub(crate) fn kid(&self) -> Option<Kid> {
        self.skd.as_ref()?.kid
    }
}

/// Reads the player's envelope; malformed input is the player's 400.
pub(crate) fn read_request(
    body: &[u8],
    headers: &HeaderMap,
    settings: &FairPlaySettings,
) -> Result<PlayerRequest, Problem> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok());
    let spc = wire::read_request(body, content_type).map_err(|e| {
        Problem::new(Refusal::ChallengeMalformed).with_detail(format!("FairPlay request: {e}"))
    })?;
    let from_header = match headers.get(URI_HEADER) {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .filter(|uri| uri.len() <= wire::MAX_URI_BYTES)
                .ok_or_else(|| {
                    Problem::new(Refusal::ChallengeMalformed)
                        .with_detail(format!("{URI_HEADER} is not a key URI"))
                })?
                .to_string(),
        ),
        None => None,
    };
    let uri = spc.uri.clone().or(from_header);
    let skd = match &uri {
        Some(uri) => Some(read_skd(uri, &settings.skd_patterns).ok_or_else(|| {
            Problem::new(Refusal::ChallengeMalformed)
                .with_detail("the key URI is not an skd:// URI licensegate can read")
        })?),
        None => None,
    };
    Ok(PlayerRequest { spc, skd, uri })
}

/// The configured patterns first, then the forms vendors document.
pub(crate) fn read_skd(uri: &str, patterns: &[Regex]) -> Option<SkdKey> {
    for pattern in patterns {
        let Some(captures) = pattern.captures(uri) else {
            continue;
        };
        let content_id = captures.name("content").map(|m| m.as_str().to_string());
        let kid = match captures.name("kid") {
            Some(kid) => Some(kid.as_str().parse::<Kid>().ok()?),
            None => None,
        };
        return Some(SkdKey {
            content_id,
            kid,
            iv: None,
        });
    }
    wire::read_skd_uri(uri)
}

/// The SPC as the provider wants it, and its content type.
pub(crate) fn vendor_body(
    provider: &dyn Provider,
    request: Option<&LicenseRequest>,
    player: &PlayerRequest,
) -> (Bytes, &'static str) {
    let wire = provider.fairplay_wire();
    let fields = request.map_or_else(Vec::new, |request| provider.fairplay_fields(request));
    let fields: Vec<(&str, &str)> = fields
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    let body = wire::encode_spc(wire.spc, &player.spc.spc, &fields, player.uri.as_deref());
    (Bytes::from(body), wire.spc.content_type())
}

/// How the CKC goes back to the player.
#[derive(Debug, Clone)]
pub(crate) struct Answering {
    pub(crate) format: CkcFormat,
    /// The streaming key's id, echoed in Apple's JSON.
    pub(crate) id: Option<Value>,
}

impl Answering {
    pub(crate) fn new(settings: &FairPlaySettings, request: &RequestFormat) -> Self {
        Self {
            format: settings
                .answer_format
                .unwrap_or_else(|| request.answer_format()),
            id: match request {
                RequestFormat::AppleJson { id } => Some(id.clone()),
                _ => None,
            },
        }
    }

    /// The vendor's whole 2xx answer, re-wrapped for the player.
    pub(crate) fn answer(&self, provider: &dyn Provider, body: &[u8]) -> Result<Bytes, Problem> {
        let ckc = wire::read_ckc(provider.fairplay_wire().ckc, body).map_err(|e| {
            Problem::new(Refusal::VendorAnswerInvalid).with_detail(format!("FairPlay CKC: {e}"))
        })?;
        Ok(Bytes::from(wire::encode_ckc(
            self.format,
            &ckc,
            self.id.as_ref(),
        )))
    }
}

/// The FairPlay application certificates, per provider: from the configured file, or fetched
/// from the provider once per TTL with concurrent requests waiting on that one fetch.
pub(crate) struct Certificates {
    cache: Cache<String, Bytes>,
    connector: Connector,
}

impl Certificates {
    pub(crate) fn new(settings: &FairPlaySettings) -> Self {
        Self {
            cache: Cache::builder()
                .time_to_live(settings.certificate_cache)
                .max_capacity(256)
                .build(),
            connector: Connector::new(Some(ConnectorOptions::new(CERTIFICATE_POOL_SIZE))),
        }
    }

    /// The DER certificate `route`'s provider uses for FairPlay.
    pub(crate) async fn get(&self, route: &ProviderRoute) -> Result<Bytes, Problem> {
        if let Some(certificate) = &route.config.fairplay_certificate {
            return Ok(certificate.clone());
        }
        let unavailable = || {
            Problem::new(Refusal::CertificateUnavailable).with_detail(format!(
                "provider '{}' has no fairplay_certificate_file and serves no certificate",
                route.config.name
            ))
        };
        let source = route
            .provider
            .fairplay_certificate()
            .ok_or_else(unavailable)?;
        let upstream = route
            .upstream(Drm::FairPlay)
            .ok_or_else(unavailable)?
            .clone();
        let config = route.config.clone();
        self.cache
            .try_get_with(config.name.clone(), async move {
                let answer = upstream
                    .side_call(
                        &self.connector,
                        "certificate endpoint",
                        |endpoint| {
                            let mut request = RequestHeader::build_no_case(
                                Method::GET,
                                source.path_and_query.as_bytes(),
                                Some(2),
                            )?;
                            request.insert_header(header::HOST, endpoint.authority.as_str())?;
                            Ok(request)
                        },
                        Bytes::new(),
                        MAX_CERTIFICATE_BYTES,
                    )
                    .await?;
                if answer.status != 200 {
                    tracing::warn!(provider = %config.name, status = answer.status, "FairPlay certificate fetch refused");
                    return Err(Problem::upstream_error(format!(
                        "{} answered {} for its FairPlay certificate",
                        config.name, answer.status
                    )));
                }
                let der = match source.encoding {
                    CertificateEncoding::Der => Ok(answer.body.clone()),
                    CertificateEncoding::Base64 => certificate_der(&answer.body),
                };
                der.map_err(|why| {
                    Problem::new(Refusal::VendorAnswerInvalid)
                        .with_detail(format!("{}'s FairPlay certificate: {why}", config.name))
                })
            })
            .await
            .map_err(|problem: Arc<Problem>| (*problem).clone())
    }
}
