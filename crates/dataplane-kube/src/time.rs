//! RFC 3339 times, as the API server writes them (`2026-12-06T11:00:00Z`).

use std::time::SystemTime;

/// The instant `value` names, if it is an RFC 3339 timestamp. k8s-openapi's own `Time` is
/// jiff's `Timestamp`, so its parser reads what the API server writes.
pub(crate) fn parse_rfc3339(value: &str) -> Option<SystemTime> {
    let t = value.trim().parse::<k8s_openapi::jiff::Timestamp>().ok()?;
    let secs = u64::try_from(t.as_second()).ok()?;
    let nanos = u32::try_from(t.subsec_nanosecond()).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn parses_utc_and_offsets_and_fractions() {
        let at = |s| parse_rfc3339(s).and_then(|t| t.duration_since(UNIX_EPOCH).ok());
        assert_eq!(at("1970-01-01T00:00:10Z"), Some(Duration::from_secs(10)));
        assert_eq!(
            at("1970-01-01T01:00:10+01:00"),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            at("1970-01-01T00:00:10.5Z"),
            Some(Duration::from_millis(10_500))
        );
        assert_eq!(at("not a time"), None);
    }
}
