//! The wall clock as the stores and vendors read it: seconds since the Unix epoch, and RFC 3339
//! dates.

use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// RFC 3339 in UTC to the second, as providers expect dates (`2026-11-22T10:00:00Z`).
pub(crate) fn rfc3339(time: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(time).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_in_utc_to_the_second() {
        let time = UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        assert_eq!(rfc3339(time), "2026-11-18T11:06:40Z");
    }
}
