//! The `grpc-timeout` header: 1 to 8 ASCII digits followed by a unit (`H`, `M`, `S`, `m`, `u`,
//! `n`).

use std::{
    fmt,
    time::{Duration, Instant},
};

/// The deadline `timeout` after `now`. A timeout too long for the clock (a decoded `99999999H`
/// on some platforms, a caller's `Duration::MAX`) is a century: a deadline that never comes,
/// not an overflow (a monotonic clock's `Instant` holds a century past any `now`).
pub fn deadline(now: Instant, timeout: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(timeout).unwrap_or(now + CENTURY)
}

/// The largest value the eight digits can hold.
const MAX_VALUE: u64 = 99_999_999;

/// Why a `grpc-timeout` value could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTimeout {
    reason: &'static str,
}

impl fmt::Display for InvalidTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid grpc-timeout: {}", self.reason)
    }
}

impl std::error::Error for InvalidTimeout {}

/// Parses a `grpc-timeout` value.
///
/// Values beyond what a [`Duration`] holds cannot occur (8 digits of hours is ~11,000 years),
/// so this never overflows.
pub fn decode(value: &[u8]) -> Result<Duration, InvalidTimeout> {
    let err = |reason| Err(InvalidTimeout { reason });
    let Some((&unit, digits)) = value.split_last() else {
        return err("empty value");
    };
    if digits.is_empty() {
        return err("no digits");
    }
    if digits.len() > 8 {
        return err("more than 8 digits");
    }
    if !digits.iter().all(u8::is_ascii_digit) {
        return err("not a decimal number");
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Ok(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return err("unknown unit"),
    })
}

/// Encodes a timeout, picking the most precise unit whose value fits in 8 digits and rounding
/// up so the peer never sees a shorter deadline than ours. Timeouts too long for any unit clamp
/// to the largest encodable value (`99999999H`).
pub fn encode(timeout: Duration) -> String {
    let nanos = timeout.as_nanos();
    const UNITS: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (per, unit) in UNITS {
        let value = nanos.div_ceil(per);
        if value <= u128::from(MAX_VALUE) {
            return format!("{value}{unit}");
        }
    }
    format!("{MAX_VALUE}H")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_too_far_for_the_clock_is_a_century() {
        let now = Instant::now();
        assert_eq!(
            deadline(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        let never = deadline(now, Duration::MAX);
        assert!(never >= now + Duration::from_secs(99 * 365 * 24 * 3600));
    }

    #[test]
    fn decodes_every_unit() {
        assert_eq!(decode(b"1H").unwrap(), Duration::from_secs(3600));
        assert_eq!(decode(b"2M").unwrap(), Duration::from_secs(120));
        assert_eq!(decode(b"3S").unwrap(), Duration::from_secs(3));
        assert_eq!(decode(b"4m").unwrap(), Duration::from_millis(4));
        assert_eq!(decode(b"5u").unwrap(), Duration::from_micros(5));
        assert_eq!(decode(b"6n").unwrap(), Duration::from_nanos(6));
        assert_eq!(decode(b"0S").unwrap(), Duration::ZERO);
        assert_eq!(
            decode(b"99999999H").unwrap(),
            Duration::from_secs(99_999_999 * 3600)
        );
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            &b""[..],
            b"S",
            b"1",
            b"1x",
            b"123456789S",
            b"-1S",
            b"1.5S",
            b" 1S",
            b"1s",
            b"\xff\xffS",
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn encodes_most_precise_unit() {
        assert_eq!(encode(Duration::from_nanos(5)), "5n");
        assert_eq!(encode(Duration::from_millis(99)), "99000000n");
        assert_eq!(encode(Duration::from_millis(100)), "100000u");
        assert_eq!(encode(Duration::from_secs(1)), "1000000u");
        assert_eq!(encode(Duration::from_secs(100)), "100000m");
        assert_eq!(encode(Duration::from_secs(100_000)), "100000S");
        assert_eq!(encode(Duration::from_secs(100_000_000)), "1666667M");
        assert_eq!(encode(Duration::MAX), "99999999H");
        assert_eq!(encode(Duration::ZERO), "0n");
    }

    #[test]
    fn encoding_never_shortens() {
        for d in [
            Duration::from_nanos(100_000_001),
            Duration::from_nanos(123_456_789_123),
            Duration::from_secs(7 * 24 * 3600) + Duration::from_nanos(1),
        ] {
            let back = decode(encode(d).as_bytes()).unwrap();
            assert!(back >= d, "{d:?} -> {back:?}");
        }
    }
}
