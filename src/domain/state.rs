//! The write model: `decide(command, &state)` and `evolve(&mut state, &event)`.
//!
//! The state holds exactly what deciding needs: registered entities, tariffs, every
//! reading's identity and current value (for duplicates, conflicts, overlaps and
//! corrections), battery levels, tenant balances, stream versions and closed periods.
//! Random-key lookups live here, in memory, so the store's hot path stays a pure append.

use super::commands::Command;
use super::error::{Code, Rejection};
use super::events::*;
use super::ids::{AssetId, MeterId, SiteId, TenantId};
use super::quantity::{EnergyWh, fmt_decimal, round_eu};
use super::tariff::{Flow, Price, Tariff, price};
use super::time::{Interval, Period, fmt_time};
use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use uuid::Uuid;

/// Namespace of the UUIDv5 identities the ledger derives (readings, commands).
pub const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1e_2c3a_9b7d_4e21_8a55_77c0_1d3e_9f42);
/// A reading may end at most this far after the ledger's clock (meters' clocks drift).
pub const FUTURE_TOLERANCE_S: i64 = 300;
/// A reading may exceed rated power × duration by this many percent (meter accuracy).
pub const RATED_POWER_TOLERANCE_PCT: i64 = 5;

/// What deciding a command needs from outside the state.
#[derive(Clone, Debug)]
pub struct DecideContext {
    pub now: DateTime<Utc>,
    /// The log's last position and chain hash; needed to close a period.
    pub head: Option<(u64, String)>,
}

/// An event to append, with the stream version it expects to follow.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub stream: String,
    /// The stream's current version (0 = the stream does not exist yet).
    pub expected_version: u64,
    pub recorded_at: DateTime<Utc>,
    pub event: Event,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Append(Box<NewEvent>),
    /// The command was already carried out: this is the event that recorded it.
    Duplicate {
        event_id: Uuid,
        stream: String,
        version: u64,
    },
}

#[derive(Clone, Debug)]
pub struct SiteState {
    pub reg: SiteRegistered,
    pub tz: Tz,
    /// Published versions, in order: `tariffs[v - 1]` is version `v`.
    pub tariffs: Vec<Tariff>,
    /// Published versions of the site's emission factors, in order.
    pub emission_factors: Vec<EmissionFactorsPublished>,
}

/// Terms published in versions that apply forward from an `effective_from`.
trait Versioned: Clone + PartialEq {
    /// What the event id is derived from: `{ID_KIND}/{site}/{version}`.
    const ID_KIND: &'static str;
    const NOUN: &'static str;
    const PLURAL: &'static str;
    fn site_id(&self) -> &SiteId;
    fn effective_from(&self) -> DateTime<Utc>;
    fn version(&self) -> u32;
    fn set_version(&mut self, v: u32);
}

impl Versioned for Tariff {
    const ID_KIND: &'static str = "tariff";
    const NOUN: &'static str = "tariff";
    const PLURAL: &'static str = "tariffs";
    fn site_id(&self) -> &SiteId {
        &self.site_id
    }
    fn effective_from(&self) -> DateTime<Utc> {
        self.effective_from
    }
    fn version(&self) -> u32 {
        self.tariff_version
    }
    fn set_version(&mut self, v: u32) {
        self.tariff_version = v;
    }
}

impl Versioned for EmissionFactorsPublished {
    const ID_KIND: &'static str = "emission-factors";
    const NOUN: &'static str = "emission factors";
    const PLURAL: &'static str = "emission factors";
    fn site_id(&self) -> &SiteId {
        &self.site_id
    }
    fn effective_from(&self) -> DateTime<Utc> {
        self.effective_from
    }
    fn version(&self) -> u32 {
        self.factors_version
    }
    fn set_version(&mut self, v: u32) {
        self.factors_version = v;
    }
}

impl SiteState {
    /// The tariff in force at `t`: the latest version effective at or before it.
    pub fn tariff_at(&self, t: DateTime<Utc>) -> Option<&Tariff> {
        self.tariffs.iter().rev().find(|x| x.effective_from <= t)
    }
}

#[derive(Clone, Debug)]
pub struct BatteryState {
    pub capacity_wh: Decimal,
    pub efficiency: Decimal,
    /// Energy held: initial + stored × efficiency − dispatched.
    pub level_wh: Decimal,
}

#[derive(Clone, Debug)]
pub struct MeterState {
    pub reg: MeterRegistered,
}

#[derive(Clone, Debug)]
pub struct TenantState {
    pub reg: TenantRegistered,
    /// What the tenant holds: credits − charges ± transfers ± corrections.
    pub balance_eu: Decimal,
}

#[derive(Clone, Debug)]
pub struct ReadingState {
    pub meter_id: MeterId,
    pub flow: Flow,
    pub interval: Interval,
    pub posted_wh: EnergyWh,
    pub current_wh: EnergyWh,
    pub current_eu: Decimal,
    pub tariff_version: u32,
    pub stream: String,
    pub version: u64,
    /// How many corrections it has had, and the last one: (event id, Wh, reason).
    pub corrections: u32,
    pub last_correction: Option<(Uuid, EnergyWh, String)>,
}

/// Interval start → (end, reading event id), for one meter and flow.
pub type IntervalIndex = BTreeMap<DateTime<Utc>, (DateTime<Utc>, Uuid)>;

#[derive(Clone, Debug, Default)]
pub struct LedgerState {
    pub sites: HashMap<SiteId, SiteState>,
    pub meters: HashMap<MeterId, MeterState>,
    pub tenants: HashMap<TenantId, TenantState>,
    pub batteries: HashMap<AssetId, BatteryState>,
    /// Which kind and site each asset was registered with.
    pub assets: HashMap<AssetId, (MeterKind, SiteId, MeterId)>,
    pub readings: HashMap<Uuid, ReadingState>,
    /// Per meter and flow: interval start → (end, reading event id).
    pub intervals: HashMap<(MeterId, Flow), IntervalIndex>,
    /// Events other than readings, by id: (stream, version).
    pub events: HashMap<Uuid, (String, u64)>,
    pub stream_versions: HashMap<String, u64>,
    pub closed: BTreeSet<Period>,
}

fn v5(name: &str) -> Uuid {
    Uuid::new_v5(&ID_NAMESPACE, name.as_bytes())
}

/// The identity of a reading: `(meter, flow, interval)`.
pub fn reading_id(meter: &MeterId, flow: Flow, interval: &Interval) -> Uuid {
    v5(&format!(
        "reading/{meter}/{flow}/{}/{}",
        fmt_time(&interval.start),
        fmt_time(&interval.end)
    ))
}

impl LedgerState {
    pub fn version_of(&self, stream: &str) -> u64 {
        self.stream_versions.get(stream).copied().unwrap_or(0)
    }

    /// The first period at or after `p` that is still open.
    pub fn booking_period(&self, p: Period) -> Period {
        let mut p = p;
        while self.closed.contains(&p) {
            p = p.next();
        }
        p
    }

    fn duplicate_of(&self, event_id: Uuid) -> Option<Decision> {
        let (stream, version) = match self.readings.get(&event_id) {
            Some(r) => (r.stream.clone(), r.version),
            None => self.events.get(&event_id).cloned()?,
        };
        Some(Decision::Duplicate {
            event_id,
            stream,
            version,
        })
    }

    fn new_event(&self, event_id: Uuid, stream: String, ctx: &DecideContext, event: Event) -> Decision {
        Decision::Append(Box::new(NewEvent {
            event_id,
            expected_version: self.version_of(&stream),
            stream,
            recorded_at: ctx.now,
            event,
        }))
    }

    fn site(&self, id: &SiteId) -> Result<&SiteState, Rejection> {
        self.sites
            .get(id)
            .ok_or_else(|| Rejection::not_found("site_id", format!("no site {id:?} is registered")))
    }

    fn tenant(&self, field: &str, id: &TenantId) -> Result<&TenantState, Rejection> {
        self.tenants
            .get(id)
            .ok_or_else(|| Rejection::not_found(field, format!("no tenant {id:?} is registered")))
    }

    /// Decides a command against the current state: the event to record, a recognised
    /// duplicate, or a typed refusal. Pure: the state is not changed.
    pub fn decide(&self, cmd: &Command, ctx: &DecideContext) -> Result<Decision, Rejection> {
        match cmd {
            Command::RegisterSite {
                site_id,
                time_zone,
                loss_tolerance_pct,
            } => {
                let reg = SiteRegistered {
                    site_id: site_id.clone(),
                    time_zone: time_zone.name().to_string(),
                    loss_tolerance_pct: *loss_tolerance_pct,
                };
                let stream = site_stream(site_id);
                if let Some(s) = self.sites.get(site_id) {
                    return self.same_registration(s.reg == reg, &stream, "site_id", "site", site_id.as_str());
                }
                Ok(self.new_event(v5(&format!("site/{site_id}")), stream, ctx, Event::SiteRegistered(reg)))
            }
            Command::RegisterTenant { tenant_id, name } => {
                let reg = TenantRegistered {
                    tenant_id: tenant_id.clone(),
                    name: name.clone(),
                };
                let stream = tenant_stream(tenant_id);
                if let Some(t) = self.tenants.get(tenant_id) {
                    return self.same_registration(t.reg == reg, &stream, "tenant_id", "tenant", tenant_id.as_str());
                }
                Ok(self.new_event(
                    v5(&format!("tenant/{tenant_id}")),
                    stream,
                    ctx,
                    Event::TenantRegistered(reg),
                ))
            }
            Command::RegisterMeter(reg) => self.decide_register_meter(reg, ctx),
            Command::PublishTariff(t) => self.decide_tariff(t, ctx),
            Command::PublishEmissionFactors(f) => self.decide_emission_factors(f, ctx),
            Command::PostReading {
                event_id,
                meter_id,
                flow,
                interval,
                energy_wh,
                quality,
            } => self.decide_reading(*event_id, meter_id, *flow, interval, *energy_wh, *quality, ctx),
            Command::CorrectReading {
                corrected_event_id,
                correction_id,
                energy_wh,
                reason,
            } => self.decide_correction(*corrected_event_id, *correction_id, *energy_wh, reason, ctx),
            Command::IssueCredits {
                event_id,
                tenant_id,
                amount_eu,
                memo,
            } => {
                let id = event_id.unwrap_or_else(|| v5(&format!("credits/{tenant_id}/{amount_eu}/{memo}")));
                if let Some(d) = self.duplicate_of(id) {
                    return Ok(d);
                }
                self.tenant("tenant_id", tenant_id)?;
                let ev = Event::CreditsIssued(CreditsIssued {
                    tenant_id: tenant_id.clone(),
                    amount_eu: *amount_eu,
                    memo: memo.clone(),
                    booked_period: self.booking_period(Period::of(ctx.now)),
                });
                Ok(self.new_event(id, tenant_stream(tenant_id), ctx, ev))
            }
            Command::TransferCredits {
                event_id,
                from_tenant,
                to_tenant,
                amount_eu,
                memo,
            } => {
                let id =
                    event_id.unwrap_or_else(|| v5(&format!("transfer/{from_tenant}/{to_tenant}/{amount_eu}/{memo}")));
                if let Some(d) = self.duplicate_of(id) {
                    return Ok(d);
                }
                if from_tenant == to_tenant {
                    return Err(Rejection::validation(
                        "to_tenant",
                        "must differ from from_tenant: a tenant cannot transfer to itself",
                    ));
                }
                if amount_eu.value() <= Decimal::ZERO {
                    return Err(Rejection::validation(
                        "amount_eu",
                        format!("must be positive, got {amount_eu}"),
                    ));
                }
                let from = self.tenant("from_tenant", from_tenant)?;
                self.tenant("to_tenant", to_tenant)?;
                if from.balance_eu < amount_eu.value() {
                    return Err(Rejection::new(
                        Code::InsufficientCredits,
                        "amount_eu",
                        format!(
                            "tenant {from_tenant:?} holds {} EU; a transfer of {amount_eu} EU would overdraw it",
                            fmt_decimal(&from.balance_eu)
                        ),
                    ));
                }
                let ev = Event::CreditsTransferred(CreditsTransferred {
                    from_tenant: from_tenant.clone(),
                    to_tenant: to_tenant.clone(),
                    amount_eu: *amount_eu,
                    memo: memo.clone(),
                    booked_period: self.booking_period(Period::of(ctx.now)),
                });
                Ok(self.new_event(id, tenant_stream(from_tenant), ctx, ev))
            }
            Command::ClosePeriod { period } => {
                let stream = period_stream(period);
                if self.closed.contains(period) {
                    let id = v5(&format!("period/{period}"));
                    return Ok(Decision::Duplicate {
                        event_id: id,
                        stream,
                        version: 1,
                    });
                }
                if period.end() > ctx.now {
                    return Err(Rejection::validation(
                        "period",
                        format!(
                            "period {period} has not ended yet (it ends {})",
                            fmt_time(&period.end())
                        ),
                    ));
                }
                let (last_position, chain_hash) = ctx.head.clone().unwrap_or((0, String::new()));
                let ev = Event::PeriodClosed(PeriodClosed {
                    period: *period,
                    last_position,
                    chain_hash,
                });
                Ok(self.new_event(v5(&format!("period/{period}")), stream, ctx, ev))
            }
        }
    }

    fn same_registration(
        &self,
        same: bool,
        stream: &str,
        field: &str,
        what: &str,
        id: &str,
    ) -> Result<Decision, Rejection> {
        if same {
            Ok(Decision::Duplicate {
                event_id: v5(&format!("{what}/{id}")),
                stream: stream.to_string(),
                version: 1,
            })
        } else {
            Err(Rejection::conflict(
                field,
                format!("{what} {id:?} is already registered with different attributes"),
                Some(v5(&format!("{what}/{id}"))),
            ))
        }
    }

    fn decide_register_meter(&self, reg: &MeterRegistered, ctx: &DecideContext) -> Result<Decision, Rejection> {
        let stream = meter_stream(&reg.meter_id);
        if let Some(m) = self.meters.get(&reg.meter_id) {
            return self.same_registration(m.reg == *reg, &stream, "meter_id", "meter", reg.meter_id.as_str());
        }
        self.site(&reg.site_id)?;
        if let Some(t) = &reg.tenant_id {
            self.tenant("tenant_id", t)?;
        }
        if let Some(a) = &reg.asset_id
            && let Some((kind, site, meter)) = self.assets.get(a)
        {
            if *kind != reg.kind || *site != reg.site_id {
                return Err(Rejection::conflict(
                    "asset_id",
                    format!(
                        "asset {a:?} is a {} asset of site {site:?} (meter {meter:?})",
                        kind.as_str()
                    ),
                    None,
                ));
            }
            if reg.kind == MeterKind::Storage {
                return Err(Rejection::conflict(
                    "asset_id",
                    format!("battery {a:?} already has its storage meter {meter:?}"),
                    None,
                ));
            }
        }
        Ok(self.new_event(
            v5(&format!("meter/{}", reg.meter_id)),
            stream,
            ctx,
            Event::MeterRegistered(reg.clone()),
        ))
    }

    fn decide_tariff(&self, t: &Tariff, ctx: &DecideContext) -> Result<Decision, Rejection> {
        let site = self.site(&t.site_id)?;
        if let Err((field, msg)) = t.check() {
            return Err(Rejection::validation(field, msg));
        }
        self.decide_versioned(&site.tariffs, t, ctx, Event::TariffPublished)
    }

    fn decide_emission_factors(
        &self,
        f: &EmissionFactorsPublished,
        ctx: &DecideContext,
    ) -> Result<Decision, Rejection> {
        let site = self.site(&f.site_id)?;
        self.decide_versioned(&site.emission_factors, f, ctx, Event::EmissionFactorsPublished)
    }

    /// Publishes the next version of something versioned forward by `effective_from`
    /// (tariffs, emission factors): the same terms at the same `effective_from` again are a
    /// duplicate, other terms there a conflict, an earlier `effective_from` a refusal.
    fn decide_versioned<T: Versioned>(
        &self,
        published: &[T],
        t: &T,
        ctx: &DecideContext,
        wrap: impl FnOnce(T) -> Event,
    ) -> Result<Decision, Rejection> {
        let site_id = t.site_id();
        let id_of = |version: u32| v5(&format!("{}/{}/{}", T::ID_KIND, site_id, version));
        if let Some(last) = published.last()
            && t.effective_from() <= last.effective_from()
        {
            if let Some(x) = published.iter().find(|x| x.effective_from() == t.effective_from()) {
                let mut candidate = t.clone();
                candidate.set_version(x.version());
                let id = id_of(x.version());
                if candidate == *x {
                    let (stream, version) = self.events.get(&id).cloned().unwrap_or_default();
                    return Ok(Decision::Duplicate {
                        event_id: id,
                        stream,
                        version,
                    });
                }
                return Err(Rejection::conflict(
                    "effective_from",
                    format!(
                        "{} version {} of site {:?} is already effective from {} with other terms; publish a new version with a later effective_from",
                        T::NOUN,
                        x.version(),
                        site_id.as_str(),
                        fmt_time(&x.effective_from())
                    ),
                    Some(id),
                ));
            }
            return Err(Rejection::validation(
                "effective_from",
                format!(
                    "must be after the latest {} effective_from ({}): {} are versioned forward, never rewritten",
                    T::NOUN,
                    fmt_time(&last.effective_from()),
                    T::PLURAL
                ),
            ));
        }
        let mut t = t.clone();
        let version = published.len() as u32 + 1;
        t.set_version(version);
        let stream = site_stream(site_id);
        Ok(self.new_event(id_of(version), stream, ctx, wrap(t)))
    }

    fn check_rated_power(&self, meter: &MeterRegistered, interval: &Interval, wh: EnergyWh) -> Result<(), Rejection> {
        // Wh_max = W × ms / 3,600,000 × (1 + 5 %)
        let max_wh = meter.rated_power_w * Decimal::from(interval.duration_ms()) / Decimal::from(3_600_000)
            * Decimal::from(100 + RATED_POWER_TOLERANCE_PCT)
            / Decimal::ONE_HUNDRED;
        if wh.value() > max_wh {
            return Err(Rejection::validation(
                "wh",
                format!(
                    "{wh} Wh exceeds what meter {:?} can measure in this interval: rated power {} W × {} s + {RATED_POWER_TOLERANCE_PCT} % = {} Wh",
                    meter.meter_id,
                    fmt_decimal(&meter.rated_power_w),
                    interval.duration_ms() / 1000,
                    fmt_decimal(&max_wh.round_dp(3))
                ),
            ));
        }
        Ok(())
    }

    /// Checks a change of a battery's level: `delta_in_wh` charged (stored), `delta_out_wh` dispatched.
    fn check_battery(&self, meter: &MeterRegistered, flow: Flow, delta_wh: Decimal) -> Result<(), Rejection> {
        let Some(asset) = &meter.asset_id else {
            return Ok(());
        };
        let Some(b) = self.batteries.get(asset) else {
            return Ok(());
        };
        let change = match flow {
            Flow::Stored => delta_wh * b.efficiency,
            Flow::Dispatched => -delta_wh,
            _ => return Ok(()),
        };
        let level = b.level_wh + change;
        if level < Decimal::ZERO {
            return Err(Rejection::new(
                Code::StorageUnderflow,
                "wh",
                format!(
                    "battery {asset:?} holds {} Wh; this would take it to {} Wh, below empty",
                    fmt_decimal(&b.level_wh),
                    fmt_decimal(&level)
                ),
            ));
        }
        if level > b.capacity_wh {
            return Err(Rejection::new(
                Code::StorageOverflow,
                "wh",
                format!(
                    "battery {asset:?} holds {} Wh of {} Wh capacity; this would take it to {} Wh, above full",
                    fmt_decimal(&b.level_wh),
                    fmt_decimal(&b.capacity_wh),
                    fmt_decimal(&level)
                ),
            ));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn decide_reading(
        &self,
        client_id: Option<Uuid>,
        meter_id: &MeterId,
        flow: Flow,
        interval: &Interval,
        wh: EnergyWh,
        quality: Quality,
        ctx: &DecideContext,
    ) -> Result<Decision, Rejection> {
        let meter = &self
            .meters
            .get(meter_id)
            .ok_or_else(|| Rejection::not_found("meter_id", format!("no meter {meter_id:?} is registered")))?
            .reg;
        if !meter.kind.allows(flow) {
            return Err(Rejection::validation(
                "flow",
                format!("a {} meter cannot post {flow} energy", meter.kind.as_str()),
            ));
        }
        let id = client_id.unwrap_or_else(|| reading_id(meter_id, flow, interval));
        // Identity first: a retry is recognised even if the world moved on since.
        if let Some(by_interval) = self.intervals.get(&(meter_id.clone(), flow)) {
            let before_end = by_interval.range(..interval.end).next_back();
            if let Some((start, (end, existing))) = before_end
                && *end > interval.start
            {
                let r = &self.readings[existing];
                if *start == interval.start && *end == interval.end {
                    if r.posted_wh == wh {
                        return Ok(self.duplicate_of(*existing).expect("recorded reading"));
                    }
                    return Err(Rejection::conflict(
                        "wh",
                        format!(
                            "a {flow} reading of meter {meter_id:?} for {}–{} is already recorded with {} Wh (event {existing}); correct it with correct_reading",
                            fmt_time(start),
                            fmt_time(end),
                            r.posted_wh
                        ),
                        Some(*existing),
                    ));
                }
                return Err(Rejection::conflict(
                    "start",
                    format!(
                        "the interval overlaps the recorded {flow} reading {}–{} of meter {meter_id:?} (event {existing})",
                        fmt_time(start),
                        fmt_time(end)
                    ),
                    Some(*existing),
                ));
            }
        }
        if self.readings.contains_key(&id) || self.events.contains_key(&id) {
            return Err(Rejection::conflict(
                "event_id",
                format!("event id {id} already names another event"),
                Some(id),
            ));
        }
        if let Some(from) = meter.active_from
            && interval.start < from
        {
            return Err(Rejection::validation(
                "start",
                format!(
                    "meter {meter_id:?} is active from {}; the reading starts before",
                    fmt_time(&from)
                ),
            ));
        }
        let latest = ctx.now + Duration::seconds(FUTURE_TOLERANCE_S);
        if interval.end > latest {
            return Err(Rejection::validation(
                "end",
                format!(
                    "the interval ends {}, more than {FUTURE_TOLERANCE_S} s after the ledger's clock ({})",
                    fmt_time(&interval.end),
                    fmt_time(&ctx.now)
                ),
            ));
        }
        self.check_rated_power(meter, interval, wh)?;
        self.check_battery(meter, flow, wh.value())?;
        let site = self.site(&meter.site_id)?;
        let tariff = site.tariff_at(interval.start).ok_or_else(|| {
            Rejection::validation(
                "start",
                format!(
                    "no tariff of site {:?} is in force at {}; publish one effective at or before it",
                    meter.site_id,
                    fmt_time(&interval.start)
                ),
            )
        })?;
        let price = price(tariff, &site.tz, flow, meter.source, interval, wh.value())
            .map_err(|m| Rejection::validation("wh", m))?;
        let period = Period::of(interval.start);
        let ev = Event::reading(ReadingRecorded {
            meter_id: meter_id.clone(),
            site_id: meter.site_id.clone(),
            flow,
            start: interval.start,
            end: interval.end,
            energy_wh: wh,
            quality,
            asset_id: meter.asset_id.clone(),
            tenant_id: meter.tenant_id.clone(),
            source: meter.source,
            price,
            period,
            booked_period: self.booking_period(period),
        });
        Ok(self.new_event(id, meter_stream(meter_id), ctx, ev))
    }

    fn decide_correction(
        &self,
        corrected: Uuid,
        client_id: Option<Uuid>,
        wh: EnergyWh,
        reason: &str,
        ctx: &DecideContext,
    ) -> Result<Decision, Rejection> {
        if let Some(id) = client_id
            && let Some(d) = self.duplicate_of(id)
        {
            return Ok(d);
        }
        let r = self
            .readings
            .get(&corrected)
            .ok_or_else(|| Rejection::not_found("event_id", format!("no reading event {corrected} is recorded")))?;
        // A retry of the latest correction is recognised; the same value and reason after
        // other corrections is a new correction (back to an earlier value).
        if client_id.is_none()
            && let Some((last, last_wh, last_reason)) = &r.last_correction
            && *last_wh == wh
            && last_reason == reason
        {
            return Ok(self.duplicate_of(*last).expect("a recorded correction"));
        }
        let id =
            client_id.unwrap_or_else(|| v5(&format!("correction/{corrected}/{}/{wh}/{reason}", r.corrections + 1)));
        if r.current_wh == wh {
            return Err(Rejection::validation(
                "wh",
                format!("the reading already holds {wh} Wh; a correction must change it"),
            ));
        }
        let meter = &self
            .meters
            .get(&r.meter_id)
            .ok_or_else(|| {
                Rejection::not_found(
                    "event_id",
                    format!("the reading's meter {:?} is not registered", r.meter_id),
                )
            })?
            .reg;
        self.check_rated_power(meter, &r.interval, wh)?;
        let delta_wh = wh.value() - r.current_wh.value();
        self.check_battery(meter, r.flow, delta_wh)?;
        let site = self.site(&meter.site_id)?;
        let tariff = site
            .tariffs
            .iter()
            .find(|x| x.tariff_version == r.tariff_version)
            .ok_or_else(|| {
                Rejection::not_found(
                    "event_id",
                    format!("tariff version {} of the reading is not recorded", r.tariff_version),
                )
            })?;
        let new_price: Price = price(tariff, &site.tz, r.flow, meter.source, &r.interval, wh.value())
            .map_err(|m| Rejection::validation("wh", m))?;
        let period = Period::of(r.interval.start);
        let ev = Event::ReadingCorrected(ReadingCorrected {
            corrected_event_id: corrected,
            meter_id: r.meter_id.clone(),
            site_id: meter.site_id.clone(),
            flow: r.flow,
            start: r.interval.start,
            end: r.interval.end,
            previous_wh: r.current_wh,
            energy_wh: wh,
            delta_wh: delta_wh.normalize(),
            previous_amount_eu: r.current_eu.normalize(),
            delta_eu: round_eu(new_price.amount_eu - r.current_eu).normalize(),
            price: new_price,
            reason: reason.to_string(),
            asset_id: meter.asset_id.clone(),
            tenant_id: meter.tenant_id.clone(),
            source: meter.source,
            period,
            booked_period: self.booking_period(period),
        });
        Ok(self.new_event(id, meter_stream(&r.meter_id), ctx, ev))
    }

    /// Applies a recorded event. Never fails: an event that does not fit (a tampered log) is
    /// folded as far as it makes sense; the audit reports such events on its own.
    pub fn evolve(&mut self, event_id: Uuid, stream: &str, version: u64, event: &Event) {
        self.stream_versions.insert(stream.to_string(), version);
        let mut remember = true;
        match event {
            Event::SiteRegistered(e) => {
                let tz = e.time_zone.parse::<Tz>().unwrap_or(Tz::UTC);
                self.sites.insert(
                    e.site_id.clone(),
                    SiteState {
                        reg: e.clone(),
                        tz,
                        tariffs: Vec::new(),
                        emission_factors: Vec::new(),
                    },
                );
            }
            Event::TariffPublished(t) => {
                if let Some(s) = self.sites.get_mut(&t.site_id) {
                    s.tariffs.push(t.clone());
                }
            }
            Event::EmissionFactorsPublished(f) => {
                if let Some(s) = self.sites.get_mut(&f.site_id) {
                    s.emission_factors.push(f.clone());
                }
            }
            Event::PeriodClosed(e) => {
                self.closed.insert(e.period);
            }
            Event::MeterRegistered(m) => {
                if let Some(a) = &m.asset_id {
                    self.assets
                        .entry(a.clone())
                        .or_insert_with(|| (m.kind, m.site_id.clone(), m.meter_id.clone()));
                    if m.kind == MeterKind::Storage {
                        self.batteries.insert(
                            a.clone(),
                            BatteryState {
                                capacity_wh: m.capacity_wh.map(|c| c.value()).unwrap_or_default(),
                                efficiency: m.round_trip_efficiency_pct.unwrap_or(Decimal::ONE_HUNDRED)
                                    / Decimal::ONE_HUNDRED,
                                level_wh: m.initial_wh.map(|c| c.value()).unwrap_or_default(),
                            },
                        );
                    }
                }
                self.meters.insert(m.meter_id.clone(), MeterState { reg: m.clone() });
            }
            Event::EnergyGenerated(r)
            | Event::EnergyStored(r)
            | Event::EnergyDispatched(r)
            | Event::EnergyConsumed(r) => {
                remember = false;
                self.apply_energy(
                    r.flow,
                    r.asset_id.as_ref(),
                    r.tenant_id.as_ref(),
                    r.energy_wh.value(),
                    r.price.amount_eu,
                );
                self.intervals
                    .entry((r.meter_id.clone(), r.flow))
                    .or_default()
                    .insert(r.start, (r.end, event_id));
                self.readings.insert(
                    event_id,
                    ReadingState {
                        meter_id: r.meter_id.clone(),
                        flow: r.flow,
                        interval: r.interval(),
                        posted_wh: r.energy_wh,
                        current_wh: r.energy_wh,
                        current_eu: r.price.amount_eu,
                        tariff_version: r.price.tariff_version,
                        stream: stream.to_string(),
                        version,
                        corrections: 0,
                        last_correction: None,
                    },
                );
            }
            Event::ReadingCorrected(c) => {
                self.apply_energy(
                    c.flow,
                    c.asset_id.as_ref(),
                    c.tenant_id.as_ref(),
                    c.delta_wh,
                    c.delta_eu,
                );
                if let Some(r) = self.readings.get_mut(&c.corrected_event_id) {
                    r.current_wh = c.energy_wh;
                    r.current_eu = c.price.amount_eu;
                    r.corrections += 1;
                    r.last_correction = Some((event_id, c.energy_wh, c.reason.clone()));
                }
            }
            Event::TenantRegistered(t) => {
                self.tenants.insert(
                    t.tenant_id.clone(),
                    TenantState {
                        reg: t.clone(),
                        balance_eu: Decimal::ZERO,
                    },
                );
            }
            Event::CreditsIssued(c) => {
                if let Some(t) = self.tenants.get_mut(&c.tenant_id) {
                    t.balance_eu += c.amount_eu.value();
                }
            }
            Event::CreditsTransferred(c) => {
                if let Some(t) = self.tenants.get_mut(&c.from_tenant) {
                    t.balance_eu -= c.amount_eu.value();
                }
                if let Some(t) = self.tenants.get_mut(&c.to_tenant) {
                    t.balance_eu += c.amount_eu.value();
                }
            }
        }
        if remember {
            self.events.insert(event_id, (stream.to_string(), version));
        }
    }

    fn apply_energy(
        &mut self,
        flow: Flow,
        asset: Option<&AssetId>,
        tenant: Option<&TenantId>,
        wh: Decimal,
        eu: Decimal,
    ) {
        match flow {
            Flow::Stored | Flow::Dispatched => {
                if let Some(b) = asset.and_then(|a| self.batteries.get_mut(a)) {
                    if flow == Flow::Stored {
                        b.level_wh += wh * b.efficiency;
                    } else {
                        b.level_wh -= wh;
                    }
                }
            }
            Flow::Consumed => {
                if let Some(t) = tenant.and_then(|t| self.tenants.get_mut(t)) {
                    t.balance_eu -= eu;
                }
            }
            Flow::Generated => {}
        }
    }
}
