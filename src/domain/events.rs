//! Events: the facts the ledger records, named in the past tense. Their JSON is public
//! contract; each type has a JSON Schema in `schemas/`.

use super::ids::{AssetId, HoldId, JobId, MeterId, SiteId, TenantId};
use super::quantity::{AmountEu, EnergyWh, decimal_str, opt_decimal_str};
use super::tariff::{Flow, Price, Source, Tariff};
use super::time::{Interval, Period, opt_time_str, time_str};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The schema version every event type is written with today.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeterKind {
    Generation,
    Storage,
    Load,
}

impl MeterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MeterKind::Generation => "generation",
            MeterKind::Storage => "storage",
            MeterKind::Load => "load",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "generation" => Ok(Self::Generation),
            "storage" => Ok(Self::Storage),
            "load" => Ok(Self::Load),
            _ => Err(format!("must be one of generation, storage, load; got {s:?}")),
        }
    }

    /// The flows a meter of this kind may post.
    pub fn allows(self, flow: Flow) -> bool {
        matches!(
            (self, flow),
            (Self::Generation, Flow::Generated)
                | (Self::Storage, Flow::Stored | Flow::Dispatched)
                | (Self::Load, Flow::Consumed)
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    #[default]
    Actual,
    Estimated,
}

impl Quality {
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Actual => "actual",
            Quality::Estimated => "estimated",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRegistered {
    pub site_id: SiteId,
    pub time_zone: String,
    #[serde(with = "decimal_str")]
    pub loss_tolerance_pct: Decimal,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRegistered {
    pub tenant_id: TenantId,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterRegistered {
    pub meter_id: MeterId,
    pub site_id: SiteId,
    pub kind: MeterKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_id: Option<AssetId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<TenantId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    #[serde(with = "decimal_str")]
    pub rated_power_w: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_wh: Option<EnergyWh>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_wh: Option<EnergyWh>,
    /// Share of charged energy a battery can give back (storage only; 100 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_decimal_str")]
    pub round_trip_efficiency_pct: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_time_str")]
    pub active_from: Option<DateTime<Utc>>,
}

impl ReadingRecorded {
    /// The canonical JSON of the most frequent event, written member by member in key order
    /// (the generic writer buffers and sorts every object's members). `None` for a reading
    /// with hold draws or a price in parts, which the generic writer takes. The property
    /// tests check that both give the same bytes.
    fn canonical_data(&self) -> Option<String> {
        use super::jsontext::{decimal, key, period, string, time};
        if !self.hold_draws.is_empty() || !self.price.parts.is_empty() {
            return None;
        }
        let mut o = String::with_capacity(512);
        o.push('{');
        if let Some(a) = &self.asset_id {
            key(&mut o, "asset_id");
            string(&mut o, a.as_str());
        }
        key(&mut o, "booked_period");
        period(&mut o, &self.booked_period);
        key(&mut o, "end");
        time(&mut o, &self.end);
        key(&mut o, "energy_wh");
        decimal(&mut o, &self.energy_wh.value());
        key(&mut o, "flow");
        string(&mut o, self.flow.as_str());
        if let Some(j) = &self.job_id {
            key(&mut o, "job_id");
            string(&mut o, j.as_str());
        }
        key(&mut o, "meter_id");
        string(&mut o, self.meter_id.as_str());
        key(&mut o, "period");
        period(&mut o, &self.period);
        key(&mut o, "price");
        super::jsontext::price(&mut o, &self.price)?;
        key(&mut o, "quality");
        string(&mut o, self.quality.as_str());
        key(&mut o, "site_id");
        string(&mut o, self.site_id.as_str());
        if let Some(s) = &self.source {
            key(&mut o, "source");
            string(&mut o, s.as_str());
        }
        key(&mut o, "start");
        time(&mut o, &self.start);
        if let Some(t) = &self.tenant_id {
            key(&mut o, "tenant_id");
            string(&mut o, t.as_str());
        }
        o.push('}');
        Some(o)
    }

    /// Reads back what [`ReadingRecorded::canonical_data`] writes, without serde: the
    /// audit and every replay decode one of these per reading. `None` for any other text
    /// (members out of order, hold draws, a price in parts, escaped strings, a `null`),
    /// which the caller reads with serde. The tests check that whatever this takes, serde
    /// reads to the same reading.
    fn from_canonical(data: &str) -> Option<Self> {
        use super::jsontext::Text;
        use super::quantity::parse_decimal;
        use super::time::parse_time;
        let mut t = Text::object(data)?;
        let asset_id = t.optional("asset_id", AssetId::parse)?;
        let booked_period = t.member("booked_period", Period::parse)?;
        let end = t.member("end", parse_time)?;
        let energy_wh = t.member("energy_wh", EnergyWh::parse)?;
        let flow = t.member("flow", Flow::parse)?;
        let job_id = t.optional("job_id", JobId::parse)?;
        let meter_id = t.member("meter_id", MeterId::parse)?;
        let period = t.member("period", Period::parse)?;
        t.key("price")?;
        t.open()?;
        let amount_eu = t.member("amount_eu", parse_decimal)?;
        let band = t.member("band", |s| Ok::<_, ()>(s.to_owned()))?;
        let eu_per_wh = t.member("eu_per_wh", parse_decimal)?;
        let multiplier = t.member("multiplier", parse_decimal)?;
        let rate_eu_per_wh = t.member("rate_eu_per_wh", parse_decimal)?;
        let source_multiplier = t.member("source_multiplier", parse_decimal)?;
        t.key("tariff_version")?;
        let tariff_version = u32::try_from(t.uint()?).ok()?;
        t.close()?;
        let price = Price {
            tariff_version,
            band,
            multiplier,
            rate_eu_per_wh,
            source_multiplier,
            eu_per_wh,
            amount_eu,
            parts: Vec::new(),
        };
        let quality = t.member("quality", |s| match s {
            "actual" => Ok(Quality::Actual),
            "estimated" => Ok(Quality::Estimated),
            _ => Err(()),
        })?;
        let site_id = t.member("site_id", SiteId::parse)?;
        let source = t.optional("source", Source::parse)?;
        let start = t.member("start", parse_time)?;
        let tenant_id = t.optional("tenant_id", TenantId::parse)?;
        t.end()?;
        Some(ReadingRecorded {
            meter_id,
            site_id,
            flow,
            start,
            end,
            energy_wh,
            quality,
            asset_id,
            tenant_id,
            source,
            price,
            period,
            booked_period,
            job_id,
            hold_draws: Vec::new(),
        })
    }

    /// A reading's stored data: through [`ReadingRecorded::from_canonical`] when it can,
    /// else serde.
    fn from_data(data: &str) -> Result<Self, serde_json::Error> {
        match Self::from_canonical(data) {
            Some(r) => Ok(r),
            None => serde_json::from_str(data),
        }
    }
}

/// A metered reading and the price it was given when it was recorded. The same shape is
/// recorded for each of the four flows (`EnergyGenerated`, `EnergyStored`, …).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadingRecorded {
    pub meter_id: MeterId,
    pub site_id: SiteId,
    pub flow: Flow,
    #[serde(with = "time_str")]
    pub start: DateTime<Utc>,
    #[serde(with = "time_str")]
    pub end: DateTime<Utc>,
    pub energy_wh: EnergyWh,
    pub quality: Quality,
    /// The asset (generation, storage) or tenant (load) the meter measures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_id: Option<AssetId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<TenantId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    pub price: Price,
    /// The period the interval belongs to (by its start, UTC).
    pub period: Period,
    /// The period it is booked into: `period` unless that was closed when it arrived.
    pub booked_period: Period,
    /// The compute job the energy was consumed by (consumed readings only; absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    /// What the job's active holds paid of this reading's charge, in draw order (absent when
    /// nothing was drawn). The whole charge is still posted; a draw only uses up the hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hold_draws: Vec<HoldDraw>,
}

/// EU of one hold used by a job's consumption.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldDraw {
    pub hold_id: HoldId,
    pub amount_eu: AmountEu,
}

/// A correction of an earlier reading: records the new value and the difference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadingCorrected {
    pub corrected_event_id: Uuid,
    pub meter_id: MeterId,
    pub site_id: SiteId,
    pub flow: Flow,
    #[serde(with = "time_str")]
    pub start: DateTime<Utc>,
    #[serde(with = "time_str")]
    pub end: DateTime<Utc>,
    pub previous_wh: EnergyWh,
    pub energy_wh: EnergyWh,
    #[serde(with = "decimal_str")]
    pub delta_wh: Decimal,
    #[serde(with = "decimal_str")]
    pub previous_amount_eu: Decimal,
    /// The new value priced by the tariff and bands of the corrected reading.
    pub price: Price,
    #[serde(with = "decimal_str")]
    pub delta_eu: Decimal,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_id: Option<AssetId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<TenantId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    pub period: Period,
    pub booked_period: Period,
    /// The job of the corrected reading, if it named one (holds are not drawn again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
}

/// A site's emission factors: grams of CO2e per kWh for every source kind, and which kinds
/// count as carbon-free. Versioned like tariffs: each version applies from `effective_from`
/// until the next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmissionFactorsPublished {
    pub site_id: SiteId,
    /// 1, 2, … per site; assigned when the command is decided.
    pub factors_version: u32,
    #[serde(with = "time_str")]
    pub effective_from: DateTime<Utc>,
    #[serde(with = "source_decimals")]
    pub gco2e_per_kwh: BTreeMap<Source, Decimal>,
    /// Sorted, without repeats.
    pub carbon_free: Vec<Source>,
}

/// Serde for a map of source kind → decimal carried as a JSON string.
mod source_decimals {
    use super::*;
    use crate::domain::quantity::{decimal_from_json, fmt_decimal};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &BTreeMap<Source, Decimal>, s: S) -> Result<S::Ok, S::Error> {
        let out: BTreeMap<&str, String> = m.iter().map(|(k, v)| (k.as_str(), fmt_decimal(v))).collect();
        out.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<Source, Decimal>, D::Error> {
        let raw = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| {
                let k = Source::parse(&k).map_err(serde::de::Error::custom)?;
                let v = decimal_from_json(&v).map_err(serde::de::Error::custom)?;
                Ok((k, v))
            })
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditsIssued {
    pub tenant_id: TenantId,
    pub amount_eu: AmountEu,
    pub memo: String,
    pub booked_period: Period,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditsTransferred {
    pub from_tenant: TenantId,
    pub to_tenant: TenantId,
    pub amount_eu: AmountEu,
    pub memo: String,
    pub booked_period: Period,
}

/// A billing period closed. `last_position` and `chain_hash` pin the log as it stood, so
/// that a later deletion of its tail is detected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodClosed {
    pub period: Period,
    pub last_position: u64,
    pub chain_hash: String,
}

/// EU of a tenant reserved until `expires_at`: no longer available to spend, still held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldPlaced {
    pub hold_id: HoldId,
    pub tenant_id: TenantId,
    pub amount_eu: AmountEu,
    #[serde(with = "time_str")]
    pub expires_at: DateTime<Utc>,
    pub memo: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    pub booked_period: Period,
}

/// Part of a hold turned into a charge (debit the tenant, credit `issuance`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldCaptured {
    pub hold_id: HoldId,
    pub tenant_id: TenantId,
    pub amount_eu: AmountEu,
    /// What is left of the hold after this capture.
    pub remaining_eu: AmountEu,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    pub booked_period: Period,
}

/// What was left of a hold freed, on request (`HoldReleased`) or at its expiry
/// (`HoldExpired`, recorded by the ledger itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldClosed {
    pub hold_id: HoldId,
    pub tenant_id: TenantId,
    pub released_eu: AmountEu,
    #[serde(with = "time_str")]
    pub expires_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    pub booked_period: Period,
}

/// A tenant's limit on EU charged per period, from `period` on (absent `limit_eu`: none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendingLimitSet {
    pub tenant_id: TenantId,
    pub period: Period,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_eu: Option<AmountEu>,
}

/// A tenant's charges in a period went past its limit (recorded once per tenant and
/// period, right after the event that crossed it, `caused_by`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendingLimitExceeded {
    pub tenant_id: TenantId,
    pub period: Period,
    pub limit_eu: AmountEu,
    #[serde(with = "decimal_str")]
    pub charged_eu: Decimal,
    pub caused_by: Uuid,
}

/// Every event the ledger records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "data")]
pub enum Event {
    SiteRegistered(SiteRegistered),
    TariffPublished(Tariff),
    PeriodClosed(PeriodClosed),
    MeterRegistered(MeterRegistered),
    EnergyGenerated(ReadingRecorded),
    EnergyStored(ReadingRecorded),
    EnergyDispatched(ReadingRecorded),
    EnergyConsumed(ReadingRecorded),
    ReadingCorrected(ReadingCorrected),
    TenantRegistered(TenantRegistered),
    CreditsIssued(CreditsIssued),
    CreditsTransferred(CreditsTransferred),
    EmissionFactorsPublished(EmissionFactorsPublished),
    HoldPlaced(HoldPlaced),
    HoldCaptured(HoldCaptured),
    HoldReleased(HoldClosed),
    HoldExpired(HoldClosed),
    SpendingLimitSet(SpendingLimitSet),
    SpendingLimitExceeded(SpendingLimitExceeded),
}

/// All event type names, in the order of the catalog.
pub const EVENT_TYPES: [&str; 19] = [
    "SiteRegistered",
    "TariffPublished",
    "PeriodClosed",
    "MeterRegistered",
    "EnergyGenerated",
    "EnergyStored",
    "EnergyDispatched",
    "EnergyConsumed",
    "ReadingCorrected",
    "TenantRegistered",
    "CreditsIssued",
    "CreditsTransferred",
    "EmissionFactorsPublished",
    "HoldPlaced",
    "HoldCaptured",
    "HoldReleased",
    "HoldExpired",
    "SpendingLimitSet",
    "SpendingLimitExceeded",
];

impl ReadingRecorded {
    pub fn interval(&self) -> Interval {
        Interval {
            start: self.start,
            end: self.end,
        }
    }
}

impl ReadingCorrected {
    pub fn interval(&self) -> Interval {
        Interval {
            start: self.start,
            end: self.end,
        }
    }
}

impl Event {
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::SiteRegistered(_) => "SiteRegistered",
            Event::TariffPublished(_) => "TariffPublished",
            Event::PeriodClosed(_) => "PeriodClosed",
            Event::MeterRegistered(_) => "MeterRegistered",
            Event::EnergyGenerated(_) => "EnergyGenerated",
            Event::EnergyStored(_) => "EnergyStored",
            Event::EnergyDispatched(_) => "EnergyDispatched",
            Event::EnergyConsumed(_) => "EnergyConsumed",
            Event::ReadingCorrected(_) => "ReadingCorrected",
            Event::TenantRegistered(_) => "TenantRegistered",
            Event::CreditsIssued(_) => "CreditsIssued",
            Event::CreditsTransferred(_) => "CreditsTransferred",
            Event::EmissionFactorsPublished(_) => "EmissionFactorsPublished",
            Event::HoldPlaced(_) => "HoldPlaced",
            Event::HoldCaptured(_) => "HoldCaptured",
            Event::HoldReleased(_) => "HoldReleased",
            Event::HoldExpired(_) => "HoldExpired",
            Event::SpendingLimitSet(_) => "SpendingLimitSet",
            Event::SpendingLimitExceeded(_) => "SpendingLimitExceeded",
        }
    }

    /// The reading event for a flow.
    pub fn reading(r: ReadingRecorded) -> Self {
        match r.flow {
            Flow::Generated => Event::EnergyGenerated(r),
            Flow::Stored => Event::EnergyStored(r),
            Flow::Dispatched => Event::EnergyDispatched(r),
            Flow::Consumed => Event::EnergyConsumed(r),
        }
    }

    pub fn as_reading(&self) -> Option<&ReadingRecorded> {
        match self {
            Event::EnergyGenerated(r)
            | Event::EnergyStored(r)
            | Event::EnergyDispatched(r)
            | Event::EnergyConsumed(r) => Some(r),
            _ => None,
        }
    }

    /// The event's `data` object, as stored.
    pub fn to_data(&self) -> serde_json::Value {
        match serde_json::to_value(self).expect("events serialise") {
            serde_json::Value::Object(mut m) => m.remove("data").expect("adjacently tagged"),
            _ => unreachable!("adjacently tagged events serialise to objects"),
        }
    }

    /// The event's `data` as stored: the canonical JSON of [`Event::to_data`], written
    /// straight from the typed event without the `Value` tree (byte for byte the same as
    /// `canonical_json(&self.to_data())`).
    pub fn canonical_data(&self) -> String {
        use crate::store::chain::canonical_json_of as c;
        match self {
            Event::SiteRegistered(d) => c(d),
            Event::TariffPublished(d) => c(d),
            Event::PeriodClosed(d) => c(d),
            Event::MeterRegistered(d) => c(d),
            Event::EnergyGenerated(d)
            | Event::EnergyStored(d)
            | Event::EnergyDispatched(d)
            | Event::EnergyConsumed(d) => d.canonical_data().unwrap_or_else(|| c(d)),
            Event::ReadingCorrected(d) => c(d),
            Event::TenantRegistered(d) => c(d),
            Event::CreditsIssued(d) => c(d),
            Event::CreditsTransferred(d) => c(d),
            Event::EmissionFactorsPublished(d) => c(d),
            Event::HoldPlaced(d) => c(d),
            Event::HoldCaptured(d) => c(d),
            Event::HoldReleased(d) | Event::HoldExpired(d) => c(d),
            Event::SpendingLimitSet(d) => c(d),
            Event::SpendingLimitExceeded(d) => c(d),
        }
    }

    /// The event a record holds: as the ledger decided it when the store's writer handed it
    /// over with the record (`decided`, see `store::Memo`), else decoded from its data.
    pub fn of_record<'a>(
        r: &crate::store::RecordedEvent,
        decided: Option<&'a Event>,
    ) -> Result<std::borrow::Cow<'a, Event>, crate::store::StoreError> {
        match decided {
            Some(ev) => Ok(std::borrow::Cow::Borrowed(ev)),
            None => Event::from_parts(&r.event_type, &r.data)
                .map(std::borrow::Cow::Owned)
                .map_err(|m| crate::store::StoreError::Corrupt(format!("position {}: {m}", r.position))),
        }
    }

    /// Rebuilds an event from its stored type and data (JSON text).
    ///
    /// Each type's data is parsed straight into its struct: going through serde's buffered
    /// `Content` (as a tagged enum would) loses numbers under `arbitrary_precision`.
    pub fn from_parts(event_type: &str, data: &str) -> Result<Self, String> {
        fn p<T: serde::de::DeserializeOwned>(data: &str) -> Result<T, serde_json::Error> {
            serde_json::from_str(data)
        }
        let ev = match event_type {
            "SiteRegistered" => p(data).map(Event::SiteRegistered),
            "TariffPublished" => p(data).map(Event::TariffPublished),
            "PeriodClosed" => p(data).map(Event::PeriodClosed),
            "MeterRegistered" => p(data).map(Event::MeterRegistered),
            "EnergyGenerated" => ReadingRecorded::from_data(data).map(Event::EnergyGenerated),
            "EnergyStored" => ReadingRecorded::from_data(data).map(Event::EnergyStored),
            "EnergyDispatched" => ReadingRecorded::from_data(data).map(Event::EnergyDispatched),
            "EnergyConsumed" => ReadingRecorded::from_data(data).map(Event::EnergyConsumed),
            "ReadingCorrected" => p(data).map(Event::ReadingCorrected),
            "TenantRegistered" => p(data).map(Event::TenantRegistered),
            "CreditsIssued" => p(data).map(Event::CreditsIssued),
            "CreditsTransferred" => p(data).map(Event::CreditsTransferred),
            "EmissionFactorsPublished" => p(data).map(Event::EmissionFactorsPublished),
            "HoldPlaced" => p(data).map(Event::HoldPlaced),
            "HoldCaptured" => p(data).map(Event::HoldCaptured),
            "HoldReleased" => p(data).map(Event::HoldReleased),
            "HoldExpired" => p(data).map(Event::HoldExpired),
            "SpendingLimitSet" => p(data).map(Event::SpendingLimitSet),
            "SpendingLimitExceeded" => p(data).map(Event::SpendingLimitExceeded),
            other => return Err(format!("unknown event type {other:?}")),
        };
        ev.map_err(|e| format!("{event_type}: {e}"))
    }
}

/// The stream an entity's events live on (joined without `format!`: a meter's stream is
/// named for every reading).
pub fn site_stream(site: &SiteId) -> String {
    ["site-", site.as_str()].concat()
}
pub fn meter_stream(meter: &MeterId) -> String {
    ["meter-", meter.as_str()].concat()
}
pub fn tenant_stream(tenant: &TenantId) -> String {
    ["tenant-", tenant.as_str()].concat()
}
pub fn period_stream(period: &Period) -> String {
    format!("period-{period}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::chain::canonical_json_of;

    fn reading(extra: serde_json::Value) -> ReadingRecorded {
        let mut v = serde_json::json!({
            "meter_id": "m-1", "site_id": "s.1", "flow": "consumed",
            "start": "2026-03-01T00:00:00.25Z", "end": "2026-03-01T00:15:00Z",
            "energy_wh": "1500.125", "quality": "estimated",
            "price": {"tariff_version": 12, "band": "peak \"é\"\n\u{1}", "multiplier": "1.5",
                      "rate_eu_per_wh": "0.000001", "source_multiplier": "1", "eu_per_wh": "0.0000015",
                      "amount_eu": "0.002250"},
            "period": "2026-03", "booked_period": "2026-04",
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    /// The member-by-member writer gives the generic writer's bytes, with every optional
    /// member present or absent and a band name that needs escaping.
    #[test]
    fn a_readings_direct_encoding_is_its_canonical_json() {
        let all =
            serde_json::json!({"asset_id": "gt-1", "tenant_id": "t-1", "source": "gas_turbine", "job_id": "job-7"});
        for r in [reading(serde_json::json!({})), reading(all)] {
            let fast = r.canonical_data().expect("no parts, no draws: written directly");
            assert_eq!(fast, canonical_json_of(&r));
        }
        let mut mixed = reading(serde_json::json!({}));
        mixed.price.parts.push(crate::domain::tariff::PricePart {
            band: "peak".into(),
            multiplier: Decimal::ONE,
            start: mixed.start,
            end: mixed.end,
            energy_wh: Decimal::ONE,
            amount_eu: Decimal::ONE,
        });
        assert_eq!(mixed.canonical_data(), None, "a price in parts goes the generic way");
        let ev = Event::EnergyConsumed(mixed.clone());
        assert_eq!(ev.canonical_data(), canonical_json_of(&mixed));
    }

    /// Readings of every shape the direct writer writes, with plain band names.
    fn plain_readings() -> Vec<ReadingRecorded> {
        let mut out = Vec::new();
        let all =
            serde_json::json!({"asset_id": "gt-1", "tenant_id": "t-1", "source": "gas_turbine", "job_id": "job-7"});
        for (i, extra) in [
            serde_json::json!({}),
            all,
            serde_json::json!({"tenant_id": "t.9", "job_id": "j"}),
        ]
        .into_iter()
        .enumerate()
        {
            let mut r = reading(extra);
            r.price.band = ["peak", "off-peak é", ""][i].into();
            r.price.tariff_version = [0, 12, u32::MAX][i];
            r.energy_wh = EnergyWh::parse(["0", "1500.125", "99999999"][i]).unwrap();
            r.price.amount_eu = ["-0.000001", "742500", "0"][i].parse().unwrap();
            r.quality = [Quality::Actual, Quality::Estimated, Quality::Actual][i];
            r.flow = [Flow::Consumed, Flow::Generated, Flow::Dispatched][i];
            out.push(r);
        }
        out
    }

    /// What the direct writer writes is read back without serde, to the same reading; a
    /// band that needs escaping, a price in parts and hold draws are left to serde, and the
    /// event decodes the same either way.
    #[test]
    fn a_readings_canonical_data_is_read_back_without_serde() {
        for r in plain_readings() {
            let text = r.canonical_data().unwrap();
            assert_eq!(ReadingRecorded::from_canonical(&text).as_ref(), Some(&r), "{text}");
            let ev = Event::from_parts("EnergyConsumed", &text).unwrap();
            assert_eq!(ev, Event::EnergyConsumed(r));
        }
        let escaped = reading(serde_json::json!({}));
        let text = escaped.canonical_data().unwrap();
        assert_eq!(ReadingRecorded::from_canonical(&text), None, "escapes go to serde");
        assert_eq!(
            Event::from_parts("EnergyStored", &text).unwrap(),
            Event::EnergyStored(escaped.clone())
        );
        let mut drawn = plain_readings().remove(0);
        drawn.hold_draws.push(HoldDraw {
            hold_id: HoldId::parse("h-1").unwrap(),
            amount_eu: AmountEu::parse("1.5").unwrap(),
        });
        let text = canonical_json_of(&drawn);
        assert_eq!(ReadingRecorded::from_canonical(&text), None, "hold draws go to serde");
        assert_eq!(
            Event::from_parts("EnergyConsumed", &text).unwrap(),
            Event::EnergyConsumed(drawn)
        );
    }

    /// Whatever the direct reader takes, serde reads to the same reading: texts changed one
    /// byte at a time (replaced, dropped, inserted) from the writer's. Many changes keep a
    /// valid reading (a digit, a letter of an id), so both sides are exercised.
    #[test]
    fn the_direct_reader_takes_nothing_serde_would_read_otherwise() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(61);
        let alphabet = br#"{}[],:"\ 0123456789.-+eEZTtnulfa_"#;
        let (mut taken, mut refused_by_both) = (0, 0);
        for r in plain_readings() {
            let text = r.canonical_data().unwrap().into_bytes();
            for _ in 0..6_000 {
                let mut t = text.clone();
                for _ in 0..rng.gen_range(1..=2) {
                    let at = rng.gen_range(0..t.len());
                    let b = alphabet[rng.gen_range(0..alphabet.len())];
                    match rng.gen_range(0..3) {
                        0 if t[at].is_ascii() => t[at] = b,
                        1 if t[at].is_ascii() => {
                            t.remove(at);
                        }
                        _ => t.insert(at, b),
                    }
                }
                let Ok(t) = String::from_utf8(t) else { continue };
                let serde = serde_json::from_str::<ReadingRecorded>(&t);
                match ReadingRecorded::from_canonical(&t) {
                    Some(fast) => {
                        taken += 1;
                        assert_eq!(serde.as_ref().ok(), Some(&fast), "{t}");
                    }
                    None => refused_by_both += usize::from(serde.is_err()),
                }
            }
        }
        assert!(taken > 500, "only {taken} changed texts were readings");
        assert!(refused_by_both > 2_000, "only {refused_by_both} were refused");
    }
}
