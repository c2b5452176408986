//! The times a caller may send, and the errors that name the field when one is off.
//!
//! Every time inside is milliseconds since the Unix epoch (UTC). What a caller sends is
//! checked against a documented window before anything is applied (docs/data.md):
//! - an outcome's time: at most [`MAX_CLOCK_SKEW`] ahead of the node's clock (a time in the
//!   far future would otherwise stand as the customer's newest event), and no older than
//!   the longest history a node keeps (400 days; the caller passes it);
//! - a decision's time: within [`DECISIONS_FROM`] to [`DECISIONS_UNTIL`], the years a
//!   replay or a what-if may ask about (a time in seconds sent as milliseconds, or the
//!   reverse, lands far outside);
//! - a timestamp attribute: within [`VALUES_FROM`] to [`VALUES_UNTIL`], RFC 3339's
//!   four-digit years (protobuf's `Timestamp` range, less its last day).
//!
//! The node's clock is an argument: this module reads no clock.

/// How far ahead of the node's clock an outcome's time may be: clocks of callers drift.
pub const MAX_CLOCK_SKEW: i64 = 5 * 60_000;
/// The earliest decision time: 2000-01-01T00:00:00Z.
pub const DECISIONS_FROM: i64 = 946_684_800_000;
/// The first decision time refused: 2100-01-01T00:00:00Z.
pub const DECISIONS_UNTIL: i64 = 4_102_444_800_000;
/// The earliest timestamp value: 0001-01-01T00:00:00Z.
pub const VALUES_FROM: i64 = -62_135_596_800_000;
/// The latest timestamp value: 9999-12-30T22:00:00Z, the latest that RFC 3339
/// renders in every UTC offset (protobuf's own range ends a day later).
pub const VALUES_UNTIL: i64 = 253_402_207_200_000;

/// A time outside what the node accepts for its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error(
        "`{field}` is {}, more than {} ahead of the node's clock ({}): is it in the right unit (seconds, not milliseconds) and is the caller's clock right?",
        rfc3339(*at), duration(MAX_CLOCK_SKEW), rfc3339(*now)
    )]
    Ahead { field: String, at: i64, now: i64 },
    #[error(
        "`{field}` is {}, older than the {} a node keeps history for (the oldest accepted now is {})",
        rfc3339(*at), duration(*horizon), rfc3339(now.saturating_sub(*horizon))
    )]
    TooOld {
        field: String,
        at: i64,
        now: i64,
        horizon: i64,
    },
    #[error("`{field}` is {}, outside {} to {}", rfc3339(*at), rfc3339(*from), rfc3339(*until))]
    OutOfRange {
        field: String,
        at: i64,
        from: i64,
        until: i64,
    },
    #[error("`{field}` has {nanos} nanoseconds; a timestamp's nanos are 0 to 999999999")]
    Nanos { field: String, nanos: i32 },
}

/// A time that may be no more than [`MAX_CLOCK_SKEW`] ahead of the node's clock `now`.
pub fn not_ahead(field: &str, at: i64, now: i64) -> Result<(), TimeError> {
    if at > now.saturating_add(MAX_CLOCK_SKEW) {
        return Err(TimeError::Ahead {
            field: field.to_string(),
            at,
            now,
        });
    }
    Ok(())
}

/// An outcome's time, against the node's clock `now` and the history's `horizon` (ms).
pub fn outcome(field: &str, at: i64, now: i64, horizon: i64) -> Result<(), TimeError> {
    not_ahead(field, at, now)?;
    if at < now.saturating_sub(horizon) {
        return Err(TimeError::TooOld {
            field: field.to_string(),
            at,
            now,
            horizon,
        });
    }
    Ok(())
}

/// A decision's time.
pub fn decision(field: &str, at: i64) -> Result<(), TimeError> {
    within(field, at, DECISIONS_FROM, DECISIONS_UNTIL - 1)
}

/// A timestamp attribute's value.
pub fn value(field: &str, at: i64) -> Result<(), TimeError> {
    within(field, at, VALUES_FROM, VALUES_UNTIL)
}

/// `from..=until`.
fn within(field: &str, at: i64, from: i64, until: i64) -> Result<(), TimeError> {
    if (from..=until).contains(&at) {
        Ok(())
    } else {
        Err(TimeError::OutOfRange {
            field: field.to_string(),
            at,
            from,
            until,
        })
    }
}

/// Milliseconds from a protobuf `Timestamp`'s seconds and nanos, refusing nanos outside
/// 0..1e9 and times `i64` milliseconds cannot hold (the range check comes after).
pub fn from_parts(field: &str, seconds: i64, nanos: i32) -> Result<i64, TimeError> {
    if !(0..1_000_000_000).contains(&nanos) {
        return Err(TimeError::Nanos {
            field: field.to_string(),
            nanos,
        });
    }
    seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(nanos) / 1_000_000))
        .ok_or_else(|| TimeError::OutOfRange {
            field: field.to_string(),
            at: if seconds < 0 { i64::MIN } else { i64::MAX },
            from: VALUES_FROM,
            until: VALUES_UNTIL,
        })
}

/// A time as RFC 3339 where it has one, else as milliseconds.
pub fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map_or_else(|_| format!("{ms} ms since the epoch"), |t| t.to_string())
}

/// A duration in the largest whole unit (`5m`, `400d`), else in ms.
fn duration(ms: i64) -> String {
    const UNITS: [(i64, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1000, "s"),
    ];
    UNITS
        .iter()
        .find(|(unit, _)| ms >= *unit && ms % unit == 0)
        .map_or_else(
            || format!("{ms}ms"),
            |(unit, name)| format!("{}{name}", ms / unit),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_547_200_000; // 2025-12-01T00:00:00Z
    const DAY: i64 = 86_400_000;

    #[test]
    fn an_outcome_may_be_a_little_ahead_and_as_old_as_the_history() {
        assert_eq!(outcome("at", NOW + MAX_CLOCK_SKEW, NOW, 400 * DAY), Ok(()));
        assert_eq!(outcome("at", NOW - 400 * DAY, NOW, 400 * DAY), Ok(()));
        let ahead = outcome("at", NOW + 800 * DAY, NOW, 400 * DAY).expect_err("800 days ahead");
        assert_eq!(
            ahead.to_string(),
            "`at` is 2028-02-09T00:00:00Z, more than 5m ahead of the node's clock \
             (2025-12-01T00:00:00Z): is it in the right unit (seconds, not milliseconds) and \
             is the caller's clock right?"
        );
        let old = outcome("at", NOW - 401 * DAY, NOW, 400 * DAY).expect_err("too old");
        assert_eq!(
            old.to_string(),
            "`at` is 2024-10-26T00:00:00Z, older than the 400d a node keeps history for \
             (the oldest accepted now is 2024-10-27T00:00:00Z)"
        );
        // Seconds given as milliseconds: January 1970.
        assert!(outcome("at", NOW / 1000, NOW, 400 * DAY).is_err());
    }

    #[test]
    fn decisions_and_values_have_fixed_ranges() {
        assert_eq!(decision("at", NOW), Ok(()));
        assert!(decision("at", NOW * 1000).is_err(), "ms sent as µs");
        assert!(decision("at", NOW / 1000).is_err(), "seconds sent as ms");
        assert_eq!(value("customer.seen", VALUES_UNTIL), Ok(()));
        assert_eq!(value("customer.seen", VALUES_FROM), Ok(()));
        assert!(value("customer.seen", VALUES_UNTIL + 1).is_err());
        assert_eq!(
            from_parts("customer.seen", 10_i64.pow(13), 0)
                .and_then(|ms| value("customer.seen", ms).map(|()| ms))
                .expect_err("year 318857")
                .to_string(),
            "`customer.seen` is 10000000000000000 ms since the epoch, outside \
             0001-01-01T00:00:00Z to 9999-12-30T22:00:00Z"
        );
        assert!(matches!(
            from_parts("at", 1, 1_000_000_000),
            Err(TimeError::Nanos { .. })
        ));
        assert!(matches!(
            from_parts("at", 1, -1),
            Err(TimeError::Nanos { .. })
        ));
        assert!(from_parts("at", i64::MAX, 0).is_err());
    }
}
