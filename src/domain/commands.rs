//! Commands (CONTRACT §1), parsed once from JSON into types that cannot hold invalid values.
//! Every field problem is collected, so a caller sees them all at once.

use super::error::{FieldError, Rejection};
use super::events::{EmissionFactorsPublished, MeterKind, MeterRegistered, Quality};
use super::ids::{AssetId, HoldId, JobId, MeterId, SiteId, TenantId};
use super::quantity::{AmountEu, EnergyWh, decimal_from_json, json_kind};
use super::tariff::{Band, DefaultBand, Flow, LocalMinute, MIXED_BAND, Rates, Source, Tariff, parse_day};
use super::time::{Interval, Period, parse_time};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Longest free text (names, memos, reasons), in characters.
pub const TEXT_CHARS_MAX: usize = 500;
/// Most bands one tariff may hold.
pub const TARIFF_BANDS_MAX: usize = 48;
/// Largest rate or multiplier a tariff may carry.
pub const TARIFF_FACTOR_MAX: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    RegisterSite {
        site_id: SiteId,
        time_zone: Tz,
        loss_tolerance_pct: Decimal,
    },
    RegisterTenant {
        tenant_id: TenantId,
        name: String,
    },
    RegisterMeter(MeterRegistered),
    /// `tariff_version` is assigned when the command is decided.
    PublishTariff(Tariff),
    PostReading {
        event_id: Option<Uuid>,
        meter_id: MeterId,
        flow: Flow,
        interval: Interval,
        energy_wh: EnergyWh,
        quality: Quality,
        /// The compute job that consumed the energy (consumed readings only).
        job_id: Option<JobId>,
    },
    CorrectReading {
        corrected_event_id: Uuid,
        correction_id: Option<Uuid>,
        energy_wh: EnergyWh,
        reason: String,
    },
    IssueCredits {
        event_id: Option<Uuid>,
        tenant_id: TenantId,
        amount_eu: AmountEu,
        memo: String,
    },
    TransferCredits {
        event_id: Option<Uuid>,
        from_tenant: TenantId,
        to_tenant: TenantId,
        amount_eu: AmountEu,
        memo: String,
    },
    ClosePeriod {
        period: Period,
    },
    /// `factors_version` is assigned when the command is decided.
    PublishEmissionFactors(EmissionFactorsPublished),
    PlaceHold {
        hold_id: HoldId,
        tenant_id: TenantId,
        amount_eu: AmountEu,
        expires_at: DateTime<Utc>,
        memo: String,
        job_id: Option<JobId>,
    },
    CaptureHold {
        hold_id: HoldId,
        /// When given (the HTTP route's tenant), the hold must be this tenant's.
        tenant_id: Option<TenantId>,
        amount_eu: AmountEu,
        capture_id: Option<Uuid>,
    },
    ReleaseHold {
        hold_id: HoldId,
        tenant_id: Option<TenantId>,
    },
    SetSpendingLimit {
        tenant_id: TenantId,
        /// `None`: no limit from `period` on.
        limit_eu: Option<AmountEu>,
        period: Period,
    },
}

/// The largest emission factor accepted, in gCO2e per kWh (coal is about 1,000).
pub const EMISSION_FACTOR_MAX: Decimal = Decimal::from_parts(10_000, 0, 0, false, 0);

pub const COMMAND_NAMES: [&str; 14] = [
    "register_site",
    "register_tenant",
    "register_meter",
    "publish_tariff",
    "post_reading",
    "correct_reading",
    "issue_credits",
    "transfer_credits",
    "close_period",
    "publish_emission_factors",
    "place_hold",
    "capture_hold",
    "release_hold",
    "set_spending_limit",
];

/// Reads the fields of one JSON object, collecting every problem.
pub struct Fields<'a> {
    obj: &'a Map<String, Value>,
    prefix: String,
    known: Vec<&'static str>,
    errors: Vec<FieldError>,
}

impl<'a> Fields<'a> {
    pub fn new(obj: &'a Map<String, Value>, prefix: &str) -> Self {
        Self {
            obj,
            prefix: prefix.to_string(),
            known: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn name(&self, field: &str) -> String {
        format!("{}{}", self.prefix, field)
    }

    pub fn error(&mut self, field: &str, message: impl Into<String>) {
        let field = self.name(field);
        self.errors.push(FieldError {
            field,
            message: message.into(),
        });
    }

    /// A field that must be present.
    pub fn req<T>(&mut self, field: &'static str, parse: impl FnOnce(&'a Value) -> Result<T, String>) -> Option<T> {
        self.known.push(field);
        match self.obj.get(field) {
            None | Some(Value::Null) => {
                self.error(field, "is required");
                None
            }
            Some(v) => self.parsed(field, parse(v)),
        }
    }

    /// A field that may be absent (or null).
    pub fn opt<T>(&mut self, field: &'static str, parse: impl FnOnce(&'a Value) -> Result<T, String>) -> Option<T> {
        self.known.push(field);
        match self.obj.get(field) {
            None | Some(Value::Null) => None,
            Some(v) => self.parsed(field, parse(v)),
        }
    }

    /// A field that must be present but may be `null` (`Some(None)`); `None` when it is
    /// missing or invalid (the error is recorded).
    pub fn nullable<T>(
        &mut self,
        field: &'static str,
        parse: impl FnOnce(&'a Value) -> Result<T, String>,
    ) -> Option<Option<T>> {
        self.known.push(field);
        match self.obj.get(field) {
            None => {
                self.error(field, "is required (null for none)");
                None
            }
            Some(Value::Null) => Some(None),
            Some(v) => self.parsed(field, parse(v)).map(Some),
        }
    }

    /// A field that must not be given in this context.
    pub fn forbid(&mut self, field: &'static str, why: &str) {
        self.known.push(field);
        if matches!(self.obj.get(field), Some(v) if !v.is_null()) {
            self.error(field, format!("must not be given {why}"));
        }
    }

    fn parsed<T>(&mut self, field: &str, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(t) => Some(t),
            Err(m) => {
                self.error(field, m);
                None
            }
        }
    }

    pub fn ignore(&mut self, field: &'static str) {
        self.known.push(field);
    }

    /// Refuses unknown fields (a typo must not silently drop a value) and returns the errors.
    pub fn finish(mut self) -> Vec<FieldError> {
        let unknown: Vec<String> = self
            .obj
            .keys()
            .filter(|k| !self.known.contains(&k.as_str()))
            .cloned()
            .collect();
        for k in unknown {
            let shown: String = k.chars().take(64).collect();
            self.error(&shown, "is not a field of this command");
        }
        self.errors
    }
}

pub fn text(v: &Value) -> Result<String, String> {
    let s = v
        .as_str()
        .ok_or_else(|| format!("must be a string, got {}", json_kind(v)))?;
    if s.chars().count() > TEXT_CHARS_MAX {
        return Err(format!("must be at most {TEXT_CHARS_MAX} characters"));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err("must not contain control characters".into());
    }
    Ok(s.to_string())
}

fn nonempty_text(v: &Value) -> Result<String, String> {
    let s = text(v)?;
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(s)
}

fn string(v: &Value) -> Result<&str, String> {
    v.as_str()
        .ok_or_else(|| format!("must be a string, got {}", json_kind(v)))
}

pub fn site_id(v: &Value) -> Result<SiteId, String> {
    SiteId::parse(string(v)?)
}
pub fn meter_id(v: &Value) -> Result<MeterId, String> {
    MeterId::parse(string(v)?)
}
pub fn tenant_id(v: &Value) -> Result<TenantId, String> {
    TenantId::parse(string(v)?)
}
pub fn asset_id(v: &Value) -> Result<AssetId, String> {
    AssetId::parse(string(v)?)
}
/// A command's time: RFC 3339, and no leap second (`:60`), which no interval, tariff or
/// expiry needs and which would not survive a round trip through the log's UTC text.
pub fn time(v: &Value) -> Result<DateTime<Utc>, String> {
    time_text(string(v)?)
}
fn time_text(s: &str) -> Result<DateTime<Utc>, String> {
    use chrono::Timelike;
    let t = parse_time(s)?;
    if t.nanosecond() >= 1_000_000_000 {
        return Err(format!("must not be a leap second (seconds 00 to 59), got {s}"));
    }
    Ok(t)
}
pub fn uuid(v: &Value) -> Result<Uuid, String> {
    Uuid::parse_str(string(v)?).map_err(|_| "must be a UUID".to_string())
}
pub fn energy(v: &Value) -> Result<EnergyWh, String> {
    EnergyWh::from_json(v)
}
pub fn amount(v: &Value) -> Result<AmountEu, String> {
    AmountEu::from_json(v)
}
pub fn positive_amount(v: &Value) -> Result<AmountEu, String> {
    let a = AmountEu::from_json(v)?;
    if a.value() <= Decimal::ZERO {
        return Err(format!("must be positive, got {a}"));
    }
    Ok(a)
}
pub fn non_negative_amount(v: &Value) -> Result<AmountEu, String> {
    let a = AmountEu::from_json(v)?;
    if a.value() < Decimal::ZERO {
        return Err(format!("must not be negative, got {a}"));
    }
    Ok(a)
}
pub fn hold_id(v: &Value) -> Result<HoldId, String> {
    HoldId::parse(string(v)?)
}
pub fn job_id(v: &Value) -> Result<JobId, String> {
    JobId::parse(string(v)?)
}
pub fn period(v: &Value) -> Result<Period, String> {
    Period::parse(string(v)?)
}

/// A non-negative factor (rate or multiplier) no larger than `TARIFF_FACTOR_MAX`.
fn factor(v: &Value) -> Result<Decimal, String> {
    let d = decimal_from_json(v)?;
    if d.is_sign_negative() && !d.is_zero() {
        return Err(format!("must not be negative, got {d}"));
    }
    if d > TARIFF_FACTOR_MAX {
        return Err(format!("must be at most {TARIFF_FACTOR_MAX}"));
    }
    Ok(d.normalize())
}

fn positive(v: &Value) -> Result<Decimal, String> {
    let d = decimal_from_json(v)?;
    if d <= Decimal::ZERO {
        return Err(format!("must be positive, got {d}"));
    }
    Ok(d.normalize())
}

fn percent(v: &Value) -> Result<Decimal, String> {
    let d = decimal_from_json(v)?;
    if d < Decimal::ZERO || d > Decimal::ONE_HUNDRED {
        return Err(format!("must be a percentage between 0 and 100, got {d}"));
    }
    Ok(d.normalize())
}

fn object(v: &Value) -> Result<&Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("must be an object, got {}", json_kind(v)))
}

fn band_name(v: &Value) -> Result<String, String> {
    let s = nonempty_text(v)?;
    if s.chars().count() > 64 {
        return Err("must be at most 64 characters".into());
    }
    if s == MIXED_BAND {
        return Err(format!("{MIXED_BAND:?} is reserved for intervals split across bands"));
    }
    Ok(s)
}

impl Command {
    /// Parses a command object whose kind is given by its `"command"` field.
    pub fn from_json(v: &Value) -> Result<Command, Rejection> {
        let obj = v.as_object().ok_or_else(|| {
            Rejection::validation(
                "command",
                format!("a command must be a JSON object, got {}", json_kind(v)),
            )
        })?;
        let name = match obj.get("command") {
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                return Err(Rejection::validation(
                    "command",
                    format!("must be a string, got {}", json_kind(other)),
                ));
            }
            None => return Err(Rejection::validation("command", "is required")),
        };
        Self::parse(name, obj)
    }

    /// `from_json` of the text's JSON, straight from the text for the most frequent command
    /// line: a `post_reading` whose strings need no unescaping goes from the text to the
    /// command with the same parsers, without a `Value` for the object (building and
    /// dropping that map was half of a reading's parse). `None` for anything else (another
    /// command, an unknown, repeated or missing field, a value the same parsers refuse,
    /// text that is not JSON): the caller then takes the `Value` path, which gives every
    /// refusal its wording. A test checks both paths agree wherever this one answers.
    pub fn reading_from_text(text: &str) -> Option<Command> {
        Self::reading_text(text, true)
    }

    /// [`Command::reading_from_text`] for the body of the readings route: the `command`
    /// field may be left out, and when present must be `post_reading` (as
    /// `Command::parse("post_reading", …)` after the route's own check takes it).
    pub fn reading_body_from_text(text: &str) -> Option<Command> {
        Self::reading_text(text, false)
    }

    fn reading_text(text: &str, command_required: bool) -> Option<Command> {
        fn present<'de, D: serde::Deserializer<'de>>(
            d: D,
        ) -> Result<Option<&'de serde_json::value::RawValue>, D::Error> {
            serde::Deserialize::deserialize(d).map(Some)
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Line<'a> {
            /// Present (`null` too) or not.
            #[serde(default, borrow, deserialize_with = "present")]
            command: Option<&'a serde_json::value::RawValue>,
            event_id: Option<&'a str>,
            meter_id: &'a str,
            flow: &'a str,
            start: &'a str,
            end: &'a str,
            #[serde(borrow)]
            wh: &'a serde_json::value::RawValue,
            job_id: Option<&'a str>,
            quality: Option<&'a str>,
        }
        // Only an object: serde would also take a struct from an array of its fields.
        if !text.trim_start().starts_with('{') {
            return None;
        }
        let l: Line<'_> = serde_json::from_str(text).ok()?;
        match l.command.map(|c| c.get()) {
            Some(r#""post_reading""#) => {}
            None if !command_required => {}
            _ => return None,
        }
        let t = |s: &str| time_text(s).ok();
        let event_id = match l.event_id {
            Some(s) => Some(Uuid::parse_str(s).ok()?),
            None => None,
        };
        let interval = Interval::new(t(l.start)?, t(l.end)?).ok()?;
        let wh: Value = serde_json::from_str(l.wh.get()).ok()?;
        Some(Command::PostReading {
            event_id,
            meter_id: MeterId::parse(l.meter_id).ok()?,
            flow: Flow::parse(l.flow).ok()?,
            interval,
            energy_wh: energy(&wh).ok()?,
            quality: match l.quality {
                None => Quality::default(),
                Some("actual") => Quality::Actual,
                Some("estimated") => Quality::Estimated,
                Some(_) => return None,
            },
            job_id: match l.job_id {
                Some(s) => Some(JobId::parse(s).ok()?),
                None => None,
            },
        })
    }

    /// Parses the body of the command `name` (the `"command"` field, if present, is ignored).
    pub fn parse(name: &str, obj: &Map<String, Value>) -> Result<Command, Rejection> {
        let mut f = Fields::new(obj, "");
        f.ignore("command");
        let cmd = match name {
            "register_site" => parse_register_site(&mut f),
            "register_tenant" => {
                let tenant_id = f.req("tenant_id", tenant_id);
                let name = f.req("name", nonempty_text);
                tenant_id
                    .zip(name)
                    .map(|(tenant_id, name)| Command::RegisterTenant { tenant_id, name })
            }
            "register_meter" => parse_register_meter(&mut f),
            "publish_tariff" => parse_tariff(&mut f),
            "post_reading" => {
                let event_id = f.opt("event_id", uuid);
                let meter_id = f.req("meter_id", meter_id);
                let flow = f.req("flow", |v| Flow::parse(string(v)?));
                let start = f.req("start", time);
                let end = f.req("end", time);
                let energy_wh = f.req("wh", energy);
                let job_id = f.opt("job_id", job_id);
                let quality = f
                    .opt("quality", |v| match string(v)? {
                        "actual" => Ok(Quality::Actual),
                        "estimated" => Ok(Quality::Estimated),
                        s => Err(format!("must be actual or estimated, got {s:?}")),
                    })
                    .unwrap_or_default();
                let interval = match (start, end) {
                    (Some(s), Some(e)) => match Interval::new(s, e) {
                        Ok(i) => Some(i),
                        Err(m) => {
                            f.error("end", m);
                            None
                        }
                    },
                    _ => None,
                };
                match (meter_id, flow, interval, energy_wh) {
                    (Some(meter_id), Some(flow), Some(interval), Some(energy_wh)) => Some(Command::PostReading {
                        event_id,
                        meter_id,
                        flow,
                        interval,
                        energy_wh,
                        quality,
                        job_id,
                    }),
                    _ => None,
                }
            }
            "correct_reading" => {
                let corrected = f.req("event_id", uuid);
                let correction_id = f.opt("correction_id", uuid);
                let energy_wh = f.req("wh", energy);
                let reason = f.req("reason", nonempty_text);
                match (corrected, energy_wh, reason) {
                    (Some(corrected_event_id), Some(energy_wh), Some(reason)) => Some(Command::CorrectReading {
                        corrected_event_id,
                        correction_id,
                        energy_wh,
                        reason,
                    }),
                    _ => None,
                }
            }
            "issue_credits" => {
                let event_id = f.opt("event_id", uuid);
                let tenant_id = f.req("tenant_id", tenant_id);
                let amount_eu = f.req("amount_eu", positive_amount);
                let memo = f.opt("memo", text).unwrap_or_default();
                tenant_id
                    .zip(amount_eu)
                    .map(|(tenant_id, amount_eu)| Command::IssueCredits {
                        event_id,
                        tenant_id,
                        amount_eu,
                        memo,
                    })
            }
            "transfer_credits" => {
                let event_id = f.opt("event_id", uuid);
                let from = f.req("from_tenant", tenant_id);
                let to = f.req("to_tenant", tenant_id);
                let amount_eu = f.req("amount_eu", positive_amount);
                let memo = f.opt("memo", text).unwrap_or_default();
                if let (Some(a), Some(b)) = (&from, &to)
                    && a == b
                {
                    f.error(
                        "to_tenant",
                        "must differ from from_tenant: a tenant cannot transfer to itself",
                    );
                }
                match (from, to, amount_eu) {
                    (Some(from_tenant), Some(to_tenant), Some(amount_eu)) => Some(Command::TransferCredits {
                        event_id,
                        from_tenant,
                        to_tenant,
                        amount_eu,
                        memo,
                    }),
                    _ => None,
                }
            }
            "close_period" => f.req("period", period).map(|period| Command::ClosePeriod { period }),
            "publish_emission_factors" => parse_emission_factors(&mut f),
            "place_hold" => {
                let hold_id = f.req("hold_id", hold_id);
                let tenant_id = f.req("tenant_id", tenant_id);
                let amount_eu = f.req("amount_eu", positive_amount);
                let expires_at = f.req("expires_at", time);
                let memo = f.opt("memo", text).unwrap_or_default();
                let job_id = f.opt("job_id", job_id);
                match (hold_id, tenant_id, amount_eu, expires_at) {
                    (Some(hold_id), Some(tenant_id), Some(amount_eu), Some(expires_at)) => Some(Command::PlaceHold {
                        hold_id,
                        tenant_id,
                        amount_eu,
                        expires_at,
                        memo,
                        job_id,
                    }),
                    _ => None,
                }
            }
            "capture_hold" => {
                let hold_id = f.req("hold_id", hold_id);
                let tenant_id = f.opt("tenant_id", tenant_id);
                let amount_eu = f.req("amount_eu", positive_amount);
                let capture_id = f.opt("capture_id", uuid);
                hold_id.zip(amount_eu).map(|(hold_id, amount_eu)| Command::CaptureHold {
                    hold_id,
                    tenant_id,
                    amount_eu,
                    capture_id,
                })
            }
            "release_hold" => {
                let tenant_id = f.opt("tenant_id", tenant_id);
                f.req("hold_id", hold_id)
                    .map(|hold_id| Command::ReleaseHold { hold_id, tenant_id })
            }
            "set_spending_limit" => {
                let tenant_id = f.req("tenant_id", tenant_id);
                let limit_eu = f.nullable("limit_eu", non_negative_amount);
                let period = f.req("period", period);
                match (tenant_id, limit_eu, period) {
                    (Some(tenant_id), Some(limit_eu), Some(period)) => Some(Command::SetSpendingLimit {
                        tenant_id,
                        limit_eu,
                        period,
                    }),
                    _ => None,
                }
            }
            other => {
                let shown: String = other.chars().take(64).collect();
                return Err(Rejection::validation(
                    "command",
                    format!(
                        "unknown command {shown:?}; expected one of {}",
                        COMMAND_NAMES.join(", ")
                    ),
                ));
            }
        };
        let errors = f.finish();
        match cmd {
            Some(c) if errors.is_empty() => Ok(c),
            _ => Err(Rejection::fields(errors)),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Command::RegisterSite { .. } => "register_site",
            Command::RegisterTenant { .. } => "register_tenant",
            Command::RegisterMeter(_) => "register_meter",
            Command::PublishTariff(_) => "publish_tariff",
            Command::PostReading { .. } => "post_reading",
            Command::CorrectReading { .. } => "correct_reading",
            Command::IssueCredits { .. } => "issue_credits",
            Command::TransferCredits { .. } => "transfer_credits",
            Command::ClosePeriod { .. } => "close_period",
            Command::PublishEmissionFactors(_) => "publish_emission_factors",
            Command::PlaceHold { .. } => "place_hold",
            Command::CaptureHold { .. } => "capture_hold",
            Command::ReleaseHold { .. } => "release_hold",
            Command::SetSpendingLimit { .. } => "set_spending_limit",
        }
    }
}

fn parse_register_site(f: &mut Fields<'_>) -> Option<Command> {
    let site_id = f.req("site_id", site_id);
    let time_zone = f.req("time_zone", |v| {
        let s = string(v)?;
        s.parse::<Tz>()
            .map_err(|_| format!("unknown IANA time zone {s:?} (for example \"America/Chicago\")"))
    });
    let loss_tolerance_pct = f.opt("loss_tolerance_pct", percent).unwrap_or(Decimal::from(5));
    site_id
        .zip(time_zone)
        .map(|(site_id, time_zone)| Command::RegisterSite {
            site_id,
            time_zone,
            loss_tolerance_pct,
        })
}

fn parse_register_meter(f: &mut Fields<'_>) -> Option<Command> {
    let meter_id = f.req("meter_id", meter_id);
    let site_id = f.req("site_id", site_id);
    let kind = f.req("kind", |v| MeterKind::parse(string(v)?));
    let rated_power_w = f.req("rated_power_w", positive);
    let active_from = f.opt("active_from", time);
    let (mut asset_id, mut tenant_id, mut source) = (None, None, None);
    let (mut capacity_wh, mut initial_wh, mut efficiency) = (None, None, None);
    match kind {
        Some(MeterKind::Generation) => {
            asset_id = f.req("asset_id", asset_id_of);
            source = f.req("source", |v| Source::parse(string(v)?));
            for x in ["tenant_id", "capacity_wh", "initial_wh", "round_trip_efficiency_pct"] {
                f.forbid(x, "for a generation meter");
            }
        }
        Some(MeterKind::Storage) => {
            asset_id = f.req("asset_id", asset_id_of);
            capacity_wh = f.req("capacity_wh", |v| {
                let c = energy(v)?;
                if c.is_zero() {
                    return Err("must be positive".into());
                }
                Ok(c)
            });
            initial_wh = Some(f.opt("initial_wh", energy).unwrap_or(EnergyWh::ZERO));
            efficiency = f.opt("round_trip_efficiency_pct", |v| {
                let p = percent(v)?;
                if p.is_zero() {
                    return Err("must be above 0".into());
                }
                Ok(p)
            });
            if let (Some(c), Some(i)) = (capacity_wh, initial_wh)
                && i > c
            {
                f.error("initial_wh", format!("must not exceed capacity_wh ({c} Wh), got {i}"));
            }
            for x in ["tenant_id", "source"] {
                f.forbid(x, "for a storage meter");
            }
        }
        Some(MeterKind::Load) => {
            tenant_id = f.req("tenant_id", self::tenant_id);
            for x in [
                "asset_id",
                "source",
                "capacity_wh",
                "initial_wh",
                "round_trip_efficiency_pct",
            ] {
                f.forbid(x, "for a load meter");
            }
        }
        None => {
            for x in [
                "asset_id",
                "tenant_id",
                "source",
                "capacity_wh",
                "initial_wh",
                "round_trip_efficiency_pct",
            ] {
                f.ignore(x);
            }
        }
    }
    Some(Command::RegisterMeter(MeterRegistered {
        meter_id: meter_id?,
        site_id: site_id?,
        kind: kind?,
        asset_id,
        tenant_id,
        source,
        rated_power_w: rated_power_w?,
        capacity_wh,
        initial_wh,
        round_trip_efficiency_pct: efficiency,
        active_from,
    }))
}

fn asset_id_of(v: &Value) -> Result<AssetId, String> {
    asset_id(v)
}

/// `publish_emission_factors`: a factor for every source kind (so no source is ever
/// attributed without one) and the list of kinds that count as carbon-free.
fn parse_emission_factors(f: &mut Fields<'_>) -> Option<Command> {
    let site_id = f.req("site_id", site_id);
    let effective_from = f.req("effective_from", time);
    let factors = f.req("gco2e_per_kwh", object).map(|m| {
        let mut g = Fields::new(m, "gco2e_per_kwh.");
        let mut out = BTreeMap::new();
        for source in Source::ALL {
            let parsed = g.req(source.as_str(), |v| {
                let d = decimal_from_json(v)?;
                if d.is_sign_negative() && !d.is_zero() {
                    return Err(format!("must not be negative, got {d}"));
                }
                if d > EMISSION_FACTOR_MAX {
                    return Err(format!("must be at most {EMISSION_FACTOR_MAX} gCO2e per kWh, got {d}"));
                }
                if d.scale() > 3 {
                    return Err(format!("must have at most 3 decimals, got {d}"));
                }
                Ok(d.normalize())
            });
            if let Some(d) = parsed {
                out.insert(source, d);
            }
        }
        (out, g.finish())
    });
    let factors = match factors {
        Some((m, errs)) if errs.is_empty() && m.len() == Source::ALL.len() => Some(m),
        Some((_, errs)) => {
            f.errors.extend(errs);
            None
        }
        None => None,
    };
    let carbon_free = f.req("carbon_free", |v| {
        let arr = v
            .as_array()
            .ok_or_else(|| format!("must be an array of source kinds, got {}", json_kind(v)))?;
        let mut out = Vec::new();
        for x in arr {
            let s = Source::parse(string(x)?)?;
            if out.contains(&s) {
                return Err(format!("must not list {:?} twice", s.as_str()));
            }
            out.push(s);
        }
        out.sort();
        Ok(out)
    });
    match (site_id, effective_from, factors, carbon_free) {
        (Some(site_id), Some(effective_from), Some(gco2e_per_kwh), Some(carbon_free)) => {
            Some(Command::PublishEmissionFactors(EmissionFactorsPublished {
                site_id,
                factors_version: 0,
                effective_from,
                gco2e_per_kwh,
                carbon_free,
            }))
        }
        _ => None,
    }
}

fn parse_tariff(f: &mut Fields<'_>) -> Option<Command> {
    let site_id = f.req("site_id", site_id);
    let effective_from = f.req("effective_from", time);
    let rates = f.req("rates_eu_per_wh", object).map(|m| {
        let mut g = Fields::new(m, "rates_eu_per_wh.");
        let r = (
            g.req("generated", factor),
            g.req("stored", factor),
            g.req("dispatched", factor),
            g.req("consumed", factor),
        );
        (r, g.finish())
    });
    let rates = match rates {
        Some(((Some(generated), Some(stored), Some(dispatched), Some(consumed)), errs)) if errs.is_empty() => {
            Some(Rates {
                generated,
                stored,
                dispatched,
                consumed,
            })
        }
        Some((_, errs)) => {
            f.errors.extend(errs);
            None
        }
        None => None,
    };
    let bands = f.opt("bands", |v| {
        v.as_array()
            .cloned()
            .ok_or_else(|| format!("must be an array, got {}", json_kind(v)))
    });
    let bands = bands.unwrap_or_default();
    if bands.len() > TARIFF_BANDS_MAX {
        f.error("bands", format!("at most {TARIFF_BANDS_MAX} bands"));
    }
    let mut parsed_bands = Vec::new();
    for (i, b) in bands.iter().enumerate().take(TARIFF_BANDS_MAX) {
        let prefix = format!("bands[{i}].");
        let Some(m) = b.as_object() else {
            f.errors.push(FieldError {
                field: format!("bands[{i}]"),
                message: format!("must be an object, got {}", json_kind(b)),
            });
            continue;
        };
        let mut g = Fields::new(m, &prefix);
        let name = g.req("name", band_name);
        let days = g.req("days", |v| {
            let arr = v
                .as_array()
                .ok_or_else(|| format!("must be an array, got {}", json_kind(v)))?;
            if arr.is_empty() {
                return Err("must list at least one day".into());
            }
            let mut days = Vec::new();
            for d in arr {
                let d = parse_day(string(d)?)?;
                if days.contains(&d) {
                    return Err("must not list a day twice".into());
                }
                days.push(d);
            }
            Ok(days)
        });
        let start = g.req("start", |v| LocalMinute::parse(string(v)?));
        let end = g.req("end", |v| LocalMinute::parse(string(v)?));
        let multiplier = g.req("multiplier", factor);
        let errs = g.finish();
        if !errs.is_empty() {
            f.errors.extend(errs);
            continue;
        }
        if let (Some(name), Some(days), Some(start), Some(end), Some(multiplier)) = (name, days, start, end, multiplier)
        {
            parsed_bands.push(Band {
                name,
                days,
                start,
                end,
                multiplier,
            });
        }
    }
    let default_band = f.req("default_band", object).and_then(|m| {
        let mut g = Fields::new(m, "default_band.");
        let name = g.req("name", band_name);
        let multiplier = g.req("multiplier", factor);
        let errs = g.finish();
        let ok = errs.is_empty();
        f.errors.extend(errs);
        if ok {
            Some(DefaultBand {
                name: name?,
                multiplier: multiplier?,
            })
        } else {
            None
        }
    });
    let source_multipliers = f
        .opt("source_multipliers", |v| {
            let m = object(v)?;
            let mut out = BTreeMap::new();
            for (k, v) in m {
                let s = Source::parse(k).map_err(|e| format!("key {k:?} {e}"))?;
                out.insert(s, factor(v).map_err(|e| format!("{k}: {e}"))?);
            }
            Ok(out)
        })
        .unwrap_or_default();
    let tariff = Tariff {
        site_id: site_id?,
        tariff_version: 0,
        effective_from: effective_from?,
        rates_eu_per_wh: rates?,
        bands: parsed_bands,
        default_band: default_band?,
        source_multipliers,
    };
    if tariff.bands.len() == bands.len()
        && let Err((field, message)) = tariff.check()
    {
        f.errors.push(FieldError { field, message });
    }
    Some(Command::PublishTariff(tariff))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Command, Rejection> {
        Command::from_json(&serde_json::from_str(s).unwrap())
    }

    /// Wherever the text path answers, it gives the command the `Value` path gives; it
    /// answers for every plain reading line, and leaves the rest to the `Value` path.
    #[test]
    fn readings_from_text_are_the_readings_from_a_value() {
        use rand::{Rng, SeedableRng, seq::SliceRandom};
        let mut rng = rand::rngs::StdRng::seed_from_u64(61);
        let pick = |rng: &mut rand::rngs::StdRng, xs: &[&str]| xs.choose(rng).unwrap().to_string();
        let (mut answered, mut answered_body, mut plain) = (0, 0, 0);
        for _ in 0..20_000 {
            let mut fields: Vec<(String, String)> = Vec::new();
            let mut put = |k: &str, v: String| fields.push((k.to_string(), v));
            let odd = rng.gen_bool(0.3);
            let command = if odd {
                pick(&mut rng, &[r#""post_reading""#, r#""register_tenant""#, "1", "null"])
            } else {
                r#""post_reading""#.into()
            };
            // A route's body may leave the command out; a line may not.
            let omitted = rng.gen_bool(if odd { 0.1 } else { 0.2 });
            if !omitted {
                put("command", command);
            }
            let meter = if odd {
                pick(
                    &mut rng,
                    &[r#""m-000001""#, r#""A B""#, r#""""#, r#""m-\u0030""#, "7", "null"],
                )
            } else {
                format!(r#""m-{:06}""#, rng.gen_range(0..1_000_000))
            };
            put("meter_id", meter);
            let flow = if odd {
                pick(&mut rng, &[r#""consumed""#, r#""generated""#, r#""sideways""#, "null"])
            } else {
                pick(
                    &mut rng,
                    &[r#""consumed""#, r#""generated""#, r#""stored""#, r#""dispatched""#],
                )
            };
            put("flow", flow);
            let start = if odd {
                pick(
                    &mut rng,
                    &[
                        r#""2026-03-01T00:00:00Z""#,
                        r#""2026-03-01T02:00:00+02:00""#,
                        r#""2026-06-30T23:59:60Z""#,
                        r#""2026-03-01""#,
                        r#""2026-03-01T00:15:00Z""#,
                        "0",
                    ],
                )
            } else {
                let m = rng.gen_range(0..100_000);
                format!(r#""2026-01-01T{:02}:{:02}:00Z""#, m / 60 % 24, m % 60)
            };
            put("start", start);
            let end = if odd {
                pick(
                    &mut rng,
                    &[r#""2026-03-01T00:15:00Z""#, r#""2026-03-01T00:00:00.5Z""#, r#""x""#],
                )
            } else {
                r#""2026-01-02T00:00:00.250Z""#.into()
            };
            put("end", end);
            let wh = if odd {
                pick(
                    &mut rng,
                    &[
                        "12.5",
                        r#""12.50""#,
                        r#""-1""#,
                        "1e400",
                        r#""abc""#,
                        "true",
                        "null",
                        "0.0001",
                    ],
                )
            } else if rng.gen_bool(0.5) {
                format!("{}.{:03}", rng.gen_range(0..1_000_000), rng.gen_range(0..1000))
            } else {
                format!(r#""{}""#, rng.gen_range(0..1_000_000))
            };
            put("wh", wh);
            // The odd lines may carry values the parsers refuse; the plain ones, valid ones.
            let n = if odd { 4 } else { 2 };
            if rng.gen_bool(0.3) {
                let ids = [r#""0f9c4f8e-5f2b-4c1e-9a51-2f0a0d7b9c11""#, "null", r#""nope""#, "5"];
                put("event_id", pick(&mut rng, &ids[..n]));
            }
            if rng.gen_bool(0.3) {
                put("job_id", pick(&mut rng, &[r#""job-7""#, "null", r#""""#, "3"][..n]));
            }
            if rng.gen_bool(0.3) {
                let q = [r#""actual""#, r#""estimated""#, "null", r#""guessed""#];
                put("quality", pick(&mut rng, &q[..n.min(3) + usize::from(odd)]));
            }
            if odd && rng.gen_bool(0.2) {
                put("extra", "1".into());
            }
            if odd && rng.gen_bool(0.1) {
                put("flow", r#""stored""#.into());
            }
            fields.shuffle(&mut rng);
            let mut line = format!(
                "{{{}}}",
                fields
                    .iter()
                    .map(|(k, v)| format!(r#""{k}":{v}"#))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            if odd && rng.gen_bool(0.05) {
                line.push_str(" x");
            }
            let slow = serde_json::from_str::<Value>(&line)
                .ok()
                .and_then(|v| Command::from_json(&v).ok());
            match Command::reading_from_text(&line) {
                Some(fast) => {
                    answered += 1;
                    assert_eq!(Some(fast), slow, "{line}");
                }
                None => assert!(odd || omitted, "a plain reading line goes the text path: {line}"),
            }
            // The route's body: `command` optional, and if given, `post_reading`.
            let slow_body = serde_json::from_str::<Value>(&line).ok().and_then(|v| {
                let obj = v.as_object()?;
                match obj.get("command") {
                    None => {}
                    Some(Value::String(c)) if c == "post_reading" => {}
                    Some(_) => return None,
                }
                Command::parse("post_reading", obj).ok()
            });
            match Command::reading_body_from_text(&line) {
                Some(fast) => {
                    answered_body += 1;
                    assert_eq!(Some(fast), slow_body, "{line}");
                }
                None => assert!(odd, "a plain reading body goes the text path: {line}"),
            }
            plain += usize::from(!odd);
        }
        assert!(answered_body >= plain, "{answered_body} of {plain}");
        assert!(answered_body > answered, "{answered_body} bodies, {answered} lines");
        // An array of the fields in order is no object, for either path.
        let array =
            r#"["post_reading",null,"m-1","consumed","2026-01-01T00:00:00Z","2026-01-01T00:15:00Z","5",null,null]"#;
        assert_eq!(Command::reading_from_text(array), None);
        assert_eq!(Command::reading_body_from_text(array), None);
    }

    #[test]
    fn every_field_problem_is_reported() {
        let r =
            parse(r#"{"command":"post_reading","meter_id":"A B","flow":"sideways","start":"x","wh":"-1","extra":1}"#)
                .unwrap_err();
        let fields: Vec<&str> = r.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["meter_id", "flow", "start", "end", "wh", "extra"]);
    }

    #[test]
    fn unknown_command_is_named() {
        let r = parse(r#"{"command":"delete_everything"}"#).unwrap_err();
        assert_eq!(r.field.as_deref(), Some("command"));
        assert!(r.message.contains("delete_everything"));
    }

    #[test]
    fn a_tariff_with_overlapping_bands_is_refused_by_field() {
        let r = parse(
            r#"{"command":"publish_tariff","site_id":"s","effective_from":"2026-01-01T00:00:00Z",
            "rates_eu_per_wh":{"generated":"1","stored":"1","dispatched":"1","consumed":"1"},
            "bands":[{"name":"a","days":["mon"],"start":"10:00","end":"12:00","multiplier":"2"},
                     {"name":"b","days":["mon","tue"],"start":"11:00","end":"13:00","multiplier":"2"}],
            "default_band":{"name":"std","multiplier":"1"}}"#,
        )
        .unwrap_err();
        assert_eq!(r.field.as_deref(), Some("bands[1]"));
        assert!(r.message.contains("overlaps"));
    }

    #[test]
    fn a_meter_kind_decides_which_fields_belong() {
        let r = parse(
            r#"{"command":"register_meter","meter_id":"m","site_id":"s","kind":"load","rated_power_w":"1","capacity_wh":"5"}"#,
        )
        .unwrap_err();
        let fields: Vec<&str> = r.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["tenant_id", "capacity_wh"]);
    }
}
