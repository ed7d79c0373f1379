//! Tariffs and pricing: `EU = Wh × rate[flow] × band multiplier × source multiplier`.
//!
//! Bands are written in the site's local time; an interval that crosses a band boundary is
//! split pro rata by time. Daylight-saving days are real days of 23 and 25 hours: a boundary
//! is found by converting each local boundary time of each local day to UTC, so a band never
//! stretches or shrinks by an hour on those days.

use super::ids::SiteId;
use super::quantity::{fmt_decimal, round_eu, round_wh};
use super::time::{Interval, time_str};
use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc, Weekday};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::hash::BuildHasher;

/// One of the four flows across a site bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flow {
    Generated,
    Stored,
    Dispatched,
    Consumed,
}

impl Flow {
    pub const ALL: [Flow; 4] = [Flow::Generated, Flow::Stored, Flow::Dispatched, Flow::Consumed];

    pub fn as_str(self) -> &'static str {
        match self {
            Flow::Generated => "generated",
            Flow::Stored => "stored",
            Flow::Dispatched => "dispatched",
            Flow::Consumed => "consumed",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("must be one of generated, stored, dispatched, consumed; got {s:?}"))
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a generation meter's energy comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Solar,
    Wind,
    GasTurbine,
    Grid,
    Hydro,
    Nuclear,
    Other,
}

impl Source {
    pub const ALL: [Source; 7] = [
        Source::Solar,
        Source::Wind,
        Source::GasTurbine,
        Source::Grid,
        Source::Hydro,
        Source::Nuclear,
        Source::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Solar => "solar",
            Source::Wind => "wind",
            Source::GasTurbine => "gas_turbine",
            Source::Grid => "grid",
            Source::Hydro => "hydro",
            Source::Nuclear => "nuclear",
            Source::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("must be one of solar, wind, gas_turbine, grid, hydro, nuclear, other; got {s:?}"))
    }
}

/// Minutes after local midnight, 0..=1440, written `HH:MM` (`24:00` allowed as an end).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalMinute(pub u16);

pub const MINUTES_PER_DAY: u16 = 1440;

impl LocalMinute {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("must be a local time HH:MM between 00:00 and 24:00, got {s:?}");
        let (h, m) = s.split_once(':').ok_or_else(bad)?;
        if h.len() != 2 || m.len() != 2 {
            return Err(bad());
        }
        let h: u16 = h.parse().map_err(|_| bad())?;
        let m: u16 = m.parse().map_err(|_| bad())?;
        if m >= 60 || h > 24 || (h == 24 && m != 0) {
            return Err(bad());
        }
        Ok(Self(h * 60 + m))
    }
}

impl fmt::Display for LocalMinute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

impl Serialize for LocalMinute {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LocalMinute {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

pub const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

pub fn parse_day(s: &str) -> Result<Weekday, String> {
    DAY_NAMES
        .iter()
        .position(|d| *d == s)
        .map(|i| Weekday::try_from(i as u8).expect("0..7"))
        .ok_or_else(|| format!("must be one of mon, tue, wed, thu, fri, sat, sun; got {s:?}"))
}

mod days_str {
    use super::*;
    pub fn serialize<S: Serializer>(days: &[Weekday], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(days.iter().map(|d| DAY_NAMES[d.num_days_from_monday() as usize]))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Weekday>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|s| parse_day(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// A time-of-use band: on the listed local weekdays, from `start` to `end` local time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Band {
    pub name: String,
    #[serde(with = "days_str")]
    pub days: Vec<Weekday>,
    pub start: LocalMinute,
    pub end: LocalMinute,
    #[serde(with = "super::quantity::decimal_str")]
    pub multiplier: Decimal,
}

impl Band {
    fn covers(&self, day: Weekday, minute: u16) -> bool {
        self.days.contains(&day) && self.start.0 <= minute && minute < self.end.0
    }
}

/// The band for time outside every listed band.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultBand {
    pub name: String,
    #[serde(with = "super::quantity::decimal_str")]
    pub multiplier: Decimal,
}

/// Base rate in EU per Wh for each flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rates {
    #[serde(with = "super::quantity::decimal_str")]
    pub generated: Decimal,
    #[serde(with = "super::quantity::decimal_str")]
    pub stored: Decimal,
    #[serde(with = "super::quantity::decimal_str")]
    pub dispatched: Decimal,
    #[serde(with = "super::quantity::decimal_str")]
    pub consumed: Decimal,
}

impl Rates {
    pub fn of(&self, flow: Flow) -> Decimal {
        match flow {
            Flow::Generated => self.generated,
            Flow::Stored => self.stored,
            Flow::Dispatched => self.dispatched,
            Flow::Consumed => self.consumed,
        }
    }
}

/// A published tariff version of one site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tariff {
    pub site_id: SiteId,
    pub tariff_version: u32,
    #[serde(with = "time_str")]
    pub effective_from: DateTime<Utc>,
    pub rates_eu_per_wh: Rates,
    pub bands: Vec<Band>,
    pub default_band: DefaultBand,
    /// Source kinds without an entry price at multiplier 1.
    #[serde(with = "source_map")]
    pub source_multipliers: BTreeMap<Source, Decimal>,
}

mod source_map {
    use super::*;
    pub fn serialize<S: Serializer>(m: &BTreeMap<Source, Decimal>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter().map(|(k, v)| (k.as_str(), fmt_decimal(v))))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<Source, Decimal>, D::Error> {
        let m = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
        m.iter()
            .map(|(k, v)| {
                let k = Source::parse(k).map_err(serde::de::Error::custom)?;
                let v = super::super::quantity::decimal_from_json(v).map_err(serde::de::Error::custom)?;
                Ok((k, v))
            })
            .collect()
    }
}

impl Tariff {
    /// Checks the rules a tariff must satisfy: bands of one tariff do not overlap, each
    /// band starts before it ends. Returns `(field, message)` on the first breach.
    pub fn check(&self) -> Result<(), (String, String)> {
        for (i, b) in self.bands.iter().enumerate() {
            if b.start >= b.end {
                return Err((
                    format!("bands[{i}].end"),
                    format!(
                        "band {:?} must end after it starts ({} to {}); split a band that crosses midnight into two",
                        b.name, b.start, b.end
                    ),
                ));
            }
            for (j, o) in self.bands.iter().enumerate().take(i) {
                let shared_day = b.days.iter().any(|d| o.days.contains(d));
                if shared_day && b.start < o.end && o.start < b.end {
                    return Err((
                        format!("bands[{i}]"),
                        format!(
                            "band {:?} ({}–{}) overlaps band {:?} ({}–{}) at bands[{j}] on a shared day",
                            b.name, b.start, b.end, o.name, o.start, o.end
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn band_at(&self, local_day: Weekday, minute: u16) -> Option<usize> {
        self.bands.iter().position(|b| b.covers(local_day, minute))
    }

    fn band_name(&self, band: Option<usize>) -> &str {
        band.map_or(&self.default_band.name, |i| &self.bands[i].name)
    }

    fn band_multiplier(&self, band: Option<usize>) -> Decimal {
        band.map_or(self.default_band.multiplier, |i| self.bands[i].multiplier)
    }

    pub fn source_multiplier(&self, source: Source) -> Decimal {
        self.source_multipliers.get(&source).copied().unwrap_or(Decimal::ONE)
    }
}

/// A band's share of a reading split across band boundaries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricePart {
    pub band: String,
    #[serde(with = "super::quantity::decimal_str")]
    pub multiplier: Decimal,
    #[serde(with = "time_str")]
    pub start: DateTime<Utc>,
    #[serde(with = "time_str")]
    pub end: DateTime<Utc>,
    #[serde(with = "super::quantity::decimal_str")]
    pub energy_wh: Decimal,
    #[serde(with = "super::quantity::decimal_str")]
    pub amount_eu: Decimal,
}

/// The price recorded on a reading event when it is appended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    pub tariff_version: u32,
    /// The band's name, or `"mixed"` when the interval crosses band boundaries.
    pub band: String,
    /// The band multiplier; for a mixed interval, the time-weighted multiplier (6 places).
    #[serde(with = "super::quantity::decimal_str")]
    pub multiplier: Decimal,
    #[serde(with = "super::quantity::decimal_str")]
    pub rate_eu_per_wh: Decimal,
    #[serde(with = "super::quantity::decimal_str")]
    pub source_multiplier: Decimal,
    #[serde(with = "super::quantity::decimal_str")]
    pub eu_per_wh: Decimal,
    #[serde(with = "super::quantity::decimal_str")]
    pub amount_eu: Decimal,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<PricePart>,
}

pub const MIXED_BAND: &str = "mixed";

/// The local boundary minutes of a tariff's day (0, and each band's start and end before
/// 24:00), sorted, without repeats.
fn boundary_minutes(terms: &Tariff, minutes: &mut Vec<u16>) {
    minutes.clear();
    minutes.push(0);
    for b in &terms.bands {
        minutes.push(b.start.0);
        minutes.push(b.end.0);
    }
    minutes.retain(|m| *m < MINUTES_PER_DAY);
    minutes.sort_unstable();
    minutes.dedup();
}

/// The boundary minutes of one local day as UTC instants (a skipped local time at the
/// moment the clocks jumped, an ambiguous one twice), in the order of `minutes`.
fn day_boundaries(tz: &Tz, minutes: &[u16], day: NaiveDate) -> Vec<DateTime<Utc>> {
    let mut out = Vec::with_capacity(minutes.len());
    for m in minutes {
        let local = day
            .and_hms_opt(u32::from(m / 60), u32::from(m % 60), 0)
            .expect("minute of day");
        match tz.from_local_datetime(&local) {
            chrono::LocalResult::Single(t) => out.push(t.with_timezone(&Utc)),
            chrono::LocalResult::Ambiguous(a, b) => {
                out.push(a.with_timezone(&Utc));
                out.push(b.with_timezone(&Utc));
            }
            chrono::LocalResult::None => {
                // A local time skipped by a clock change: the boundary falls at the first
                // local minute that exists after it (the moment the clocks jumped).
                for k in 1..=24 * 60 {
                    if let Some(t) = tz.from_local_datetime(&(local + Duration::minutes(k))).earliest() {
                        out.push(t.with_timezone(&Utc));
                        break;
                    }
                }
            }
        }
    }
    out
}

/// [`day_boundaries`] remembered per (time zone, local day, boundary minutes), per thread:
/// converting local times through `chrono-tz` was a quarter of deciding a reading, and
/// consecutive readings share their days. The answer is a pure function of the key (the
/// minutes are stored and compared, not only hashed), so the cache changes no result.
struct BoundaryCache {
    minutes: Vec<u16>,
    /// Hashed by foldhash: SipHash showed in the pricing profile (a lookup per local day
    /// around every reading).
    days: foldhash::HashMap<(Tz, NaiveDate, u64), DayBoundaries>,
}

/// A day's boundary minutes and their UTC instants.
type DayBoundaries = (Box<[u16]>, Box<[DateTime<Utc>]>);

/// Days remembered before the cache starts over (a few MiB at most).
const BOUNDARY_CACHE_DAYS_MAX: usize = 16_384;

thread_local! {
    static BOUNDARIES: RefCell<BoundaryCache> = RefCell::new(BoundaryCache {
        minutes: Vec::new(),
        days: foldhash::HashMap::default(),
    });
}

/// Local boundaries of the site's day that fall inside the interval, as UTC instants.
fn band_boundaries(terms: &Tariff, tz: &Tz, interval: &Interval) -> Vec<DateTime<Utc>> {
    let first = interval.start.with_timezone(tz).date_naive() - Duration::days(1);
    let last = interval.end.with_timezone(tz).date_naive() + Duration::days(1);
    let mut out = Vec::new();
    BOUNDARIES.with(|cache| {
        let cache = &mut *cache.borrow_mut();
        boundary_minutes(terms, &mut cache.minutes);
        let minutes = cache.minutes.as_slice();
        let minutes_hash = foldhash::fast::FixedState::default().hash_one(minutes);
        if cache.days.len() >= BOUNDARY_CACHE_DAYS_MAX {
            cache.days.clear();
        }
        let mut day: NaiveDate = first;
        while day <= last {
            let entry = cache
                .days
                .entry((*tz, day, minutes_hash))
                .or_insert_with(|| (minutes.into(), day_boundaries(tz, minutes, day).into()));
            if *entry.0 != *minutes {
                *entry = (minutes.into(), day_boundaries(tz, minutes, day).into());
            }
            out.extend(entry.1.iter().filter(|t| **t > interval.start && **t < interval.end));
            day += Duration::days(1);
        }
    });
    out.sort_unstable();
    out.dedup();
    out
}

/// A run of one band within an interval: from, to, and the band (`None`: the default band).
pub type Segment = (DateTime<Utc>, DateTime<Utc>, Option<usize>);

/// The last interval split on this thread, with what its split depends on: the site's time
/// zone and the tariff's bands (the split names bands by their place; the default band is
/// `None`). Meters read on the same boundaries, so one reading's interval is most often the
/// one before it (another meter's): the split, with its time-zone conversions, was a tenth
/// of the deciding thread's time.
struct LastSplit {
    tz: Tz,
    interval: Interval,
    bands: Vec<Band>,
    segments: Vec<Segment>,
}

thread_local! {
    static LAST_SPLIT: RefCell<Option<LastSplit>> = const { RefCell::new(None) };
}

/// Splits an interval into runs of one band each, adjacent runs of the same band merged.
pub fn band_segments(terms: &Tariff, tz: &Tz, interval: &Interval) -> Vec<Segment> {
    with_band_segments(terms, tz, interval, <[Segment]>::to_vec)
}

/// [`band_segments`] handed to `f` from the last split's cache, without a copy (a copy was
/// an allocation per priced reading).
fn with_band_segments<R>(terms: &Tariff, tz: &Tz, interval: &Interval, f: impl FnOnce(&[Segment]) -> R) -> R {
    LAST_SPLIT.with(|last| {
        let mut last = last.borrow_mut();
        match last.as_ref() {
            Some(l) if l.tz == *tz && l.interval == *interval && l.bands == terms.bands => {}
            _ => {
                *last = Some(LastSplit {
                    tz: *tz,
                    interval: *interval,
                    bands: terms.bands.clone(),
                    segments: split(terms, tz, interval),
                })
            }
        }
        f(&last.as_ref().expect("the split was just cached").segments)
    })
}

/// [`band_segments`] without the cache.
fn split(terms: &Tariff, tz: &Tz, interval: &Interval) -> Vec<Segment> {
    let mut cuts = vec![interval.start];
    cuts.extend(band_boundaries(terms, tz, interval));
    cuts.push(interval.end);
    let mut segments: Vec<Segment> = Vec::new();
    for w in cuts.windows(2) {
        let local = w[0].with_timezone(tz);
        let minute = (local.hour() * 60 + local.minute()) as u16;
        let band = terms.band_at(local.weekday(), minute);
        match segments.last_mut() {
            Some(last) if last.2 == band => last.1 = w[1],
            _ => segments.push((w[0], w[1], band)),
        }
    }
    segments
}

/// Prices `energy_wh` of `flow` over `interval` under the tariff `terms`.
/// `source` is given for generated energy only. Rounded once, to 6 places, half to even.
pub fn price(
    terms: &Tariff,
    tz: &Tz,
    flow: Flow,
    source: Option<Source>,
    interval: &Interval,
    energy_wh: Decimal,
) -> Result<Price, String> {
    let rate = terms.rates_eu_per_wh.of(flow);
    let source_multiplier = match (flow, source) {
        (Flow::Generated, Some(s)) => terms.source_multiplier(s),
        _ => Decimal::ONE,
    };
    with_band_segments(terms, tz, interval, |segments| {
        priced(terms, rate, source_multiplier, interval, energy_wh, segments)
    })
}

/// [`price`] over the interval's band segments.
fn priced(
    terms: &Tariff,
    rate: Decimal,
    source_multiplier: Decimal,
    interval: &Interval,
    energy_wh: Decimal,
    segments: &[Segment],
) -> Result<Price, String> {
    let too_large = || "the reading is too large to price".to_string();
    let total_ms = Decimal::from(interval.duration_ms());
    let base = energy_wh
        .checked_mul(rate)
        .and_then(|x| x.checked_mul(source_multiplier))
        .ok_or_else(too_large)?;

    if let [(_, _, band)] = segments {
        let multiplier = terms.band_multiplier(*band);
        let eu_per_wh = rate * source_multiplier * multiplier;
        let amount_eu = round_eu(base.checked_mul(multiplier).ok_or_else(too_large)?);
        return Ok(Price {
            tariff_version: terms.tariff_version,
            band: terms.band_name(*band).to_string(),
            multiplier: multiplier.normalize(),
            rate_eu_per_wh: rate.normalize(),
            source_multiplier: source_multiplier.normalize(),
            eu_per_wh: eu_per_wh.normalize(),
            amount_eu: amount_eu.normalize(),
            parts: Vec::new(),
        });
    }

    let weighted_ms: Decimal = segments
        .iter()
        .map(|(a, b, band)| Decimal::from((*b - *a).num_milliseconds()) * terms.band_multiplier(*band))
        .sum();
    let exact = base
        .checked_mul(weighted_ms)
        .and_then(|x| x.checked_div(total_ms))
        .ok_or_else(too_large)?;
    let amount_eu = round_eu(exact);
    let multiplier = round_eu(weighted_ms / total_ms);

    // Parts are rounded cumulatively: part i is round(share up to i) − round(share up to
    // i − 1). The running shares only grow, so no part is negative, and the last cumulative
    // share is the whole, so the parts always sum exactly to the recorded total.
    let mut parts = Vec::with_capacity(segments.len());
    let (mut cum_ms, mut cum_weighted) = (Decimal::ZERO, Decimal::ZERO);
    let (mut wh_before, mut eu_before) = (Decimal::ZERO, Decimal::ZERO);
    for (i, (a, b, band)) in segments.iter().enumerate() {
        let ms = Decimal::from((*b - *a).num_milliseconds());
        let m = terms.band_multiplier(*band);
        cum_ms += ms;
        cum_weighted += ms * m;
        let (wh_upto, eu_upto) = if i + 1 == segments.len() {
            (energy_wh, amount_eu)
        } else {
            let wh = round_wh(energy_wh * cum_ms / total_ms);
            let eu = round_eu(base.checked_mul(cum_weighted).ok_or_else(too_large)? / total_ms);
            (wh, eu)
        };
        parts.push(PricePart {
            band: terms.band_name(*band).to_string(),
            multiplier: m.normalize(),
            start: *a,
            end: *b,
            energy_wh: (wh_upto - wh_before).normalize(),
            amount_eu: (eu_upto - eu_before).normalize(),
        });
        wh_before = wh_upto;
        eu_before = eu_upto;
    }
    Ok(Price {
        tariff_version: terms.tariff_version,
        band: MIXED_BAND.to_string(),
        multiplier: multiplier.normalize(),
        rate_eu_per_wh: rate.normalize(),
        source_multiplier: source_multiplier.normalize(),
        eu_per_wh: round_eu(rate * source_multiplier * weighted_ms / total_ms).normalize(),
        amount_eu: amount_eu.normalize(),
        parts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::time::parse_time;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn contract_terms() -> Tariff {
        serde_json::from_str(
            r#"{"site_id":"memphis-1","tariff_version":1,"effective_from":"2026-01-01T00:00:00Z",
             "rates_eu_per_wh":{"generated":"1","stored":"1","dispatched":"1","consumed":"1.1"},
             "bands":[{"name":"peak","days":["mon","tue","wed","thu","fri"],"start":"14:00","end":"20:00","multiplier":"1.5"},
                      {"name":"night","days":["mon","tue","wed","thu","fri","sat","sun"],"start":"00:00","end":"06:00","multiplier":"0.6"}],
             "default_band":{"name":"standard","multiplier":"1"},
             "source_multipliers":{"gas_turbine":"1.2","solar":"0.9","grid":"1"}}"#,
        )
        .unwrap()
    }

    fn iv(a: &str, b: &str) -> Interval {
        Interval::new(parse_time(a).unwrap(), parse_time(b).unwrap()).unwrap()
    }

    const CHICAGO: Tz = chrono_tz::America::Chicago;

    #[test]
    fn contract_example_prices_peak_consumption() {
        // 2026-11-02 is a Monday; 20:00Z is 14:00 CST: the first minute of peak.
        let p = price(
            &contract_terms(),
            &CHICAGO,
            Flow::Consumed,
            None,
            &iv("2026-11-02T20:00:00Z", "2026-11-02T20:15:00Z"),
            d("450000"),
        )
        .unwrap();
        assert_eq!(p.band, "peak");
        assert_eq!(p.eu_per_wh, d("1.65"));
        assert_eq!(p.amount_eu, d("742500"));
        assert!(p.parts.is_empty());
    }

    #[test]
    fn generated_energy_takes_the_source_multiplier() {
        // 03:00 CST on a Tuesday: night band 0.6; gas turbine 1.2; rate 1 → 0.72 EU/Wh.
        let p = price(
            &contract_terms(),
            &CHICAGO,
            Flow::Generated,
            Some(Source::GasTurbine),
            &iv("2026-11-03T09:00:00Z", "2026-11-03T09:15:00Z"),
            d("1000"),
        )
        .unwrap();
        assert_eq!((p.band.as_str(), p.amount_eu), ("night", d("720")));
        // Wind has no entry: multiplier 1.
        let p = price(
            &contract_terms(),
            &CHICAGO,
            Flow::Generated,
            Some(Source::Wind),
            &iv("2026-11-03T09:00:00Z", "2026-11-03T09:15:00Z"),
            d("1000"),
        )
        .unwrap();
        assert_eq!(p.amount_eu, d("600"));
    }

    #[test]
    fn an_interval_across_a_band_boundary_is_split_pro_rata() {
        // 13:30–14:30 CST Monday: half standard (1.0), half peak (1.5); consumed rate 1.1.
        // 1000 Wh → 500 × 1.1 × 1 + 500 × 1.1 × 1.5 = 550 + 825 = 1375.
        let p = price(
            &contract_terms(),
            &CHICAGO,
            Flow::Consumed,
            None,
            &iv("2026-11-02T19:30:00Z", "2026-11-02T20:30:00Z"),
            d("1000"),
        )
        .unwrap();
        assert_eq!(p.band, MIXED_BAND);
        assert_eq!(p.amount_eu, d("1375"));
        assert_eq!(p.multiplier, d("1.25"));
        assert_eq!(p.parts.len(), 2);
        assert_eq!(
            (p.parts[0].band.as_str(), p.parts[0].energy_wh, p.parts[0].amount_eu),
            ("standard", d("500"), d("550"))
        );
        assert_eq!(
            (p.parts[1].band.as_str(), p.parts[1].energy_wh, p.parts[1].amount_eu),
            ("peak", d("500"), d("825"))
        );
    }

    #[test]
    fn rounding_happens_once_half_to_even() {
        // 0.0000005 EU exactly: rounds to 0 (even), not 0.000001.
        let mut t = contract_terms();
        t.rates_eu_per_wh.stored = d("0.0000005");
        let p = price(
            &t,
            &CHICAGO,
            Flow::Stored,
            None,
            &iv("2026-11-07T18:00:00Z", "2026-11-07T18:15:00Z"),
            d("1"),
        )
        .unwrap();
        assert_eq!(p.amount_eu, d("0"));
        let p = price(
            &t,
            &CHICAGO,
            Flow::Stored,
            None,
            &iv("2026-11-07T18:00:00Z", "2026-11-07T18:15:00Z"),
            d("3"),
        )
        .unwrap();
        assert_eq!(p.amount_eu, d("0.000002"));
    }

    /// The last split is reused only for the same interval, zone and bands: alternating
    /// tariffs, zones and intervals give what the uncached split gives, every time.
    #[test]
    fn the_last_split_is_reused_only_for_the_same_interval_zone_and_bands() {
        let a = contract_terms();
        let mut b = contract_terms();
        b.bands[0].start = LocalMinute(15 * 60);
        let mut c = contract_terms();
        c.bands[1].days.retain(|d| *d != Weekday::Sun);
        let berlin: Tz = chrono_tz::Europe::Berlin;
        let intervals = [
            iv("2026-11-02T19:45:00Z", "2026-11-02T21:00:00Z"),
            iv("2026-11-08T05:30:00Z", "2026-11-08T06:30:00Z"),
            iv("2026-03-08T06:00:00Z", "2026-03-08T12:00:00Z"),
        ];
        for round in 0..3 {
            for interval in &intervals {
                for terms in [&a, &b, &c] {
                    for tz in [&CHICAGO, &berlin] {
                        let want = split(terms, tz, interval);
                        assert_eq!(band_segments(terms, tz, interval), want, "round {round}");
                        assert_eq!(band_segments(terms, tz, interval), want, "round {round}, cached");
                    }
                }
            }
        }
        // The bands' differences above do change the split, so a stale reuse would show.
        let i = &intervals[0];
        assert_ne!(split(&a, &CHICAGO, i), split(&b, &CHICAGO, i));
        let sunday = &intervals[1];
        assert_ne!(split(&a, &CHICAGO, sunday), split(&c, &CHICAGO, sunday));
        assert_ne!(split(&a, &CHICAGO, i), split(&a, &berlin, i));
    }

    /// 8 March 2026, America/Chicago: clocks jump from 02:00 CST to 03:00 CDT; the local day
    /// has 23 hours. Midnight CST = 06:00Z; 06:00 CDT = 11:00Z. The night band (00:00–06:00
    /// local) therefore lasts 5 real hours, and a 24-hour interval from local midnight to the
    /// next local midnight (06:00Z → 05:00Z next day) is 23 hours long.
    #[test]
    fn spring_forward_day_has_twenty_three_hours() {
        let day = iv("2026-03-08T06:00:00Z", "2026-03-09T05:00:00Z");
        let segs = band_segments(&contract_terms(), &CHICAGO, &day);
        // Sunday: no peak. Night 00:00–06:00 local = 06:00Z–11:00Z (5 h), then standard 18 h.
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[0].0, parse_time("2026-03-08T06:00:00Z").unwrap());
        assert_eq!(segs[0].1, parse_time("2026-03-08T11:00:00Z").unwrap());
        assert_eq!(segs[1].1, parse_time("2026-03-09T05:00:00Z").unwrap());
        // 2300 Wh over 23 h at consumed 1.1: 500 Wh night × 0.6 + 1800 Wh standard × 1.
        // = 1.1 × (300 + 1800) = 2310.
        let p = price(&contract_terms(), &CHICAGO, Flow::Consumed, None, &day, d("2300")).unwrap();
        assert_eq!(p.parts[0].energy_wh, d("500"));
        assert_eq!(p.parts[1].energy_wh, d("1800"));
        assert_eq!(p.amount_eu, d("2310"));
    }

    /// 1 November 2026, America/Chicago: clocks fall back from 02:00 CDT to 01:00 CST; the
    /// local day has 25 hours. Midnight CDT = 05:00Z; 06:00 CST = 12:00Z; the night band lasts
    /// 7 real hours.
    #[test]
    fn fall_back_day_has_twenty_five_hours() {
        // 25 hours is more than one reading may cover (the edge refuses it), but pricing
        // itself handles any span, so the whole local day can be checked at once.
        let day = Interval {
            start: parse_time("2026-11-01T05:00:00Z").unwrap(),
            end: parse_time("2026-11-02T06:00:00Z").unwrap(),
        };
        assert_eq!(day.duration_ms(), 25 * 3600 * 1000);
        let segs = band_segments(&contract_terms(), &CHICAGO, &day);
        assert_eq!(segs[0].0, parse_time("2026-11-01T05:00:00Z").unwrap());
        assert_eq!(segs[0].1, parse_time("2026-11-01T12:00:00Z").unwrap());
        assert_eq!(segs[0].2, Some(1));
        // Then standard until next local midnight (06:00Z on the 2nd), when Monday's night begins.
        assert_eq!(segs[1].1, parse_time("2026-11-02T06:00:00Z").unwrap());
        assert_eq!(segs.len(), 2);
        // A reading inside the repeated hour: 01:30 CDT (06:30Z) to 01:30 CST (07:30Z) is one
        // real hour, all night band.
        let p = price(
            &contract_terms(),
            &CHICAGO,
            Flow::Consumed,
            None,
            &iv("2026-11-01T06:30:00Z", "2026-11-01T07:30:00Z"),
            d("1000"),
        )
        .unwrap();
        assert_eq!((p.band.as_str(), p.amount_eu), ("night", d("660")));
        // 7 h of night + 18 h of standard over a 24 h reading window from 05:00Z to 05:00Z:
        // night 05:00Z–12:00Z (7 h), standard 12:00Z–05:00Z (17 h).
        let p = price(
            &contract_terms(),
            &CHICAGO,
            Flow::Consumed,
            None,
            &iv("2026-11-01T05:00:00Z", "2026-11-02T05:00:00Z"),
            d("2400"),
        )
        .unwrap();
        assert_eq!(p.parts[0].energy_wh, d("700"));
        assert_eq!(p.parts[1].energy_wh, d("1700"));
        // 1.1 × (700 × 0.6 + 1700 × 1) = 1.1 × 2120 = 2332.
        assert_eq!(p.amount_eu, d("2332"));
    }

    /// Tiny readings split over many bands: every part is non-negative and the parts sum
    /// exactly to the total (a remainder-takes-all split could go negative here).
    #[test]
    fn parts_are_never_negative_and_sum_exactly() {
        let mut t = contract_terms();
        t.bands = serde_json::from_str(
            r#"[{"name":"a","days":["mon","tue","wed","thu","fri","sat","sun"],"start":"00:00","end":"07:00","multiplier":"1"},
                {"name":"b","days":["mon","tue","wed","thu","fri","sat","sun"],"start":"07:00","end":"14:00","multiplier":"3"},
                {"name":"c","days":["mon","tue","wed","thu","fri","sat","sun"],"start":"14:00","end":"21:00","multiplier":"7"}]"#,
        )
        .unwrap();
        for wh in ["0.001", "0.002", "0.005", "1", "7.777"] {
            let day = iv("2026-11-03T06:00:00Z", "2026-11-04T06:00:00Z");
            let p = price(&t, &CHICAGO, Flow::Stored, None, &day, d(wh)).unwrap();
            assert_eq!(p.parts.len(), 4, "{wh}");
            for part in &p.parts {
                assert!(
                    part.energy_wh >= Decimal::ZERO && part.amount_eu >= Decimal::ZERO,
                    "{wh}: {part:?}"
                );
            }
            assert_eq!(p.parts.iter().map(|x| x.energy_wh).sum::<Decimal>(), d(wh));
            assert_eq!(p.parts.iter().map(|x| x.amount_eu).sum::<Decimal>(), p.amount_eu);
        }
    }

    /// The per-day cache gives the boundaries converting every day afresh gives: over a
    /// year with both clock changes, for two tariffs and two time zones taking turns (so
    /// that entries of one are looked up by the other).
    #[test]
    fn cached_band_boundaries_are_the_converted_ones() {
        fn fresh(terms: &Tariff, tz: &Tz, interval: &Interval) -> Vec<DateTime<Utc>> {
            let mut minutes = Vec::new();
            boundary_minutes(terms, &mut minutes);
            let first = interval.start.with_timezone(tz).date_naive() - Duration::days(1);
            let last = interval.end.with_timezone(tz).date_naive() + Duration::days(1);
            let mut out = Vec::new();
            let mut day = first;
            while day <= last {
                out.extend(day_boundaries(tz, &minutes, day));
                day += Duration::days(1);
            }
            out.retain(|t| *t > interval.start && *t < interval.end);
            out.sort_unstable();
            out.dedup();
            out
        }
        let a = contract_terms();
        let mut b = contract_terms();
        b.bands[0].start = LocalMinute::parse("02:30").unwrap();
        b.bands[0].end = LocalMinute::parse("06:00").unwrap();
        b.bands[1].end = LocalMinute::parse("01:30").unwrap();
        let zones = [CHICAGO, chrono_tz::Europe::London, chrono_tz::Australia::Lord_Howe];
        let mut t = parse_time("2026-01-01T00:00:00Z").unwrap();
        let mut i = 0usize;
        while t < parse_time("2027-01-01T00:00:00Z").unwrap() {
            for (terms, len) in [(&a, 90), (&b, 15 * 60), (&a, 24 * 3600 - 60)] {
                let tz = zones[i % zones.len()];
                i += 1;
                let iv = Interval {
                    start: t,
                    end: t + Duration::seconds(len),
                };
                assert_eq!(band_boundaries(terms, &tz, &iv), fresh(terms, &tz, &iv), "{iv:?} {tz}");
            }
            t += Duration::minutes(97);
        }
    }

    #[test]
    fn overlapping_bands_are_refused() {
        let mut t = contract_terms();
        t.bands[1].end = LocalMinute::parse("15:00").unwrap();
        let (field, msg) = t.check().unwrap_err();
        assert_eq!(field, "bands[1]");
        assert!(msg.contains("overlaps"), "{msg}");
        let mut t = contract_terms();
        t.bands[0].start = LocalMinute::parse("21:00").unwrap();
        assert_eq!(t.check().unwrap_err().0, "bands[0].end");
        assert!(contract_terms().check().is_ok());
    }

    #[test]
    fn local_minutes_parse() {
        assert_eq!(LocalMinute::parse("24:00").unwrap().0, 1440);
        assert!(LocalMinute::parse("24:01").is_err());
        assert!(LocalMinute::parse("7:00").is_err());
        assert!(LocalMinute::parse("07:60").is_err());
    }
}
