//! JSON text written member by member, for the hottest objects (a reading's canonical data,
//! the answer to a reading). The writers here give the bytes serde_json gives for the same
//! values through a `Value`: members in key order (no `preserve_order`), no spaces, strings
//! escaped by serde_json when they need it. Each caller's tests compare the two.

use super::quantity::write_decimal;
use super::tariff::Price;
use super::time::{Period, write_time};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

/// `"key":`, after a comma unless it opens the object.
pub fn key(o: &mut String, k: &str) {
    if !o.ends_with('{') {
        o.push(',');
    }
    o.push('"');
    o.push_str(k);
    o.push_str("\":");
}

/// A JSON string: as it is when nothing in it needs escaping (serde_json escapes only `"`,
/// `\\` and control characters), else through serde_json's escaping.
pub fn string(o: &mut String, v: &str) {
    if v.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        o.push('"');
        o.push_str(v);
        o.push('"');
    } else {
        o.push_str(&serde_json::to_string(v).expect("strings serialise"));
    }
}

pub fn time(o: &mut String, t: &DateTime<Utc>) {
    o.push('"');
    write_time(o, t);
    o.push('"');
}

/// A decimal as a JSON string (the ledger's amounts are strings).
pub fn decimal(o: &mut String, d: &Decimal) {
    o.push('"');
    write_decimal(o, d);
    o.push('"');
}

pub fn period(o: &mut String, p: &Period) {
    o.push('"');
    p.write_to(o);
    o.push('"');
}

pub fn uint(o: &mut String, n: u64) {
    o.push_str(itoa::Buffer::new().format(n));
}

/// A price without parts as its JSON object; `None` (nothing written) for one in parts.
pub fn price(o: &mut String, p: &Price) -> Option<()> {
    if !p.parts.is_empty() {
        return None;
    }
    o.push('{');
    key(o, "amount_eu");
    decimal(o, &p.amount_eu);
    key(o, "band");
    string(o, &p.band);
    for (k, d) in [
        ("eu_per_wh", &p.eu_per_wh),
        ("multiplier", &p.multiplier),
        ("rate_eu_per_wh", &p.rate_eu_per_wh),
        ("source_multiplier", &p.source_multiplier),
    ] {
        key(o, k);
        decimal(o, d);
    }
    key(o, "tariff_version");
    uint(o, p.tariff_version.into());
    o.push('}');
    Some(())
}
