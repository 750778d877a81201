//! The key service packagers call: SPEKE v2.0 (CPIX 2.3) and v2.1 (CPIX 2.4). The encryptor
//! names the content and the key IDs it chose; licensegate answers each key (kept, derived or
//! new, and stored before it answers) with the signaling each DRM system needs, so that the
//! catalog entry the exchange leaves is what license requests are then checked against.

use http::{Method, Response, header};
use pingora::protocols::http::ServerSession;

use super::{AdminApp, bearer_matches, problem, read_body};
use crate::cpix::CpixRequest;
use crate::http::problem::{Problem, Refusal};
use crate::rights::catalog::Contents;
use crate::state::State;

pub(super) const SPEKE_PATH: &str = "/speke/v2";

/// A CPIX document at most; one names a few keys and systems.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

const USER_AGENT: &str = concat!("licensegate/", env!("CARGO_PKG_VERSION"));

impl AdminApp {
    pub(super) async fn speke(
        &self,
        state: &State,
        session: &mut ServerSession,
        request_id: &str,
    ) -> Response<Vec<u8>> {
        let problem = |p: Problem| problem(&p, request_id);
        let (Some(speke), Some(Contents::Stored(catalog))) = (&state.config.speke, &state.catalog)
        else {
            return problem(Problem::not_found().with_detail("the key service is not configured"));
        };
        let request = session.req_header();
        if !bearer_matches(request, &speke.token) {
            return problem(Problem::new(Refusal::AdminTokenInvalid));
        }
        if request.method != Method::POST {
            return problem(Problem::method_not_allowed());
        }
        let version = request
            .headers
            .get("X-Speke-Version")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .trim()
            .to_string();
        let timeout = state.config.server.challenge_read_timeout;
        let document = match read_body(session, MAX_DOCUMENT_BYTES, timeout).await {
            Ok(document) => document,
            Err(refused) => return problem(refused),
        };
        let cpix = match CpixRequest::parse(&document, &version) {
            Ok(cpix) => cpix,
            Err(refused) => return speke_error(&version, &refused.0),
        };
        let kids: Vec<_> = cpix.keys.iter().map(|key| key.kid).collect();
        let keys = match catalog.packager_keys(&cpix.content_id, &kids).await {
            Ok(Ok(keys)) => keys,
            Ok(Err(refused)) => return speke_error(&version, &refused),
            Err(unavailable) => return problem(unavailable),
        };
        match cpix.answer(&keys, &speke.playready_license_url) {
            Ok(answer) => {
                tracing::info!(
                    content = %cpix.content_id,
                    keys = kids.len(),
                    systems = cpix.systems.len(),
                    "keys handed to a packager"
                );
                speke_response(200, &version, "application/xml", answer.into_bytes())
            }
            Err(refused) => speke_error(&version, &refused.0),
        }
    }
}

/// SPEKE's refusals are 422 with the message as the body.
fn speke_error(version: &str, message: &str) -> Response<Vec<u8>> {
    tracing::info!(message, "SPEKE request refused");
    speke_response(
        422,
        version,
        "text/plain; charset=utf-8",
        message.as_bytes().to_vec(),
    )
}

fn speke_response(
    status: u16,
    version: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Response<Vec<u8>> {
    let version = match version {
        "2.0" | "2.1" => version,
        _ => "2.0",
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-store")
        .header("X-Speke-Version", version)
        .header("X-Speke-User-Agent", USER_AGENT)
        .body(body)
        .expect("valid response")
}
