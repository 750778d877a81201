//! W3C Trace Context (`traceparent`, `tracestate`). A player's trace is continued: the vendor
//! call carries the same trace id with licensegate's own span as its parent. Without a valid
//! one, licensegate starts a trace whose id is the request id, so the two correlate in logs.

use http::HeaderMap;

pub(crate) const TRACEPARENT: &str = "traceparent";
pub(crate) const TRACESTATE: &str = "tracestate";
/// The spec lets a vendor drop `tracestate` beyond 512 bytes; licensegate drops it there too
/// rather than forwarding whatever size a client sends.
const MAX_TRACESTATE_BYTES: usize = 512;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TraceContext {
    /// 32 lowercase hex digits.
    pub(crate) trace_id: String,
    /// licensegate's span: the parent id the vendor sees. 16 lowercase hex digits.
    pub(crate) span_id: String,
    pub(crate) flags: u8,
    pub(crate) state: Option<String>,
}

impl TraceContext {
    /// A new trace for the request `request_id` (a UUID).
    pub(crate) fn start(request_id: &uuid::Uuid) -> Self {
        Self {
            trace_id: request_id.simple().to_string(),
            span_id: new_span_id(),
            flags: 0,
            state: None,
        }
    }

    /// The caller's trace, continued, when its `traceparent` is valid.
    pub(crate) fn continued(headers: &HeaderMap) -> Option<Self> {
        let mut parents = headers.get_all(TRACEPARENT).iter();
        let parent = parents.next()?.to_str().ok()?;
        if parents.next().is_some() {
            return None;
        }
        let (trace_id, flags) = parse_traceparent(parent)?;
        let state = tracestate(headers);
        Some(Self {
            trace_id: trace_id.to_string(),
            span_id: new_span_id(),
            flags,
            state,
        })
    }

    /// The `traceparent` for the call licensegate makes.
    pub(crate) fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

fn new_span_id() -> String {
    let random = uuid::Uuid::new_v4();
    hex::encode(&random.as_bytes()[8..])
}

/// The trace id and flags of a valid `traceparent`: version, trace id, parent id and flags in
/// lowercase hex, neither id all zeros, version `ff` never valid. A later version may append
/// fields after a dash; version 00 may not.
fn parse_traceparent(value: &str) -> Option<(&str, u8)> {
    let value = value.trim_matches([' ', '\t']);
    if value.len() < 55 || !value.is_char_boundary(55) {
        return None;
    }
    let (fields, rest) = value.split_at(55);
    let mut parts = fields.split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !(lower_hex(version, 2)
        && lower_hex(trace_id, 32)
        && lower_hex(parent_id, 16)
        && lower_hex(flags, 2))
        || version == "ff"
        || (version == "00" && !rest.is_empty())
        || (version != "00" && !(rest.is_empty() || rest.starts_with('-')))
        || trace_id.bytes().all(|b| b == b'0')
        || parent_id.bytes().all(|b| b == b'0')
    {
        return None;
    }
    Some((trace_id, u8::from_str_radix(flags, 16).ok()?))
}

/// Every `tracestate` line joined, as the spec reads several; none beyond the size bound.
fn tracestate(headers: &HeaderMap) -> Option<String> {
    let mut joined = String::new();
    for line in headers.get_all(TRACESTATE) {
        let line = line.to_str().ok()?.trim();
        if line.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(line);
        if joined.len() > MAX_TRACESTATE_BYTES {
            return None;
        }
    }
    (!joined.is_empty()).then_some(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(lines: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn a_valid_parent_is_continued_under_a_new_span() {
        let trace = TraceContext::continued(&headers(&[
            (TRACEPARENT, PARENT),
            (TRACESTATE, "congo=t61rcWkgMzE"),
            (TRACESTATE, "rojo=00f067aa0ba902b7"),
        ]))
        .unwrap();
        assert_eq!(trace.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(trace.span_id, "00f067aa0ba902b7");
        assert_eq!(trace.span_id.len(), 16);
        assert_eq!(trace.flags, 1);
        assert_eq!(
            trace.state.as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        assert!(
            trace
                .traceparent()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        assert!(trace.traceparent().ends_with("-01"));
    }

    #[test]
    fn invalid_parents_start_over() {
        for parent in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "0é-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(
                TraceContext::continued(&headers(&[(TRACEPARENT, parent)])),
                None,
                "{parent}"
            );
        }
        // Two parents contradict each other.
        assert_eq!(
            TraceContext::continued(&headers(&[(TRACEPARENT, PARENT), (TRACEPARENT, PARENT)])),
            None
        );
    }

    #[test]
    fn a_later_version_may_carry_more_fields() {
        let parent = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more";
        let trace = TraceContext::continued(&headers(&[(TRACEPARENT, parent)])).unwrap();
        assert_eq!(trace.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(trace.traceparent().starts_with("00-"));
    }

    #[test]
    fn an_oversized_tracestate_is_dropped() {
        let long = format!("vendor={}", "x".repeat(600));
        let trace =
            TraceContext::continued(&headers(&[(TRACEPARENT, PARENT), (TRACESTATE, &long)]))
                .unwrap();
        assert_eq!(trace.state, None);
    }

    #[test]
    fn a_new_trace_is_the_request_id() {
        let id = uuid::Uuid::parse_str("3f0c2b1e-9d8a-4c7b-8e6f-5a4b3c2d1e0f").unwrap();
        let trace = TraceContext::start(&id);
        assert_eq!(trace.trace_id, "3f0c2b1e9d8a4c7b8e6f5a4b3c2d1e0f");
        assert_eq!(trace.flags, 0);
    }
}
