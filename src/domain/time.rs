//! Intervals `[start, end)` and billing periods (calendar months, UTC).

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The longest interval one reading may cover.
pub const INTERVAL_S_MAX: i64 = 24 * 3600;

/// Parses an RFC 3339 timestamp and returns it in UTC.
/// Times between the years 1970 and 9999 only: every period must be writable as `YYYY-MM`.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    match utc_time_digits(s) {
        Some(t) => Ok(t),
        None => parse_rfc3339(s),
    }
}

/// [`parse_time`] through chrono's RFC 3339 parser: every shape, and the refusals' wording.
fn parse_rfc3339(s: &str) -> Result<DateTime<Utc>, String> {
    let t = DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| format!("must be an RFC 3339 time such as \"2026-11-02T20:00:00Z\", got {s:?}"))?;
    if !(1970..=9999).contains(&t.year()) {
        return Err(format!("must be between the years 1970 and 9999, got {s:?}"));
    }
    Ok(t)
}

/// The shape the ledger writes, `YYYY-MM-DDTHH:MM:SS[.f]Z` with 1–9 fraction digits and
/// a year from 1970, read digit by digit (chrono's RFC 3339 parser showed in the replay's
/// profile: every stored reading holds three times). `None` for any other text, which
/// [`parse_time`] hands to chrono; a test checks that both agree on what this takes.
fn utc_time_digits(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    if !(20..=30).contains(&b.len()) || b[b.len() - 1] != b'Z' {
        return None;
    }
    let digit = |i: usize| {
        let d = b[i].wrapping_sub(b'0');
        (d < 10).then_some(u32::from(d))
    };
    let two = |i: usize| Some(digit(i)? * 10 + digit(i + 1)?);
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let year = two(0)? * 100 + two(2)?;
    let (month, day, hour, minute, second) = (two(5)?, two(8)?, two(11)?, two(14)?, two(17)?);
    let nanos = match b.len() {
        20 => 0,
        21 => return None,
        n => {
            if b[19] != b'.' {
                return None;
            }
            let mut f = 0;
            for i in 20..n - 1 {
                f = f * 10 + digit(i)?;
            }
            f * 10u32.pow(30 - n as u32)
        }
    };
    if year < 1970 || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(year as i32, month, day)?;
    Some(date.and_hms_nano_opt(hour, minute, second, nanos)?.and_utc())
}

/// Renders a time as RFC 3339 in UTC with a `Z`.
pub fn fmt_time(t: &DateTime<Utc>) -> String {
    let mut out = String::with_capacity(30);
    write_time(&mut out, t);
    out
}

/// Appends [`fmt_time`]'s text: RFC 3339 in UTC with a `Z`, and a fraction of 3, 6 or 9
/// digits only when the time has one (chrono's `AutoSi`). Written digit by digit for the
/// years 0–9999 (chrono's formatter showed in the write path's profile); other times, and
/// leap seconds, go through chrono.
pub fn write_time(out: &mut String, t: &DateTime<Utc>) {
    use chrono::Timelike;
    // The naive time once: each of `DateTime`'s own accessors converts it again.
    let n = t.naive_utc();
    let (year, nanos) = (n.year(), n.nanosecond());
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        out.push_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true));
        return;
    }
    let mut b = [0u8; 30];
    let mut put = |at: usize, v: u32, digits: usize| {
        let mut v = v;
        for i in (0..digits).rev() {
            b[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year as u32, 4);
    put(5, n.month(), 2);
    put(8, n.day(), 2);
    put(11, n.hour(), 2);
    put(14, n.minute(), 2);
    put(17, n.second(), 2);
    let mut len = 19;
    if nanos != 0 {
        let (v, digits) = if nanos % 1_000_000 == 0 {
            (nanos / 1_000_000, 3)
        } else if nanos % 1_000 == 0 {
            (nanos / 1_000, 6)
        } else {
            (nanos, 9)
        };
        put(20, v, digits);
        b[19] = b'.';
        len = 20 + digits;
    }
    (b[4], b[7], b[10], b[13], b[16], b[len]) = (b'-', b'-', b'T', b':', b':', b'Z');
    out.push_str(std::str::from_utf8(&b[..=len]).expect("ASCII digits"));
}

/// Serde helpers for `DateTime<Utc>` fields, rendered with `fmt_time`.
pub mod time_str {
    use super::*;
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&fmt_time(t))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        parse_time(&s).map_err(serde::de::Error::custom)
    }
}

/// Serde helpers for `Option<DateTime<Utc>>`.
pub mod opt_time_str {
    use super::*;
    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&fmt_time(t)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| parse_time(&s).map_err(serde::de::Error::custom)).transpose()
    }
}

/// A metered interval `[start, end)`: `start < end`, at most 24 h.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Interval {
    #[serde(with = "time_str")]
    pub start: DateTime<Utc>,
    #[serde(with = "time_str")]
    pub end: DateTime<Utc>,
}

impl Interval {
    pub fn new(start: DateTime<Utc>, end: DateTime<Utc>) -> Result<Self, String> {
        if end <= start {
            return Err(format!(
                "end {} must be after start {}",
                fmt_time(&end),
                fmt_time(&start)
            ));
        }
        if (end - start).num_seconds() > INTERVAL_S_MAX {
            return Err("an interval may cover at most 24 hours".into());
        }
        Ok(Self { start, end })
    }

    pub fn duration_ms(&self) -> i64 {
        (self.end - self.start).num_milliseconds()
    }

    pub fn overlaps(&self, other: &Interval) -> bool {
        self.start < other.end && other.start < self.end
    }
}

/// A billing period: a calendar month in UTC, written `YYYY-MM`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Period {
    year: i32,
    month: u32,
}

impl Period {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("must be a month written YYYY-MM, such as \"2026-11\", got {s:?}");
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u32 = m.parse().map_err(|_| bad())?;
        if !(1..=12).contains(&month) || !(1970..=9999).contains(&year) {
            return Err(bad());
        }
        Ok(Self { year, month })
    }

    /// The period that contains `t`.
    pub fn of(t: DateTime<Utc>) -> Self {
        Self {
            year: t.year(),
            month: t.month(),
        }
    }

    pub fn start(&self) -> DateTime<Utc> {
        let d = NaiveDate::from_ymd_opt(self.year, self.month, 1).expect("valid month");
        Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight"))
    }

    pub fn next(&self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    pub fn end(&self) -> DateTime<Utc> {
        self.next().start()
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.digits() {
            Some(b) => f.pad(std::str::from_utf8(&b).expect("ASCII digits")),
            None => f.pad(&format!("{:04}-{:02}", self.year, self.month)),
        }
    }
}

impl Period {
    /// `2026-03` digit by digit, for the years 0–9999 and months 1–12 (the books make a
    /// period's key for every reading; integer formatting was most of that).
    fn digits(&self) -> Option<[u8; 7]> {
        if !(0..=9999).contains(&self.year) || !(1..=12).contains(&self.month) {
            return None;
        }
        let (y, m) = (self.year as u32, self.month);
        Some([
            b'0' + (y / 1000) as u8,
            b'0' + (y / 100 % 10) as u8,
            b'0' + (y / 10 % 10) as u8,
            b'0' + (y % 10) as u8,
            b'-',
            b'0' + (m / 10) as u8,
            b'0' + (m % 10) as u8,
        ])
    }

    /// What `Display` writes, without an allocation for the years 0–9999 (the books look
    /// up a period's entries for every reading).
    pub fn text(&self) -> ShortText<7> {
        match self.digits() {
            Some(b) => ShortText::Digits(b),
            None => ShortText::Other(self.to_string()),
        }
    }

    /// Appends what `Display` writes (`2026-03`).
    pub fn write_to(&self, out: &mut String) {
        out.push_str(self.text().as_str());
    }
}

/// A short text that is ASCII digits and separators in the usual case (a period's, a day's),
/// held on the stack then, and in a `String` otherwise.
pub enum ShortText<const N: usize> {
    Digits([u8; N]),
    Other(String),
}

impl<const N: usize> ShortText<N> {
    pub fn as_str(&self) -> &str {
        match self {
            ShortText::Digits(b) => std::str::from_utf8(b).expect("ASCII digits"),
            ShortText::Other(s) => s,
        }
    }
}

impl Serialize for Period {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digit reader takes only times chrono reads to the same instant (in the years
    /// [`parse_time`] allows), and takes the ledger's own shapes: texts built from the
    /// shape with digits, separators and lengths varied (invalid dates and hours, leap
    /// seconds, fractions of 0–12 digits, offsets).
    #[test]
    fn utc_times_read_digit_by_digit_are_the_ones_chrono_reads() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3339);
        let chrono = |s: &str| parse_rfc3339(s).ok();
        let (mut taken, mut refused) = (0, 0);
        for _ in 0..200_000 {
            let mut s = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                rng.gen_range(1960..2110),
                rng.gen_range(0..14),
                rng.gen_range(0..33),
                rng.gen_range(0..25),
                rng.gen_range(0..61),
                rng.gen_range(0..62)
            );
            let digits = rng.gen_range(0..13);
            if digits > 0 || rng.gen_bool(0.05) {
                s.push('.');
            }
            for _ in 0..digits {
                s.push(char::from(b'0' + rng.gen_range(0..10)));
            }
            s.push_str(["Z", "Z", "Z", "z", "+00:00", "+01:30", ""][rng.gen_range(0..7)]);
            if rng.gen_bool(0.05) {
                let at = rng.gen_range(0..s.len());
                s.replace_range(at..at + 1, [" ", "t", "/", "x", "9"][rng.gen_range(0..5)]);
            }
            match utc_time_digits(&s) {
                Some(t) => {
                    taken += 1;
                    assert_eq!(chrono(&s), Some(t), "{s}");
                }
                None => refused += 1,
            }
        }
        assert!(taken > 10_000 && refused > 10_000, "taken {taken}, refused {refused}");
        for s in [
            "2026-03-01T00:15:00Z",
            "2026-11-30T02:02:39.455Z",
            "1970-01-01T00:00:00.000000001Z",
        ] {
            assert_eq!(utc_time_digits(s), chrono(s), "{s}");
            assert!(utc_time_digits(s).is_some(), "{s}");
        }
    }

    /// `Display`, `Period::write_to` and `Period::text` write what `{:04}-{:02}` writes,
    /// and `Display` keeps a width.
    #[test]
    fn periods_are_written_as_the_format_writes_them() {
        let cases = [
            (2026, 3),
            (0, 1),
            (9999, 12),
            (10000, 1),
            (-1, 7),
            (1970, 10),
            (5, 5),
            (2026, 0),
            (2026, 13),
        ];
        for (y, m) in cases {
            let p = Period { year: y, month: m };
            let expected = format!("{y:04}-{m:02}");
            let mut out = String::from("x");
            p.write_to(&mut out);
            assert_eq!(out, format!("x{expected}"));
            assert_eq!(p.to_string(), expected);
            assert_eq!(p.text().as_str(), expected);
            assert_eq!(format!("{p:>10}|{p:<9}|"), format!("{expected:>10}|{expected:<9}|"));
        }
    }

    #[test]
    fn intervals_must_be_ordered_and_short() {
        let t = |s| parse_time(s).unwrap();
        assert!(Interval::new(t("2026-01-01T00:00:00Z"), t("2026-01-01T00:15:00Z")).is_ok());
        assert!(Interval::new(t("2026-01-01T00:15:00Z"), t("2026-01-01T00:15:00Z")).is_err());
        assert!(Interval::new(t("2026-01-01T00:15:00Z"), t("2026-01-01T00:00:00Z")).is_err());
        assert!(Interval::new(t("2026-01-01T00:00:00Z"), t("2026-01-02T00:00:00Z")).is_ok());
        assert!(Interval::new(t("2026-01-01T00:00:00Z"), t("2026-01-02T00:00:01Z")).is_err());
    }

    #[test]
    fn times_outside_the_writable_years_are_refused() {
        assert!(parse_time("1969-12-31T23:59:59Z").is_err());
        assert!(parse_time("1970-01-01T00:00:00Z").is_ok());
    }

    /// The digit-by-digit writer gives chrono's text for every time: whole seconds, each
    /// fraction length, the edges of the years it writes itself, and the years it does not.
    #[test]
    fn fmt_time_is_chronos_auto_si_text() {
        let chrono_text = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut times = vec![
            Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap(),
            DateTime::from_timestamp(1_800_000_059, 1_999_999_999).unwrap(),
        ];
        for _ in 0..20_000 {
            let secs = (next() % 320_000_000_000) as i64 - 62_000_000_000;
            let nanos = match next() % 4 {
                0 => 0,
                1 => (next() % 1000) as u32 * 1_000_000,
                2 => (next() % 1_000_000) as u32 * 1_000,
                _ => (next() % 1_000_000_000) as u32,
            };
            times.push(DateTime::from_timestamp(secs, nanos).unwrap());
        }
        for t in &times {
            assert_eq!(fmt_time(t), chrono_text(t), "{t:?}");
        }
    }

    #[test]
    fn offsets_are_normalised_to_utc() {
        let a = parse_time("2026-03-08T01:00:00-06:00").unwrap();
        assert_eq!(fmt_time(&a), "2026-03-08T07:00:00Z");
    }

    #[test]
    fn periods_parse_and_step() {
        let p = Period::parse("2026-12").unwrap();
        assert_eq!(p.next().to_string(), "2027-01");
        assert_eq!(fmt_time(&p.end()), "2027-01-01T00:00:00Z");
        assert!(Period::parse("2026-13").is_err());
        assert!(Period::parse("2026-1").is_err());
        assert!(Period::parse("26-01").is_err());
    }
}
