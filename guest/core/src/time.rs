//! The few calendar computations the destination needs, without a clock:
//! ISO 8601 dates and times, and HTTP dates (RFC 9110 IMF-fixdate).

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A valid calendar date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Date {
    pub year: i64,
    pub month: u32,
    pub day: u32,
}

/// Parses `YYYY-MM-DD`, checking the calendar.
pub fn parse_date(s: &str) -> Option<Date> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = i64::from(digits(s.get(0..4)?)?);
    let month = digits(s.get(5..7)?)?;
    let day = digits(s.get(8..10)?)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some(Date { year, month, day })
}

/// Parses an ISO 8601 date or date-time, returning its calendar date:
/// `2026-11-20`, `2026-11-20T10:00:00Z`, `2026-11-20 10:00:00+02:00`.
/// The date part is taken as written (no time-zone shift), as a person
/// reading the value would.
pub fn parse_date_prefix(s: &str) -> Option<Date> {
    let date = s.get(0..10)?;
    let parsed = parse_date(date)?;
    match s.len() {
        10 => Some(parsed),
        _ => {
            parse_datetime_ms(s)?;
            Some(parsed)
        }
    }
}

/// Parses an ISO 8601 date-time to epoch milliseconds. Without an offset the
/// time is taken as UTC (Outreach writes `2017-01-01T00:00:00` that way).
/// Accepts `T` or a space between date and time, fractional seconds, `Z` or
/// `±HH:MM`/`±HHMM`.
pub fn parse_datetime_ms(s: &str) -> Option<u64> {
    let date = parse_date(s.get(0..10)?)?;
    let rest = s.get(10..)?;
    let rest = rest.strip_prefix('T').or_else(|| rest.strip_prefix(' '))?;
    let (hh, rest) = (digits(rest.get(0..2)?)?, rest.get(2..)?);
    let rest = rest.strip_prefix(':')?;
    let (mm, rest) = (digits(rest.get(0..2)?)?, rest.get(2..)?);
    let (ss, mut rest) = match rest.strip_prefix(':') {
        Some(r) => (digits(r.get(0..2)?)?, r.get(2..)?),
        None => (0, rest),
    };
    let mut millis = 0u64;
    if let Some(frac) = rest.strip_prefix('.').or_else(|| rest.strip_prefix(',')) {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        let ms_digits = frac.get(..n.min(3))?;
        millis = u64::from(digits(ms_digits)?) * 10u64.pow(3 - ms_digits.len() as u32);
        rest = frac.get(n..)?;
    }
    let offset_minutes: i64 = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let (sign, body) = if let Some(body) = rest.strip_prefix('+') {
                (1, body)
            } else if let Some(body) = rest.strip_prefix('-') {
                (-1, body)
            } else {
                return None;
            };
            // `get` rather than indexing: a non-ASCII character where a
            // digit belongs must be a parse failure, never a panic.
            let (oh, om) = match body.len() {
                5 if body.get(2..3) == Some(":") => {
                    (digits(body.get(0..2)?)?, digits(body.get(3..5)?)?)
                }
                4 => (digits(body.get(0..2)?)?, digits(body.get(2..4)?)?),
                2 => (digits(body)?, 0),
                _ => return None,
            };
            if oh > 23 || om > 59 {
                return None;
            }
            sign * i64::from(oh * 60 + om)
        }
    };
    if hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let seconds = days_from_civil(date.year, date.month, date.day) * 86_400
        + i64::from(hh * 3600 + mm * 60 + ss)
        - offset_minutes * 60;
    let seconds = u64::try_from(seconds).ok()?;
    Some(seconds * 1000 + millis)
}

/// Parses an HTTP date in IMF-fixdate form, `Sun, 06 Nov 1994 08:49:37 GMT`,
/// to epoch milliseconds.
pub fn parse_http_date_ms(s: &str) -> Option<u64> {
    let mut parts = s.split_ascii_whitespace();
    let _weekday = parts.next()?.strip_suffix(',')?;
    let day = digits(parts.next()?)?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year = i64::from(digits(parts.next()?)?);
    let time = parts.next()?;
    if parts.next()? != "GMT" || parts.next().is_some() {
        return None;
    }
    if day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let mut hms = time.split(':');
    let (h, m, sec) = (
        digits(hms.next()?)?,
        digits(hms.next()?)?,
        digits(hms.next()?)?,
    );
    if hms.next().is_some() || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + i64::from(h * 3600 + m * 60 + sec);
    Some(u64::try_from(seconds).ok()? * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_conversions_match_known_instants() {
        assert_eq!(parse_datetime_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_datetime_ms("2017-01-01T00:00:00"),
            Some(1_483_228_800_000)
        );
        assert_eq!(
            parse_datetime_ms("2017-01-01T02:00:00+02:00"),
            Some(1_483_228_800_000)
        );
        assert_eq!(
            parse_datetime_ms("2017-01-01T00:00:00.25Z"),
            Some(1_483_228_800_250)
        );
        assert_eq!(
            parse_http_date_ms("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777_000)
        );
        assert_eq!(parse_date("2024-02-29").map(|d| d.day), Some(29));
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(parse_datetime_ms("2017-13-01T00:00:00Z"), None);
    }

    #[test]
    fn non_ascii_where_digits_belong_is_refused_without_panicking() {
        for text in [
            "2017-01-01T00:00:00+0\u{e9}0",
            "2017-01-01T00:00:00-\u{e9}00",
            "2017-01-01T00:00:00+\u{e9}:00",
            "2017-01-01T00:00:00+0\u{1F600}",
            "2017-01-01T00:00:00.\u{e9}",
            "2017-01-01T00:\u{e9}:00Z",
            "2\u{e9}7-01-01",
            "2017-01-01T00:00:00\u{e9}",
        ] {
            assert_eq!(parse_datetime_ms(text), None, "{text}");
            assert_eq!(parse_date_prefix(text), None, "{text}");
        }
    }
}
