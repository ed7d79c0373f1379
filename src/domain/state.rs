//! The write model: `decide(command, &state)` and `evolve(&mut state, &event)`.
//!
//! The state holds exactly what deciding needs: registered entities, tariffs, every
//! reading's identity and current value (for duplicates, conflicts, overlaps and
//! corrections), battery levels, tenant balances, stream versions and closed periods.
//! Random-key lookups live here, in memory, so the store's hot path stays a pure append.

use super::commands::Command;
use super::error::{Code, Rejection};
use super::events::*;
use super::ids::{AssetId, HoldId, JobId, MeterId, SiteId, TenantId};
use super::quantity::{AmountEu, EnergyWh, fmt_decimal, round_eu};
pub use super::readings::{ReadingState, Readings};
use super::tariff::{Flow, Price, Tariff, price};
use super::time::{Interval, Period, fmt_time};
use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use uuid::Uuid;

/// Namespace of the UUIDv5 identities the ledger derives (readings, commands).
pub const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1e_2c3a_9b7d_4e21_8a55_77c0_1d3e_9f42);
/// A reading may end at most this far after the ledger's clock (meters' clocks drift).
pub const FUTURE_TOLERANCE_S: i64 = 300;
/// A reading may exceed rated power × duration by this many percent (meter accuracy).
pub const RATED_POWER_TOLERANCE_PCT: i64 = 5;
/// A hold may be placed for at most this many days ahead.
pub const HOLD_DAYS_MAX: i64 = 366;

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
    /// Shared with the store's writer, which hands it to the projections (`store::Memo`).
    pub event: std::sync::Arc<Event>,
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteState {
    pub reg: SiteRegistered,
    #[serde(with = "tz_name")]
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatteryState {
    pub capacity_wh: Decimal,
    pub efficiency: Decimal,
    /// Energy held: initial + stored × efficiency − dispatched.
    pub level_wh: Decimal,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeterState {
    pub reg: MeterRegistered,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TenantState {
    pub reg: TenantRegistered,
    /// What the tenant holds: credits − charges ± transfers ± corrections.
    pub balance_eu: Decimal,
    /// What is left of its active holds (reserved, not yet charged or freed).
    pub held_eu: Decimal,
    /// Its active holds, by expiry.
    pub holds: HoldsByExpiry,
    /// Spending limit settings: effective period → (limit, the event that set it).
    pub limits: BTreeMap<Period, (Option<AmountEu>, Uuid)>,
    /// How many limit settings it has had (names the next one's id).
    pub limit_settings: u32,
    /// EU charged per booked period (consumption, corrections, captures, transfers out),
    /// with the last event that charged it.
    pub charged: BTreeMap<Period, (Decimal, Uuid)>,
    /// Periods whose limit was exceeded and flagged (`SpendingLimitExceeded` recorded).
    pub exceeded: BTreeSet<Period>,
}

impl TenantState {
    /// The limit in force for a period: the latest setting effective at or before it.
    pub fn limit_at(&self, p: Period) -> Option<AmountEu> {
        self.limits.range(..=p).next_back().and_then(|(_, (l, _))| *l)
    }

    pub fn charged_in(&self, p: Period) -> Decimal {
        self.charged.get(&p).map_or(Decimal::ZERO, |c| c.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldStatus {
    Active,
    Released,
    Expired,
}

impl HoldStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Active => "active",
            HoldStatus::Released => "released",
            HoldStatus::Expired => "expired",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HoldState {
    pub placed: HoldPlaced,
    pub event_id: Uuid,
    /// EU captured by commands, and drawn by the job's consumption.
    pub captured_eu: Decimal,
    pub drawn_eu: Decimal,
    pub status: HoldStatus,
    /// The event that released or expired it.
    pub closed_by: Option<Uuid>,
    pub captures: u32,
    /// The latest capture: (event id, amount).
    pub last_capture: Option<(Uuid, AmountEu)>,
    /// Every capture's event id (a `capture_id` retried must name one of them).
    pub capture_ids: BTreeSet<Uuid>,
}

impl HoldState {
    /// What is left to capture or draw.
    pub fn remaining_eu(&self) -> Decimal {
        self.placed.amount_eu.value() - self.captured_eu - self.drawn_eu
    }

    /// Whether it can still be captured or drawn at `now`.
    pub fn active_at(&self, now: DateTime<Utc>) -> bool {
        self.status == HoldStatus::Active && self.placed.expires_at > now
    }
}

/// Holds by expiry time (the order they expire and a job draws on them).
pub type HoldsByExpiry = BTreeSet<(DateTime<Utc>, HoldId)>;

/// The write model. Everything but the readings is saved as JSON in the ledger's snapshot
/// (`ledger::snapshot`); the readings have a binary encoding of their own.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LedgerState {
    pub sites: foldhash::HashMap<SiteId, SiteState>,
    pub meters: foldhash::HashMap<MeterId, MeterState>,
    pub tenants: foldhash::HashMap<TenantId, TenantState>,
    pub batteries: foldhash::HashMap<AssetId, BatteryState>,
    /// Which kind and site each asset was registered with.
    pub assets: foldhash::HashMap<AssetId, (MeterKind, SiteId, MeterId)>,
    /// Every reading: by event id, and by meter, flow and interval.
    #[serde(skip)]
    pub readings: Readings,
    /// Events other than readings, by id: (stream, version).
    pub events: foldhash::HashMap<Uuid, (String, u64)>,
    /// (These three maps are looked up for every reading: hashed with foldhash, not SipHash.)
    pub stream_versions: foldhash::HashMap<String, u64>,
    pub closed: BTreeSet<Period>,
    pub holds: HashMap<HoldId, HoldState>,
    /// Every active hold, by expiry: the ledger records `HoldExpired` for those due.
    pub expiries: HoldsByExpiry,
    /// Tenants and periods whose charges passed the limit and are not flagged yet, with the
    /// event that took them past it.
    #[serde(with = "as_pairs")]
    pub over_limit: BTreeMap<(TenantId, Period), Uuid>,
    /// Active holds of each tenant's job, by expiry (the order a job's consumption draws).
    #[serde(with = "as_pairs")]
    pub job_holds: HashMap<(TenantId, JobId), HoldsByExpiry>,
}

/// A time zone by its IANA name.
mod tz_name {
    use super::Tz;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(tz: &Tz, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(tz.name())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Tz, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A map whose keys are not strings (JSON objects need string keys), as a list of pairs.
mod as_pairs {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    pub fn serialize<'a, S, M, K, V>(m: &'a M, s: S) -> Result<S::Ok, S::Error>
    where
        S: Serializer,
        &'a M: IntoIterator<Item = (&'a K, &'a V)>,
        K: Serialize + 'a,
        V: Serialize + 'a,
    {
        s.collect_seq(m)
    }
    pub fn deserialize<'de, D, M, K, V>(d: D) -> Result<M, D::Error>
    where
        D: Deserializer<'de>,
        M: FromIterator<(K, V)>,
        K: Deserialize<'de>,
        V: Deserialize<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

/// An amount already known to fit (sums and differences of amounts of at most 6 dp).
fn eu(d: Decimal) -> AmountEu {
    AmountEu::new(d).unwrap_or(AmountEu::ZERO)
}

fn held_note(held: Decimal) -> String {
    if held.is_zero() {
        String::new()
    } else {
        format!(" of which {} EU are held", fmt_decimal(&held))
    }
}

/// The refusal for a capture or release of a hold that can no longer be used.
fn closed_hold(h: &HoldState) -> Rejection {
    let why = match h.status {
        HoldStatus::Released => "was released".to_string(),
        _ => format!("expired at {}", fmt_time(&h.placed.expires_at)),
    };
    Rejection::new(
        Code::HoldClosed,
        "hold_id",
        format!(
            "hold {:?} {why}; it can no longer be captured or released",
            h.placed.hold_id
        ),
    )
    .with_existing(h.closed_by)
}

/// `Uuid::new_v5(&ID_NAMESPACE, name)`, with the SHA-1 of the `sha1` crate, which uses the
/// CPU's SHA instructions where it has them (uuid's own SHA-1 showed in the deciding
/// thread's profile: every reading's id is one). A test checks both give the same ids.
fn v5(name: &str) -> Uuid {
    use sha1::Digest;
    let digest = sha1::Sha1::new()
        .chain_update(ID_NAMESPACE.as_bytes())
        .chain_update(name.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// The identity of a reading: `(meter, flow, interval)`.
///
/// The name `reading/{meter}/{flow}/{start}/{end}` (times as [`fmt_time`] writes them) is
/// built in a buffer reused by the thread, without allocating.
pub fn reading_id(meter: &MeterId, flow: Flow, interval: &Interval) -> Uuid {
    thread_local! {
        static NAME: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    NAME.with(|name| {
        let mut name = name.borrow_mut();
        name.clear();
        name.push_str("reading/");
        name.push_str(meter.as_str());
        name.push('/');
        name.push_str(flow.as_str());
        name.push('/');
        crate::domain::time::write_time(&mut name, &interval.start);
        name.push('/');
        crate::domain::time::write_time(&mut name, &interval.end);
        v5(&name)
    })
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
        let (stream, version) = match self.readings.locate(&event_id) {
            Some(found) => found,
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
            event: std::sync::Arc::new(event),
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
                job_id,
            } => self.decide_reading(
                *event_id,
                meter_id,
                *flow,
                interval,
                *energy_wh,
                *quality,
                job_id.as_ref(),
                ctx,
            ),
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
                let held = self.held_at(from, ctx.now);
                if from.balance_eu - held < amount_eu.value() {
                    return Err(Rejection::new(
                        Code::InsufficientCredits,
                        "amount_eu",
                        format!(
                            "tenant {from_tenant:?} holds {} EU{}; a transfer of {amount_eu} EU would overdraw it",
                            fmt_decimal(&from.balance_eu),
                            held_note(held)
                        ),
                    ));
                }
                self.check_limit(from, ctx.now, amount_eu.value(), "amount_eu")?;
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
            Command::PlaceHold {
                hold_id,
                tenant_id,
                amount_eu,
                expires_at,
                memo,
                job_id,
            } => {
                let placed = HoldPlaced {
                    hold_id: hold_id.clone(),
                    tenant_id: tenant_id.clone(),
                    amount_eu: *amount_eu,
                    expires_at: *expires_at,
                    memo: memo.clone(),
                    job_id: job_id.clone(),
                    booked_period: self.booking_period(Period::of(ctx.now)),
                };
                self.decide_place_hold(placed, ctx)
            }
            Command::CaptureHold {
                hold_id,
                tenant_id,
                amount_eu,
                capture_id,
            } => self.decide_capture(hold_id, tenant_id.as_ref(), *amount_eu, *capture_id, ctx),
            Command::ReleaseHold { hold_id, tenant_id } => {
                let h = self.hold_of(hold_id, tenant_id.as_ref())?;
                match h.status {
                    HoldStatus::Released => {
                        return Ok(self
                            .duplicate_of(h.closed_by.expect("a released hold names its release"))
                            .expect("a recorded release"));
                    }
                    HoldStatus::Expired => return Err(closed_hold(h)),
                    HoldStatus::Active if !h.active_at(ctx.now) => return Err(closed_hold(h)),
                    HoldStatus::Active => {}
                }
                let ev = Event::HoldReleased(HoldClosed {
                    hold_id: hold_id.clone(),
                    tenant_id: h.placed.tenant_id.clone(),
                    released_eu: eu(h.remaining_eu()),
                    expires_at: h.placed.expires_at,
                    job_id: h.placed.job_id.clone(),
                    booked_period: self.booking_period(Period::of(ctx.now)),
                });
                Ok(self.new_event(
                    v5(&format!("hold-release/{hold_id}")),
                    tenant_stream(&h.placed.tenant_id),
                    ctx,
                    ev,
                ))
            }
            Command::SetSpendingLimit {
                tenant_id,
                limit_eu,
                period,
            } => {
                let t = self.tenant("tenant_id", tenant_id)?;
                if let Some((current, id)) = t.limits.get(period)
                    && current == limit_eu
                {
                    return Ok(self.duplicate_of(*id).expect("a recorded limit"));
                }
                if self.closed.contains(period) {
                    return Err(Rejection::validation(
                        "period",
                        format!("period {period} is closed; a limit applies from an open period on"),
                    ));
                }
                let shown = limit_eu.map_or("none".to_string(), |l| l.to_string());
                let id = v5(&format!(
                    "spending-limit/{tenant_id}/{period}/{}/{shown}",
                    t.limit_settings + 1
                ));
                let ev = Event::SpendingLimitSet(SpendingLimitSet {
                    tenant_id: tenant_id.clone(),
                    period: *period,
                    limit_eu: *limit_eu,
                });
                Ok(self.new_event(id, tenant_stream(tenant_id), ctx, ev))
            }
        }
    }

    /// EU of a tenant's holds still active at `now` (an expiry not yet recorded does not
    /// count: deciding never relies on the caller having recorded it).
    pub fn held_at(&self, t: &TenantState, now: DateTime<Utc>) -> Decimal {
        // `held_eu` counts every active hold; take off those already past due (none, when the
        // ledger recorded what was due before deciding), so this costs O(due), not O(holds).
        let past_due: Decimal = t
            .holds
            .iter()
            .take_while(|(at, _)| *at <= now)
            .filter_map(|(_, id)| self.holds.get(id))
            .map(HoldState::remaining_eu)
            .sum();
        t.held_eu - past_due
    }

    /// What a tenant may still spend or reserve at `now`: balance − active holds.
    pub fn available_eu(&self, tenant: &TenantId, now: DateTime<Utc>) -> Option<Decimal> {
        let t = self.tenants.get(tenant)?;
        Some(t.balance_eu - self.held_at(t, now))
    }

    /// Refuses `amount` more of charges or holds that would take the tenant past its limit
    /// for the current period: charged + held + amount must stay within it.
    fn check_limit(&self, t: &TenantState, now: DateTime<Utc>, amount: Decimal, field: &str) -> Result<(), Rejection> {
        let p = self.booking_period(Period::of(now));
        let Some(limit) = t.limit_at(p) else {
            return Ok(());
        };
        let charged = t.charged_in(p);
        let held = self.held_at(t, now);
        if charged + held + amount > limit.value() {
            return Err(Rejection::new(
                Code::SpendingLimit,
                field,
                format!(
                    "tenant {:?} may be charged at most {limit} EU in {p}; {} EU are charged and {} EU held, so {} EU more would exceed its spending limit",
                    t.reg.tenant_id,
                    fmt_decimal(&charged),
                    fmt_decimal(&held),
                    fmt_decimal(&amount)
                ),
            ));
        }
        Ok(())
    }

    /// A hold by id, refused as not found when it is unknown or (with `tenant`) another
    /// tenant's.
    fn hold_of(&self, hold_id: &HoldId, tenant: Option<&TenantId>) -> Result<&HoldState, Rejection> {
        match self.holds.get(hold_id) {
            Some(h) if tenant.is_none_or(|t| *t == h.placed.tenant_id) => Ok(h),
            _ => Err(Rejection::not_found(
                "hold_id",
                match tenant {
                    Some(t) => format!("tenant {t:?} has no hold {hold_id:?}"),
                    None => format!("no hold {hold_id:?} is placed"),
                },
            )),
        }
    }

    fn decide_place_hold(&self, placed: HoldPlaced, ctx: &DecideContext) -> Result<Decision, Rejection> {
        let hold_id = &placed.hold_id;
        if let Some(h) = self.holds.get(hold_id) {
            let p = &h.placed;
            if p.tenant_id != placed.tenant_id {
                return Err(Rejection::conflict(
                    "hold_id",
                    format!("hold_id {hold_id:?} is already used by another hold; choose another"),
                    None,
                ));
            }
            if (&p.amount_eu, &p.expires_at, &p.memo, &p.job_id)
                == (&placed.amount_eu, &placed.expires_at, &placed.memo, &placed.job_id)
            {
                return Ok(self.duplicate_of(h.event_id).expect("a recorded hold"));
            }
            return Err(Rejection::conflict(
                "hold_id",
                format!("hold {hold_id:?} is already placed with other terms"),
                Some(h.event_id),
            ));
        }
        let t = self.tenant("tenant_id", &placed.tenant_id)?;
        if placed.expires_at <= ctx.now {
            return Err(Rejection::validation(
                "expires_at",
                format!(
                    "must be after the ledger's clock ({}), got {}",
                    fmt_time(&ctx.now),
                    fmt_time(&placed.expires_at)
                ),
            ));
        }
        if placed.expires_at > ctx.now + Duration::days(HOLD_DAYS_MAX) {
            return Err(Rejection::validation(
                "expires_at",
                format!("a hold lasts at most {HOLD_DAYS_MAX} days"),
            ));
        }
        let amount = placed.amount_eu.value();
        let held = self.held_at(t, ctx.now);
        let available = t.balance_eu - held;
        if amount > available {
            return Err(Rejection::new(
                Code::InsufficientCredits,
                "amount_eu",
                format!(
                    "tenant {:?} holds {} EU{}, so {} EU are available; a hold of {} EU would overdraw it",
                    placed.tenant_id,
                    fmt_decimal(&t.balance_eu),
                    held_note(held),
                    fmt_decimal(&available),
                    placed.amount_eu
                ),
            ));
        }
        self.check_limit(t, ctx.now, amount, "amount_eu")?;
        let id = v5(&format!("hold/{hold_id}"));
        if self.events.contains_key(&id) {
            return Err(Rejection::conflict(
                "hold_id",
                format!("event id {id} already names another event"),
                Some(id),
            ));
        }
        let stream = tenant_stream(&placed.tenant_id);
        Ok(self.new_event(id, stream, ctx, Event::HoldPlaced(placed)))
    }

    fn decide_capture(
        &self,
        hold_id: &HoldId,
        tenant: Option<&TenantId>,
        amount: AmountEu,
        client_id: Option<Uuid>,
        ctx: &DecideContext,
    ) -> Result<Decision, Rejection> {
        let h = self.hold_of(hold_id, tenant)?;
        if let Some(id) = client_id
            && let Some(d) = self.duplicate_of(id)
        {
            if !h.capture_ids.contains(&id) {
                return Err(Rejection::conflict(
                    "capture_id",
                    format!("capture_id {id} names another event, not a capture of hold {hold_id:?}"),
                    Some(id),
                ));
            }
            return Ok(d);
        }
        // A retry of the latest capture is recognised; to capture the same amount twice,
        // give each its own capture_id.
        if client_id.is_none()
            && let Some((last, last_amount)) = &h.last_capture
            && *last_amount == amount
        {
            return Ok(self.duplicate_of(*last).expect("a recorded capture"));
        }
        if !h.active_at(ctx.now) {
            return Err(closed_hold(h));
        }
        let remaining = h.remaining_eu();
        if amount.value() > remaining {
            return Err(Rejection::new(
                Code::InsufficientHold,
                "amount_eu",
                format!(
                    "hold {hold_id:?} has {} EU left of {} EU; it cannot capture {amount} EU",
                    fmt_decimal(&remaining),
                    h.placed.amount_eu
                ),
            ));
        }
        let id = client_id.unwrap_or_else(|| v5(&format!("hold-capture/{hold_id}/{}/{amount}", h.captures + 1)));
        if self.readings.contains(&id) || self.events.contains_key(&id) {
            return Err(Rejection::conflict(
                "capture_id",
                format!("event id {id} already names another event"),
                Some(id),
            ));
        }
        let ev = Event::HoldCaptured(HoldCaptured {
            hold_id: hold_id.clone(),
            tenant_id: h.placed.tenant_id.clone(),
            amount_eu: amount,
            remaining_eu: eu(remaining - amount.value()),
            job_id: h.placed.job_id.clone(),
            booked_period: self.booking_period(Period::of(ctx.now)),
        });
        Ok(self.new_event(id, tenant_stream(&h.placed.tenant_id), ctx, ev))
    }

    /// The next event the ledger owes the log at `now`, before deciding anything else: a
    /// `HoldExpired` for the hold that expired first, else a `SpendingLimitExceeded` for a
    /// tenant and period past their limit. `None` when nothing is due. The caller records it,
    /// folds it, and asks again.
    pub fn next_due(&self, now: DateTime<Utc>) -> Option<NewEvent> {
        let ctx = DecideContext { now, head: None };
        if let Some((at, id)) = self.expiries.first()
            && *at <= now
            && let Some(h) = self.holds.get(id)
        {
            let ev = Event::HoldExpired(HoldClosed {
                hold_id: id.clone(),
                tenant_id: h.placed.tenant_id.clone(),
                released_eu: eu(h.remaining_eu()),
                expires_at: h.placed.expires_at,
                job_id: h.placed.job_id.clone(),
                booked_period: self.booking_period(Period::of(now)),
            });
            let Decision::Append(new) = self.new_event(
                v5(&format!("hold-expired/{id}")),
                tenant_stream(&h.placed.tenant_id),
                &ctx,
                ev,
            ) else {
                unreachable!("new_event appends")
            };
            return Some(*new);
        }
        let ((tenant, period), cause) = self.over_limit.first_key_value()?;
        let t = self.tenants.get(tenant)?;
        let ev = Event::SpendingLimitExceeded(SpendingLimitExceeded {
            tenant_id: tenant.clone(),
            period: *period,
            limit_eu: t.limit_at(*period)?,
            charged_eu: t.charged_in(*period).normalize(),
            caused_by: *cause,
        });
        let Decision::Append(new) = self.new_event(
            v5(&format!("spending-limit-exceeded/{tenant}/{period}")),
            tenant_stream(tenant),
            &ctx,
            ev,
        ) else {
            unreachable!("new_event appends")
        };
        Some(*new)
    }

    /// What a job's consumption of `charge` EU draws from the tenant's active holds for that
    /// job at `now`: soonest expiry first, each up to what is left of it.
    fn hold_draws(&self, tenant: &TenantId, job: &JobId, charge: Decimal, now: DateTime<Utc>) -> Vec<HoldDraw> {
        let mut left = charge;
        let mut draws = Vec::new();
        let Some(holds) = self.job_holds.get(&(tenant.clone(), job.clone())) else {
            return draws;
        };
        for (_, id) in holds {
            if left <= Decimal::ZERO {
                break;
            }
            let Some(h) = self.holds.get(id) else { continue };
            if !h.active_at(now) {
                continue;
            }
            let take = h.remaining_eu().min(left);
            if take > Decimal::ZERO {
                left -= take;
                draws.push(HoldDraw {
                    hold_id: id.clone(),
                    amount_eu: eu(take),
                });
            }
        }
        draws
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
        job_id: Option<&JobId>,
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
        if job_id.is_some() && flow != Flow::Consumed {
            return Err(Rejection::validation(
                "job_id",
                format!("only consumed energy is charged to a job; a {flow} reading names none"),
            ));
        }
        let id = client_id.unwrap_or_else(|| reading_id(meter_id, flow, interval));
        // Identity first: a retry is recognised even if the world moved on since.
        if let Some((start, end, existing)) = self.readings.overlapping(meter_id, flow, interval) {
            let (start, end, existing) = (&start, &end, &existing);
            let r = self.readings.get(existing).expect("an indexed reading is recorded");
            if *start == interval.start && *end == interval.end {
                if r.posted_wh == wh && r.job_id.as_ref() == job_id {
                    return Ok(self.duplicate_of(*existing).expect("recorded reading"));
                }
                if r.posted_wh == wh {
                    return Err(Rejection::conflict(
                        "job_id",
                        format!(
                            "this reading is already recorded for job {} (event {existing})",
                            r.job_id.as_ref().map_or("(none)".to_string(), |j| format!("{j:?}"))
                        ),
                        Some(*existing),
                    ));
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
        if self.readings.contains(&id) || self.events.contains_key(&id) {
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
        let hold_draws = match (job_id, &meter.tenant_id) {
            (Some(job), Some(tenant)) => self.hold_draws(tenant, job, price.amount_eu, ctx.now),
            _ => Vec::new(),
        };
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
            job_id: job_id.cloned(),
            hold_draws,
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
            job_id: r.job_id.clone(),
        });
        Ok(self.new_event(id, meter_stream(&r.meter_id), ctx, ev))
    }

    /// Applies a recorded event. Never fails: an event that does not fit (a tampered log) is
    /// folded as far as it makes sense; the audit reports such events on its own.
    pub fn evolve(&mut self, event_id: Uuid, stream: &str, version: u64, event: &Event) {
        match self.stream_versions.get_mut(stream) {
            Some(v) => *v = version,
            None => {
                self.stream_versions.insert(stream.to_string(), version);
            }
        }
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
                if let (Flow::Consumed, Some(t)) = (r.flow, &r.tenant_id) {
                    for d in &r.hold_draws {
                        if let Some(h) = self.holds.get_mut(&d.hold_id) {
                            h.drawn_eu += d.amount_eu.value();
                        }
                        if let Some(ts) = self.tenants.get_mut(t) {
                            ts.held_eu -= d.amount_eu.value();
                        }
                    }
                    self.charge(t, r.booked_period, r.price.amount_eu, event_id);
                }
                self.readings.insert(event_id, r, version);
            }
            Event::ReadingCorrected(c) => {
                self.apply_energy(
                    c.flow,
                    c.asset_id.as_ref(),
                    c.tenant_id.as_ref(),
                    c.delta_wh,
                    c.delta_eu,
                );
                if let (Flow::Consumed, Some(t)) = (c.flow, &c.tenant_id) {
                    self.charge(t, c.booked_period, c.delta_eu, event_id);
                }
                self.readings.correct(event_id, c);
            }
            Event::TenantRegistered(t) => {
                self.tenants.insert(
                    t.tenant_id.clone(),
                    TenantState {
                        reg: t.clone(),
                        balance_eu: Decimal::ZERO,
                        held_eu: Decimal::ZERO,
                        holds: BTreeSet::new(),
                        limits: BTreeMap::new(),
                        limit_settings: 0,
                        charged: BTreeMap::new(),
                        exceeded: BTreeSet::new(),
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
                self.charge(&c.from_tenant, c.booked_period, c.amount_eu.value(), event_id);
            }
            Event::HoldPlaced(p) => {
                if let Some(t) = self.tenants.get_mut(&p.tenant_id) {
                    t.held_eu += p.amount_eu.value();
                    t.holds.insert((p.expires_at, p.hold_id.clone()));
                }
                self.expiries.insert((p.expires_at, p.hold_id.clone()));
                if let Some(job) = &p.job_id {
                    self.job_holds
                        .entry((p.tenant_id.clone(), job.clone()))
                        .or_default()
                        .insert((p.expires_at, p.hold_id.clone()));
                }
                self.holds.insert(
                    p.hold_id.clone(),
                    HoldState {
                        placed: p.clone(),
                        event_id,
                        captured_eu: Decimal::ZERO,
                        drawn_eu: Decimal::ZERO,
                        status: HoldStatus::Active,
                        closed_by: None,
                        captures: 0,
                        last_capture: None,
                        capture_ids: BTreeSet::new(),
                    },
                );
            }
            Event::HoldCaptured(c) => {
                let amount = c.amount_eu.value();
                if let Some(h) = self.holds.get_mut(&c.hold_id) {
                    h.captured_eu += amount;
                    h.captures += 1;
                    h.last_capture = Some((event_id, c.amount_eu));
                    h.capture_ids.insert(event_id);
                }
                if let Some(t) = self.tenants.get_mut(&c.tenant_id) {
                    t.held_eu -= amount;
                    t.balance_eu -= amount;
                }
                self.charge(&c.tenant_id, c.booked_period, amount, event_id);
            }
            Event::HoldReleased(c) | Event::HoldExpired(c) => {
                let status = if matches!(event, Event::HoldExpired(_)) {
                    HoldStatus::Expired
                } else {
                    HoldStatus::Released
                };
                if let Some(h) = self.holds.get_mut(&c.hold_id) {
                    let left = h.remaining_eu();
                    h.status = status;
                    h.closed_by = Some(event_id);
                    let key = (h.placed.expires_at, c.hold_id.clone());
                    self.expiries.remove(&key);
                    if let Some(job) = &h.placed.job_id {
                        let jk = (h.placed.tenant_id.clone(), job.clone());
                        if let Some(set) = self.job_holds.get_mut(&jk) {
                            set.remove(&key);
                            if set.is_empty() {
                                self.job_holds.remove(&jk);
                            }
                        }
                    }
                    if let Some(t) = self.tenants.get_mut(&c.tenant_id) {
                        t.held_eu -= left;
                        t.holds.remove(&key);
                    }
                }
            }
            Event::SpendingLimitSet(l) => {
                if let Some(t) = self.tenants.get_mut(&l.tenant_id) {
                    t.limits.insert(l.period, (l.limit_eu, event_id));
                    t.limit_settings += 1;
                    let periods: Vec<Period> = t.charged.range(l.period..).map(|(p, _)| *p).collect();
                    for p in periods {
                        self.watch_limit(&l.tenant_id, p, event_id);
                    }
                }
            }
            Event::SpendingLimitExceeded(x) => {
                if let Some(t) = self.tenants.get_mut(&x.tenant_id) {
                    t.exceeded.insert(x.period);
                }
                self.over_limit.remove(&(x.tenant_id.clone(), x.period));
            }
        }
        if remember {
            self.events.insert(event_id, (stream.to_string(), version));
        }
    }

    /// Adds a charge to a tenant's period and checks it against the limit.
    fn charge(&mut self, tenant: &TenantId, period: Period, eu: Decimal, cause: Uuid) {
        if let Some(t) = self.tenants.get_mut(tenant) {
            let c = t.charged.entry(period).or_insert((Decimal::ZERO, cause));
            c.0 += eu;
            c.1 = cause;
            self.watch_limit(tenant, period, cause);
        }
    }

    /// Keeps `over_limit` true to the tenant's charges and limit for a period.
    fn watch_limit(&mut self, tenant: &TenantId, period: Period, cause: Uuid) {
        let Some(t) = self.tenants.get(tenant) else { return };
        let over =
            !t.exceeded.contains(&period) && t.limit_at(period).is_some_and(|l| t.charged_in(period) > l.value());
        let key = (tenant.clone(), period);
        if over {
            self.over_limit.entry(key).or_insert(cause);
        } else {
            self.over_limit.remove(&key);
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Timelike};

    /// The allocation-free name is the one `format!` and `fmt_time` build, and the id is
    /// the one uuid's own v5 gives that name.
    #[test]
    fn reading_id_names_the_reading_as_fmt_time_writes_its_times() {
        let meter = MeterId::parse("m-000001").unwrap();
        let base = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut times = vec![
            base,
            Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap(),
        ];
        for nanos in [
            1,
            999,
            1_000,
            120_000,
            1_000_000,
            5_000_000,
            123_456_789,
            999_999_999,
            1_500_000_000,
        ] {
            times.push(base.with_nanosecond(nanos).unwrap_or(base));
        }
        // A leap second.
        let leap = Utc.with_ymd_and_hms(2026, 6, 30, 23, 59, 59).unwrap();
        times.push(leap.with_nanosecond(1_500_000_000).unwrap());
        for (i, start) in times.iter().enumerate() {
            let end = times[(i + 3) % times.len()];
            for flow in Flow::ALL {
                let interval = Interval { start: *start, end };
                let expected = Uuid::new_v5(
                    &ID_NAMESPACE,
                    format!(
                        "reading/{meter}/{flow}/{}/{}",
                        fmt_time(&interval.start),
                        fmt_time(&interval.end)
                    )
                    .as_bytes(),
                );
                assert_eq!(reading_id(&meter, flow, &interval), expected, "{interval:?}");
            }
        }
    }
}
