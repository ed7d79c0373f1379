//! Which watts powered each tenant: hourly supply-mix attribution, carbon and battery
//! provenance.
//!
//! A pure computation over what [`Books`] folds from the log: for every site and UTC clock
//! hour, [`HourFlows`] holds the energy generated per source, consumed per tenant, and stored
//! into and dispatched from each battery, with the positions of the readings behind it.
//! [`site_attribution`] walks a site's hours in order:
//!
//! 1. each battery's dispatch releases energy first-in first-out from what charged it, lots
//!    already reduced by the battery's round-trip losses, so it carries the sources (and the
//!    hours) that charged it; what no lot explains (the initial charge, or more out than in)
//!    is `unknown`;
//! 2. the hour's supply is generation by source plus those releases; its demand is the
//!    tenants' consumption plus the batteries' intake;
//! 3. every consumer (tenant or battery intake) gets the supply mix pro rata. When demand
//!    exceeds the metered supply, the part of demand that no metered supply explains is
//!    attributed to `unknown` (never to a real source), and when the two differ beyond the
//!    site's loss tolerance the hour is flagged;
//! 4. a battery's intake, after its losses, joins its queue as one lot with that mix.
//!
//! Emission factors (gCO2e per kWh per source kind, versioned per site like tariffs) price
//! the carbon; `unknown` and `unspecified` energy count as not carbon-free and at the
//! version's highest factor (conservative). Figures are kept at full decimal precision; each
//! consumer's attributed Wh add up to its metered Wh exactly.

use super::{BatteryBooks, Books};
use crate::domain::events::EmissionFactorsPublished;
use crate::domain::quantity::fmt_decimal;
use crate::domain::tariff::Flow;
use crate::domain::time::{Period, fmt_time};
use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};

/// The attribution's clock hour, in seconds.
pub const HOUR_S: i64 = 3600;
/// Stated on every output: how energy is attributed.
pub const METHOD: &str = "hourly (UTC clock hours), pro rata to the metered supply mix of the site; batteries release energy first-in first-out, after round-trip losses, with the mix of the hours that charged them";
/// What energy no metered supply explains is attributed to.
pub const SOURCE_UNKNOWN: &str = "unknown";
/// Most hours one mix read returns.
pub const MIX_HOURS_MAX: usize = 24 * 93;
/// The default span of a mix read without `from`, in days.
pub const MIX_DEFAULT_DAYS: i64 = 7;
/// Most readings one "readings of an hour" read returns.
pub const HOUR_READINGS_MAX: usize = 10_000;

/// What flowed across one site's bus in one UTC hour (readings spread pro rata by time).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourFlows {
    /// Source kind (or `unspecified`) → Wh.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub generated: BTreeMap<String, Decimal>,
    /// Tenant (or `unassigned`) → Wh.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub consumed: BTreeMap<String, Decimal>,
    /// Battery asset → Wh taken in.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stored: BTreeMap<String, Decimal>,
    /// Battery asset → Wh given out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dispatched: BTreeMap<String, Decimal>,
    /// The first and last positions of the readings (and corrections) behind this hour.
    pub first_position: u64,
    pub last_position: u64,
}

impl HourFlows {
    pub(super) fn add(&mut self, flow: Flow, key: &str, wh: Decimal, position: u64) {
        let m = match flow {
            Flow::Generated => &mut self.generated,
            Flow::Consumed => &mut self.consumed,
            Flow::Stored => &mut self.stored,
            Flow::Dispatched => &mut self.dispatched,
        };
        // No allocation for a key already present (the usual case, once per reading).
        match m.get_mut(key) {
            Some(v) => *v += wh,
            None => {
                m.insert(key.to_string(), wh);
            }
        }
        if self.first_position == 0 || position < self.first_position {
            self.first_position = position;
        }
        self.last_position = self.last_position.max(position);
    }
}

/// Energy a battery released in one hour, traced to the hour that charged it (`None`: its
/// initial charge, or more than any lot explains).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Release {
    pub battery: String,
    pub charged_hour: Option<i64>,
    pub wh: Decimal,
    pub by_source: BTreeMap<String, Decimal>,
}

/// One site-hour, attributed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HourAttribution {
    pub hour: i64,
    pub flows: HourFlows,
    /// Generation by source plus battery releases by the sources that charged them.
    pub supply_by_source: BTreeMap<String, Decimal>,
    pub supply_wh: Decimal,
    pub demand_wh: Decimal,
    /// The mix every consumer gets pro rata: the supply by source, plus `unknown` for the
    /// demand no metered supply explains. A tenant's share is [`HourAttribution::tenant`].
    pub weights: BTreeMap<String, Decimal>,
    /// Battery → source → Wh of its intake (before losses).
    pub intake: BTreeMap<String, BTreeMap<String, Decimal>>,
    pub releases: Vec<Release>,
    pub flags: Vec<String>,
    pub factors_version: Option<u32>,
}

impl HourAttribution {
    /// A tenant's consumption in this hour, at the attribution's precision
    /// ([`PART_DECIMALS`]): every figure built from it then adds up exactly, across sources,
    /// hours and periods alike.
    pub fn consumed(&self, tenant: &str) -> Decimal {
        self.flows
            .consumed
            .get(tenant)
            .map_or(Decimal::ZERO, |wh| wh.round_dp(PART_DECIMALS))
    }

    /// What a tenant's consumption in this hour is attributed to (source → Wh; the Wh add up
    /// to [`HourAttribution::consumed`] exactly), or `None` if it consumed nothing here.
    pub fn tenant(&self, tenant: &str) -> Option<BTreeMap<String, Decimal>> {
        let wh = self.consumed(tenant);
        (wh > Decimal::ZERO).then(|| pro_rata(wh, &self.weights))
    }
}

/// Every hour of a site, attributed, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SiteAttribution {
    pub site_id: String,
    pub hours: Vec<HourAttribution>,
    /// Battery → Wh still held with its provenance after the last hour.
    pub held: BTreeMap<String, BTreeMap<String, Decimal>>,
}

struct Lot {
    charged_hour: Option<i64>,
    wh: Decimal,
    by_source: BTreeMap<String, Decimal>,
}

/// The decimals of every part [`pro_rata`] computes (but the one that takes the rounding).
pub const PART_DECIMALS: u32 = 9;

/// Splits `amount` over `weights` (which add up to a positive total) pro rata. The parts
/// add up to `amount` exactly, in any order: every part is rounded to [`PART_DECIMALS`], and
/// the largest weight takes the rest (all of a tiny amount, so that it never goes negative).
pub fn pro_rata(amount: Decimal, weights: &BTreeMap<String, Decimal>) -> BTreeMap<String, Decimal> {
    let total: Decimal = weights.values().sum();
    let mut out = BTreeMap::new();
    if total <= Decimal::ZERO || amount.is_zero() {
        return out;
    }
    let largest = weights
        .iter()
        .filter(|(_, w)| **w > Decimal::ZERO)
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(k, _)| k.clone());
    let mut given = Decimal::ZERO;
    let tiny = amount < Decimal::new(1, 6);
    for (k, w) in weights {
        if tiny || *w <= Decimal::ZERO || Some(k) == largest.as_ref() {
            continue;
        }
        let part = (amount * *w / total).round_dp(PART_DECIMALS);
        given += part;
        out.insert(k.clone(), part);
    }
    if let Some(k) = largest {
        out.insert(k, amount - given);
    }
    out
}

fn add_into(into: &mut BTreeMap<String, Decimal>, from: &BTreeMap<String, Decimal>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += *v;
    }
}

/// Takes `want` Wh from the front of a battery's queue.
fn release(battery: &str, queue: &mut VecDeque<Lot>, mut want: Decimal, out: &mut Vec<Release>) -> Decimal {
    while want > Decimal::ZERO {
        let Some(front) = queue.front_mut() else { break };
        if front.wh <= want {
            want -= front.wh;
            let lot = queue.pop_front().expect("front exists");
            out.push(Release {
                battery: battery.to_string(),
                charged_hour: lot.charged_hour,
                wh: lot.wh,
                by_source: lot.by_source,
            });
        } else {
            let taken = pro_rata(want, &front.by_source);
            for (k, v) in &taken {
                let left = front.by_source.get_mut(k).expect("taken from this lot");
                // Never below zero, whatever the last digit of a division did.
                *left = (*left - *v).max(Decimal::ZERO);
            }
            front.by_source.retain(|_, v| !v.is_zero());
            front.wh -= want;
            out.push(Release {
                battery: battery.to_string(),
                charged_hour: front.charged_hour,
                wh: want,
                by_source: taken,
            });
            want = Decimal::ZERO;
        }
    }
    want
}

/// The factors version in force at `t`.
pub fn factors_at(versions: &[EmissionFactorsPublished], t: DateTime<Utc>) -> Option<&EmissionFactorsPublished> {
    versions.iter().rev().find(|v| v.effective_from <= t)
}

/// gCO2e per kWh of a source key under a factors version: `unknown` and `unspecified`
/// energy at the version's highest factor.
fn factor_of(f: &EmissionFactorsPublished, key: &str) -> Decimal {
    f.gco2e_per_kwh
        .iter()
        .find(|(s, _)| s.as_str() == key)
        .map(|(_, g)| *g)
        .unwrap_or_else(|| f.gco2e_per_kwh.values().copied().max().unwrap_or_default())
}

fn is_carbon_free(f: &EmissionFactorsPublished, key: &str) -> bool {
    f.carbon_free.iter().any(|s| s.as_str() == key)
}

/// Grams of CO2e of energy by source under a factors version.
pub fn carbon_g(f: &EmissionFactorsPublished, by_source: &BTreeMap<String, Decimal>) -> Decimal {
    by_source
        .iter()
        .map(|(k, wh)| *wh * factor_of(f, k) / Decimal::ONE_THOUSAND)
        .sum()
}

pub fn carbon_free_wh(f: &EmissionFactorsPublished, by_source: &BTreeMap<String, Decimal>) -> Decimal {
    by_source
        .iter()
        .filter(|(k, _)| is_carbon_free(f, k))
        .map(|(_, wh)| *wh)
        .sum()
}

fn hour_time(h: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(h, 0).single().unwrap_or_default()
}

/// Attributes every hour of a site, from its first. `None` for an unknown site.
pub fn site_attribution(books: &Books, site: &str) -> Option<SiteAttribution> {
    let site_books = books.sites.get(site)?;
    let empty_hours = BTreeMap::new();
    let hours = books.hours.get(site).unwrap_or(&empty_hours);
    let factors: &[EmissionFactorsPublished] = books.emission_factors.get(site).map_or(&[], |v| v.as_slice());
    let batteries: BTreeMap<&str, &BatteryBooks> = books
        .batteries
        .iter()
        .filter(|(_, b)| b.site_id == site)
        .map(|(a, b)| (a.as_str(), b))
        .collect();
    let mut queues: BTreeMap<String, VecDeque<Lot>> = BTreeMap::new();
    for (a, b) in &batteries {
        let mut q = VecDeque::new();
        if b.initial_wh > Decimal::ZERO {
            q.push_back(Lot {
                charged_hour: None,
                wh: b.initial_wh,
                by_source: BTreeMap::from([(SOURCE_UNKNOWN.to_string(), b.initial_wh)]),
            });
        }
        queues.insert(a.to_string(), q);
    }
    let tolerance = site_books.loss_tolerance_pct;
    let mut out = Vec::with_capacity(hours.len());
    for (h, flows) in hours {
        let mut a = HourAttribution {
            hour: *h,
            flows: flows.clone(),
            ..HourAttribution::default()
        };
        // 1. Battery releases, first-in first-out.
        for (battery, wh) in &flows.dispatched {
            if *wh <= Decimal::ZERO {
                continue;
            }
            let queue = queues.entry(battery.clone()).or_default();
            let before = a.releases.len();
            let unexplained = release(battery, queue, *wh, &mut a.releases);
            if unexplained > Decimal::ZERO {
                a.releases.push(Release {
                    battery: battery.clone(),
                    charged_hour: None,
                    wh: unexplained,
                    by_source: BTreeMap::from([(SOURCE_UNKNOWN.to_string(), unexplained)]),
                });
                a.flags.push(format!(
                    "battery {battery} dispatched {} Wh more than the energy it was charged with",
                    fmt_decimal(&unexplained.round_dp(6))
                ));
            }
            for r in &a.releases[before..] {
                add_into(&mut a.supply_by_source, &r.by_source);
            }
        }
        // 2. Supply and demand.
        add_into(&mut a.supply_by_source, &flows.generated);
        a.supply_by_source.retain(|_, v| !v.is_zero());
        a.supply_wh = a.supply_by_source.values().sum();
        a.demand_wh = flows.consumed.values().sum::<Decimal>() + flows.stored.values().sum::<Decimal>();
        let mut weights = a.supply_by_source.clone();
        if a.demand_wh > a.supply_wh {
            *weights.entry(SOURCE_UNKNOWN.to_string()).or_default() += a.demand_wh - a.supply_wh;
        }
        let gap = (a.supply_wh - a.demand_wh).abs();
        let larger = a.supply_wh.max(a.demand_wh);
        if a.supply_wh.is_zero() && a.demand_wh > Decimal::ZERO {
            a.flags
                .push("no metered supply: the demand is attributed to unknown".into());
        } else if larger > Decimal::ZERO && gap * Decimal::ONE_HUNDRED > tolerance * larger {
            a.flags.push(format!(
                "supply {} Wh and demand {} Wh differ by more than the site's loss tolerance of {} %: attributed on the metered supply",
                fmt_decimal(&a.supply_wh.round_dp(3)),
                fmt_decimal(&a.demand_wh.round_dp(3)),
                fmt_decimal(&tolerance)
            ));
        }
        // 3. Each consumer gets the mix pro rata ([`HourAttribution::tenant`]); 4. battery
        // intake joins the queue after losses.
        for (battery, wh) in &flows.stored {
            if *wh <= Decimal::ZERO {
                continue;
            }
            let mix = pro_rata(*wh, &weights);
            let efficiency = batteries
                .get(battery.as_str())
                .map_or(Decimal::ONE_HUNDRED, |b| b.round_trip_efficiency_pct);
            let kept: BTreeMap<String, Decimal> = mix
                .iter()
                .map(|(k, v)| (k.clone(), *v * efficiency / Decimal::ONE_HUNDRED))
                .filter(|(_, v)| !v.is_zero())
                .collect();
            let kept_wh: Decimal = kept.values().sum();
            if kept_wh > Decimal::ZERO {
                queues.entry(battery.clone()).or_default().push_back(Lot {
                    charged_hour: Some(*h),
                    wh: kept_wh,
                    by_source: kept,
                });
            }
            a.intake.insert(battery.clone(), mix);
        }
        a.weights = weights;
        a.factors_version = factors_at(factors, hour_time(*h)).map(|f| f.factors_version);
        if a.factors_version.is_none() {
            a.flags.push("no emission factors published for this hour".into());
        }
        out.push(a);
    }
    let held = queues
        .into_iter()
        .map(|(b, q)| {
            let mut m = BTreeMap::new();
            for lot in q {
                add_into(&mut m, &lot.by_source);
            }
            (b, m)
        })
        .collect();
    Some(SiteAttribution {
        site_id: site.to_string(),
        hours: out,
        held,
    })
}

fn dec_map(m: &BTreeMap<String, Decimal>) -> Value {
    Value::Object(
        m.iter()
            .filter(|(_, v)| !v.is_zero())
            .map(|(k, v)| (k.clone(), json!(fmt_wh(v))))
            .collect(),
    )
}

/// Wh as shown: six decimals at most (the computation keeps full precision).
pub fn fmt_wh(d: &Decimal) -> String {
    fmt_decimal(&d.round_dp(6).normalize())
}

fn share(part: Decimal, whole: Decimal) -> Value {
    if whole.is_zero() {
        Value::Null
    } else {
        json!(fmt_decimal(&(part / whole).round_dp(6).normalize()))
    }
}

impl SiteAttribution {
    /// The site's mix per hour over `[from, to)`: supply by source, demand, shares, carbon
    /// intensity, battery releases traced to the hours that charged them, and the flags.
    pub fn mix_json(&self, books: &Books, from: DateTime<Utc>, to: DateTime<Utc>) -> Value {
        let factors: &[EmissionFactorsPublished] =
            books.emission_factors.get(&self.site_id).map_or(&[], |v| v.as_slice());
        let (f, t) = (from.timestamp(), to.timestamp());
        let hours: Vec<Value> = self
            .hours
            .iter()
            .filter(|a| a.hour >= f && a.hour < t)
            .take(MIX_HOURS_MAX)
            .map(|a| {
                let fv = factors_at(factors, hour_time(a.hour));
                let mix: serde_json::Map<String, Value> = a
                    .supply_by_source
                    .iter()
                    .map(|(k, v)| (k.clone(), share(*v, a.supply_wh)))
                    .collect();
                let releases: Vec<Value> = a
                    .releases
                    .iter()
                    .map(|r| {
                        json!({
                            "battery": r.battery,
                            "charged_hour": r.charged_hour.map(|h| fmt_time(&hour_time(h))),
                            "wh": fmt_wh(&r.wh),
                            "by_source_wh": dec_map(&r.by_source),
                        })
                    })
                    .collect();
                json!({
                    "hour": fmt_time(&hour_time(a.hour)),
                    "supply_wh": fmt_wh(&a.supply_wh),
                    "demand_wh": fmt_wh(&a.demand_wh),
                    "supply_by_source_wh": dec_map(&a.supply_by_source),
                    "mix": mix,
                    "generated_by_source_wh": dec_map(&a.flows.generated),
                    "consumed_by_tenant_wh": dec_map(&a.flows.consumed),
                    "stored_by_battery_wh": dec_map(&a.flows.stored),
                    "dispatched_by_battery_wh": dec_map(&a.flows.dispatched),
                    "battery_releases": releases,
                    "factors_version": a.factors_version,
                    "carbon_intensity_g_per_kwh": fv.and_then(|fv| {
                        (!a.supply_wh.is_zero()).then(|| {
                            fmt_decimal(&(carbon_g(fv, &a.supply_by_source) * Decimal::ONE_THOUSAND / a.supply_wh).round_dp(3).normalize())
                        })
                    }),
                    "carbon_free_share": fv.map_or(Value::Null, |fv| share(carbon_free_wh(fv, &a.supply_by_source), a.supply_wh)),
                    "flags": a.flags,
                    "first_position": a.flows.first_position,
                    "last_position": a.flows.last_position,
                })
            })
            .collect();
        json!({
            "site_id": self.site_id,
            "from": fmt_time(&from),
            "to": fmt_time(&to),
            "method": METHOD,
            "hours": hours,
            "position": books.position,
        })
    }
}

/// A tenant's attribution over one period (a UTC month), summed over its sites.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantAttribution {
    pub tenant_id: String,
    pub period: String,
    pub consumption_wh: Decimal,
    pub by_source_wh: BTreeMap<String, Decimal>,
    /// Carbon of the hours with emission factors, in grams.
    pub carbon_g: Decimal,
    pub carbon_free_wh: Decimal,
    /// Σ over hours of min(consumption, carbon-free energy attributed).
    pub hourly_cfe_wh: Decimal,
    /// Consumption in hours without emission factors (counted as not carbon-free).
    pub wh_without_factors: Decimal,
    pub first_position: u64,
    pub last_position: u64,
    pub flagged_hours: u64,
    /// (site, hour, consumption, by source, carbon-free Wh, carbon g, flags).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hours: Vec<TenantHour>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantHour {
    pub site_id: String,
    pub hour: i64,
    pub consumption_wh: Decimal,
    pub by_source_wh: BTreeMap<String, Decimal>,
    pub carbon_free_wh: Decimal,
    pub carbon_g: Option<Decimal>,
    pub flags: Vec<String>,
}

impl TenantAttribution {
    pub fn carbon_free_share(&self) -> Option<Decimal> {
        (!self.consumption_wh.is_zero()).then(|| self.carbon_free_wh / self.consumption_wh)
    }

    pub fn hourly_cfe_score(&self) -> Option<Decimal> {
        (!self.consumption_wh.is_zero()).then(|| self.hourly_cfe_wh / self.consumption_wh)
    }

    pub fn carbon_kg(&self) -> Decimal {
        self.carbon_g / Decimal::ONE_THOUSAND
    }

    /// The summary the statement carries (without the hours).
    pub fn summary_json(&self) -> Value {
        json!({
            "method": METHOD,
            "consumption_wh": fmt_wh(&self.consumption_wh),
            "by_source_wh": dec_map(&self.by_source_wh),
            "carbon_kg": fmt_decimal(&self.carbon_kg().round_dp(6).normalize()),
            "carbon_free_wh": fmt_wh(&self.carbon_free_wh),
            "carbon_free_share": share(self.carbon_free_wh, self.consumption_wh),
            "hourly_cfe_score": share(self.hourly_cfe_wh, self.consumption_wh),
            "wh_without_factors": fmt_wh(&self.wh_without_factors),
            "flagged_hours": self.flagged_hours,
            "first_position": self.first_position,
            "last_position": self.last_position,
        })
    }

    /// The full attribution: the summary and every hour.
    pub fn to_json(&self, position: u64) -> Value {
        let mut v = self.summary_json();
        let m = v.as_object_mut().expect("object");
        m.insert("tenant_id".into(), json!(self.tenant_id));
        m.insert("period".into(), json!(self.period));
        m.insert("position".into(), json!(position));
        let hours: Vec<Value> = self
            .hours
            .iter()
            .map(|h| {
                json!({
                    "site_id": h.site_id,
                    "hour": fmt_time(&hour_time(h.hour)),
                    "consumption_wh": fmt_wh(&h.consumption_wh),
                    "by_source_wh": dec_map(&h.by_source_wh),
                    "carbon_free_wh": fmt_wh(&h.carbon_free_wh),
                    "carbon_kg": h.carbon_g.map(|g| fmt_decimal(&(g / Decimal::ONE_THOUSAND).round_dp(6).normalize())),
                    "flags": h.flags,
                })
            })
            .collect();
        m.insert("hours".into(), Value::Array(hours));
        v
    }
}

/// A tenant's attribution for a period over every site it consumed at, given each site's
/// attribution (so one computation serves several tenants).
pub fn tenant_attribution(books: &Books, sites: &[SiteAttribution], tenant: &str, period: Period) -> TenantAttribution {
    let (from, to) = (period.start().timestamp(), period.end().timestamp());
    let mut t = TenantAttribution {
        tenant_id: tenant.to_string(),
        period: period.to_string(),
        ..TenantAttribution::default()
    };
    for site in sites {
        let factors: &[EmissionFactorsPublished] =
            books.emission_factors.get(&site.site_id).map_or(&[], |v| v.as_slice());
        for a in site.hours.iter().filter(|a| a.hour >= from && a.hour < to) {
            let Some(by_source) = a.tenant(tenant) else { continue };
            let consumption = a.consumed(tenant);
            let fv = factors_at(factors, hour_time(a.hour));
            let (cfe, carbon) = match fv {
                Some(fv) => (carbon_free_wh(fv, &by_source), Some(carbon_g(fv, &by_source))),
                None => {
                    t.wh_without_factors += consumption;
                    (Decimal::ZERO, None)
                }
            };
            t.consumption_wh += consumption;
            add_into(&mut t.by_source_wh, &by_source);
            t.carbon_g += carbon.unwrap_or_default();
            t.carbon_free_wh += cfe;
            t.hourly_cfe_wh += cfe.min(consumption);
            if t.first_position == 0 || a.flows.first_position < t.first_position {
                t.first_position = a.flows.first_position;
            }
            t.last_position = t.last_position.max(a.flows.last_position);
            if !a.flags.is_empty() {
                t.flagged_hours += 1;
            }
            t.hours.push(TenantHour {
                site_id: site.site_id.clone(),
                hour: a.hour,
                consumption_wh: consumption,
                by_source_wh: by_source,
                carbon_free_wh: cfe,
                carbon_g: carbon,
                flags: a.flags.clone(),
            });
        }
    }
    t.hours
        .sort_by(|a, b| a.hour.cmp(&b.hour).then_with(|| a.site_id.cmp(&b.site_id)));
    t
}

/// Every tenant's attribution summary (without the hours) for a period: what a closed
/// period's statements keep.
pub fn period_summaries(books: &Books, period: Period) -> BTreeMap<String, TenantAttribution> {
    let sites = all_sites(books);
    books
        .tenants
        .keys()
        .map(|t| {
            let mut a = tenant_attribution(books, &sites, t, period);
            a.hours.clear();
            (t.clone(), a)
        })
        .collect()
}

/// Every site's attribution, for the sites that have hours.
pub fn all_sites(books: &Books) -> Vec<SiteAttribution> {
    books.sites.keys().filter_map(|s| site_attribution(books, s)).collect()
}

/// Checks the attribution's invariants for every site-hour: each tenant's attributed Wh add
/// up to its consumption, no source is attributed more than it supplied (beyond `epsilon`
/// Wh of rounding per consumer), and no battery holds negative provenance. Returns the first
/// breach.
pub fn check_invariants(site: &SiteAttribution, epsilon: Decimal) -> Result<(), String> {
    let when = |h: i64| format!("site {} hour {}", site.site_id, fmt_time(&hour_time(h)));
    for a in &site.hours {
        let mut attributed: BTreeMap<String, Decimal> = BTreeMap::new();
        for tenant in a.flows.consumed.keys() {
            let Some(by_source) = a.tenant(tenant) else { continue };
            let sum: Decimal = by_source.values().sum();
            let consumed = a.consumed(tenant);
            if sum != consumed {
                return Err(format!(
                    "{}: tenant {tenant} is attributed {sum} Wh of {consumed} Wh consumed",
                    when(a.hour)
                ));
            }
            add_into(&mut attributed, &by_source);
        }
        for m in a.intake.values() {
            add_into(&mut attributed, m);
        }
        // Each consumer's rounding (its consumption and its part, to PART_DECIMALS) may add
        // up to `epsilon` to a source's total.
        let tolerance = epsilon * Decimal::from(a.flows.consumed.len() + a.flows.stored.len() + 1);
        for (source, wh) in &attributed {
            if source == SOURCE_UNKNOWN {
                continue;
            }
            let supplied = a.supply_by_source.get(source).copied().unwrap_or_default();
            if *wh > supplied + tolerance {
                return Err(format!(
                    "{}: {source} is attributed {wh} Wh but supplied {supplied} Wh",
                    when(a.hour)
                ));
            }
        }
        for r in &a.releases {
            if r.wh < Decimal::ZERO || r.by_source.values().any(|v| *v < Decimal::ZERO) {
                return Err(format!(
                    "{}: battery {} released negative energy",
                    when(a.hour),
                    r.battery
                ));
            }
        }
    }
    for (battery, held) in &site.held {
        if held.values().any(|v| *v < Decimal::ZERO) {
            return Err(format!(
                "site {}: battery {battery} holds negative provenance",
                site.site_id
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projections::SiteBooks;

    /// A thousand tenants each consuming 2/3 Wh in a balanced hour: every one's consumption
    /// rounds up at the ninth decimal, and the sum of those roundings must not read as a source
    /// attributed more than it supplied.
    #[test]
    fn rounding_over_many_consumers_is_not_over_attribution() {
        let mut books = Books::default();
        books.sites.insert(
            "s".into(),
            SiteBooks {
                loss_tolerance_pct: Decimal::from(5),
                ..SiteBooks::default()
            },
        );
        let each = Decimal::from(2) / Decimal::from(3);
        let mut hour = HourFlows::default();
        for t in 0..1000 {
            hour.add(Flow::Consumed, &format!("t{t}"), each, 1);
        }
        hour.add(Flow::Generated, "gas_turbine", each * Decimal::from(1000), 1);
        books.hours.insert("s".into(), BTreeMap::from([(0, hour)]));
        let site = site_attribution(&books, "s").unwrap();
        let attributed: Decimal = (0..1000)
            .map(|t| site.hours[0].tenant(&format!("t{t}")).unwrap()["gas_turbine"])
            .sum();
        assert!(
            attributed > site.hours[0].supply_wh,
            "the roundings do add up above the supply"
        );
        check_invariants(&site, Decimal::new(1, 9)).unwrap();
    }
}
