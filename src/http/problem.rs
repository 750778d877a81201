//! RFC 7807 problem details: the one shape in which licensegate refuses a request.

use bytes::Bytes;
use serde::Serialize;

pub(crate) const CONTENT_TYPE: &str = "application/problem+json";

/// Declares the catalog: one line per refusal, so the whole list reads in one place.
macro_rules! refusals {
    ($($refusal:ident: $status:literal, $code:literal, $title:literal;)*) => {
        /// Every refusal licensegate answers with. The `code` is stable: players, dashboards
        /// and `docs/api.md` key on it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Refusal {
            $($refusal,)*
        }

        impl Refusal {
            #[cfg(test)]
            pub(crate) const ALL: &[Refusal] = &[$(Refusal::$refusal,)*];

            pub(crate) fn status(self) -> u16 {
                match self {
                    $(Refusal::$refusal => $status,)*
                }
            }

            pub(crate) fn code(self) -> &'static str {
                match self {
                    $(Refusal::$refusal => $code,)*
                }
            }

            pub(crate) fn title(self) -> &'static str {
                match self {
                    $(Refusal::$refusal => $title,)*
                }
            }
        }
    };
}

refusals! {
    NotFound: 404, "not_found", "No such endpoint";
    MethodNotAllowed: 405, "method_not_allowed", "Method not allowed";
    UnknownDrm: 404, "unknown_drm", "Unknown DRM system";
    DrmNotEnabled: 404, "drm_not_enabled", "DRM system not enabled";
    HeadersTooLarge: 431, "headers_too_large", "Request header fields too large";
    OriginNotAllowed: 403, "origin_not_allowed", "Origin not allowed";
    ForwardedForInvalid: 400, "forwarded_for_invalid", "X-Forwarded-For not understood";
    SoapActionInvalid: 400, "soap_action_invalid", "SOAPAction not a PlayReady action";
    TokenMissing: 401, "token_missing", "Not authenticated";
    TokenTooLarge: 401, "token_too_large", "Not authenticated";
    TokenMalformed: 401, "token_malformed", "Not authenticated";
    TokenSignature: 401, "token_signature", "Not authenticated";
    TokenUnknownKid: 401, "token_unknown_kid", "Not authenticated";
    TokenExpired: 401, "token_expired", "Not authenticated";
    TokenNotYetValid: 401, "token_not_yet_valid", "Not authenticated";
    TokenAudience: 401, "token_audience", "Not authenticated";
    TokenIssuer: 401, "token_issuer", "Not authenticated";
    TokenReplayed: 401, "token_replayed", "Not authenticated";
    TokenStoreUnavailable: 503, "token_store_unavailable", "Single-use token registry unavailable";
    ChallengeMissing: 400, "challenge_missing", "License challenge missing";
    ChallengeUnreadable: 400, "challenge_unreadable", "Challenge could not be read";
    ChallengeTimeout: 408, "challenge_timeout", "Challenge not received in time";
    BodyTooLarge: 413, "body_too_large", "License challenge too large";
    ChallengeMalformed: 400, "challenge_malformed", "Challenge not understood";
    ContentIdMissing: 400, "content_id_missing", "Content id missing";
    ContentIdInvalid: 400, "content_id_invalid", "Content id invalid";
    ContentUnknown: 404, "content_unknown", "Content not in the catalog";
    CatalogUnavailable: 503, "catalog_unavailable", "Content catalog unavailable";
    CatalogEntryInvalid: 422, "catalog_entry_invalid", "Catalog entry not valid";
    CatalogKeyIdTaken: 409, "catalog_key_id_taken", "Key ID belongs to another content";
    KeyIdsUnreadable: 403, "key_ids_unreadable", "Challenge names no key ID licensegate can check";
    KidNotInContent: 403, "kid_not_in_content", "Key ID not part of this content";
    ContentMismatch: 403, "content_mismatch", "The request names two different contents";
    NotEntitled: 403, "not_entitled", "Not entitled to this content";
    TerritoryNotAllowed: 403, "territory_not_allowed", "Not available in this territory";
    EntitlementInvalid: 502, "entitlement_invalid", "Entitlement service answer not understood";
    EntitlementUnavailable: 503, "entitlement_unavailable", "Entitlement service unavailable";
    KeyNotFound: 404, "key_not_found", "Content key not available";
    PersistenceNotAllowed: 403, "persistence_not_allowed", "Persistent license not allowed";
    DeviceLimitReached: 403, "device_limit_reached", "Device limit reached";
    DeviceUnknown: 403, "device_unknown", "Device not identified";
    DeviceStoreUnavailable: 503, "device_store_unavailable", "Device registry unavailable";
    DeviceNotRegistered: 404, "device_not_registered", "No such device";
    StreamLimitReached: 403, "stream_limit_reached", "Concurrent stream limit reached";
    StreamStopped: 403, "stream_stopped", "This stream was stopped";
    StreamUnknown: 404, "stream_unknown", "No such stream";
    StreamSessionInvalid: 400, "stream_session_invalid", "Playback session id invalid";
    StreamStoreUnavailable: 503, "stream_store_unavailable", "Stream registry unavailable";
    UserBlocked: 403, "user_blocked", "User blocked";
    RateLimited: 429, "rate_limited", "Too many license requests";
    QuotaExceeded: 429, "quota_exceeded", "License quota used up";
    AdminTokenInvalid: 401, "admin_token_invalid", "Admin token missing or wrong";
    AdminRequestInvalid: 400, "admin_request_invalid", "Admin request not understood";
    ConfigNotReloaded: 422, "config_not_reloaded", "Configuration not reloaded; the running one stays";
    VendorTokenRefused: 502, "vendor_token_refused", "The vendor's token service refused the request";
    VendorTokenInvalid: 502, "vendor_token_invalid", "The vendor's token service answer is unusable";
    VendorRefused: 403, "vendor_refused", "The license server refused the license";
    VendorAnswerInvalid: 502, "vendor_answer_invalid", "The license server's answer is unusable";
    CertificateUnavailable: 404, "certificate_unavailable", "No FairPlay certificate for this provider";
    UpstreamUnavailable: 502, "upstream_unavailable", "License server unavailable";
    UpstreamError: 502, "upstream_error", "License server failed";
    UpstreamTimeout: 504, "upstream_timeout", "License server timed out";
    InternalError: 500, "internal_error", "Internal error";
    ClientClosed: 499, "client_closed", "The player closed its connection before the answer";
}

/// The problem types the DASH-IF license request model defines (DASH-IF implementation
/// guidelines: content protection and security, "Problem signaling and handling"), with the
/// title it gives them: a player following that model acts on the type alone (a new token for
/// insufficient proof; the user told for not authorized).
pub(crate) const DASHIF_NOT_AUTHORIZED: &str = "https://dashif.org/drm-problems/not-authorized";
pub(crate) const DASHIF_INSUFFICIENT_PROOF: &str =
    "https://dashif.org/drm-problems/insufficient-proof-of-authorization";
const DASHIF_TITLE: &str = "Not authorized";

impl Refusal {
    /// The DASH-IF problem type of a refusal the guidelines define one for.
    pub(crate) fn dashif_type(self) -> Option<&'static str> {
        use Refusal::*;
        match self {
            TokenMissing | TokenTooLarge | TokenMalformed | TokenSignature | TokenUnknownKid
            | TokenExpired | TokenNotYetValid | TokenAudience | TokenIssuer | TokenReplayed => {
                Some(DASHIF_INSUFFICIENT_PROOF)
            }
            NotEntitled
            | TerritoryNotAllowed
            | KidNotInContent
            | PersistenceNotAllowed
            | UserBlocked => Some(DASHIF_NOT_AUTHORIZED),
            _ => None,
        }
    }
}

/// A refusal with a stable machine-readable `code`; players and dashboards key on the code,
/// humans read `title` and `detail`.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub(crate) status: u16,
    /// The DASH-IF problem type, where one applies; else licensegate's own, named by `code`.
    pub(crate) dashif_type: Option<&'static str>,
    pub(crate) code: &'static str,
    pub(crate) title: &'static str,
    pub(crate) detail: String,
    /// RFC 7807 extension members for what a client can act on (counts, times).
    pub(crate) extensions: serde_json::Map<String, serde_json::Value>,
    /// Seconds after which asking again may succeed (`Retry-After`).
    pub(crate) retry_after: Option<u64>,
}

impl Problem {
    pub(crate) fn new(refusal: Refusal) -> Self {
        // RFC 7807: one title per problem type.
        let dashif_type = refusal.dashif_type();
        Self {
            status: refusal.status(),
            dashif_type,
            code: refusal.code(),
            title: dashif_type.map_or(refusal.title(), |_| DASHIF_TITLE),
            detail: String::new(),
            extensions: serde_json::Map::new(),
            retry_after: None,
        }
    }

    pub(crate) fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    pub(crate) fn with_extension(mut self, name: &str, value: serde_json::Value) -> Self {
        self.extensions.insert(name.to_string(), value);
        self
    }

    pub(crate) fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    pub(crate) fn not_found() -> Self {
        Self::new(Refusal::NotFound)
    }

    pub(crate) fn method_not_allowed() -> Self {
        Self::new(Refusal::MethodNotAllowed)
    }

    pub(crate) fn unknown_drm(name: &str) -> Self {
        Self::new(Refusal::UnknownDrm).with_detail(format!(
            "'{name}' is not one of widevine, playready, fairplay, clearkey"
        ))
    }

    pub(crate) fn drm_not_routed(name: &str) -> Self {
        Self::new(Refusal::DrmNotEnabled)
            .with_detail(format!("no provider is configured for {name}"))
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(Refusal::BodyTooLarge).with_detail(format!("the challenge exceeds {limit} bytes"))
    }

    pub(crate) fn body_empty() -> Self {
        Self::new(Refusal::ChallengeMissing).with_detail("the request body is empty")
    }

    pub(crate) fn content_id_missing() -> Self {
        Self::new(Refusal::ContentIdMissing)
            .with_detail("pass the content id as ?content= or in the X-Content-Id header")
    }

    pub(crate) fn content_id_invalid() -> Self {
        Self::new(Refusal::ContentIdInvalid)
            .with_detail("a content id is 1 to 256 characters of letters, digits and . _ - : /")
    }

    pub(crate) fn headers_too_large(max_bytes: usize, max_count: usize) -> Self {
        Self::new(Refusal::HeadersTooLarge).with_detail(format!(
            "at most {max_count} headers of {max_bytes} bytes in all"
        ))
    }

    pub(crate) fn origin_not_allowed() -> Self {
        Self::new(Refusal::OriginNotAllowed)
    }

    pub(crate) fn upstream_unavailable(detail: impl Into<String>) -> Self {
        Self::new(Refusal::UpstreamUnavailable).with_detail(detail)
    }

    pub(crate) fn upstream_error(detail: impl Into<String>) -> Self {
        Self::new(Refusal::UpstreamError).with_detail(detail)
    }

    pub(crate) fn upstream_timeout(detail: impl Into<String>) -> Self {
        Self::new(Refusal::UpstreamTimeout).with_detail(detail)
    }

    pub(crate) fn internal() -> Self {
        Self::new(Refusal::InternalError)
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
            kind: self.dashif_type.map_or_else(
                || format!("urn:licensegate:problem:{}", self.code),
                str::to_string,
            ),
            title: self.title,
            status: self.status,
            detail: &self.detail,
            code: self.code,
            request_id,
            extensions: &self.extensions,
        };
        // Strings and numbers always serialize; an empty body would still carry the status.
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }
}

/// What the player is told when the provider could not be reached or did not answer in time.
pub(crate) fn upstream_failure(error: &pingora::Error) -> Problem {
    use pingora::ErrorType::*;
    let detail = error.etype().as_str();
    match error.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
            Problem::upstream_timeout(detail)
        }
        ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure
        | TLSHandshakeFailure | InvalidCert | BindError | SocketError => {
            Problem::upstream_unavailable(detail)
        }
        _ if *error.esource() == pingora::ErrorSource::Upstream => Problem::upstream_error(detail),
        _ => Problem::internal(),
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

    /// The API reference's error table is the players' reference: it lists exactly the catalog.
    #[test]
    fn the_documented_error_table_lists_every_code_and_no_other() {
        let api = include_str!("../../docs/api.md");
        let table = api
            .split("### Errors")
            .nth(1)
            .and_then(|rest| rest.split("\n### ").next())
            .expect("docs/api.md has an Errors section");
        let mut listed: Vec<&str> = table
            .lines()
            .filter_map(|line| {
                let mut cells = line.split('|').skip(1);
                let status = cells.next()?.trim();
                status.parse::<u16>().ok()?;
                cells.next()
            })
            .flat_map(|codes| codes.split('`').skip(1).step_by(2))
            .collect();
        listed.sort_unstable();
        let mut catalog: Vec<&str> = Refusal::ALL.iter().map(|r| r.code()).collect();
        catalog.sort_unstable();
        assert_eq!(listed, catalog);
        for refusal in Refusal::ALL {
            let row = table
                .lines()
                .find(|line| line.contains(&format!("`{}`", refusal.code())))
                .unwrap();
            assert!(
                row.starts_with(&format!("| {} ", refusal.status())),
                "{row} lists {} with another status",
                refusal.code()
            );
        }
    }

    #[test]
    fn dashif_refusals_carry_its_type_and_title_beside_our_code() {
        let json = |refusal| -> serde_json::Value {
            serde_json::from_slice(&Problem::new(refusal).to_body("r")).unwrap()
        };
        let expired = json(Refusal::TokenExpired);
        assert_eq!(expired["type"], DASHIF_INSUFFICIENT_PROOF);
        assert_eq!(expired["title"], "Not authorized");
        assert_eq!(
            (expired["status"].as_u64(), expired["code"].as_str()),
            (Some(401), Some("token_expired"))
        );
        let entitled = json(Refusal::NotEntitled);
        assert_eq!(entitled["type"], DASHIF_NOT_AUTHORIZED);
        assert_eq!(entitled["code"], "not_entitled");
        assert_eq!(
            json(Refusal::StreamLimitReached)["type"],
            "urn:licensegate:problem:stream_limit_reached"
        );
    }

    /// The API reference says which refusals carry which DASH-IF type, and no other.
    #[test]
    fn the_documented_dashif_mapping_is_the_catalogs() {
        let api = include_str!("../../docs/api.md");
        let section = api
            .split("### DASH-IF problem types")
            .nth(1)
            .and_then(|rest| rest.split("\n### ").next())
            .expect("docs/api.md has a DASH-IF problem types section");
        for refusal in Refusal::ALL {
            let row = section.lines().find(|line| {
                line.starts_with('|') && line.contains(&format!("`{}`", refusal.code()))
            });
            match (refusal.dashif_type(), row) {
                (Some(kind), Some(row)) => assert!(row.contains(kind), "{row}"),
                (None, None) => {}
                (kind, row) => panic!("{}: catalog {kind:?}, docs {row:?}", refusal.code()),
            }
        }
    }

    #[test]
    fn empty_detail_is_left_out() {
        let body = Problem::not_found().to_body("r");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(json.get("detail").is_none());
    }

    #[test]
    fn connect_failures_are_502_and_timeouts_504() {
        use pingora::{Error, ErrorType};
        let refused = Error::new(ErrorType::ConnectRefused);
        assert_eq!(upstream_failure(&refused).status, 502);
        let timeout = Error::new(ErrorType::ReadTimedout);
        assert_eq!(upstream_failure(&timeout).code, "upstream_timeout");
        let reset = Error::new_up(ErrorType::ConnectionClosed);
        assert_eq!(upstream_failure(&reset).code, "upstream_error");
    }
}
