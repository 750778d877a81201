//! `[cors]`: which browser origins may call the license API.

use std::sync::Arc;

use http::HeaderName;
use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct CorsFile {
    pub allowed_origins: Vec<String>,
    pub allowed_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age_seconds: u64,
}

impl Default for CorsFile {
    fn default() -> Self {
        Self {
            allowed_origins: vec!["*".into()],
            allowed_headers: [
                "Authorization",
                "Content-Type",
                "X-Content-Id",
                "SOAPAction",
                "X-FairPlay-Uri",
                "X-Playback-Session",
                "X-Request-Id",
                "traceparent",
                "tracestate",
            ]
            .map(String::from)
            .to_vec(),
            expose_headers: Vec::new(),
            max_age_seconds: 600,
        }
    }
}

#[derive(Debug)]
pub struct CorsSettings {
    pub any_origin: bool,
    pub origins: Vec<String>,
    /// Pre-joined header values: they are sent on every answer.
    pub allowed_headers: String,
    pub expose_headers: String,
    pub max_age_seconds: u64,
}

pub(super) fn validate_cors<'a>(
    cors: CorsFile,
    providers: impl Iterator<Item = &'a Arc<ProviderConfig>>,
) -> Result<CorsSettings, ConfigError> {
    let any_origin = cors.allowed_origins.iter().any(|o| o == "*");
    for (index, origin) in cors.allowed_origins.iter().enumerate() {
        if origin != "*" && !is_origin(origin) {
            return Err(ConfigError::new(
                format!("cors.allowed_origins[{index}]"),
                format!("'{origin}' is not an origin (scheme://host[:port], no path)"),
            ));
        }
    }
    for (field, names) in [
        ("allowed_headers", &cors.allowed_headers),
        ("expose_headers", &cors.expose_headers),
    ] {
        for (index, name) in names.iter().enumerate() {
            if HeaderName::try_from(name.as_str()).is_err() {
                return Err(ConfigError::new(
                    format!("cors.{field}[{index}]"),
                    format!("'{name}' is not a header name"),
                ));
            }
        }
    }
    // Players read the request id, their playback session, when to ask again, and the
    // providers' refusal reasons, so those are always exposed.
    let mut expose: Vec<String> = vec![
        "X-Request-Id".into(),
        "X-Playback-Session".into(),
        "Retry-After".into(),
    ];
    expose.extend(providers.filter_map(|v| v.error_header.as_ref().map(|h| h.to_string())));
    expose.extend(cors.expose_headers);
    expose.sort_by_key(|h| h.to_ascii_lowercase());
    expose.dedup_by_key(|h| h.to_ascii_lowercase());
    Ok(CorsSettings {
        any_origin,
        origins: cors.allowed_origins,
        allowed_headers: cors.allowed_headers.join(", "),
        expose_headers: expose.join(", "),
        max_age_seconds: cors.max_age_seconds,
    })
}

pub(super) fn is_origin(origin: &str) -> bool {
    url::Url::parse(origin).is_ok_and(|url| {
        matches!(url.scheme(), "http" | "https")
            && url.host().is_some()
            && url.path() == "/"
            && !origin.ends_with('/')
            && url.query().is_none()
    })
}
