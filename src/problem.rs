//! RFC 7807 problem details: the one shape in which licensegate refuses a request.

use bytes::Bytes;
use serde::Serialize;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// A refusal with a stable machine-readable `code`; players and dashboards key on the code,
/// humans read `title` and `detail`.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub status: u16,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
    /// RFC 7807 extension members for what a client can act on (counts, times).
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    pub fn new(status: u16, code: &'static str, title: &'static str) -> Self {
        Self {
            status,
            code,
            title,
            detail: String::new(),
            extensions: serde_json::Map::new(),
        }
    }

    pub fn with_extension(mut self, name: &str, value: serde_json::Value) -> Self {
        self.extensions.insert(name.to_string(), value);
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    pub fn not_found() -> Self {
        Self::new(404, "not_found", "No such endpoint")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(405, "method_not_allowed", "Method not allowed")
    }

    pub fn unknown_drm(name: &str) -> Self {
        Self::new(404, "unknown_drm", "Unknown DRM system").with_detail(format!(
            "'{name}' is not one of widevine, playready, fairplay, clearkey"
        ))
    }

    pub fn drm_not_routed(name: &str) -> Self {
        Self::new(404, "drm_not_enabled", "DRM system not enabled")
            .with_detail(format!("no vendor is configured for {name}"))
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(413, "body_too_large", "License challenge too large")
            .with_detail(format!("the challenge exceeds {limit} bytes"))
    }

    pub fn body_empty() -> Self {
        Self::new(400, "challenge_missing", "License challenge missing")
            .with_detail("the request body is empty")
    }

    pub fn content_id_missing() -> Self {
        Self::new(400, "content_id_missing", "Content id missing")
            .with_detail("pass the content id as ?content= or in the X-Content-Id header")
    }

    pub fn content_id_invalid() -> Self {
        Self::new(400, "content_id_invalid", "Content id invalid")
            .with_detail("a content id is 1 to 256 characters of letters, digits and . _ - : /")
    }

    pub fn headers_too_large(max_bytes: usize, max_count: usize) -> Self {
        Self::new(431, "headers_too_large", "Request header fields too large").with_detail(format!(
            "at most {max_count} headers of {max_bytes} bytes in all"
        ))
    }

    pub fn origin_not_allowed() -> Self {
        Self::new(403, "origin_not_allowed", "Origin not allowed")
    }

    pub fn upstream_unavailable(detail: impl Into<String>) -> Self {
        Self::new(502, "upstream_unavailable", "License server unavailable").with_detail(detail)
    }

    pub fn upstream_error(detail: impl Into<String>) -> Self {
        Self::new(502, "upstream_error", "License server failed").with_detail(detail)
    }

    pub fn upstream_timeout(detail: impl Into<String>) -> Self {
        Self::new(504, "upstream_timeout", "License server timed out").with_detail(detail)
    }

    pub fn internal() -> Self {
        Self::new(500, "internal_error", "Internal error")
    }

    /// The JSON body; `request_id` ties what the player saw to our log line.
    pub fn to_body(&self, request_id: &str) -> Bytes {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(rename = "type")]
            kind: String,
            title: &'a str,
            status: u16,
            #[serde(skip_serializing_if = "str::is_empty")]
            detail: &'a str,
            code: &'a str,
            request_id: &'a str,
            #[serde(flatten)]
            extensions: &'a serde_json::Map<String, serde_json::Value>,
        }
        let body = Body {
            kind: format!("urn:licensegate:problem:{}", self.code),
            title: self.title,
            status: self.status,
            detail: &self.detail,
            code: self.code,
            request_id,
            extensions: &self.extensions,
        };
        Bytes::from(serde_json::to_vec(&body).expect("problem body serializes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_carries_every_rfc7807_member_and_our_code() {
        let body = Problem::body_too_large(65536).to_body("req-1");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["type"], "urn:licensegate:problem:body_too_large");
        assert_eq!(json["status"], 413);
        assert_eq!(json["code"], "body_too_large");
        assert_eq!(json["request_id"], "req-1");
        assert!(json["detail"].as_str().unwrap().contains("65536"));
        assert!(json["title"].is_string());
    }

    #[test]
    fn empty_detail_is_left_out() {
        let body = Problem::not_found().to_body("r");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(json.get("detail").is_none());
    }
}
