//! Projections: pure folds over recorded events, checkpointed by global position.
//!
//! [`Books`] holds every read model — account balances, tenant statements, the energy
//! balance of each site, battery state, settlement per period — and folds one event at a
//! time with no I/O. [`engine`] keeps a live copy caught up with the log and snapshotted.

pub mod attribution;
pub mod engine;
pub mod render;

pub use attribution::HourFlows;

use crate::domain::events::{EmissionFactorsPublished, Event, MeterKind};
use crate::domain::ids::TenantId;
use crate::domain::postings::{Posting, Side, credit_normal, postings};
use crate::domain::quantity::{fmt_decimal, round_wh};
use crate::domain::tariff::{Flow, Price, Source};
use crate::domain::time::{Period, ShortText, fmt_time};
use crate::store::RecordedEvent;
use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The energy balance is kept on a fixed grid of this many seconds; readings are spread
/// over it pro rata by time, so meters with different interval lengths still compare.
pub const ENERGY_BALANCE_INTERVAL_S: i64 = 900;
/// Most intervals one energy-balance read returns.
pub const ENERGY_BALANCE_INTERVALS_MAX: usize = 10_000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountTotals {
    pub debits_eu: Decimal,
    pub credits_eu: Decimal,
    pub debits_wh: Decimal,
    pub credits_wh: Decimal,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub band: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_wh: Option<Decimal>,
    pub amount_eu: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counterparty: Option<String>,
    /// For an adjustment: the closed period the energy belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_period: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
}

/// One tenant's movements booked into one period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementAcc {
    pub charges_eu: Decimal,
    pub credits_eu: Decimal,
    pub transfers_in_eu: Decimal,
    pub transfers_out_eu: Decimal,
    pub adjustments_eu: Decimal,
    /// Energy charged in this period (its own readings and their corrections).
    pub consumption_wh: Decimal,
    /// Energy of prior-period adjustments booked into this period.
    #[serde(default)]
    pub adjustments_wh: Decimal,
    /// Consumption aggregated per UTC day, site and band: `"date|site|band"`.
    pub consumption: BTreeMap<String, Line>,
    /// Every other line, in log order.
    pub entries: Vec<Line>,
    pub first_position: u64,
    pub last_position: u64,
    pub chain_hash: String,
    /// The part of `charges_eu` that captured holds.
    #[serde(default)]
    pub captured_eu: Decimal,
    /// Holds with activity booked into this period, by hold id.
    #[serde(default)]
    pub holds: BTreeMap<String, HoldLine>,
    /// Consumption by job (readings that named one), by job id.
    #[serde(default)]
    pub jobs: BTreeMap<String, JobLine>,
}

/// One hold's activity in one period, and where it stood after it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldLine {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    pub amount_eu: Decimal,
    pub expires_at: String,
    /// EU reserved by placing it in this period (0 for a hold placed earlier).
    pub placed_eu: Decimal,
    pub captured_eu: Decimal,
    pub drawn_eu: Decimal,
    pub released_eu: Decimal,
    pub remaining_eu: Decimal,
    pub status: String,
}

/// A job's consumption booked into one period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLine {
    pub energy_wh: Decimal,
    pub amount_eu: Decimal,
    /// The part of `amount_eu` its holds paid.
    pub drawn_eu: Decimal,
    pub readings: u64,
}

/// A hold as it stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldBooks {
    pub tenant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    pub amount_eu: Decimal,
    pub expires_at: String,
    pub memo: String,
    pub captured_eu: Decimal,
    pub drawn_eu: Decimal,
    pub released_eu: Decimal,
    /// `active`, `released` or `expired`.
    pub status: String,
    pub placed_at: String,
    pub position: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_position: Option<u64>,
}

impl HoldBooks {
    pub fn remaining_eu(&self) -> Decimal {
        if self.status == "active" {
            self.amount_eu - self.captured_eu - self.drawn_eu
        } else {
            Decimal::ZERO
        }
    }

    fn to_json(&self, hold_id: &str) -> Value {
        json!({
            "hold_id": hold_id,
            "tenant_id": self.tenant_id,
            "job_id": self.job_id,
            "amount_eu": fmt_decimal(&self.amount_eu),
            "captured_eu": fmt_decimal(&self.captured_eu),
            "drawn_eu": fmt_decimal(&self.drawn_eu),
            "released_eu": fmt_decimal(&self.released_eu),
            "remaining_eu": fmt_decimal(&self.remaining_eu()),
            "status": self.status,
            "expires_at": self.expires_at,
            "memo": self.memo,
            "placed_at": self.placed_at,
            "position": self.position,
            "closed_position": self.closed_position,
        })
    }
}

/// A tenant's spending limits and the periods it exceeded them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitBooks {
    /// Effective period → limit (`None`: no limit from then on).
    pub settings: BTreeMap<String, Option<Decimal>>,
    /// Period → position of its `SpendingLimitExceeded`.
    pub exceeded: BTreeMap<String, u64>,
}

impl LimitBooks {
    fn limit_at(&self, period: &str) -> Option<Decimal> {
        self.settings
            .range(..=period.to_string())
            .next_back()
            .and_then(|(_, l)| *l)
    }
}

impl StatementAcc {
    /// The net change of the tenant's holding in this period.
    pub fn net_eu(&self) -> Decimal {
        -self.charges_eu + self.credits_eu + self.transfers_in_eu - self.transfers_out_eu + self.adjustments_eu
    }

    fn touch(&mut self, rec: &RecordedEvent) {
        if self.first_position == 0 {
            self.first_position = rec.position;
        }
        self.last_position = rec.position;
        self.chain_hash.clone_from(&rec.hash);
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTotals {
    pub generated_wh: Decimal,
    pub stored_wh: Decimal,
    pub dispatched_wh: Decimal,
    pub consumed_wh: Decimal,
}

impl FlowTotals {
    fn add(&mut self, flow: Flow, wh: Decimal) {
        match flow {
            Flow::Generated => self.generated_wh += wh,
            Flow::Stored => self.stored_wh += wh,
            Flow::Dispatched => self.dispatched_wh += wh,
            Flow::Consumed => self.consumed_wh += wh,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteBooks {
    pub time_zone: String,
    pub loss_tolerance_pct: Decimal,
    /// Grid interval start (Unix seconds) → energy per flow.
    pub intervals: BTreeMap<i64, FlowTotals>,
}

/// One grid interval of a site, split further than [`FlowTotals`]: energy generated per
/// source (`gas_turbine`, `solar`, …; `unspecified` for a meter registered without one) and
/// consumed per tenant (`unassigned` for a load meter without one). Stored and dispatched
/// energy are not split: [`SiteBooks::intervals`] has them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowSplit {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub generated_by_source: BTreeMap<String, Decimal>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub consumed_by_tenant: BTreeMap<String, Decimal>,
}

/// What a generation reading without a source is counted under in [`FlowSplit`].
pub const SOURCE_UNSPECIFIED: &str = "unspecified";
/// What a consumption reading without a tenant is counted under in [`FlowSplit`].
pub const TENANT_UNASSIGNED: &str = "unassigned";
/// The default span of a flows read without `from`, in days.
pub const FLOWS_DEFAULT_DAYS: i64 = 7;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatteryBooks {
    pub meter_id: String,
    pub site_id: String,
    pub capacity_wh: Decimal,
    pub initial_wh: Decimal,
    pub round_trip_efficiency_pct: Decimal,
    pub stored_wh: Decimal,
    pub dispatched_wh: Decimal,
}

impl BatteryBooks {
    pub fn level_wh(&self) -> Decimal {
        self.initial_wh + self.stored_wh * self.round_trip_efficiency_pct / Decimal::ONE_HUNDRED - self.dispatched_wh
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedPeriod {
    pub position: u64,
    pub last_position: u64,
    pub chain_hash: String,
}

/// Every read model, folded from the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Books {
    pub position: u64,
    pub chain_hash: String,
    pub accounts: BTreeMap<String, AccountTotals>,
    /// Tenant → period (`YYYY-MM`) → movements.
    pub statements: BTreeMap<String, BTreeMap<String, StatementAcc>>,
    pub tenants: BTreeMap<String, String>,
    pub sites: BTreeMap<String, SiteBooks>,
    pub batteries: BTreeMap<String, BatteryBooks>,
    /// Period → account → (net EU, net Wh), debit-positive.
    pub settlement: BTreeMap<String, BTreeMap<String, (Decimal, Decimal)>>,
    pub closed: BTreeMap<String, ClosedPeriod>,
    /// Generation and storage assets registered (their accounts exist before any posting).
    #[serde(default)]
    pub assets: BTreeMap<String, String>,
    /// Site → grid interval start (Unix seconds) → generation by source and consumption by
    /// tenant, on the energy balance's grid (one entry per interval with such energy, like
    /// [`SiteBooks::intervals`]; a snapshot written before this field existed reads empty).
    #[serde(default)]
    pub flows: BTreeMap<String, BTreeMap<i64, FlowSplit>>,
    /// Site → UTC clock hour (Unix seconds) → energy by source, tenant and battery, with the
    /// positions of the readings behind it: the input of the supply-mix attribution
    /// ([`attribution`]).
    pub hours: BTreeMap<String, BTreeMap<i64, HourFlows>>,
    /// Site → its published emission factors, in version order.
    pub emission_factors: BTreeMap<String, Vec<EmissionFactorsPublished>>,
    /// Closed period → tenant → its attribution summary as it stood at the close: what the
    /// period's final statements carry (later readings change the hours, not them).
    pub closed_attribution: BTreeMap<String, BTreeMap<String, attribution::TenantAttribution>>,
    /// Every hold, by hold id.
    #[serde(default)]
    pub holds: BTreeMap<String, HoldBooks>,
    /// Tenant → EU on hold (what is left of its active holds).
    #[serde(default)]
    pub held: BTreeMap<String, Decimal>,
    /// Tenant → spending limits.
    #[serde(default)]
    pub limits: BTreeMap<String, LimitBooks>,
}

fn day_of(t: DateTime<Utc>) -> String {
    day_text(t).as_str().to_string()
}

/// `YYYY-MM-DD`, digit by digit on the stack for the years 0–9999 (a consumption line's key
/// holds it, for every reading); chrono's formatter writes other years.
fn day_text(t: DateTime<Utc>) -> ShortText<10> {
    use chrono::Datelike;
    let Some(y) = u32::try_from(t.year()).ok().filter(|y| *y <= 9999) else {
        return ShortText::Other(t.format("%Y-%m-%d").to_string());
    };
    let (m, d) = (t.month(), t.day());
    let digit = |n: u32| b'0' + (n % 10) as u8;
    ShortText::Digits([
        digit(y / 1000),
        digit(y / 100),
        digit(y / 10),
        digit(y),
        b'-',
        digit(m / 10),
        digit(m),
        b'-',
        digit(d / 10),
        digit(d),
    ])
}

/// Spreads `wh` over the grid intervals `[start, end)` touches, pro rata by time.
fn spread(
    intervals: &mut BTreeMap<i64, FlowTotals>,
    flow: Flow,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    wh: Decimal,
) {
    grid_shares(start, end, wh, |key, share| {
        intervals.entry(key).or_default().add(flow, share)
    });
}

/// Calls `add(grid interval start in Unix seconds, share of wh)` for each grid interval
/// `[start, end)` touches, pro rata by time: the one rule of [`spread`], so every split of a
/// reading adds up to what the energy balance counts.
fn grid_shares(start: DateTime<Utc>, end: DateTime<Utc>, wh: Decimal, add: impl FnMut(i64, Decimal)) {
    step_shares(ENERGY_BALANCE_INTERVAL_S, start, end, wh, add)
}

/// [`grid_shares`] on a grid of `step_s` seconds.
fn step_shares(step_s: i64, start: DateTime<Utc>, end: DateTime<Utc>, wh: Decimal, mut add: impl FnMut(i64, Decimal)) {
    let (s, e) = (start.timestamp_millis(), end.timestamp_millis());
    let total = Decimal::from(e - s);
    let step = step_s * 1000;
    let mut b = s.div_euclid(step) * step;
    while b < e {
        let overlap = (b + step).min(e) - b.max(s);
        let share = if overlap == e - s {
            wh
        } else {
            wh * Decimal::from(overlap) / total
        };
        add(b / 1000, share);
        b += step;
    }
}

impl Books {
    /// Folds one recorded event. Pure: no I/O, deterministic.
    pub fn apply(&mut self, rec: &RecordedEvent, ev: &Event) {
        self.apply_posted(rec, ev, postings(ev));
    }

    /// [`Books::apply`] with the event's postings already made (the audit makes them to
    /// check they balance, and hands them on).
    pub fn apply_posted(&mut self, rec: &RecordedEvent, ev: &Event, posted: Vec<Posting>) {
        self.position = rec.position;
        self.chain_hash.clone_from(&rec.hash);
        let booked = booked_period(ev).map(|p| p.text());
        for p in posted {
            // Looked up before a key is made: an account is new only once.
            let a = match self.accounts.get_mut(&p.account) {
                Some(a) => a,
                None => self.accounts.entry(p.account.clone()).or_default(),
            };
            let (eu, wh) = match p.side {
                Side::Debit => {
                    a.debits_eu += p.amount_eu;
                    a.debits_wh += p.energy_wh;
                    (p.amount_eu, p.energy_wh)
                }
                Side::Credit => {
                    a.credits_eu += p.amount_eu;
                    a.credits_wh += p.energy_wh;
                    (-p.amount_eu, -p.energy_wh)
                }
            };
            if let Some(period) = &booked {
                let nets = entry_or_default(&mut self.settlement, period.as_str());
                let net = match nets.get_mut(&p.account) {
                    Some(net) => net,
                    None => nets.entry(p.account).or_default(),
                };
                net.0 += eu;
                net.1 += wh;
            }
        }
        match ev {
            Event::SiteRegistered(s) => {
                let site = self.sites.entry(s.site_id.to_string()).or_default();
                site.time_zone = s.time_zone.clone();
                site.loss_tolerance_pct = s.loss_tolerance_pct;
            }
            Event::TenantRegistered(t) => {
                self.tenants.insert(t.tenant_id.to_string(), t.name.clone());
            }
            Event::MeterRegistered(m) => {
                if let Some(a) = &m.asset_id {
                    let account = match m.kind {
                        MeterKind::Storage => format!("storage:{a}"),
                        _ => format!("asset:{a}"),
                    };
                    self.assets.insert(account, m.site_id.to_string());
                }
                if m.kind == MeterKind::Storage
                    && let Some(a) = &m.asset_id
                {
                    self.batteries.insert(
                        a.to_string(),
                        BatteryBooks {
                            meter_id: m.meter_id.to_string(),
                            site_id: m.site_id.to_string(),
                            capacity_wh: m.capacity_wh.map(|c| c.value()).unwrap_or_default(),
                            initial_wh: m.initial_wh.map(|c| c.value()).unwrap_or_default(),
                            round_trip_efficiency_pct: m.round_trip_efficiency_pct.unwrap_or(Decimal::ONE_HUNDRED),
                            ..BatteryBooks::default()
                        },
                    );
                }
            }
            Event::TariffPublished(_) => {}
            Event::EmissionFactorsPublished(f) => {
                self.emission_factors
                    .entry(f.site_id.to_string())
                    .or_default()
                    .push(f.clone());
            }
            Event::PeriodClosed(c) => {
                let summaries = attribution::period_summaries(self, c.period);
                self.closed_attribution.insert(c.period.to_string(), summaries);
                self.closed.insert(
                    c.period.to_string(),
                    ClosedPeriod {
                        position: rec.position,
                        last_position: c.last_position,
                        chain_hash: c.chain_hash.clone(),
                    },
                );
            }
            Event::EnergyGenerated(r)
            | Event::EnergyStored(r)
            | Event::EnergyDispatched(r)
            | Event::EnergyConsumed(r) => {
                let wh = r.energy_wh.value();
                self.apply_flow(
                    r.flow,
                    r.site_id.as_str(),
                    r.asset_id.as_ref().map(|a| a.as_str()),
                    r.start,
                    r.end,
                    wh,
                );
                let series = split_series(r.flow, r.source, r.tenant_id.as_ref());
                self.split_flow(r.site_id.as_str(), series, r.start, r.end, wh);
                let key = hour_key(r.flow, r.source, r.tenant_id.as_ref(), r.asset_id.as_ref());
                self.hour_flow(r.site_id.as_str(), r.flow, key, r.start, r.end, wh, rec.position);
                if let (Flow::Consumed, Some(t)) = (r.flow, &r.tenant_id) {
                    let drawn: Decimal = r.hold_draws.iter().map(|d| d.amount_eu.value()).sum();
                    for d in &r.hold_draws {
                        self.hold_activity(rec, d.hold_id.as_str(), r.booked_period, |h, l| {
                            h.drawn_eu += d.amount_eu.value();
                            l.drawn_eu += d.amount_eu.value();
                        });
                    }
                    let st = self.statement_mut(t.as_str(), r.booked_period);
                    st.touch(rec);
                    if let Some(job) = &r.job_id {
                        let j = st.jobs.entry(job.to_string()).or_default();
                        j.energy_wh += wh;
                        j.amount_eu += r.price.amount_eu;
                        j.drawn_eu += drawn;
                        j.readings += 1;
                    }
                    if r.booked_period == r.period {
                        st.consumption_wh += wh;
                        st.charges_eu += r.price.amount_eu;
                        add_consumption_lines(st, r.site_id.as_str(), r.start, wh, &r.price);
                    } else {
                        st.adjustments_eu -= r.price.amount_eu;
                        st.adjustments_wh += wh;
                        st.entries.push(Line {
                            kind: "adjustment".into(),
                            date: Some(day_of(r.start)),
                            site_id: Some(r.site_id.to_string()),
                            band: Some(r.price.band.clone()),
                            energy_wh: Some(wh),
                            amount_eu: -r.price.amount_eu,
                            memo: Some(format!("late reading for closed period {}", r.period)),
                            original_period: Some(r.period.to_string()),
                            position: Some(rec.position),
                            ..Line::default()
                        });
                    }
                }
            }
            Event::ReadingCorrected(c) => {
                self.apply_flow(
                    c.flow,
                    c.site_id.as_str(),
                    c.asset_id.as_ref().map(|a| a.as_str()),
                    c.start,
                    c.end,
                    c.delta_wh,
                );
                let series = split_series(c.flow, c.source, c.tenant_id.as_ref());
                self.split_flow(c.site_id.as_str(), series, c.start, c.end, c.delta_wh);
                let key = hour_key(c.flow, c.source, c.tenant_id.as_ref(), c.asset_id.as_ref());
                self.hour_flow(
                    c.site_id.as_str(),
                    c.flow,
                    key,
                    c.start,
                    c.end,
                    c.delta_wh,
                    rec.position,
                );
                if let (Flow::Consumed, Some(t)) = (c.flow, &c.tenant_id) {
                    let st = self.statement_mut(t.as_str(), c.booked_period);
                    st.touch(rec);
                    if let Some(job) = &c.job_id {
                        let j = st.jobs.entry(job.to_string()).or_default();
                        j.energy_wh += c.delta_wh;
                        j.amount_eu += c.delta_eu;
                    }
                    let open = c.booked_period == c.period;
                    if open {
                        st.charges_eu += c.delta_eu;
                        st.consumption_wh += c.delta_wh;
                    } else {
                        st.adjustments_eu -= c.delta_eu;
                        st.adjustments_wh += c.delta_wh;
                    }
                    st.entries.push(Line {
                        kind: if open { "correction" } else { "adjustment" }.into(),
                        date: Some(day_of(c.start)),
                        site_id: Some(c.site_id.to_string()),
                        band: Some(c.price.band.clone()),
                        energy_wh: Some(c.delta_wh),
                        amount_eu: if open { c.delta_eu } else { -c.delta_eu },
                        memo: Some(format!("correction of {}: {}", c.corrected_event_id, c.reason)),
                        original_period: (!open).then(|| c.period.to_string()),
                        position: Some(rec.position),
                        ..Line::default()
                    });
                }
            }
            Event::CreditsIssued(c) => {
                let st = self.statement_mut(c.tenant_id.as_str(), c.booked_period);
                st.touch(rec);
                st.credits_eu += c.amount_eu.value();
                st.entries.push(Line {
                    kind: "credit".into(),
                    date: Some(day_of(rec.recorded_at)),
                    amount_eu: c.amount_eu.value(),
                    memo: Some(c.memo.clone()),
                    position: Some(rec.position),
                    ..Line::default()
                });
            }
            Event::CreditsTransferred(c) => {
                let amount = c.amount_eu.value();
                for (tenant, kind, other) in [
                    (&c.from_tenant, "transfer_out", &c.to_tenant),
                    (&c.to_tenant, "transfer_in", &c.from_tenant),
                ] {
                    let st = self.statement_mut(tenant.as_str(), c.booked_period);
                    st.touch(rec);
                    if kind == "transfer_out" {
                        st.transfers_out_eu += amount;
                    } else {
                        st.transfers_in_eu += amount;
                    }
                    st.entries.push(Line {
                        kind: kind.into(),
                        date: Some(day_of(rec.recorded_at)),
                        amount_eu: amount,
                        memo: Some(c.memo.clone()),
                        counterparty: Some(other.to_string()),
                        position: Some(rec.position),
                        ..Line::default()
                    });
                }
            }
            Event::HoldPlaced(h) => {
                let amount = h.amount_eu.value();
                self.holds.insert(
                    h.hold_id.to_string(),
                    HoldBooks {
                        tenant_id: h.tenant_id.to_string(),
                        job_id: h.job_id.as_ref().map(|j| j.to_string()),
                        amount_eu: amount,
                        expires_at: fmt_time(&h.expires_at),
                        memo: h.memo.clone(),
                        status: "active".into(),
                        placed_at: fmt_time(&rec.recorded_at),
                        position: rec.position,
                        ..HoldBooks::default()
                    },
                );
                *self.held.entry(h.tenant_id.to_string()).or_default() += amount;
                self.hold_activity(rec, h.hold_id.as_str(), h.booked_period, |_, l| l.placed_eu += amount);
            }
            Event::HoldCaptured(c) => {
                let amount = c.amount_eu.value();
                self.hold_activity(rec, c.hold_id.as_str(), c.booked_period, |h, l| {
                    h.captured_eu += amount;
                    l.captured_eu += amount;
                });
                let st = self.statement_mut(c.tenant_id.as_str(), c.booked_period);
                st.touch(rec);
                st.charges_eu += amount;
                st.captured_eu += amount;
                st.entries.push(Line {
                    kind: "capture".into(),
                    date: Some(day_of(rec.recorded_at)),
                    amount_eu: amount,
                    memo: Some(format!(
                        "hold {}{}",
                        c.hold_id,
                        c.job_id.as_ref().map_or(String::new(), |j| format!(" (job {j})"))
                    )),
                    position: Some(rec.position),
                    ..Line::default()
                });
            }
            Event::HoldReleased(c) | Event::HoldExpired(c) => {
                let status = if matches!(ev, Event::HoldExpired(_)) {
                    "expired"
                } else {
                    "released"
                };
                let released = c.released_eu.value();
                self.hold_activity(rec, c.hold_id.as_str(), c.booked_period, |h, l| {
                    h.released_eu += released;
                    h.status = status.into();
                    h.closed_position = Some(rec.position);
                    l.released_eu += released;
                });
            }
            Event::SpendingLimitSet(l) => {
                self.limits
                    .entry(l.tenant_id.to_string())
                    .or_default()
                    .settings
                    .insert(l.period.to_string(), l.limit_eu.map(|x| x.value()));
            }
            Event::SpendingLimitExceeded(x) => {
                self.limits
                    .entry(x.tenant_id.to_string())
                    .or_default()
                    .exceeded
                    .insert(x.period.to_string(), rec.position);
                self.statement_mut(x.tenant_id.as_str(), x.period).touch(rec);
            }
        }
    }

    /// Applies a change to a hold and to its line in the period's statement, and keeps the
    /// tenant's EU on hold in step.
    fn hold_activity(
        &mut self,
        rec: &RecordedEvent,
        hold_id: &str,
        period: Period,
        change: impl FnOnce(&mut HoldBooks, &mut HoldLine),
    ) {
        let Some(h) = self.holds.get_mut(hold_id) else {
            return;
        };
        let before = h.remaining_eu();
        let tenant = h.tenant_id.clone();
        let st = self
            .statements
            .entry(tenant.clone())
            .or_default()
            .entry(period.to_string())
            .or_default();
        st.touch(rec);
        let line = st.holds.entry(hold_id.to_string()).or_insert_with(|| HoldLine {
            job_id: h.job_id.clone(),
            amount_eu: h.amount_eu,
            expires_at: h.expires_at.clone(),
            ..HoldLine::default()
        });
        change(h, line);
        line.remaining_eu = h.remaining_eu();
        line.status = h.status.clone();
        *self.held.entry(tenant).or_default() += h.remaining_eu() - before;
    }

    fn statement_mut(&mut self, tenant: &str, period: Period) -> &mut StatementAcc {
        entry_or_default(entry_or_default(&mut self.statements, tenant), period.text().as_str())
    }

    fn apply_flow(
        &mut self,
        flow: Flow,
        site: &str,
        asset: Option<&str>,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        wh: Decimal,
    ) {
        let site = entry_or_default(&mut self.sites, site);
        spread(&mut site.intervals, flow, start, end, wh);
        if let Some(b) = asset.and_then(|a| self.batteries.get_mut(a)) {
            match flow {
                Flow::Stored => b.stored_wh += wh,
                Flow::Dispatched => b.dispatched_wh += wh,
                _ => {}
            }
        }
    }

    /// Adds a reading's energy to its [`split_series`] on the site's grid (nothing for
    /// storage flows, which `SiteBooks::intervals` already holds).
    fn split_flow(
        &mut self,
        site: &str,
        series: Option<(Flow, &str)>,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        wh: Decimal,
    ) {
        let Some((flow, key)) = series else {
            return;
        };
        let grid = entry_or_default(&mut self.flows, site);
        grid_shares(start, end, wh, |at, share| {
            let split = grid.entry(at).or_default();
            let by = match flow {
                Flow::Generated => &mut split.generated_by_source,
                _ => &mut split.consumed_by_tenant,
            };
            *entry_or_default(by, key) += share;
        });
    }

    /// Adds a reading's (or correction's) energy to the hours it spans, pro rata by time.
    #[allow(clippy::too_many_arguments)]
    fn hour_flow(
        &mut self,
        site: &str,
        flow: Flow,
        key: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        wh: Decimal,
        position: u64,
    ) {
        let hours = entry_or_default(&mut self.hours, site);
        step_shares(attribution::HOUR_S, start, end, wh, |at, share| {
            hours.entry(at).or_default().add(flow, key, share, position);
        });
    }

    // ----- reads -----

    /// Whether an account exists: registered (tenant, asset, battery, site bus) or posted to.
    pub fn knows_account(&self, account: &str) -> bool {
        self.accounts.contains_key(account)
            || self.assets.contains_key(account)
            || account
                .strip_prefix("tenant:")
                .is_some_and(|t| self.tenants.contains_key(t))
            || account
                .strip_prefix("site:")
                .and_then(|r| r.strip_suffix(":bus"))
                .is_some_and(|s| self.sites.contains_key(s))
    }

    /// The balance of an account (CONTRACT §2), or `None` for an account that does not exist.
    pub fn balance(&self, account: &str) -> Option<Value> {
        if !self.knows_account(account) {
            return None;
        }
        let zero = AccountTotals::default();
        let a = self.accounts.get(account).unwrap_or(&zero);
        let (eu, wh) = if credit_normal(account) {
            (a.credits_eu - a.debits_eu, a.credits_wh - a.debits_wh)
        } else {
            (a.debits_eu - a.credits_eu, a.debits_wh - a.credits_wh)
        };
        let mut v = json!({
            "account": account,
            "balance_eu": fmt_decimal(&eu),
            "debits_eu": fmt_decimal(&a.debits_eu),
            "credits_eu": fmt_decimal(&a.credits_eu),
            "balance_wh": fmt_decimal(&wh),
            "debits_wh": fmt_decimal(&a.debits_wh),
            "credits_wh": fmt_decimal(&a.credits_wh),
            "normal_side": if credit_normal(account) { "credit" } else { "debit" },
            "position": self.position,
        });
        if let Some(t) = account.strip_prefix("tenant:") {
            let held = self.held.get(t).copied().unwrap_or_default();
            v["held_eu"] = json!(fmt_decimal(&held));
            v["available_eu"] = json!(fmt_decimal(&(eu - held)));
        }
        Some(v)
    }

    /// A tenant's holds (all, or only those with `status`), with its total and available
    /// balance; `None` for an unknown tenant.
    pub fn holds_of(&self, tenant: &str, status: Option<&str>) -> Option<Value> {
        if !self.tenants.contains_key(tenant) {
            return None;
        }
        let a = self.accounts.get(&format!("tenant:{tenant}"));
        let balance = a.map_or(Decimal::ZERO, |a| a.credits_eu - a.debits_eu);
        let held = self.held.get(tenant).copied().unwrap_or_default();
        let holds: Vec<Value> = self
            .holds
            .iter()
            .filter(|(_, h)| h.tenant_id == tenant && status.is_none_or(|s| h.status == s))
            .map(|(id, h)| h.to_json(id))
            .collect();
        let limits = self.limits.get(tenant);
        Some(json!({
            "tenant_id": tenant,
            "balance_eu": fmt_decimal(&balance),
            "held_eu": fmt_decimal(&held),
            "available_eu": fmt_decimal(&(balance - held)),
            "active_holds": self.holds.values().filter(|h| h.tenant_id == tenant && h.status == "active").count(),
            "spending_limits": limits.map(|l| l.settings.iter().map(|(p, x)| json!({"period": p, "limit_eu": x.map(|x| fmt_decimal(&x))})).collect::<Vec<_>>()).unwrap_or_default(),
            "holds": holds,
            "position": self.position,
        }))
    }

    /// One hold of a tenant; `None` when the tenant has no such hold.
    pub fn hold(&self, tenant: &str, hold_id: &str) -> Option<Value> {
        let h = self.holds.get(hold_id).filter(|h| h.tenant_id == tenant)?;
        Some(h.to_json(hold_id))
    }

    /// A tenant's statement for a period (CONTRACT §2), or `None` for an unknown tenant.
    pub fn statement(&self, tenant: &str, period: Period) -> Option<Statement> {
        if !self.tenants.contains_key(tenant) {
            return None;
        }
        let key = period.to_string();
        let empty = BTreeMap::new();
        let by_period = self.statements.get(tenant).unwrap_or(&empty);
        let opening: Decimal = by_period.range(..key.clone()).map(|(_, s)| s.net_eu()).sum();
        let acc = by_period.get(&key).cloned().unwrap_or_default();
        let closing = opening + acc.net_eu();
        let mut lines: Vec<Line> = acc.consumption.values().cloned().collect();
        lines.extend(acc.entries.iter().cloned());
        let limits = self.limits.get(tenant);
        Some(Statement {
            tenant_id: tenant.to_string(),
            tenant_name: self.tenants[tenant].clone(),
            period: key.clone(),
            opening_balance_eu: opening,
            charges_eu: acc.charges_eu,
            credits_eu: acc.credits_eu,
            transfers_in_eu: acc.transfers_in_eu,
            transfers_out_eu: acc.transfers_out_eu,
            adjustments_eu: acc.adjustments_eu,
            closing_balance_eu: closing,
            consumption_wh: acc.consumption_wh,
            adjustments_wh: acc.adjustments_wh,
            lines,
            first_position: acc.first_position,
            last_position: acc.last_position,
            chain_hash: acc.chain_hash,
            is_final: self.closed.contains_key(&key),
            attribution: None,
            captured_eu: acc.captured_eu,
            holds: acc.holds,
            jobs: acc.jobs,
            spending_limit_eu: limits.and_then(|l| l.limit_at(&key)),
            spending_limit_exceeded: limits.is_some_and(|l| l.exceeded.contains_key(&key)),
        })
    }

    /// The energy balance of a site over `[from, to)`, per grid interval.
    pub fn energy_balance(&self, site: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Option<Value> {
        let s = self.sites.get(site)?;
        let (a, b) = (from.timestamp(), to.timestamp());
        let mut out = Vec::new();
        let mut flagged_count = 0;
        for (start, f) in s.intervals.range(a..b).take(ENERGY_BALANCE_INTERVALS_MAX) {
            let supply = f.generated_wh + f.dispatched_wh;
            let losses = supply - f.stored_wh - f.consumed_wh;
            let losses_pct = if supply.is_zero() {
                None
            } else {
                Some((losses * Decimal::ONE_HUNDRED / supply).round_dp(3))
            };
            let reason = if losses < Decimal::ZERO {
                Some("negative losses: more energy left the bus than entered it")
            } else if losses_pct.is_some_and(|p| p > s.loss_tolerance_pct) {
                Some("losses above the site's tolerance")
            } else {
                None
            };
            flagged_count += usize::from(reason.is_some());
            let t0 = Utc.timestamp_opt(*start, 0).single().unwrap_or_default();
            let t1 = Utc
                .timestamp_opt(*start + ENERGY_BALANCE_INTERVAL_S, 0)
                .single()
                .unwrap_or_default();
            out.push(json!({
                "start": fmt_time(&t0),
                "end": fmt_time(&t1),
                "generated_wh": fmt_decimal(&round_wh(f.generated_wh)),
                "stored_wh": fmt_decimal(&round_wh(f.stored_wh)),
                "dispatched_wh": fmt_decimal(&round_wh(f.dispatched_wh)),
                "consumed_wh": fmt_decimal(&round_wh(f.consumed_wh)),
                "losses_wh": fmt_decimal(&round_wh(losses)),
                "losses_pct": losses_pct.map(|p| fmt_decimal(&p)),
                "flagged": reason.is_some(),
                "reason": reason,
            }));
        }
        Some(json!({
            "site_id": site,
            "interval_s": ENERGY_BALANCE_INTERVAL_S,
            "loss_tolerance_pct": fmt_decimal(&s.loss_tolerance_pct),
            "from": fmt_time(&from),
            "to": fmt_time(&to),
            "flagged_count": flagged_count,
            "intervals": out,
            "position": self.position,
        }))
    }

    /// The first and last grid interval of a site with any energy, as `[start, end)` of
    /// the whole span; `None` before its first reading.
    pub fn site_extent(&self, site: &str) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let s = self.sites.get(site)?;
        let (first, last) = (s.intervals.keys().next()?, s.intervals.keys().next_back()?);
        Some((grid_time(*first), grid_time(*last + ENERGY_BALANCE_INTERVAL_S)))
    }

    /// Every registered site, with the span its energy covers.
    pub fn sites_list(&self) -> Value {
        let list: Vec<Value> = self
            .sites
            .iter()
            .map(|(id, s)| {
                let extent = self.site_extent(id);
                json!({
                    "site_id": id,
                    "time_zone": s.time_zone,
                    "loss_tolerance_pct": fmt_decimal(&s.loss_tolerance_pct),
                    "intervals": s.intervals.len(),
                    "data_from": extent.map(|(a, _)| fmt_time(&a)),
                    "data_to": extent.map(|(_, b)| fmt_time(&b)),
                })
            })
            .collect();
        json!({"sites": list, "position": self.position})
    }

    /// A site's flows over `[from, to)` per grid interval: generation by source, battery
    /// charge and discharge, consumption by tenant, and losses (at most
    /// [`ENERGY_BALANCE_INTERVALS_MAX`] intervals; `truncated` says when there were more).
    pub fn flows(&self, site: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Option<Value> {
        let s = self.sites.get(site)?;
        let empty = BTreeMap::new();
        let splits = self.flows.get(site).unwrap_or(&empty);
        let (a, b) = (from.timestamp(), to.timestamp());
        let none = FlowSplit::default();
        let mut sources = std::collections::BTreeSet::new();
        let mut tenants = std::collections::BTreeSet::new();
        let by = |m: &BTreeMap<String, Decimal>| -> serde_json::Map<String, Value> {
            m.iter()
                .map(|(k, v)| (k.clone(), json!(fmt_decimal(&round_wh(*v)))))
                .collect()
        };
        let mut out = Vec::new();
        for (start, f) in s.intervals.range(a..b).take(ENERGY_BALANCE_INTERVALS_MAX) {
            let split = splits.get(start).unwrap_or(&none);
            sources.extend(split.generated_by_source.keys().cloned());
            tenants.extend(split.consumed_by_tenant.keys().cloned());
            let losses = f.generated_wh + f.dispatched_wh - f.stored_wh - f.consumed_wh;
            out.push(json!({
                "start": fmt_time(&grid_time(*start)),
                "end": fmt_time(&grid_time(*start + ENERGY_BALANCE_INTERVAL_S)),
                "generated_wh": fmt_decimal(&round_wh(f.generated_wh)),
                "generated_by_source_wh": by(&split.generated_by_source),
                "dispatched_wh": fmt_decimal(&round_wh(f.dispatched_wh)),
                "stored_wh": fmt_decimal(&round_wh(f.stored_wh)),
                "consumed_wh": fmt_decimal(&round_wh(f.consumed_wh)),
                "consumed_by_tenant_wh": by(&split.consumed_by_tenant),
                "losses_wh": fmt_decimal(&round_wh(losses)),
            }));
        }
        let truncated = s.intervals.range(a..b).nth(ENERGY_BALANCE_INTERVALS_MAX).is_some();
        let tenants: Vec<Value> = tenants
            .iter()
            .map(|t| json!({"tenant_id": t, "name": self.tenants.get(t)}))
            .collect();
        let extent = self.site_extent(site);
        Some(json!({
            "site_id": site,
            "interval_s": ENERGY_BALANCE_INTERVAL_S,
            "from": fmt_time(&from),
            "to": fmt_time(&to),
            "data_from": extent.map(|(a, _)| fmt_time(&a)),
            "data_to": extent.map(|(_, b)| fmt_time(&b)),
            "sources": sources,
            "tenants": tenants,
            "intervals": out,
            "truncated": truncated,
            "position": self.position,
        }))
    }

    /// Every battery's state.
    pub fn storage(&self) -> Value {
        let list: Vec<Value> = self
            .batteries
            .iter()
            .map(|(asset, b)| {
                json!({
                    "asset_id": asset,
                    "meter_id": b.meter_id,
                    "site_id": b.site_id,
                    "capacity_wh": fmt_decimal(&b.capacity_wh),
                    "initial_wh": fmt_decimal(&b.initial_wh),
                    "round_trip_efficiency_pct": fmt_decimal(&b.round_trip_efficiency_pct),
                    "stored_wh": fmt_decimal(&b.stored_wh),
                    "dispatched_wh": fmt_decimal(&b.dispatched_wh),
                    "level_wh": fmt_decimal(&b.level_wh()),
                })
            })
            .collect();
        json!({"batteries": list, "position": self.position})
    }

    /// Every account's net for a period, debit-positive; the nets sum to zero.
    pub fn settlement(&self, period: Period) -> Value {
        let key = period.to_string();
        let empty = BTreeMap::new();
        let nets = self.settlement.get(&key).unwrap_or(&empty);
        let (mut sum_eu, mut sum_wh) = (Decimal::ZERO, Decimal::ZERO);
        let accounts: Vec<Value> = nets
            .iter()
            .map(|(account, (eu, wh))| {
                sum_eu += eu;
                sum_wh += wh;
                json!({"account": account, "net_eu": fmt_decimal(eu), "net_wh": fmt_decimal(wh)})
            })
            .collect();
        json!({
            "period": key,
            "accounts": accounts,
            "sum_eu": fmt_decimal(&sum_eu),
            "sum_wh": fmt_decimal(&sum_wh),
            "final": self.closed.contains_key(&key),
            "position": self.position,
        })
    }
}

/// The [`FlowSplit`] series a reading adds to: generation to its source, consumption to its
/// tenant; `None` for storage flows.
fn split_series(flow: Flow, source: Option<Source>, tenant: Option<&TenantId>) -> Option<(Flow, &str)> {
    match flow {
        Flow::Generated => Some((flow, source.map_or(SOURCE_UNSPECIFIED, Source::as_str))),
        Flow::Consumed => Some((flow, tenant.map_or(TENANT_UNASSIGNED, TenantId::as_str))),
        Flow::Stored | Flow::Dispatched => None,
    }
}

/// What a reading is counted under in [`HourFlows`]: its source (generation), tenant
/// (consumption) or battery (storage flows).
fn hour_key<'a>(
    flow: Flow,
    source: Option<Source>,
    tenant: Option<&'a TenantId>,
    asset: Option<&'a crate::domain::ids::AssetId>,
) -> &'a str {
    match flow {
        Flow::Generated => source.map_or(SOURCE_UNSPECIFIED, Source::as_str),
        Flow::Consumed => tenant.map_or(TENANT_UNASSIGNED, TenantId::as_str),
        Flow::Stored | Flow::Dispatched => asset.map_or(TENANT_UNASSIGNED, |a| a.as_str()),
    }
}

/// The time of a grid key (Unix seconds).
fn grid_time(key: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(key, 0).single().unwrap_or_default()
}

/// The value under `key`, a default one inserted if there is none; the key is copied only
/// then (the books look up several such maps for every reading, and copying the key each
/// time was an allocation and a free).
fn entry_or_default<'m, V: Default>(map: &'m mut BTreeMap<String, V>, key: &str) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), V::default());
    }
    map.get_mut(key).expect("inserted above")
}

fn booked_period(ev: &Event) -> Option<Period> {
    match ev {
        Event::HoldCaptured(c) => Some(c.booked_period),
        Event::ReadingCorrected(c) => Some(c.booked_period),
        Event::CreditsIssued(c) => Some(c.booked_period),
        Event::CreditsTransferred(c) => Some(c.booked_period),
        e => e.as_reading().map(|r| r.booked_period),
    }
}

fn add_consumption_lines(st: &mut StatementAcc, site: &str, start: DateTime<Utc>, wh: Decimal, price: &Price) {
    // One key buffer for the call; a line's own strings are made only when it is new (the
    // usual reading adds to a line that exists).
    let mut key = String::with_capacity(64);
    let mut add = |at: DateTime<Utc>, band: &str, wh: Decimal, eu: Decimal| {
        let day = day_text(at);
        let date = day.as_str();
        key.clear();
        for part in [date, "|", site, "|", band] {
            key.push_str(part);
        }
        let line = match st.consumption.get_mut(key.as_str()) {
            Some(line) => line,
            None => st.consumption.entry(key.clone()).or_insert_with(|| Line {
                kind: "consumption".into(),
                date: Some(date.to_string()),
                site_id: Some(site.to_string()),
                band: Some(band.to_string()),
                energy_wh: Some(Decimal::ZERO),
                ..Line::default()
            }),
        };
        *line.energy_wh.get_or_insert(Decimal::ZERO) += wh;
        line.amount_eu += eu;
    };
    if price.parts.is_empty() {
        add(start, &price.band, wh, price.amount_eu);
    } else {
        for p in &price.parts {
            add(p.start, &p.band, p.energy_wh, p.amount_eu);
        }
    }
}

/// A tenant's statement for one period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub tenant_id: String,
    pub tenant_name: String,
    pub period: String,
    pub opening_balance_eu: Decimal,
    pub charges_eu: Decimal,
    pub credits_eu: Decimal,
    pub transfers_in_eu: Decimal,
    pub transfers_out_eu: Decimal,
    pub adjustments_eu: Decimal,
    pub closing_balance_eu: Decimal,
    pub consumption_wh: Decimal,
    pub adjustments_wh: Decimal,
    pub lines: Vec<Line>,
    pub first_position: u64,
    pub last_position: u64,
    pub chain_hash: String,
    pub is_final: bool,
    /// Which sources powered the consumption ([`attribution`]); filled by
    /// [`engine::Projections::statement`], absent from [`Books::statement`].
    pub attribution: Option<attribution::TenantAttribution>,
    pub captured_eu: Decimal,
    pub holds: BTreeMap<String, HoldLine>,
    pub jobs: BTreeMap<String, JobLine>,
    pub spending_limit_eu: Option<Decimal>,
    pub spending_limit_exceeded: bool,
}

fn opt_dec(d: &Option<Decimal>) -> Value {
    d.as_ref().map_or(Value::Null, |d| json!(fmt_decimal(d)))
}

impl Statement {
    pub fn to_json(&self) -> Value {
        let lines: Vec<Value> = self
            .lines
            .iter()
            .map(|l| {
                let mut v = json!({"kind": l.kind, "amount_eu": fmt_decimal(&l.amount_eu)});
                let m = v.as_object_mut().expect("object");
                let mut put = |k: &str, x: Value| {
                    if !x.is_null() {
                        m.insert(k.into(), x);
                    }
                };
                put("date", json!(l.date));
                put("site_id", json!(l.site_id));
                put("band", json!(l.band));
                put("energy_wh", opt_dec(&l.energy_wh));
                put("memo", json!(l.memo));
                put("counterparty", json!(l.counterparty));
                put("original_period", json!(l.original_period));
                put("position", json!(l.position));
                v
            })
            .collect();
        json!({
            "tenant_id": self.tenant_id,
            "tenant_name": self.tenant_name,
            "period": self.period,
            "opening_balance_eu": fmt_decimal(&self.opening_balance_eu),
            "charges_eu": fmt_decimal(&self.charges_eu),
            "credits_eu": fmt_decimal(&self.credits_eu),
            "transfers_in_eu": fmt_decimal(&self.transfers_in_eu),
            "transfers_out_eu": fmt_decimal(&self.transfers_out_eu),
            "adjustments_eu": fmt_decimal(&self.adjustments_eu),
            "closing_balance_eu": fmt_decimal(&self.closing_balance_eu),
            "consumption_wh": fmt_decimal(&self.consumption_wh),
            "adjustments_wh": fmt_decimal(&self.adjustments_wh),
            "lines": lines,
            "first_position": self.first_position,
            "last_position": self.last_position,
            "chain_hash": self.chain_hash,
            "final": self.is_final,
            "attribution": self.attribution.as_ref().map(|a| a.summary_json()),
            "captured_eu": fmt_decimal(&self.captured_eu),
            "holds": self.holds.iter().map(|(id, h)| json!({
                "hold_id": id,
                "job_id": h.job_id,
                "amount_eu": fmt_decimal(&h.amount_eu),
                "expires_at": h.expires_at,
                "placed_eu": fmt_decimal(&h.placed_eu),
                "captured_eu": fmt_decimal(&h.captured_eu),
                "drawn_eu": fmt_decimal(&h.drawn_eu),
                "released_eu": fmt_decimal(&h.released_eu),
                "remaining_eu": fmt_decimal(&h.remaining_eu),
                "status": h.status,
            })).collect::<Vec<_>>(),
            "jobs": self.jobs.iter().map(|(id, j)| json!({
                "job_id": id,
                "energy_wh": fmt_decimal(&j.energy_wh),
                "amount_eu": fmt_decimal(&j.amount_eu),
                "drawn_eu": fmt_decimal(&j.drawn_eu),
                "readings": j.readings,
            })).collect::<Vec<_>>(),
            "spending_limit_eu": opt_dec(&self.spending_limit_eu),
            "spending_limit_exceeded": self.spending_limit_exceeded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// The digits of a day are what chrono's `%Y-%m-%d` writes, over the years 0–9999
    /// (the first and last day of each month among them); other years are left to chrono.
    #[test]
    fn a_days_digits_are_what_chrono_writes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        let mut times: Vec<DateTime<Utc>> = (0..20_000)
            .map(|_| {
                let s = rng.gen_range(-62_167_219_200i64..253_402_300_800);
                Utc.timestamp_opt(s, 0).single().unwrap()
            })
            .collect();
        for (y, m, d) in [
            (0, 1, 1),
            (9999, 12, 31),
            (2026, 2, 28),
            (2024, 2, 29),
            (1970, 1, 1),
            (5, 10, 31),
        ] {
            times.push(Utc.with_ymd_and_hms(y, m, d, 23, 59, 59).unwrap());
        }
        for t in times {
            let want = t.format("%Y-%m-%d").to_string();
            let got = day_text(t);
            assert!(matches!(got, ShortText::Digits(_)), "a year in 0–9999: {t:?}");
            assert_eq!(got.as_str(), want, "{t:?}");
            assert_eq!(day_of(t), want);
        }
        for y in [-1, 10000] {
            let t = Utc.with_ymd_and_hms(y, 6, 1, 0, 0, 0).unwrap();
            assert!(matches!(day_text(t), ShortText::Other(_)), "{t:?}");
            assert_eq!(day_of(t), t.format("%Y-%m-%d").to_string());
        }
    }
}
