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

/// A reader of the text the writers above give, for the hottest objects read back (a
/// reading's stored data, in the audit and in every replay). It takes only that exact
/// shape: members in the writer's order, no spaces, strings without escapes. On anything
/// else it gives up (`None`) and the caller reads the text with serde, which takes every
/// JSON the ledger accepts and words its refusals. Each caller's tests check that whatever
/// this reader takes, serde reads to the same value.
pub struct Text<'a> {
    s: &'a str,
    at: usize,
}

impl<'a> Text<'a> {
    /// Opens an object: the text must start with `{`.
    pub fn object(s: &'a str) -> Option<Self> {
        s.starts_with('{').then_some(Text { s, at: 1 })
    }

    fn rest(&self) -> &'a [u8] {
        &self.s.as_bytes()[self.at..]
    }

    /// The member named `k` if it comes next: consumes `,"k":` (no comma after the `{`).
    pub fn has(&mut self, k: &str) -> bool {
        let comma = usize::from(self.s.as_bytes()[self.at - 1] != b'{');
        let r = self.rest();
        let n = comma + k.len() + 3;
        let found = r.len() >= n
            && (comma == 0 || r[0] == b',')
            && r[comma] == b'"'
            && &r[comma + 1..comma + 1 + k.len()] == k.as_bytes()
            && r[n - 2] == b'"'
            && r[n - 1] == b':';
        if found {
            self.at += n;
        }
        found
    }

    /// The member named `k`, which must come next.
    pub fn key(&mut self, k: &str) -> Option<()> {
        self.has(k).then_some(())
    }

    /// The member named `k`, which must come next, its string read by `parse`.
    pub fn member<T, E>(&mut self, k: &str, parse: impl FnOnce(&'a str) -> Result<T, E>) -> Option<T> {
        self.key(k)?;
        parse(self.str()?).ok()
    }

    /// [`Text::member`] for a member that may be left out: `Some(None)` when it is.
    pub fn optional<T, E>(&mut self, k: &str, parse: impl FnOnce(&'a str) -> Result<T, E>) -> Option<Option<T>> {
        match self.has(k) {
            true => parse(self.str()?).ok().map(Some),
            false => Some(None),
        }
    }

    /// A string without escapes or control characters (serde_json's writer escapes only
    /// those), as it stands in the text.
    pub fn str(&mut self) -> Option<&'a str> {
        let r = self.rest();
        if r.first() != Some(&b'"') {
            return None;
        }
        let len = r[1..].iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if r[1 + len] != b'"' {
            return None;
        }
        let v = &self.s[self.at + 1..self.at + 1 + len];
        self.at += len + 2;
        Some(v)
    }

    /// An unsigned integer as serde_json writes it: digits, no leading zero but for `0`.
    pub fn uint(&mut self) -> Option<u64> {
        let r = self.rest();
        let len = r.iter().position(|b| !b.is_ascii_digit()).unwrap_or(r.len());
        if len == 0 || len > 19 || (len > 1 && r[0] == b'0') {
            return None;
        }
        let n = self.s[self.at..self.at + len].parse().ok()?;
        self.at += len;
        Some(n)
    }

    /// Closes an object that was opened inside this one (`}`), and reads on after it.
    pub fn close(&mut self) -> Option<()> {
        (self.rest().first() == Some(&b'}')).then(|| self.at += 1)
    }

    /// Opens an object as a member's value (`{`).
    pub fn open(&mut self) -> Option<()> {
        (self.rest().first() == Some(&b'{')).then(|| self.at += 1)
    }

    /// The end of the outermost object: `}` and nothing after it.
    pub fn end(mut self) -> Option<()> {
        self.close()?;
        (self.at == self.s.len()).then_some(())
    }
}
