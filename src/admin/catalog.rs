//! The catalog API on the admin listener, for a catalog kept in the store: put, read and remove
//! one content, and list them a page at a time. Answers name key IDs and how many keys an entry
//! holds, never a key.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Response};
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use serde_json::{Value, json};

use super::{AdminApp, json_response, problem, read_body};
use crate::http::problem::{Problem, Refusal};
use crate::rights::catalog::{Content, Contents, EntryFile};
use crate::rights::catalog_import::Import;
use crate::rights::stored_catalog::{MOST_PER_PAGE, Put, StoredCatalog};
use crate::state::State;

/// `GET /v1/catalog[?after=ID&limit=N]`, and `GET`, `PUT`, `DELETE /v1/catalog/{id}`.
pub(super) const CATALOG_PATH: &str = "/v1/catalog";

/// An entry's JSON at most; a content with many key IDs stays well within it.
const MAX_ENTRY_BYTES: usize = 1024 * 1024;

impl AdminApp {
    pub(super) async fn catalog(
        &self,
        state: &State,
        session: &mut ServerSession,
        request_id: &str,
    ) -> Response<Vec<u8>> {
        let problem = |p: Problem| problem(&p, request_id);
        if let Some(refused) = self.unauthorized(state, session.req_header(), request_id) {
            return refused;
        }
        let Some(Contents::Stored(catalog)) = &state.catalog else {
            return problem(
                Problem::not_found().with_detail("the catalog is not kept in the store"),
            );
        };
        let request = session.req_header();
        let path = request.uri.path();
        let id = match path.strip_prefix(CATALOG_PATH) {
            Some("") => None,
            Some(rest) => match rest.strip_prefix('/') {
                Some(id) if !id.is_empty() => Some(crate::http::headers::path_segment(id)),
                _ => return problem(Problem::not_found()),
            },
            None => return problem(Problem::not_found()),
        };
        let method = request.method.clone();
        let answer = match (&method, id) {
            (&Method::GET, None) => list(catalog, request).await,
            (&Method::GET, Some(id)) => match catalog.get(&id).await {
                Ok(Some(content)) => Ok(json_response(200, view(&content))),
                Ok(None) => Err(unknown(&id)),
                Err(e) => Err(e),
            },
            (&Method::PUT, Some(id)) => {
                let timeout = state.config.server.challenge_read_timeout;
                match read_entry(session, timeout).await {
                    Ok(entry) => put(catalog, &id, entry).await,
                    Err(e) => Err(e),
                }
            }
            (&Method::POST, Some(id)) if id == "import" => {
                let timeout = state.config.server.challenge_read_timeout;
                import(catalog, session, timeout).await
            }
            (&Method::DELETE, Some(id)) => match catalog.remove(&id).await {
                Ok(true) => Ok(json_response(200, json!({"id": id, "deleted": true}))),
                Ok(false) => Err(unknown(&id)),
                Err(e) => Err(e),
            },
            _ => Err(Problem::method_not_allowed()),
        };
        answer.unwrap_or_else(problem)
    }
}

fn unknown(id: &str) -> Problem {
    Problem::new(Refusal::ContentUnknown).with_detail(format!("no content '{id}'"))
}

async fn list(
    catalog: &StoredCatalog,
    request: &RequestHeader,
) -> Result<Response<Vec<u8>>, Problem> {
    let query = |key: &str| crate::http::headers::query_parameter(request, key);
    let after = query("after").unwrap_or_default();
    let limit = match query("limit") {
        None => 100,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|limit| (1..=MOST_PER_PAGE).contains(limit))
            .ok_or_else(|| {
                Problem::new(Refusal::AdminRequestInvalid)
                    .with_detail(format!("limit is 1 to {MOST_PER_PAGE}"))
            })?,
    };
    let page = catalog.list(&after, limit).await?;
    let next = (page.len() == limit as usize)
        .then(|| page.last().map(|content| content.id.clone()))
        .flatten();
    let entries: Vec<Value> = page.iter().map(view).collect();
    Ok(json_response(
        200,
        json!({"entries": entries, "next": next}),
    ))
}

async fn put(
    catalog: &StoredCatalog,
    id: &str,
    entry: EntryFile,
) -> Result<Response<Vec<u8>>, Problem> {
    match catalog.put(id, entry).await? {
        Put::Stored { created, content } => Ok(json_response(
            if created { 201 } else { 200 },
            view(&content),
        )),
        Put::Invalid(e) => Err(Problem::new(Refusal::CatalogEntryInvalid)
            .with_detail(e.reason.clone())
            .with_extension("key", Value::String(e.key))),
        Put::KeyIdTaken { key_id, owner } => Err(Problem::new(Refusal::CatalogKeyIdTaken)
            .with_detail(format!("key ID {key_id} belongs to '{owner}'"))
            .with_extension("owner", Value::String(owner))),
    }
}

/// `POST /v1/catalog/import`: NDJSON, stored as it arrives (each chunk within `timeout`), or a
/// catalog file (`Content-Type: application/toml` or `application/json`) of at most
/// [`MAX_FILE_BYTES`]. Answers the report: lines, created, replaced, failed, and the first
/// errors with their line, id and key path.
async fn import(
    catalog: &StoredCatalog,
    session: &mut ServerSession,
    timeout: Duration,
) -> Result<Response<Vec<u8>>, Problem> {
    let content_type = session
        .req_header()
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("application/x-ndjson")
        .to_ascii_lowercase();
    let file_format = match content_type.split(';').next().unwrap_or("").trim() {
        "application/toml" => Some(false),
        "application/json" => Some(true),
        _ => None,
    };
    let mut import = Import::new(catalog);
    let mut file = Vec::new();
    loop {
        let chunk = pingora::time::timeout(timeout, session.read_request_body())
            .await
            .map_err(|_| Problem::new(Refusal::ChallengeTimeout))?
            .map_err(|e| {
                Problem::new(Refusal::AdminRequestInvalid).with_detail(e.etype().as_str())
            })?;
        let Some(chunk) = chunk else { break };
        if file_format.is_some() {
            if file.len() + chunk.len() > MAX_FILE_BYTES {
                return Err(Problem::body_too_large(MAX_FILE_BYTES));
            }
            file.extend_from_slice(&chunk);
        } else {
            import.feed(&chunk).await?;
        }
    }
    if let Some(json) = file_format {
        let text = String::from_utf8(file).map_err(|_| {
            Problem::new(Refusal::CatalogEntryInvalid).with_detail("the file is not UTF-8")
        })?;
        let entries = crate::rights::catalog::entries(&text, json).map_err(|e| {
            Problem::new(Refusal::CatalogEntryInvalid)
                .with_detail(e.reason.clone())
                .with_extension("key", Value::String(e.key))
        })?;
        for (id, entry) in entries {
            import.entry(id, entry).await?;
        }
    }
    match import.finish().await {
        Ok(report) => Ok(json_response(200, json!(report))),
        Err((problem, report)) => Err(problem.with_extension("report", json!(report))),
    }
}

/// A catalog file imported whole at most; NDJSON has no bound but its line length.
const MAX_FILE_BYTES: usize = 64 * 1024 * 1024;

/// The entry in the request body, bounded in size and time.
async fn read_entry(session: &mut ServerSession, timeout: Duration) -> Result<EntryFile, Problem> {
    let body = read_body(session, MAX_ENTRY_BYTES, timeout).await?;
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&body)).map_err(
        |e| {
            let key = e.path().to_string();
            Problem::new(Refusal::CatalogEntryInvalid)
                .with_detail(crate::config::without_values(&e.into_inner().to_string()))
                .with_extension("key", Value::String(key))
        },
    )
}

/// What the admin API tells of an entry: everything but its keys, and how many it holds.
fn view(content: &Arc<Content>) -> Value {
    json!({
        "id": content.id,
        "key_ids": content.key_ids.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "keys": content.keys.len(),
        "policy": content.policy.as_ref().map(|(name, _)| name),
        "provider": content.providers.first(),
        "providers": content.providers,
        "free": content.free,
        "tiers": content.tiers,
        "hls_key": content.hls.is_some(),
        "fairplay_iv": content.fairplay_iv.is_some(),
    })
}
