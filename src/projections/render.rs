//! Statements as CSV and as a printable HTML page.

use super::Statement;
use super::attribution::{METHOD, TenantAttribution, fmt_wh};
use crate::domain::quantity::fmt_decimal;

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One row per line item, opening with the identity fields and ending with the totals.
pub fn statement_csv(s: &Statement) -> String {
    let mut out = String::from(
        "tenant_id,period,kind,date,site_id,band,energy_wh,amount_eu,memo,counterparty,original_period,position\n",
    );
    let id = format!("{},{}", csv_field(&s.tenant_id), csv_field(&s.period));
    let row = |kind: &str, rest: [String; 9]| {
        let rest: Vec<String> = rest.iter().map(|x| csv_field(x)).collect();
        format!("{id},{},{}\n", csv_field(kind), rest.join(","))
    };
    let total = |kind: &str, amount: &rust_decimal::Decimal, wh: Option<&rust_decimal::Decimal>| {
        row(
            kind,
            [
                String::new(),
                String::new(),
                String::new(),
                wh.map(fmt_decimal).unwrap_or_default(),
                fmt_decimal(amount),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ],
        )
    };
    out.push_str(&total("opening_balance", &s.opening_balance_eu, None));
    for l in &s.lines {
        out.push_str(&row(
            &l.kind,
            [
                l.date.clone().unwrap_or_default(),
                l.site_id.clone().unwrap_or_default(),
                l.band.clone().unwrap_or_default(),
                l.energy_wh.as_ref().map(fmt_decimal).unwrap_or_default(),
                fmt_decimal(&l.amount_eu),
                l.memo.clone().unwrap_or_default(),
                l.counterparty.clone().unwrap_or_default(),
                l.original_period.clone().unwrap_or_default(),
                l.position.map(|p| p.to_string()).unwrap_or_default(),
            ],
        ));
    }
    out.push_str(&total("total_charges", &s.charges_eu, Some(&s.consumption_wh)));
    out.push_str(&total("total_credits", &s.credits_eu, None));
    out.push_str(&total("total_transfers_in", &s.transfers_in_eu, None));
    out.push_str(&total("total_transfers_out", &s.transfers_out_eu, None));
    out.push_str(&total("total_adjustments", &s.adjustments_eu, Some(&s.adjustments_wh)));
    out.push_str(&total("closing_balance", &s.closing_balance_eu, None));
    // Not movements: what each job consumed and what became of each hold in the period.
    for (job, j) in &s.jobs {
        out.push_str(&row(
            "job",
            [
                String::new(),
                String::new(),
                String::new(),
                fmt_decimal(&j.energy_wh),
                fmt_decimal(&j.amount_eu),
                format!(
                    "job {job}: {} readings, {} EU drawn from holds",
                    j.readings,
                    fmt_decimal(&j.drawn_eu)
                ),
                String::new(),
                String::new(),
                String::new(),
            ],
        ));
    }
    for (id, h) in &s.holds {
        out.push_str(&row(
            "hold",
            [
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                fmt_decimal(&h.remaining_eu),
                hold_memo(id, h),
                String::new(),
                String::new(),
                String::new(),
            ],
        ));
    }
    if let Some(a) = &s.attribution {
        // The supply mix: one row per source (`energy_wh`, the source in `memo`), then the
        // carbon-free energy and the carbon, with the positions behind them.
        let note = |kind: &str, wh: String, memo: String| {
            row(
                kind,
                [
                    String::new(),
                    String::new(),
                    String::new(),
                    wh,
                    String::new(),
                    memo,
                    String::new(),
                    String::new(),
                    format!("{}-{}", a.first_position, a.last_position),
                ],
            )
        };
        for (source, wh) in &a.by_source_wh {
            out.push_str(&note("attributed_source", fmt_wh(wh), source.clone()));
        }
        let share =
            |d: Option<rust_decimal::Decimal>| d.map(|d| fmt_decimal(&d.round_dp(6).normalize())).unwrap_or_default();
        out.push_str(&note(
            "carbon_free",
            fmt_wh(&a.carbon_free_wh),
            format!(
                "share {}; hourly CFE score {}",
                share(a.carbon_free_share()),
                share(a.hourly_cfe_score())
            ),
        ));
        out.push_str(&note(
            "carbon",
            String::new(),
            format!(
                "{} kg CO2e; {METHOD}",
                fmt_decimal(&a.carbon_kg().round_dp(6).normalize())
            ),
        ));
    }
    out
}

/// One hold's activity in the period, in words.
fn hold_memo(id: &str, h: &super::HoldLine) -> String {
    format!(
        "hold {id}{}: {} EU until {}; placed {}, captured {}, drawn {}, released {}, left {} ({})",
        h.job_id.as_ref().map_or(String::new(), |j| format!(" (job {j})")),
        fmt_decimal(&h.amount_eu),
        h.expires_at,
        fmt_decimal(&h.placed_eu),
        fmt_decimal(&h.captured_eu),
        fmt_decimal(&h.drawn_eu),
        fmt_decimal(&h.released_eu),
        fmt_decimal(&h.remaining_eu),
        h.status
    )
}

pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A self-contained printable page: period, totals, lines, and the chain hash that pins it.
pub fn statement_html(s: &Statement) -> String {
    let e = |x: &str| html_escape(x);
    let mut rows = String::new();
    for l in &s.lines {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td><td>{}</td></tr>\n",
            e(&l.kind),
            e(l.date.as_deref().unwrap_or("")),
            e(l.site_id.as_deref().unwrap_or("")),
            e(l.band.as_deref().unwrap_or("")),
            l.energy_wh.as_ref().map(fmt_decimal).unwrap_or_default(),
            fmt_decimal(&l.amount_eu),
            e(&[l.memo.as_deref(), l.counterparty.as_deref()]
                .iter()
                .flatten()
                .copied()
                .collect::<Vec<_>>()
                .join(" · ")),
        ));
    }
    let total = |label: &str, d: &rust_decimal::Decimal| {
        format!("<tr><th>{label}</th><td class=n>{}</td></tr>", fmt_decimal(d))
    };
    let mut extra = String::new();
    if !s.jobs.is_empty() {
        extra.push_str("<h2>Jobs</h2>\n<table><thead><tr><th>Job</th><th class=n>Readings</th><th class=n>Energy (Wh)</th><th class=n>Amount (EU)</th><th class=n>From holds (EU)</th></tr></thead><tbody>\n");
        for (job, j) in &s.jobs {
            extra.push_str(&format!(
                "<tr><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td></tr>\n",
                e(job),
                j.readings,
                fmt_decimal(&j.energy_wh),
                fmt_decimal(&j.amount_eu),
                fmt_decimal(&j.drawn_eu)
            ));
        }
        extra.push_str("</tbody></table>\n");
    }
    if !s.holds.is_empty() {
        extra.push_str("<h2>Holds</h2>\n<table><thead><tr><th>Hold</th><th>Job</th><th class=n>Amount</th><th>Expires</th><th class=n>Placed</th><th class=n>Captured</th><th class=n>Drawn</th><th class=n>Released</th><th class=n>Left</th><th>Status</th></tr></thead><tbody>\n");
        for (id, h) in &s.holds {
            extra.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td class=n>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td>{}</td></tr>\n",
                e(id),
                e(h.job_id.as_deref().unwrap_or("")),
                fmt_decimal(&h.amount_eu),
                e(&h.expires_at),
                fmt_decimal(&h.placed_eu),
                fmt_decimal(&h.captured_eu),
                fmt_decimal(&h.drawn_eu),
                fmt_decimal(&h.released_eu),
                fmt_decimal(&h.remaining_eu),
                e(&h.status)
            ));
        }
        extra.push_str("</tbody></table>\n");
    }
    if let Some(limit) = &s.spending_limit_eu {
        extra.push_str(&format!(
            "<p>Spending limit: {} EU per period{}.</p>\n",
            fmt_decimal(limit),
            if s.spending_limit_exceeded {
                " — exceeded in this period"
            } else {
                ""
            }
        ));
    } else if s.spending_limit_exceeded {
        extra.push_str("<p>The spending limit was exceeded in this period.</p>\n");
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Statement {tenant} {period}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2rem;color:#111}} table{{border-collapse:collapse;margin:1rem 0}}
td,th{{padding:.25rem .6rem;border-bottom:1px solid #ddd;text-align:left}} .n{{text-align:right;font-variant-numeric:tabular-nums}}
.meta{{color:#555;font-size:.85rem;word-break:break-all}} @media print{{body{{margin:0}}}}
</style></head><body>
<h1>Energy statement</h1>
<p><strong>{name}</strong> ({tenant}) · period <strong>{period}</strong> · {status}</p>
<table>
{opening}{charges}{credits}{tin}{tout}{adj}{closing}
<tr><th>Consumption (Wh)</th><td class=n>{wh}</td></tr>
<tr><th>Prior-period adjustments (Wh)</th><td class=n>{adj_wh}</td></tr>
</table>
<table><thead><tr><th>Kind</th><th>Date</th><th>Site</th><th>Band</th><th class=n>Energy (Wh)</th><th class=n>Amount (EU)</th><th>Memo</th></tr></thead>
<tbody>
{rows}</tbody></table>
{extra}{attribution}
<p class=meta>Positions {first}–{last} · chain hash {hash}</p>
</body></html>
"#,
        tenant = e(&s.tenant_id),
        name = e(&s.tenant_name),
        period = e(&s.period),
        status = if s.is_final {
            "final (period closed)"
        } else {
            "provisional (period open)"
        },
        opening = total("Opening balance (EU)", &s.opening_balance_eu),
        charges = total("Charges (EU)", &s.charges_eu),
        credits = total("Credits (EU)", &s.credits_eu),
        tin = total("Transfers in (EU)", &s.transfers_in_eu),
        tout = total("Transfers out (EU)", &s.transfers_out_eu),
        adj = total("Adjustments (EU)", &s.adjustments_eu),
        closing = total("Closing balance (EU)", &s.closing_balance_eu),
        wh = fmt_decimal(&s.consumption_wh),
        adj_wh = fmt_decimal(&s.adjustments_wh),
        first = s.first_position,
        last = s.last_position,
        hash = e(&s.chain_hash),
        extra = extra,
        attribution = s.attribution.as_ref().map(attribution_html).unwrap_or_default(),
    )
}

/// The statement's "which sources powered it" section.
fn attribution_html(a: &TenantAttribution) -> String {
    let pct = |d: Option<rust_decimal::Decimal>| {
        d.map(|d| {
            format!(
                "{} %",
                fmt_decimal(&(d * rust_decimal::Decimal::ONE_HUNDRED).round_dp(2).normalize())
            )
        })
        .unwrap_or_else(|| "–".into())
    };
    let mut rows = String::new();
    for (source, wh) in &a.by_source_wh {
        let share = (!a.consumption_wh.is_zero()).then(|| *wh / a.consumption_wh);
        rows.push_str(&format!(
            "<tr><td>{}</td><td class=n>{}</td><td class=n>{}</td></tr>\n",
            html_escape(source),
            fmt_wh(wh),
            pct(share)
        ));
    }
    format!(
        r#"<h2>Sources of this consumption</h2>
<table><thead><tr><th>Source</th><th class=n>Energy (Wh)</th><th class=n>Share</th></tr></thead>
<tbody>
{rows}</tbody></table>
<table>
<tr><th>Carbon (kg CO2e)</th><td class=n>{carbon}</td></tr>
<tr><th>Carbon-free share</th><td class=n>{cfe}</td></tr>
<tr><th>Hourly carbon-free score</th><td class=n>{score}</td></tr>
<tr><th>Hours flagged</th><td class=n>{flagged}</td></tr>
</table>
<p class=meta>Method: {method}. Readings at positions {first}–{last}.</p>"#,
        carbon = fmt_decimal(&a.carbon_kg().round_dp(6).normalize()),
        cfe = pct(a.carbon_free_share()),
        score = pct(a.hourly_cfe_score()),
        flagged = a.flagged_hours,
        method = html_escape(METHOD),
        first = a.first_position,
        last = a.last_position,
    )
}
