//! Double-entry postings (DESIGN §3): every event moves EU (and Wh, for readings) from one
//! account to another, so every event's debits equal its credits.

use super::events::Event;
use super::tariff::Flow;
use rust_decimal::Decimal;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Debit,
    Credit,
}

/// One leg of a double-entry posting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Posting {
    pub account: String,
    pub side: Side,
    #[serde(with = "super::quantity::decimal_str")]
    pub amount_eu: Decimal,
    #[serde(with = "super::quantity::decimal_str")]
    pub energy_wh: Decimal,
}

pub const ISSUANCE_ACCOUNT: &str = "issuance";

pub fn bus_account(site: &str) -> String {
    ["site:", site, ":bus"].concat()
}

/// Whether an account is credit-normal (its balance is credits − debits): tenants hold EU,
/// so a tenant's balance is what it holds. Every other account is debit-normal.
pub fn credit_normal(account: &str) -> bool {
    account.starts_with("tenant:")
}

/// Checks that an account name has one of the known shapes.
pub fn parse_account(s: &str) -> Result<(), String> {
    let id_ok = |id: &str| super::ids::check_id(id).is_ok();
    let ok = s == ISSUANCE_ACCOUNT
        || ["tenant:", "asset:", "storage:"]
            .iter()
            .any(|p| s.strip_prefix(p).is_some_and(id_ok))
        || s.strip_prefix("site:")
            .and_then(|r| r.strip_suffix(":bus"))
            .is_some_and(id_ok);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "unknown account {s:?}: expected tenant:ID, asset:ID, storage:ID, site:ID:bus or issuance"
        ))
    }
}

/// A pair of legs moving `eu` and `wh` from `credit` to `debit`. A negative movement (a
/// correction downwards) is posted as the reverse movement, so amounts are never negative.
fn pair(debit: String, credit: String, eu: Decimal, wh: Decimal) -> Vec<Posting> {
    let (debit, credit, eu, wh) = if eu < Decimal::ZERO || wh < Decimal::ZERO {
        (credit, debit, -eu, -wh)
    } else {
        (debit, credit, eu, wh)
    };
    vec![
        Posting {
            account: debit,
            side: Side::Debit,
            amount_eu: eu,
            energy_wh: wh,
        },
        Posting {
            account: credit,
            side: Side::Credit,
            amount_eu: eu,
            energy_wh: wh,
        },
    ]
}

fn flow_accounts(flow: Flow, site: &str, asset: Option<&str>, tenant: Option<&str>) -> (String, String) {
    let bus = bus_account(site);
    let asset = asset.unwrap_or("unknown");
    // Joined without `format!`: every reading names two accounts.
    match flow {
        Flow::Generated => (bus, ["asset:", asset].concat()),
        Flow::Stored => (["storage:", asset].concat(), bus),
        Flow::Dispatched => (bus, ["storage:", asset].concat()),
        Flow::Consumed => (["tenant:", tenant.unwrap_or("unknown")].concat(), bus),
    }
}

/// The postings an event makes. Registrations, tariffs, emission factors, period closes, holds
/// (placed, released, expired) and spending limits post nothing.
pub fn postings(event: &Event) -> Vec<Posting> {
    match event {
        Event::EnergyGenerated(r) | Event::EnergyStored(r) | Event::EnergyDispatched(r) | Event::EnergyConsumed(r) => {
            let (d, c) = flow_accounts(
                r.flow,
                r.site_id.as_str(),
                r.asset_id.as_ref().map(|a| a.as_str()),
                r.tenant_id.as_ref().map(|t| t.as_str()),
            );
            pair(d, c, r.price.amount_eu, r.energy_wh.value())
        }
        Event::ReadingCorrected(c) => {
            let (d, cr) = flow_accounts(
                c.flow,
                c.site_id.as_str(),
                c.asset_id.as_ref().map(|a| a.as_str()),
                c.tenant_id.as_ref().map(|t| t.as_str()),
            );
            pair(d, cr, c.delta_eu, c.delta_wh)
        }
        Event::CreditsIssued(c) => pair(
            ISSUANCE_ACCOUNT.to_string(),
            format!("tenant:{}", c.tenant_id),
            c.amount_eu.value(),
            Decimal::ZERO,
        ),
        Event::CreditsTransferred(c) => pair(
            format!("tenant:{}", c.from_tenant),
            format!("tenant:{}", c.to_tenant),
            c.amount_eu.value(),
            Decimal::ZERO,
        ),
        // A capture turns held EU into a charge: the tenant pays them back to where EU come
        // from (they are retired), like consumption pays the site's bus.
        Event::HoldCaptured(c) => pair(
            format!("tenant:{}", c.tenant_id),
            ISSUANCE_ACCOUNT.to_string(),
            c.amount_eu.value(),
            Decimal::ZERO,
        ),
        // A hold only reserves: the EU stay in the tenant's account until captured.
        Event::HoldPlaced(_)
        | Event::HoldReleased(_)
        | Event::HoldExpired(_)
        | Event::SpendingLimitSet(_)
        | Event::SpendingLimitExceeded(_)
        | Event::SiteRegistered(_)
        | Event::TariffPublished(_)
        | Event::PeriodClosed(_)
        | Event::MeterRegistered(_)
        | Event::TenantRegistered(_)
        | Event::EmissionFactorsPublished(_) => Vec::new(),
    }
}

/// Whether a set of postings balances: debits equal credits, in EU and in Wh.
pub fn balanced(ps: &[Posting]) -> bool {
    let sum = |side: Side, f: fn(&Posting) -> Decimal| -> Decimal { ps.iter().filter(|p| p.side == side).map(f).sum() };
    sum(Side::Debit, |p| p.amount_eu) == sum(Side::Credit, |p| p.amount_eu)
        && sum(Side::Debit, |p| p.energy_wh) == sum(Side::Credit, |p| p.energy_wh)
}
