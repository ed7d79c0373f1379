//! `wattledger import`: CSV (both shapes) and Green Button (ESPI XML) files written here,
//! through the real binary and the ledger. A re-import records nothing new.

use rust_decimal::Decimal;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::str::FromStr;

const BIN: &str = env!("CARGO_BIN_EXE_wattledger");

fn wl(store: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--store")
        .arg(format!("sqlite://{}", store.display()))
        .env_remove("WATTLEDGER_STORE")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run wattledger")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

const SETUP: &str = r#"{"command":"register_site","site_id":"memphis-1","time_zone":"America/Chicago"}
{"command":"register_tenant","tenant_id":"acme-ai","name":"Acme AI"}
{"command":"register_meter","meter_id":"rack-a1","site_id":"memphis-1","kind":"load","tenant_id":"acme-ai","rated_power_w":"2000000"}
{"command":"register_meter","meter_id":"pv-01","site_id":"memphis-1","kind":"generation","asset_id":"solar-01","source":"solar","rated_power_w":"2000000"}
{"command":"register_meter","meter_id":"bess-01","site_id":"memphis-1","kind":"storage","asset_id":"megapack-01","rated_power_w":"1900000","capacity_wh":"3900000"}
{"command":"publish_tariff","site_id":"memphis-1","effective_from":"2026-01-01T00:00:00Z","rates_eu_per_wh":{"generated":"1","stored":"1","dispatched":"1","consumed":"1.1"},"bands":[{"name":"peak","days":["mon","tue","wed","thu","fri"],"start":"14:00","end":"20:00","multiplier":"1.5"},{"name":"night","days":["mon","tue","wed","thu","fri","sat","sun"],"start":"00:00","end":"06:00","multiplier":"0.6"}],"default_band":{"name":"standard","multiplier":"1"}}
"#;

fn campus(dir: &Path) -> std::path::PathBuf {
    let store = dir.join("w.db");
    let setup = dir.join("setup.ndjson");
    std::fs::write(&setup, SETUP).unwrap();
    let out = wl(&store, &["apply", setup.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    store
}

fn import(store: &Path, file: &Path, args: &[&str]) -> Output {
    let mut a = vec!["import"];
    a.extend_from_slice(args);
    a.push(file.to_str().unwrap());
    wl(store, &a)
}

fn events(store: &Path) -> Vec<Value> {
    let out = wl(store, &["export", "--format", "ndjson"]);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn balance(store: &Path, account: &str) -> Value {
    serde_json::from_slice(&wl(store, &["balance", "--account", account]).stdout).unwrap()
}

fn dec(v: &Value) -> Decimal {
    Decimal::from_str(v.as_str().unwrap()).unwrap()
}

#[test]
fn csv_with_start_end_wh_is_imported_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = campus(dir.path());
    let file = dir.path().join("rack.csv");
    std::fs::write(
        &file,
        "# rack-a1, November\nstart,end,wh,quality\n\
         2026-11-02T20:00:00Z,2026-11-02T20:15:00Z,450000,actual\n\
         2026-11-02T20:15:00Z,2026-11-02T20:30:00Z,440000.5,\n\
         \n\
         2026-11-02T14:30:00-06:00,2026-11-02T14:45:00-06:00,430000.125,estimated\n",
    )
    .unwrap();
    let out = import(&store, &file, &["--format", "csv", "--meter", "rack-a1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let results: Vec<Value> = String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 3);
    assert!(
        results
            .iter()
            .all(|r| r["ok"] == true && r["event_type"] == "EnergyConsumed")
    );
    assert_eq!(results[0]["price"]["band"], "peak");
    assert!(
        stderr(&out).contains("imported: 3 accepted, 0 duplicates, 0 refused"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        dec(&balance(&store, "tenant:acme-ai")["debits_wh"]),
        Decimal::from_str("1320000.625").unwrap()
    );
    let estimated: Vec<Value> = events(&store)
        .into_iter()
        .filter(|e| e["data"]["quality"] == "estimated")
        .collect();
    assert_eq!(estimated.len(), 1);
    assert_eq!(estimated[0]["data"]["start"], "2026-11-02T20:30:00Z");

    let again = import(&store, &file, &["--format", "csv", "--meter", "rack-a1"]);
    assert!(again.status.success());
    assert!(
        stderr(&again).contains("imported: 0 accepted, 3 duplicates, 0 refused"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn csv_with_start_wh_takes_the_interval_and_the_flow_from_the_meter() {
    let dir = tempfile::tempdir().unwrap();
    let store = campus(dir.path());
    let file = dir.path().join("pv.csv");
    let mut csv = String::from("start,wh\n");
    for i in 0..8 {
        csv.push_str(&format!("2026-11-03T18:{:02}:00Z,{}\n", (i % 4) * 15, 100_000 + i));
    }
    // Without --interval a start,wh file is refused; then the first four lines are imported.
    std::fs::write(&file, &csv).unwrap();
    let no_interval = import(&store, &file, &["--format", "csv", "--meter", "pv-01"]);
    assert_eq!(no_interval.status.code(), Some(2));
    assert!(stderr(&no_interval).contains("--interval"), "{}", stderr(&no_interval));

    let csv: String = csv.lines().take(5).map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, &csv).unwrap();
    let out = import(
        &store,
        &file,
        &["--format", "csv", "--meter", "pv-01", "--interval", "15m"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("imported: 4 accepted"), "{}", stderr(&out));
    let generated: Vec<Value> = events(&store)
        .into_iter()
        .filter(|e| e["event_type"] == "EnergyGenerated")
        .collect();
    assert_eq!(generated.len(), 4);
    assert_eq!(generated[0]["data"]["end"], "2026-11-03T18:15:00Z");
    assert_eq!(
        dec(&balance(&store, "asset:solar-01")["credits_wh"]),
        Decimal::from(400_006)
    );

    // A storage meter needs to be told the direction.
    let s = import(
        &store,
        &file,
        &["--format", "csv", "--meter", "bess-01", "--interval", "15m"],
    );
    assert_eq!(s.status.code(), Some(2));
    assert!(stderr(&s).contains("--flow stored|dispatched"), "{}", stderr(&s));
    let s = import(
        &store,
        &file,
        &[
            "--format",
            "csv",
            "--meter",
            "bess-01",
            "--interval",
            "15m",
            "--flow",
            "stored",
        ],
    );
    assert!(s.status.success(), "{}", stderr(&s));
    let s = import(
        &store,
        &file,
        &[
            "--format",
            "csv",
            "--meter",
            "rack-a1",
            "--interval",
            "15m",
            "--flow",
            "stored",
        ],
    );
    assert_eq!(s.status.code(), Some(2));

    // A bad line names itself; nothing is recorded.
    std::fs::write(&file, "start,wh\n2026-11-04T00:00:00Z,1\n2026-11-04T00:15:00Z,-2\n").unwrap();
    let bad = import(
        &store,
        &file,
        &["--format", "csv", "--meter", "pv-01", "--interval", "15m"],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("line 3"), "{}", stderr(&bad));
}

/// A Green Button (ESPI) Atom feed: one UsagePoint, one MeterReading, its ReadingType and
/// one IntervalBlock of `readings` (start s, duration s, value, quality codes).
fn green_button(uom: u32, multiplier: i32, readings: &[(i64, i64, u64, Vec<u32>)]) -> String {
    let mut block = String::new();
    for (start, duration, value, qualities) in readings {
        block.push_str(&format!(
            "        <IntervalReading>\n          <timePeriod><duration>{duration}</duration><start>{start}</start></timePeriod>\n          <value>{value}</value>\n"
        ));
        for q in qualities {
            block.push_str(&format!(
                "          <ReadingQuality><quality>{q}</quality></ReadingQuality>\n"
            ));
        }
        block.push_str("        </IntervalReading>\n");
    }
    let first = readings.first().map_or(0, |r| r.0);
    let total: i64 = readings.iter().map(|r| r.1).sum();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<?xml-stylesheet type="text/xsl" href="GreenButtonDataStyleSheet.xslt"?>
<feed xmlns="http://www.w3.org/2005/Atom" xmlns:espi="http://naesb.org/espi">
  <id>urn:uuid:0a1b2c3d-0000-4000-8000-000000000001</id>
  <title>Green Button Usage Feed</title>
  <updated>2026-11-03T00:00:00Z</updated>
  <entry>
    <id>urn:uuid:0a1b2c3d-0000-4000-8000-000000000002</id>
    <link rel="self" href="https://utility.example/espi/1_1/resource/RetailCustomer/9/UsagePoint/1"/>
    <link rel="related" href="https://utility.example/espi/1_1/resource/RetailCustomer/9/UsagePoint/1/MeterReading"/>
    <title>Rack A1</title>
    <content><espi:UsagePoint><espi:ServiceCategory><espi:kind>0</espi:kind></espi:ServiceCategory></espi:UsagePoint></content>
  </entry>
  <entry>
    <id>urn:uuid:0a1b2c3d-0000-4000-8000-000000000003</id>
    <link rel="self" href="https://utility.example/espi/1_1/resource/RetailCustomer/9/UsagePoint/1/MeterReading/1"/>
    <link rel="up" href="https://utility.example/espi/1_1/resource/RetailCustomer/9/UsagePoint/1/MeterReading"/>
    <link rel="related" href="https://utility.example/espi/1_1/resource/RetailCustomer/9/UsagePoint/1/MeterReading/1/IntervalBlock"/>
    <link rel="related" href="https://utility.example/espi/1_1/resource/ReadingType/7"/>
    <title>15 minute electricity consumption</title>
    <content><espi:MeterReading/></content>
  </entry>
  <entry>
    <id>urn:uuid:0a1b2c3d-0000-4000-8000-000000000004</id>
    <link rel="self" href="https://utility.example/espi/1_1/resource/ReadingType/7"/>
    <link rel="up" href="https://utility.example/espi/1_1/resource/ReadingType"/>
    <title>Type of Meter Reading Data</title>
    <content>
      <espi:ReadingType>
        <espi:accumulationBehaviour>4</espi:accumulationBehaviour>
        <espi:commodity>1</espi:commodity>
        <espi:currency>840</espi:currency>
        <espi:dataQualifier>12</espi:dataQualifier>
        <espi:flowDirection>1</espi:flowDirection>
        <espi:intervalLength>900</espi:intervalLength>
        <espi:kind>12</espi:kind>
        <espi:phase>769</espi:phase>
        <espi:powerOfTenMultiplier>{multiplier}</espi:powerOfTenMultiplier>
        <espi:timeAttribute>0</espi:timeAttribute>
        <espi:uom>{uom}</espi:uom>
      </espi:ReadingType>
    </content>
  </entry>
  <entry>
    <id>urn:uuid:0a1b2c3d-0000-4000-8000-000000000005</id>
    <link rel="self" href="https://utility.example/espi/1_1/resource/RetailCustomer/9/UsagePoint/1/MeterReading/1/IntervalBlock/1"/>
    <link rel="up" href="https://utility.example/espi/1_1/resource/RetailCustomer/9/UsagePoint/1/MeterReading/1/IntervalBlock"/>
    <title/>
    <content>
      <espi:IntervalBlock>
        <espi:interval><espi:duration>{total}</espi:duration><espi:start>{first}</espi:start></espi:interval>
{block_ns}      </espi:IntervalBlock>
    </content>
  </entry>
</feed>
"#,
        block_ns = block
            .replace("<IntervalReading>", "<espi:IntervalReading>")
            .replace("</IntervalReading>", "</espi:IntervalReading>")
            .replace("<timePeriod>", "<espi:timePeriod>")
            .replace("</timePeriod>", "</espi:timePeriod>")
            .replace("<duration>", "<espi:duration>")
            .replace("</duration>", "</espi:duration>")
            .replace("<start>", "<espi:start>")
            .replace("</start>", "</espi:start>")
            .replace("<value>", "<espi:value>")
            .replace("</value>", "</espi:value>")
            .replace("<ReadingQuality>", "<espi:ReadingQuality>")
            .replace("</ReadingQuality>", "</espi:ReadingQuality>")
            .replace("<quality>", "<espi:quality>")
            .replace("</quality>", "</espi:quality>")
    )
}

#[test]
fn green_button_covers_a_25_hour_dst_day_with_multipliers_and_estimates() {
    let dir = tempfile::tempdir().unwrap();
    let store = campus(dir.path());
    // 2026-11-01 in Chicago: 00:00 CDT (05:00Z) to 00:00 CST the next day (06:00Z) — 25 h,
    // 100 readings of 15 minutes. Values are kWh (powerOfTenMultiplier 3); the 10th to
    // 14th are estimated (ESPI 8: reference day; 9: interpolation), the 20th edited (7),
    // the 30th valid and validated (0 and 17): actual.
    let day_start = 1_793_509_200; // 2026-11-01T05:00:00Z
    let readings: Vec<(i64, i64, u64, Vec<u32>)> = (0..100)
        .map(|i| {
            let q = match i {
                10..=12 => vec![8],
                13 | 14 => vec![9],
                20 => vec![7],
                30 => vec![0, 17],
                _ => vec![],
            };
            (day_start + i * 900, 900, 200 + (i as u64 % 7) * 10, q)
        })
        .collect();
    let file = dir.path().join("greenbutton.xml");
    std::fs::write(&file, green_button(72, 3, &readings)).unwrap();

    let out = import(&store, &file, &["--format", "greenbutton", "--meter", "rack-a1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("imported: 100 accepted, 0 duplicates, 0 refused"),
        "{}",
        stderr(&out)
    );

    let evs: Vec<Value> = events(&store)
        .into_iter()
        .filter(|e| e["event_type"] == "EnergyConsumed")
        .collect();
    assert_eq!(evs.len(), 100);
    assert_eq!(evs[0]["data"]["start"], "2026-11-01T05:00:00Z");
    assert_eq!(evs[99]["data"]["end"], "2026-11-02T06:00:00Z");
    assert_eq!(evs[0]["data"]["energy_wh"], "200000");
    let estimated: Vec<usize> = evs
        .iter()
        .enumerate()
        .filter(|(_, e)| e["data"]["quality"] == "estimated")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(estimated, vec![10, 11, 12, 13, 14, 20]);

    // Σ value × 10^3 Wh, and the night band follows the wall clock: 00:00–06:00 local is
    // seven real hours that night (01:00–02:00 happens twice), so 28 readings are "night".
    let total: u64 = readings.iter().map(|r| r.2 * 1000).sum();
    assert_eq!(
        dec(&balance(&store, "tenant:acme-ai")["debits_wh"]),
        Decimal::from(total)
    );
    let st: Value =
        serde_json::from_slice(&wl(&store, &["statement", "--tenant", "acme-ai", "--period", "2026-11"]).stdout)
            .unwrap();
    let by_band = |band: &str| -> Decimal {
        st["lines"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["band"] == band)
            .map(|l| dec(&l["energy_wh"]))
            .sum()
    };
    let night: u64 = readings[..28].iter().map(|r| r.2 * 1000).sum();
    assert_eq!(by_band("night"), Decimal::from(night));
    assert_eq!(by_band("standard"), Decimal::from(total - night));
    assert_eq!(by_band("peak"), Decimal::ZERO, "a Sunday has no peak");

    // A re-import of the same file records nothing new.
    let again = import(&store, &file, &["--format", "greenbutton", "--meter", "rack-a1"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("imported: 0 accepted, 100 duplicates, 0 refused"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        events(&store)
            .iter()
            .filter(|e| e["event_type"] == "EnergyConsumed")
            .count(),
        100
    );
}

#[test]
fn green_button_refuses_what_is_not_energy_and_unknown_quality_codes() {
    let dir = tempfile::tempdir().unwrap();
    let store = campus(dir.path());
    let file = dir.path().join("power.xml");
    // uom 38 is W (power), not energy.
    std::fs::write(&file, green_button(38, 0, &[(1_793_509_200, 900, 5, vec![])])).unwrap();
    let out = import(&store, &file, &["--format", "greenbutton", "--meter", "rack-a1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("uom is 38"), "{}", stderr(&out));

    std::fs::write(&file, green_button(72, 0, &[(1_793_509_200, 900, 5, vec![42])])).unwrap();
    let out = import(&store, &file, &["--format", "greenbutton", "--meter", "rack-a1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("quality code 42"), "{}", stderr(&out));

    // A multiplier of −3: the values are mWh.
    std::fs::write(&file, green_button(72, -3, &[(1_793_509_200, 900, 1_234_567, vec![])])).unwrap();
    let out = import(&store, &file, &["--format", "greenbutton", "--meter", "rack-a1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        dec(&balance(&store, "tenant:acme-ai")["debits_wh"]),
        Decimal::from_str("1234.567").unwrap()
    );

    std::fs::write(&file, "<feed><entry>").unwrap();
    let out = import(&store, &file, &["--format", "greenbutton", "--meter", "rack-a1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("never closed"), "{}", stderr(&out));
}
