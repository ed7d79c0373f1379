//! Meter data in the formats utilities export: CSV and Green Button (NAESB ESPI XML).
//!
//! Parsing only: a file becomes a list of interval readings, which `app::import` turns into
//! `post_reading` commands for one meter and sends through the ledger, like `apply`. The
//! reading identity is `(meter, flow, interval)`, so importing the same file again records
//! nothing new: every reading comes back as a duplicate.
//!
//! **CSV**: a header, then one reading per line: `start,end,wh` (or `start,wh` with
//! `--interval`), in any column order, optionally with a `quality` column (`actual` |
//! `estimated`). Times are RFC 3339; Wh have at most 3 decimals. Blank lines and lines
//! starting with `#` are skipped.
//!
//! **Green Button**: the Atom feed (or a bare ESPI document) that utilities export. Each
//! `IntervalBlock/IntervalReading` gives `timePeriod/start` (Unix seconds), `timePeriod/
//! duration` (seconds), `value` and any `ReadingQuality/quality`; the `ReadingType` of the
//! block's `MeterReading` gives `uom` (only 72, Wh, is accepted) and `powerOfTenMultiplier`:
//! Wh = value × 10^multiplier. The XML is read by the small reader below: ESPI needs
//! elements, attributes, text, comments, CDATA and the five predefined entities, nothing
//! more, and no dependency is worth that.

use crate::domain::events::Quality;
use crate::domain::quantity::{EnergyWh, fmt_decimal, parse_decimal};
use crate::domain::tariff::Flow;
use crate::domain::time::{INTERVAL_S_MAX, fmt_time, parse_time};
use chrono::{DateTime, Duration, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// Largest file `import` reads, in bytes.
pub const IMPORT_FILE_BYTES_MAX: u64 = 512 * 1024 * 1024;
/// Deepest XML nesting accepted.
pub const XML_DEPTH_MAX: usize = 64;
/// The ESPI unit of measure (`UnitSymbolKind`) for watt-hours.
pub const ESPI_UOM_WH: i64 = 72;

/// One interval reading from a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedReading {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub wh: EnergyWh,
    pub quality: Quality,
}

impl ImportedReading {
    /// The `post_reading` command for this reading.
    pub fn command(&self, meter: &str, flow: Flow) -> Value {
        let mut v = json!({
            "command": "post_reading",
            "meter_id": meter,
            "flow": flow.as_str(),
            "start": fmt_time(&self.start),
            "end": fmt_time(&self.end),
            "wh": fmt_decimal(&self.wh.value()),
        });
        if self.quality == Quality::Estimated {
            v["quality"] = json!("estimated");
        }
        v
    }
}

/// Parses an interval length: `900s`, `15m`, `1h` (a bare number is seconds).
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let bad = || format!("--interval must be a length such as 15m, 900s or 1h, got {s:?}");
    let t = s.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let n: i64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" | "min" => n.checked_mul(60).ok_or_else(bad)?,
        "h" => n.checked_mul(3600).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    if secs <= 0 || secs > INTERVAL_S_MAX {
        return Err(format!("--interval must be between 1 s and 24 h, got {s:?}"));
    }
    Ok(Duration::seconds(secs))
}

fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur).trim().to_string()),
            c => cur.push(c),
        }
    }
    out.push(cur.trim().to_string());
    out
}

/// Parses a CSV file of readings (see the module documentation).
pub fn parse_csv(text: &str, interval: Option<Duration>) -> Result<Vec<ImportedReading>, String> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_start_matches('\u{feff}').trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    let (_, header) = lines
        .next()
        .ok_or("the CSV file is empty: it needs a header such as start,end,wh")?;
    let names: Vec<String> = csv_fields(header).iter().map(|s| s.to_ascii_lowercase()).collect();
    let col = |n: &str| names.iter().position(|x| x == n);
    for n in &names {
        if !["start", "end", "wh", "quality"].contains(&n.as_str()) {
            return Err(format!(
                "line 1: unknown column {n:?}; the header names start, end (or --interval), wh and optionally quality"
            ));
        }
    }
    let start_col = col("start").ok_or("the header has no start column")?;
    let wh_col = col("wh").ok_or("the header has no wh column")?;
    let end_col = col("end");
    let quality_col = col("quality");
    match (end_col, interval) {
        (None, None) => {
            return Err("the file has no end column: give the reading length with --interval (such as 15m)".into());
        }
        (Some(_), Some(_)) => return Err("the file has an end column: --interval is only for start,wh files".into()),
        _ => {}
    }
    let mut out = Vec::new();
    for (n, line) in lines {
        let f = csv_fields(line);
        if f.len() != names.len() {
            return Err(format!("line {n}: {} fields, the header has {}", f.len(), names.len()));
        }
        let start = parse_time(&f[start_col]).map_err(|m| format!("line {n}: start {m}"))?;
        let end = match (end_col, interval) {
            (Some(c), _) => parse_time(&f[c]).map_err(|m| format!("line {n}: end {m}"))?,
            (None, Some(d)) => start + d,
            (None, None) => unreachable!("checked above"),
        };
        let wh = EnergyWh::parse(&f[wh_col]).map_err(|m| format!("line {n}: wh {m}"))?;
        let quality = match quality_col.map(|c| f[c].to_ascii_lowercase()) {
            None => Quality::Actual,
            Some(q) if q.is_empty() || q == "actual" => Quality::Actual,
            Some(q) if q == "estimated" => Quality::Estimated,
            Some(q) => return Err(format!("line {n}: quality must be actual or estimated, got {q:?}")),
        };
        out.push(ImportedReading {
            start,
            end,
            wh,
            quality,
        });
    }
    Ok(out)
}

// ----- a small XML reader -----

/// An XML element: its local name (namespace prefix removed), attributes, children.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

fn local(name: &str) -> &str {
    name.rsplit(':').next().unwrap_or(name)
}

fn decode_entities(s: &str, at: usize) -> Result<String, String> {
    if !s.contains('&') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let end = rest[i..]
            .find(';')
            .ok_or_else(|| format!("XML: an unterminated entity near byte {at}"))?;
        let ent = &rest[i + 1..i + end];
        let c = match ent {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            e if e.starts_with("#x") || e.starts_with("#X") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| format!("XML: bad character reference &{e}; near byte {at}"))?,
            e if e.starts_with('#') => e[1..]
                .parse::<u32>()
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| format!("XML: bad character reference &{e}; near byte {at}"))?,
            e => return Err(format!("XML: unknown entity &{e}; near byte {at}")),
        };
        out.push(c);
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses an XML document into its root element. Declarations, processing instructions,
/// comments and a DOCTYPE are skipped (no entity of a DOCTYPE is ever expanded).
pub fn parse_xml(text: &str) -> Result<Element, String> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut stack: Vec<Element> = vec![Element::default()];
    let find = |from: usize, pat: &str| text[from..].find(pat).map(|k| from + k);
    while i < b.len() {
        if b[i] != b'<' {
            let end = find(i, "<").unwrap_or(b.len());
            let raw = &text[i..end];
            if !raw.trim().is_empty() {
                if stack.len() == 1 {
                    return Err(format!("XML: text outside the root element near byte {i}"));
                }
                let t = decode_entities(raw, i)?;
                stack.last_mut().expect("stack").children.push(Node::Text(t));
            }
            i = end;
            continue;
        }
        if text[i..].starts_with("<?") {
            i = find(i, "?>").ok_or("XML: an unterminated <? … ?>")? + 2;
        } else if text[i..].starts_with("<!--") {
            i = find(i + 4, "-->").ok_or("XML: an unterminated comment")? + 3;
        } else if text[i..].starts_with("<![CDATA[") {
            let end = find(i, "]]>").ok_or("XML: an unterminated CDATA section")?;
            let t = text[i + 9..end].to_string();
            stack.last_mut().expect("stack").children.push(Node::Text(t));
            i = end + 3;
        } else if text[i..].starts_with("<!") {
            // DOCTYPE (with an internal subset in brackets, possibly): skipped, never expanded.
            let mut depth = 0;
            let mut j = i + 2;
            while j < b.len() {
                match b[j] {
                    b'[' => depth += 1,
                    b']' => depth -= 1,
                    b'>' if depth <= 0 => break,
                    _ => {}
                }
                j += 1;
            }
            i = j + 1;
        } else if text[i..].starts_with("</") {
            let end = find(i, ">").ok_or("XML: an unterminated end tag")?;
            let name = text[i + 2..end].trim();
            if stack.len() < 2 {
                return Err(format!("XML: </{name}> closes nothing near byte {i}"));
            }
            let el = stack.pop().expect("stack");
            if el.name != local(name) {
                return Err(format!("XML: <{}> is closed by </{name}> near byte {i}", el.name));
            }
            stack.last_mut().expect("stack").children.push(Node::Element(el));
            i = end + 1;
        } else {
            // A start tag: name, attributes (values quoted with ' or "), maybe self-closing.
            let mut j = i + 1;
            let mut quote: Option<u8> = None;
            while j < b.len() {
                match (quote, b[j]) {
                    (Some(q), c) if c == q => quote = None,
                    (None, b'"') | (None, b'\'') => quote = Some(b[j]),
                    (None, b'>') => break,
                    _ => {}
                }
                j += 1;
            }
            if j >= b.len() {
                return Err(format!("XML: an unterminated start tag near byte {i}"));
            }
            let inner = &text[i + 1..j];
            let self_closing = inner.ends_with('/');
            let inner = inner.trim_end_matches('/');
            let name_end = inner.find(|c: char| c.is_whitespace()).unwrap_or(inner.len());
            let name = &inner[..name_end];
            if name.is_empty() {
                return Err(format!("XML: a tag without a name near byte {i}"));
            }
            let mut attrs = Vec::new();
            let mut rest = inner[name_end..].trim_start();
            while !rest.is_empty() {
                let eq = rest
                    .find('=')
                    .ok_or_else(|| format!("XML: a malformed attribute in <{name}> near byte {i}"))?;
                let key = rest[..eq].trim().to_string();
                let after = rest[eq + 1..].trim_start();
                let q = after
                    .chars()
                    .next()
                    .filter(|c| *c == '"' || *c == '\'')
                    .ok_or_else(|| format!("XML: an unquoted attribute in <{name}> near byte {i}"))?;
                let close = after[1..]
                    .find(q)
                    .ok_or_else(|| format!("XML: an unterminated attribute in <{name}> near byte {i}"))?;
                attrs.push((local(&key).to_string(), decode_entities(&after[1..1 + close], i)?));
                rest = after[close + 2..].trim_start();
            }
            let el = Element {
                name: local(name).to_string(),
                attrs,
                children: Vec::new(),
            };
            if self_closing {
                stack.last_mut().expect("stack").children.push(Node::Element(el));
            } else {
                if stack.len() > XML_DEPTH_MAX {
                    return Err(format!("XML: nested deeper than {XML_DEPTH_MAX} elements"));
                }
                stack.push(el);
            }
            i = j + 1;
        }
    }
    if stack.len() > 1 {
        return Err(format!("XML: <{}> is never closed", stack.last().expect("stack").name));
    }
    let doc = stack.pop().expect("document");
    let mut roots = doc.children.into_iter().filter_map(|n| match n {
        Node::Element(e) => Some(e),
        Node::Text(_) => None,
    });
    let root = roots.next().ok_or("XML: the document has no element")?;
    if roots.next().is_some() {
        return Err("XML: the document has more than one root element".into());
    }
    Ok(root)
}

impl Element {
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The first child element of that (local) name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.elements().find(|e| e.name == name)
    }

    /// Every descendant element of that name, in document order (not below a match).
    pub fn descendants<'a>(&'a self, name: &str, out: &mut Vec<&'a Element>) {
        for e in self.elements() {
            if e.name == name {
                out.push(e);
            } else {
                e.descendants(name, out);
            }
        }
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                s.push_str(t);
            }
        }
        s.trim().to_string()
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

// ----- Green Button (ESPI) -----

/// ESPI `QualityOfReading` codes and what the ledger records for them.
///
/// | code | ESPI meaning | recorded as |
/// | --- | --- | --- |
/// | 0 | valid | actual |
/// | 7 | manually edited | estimated |
/// | 8 | estimated using reference day | estimated |
/// | 9 | estimated using linear interpolation | estimated |
/// | 10 | questionable (failed a check) | estimated |
/// | 11 | derived (calculated, not measured) | estimated |
/// | 12 | projected (forecast) | estimated |
/// | 13 | mixed | estimated |
/// | 14 | raw (not yet validated) | actual |
/// | 15 | normalized for weather | estimated |
/// | 16 | other | estimated |
/// | 17 | validated | actual |
/// | 18 | verified | actual |
/// | 19 | revenue quality | actual |
///
/// A reading is `actual` only when every quality it carries says its value was measured;
/// a reading with no `ReadingQuality` is valid (ESPI's default). Any other code is refused.
pub fn espi_quality(code: i64) -> Result<Quality, String> {
    match code {
        0 | 14 | 17 | 18 | 19 => Ok(Quality::Actual),
        7 | 8 | 9 | 10 | 11 | 12 | 13 | 15 | 16 => Ok(Quality::Estimated),
        c => Err(format!("unknown ESPI quality code {c} (known: 0, 7–19)")),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ReadingType {
    uom: Option<i64>,
    multiplier: i64,
    flow_direction: Option<i64>,
}

fn int_child(e: &Element, name: &str) -> Result<Option<i64>, String> {
    match e.child(name) {
        None => Ok(None),
        Some(c) => c
            .text()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| format!("{}/{name} must be an integer, got {:?}", e.name, c.text())),
    }
}

fn reading_type(e: &Element) -> Result<ReadingType, String> {
    Ok(ReadingType {
        uom: int_child(e, "uom")?,
        multiplier: int_child(e, "powerOfTenMultiplier")?.unwrap_or(0),
        flow_direction: int_child(e, "flowDirection")?,
    })
}

/// An Atom link's path, without scheme and host, so absolute and relative hrefs compare.
fn link_path(href: &str) -> String {
    let h = href.trim();
    let h = match h.find("://") {
        Some(i) => match h[i + 3..].find('/') {
            Some(j) => &h[i + 3 + j..],
            None => "",
        },
        None => h,
    };
    h.trim_start_matches('/').trim_end_matches('/').to_string()
}

fn links(entry: &Element, rel: &str) -> Vec<String> {
    entry
        .elements()
        .filter(|l| l.name == "link" && l.attr("rel") == Some(rel))
        .filter_map(|l| l.attr("href"))
        .map(link_path)
        .collect()
}

/// `value × 10^multiplier`, exactly.
fn scale(value: Decimal, multiplier: i64) -> Result<Decimal, String> {
    if !(-12..=12).contains(&multiplier) {
        return Err(format!("powerOfTenMultiplier {multiplier} is out of range (−12 to 12)"));
    }
    let ten = Decimal::from(10);
    let mut v = value;
    for _ in 0..multiplier.unsigned_abs() {
        v = if multiplier > 0 {
            v.checked_mul(ten).ok_or("a value is too large")?
        } else {
            v.checked_div(ten).ok_or("a value is too small")?
        };
    }
    Ok(v)
}

/// Parses a Green Button (ESPI) file into readings, sorted by start.
pub fn parse_green_button(text: &str) -> Result<Vec<ImportedReading>, String> {
    let root = parse_xml(text)?;
    // The feed's entries; a bare ESPI document is one entry of its own.
    let mut entries = Vec::new();
    root.descendants("entry", &mut entries);
    if entries.is_empty() {
        entries.push(&root);
    }
    let mut types: Vec<(Vec<String>, ReadingType)> = Vec::new();
    let mut meter_readings: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for e in &entries {
        let mut rts = Vec::new();
        e.descendants("ReadingType", &mut rts);
        for rt in rts {
            types.push((links(e, "self"), reading_type(rt)?));
        }
        let mut mrs = Vec::new();
        e.descendants("MeterReading", &mut mrs);
        if !mrs.is_empty() {
            meter_readings.push((links(e, "self"), links(e, "related")));
        }
    }
    if types.is_empty() {
        return Err(
            "the file has no ReadingType, so the unit (uom) and powerOfTenMultiplier of its values are unknown".into(),
        );
    }
    // The ReadingType of an IntervalBlock entry: through its MeterReading's related link,
    // or the only ReadingType of the file.
    let type_of = |entry: &Element| -> Result<ReadingType, String> {
        let up = links(entry, "up");
        let mut candidates: Vec<&ReadingType> = Vec::new();
        for (self_links, related) in &meter_readings {
            let is_parent = up.iter().any(|u| {
                self_links
                    .iter()
                    .any(|s| u == s || u.strip_suffix("/IntervalBlock") == Some(s.as_str()))
                    || related.contains(u)
            });
            if is_parent {
                for (tl, t) in &types {
                    if tl.iter().any(|x| related.contains(x)) {
                        candidates.push(t);
                    }
                }
            }
        }
        match candidates.as_slice() {
            [t] => Ok((*t).clone()),
            _ if types.len() == 1 => Ok(types[0].1.clone()),
            [] => Err(format!(
                "the file has {} ReadingTypes and an IntervalBlock whose MeterReading (and so its ReadingType) cannot be found from its links",
                types.len()
            )),
            _ => Err("an IntervalBlock's MeterReading links to more than one ReadingType".into()),
        }
    };
    let mut out = Vec::new();
    let mut directions = std::collections::BTreeSet::new();
    for e in &entries {
        let mut blocks = Vec::new();
        e.descendants("IntervalBlock", &mut blocks);
        if blocks.is_empty() {
            continue;
        }
        let rt = type_of(e)?;
        match rt.uom {
            Some(ESPI_UOM_WH) => {}
            Some(u) => {
                return Err(format!(
                    "the ReadingType's uom is {u}; only 72 (Wh, energy) can be imported (38 is W, power: not energy)"
                ));
            }
            None => return Err("the ReadingType has no uom; only 72 (Wh) can be imported".into()),
        }
        if let Some(d) = rt.flow_direction {
            directions.insert(d);
        }
        for block in blocks {
            for r in block.elements().filter(|x| x.name == "IntervalReading") {
                out.push(interval_reading(r, rt.multiplier)?);
            }
        }
    }
    if directions.len() > 1 {
        return Err(format!(
            "the file mixes flow directions {directions:?} (1 = delivered, 19 = received); import one direction at a time"
        ));
    }
    if out.is_empty() {
        return Err("the file has no IntervalReading".into());
    }
    out.sort_by_key(|r| (r.start, r.end));
    Ok(out)
}

fn interval_reading(r: &Element, multiplier: i64) -> Result<ImportedReading, String> {
    let tp = r.child("timePeriod").ok_or("an IntervalReading has no timePeriod")?;
    let start_s = int_child(tp, "start")?.ok_or("an IntervalReading's timePeriod has no start")?;
    let duration_s = int_child(tp, "duration")?.ok_or("an IntervalReading's timePeriod has no duration")?;
    let at = || format!("the reading at {start_s}");
    if duration_s <= 0 || duration_s > INTERVAL_S_MAX {
        return Err(format!("{}: duration {duration_s} s is not between 1 s and 24 h", at()));
    }
    let start = Utc
        .timestamp_opt(start_s, 0)
        .single()
        .ok_or_else(|| format!("{}: start is not a time", at()))?;
    let value_text = r
        .child("value")
        .map(|v| v.text())
        .ok_or_else(|| format!("{}: no value", at()))?;
    let value = parse_decimal(&value_text).map_err(|m| format!("{}: value {m}", at()))?;
    if value.is_sign_negative() && !value.is_zero() {
        return Err(format!("{}: value {value_text} is negative", at()));
    }
    let wh = scale(value, multiplier).map_err(|m| format!("{}: {m}", at()))?;
    let wh = EnergyWh::new(wh).map_err(|m| format!("{}: {value_text} × 10^{multiplier} Wh {m}", at()))?;
    let mut quality = Quality::Actual;
    for q in r.elements().filter(|x| x.name == "ReadingQuality") {
        let code = int_child(q, "quality")?.ok_or_else(|| format!("{}: a ReadingQuality has no quality", at()))?;
        if espi_quality(code).map_err(|m| format!("{}: {m}", at()))? == Quality::Estimated {
            quality = Quality::Estimated;
        }
    }
    Ok(ImportedReading {
        start,
        end: start + Duration::seconds(duration_s),
        wh,
        quality,
    })
}

/// Reads a meter file: `csv` (with `interval`, such as `15m`, for `start,wh` files) or
/// `greenbutton` (ESPI XML; its readings carry their durations).
pub fn parse_file(format: &str, text: &str, interval: Option<&str>) -> Result<Vec<ImportedReading>, String> {
    let interval = interval.map(parse_interval).transpose()?;
    match format {
        "csv" => parse_csv(text, interval),
        "greenbutton" | "green-button" | "espi" => {
            if interval.is_some() {
                return Err("an interval is for CSV files; Green Button readings carry their duration".into());
            }
            parse_green_button(text)
        }
        other => Err(format!("format {other:?} is not supported; use csv or greenbutton")),
    }
}

/// The flow a meter's file posts: from the meter's kind, or `given` (which a storage meter
/// needs: its files do not say which way the energy went).
pub fn flow_for(meter: &str, kind: crate::domain::events::MeterKind, given: Option<&str>) -> Result<Flow, String> {
    use crate::domain::events::MeterKind;
    let given = given.map(Flow::parse).transpose()?;
    match (kind, given) {
        (MeterKind::Storage, None) => Err(format!(
            "meter {meter:?} is a storage meter: say which way the file's energy went with --flow stored|dispatched (?flow= over the API)"
        )),
        (MeterKind::Generation, None) => Ok(Flow::Generated),
        (MeterKind::Load, None) => Ok(Flow::Consumed),
        (k, Some(f)) if k.allows(f) => Ok(f),
        (k, Some(f)) => Err(format!(
            "meter {meter:?} is a {} meter and cannot post {f} energy",
            k.as_str()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse() {
        assert_eq!(parse_interval("15m").unwrap(), Duration::minutes(15));
        assert_eq!(parse_interval("900").unwrap(), Duration::minutes(15));
        assert_eq!(parse_interval("1h").unwrap(), Duration::hours(1));
        assert!(parse_interval("0m").is_err());
        assert!(parse_interval("25h").is_err());
        assert!(parse_interval("fifteen").is_err());
    }

    #[test]
    fn xml_reads_namespaces_entities_cdata_and_comments() {
        let x = parse_xml(
            r#"<?xml version="1.0"?><!-- c --><a:feed xmlns:a="x"><b k='v &amp; w'>1 &lt; 2</b><c/><d><![CDATA[<raw>]]></d></a:feed>"#,
        )
        .unwrap();
        assert_eq!(x.name, "feed");
        assert_eq!(x.child("b").unwrap().text(), "1 < 2");
        assert_eq!(x.child("b").unwrap().attr("k"), Some("v & w"));
        assert!(x.child("c").is_some());
        assert_eq!(x.child("d").unwrap().text(), "<raw>");
        assert!(parse_xml("<a><b></a>").is_err());
        assert!(parse_xml("<a>&bogus;</a>").is_err());
    }

    #[test]
    fn csv_needs_an_end_or_an_interval() {
        assert!(parse_csv("start,wh\n2026-11-01T00:00:00Z,5\n", None).is_err());
        let r = parse_csv("start,wh\n2026-11-01T00:00:00Z,5\n", Some(Duration::minutes(15))).unwrap();
        assert_eq!(r[0].end - r[0].start, Duration::minutes(15));
        assert!(parse_csv("start,end,wh\n2026-11-01T00:00:00Z,2026-11-01T00:15:00Z,5.0001\n", None).is_err());
    }

    #[test]
    fn multipliers_scale_exactly() {
        assert_eq!(scale(Decimal::from(1234), 3).unwrap(), Decimal::from(1_234_000));
        assert_eq!(scale(Decimal::from(1234), -3).unwrap(), Decimal::new(1234, 3));
    }
}
