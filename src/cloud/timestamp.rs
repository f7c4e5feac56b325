//! RFC 3339 timestamps in UTC, as cloud APIs write them
//! (`2019-05-29T13:18:42.511407Z`): formatting for the emulators and the
//! client, parsing for the backends, through the `time` crate.

use std::time::SystemTime;

use time::format_description::BorrowedFormatItem;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
const MICROS: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
/// `YYYY-MM-DDTHH:MM:SS.fffffffffZ`.
const NANOS: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");
/// `YYYY-MM-DDTHH:MM:SSZ`.
const SECONDS: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

fn utc(time: impl Into<OffsetDateTime>) -> OffsetDateTime {
    time.into().to_offset(UtcOffset::UTC)
}

fn write(time: OffsetDateTime, format: &[BorrowedFormatItem<'_>]) -> String {
    time.format(format).unwrap_or_default()
}

/// `time` as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn format(time: SystemTime) -> String {
    write(utc(time), MICROS)
}

/// `time` as `YYYY-MM-DDTHH:MM:SSZ` (whole seconds), as Packet writes it.
pub fn format_seconds(time: SystemTime) -> String {
    write(utc(time), SECONDS)
}

/// Seconds and nanoseconds since the epoch (a protobuf timestamp) as
/// `YYYY-MM-DDTHH:MM:SS[.fffffffff]Z`; the fraction only when not zero.
pub fn format_unix(seconds: i64, nanos: i32) -> String {
    let Ok(at) = OffsetDateTime::from_unix_timestamp(seconds) else {
        return format!("{seconds}s since the epoch");
    };
    let at = at + time::Duration::nanoseconds(i64::from(nanos.max(0)));
    write(at, if nanos > 0 { NANOS } else { SECONDS })
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`.
pub fn parse(text: &str) -> Option<SystemTime> {
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .map(SystemTime::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn known_instants_parse() {
        let t = parse("2019-05-29T13:18:42.511407Z").unwrap();
        let d = t.duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(d.as_secs(), 1_559_135_922);
        assert_eq!(d.subsec_micros(), 511_407);
        assert_eq!(
            parse("2026-01-01T10:00:00Z").unwrap(),
            parse("2026-01-01T12:00:00+02:00").unwrap()
        );
        assert_eq!(parse("1970-01-01T00:00:00Z").unwrap(), UNIX_EPOCH);
    }

    #[test]
    fn bad_text_is_refused() {
        for bad in [
            "",
            "2019-05-29",
            "2019-13-01T00:00:00Z",
            "2019-05-29T13:18:42",
            "2019-05-29T13:18:42.Z",
            "2019-05-29T13:18:42+0200",
            "20x9-05-29T13:18:42Z",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn format_round_trips() {
        for secs in [0u64, 951_782_400, 1_559_135_922, 4_102_444_800] {
            let t = UNIX_EPOCH + Duration::new(secs, 123_456_000);
            let text = format(t);
            assert!(text.ends_with('Z'), "{text}");
            assert_eq!(parse(&text).unwrap(), t, "{text}");
        }
        assert_eq!(format(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn whole_seconds_drop_the_fraction() {
        let at = |s| format_seconds(UNIX_EPOCH + Duration::from_millis(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400_250), "2000-02-29T00:00:00Z");
        assert_eq!(at(4_102_444_799_999), "2099-12-31T23:59:59Z");
    }
}
