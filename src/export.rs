//! The hledger export: the ledger's double-entry books as a plain-text journal that
//! [hledger](https://hledger.org) checks (`hledger check --strict`) and reports on.
//!
//! - `Wh` and `EU` are declared commodities (`commodity 1000.000 Wh`, `commodity
//!   1000.000000 EU`, with `decimal-mark .`), and every account is declared, so strict mode
//!   accepts the journal.
//! - **One transaction per event, in log order**, with the event's postings
//!   (`domain::postings`): each leg once in EU and, for energy events, once in Wh. Events
//!   that post nothing (registrations, tariffs) are transactions without postings.
//! - **Signs are hledger's: debits positive, credits negative**, for every account. A
//!   debit-normal account (`asset:`, `storage:`, `site:…:bus`, `issuance`) has the same
//!   balance in hledger as in wattledger; a tenant account (credit-normal in wattledger:
//!   `balance_eu` = credits − debits = what it holds) shows the negated balance: a tenant
//!   that holds 100 EU is at −100 EU in hledger, as a liability of the campus would be.
//! - **Dates are booking dates**: a reading's (or correction's) is its interval's start
//!   (UTC), a credit's or transfer's its `recorded_at` (UTC); a movement booked into a later
//!   period than its own (a late reading for a closed period) is dated the first day of the
//!   period it is booked into. Every transaction is thus dated inside its booked period.
//! - **Each closed period ends with balance assertions**: the `PeriodClosed` transaction,
//!   dated the period's last day, asserts every account's balance in EU and in Wh as booked
//!   through that period — the sum of wattledger's own settlement nets (`Books::settlement`)
//!   of that period and every earlier one. hledger checks them against the postings above,
//!   so a journal that passes says the event postings and the projections agree.

use crate::domain::Event;
use crate::domain::postings::{Side, postings};
use crate::domain::quantity::fmt_decimal;
use crate::domain::time::{Period, fmt_time};
use crate::projections::Books;
use crate::store::{EventStore, READ_PAGE_EVENTS_MAX, RecordedEvent, StoreError};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::io::Write;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Corrupt(String),
}

/// Where account names are padded to, so amounts line up.
const ACCOUNT_COLUMN: usize = 44;

/// Reads the log up to `head`, a page at a time, calling `f` on each record.
async fn each_event(
    store: &dyn EventStore,
    head: u64,
    mut f: impl FnMut(&RecordedEvent, &Event) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    let mut after = 0;
    while after < head {
        let page = store.read_all(after, READ_PAGE_EVENTS_MAX).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for r in page.iter().filter(|r| r.position <= head) {
            let ev = Event::from_parts(&r.event_type, &r.data)
                .map_err(|m| ExportError::Corrupt(format!("position {}: {m}", r.position)))?;
            f(r, &ev)?;
        }
    }
    Ok(())
}

fn day(t: DateTime<Utc>) -> NaiveDate {
    t.date_naive()
}

/// The date a movement is booked on: its own date, or the first day of the period it is
/// booked into when that is a later one.
fn booked_date(natural: DateTime<Utc>, booked: Period) -> NaiveDate {
    if Period::of(natural) == booked {
        day(natural)
    } else {
        day(booked.start())
    }
}

/// Free text safe on a transaction line (`;` would start a comment).
fn clean(s: &str) -> String {
    s.replace(';', ",")
}

fn amount(x: Decimal, commodity: &str) -> String {
    format!("{} {commodity}", fmt_decimal(&x))
}

fn posting_line(out: &mut impl Write, account: &str, text: &str) -> std::io::Result<()> {
    writeln!(out, "    {account:<ACCOUNT_COLUMN$}  {text}")
}

/// Date and description of an event's transaction.
fn header(rec: &RecordedEvent, ev: &Event) -> (NaiveDate, String) {
    let at = rec.recorded_at;
    match ev {
        Event::SiteRegistered(s) => (day(at), format!("site {} registered ({})", s.site_id, s.time_zone)),
        Event::TenantRegistered(t) => (
            day(at),
            format!("tenant {} registered ({})", t.tenant_id, clean(&t.name)),
        ),
        Event::MeterRegistered(m) => (
            day(at),
            format!(
                "meter {} registered ({} at site {})",
                m.meter_id,
                m.kind.as_str(),
                m.site_id
            ),
        ),
        Event::TariffPublished(t) => (
            day(at),
            format!(
                "tariff version {} of site {} published, effective {}",
                t.tariff_version,
                t.site_id,
                fmt_time(&t.effective_from)
            ),
        ),
        Event::EmissionFactorsPublished(f) => (
            day(at),
            format!(
                "emission factors version {} of site {} published, effective {}",
                f.factors_version,
                f.site_id,
                fmt_time(&f.effective_from)
            ),
        ),
        Event::PeriodClosed(p) => (
            day(p.period.end() - Duration::days(1)),
            format!("period {} closed: balances booked through {}", p.period, p.period),
        ),
        Event::EnergyGenerated(r) | Event::EnergyStored(r) | Event::EnergyDispatched(r) | Event::EnergyConsumed(r) => (
            booked_date(r.start, r.booked_period),
            format!(
                "{} {} Wh {} by {} {}–{} ({})",
                r.flow,
                fmt_decimal(&r.energy_wh.value()),
                if r.booked_period == r.period {
                    String::new()
                } else {
                    format!("(late, of {})", r.period)
                },
                r.meter_id,
                fmt_time(&r.start),
                fmt_time(&r.end),
                r.price.band
            )
            .replace("  ", " "),
        ),
        Event::ReadingCorrected(c) => (
            booked_date(c.start, c.booked_period),
            format!(
                "correction of {} {} by {} {}: {} → {} Wh, {}",
                c.flow,
                c.corrected_event_id,
                c.meter_id,
                fmt_time(&c.start),
                fmt_decimal(&c.previous_wh.value()),
                fmt_decimal(&c.energy_wh.value()),
                clean(&c.reason)
            ),
        ),
        Event::CreditsIssued(c) => (
            booked_date(at, c.booked_period),
            format!("credits issued to {}: {}", c.tenant_id, clean(&c.memo)),
        ),
        Event::CreditsTransferred(c) => (
            booked_date(at, c.booked_period),
            format!("transfer {} → {}: {}", c.from_tenant, c.to_tenant, clean(&c.memo)),
        ),
        Event::HoldPlaced(h) => (
            booked_date(at, h.booked_period),
            format!(
                "hold {} placed for {}{} until {}: {}",
                h.hold_id,
                h.tenant_id,
                h.job_id.as_ref().map_or(String::new(), |j| format!(" (job {j})")),
                fmt_time(&h.expires_at),
                clean(&h.memo)
            ),
        ),
        Event::HoldCaptured(h) => (
            booked_date(at, h.booked_period),
            format!("hold {} of {} captured", h.hold_id, h.tenant_id),
        ),
        Event::HoldReleased(h) => (
            booked_date(at, h.booked_period),
            format!("hold {} of {} released", h.hold_id, h.tenant_id),
        ),
        Event::HoldExpired(h) => (
            booked_date(at, h.booked_period),
            format!(
                "hold {} of {} expired at {}",
                h.hold_id,
                h.tenant_id,
                fmt_time(&h.expires_at)
            ),
        ),
        Event::SpendingLimitSet(l) => (
            day(at),
            format!(
                "spending limit of {} from {}: {}",
                l.tenant_id,
                l.period,
                l.limit_eu.map_or("none".to_string(), |x| format!("{x} EU per period"))
            ),
        ),
        Event::SpendingLimitExceeded(x) => (
            day(at),
            format!(
                "spending limit of {} exceeded in {}: {} EU charged, limit {} EU",
                x.tenant_id,
                x.period,
                fmt_decimal(&x.charged_eu),
                x.limit_eu
            ),
        ),
    }
}

/// The change an event makes to a tenant's reserved EU, as `(tenant, EU)`: placing a hold
/// reserves, capturing, drawing, releasing and expiring use the reservation up. The journal
/// shows it as unbalanced virtual postings to `held:{tenant}` (left out by `--real`), so
/// `hledger bal held` lists what each tenant has on hold.
fn held_change(ev: &Event) -> Option<(String, Decimal)> {
    match ev {
        Event::HoldPlaced(h) => Some((h.tenant_id.to_string(), h.amount_eu.value())),
        Event::HoldCaptured(h) => Some((h.tenant_id.to_string(), -h.amount_eu.value())),
        Event::HoldReleased(h) | Event::HoldExpired(h) => Some((h.tenant_id.to_string(), -h.released_eu.value())),
        Event::EnergyConsumed(r) if !r.hold_draws.is_empty() => {
            let drawn: Decimal = r.hold_draws.iter().map(|d| d.amount_eu.value()).sum();
            r.tenant_id.as_ref().map(|t| (t.to_string(), -drawn))
        }
        _ => None,
    }
}

/// Writes the hledger journal of the log as it stands now; returns the number of events.
pub async fn hledger_journal(store: &dyn EventStore, out: &mut impl Write) -> Result<u64, ExportError> {
    let head = store.head().await?;
    // Pass 1: wattledger's own books at this head (the assertions come from them).
    let mut books = Books::default();
    each_event(store, head.position, |r, ev| {
        books.apply(r, ev);
        Ok(())
    })
    .await?;

    let mut accounts: Vec<&String> = books.accounts.keys().collect();
    accounts.sort();
    writeln!(
        out,
        "; wattledger journal: {} events, positions 1–{}, chain hash {}",
        head.position, head.position, head.hash
    )?;
    writeln!(
        out,
        "; Signs are hledger's: debits positive, credits negative. Tenant accounts, credit-normal\n\
         ; in wattledger, show the negated balance here (a tenant holding 100 EU is at -100 EU).\n\
         ; Each closed period ends with balance assertions of every account, in EU and Wh.\n"
    )?;
    writeln!(out, "decimal-mark .\n")?;
    writeln!(
        out,
        "commodity 1000.000000 EU\n    ; energy units: 1 EU is the value of 1 Wh at base rate"
    )?;
    writeln!(out, "commodity 1000.000 Wh\n    ; watt-hours\n")?;
    for (top, kind, what) in [
        ("tenant", "L", "what each tenant holds (credit-normal in wattledger)"),
        ("asset", "R", "energy each generation asset delivered to a bus"),
        ("storage", "A", "energy held by each battery"),
        ("site", "A", "each site's bus: its balance is the losses"),
        (
            "issuance",
            "E",
            "where credits are issued from and captured holds return to",
        ),
    ] {
        writeln!(out, "account {top}  ; type: {kind}, {what}")?;
    }
    let mut held: Vec<String> = books.holds.values().map(|h| h.tenant_id.clone()).collect();
    held.sort();
    held.dedup();
    if !held.is_empty() {
        writeln!(
            out,
            "account held  ; EU each tenant has on hold (virtual postings, left out by --real)"
        )?;
        for t in &held {
            writeln!(out, "account held:{t}")?;
        }
    }
    for a in &accounts {
        if a.as_str() != "issuance" {
            writeln!(out, "account {a}")?;
        }
    }
    writeln!(out)?;

    // Pass 2: one transaction per event.
    let mut n = 0u64;
    each_event(store, head.position, |r, ev| {
        n += 1;
        let (date, description) = header(r, ev);
        writeln!(out, "{date} * {}", clean(&description))?;
        writeln!(
            out,
            "    ; {}, position:{}, event_id:{}, stream:{}, recorded_at:{}",
            r.event_type,
            r.position,
            r.event_id,
            r.stream,
            fmt_time(&r.recorded_at)
        )?;
        let energy = matches!(ev, Event::ReadingCorrected(_)) || ev.as_reading().is_some();
        for p in postings(ev) {
            let sign = if p.side == Side::Debit {
                Decimal::ONE
            } else {
                -Decimal::ONE
            };
            posting_line(out, &p.account, &amount(sign * p.amount_eu, "EU"))?;
            if energy {
                posting_line(out, &p.account, &amount(sign * p.energy_wh, "Wh"))?;
            }
        }
        if let Some((tenant, change)) = held_change(ev)
            && !change.is_zero()
        {
            posting_line(out, &format!("(held:{tenant})"), &amount(change, "EU"))?;
        }
        if let Event::PeriodClosed(c) = ev {
            writeln!(
                out,
                "    ; pinned last_position:{}, chain_hash:{}",
                c.last_position, c.chain_hash
            )?;
            let mut through: BTreeMap<&str, (Decimal, Decimal)> = BTreeMap::new();
            let key = c.period.to_string();
            for (_, nets) in books.settlement.range(..=key) {
                for (account, (eu, wh)) in nets {
                    let t = through.entry(account.as_str()).or_default();
                    t.0 += eu;
                    t.1 += wh;
                }
            }
            for (account, (eu, wh)) in through {
                posting_line(out, account, &format!("0 EU = {}", amount(eu, "EU")))?;
                posting_line(out, account, &format!("0 Wh = {}", amount(wh, "Wh")))?;
            }
        }
        writeln!(out)?;
        Ok(())
    })
    .await?;
    out.flush()?;
    Ok(n)
}
