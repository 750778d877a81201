//! What both listeners read and write in HTTP requests and answers: the request id, the bounds
//! on a request's headers, and path segments.

use pingora::http::RequestHeader;

use crate::http::problem::Problem;

/// The header carrying a request's id: on its way to the vendor and on every answer.
pub(crate) const REQUEST_ID: &str = "X-Request-Id";

/// Pingora bounds header bytes only at 1 MB; what a license request needs is far less, and
/// what goes beyond it is refused before any work.
pub(crate) fn check_limits(
    request: &RequestHeader,
    server: &crate::config::ServerSettings,
) -> Result<(), Problem> {
    let count = request.headers.len();
    let bytes: usize = request
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + request.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if count > server.max_header_count || bytes > server.max_header_bytes {
        return Err(Problem::headers_too_large(
            server.max_header_bytes,
            server.max_header_count,
        ));
    }
    Ok(())
}

/// What the request names by `?{key}=` first, else in its `header`; `Err` for a header value
/// that is not visible ASCII.
pub(crate) fn query_or_header(
    request: &RequestHeader,
    key: &str,
    header: &str,
) -> Result<Option<String>, http::header::ToStrError> {
    match query_parameter(request, key) {
        Some(value) => Ok(Some(value)),
        None => request
            .headers
            .get(header)
            .map(|value| value.to_str().map(str::to_string))
            .transpose(),
    }
}

/// The request's `?{key}=` parameter, form-decoded; the first if it is named twice.
pub(crate) fn query_parameter(request: &RequestHeader, key: &str) -> Option<String> {
    request.uri.query().and_then(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.into_owned())
    })
}

/// A path segment with its `%XX` escapes decoded (user ids and session ids may hold any
/// character); an escape that is not UTF-8 becomes U+FFFD.
pub(crate) fn path_segment(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(path_segment("ann%40example.com"), "ann@example.com");
        assert_eq!(path_segment("a%2Fb"), "a/b");
        assert_eq!(path_segment("100%"), "100%");
        assert_eq!(path_segment("%zz"), "%zz");
        assert_eq!(path_segment("%ff"), "\u{fffd}");
    }
}
