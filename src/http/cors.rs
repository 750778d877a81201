//! CORS for browser players: every answer, errors included, carries the headers a player needs
//! to read it, or the browser hides our problem JSON behind an opaque network error.

use http::HeaderValue;
use pingora::http::ResponseHeader;

use crate::config::CorsSettings;

/// What the request said about its origin, worked out once in the request phase.
#[derive(Debug, Default, Clone)]
pub enum Origin {
    /// No `Origin` header: not a cross-origin browser request.
    #[default]
    Absent,
    Allowed(HeaderValue),
    Refused,
}

impl Origin {
    pub fn of(settings: &CorsSettings, origin: Option<&HeaderValue>) -> Self {
        let Some(origin) = origin else {
            return Origin::Absent;
        };
        let allowed = settings.any_origin
            || origin.to_str().is_ok_and(|text| {
                settings
                    .origins
                    .iter()
                    .any(|o| o.eq_ignore_ascii_case(text))
            });
        if allowed {
            Origin::Allowed(origin.clone())
        } else {
            Origin::Refused
        }
    }

    /// Whether a cookie may stand for the user: browsers attach cookies to cross-site form
    /// posts too, so only a page on an origin the operator listed by name may spend them.
    /// A wildcard list, or a request without `Origin`, does not qualify.
    pub(crate) fn admits_cookies(&self, settings: &CorsSettings) -> bool {
        let Origin::Allowed(origin) = self else {
            return false;
        };
        origin.to_str().is_ok_and(|text| {
            settings
                .origins
                .iter()
                .any(|listed| listed != "*" && listed.eq_ignore_ascii_case(text))
        })
    }
}

/// Adds the headers of an actual (non-preflight) answer.
pub(crate) fn decorate(settings: &CorsSettings, origin: &Origin, response: &mut ResponseHeader) {
    // Answers differ by Origin, so shared caches must key on it.
    append(response, "Vary", "Origin");
    if let Origin::Allowed(allowed) = origin {
        insert_value(response, "Access-Control-Allow-Origin", allowed.clone());
        insert(
            response,
            "Access-Control-Expose-Headers",
            &settings.expose_headers,
        );
        // Players send license requests with credentials (dash.js does whenever it sends an
        // Authorization header; a cookie token needs them), and the browser hides any answer
        // that does not allow them. Only an origin listed by name gets them, never `*`.
        if origin.admits_cookies(settings) {
            insert(response, "Access-Control-Allow-Credentials", "true");
        }
    }
}

/// Adds the headers of a preflight answer on top of [`decorate`].
pub(crate) fn decorate_preflight(
    settings: &CorsSettings,
    origin: &Origin,
    response: &mut ResponseHeader,
) {
    decorate(settings, origin, response);
    if matches!(origin, Origin::Allowed(_)) {
        insert(
            response,
            "Access-Control-Allow-Methods",
            "POST, GET, OPTIONS",
        );
        insert(
            response,
            "Access-Control-Allow-Headers",
            &settings.allowed_headers,
        );
        insert(
            response,
            "Access-Control-Max-Age",
            &settings.max_age_seconds.to_string(),
        );
    }
}

fn insert(response: &mut ResponseHeader, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        insert_value(response, name, value);
    }
}

// The names are static and valid, so these cannot fail; a failure would only drop the header.
fn insert_value(response: &mut ResponseHeader, name: &'static str, value: HeaderValue) {
    let _ = response.insert_header(name, value);
}

fn append(response: &mut ResponseHeader, name: &'static str, value: &'static str) {
    let _ = response.append_header(name, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(origins: &[&str]) -> CorsSettings {
        CorsSettings {
            any_origin: origins.contains(&"*"),
            origins: origins.iter().map(|o| o.to_string()).collect(),
            allowed_headers: "Authorization, Content-Type".into(),
            expose_headers: "X-Request-Id".into(),
            max_age_seconds: 60,
        }
    }

    #[test]
    fn listed_origin_is_echoed_and_others_refused() {
        let settings = settings(&["https://player.example"]);
        let good = HeaderValue::from_static("https://player.example");
        let bad = HeaderValue::from_static("https://evil.example");
        assert!(matches!(
            Origin::of(&settings, Some(&good)),
            Origin::Allowed(_)
        ));
        assert!(matches!(Origin::of(&settings, Some(&bad)), Origin::Refused));
        assert!(matches!(Origin::of(&settings, None), Origin::Absent));
    }

    #[test]
    fn cookies_only_from_origins_listed_by_name() {
        let listed = settings(&["https://player.example"]);
        let wildcard = settings(&["*"]);
        let player = HeaderValue::from_static("https://player.example");
        let evil = HeaderValue::from_static("https://evil.example");
        assert!(Origin::of(&listed, Some(&player)).admits_cookies(&listed));
        assert!(!Origin::of(&listed, Some(&evil)).admits_cookies(&listed));
        assert!(!Origin::of(&listed, None).admits_cookies(&listed));
        assert!(!Origin::of(&wildcard, Some(&evil)).admits_cookies(&wildcard));
    }

    #[test]
    fn preflight_carries_methods_headers_and_max_age() {
        let settings = settings(&["*"]);
        let origin = Origin::of(
            &settings,
            Some(&HeaderValue::from_static("https://a.example")),
        );
        let mut response = ResponseHeader::build(204, None).unwrap();
        decorate_preflight(&settings, &origin, &mut response);
        let header = |name: &str| {
            response
                .headers
                .get(name)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(header("Access-Control-Allow-Origin"), "https://a.example");
        assert_eq!(header("Access-Control-Max-Age"), "60");
        assert_eq!(header("Access-Control-Expose-Headers"), "X-Request-Id");
        assert!(header("Access-Control-Allow-Methods").contains("POST"));
    }

    #[test]
    fn credentials_are_allowed_for_origins_listed_by_name_only() {
        let credentials = |origins: &[&str], from: &'static str, preflight: bool| {
            let settings = settings(origins);
            let origin = Origin::of(&settings, Some(&HeaderValue::from_static(from)));
            let mut response = ResponseHeader::build(200, None).unwrap();
            if preflight {
                decorate_preflight(&settings, &origin, &mut response);
            } else {
                decorate(&settings, &origin, &mut response);
            }
            response
                .headers
                .get("Access-Control-Allow-Credentials")
                .map(|value| value.to_str().unwrap().to_string())
        };
        let listed = ["https://player.example", "*"];
        for preflight in [false, true] {
            assert_eq!(
                credentials(&listed, "https://player.example", preflight).as_deref(),
                Some("true")
            );
            assert_eq!(
                credentials(&listed, "https://other.example", preflight),
                None
            );
            assert_eq!(
                credentials(&["*"], "https://player.example", preflight),
                None
            );
        }
    }
}
