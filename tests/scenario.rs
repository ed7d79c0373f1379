//! End to end: a small campus driven through the real `wattledger` binary, checked against
//! numbers worked out by hand (below), never copied from the program's output.
//!
//! # The campus
//!
//! Site `memphis-1`, America/Chicago, with the CONTRACT's example tariff (version 1, effective
//! 2026-01-01): rates generated 1, stored 1, dispatched 1, consumed 1.1 EU/Wh; bands in local
//! time: peak mon–fri 14:00–20:00 ×1.5, night every day 00:00–06:00 ×0.6, otherwise standard ×1;
//! source multipliers gas_turbine ×1.2, solar ×0.9.
//!
//! | meter   | kind       | what                        | rated W   | per 15 min                  |
//! |---------|------------|-----------------------------|-----------|-----------------------------|
//! | gt-01   | generation | turbine-01, gas_turbine     | 35000000  | 720000 Wh, always           |
//! | pv-01   | generation | solar-01, solar             | 1000000   | 150000 Wh, 15:00–21:00 UTC  |
//! | bess-01 | storage    | megapack-01, cap 3900000 Wh | 1900000   | see the battery below       |
//! | rack-a1 | load       | tenant acme-ai              | 2000000   | 400000 Wh, always           |
//! | rack-b1 | load       | tenant beta-labs            | 1000000   | 200000 Wh, always           |
//! | rack-c1 | load       | tenant gamma-ml             | 1000000   | 100000 Wh, always           |
//!
//! Rated power check (Wh_max = W × 0.25 h × 1.05): rack-a1 525000 ≥ 400000 (and the corrected
//! 380000); rack-b1 and rack-c1 262500 ≥ 200000, 230000 (beta's correction), 100000; pv-01
//! 262500 ≥ 150000; bess-01 498750 ≥ 100000; gt-01 9187500 ≥ 720000.
//!
//! # The week and its bands
//!
//! Readings cover the UTC week [2026-10-26T00:00Z, 2026-11-02T00:00Z): 672 slots of 15 min.
//! Chicago is CDT (UTC−5) until 2026-11-01T07:00Z (02:00 CDT becomes 01:00 CST), CST (UTC−6)
//! after. Every band boundary is a whole local hour and every offset a whole hour, so no
//! 15-minute slot straddles a boundary: each slot is wholly in one band.
//!
//! Period 2026-10 holds [Oct 26 00:00Z, Nov 1 00:00Z) = local CDT Sun Oct 25 19:00 → Sat Oct 31
//! 19:00:
//!   - Sun 25 19–24: standard 5 h (Sunday has no peak)
//!   - Mon 26 … Fri 30, each: night 00–06 (6 h), standard 06–14 (8 h), peak 14–20 (6 h),
//!     standard 20–24 (4 h)
//!   - Sat 31 00–19: night 6 h, standard 13 h
//!   - night 5×6 + 6 = 36 h = 144 slots; peak 5×6 = 30 h = 120 slots;
//!     standard 5 + 5×12 + 13 = 78 h = 312 slots; 144 + 120 + 312 = 576 = 6 × 96 ✓
//!
//! Per UTC day (how statement lines are grouped):
//!   - Oct 26 (Mon): 00–05Z Sun 19–24 std 5 h; 05–11Z night 6 h; 11–19Z std 8 h; 19–24Z peak
//!     5 h → standard 52, night 24, peak 20 slots
//!   - Oct 27…30: 00–01Z peak 1 h; 01–05Z std 4 h; 05–11Z night 6 h; 11–19Z std 8 h; 19–24Z peak
//!     5 h → standard 48, night 24, peak 24 slots
//!   - Oct 31 (Sat): 00–01Z Fri 19–20 peak 1 h; 01–05Z std 4 h; 05–11Z night 6 h; 11–24Z Sat
//!     06–19 std 13 h → standard 68, night 24, peak 4 slots
//!   - check: peak 20 + 4×24 + 4 = 120, night 6×24 = 144, standard 52 + 4×48 + 68 = 312 ✓
//!
//! Period 2026-11 holds Nov 1 00:00Z → Nov 2 00:00Z, the fall-back day:
//!   - 00–05Z = CDT Sat 31 19–24: standard 5 h
//!   - 05–07Z = CDT Sun 00–02: night 2 h
//!   - 07–12Z = CST Sun 01–06: night 5 h (local 01:00–02:00 happens twice)
//!   - 12–24Z = CST Sun 06–18: standard 12 h
//!   - night 7 h = 28 slots (a naive fixed offset would give 24), standard 17 h = 68 slots
//!
//! Sum of band multipliers over the slots:
//!   - 2026-10: 144 × 0.6 + 120 × 1.5 + 312 × 1 = 86.4 + 180 + 312 = 578.4
//!   - 2026-11: 28 × 0.6 + 68 × 1 = 16.8 + 68 = 84.8
//!
//! # Prices per slot (exact; rounding to 6 places never bites)
//!
//!   - consumed: Wh × 1.1 × band. acme 400000 → 440000 base: night 264000, standard 440000,
//!     peak 660000. beta 200000 → 220000 base: 132000 / 220000 / 330000. gamma 100000 → 110000
//!     base: 66000 / 110000 / 165000.
//!   - turbine: 720000 × 1 × 1.2 = 864000 base: night 518400, standard 864000, peak 1296000.
//!   - solar: 150000 × 1 × 0.9 = 135000 base: standard 135000, peak 202500.
//!   - stored (night): 100000 × 0.6 = 60000. dispatched (peak): 90000 × 1.5 = 135000.
//!
//! # Tenants' consumption charges (before corrections)
//!
//!   - acme  2026-10: 144×264000 + 120×660000 + 312×440000 = 38016000 + 79200000 + 137280000
//!     = 254496000 (= 440000 × 578.4 ✓); Wh 576 × 400000 = 230400000
//!   - acme  2026-11: 28×264000 + 68×440000 = 7392000 + 29920000 = 37312000 (= 440000 × 84.8 ✓);
//!     Wh 96 × 400000 = 38400000
//!   - beta  2026-10: 220000 × 578.4 = 127248000; Wh 115200000.
//!     2026-11: 220000 × 84.8 = 18656000; Wh 19200000
//!   - gamma 2026-10: 110000 × 578.4 = 63624000; Wh 57600000.
//!     2026-11: 110000 × 84.8 = 9328000; Wh 9600000
//!
//! # Solar (15:00–21:00 UTC every day)
//!
//!   - Oct 26…30 (CDT Mon–Fri 10:00–16:00): standard 10–14 = 16 slots, peak 14–16 = 8 slots
//!   - Oct 31 (Sat 10–16 CDT): standard 24 slots.  Nov 1 (Sun 09–15 CST): standard 24 slots
//!   - 2026-10: 104 × 135000 + 40 × 202500 = 14040000 + 8100000 = 22140000 EU
//!   - 2026-11: 24 × 135000 = 3240000 EU.  Total 25380000 EU, 168 × 150000 = 25200000 Wh
//!
//! # Turbine
//!
//!   - 2026-10: 864000 × 578.4 = 499737600 (144×518400 = 74649600, 120×1296000 = 155520000,
//!     312×864000 = 269568000; sum 499737600 ✓)
//!   - 2026-11: 864000 × 84.8 = 73267200 (28×518400 = 14515200 + 68×864000 = 58752000 ✓)
//!   - total 573004800 EU; 672 × 720000 = 483840000 Wh
//!
//! # Battery (megapack-01, capacity 3900000 Wh, initial 0, efficiency 100 %)
//!
//! Charges 100000 Wh per slot on local weekday nights (CDT Mon–Fri 00–06 = 05:00–11:00Z on
//! Oct 26…30), dispatches 90000 Wh per slot at weekday peak (CDT 14–20 = 19:00Z–01:00Z, Oct 26
//! evening … Oct 31 01:00Z). Per day +2400000 then −2160000 = +240000. Highest level: Friday after
//! charging, 4 × 240000 + 2400000 = 3360000 ≤ 3900000; lowest after a discharge: 240000 ≥ 0.
//! Final level 5 × 240000 = 1200000 Wh.
//!   - stored: 120 slots, 12000000 Wh, 120 × 60000 = 7200000 EU (all in 2026-10)
//!   - dispatched: 120 slots, 10800000 Wh, 120 × 135000 = 16200000 EU
//!
//! # Credits, corrections, transfers, the close and the late data
//!
//! Credits and transfers are booked into the period of the ledger's clock (2026-11-28 as this
//! is written; the test body shows where they go in a later month), so every one of them lands
//! in 2026-11, even though they are logged before the week's readings. Issued: acme 400000000, beta 200000000, gamma 100000000 (issuance debited
//! 700000000).
//!
//! Correction 1 (2026-10 still open): acme's reading 2026-10-28T20:00Z (CDT Wed 15:00, peak),
//! posted with a client event_id, 400000 → 380000 Wh: new price 380000 × 1.65 = 627000, delta
//! −20000 Wh, −33000 EU, booked into 2026-10 as a `correction` line.
//!   acme 2026-10 charges 254496000 − 33000 = 254463000; consumption 230400000 − 20000 = 230380000
//!
//! Balances when the transfers are decided (everything above counted):
//!   acme  400000000 − 254463000 − 37312000 = 108225000
//!   beta  200000000 − 127248000 − 18656000 = 54096000
//!   gamma 100000000 − 63624000 − 9328000 = 27048000
//! Transfers (all three affordable): T1 acme → beta 25000000; T2 beta → gamma 12500000.5;
//! T3 gamma → acme 1000000.
//!
//! close_period 2026-10, then:
//!   - late reading: gamma rack-c1 2026-10-14T18:30Z–19:30Z (CDT Wed 13:30–14:30), 400000 Wh, half
//!     standard, half peak: 400000 × 1.1 × (0.5 × 1 + 0.5 × 1.5) = 440000 × 1.25 = 550000 EU; parts
//!     standard 200000 Wh / 220000 EU, peak 200000 Wh / 330000 EU. Booked into 2026-11:
//!     adjustment −550000 EU, +400000 Wh.
//!   - correction 2 (period closed): beta's reading 2026-10-27T08:00Z (CDT Tue 03:00, night),
//!     event_id taken from the apply output, 200000 → 230000 Wh: 230000 × 0.66 = 151800, was
//!     132000, delta +19800 EU, +30000 Wh, booked into 2026-11 as adjustment −19800 EU.
//!
//! # Statements (closing = opening − charges + credits + transfers_in − transfers_out + adjustments)
//!
//! 2026-10 (nothing but consumption is booked there; opening 0):
//!   acme  closing −254463000, consumption 230380000
//!   beta  closing −127248000, consumption 115200000
//!   gamma closing −63624000,  consumption 57600000
//! 2026-11 (consumption_wh counts the period's own energy; prior-period energy is adjustments_wh):
//!   acme  −254463000 − 37312000 + 400000000 + 1000000 − 25000000 + 0 = 84225000;
//!         consumption 38400000
//!   beta  −127248000 − 18656000 + 200000000 + 25000000 − 12500000.5 − 19800 = 66576199.5;
//!         consumption 19200000; adjustments_wh 30000
//!   gamma −63624000 − 9328000 + 100000000 + 12500000.5 − 1000000 − 550000 = 37998000.5;
//!         consumption 9600000; adjustments_wh 400000
//!
//! # Accounts (tenants credit-normal: credits − debits; every other account debit-normal)
//!
//!   - tenant:acme-ai: debits 254496000 + 37312000 + 25000000 = 316808000;
//!     credits 400000000 + 1000000 + 33000 (correction) = 401033000;
//!     balance 84225000. Wh: debits 672 × 400000 = 268800000, credits 20000
//!   - tenant:beta-labs: debits 127248000 + 18656000 + 19800 + 12500000.5 = 158423800.5;
//!     credits 200000000 + 25000000 = 225000000; balance 66576199.5.
//!     Wh: debits 134400000 + 30000 = 134430000
//!   - tenant:gamma-ml: debits 63624000 + 9328000 + 550000 + 1000000 = 74502000;
//!     credits 100000000 + 12500000.5 = 112500000.5; balance 37998000.5.
//!     Wh: debits 67200000 + 400000 = 67600000
//!   - asset:turbine-01: credits 573004800 EU / 483840000 Wh → balance −573004800 / −483840000
//!   - asset:solar-01: credits 25380000 / 25200000 → balance −25380000 / −25200000
//!   - storage:megapack-01: debits 7200000 EU / 12000000 Wh, credits 16200000 / 10800000 →
//!     balance −9000000 EU, +1200000 Wh (the energy the battery holds)
//!   - issuance: debits 700000000 → balance 700000000
//!   - site:memphis-1:bus: debits 573004800 + 25380000 + 16200000 + 33000 = 614617800 EU,
//!     483840000 + 25200000 + 10800000 + 20000 = 519860000 Wh;
//!     credits 7200000 (stored) + 510664000 (the week's consumption: 254496000 +
//!     37312000 + 127248000 + 18656000 + 63624000 + 9328000) + 550000 + 19800 = 518433800 EU,
//!     12000000 + 470400000 + 400000 + 30000 = 482830000 Wh;
//!     balance 96184000 EU, 37030000 Wh
//!   - settlement: Σ (debits − credits) = −573004800 − 25380000 − 9000000 + 96184000 + 700000000
//!     − 84225000 − 66576199.5 − 37998000.5 = 0 EU; Wh: −483840000 − 25200000 + 1200000 +
//!     37030000 + 268780000 + 134430000 + 67600000 = 0 ✓
//!
//! # Positions
//!
//! Setup: site 1, tenants 2–4, meters 5–10, tariff 11, credits 12 (acme), 13 (beta), 14 (gamma).
//! Readings slot by slot: turbine, solar, battery, acme, beta, gamma. Slot 0 (Oct 26 00:00Z,
//! no solar, no battery): turbine 15, acme 16, beta 17, gamma 18. October slots hold
//! 576 × 4 + 144 + 120 + 120 = 2688 readings (positions 15–2702), November's 96 × 4 + 24 = 408
//! (2703–3110). Correction 1 3111, T1–T3 3112–3114, close 3115 (pinning position 3114), late
//! reading 3116, correction 2 3117. 3117 events in all.

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use std::process::{Command, Output};
use std::str::FromStr;

const BIN: &str = env!("CARGO_BIN_EXE_wattledger");
const SITE: &str = "memphis-1";
/// The client event id of acme's reading at 2026-10-28T20:00Z (correction 1 targets it).
const ACME_PEAK_READING: &str = "0b7e2f4c-9a31-4d8e-b6a2-5f0c3e1d7a90";
const TENANTS: [(&str, &str, i64); 3] = [
    ("acme-ai", "rack-a1", 400_000),
    ("beta-labs", "rack-b1", 200_000),
    ("gamma-ml", "rack-c1", 100_000),
];
const TURBINE_WH: i64 = 720_000;
const SOLAR_WH: i64 = 150_000;
const CHARGE_WH: i64 = 100_000;
const DISCHARGE_WH: i64 = 90_000;
const SLOTS: i64 = 7 * 96;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap_or_else(|e| panic!("{s:?} is not a decimal: {e}"))
}

/// A decimal carried as a JSON string (the contract: quantities are strings).
fn dec(v: &Value) -> Decimal {
    d(v.as_str()
        .unwrap_or_else(|| panic!("expected a decimal string, got {v}")))
}

fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

fn reading(meter: &str, flow: &str, start: DateTime<Utc>, minutes: i64, wh: i64) -> Value {
    json!({"command":"post_reading","meter_id":meter,"flow":flow,"start":ts(start),
           "end":ts(start + Duration::minutes(minutes)),"wh":wh.to_string()})
}

struct Campus {
    dir: tempfile::TempDir,
    store: String,
}

impl Campus {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = format!("sqlite://{}/w.db", dir.path().display());
        Self { dir, store }
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--store")
            .arg(&self.store)
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("WATTLEDGER_STORE")
            .output()
            .expect("run wattledger")
    }

    /// Applies NDJSON commands from a file; returns (exit code, one result per command, stderr).
    fn apply(&self, name: &str, cmds: &[Value]) -> (Option<i32>, Vec<Value>, String) {
        let path = self.dir.path().join(format!("{name}.ndjson"));
        let text: String = cmds.iter().map(|c| format!("{c}\n")).collect();
        std::fs::write(&path, text).expect("write commands");
        let out = self.cli(&["apply", path.to_str().expect("utf-8 path")]);
        let stdout = String::from_utf8(out.stdout).expect("utf-8 stdout");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let results: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("result line {l:?}: {e}")))
            .collect();
        assert_eq!(
            results.len(),
            cmds.len(),
            "one result per command ({name}); stderr: {stderr}"
        );
        (out.status.code(), results, stderr)
    }

    fn json_of(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "wattledger {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("wattledger {args:?}: not JSON: {e}"))
    }

    fn statement(&self, tenant: &str, period: &str) -> Value {
        self.json_of(&["statement", "--tenant", tenant, "--period", period, "--format", "json"])
    }

    fn balance(&self, account: &str) -> Value {
        self.json_of(&["balance", "--account", account])
    }

    /// `audit --json`: must exit 0 and report clean.
    fn audit(&self) -> Value {
        let out = self.cli(&["audit", "--json"]);
        let report: Value = serde_json::from_slice(&out.stdout).expect("audit --json prints JSON");
        assert_eq!(out.status.code(), Some(0), "audit must exit 0: {report:#}");
        assert_eq!(report["clean"], true, "audit findings: {report:#}");
        report
    }

    fn export(&self) -> Vec<Value> {
        let out = self.cli(&["export", "--format", "ndjson"]);
        assert!(out.status.success(), "export: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("export line is JSON"))
            .collect()
    }
}

fn index_of(cmds: &[Value], pred: impl Fn(&Value) -> bool) -> usize {
    cmds.iter().position(pred).expect("command present")
}

fn reading_index(cmds: &[Value], meter: &str, flow: &str, start: &str) -> usize {
    index_of(cmds, |c| {
        c["meter_id"] == meter && c["flow"] == flow && c["start"] == start
    })
}

/// Asserts every result was accepted as new.
fn all_new(results: &[Value]) {
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["ok"], true, "command {i} refused: {r}");
        assert_eq!(r["duplicate"], false, "command {i} was a duplicate: {r}");
    }
}

struct Expect {
    opening: &'static str,
    charges: &'static str,
    credits: &'static str,
    transfers_in: &'static str,
    transfers_out: &'static str,
    adjustments: &'static str,
    closing: &'static str,
    consumption_wh: &'static str,
    is_final: bool,
    first_position: u64,
    last_position: u64,
}

fn check_statement(s: &Value, tenant: &str, period: &str, e: &Expect) {
    let ctx = format!("{tenant} {period}");
    assert_eq!(s["tenant_id"], tenant, "{ctx}");
    assert_eq!(s["period"], period, "{ctx}");
    let fields = [
        ("opening_balance_eu", e.opening),
        ("charges_eu", e.charges),
        ("credits_eu", e.credits),
        ("transfers_in_eu", e.transfers_in),
        ("transfers_out_eu", e.transfers_out),
        ("adjustments_eu", e.adjustments),
        ("closing_balance_eu", e.closing),
        ("consumption_wh", e.consumption_wh),
    ];
    for (field, want) in fields {
        assert_eq!(dec(&s[field]), d(want), "{ctx}: {field} (statement {s:#})");
    }
    // The closing identity, exactly.
    let identity =
        dec(&s["opening_balance_eu"]) - dec(&s["charges_eu"]) + dec(&s["credits_eu"]) + dec(&s["transfers_in_eu"])
            - dec(&s["transfers_out_eu"])
            + dec(&s["adjustments_eu"]);
    assert_eq!(identity, dec(&s["closing_balance_eu"]), "{ctx}: closing identity");
    assert_eq!(s["final"], e.is_final, "{ctx}: final");
    assert_eq!(s["first_position"], e.first_position, "{ctx}: first_position");
    assert_eq!(s["last_position"], e.last_position, "{ctx}: last_position");
}

fn lines_of<'a>(s: &'a Value, kind: &str) -> Vec<&'a Value> {
    s["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .filter(|l| l["kind"] == kind)
        .collect()
}

/// Sums (Wh, EU) of the consumption lines of one band.
fn band_totals(s: &Value, band: &str) -> (Decimal, Decimal) {
    lines_of(s, "consumption")
        .into_iter()
        .filter(|l| l["band"] == band)
        .fold((Decimal::ZERO, Decimal::ZERO), |(wh, eu), l| {
            (wh + dec(&l["energy_wh"]), eu + dec(&l["amount_eu"]))
        })
}

fn consumption_line<'a>(s: &'a Value, date: &str, band: &str) -> &'a Value {
    lines_of(s, "consumption")
        .into_iter()
        .find(|l| l["date"] == date && l["band"] == band)
        .unwrap_or_else(|| panic!("no consumption line {date} {band} in {s:#}"))
}

fn check_balance(b: &Value, account: &str, eu: [&str; 3], wh: [&str; 3]) {
    assert_eq!(b["account"], account);
    assert_eq!(dec(&b["balance_eu"]), d(eu[0]), "{account}: balance_eu ({b})");
    assert_eq!(dec(&b["debits_eu"]), d(eu[1]), "{account}: debits_eu ({b})");
    assert_eq!(dec(&b["credits_eu"]), d(eu[2]), "{account}: credits_eu ({b})");
    assert_eq!(dec(&b["balance_wh"]), d(wh[0]), "{account}: balance_wh ({b})");
    assert_eq!(dec(&b["debits_wh"]), d(wh[1]), "{account}: debits_wh ({b})");
    assert_eq!(dec(&b["credits_wh"]), d(wh[2]), "{account}: credits_wh ({b})");
}

fn setup_commands() -> Vec<Value> {
    let mut cmds = vec![
        json!({"command":"register_site","site_id":SITE,"time_zone":"America/Chicago","loss_tolerance_pct":"5"}),
        json!({"command":"register_tenant","tenant_id":"acme-ai","name":"Acme AI"}),
        json!({"command":"register_tenant","tenant_id":"beta-labs","name":"Beta Labs"}),
        json!({"command":"register_tenant","tenant_id":"gamma-ml","name":"Gamma ML"}),
        json!({"command":"register_meter","meter_id":"gt-01","site_id":SITE,"kind":"generation","asset_id":"turbine-01","source":"gas_turbine","rated_power_w":"35000000"}),
        json!({"command":"register_meter","meter_id":"pv-01","site_id":SITE,"kind":"generation","asset_id":"solar-01","source":"solar","rated_power_w":"1000000"}),
        json!({"command":"register_meter","meter_id":"bess-01","site_id":SITE,"kind":"storage","asset_id":"megapack-01","rated_power_w":"1900000","capacity_wh":"3900000","initial_wh":"0"}),
        json!({"command":"register_meter","meter_id":"rack-a1","site_id":SITE,"kind":"load","tenant_id":"acme-ai","rated_power_w":"2000000"}),
        json!({"command":"register_meter","meter_id":"rack-b1","site_id":SITE,"kind":"load","tenant_id":"beta-labs","rated_power_w":"1000000"}),
        json!({"command":"register_meter","meter_id":"rack-c1","site_id":SITE,"kind":"load","tenant_id":"gamma-ml","rated_power_w":"1000000"}),
    ];
    let tariff = r#"{"command":"publish_tariff","site_id":"memphis-1","effective_from":"2026-01-01T00:00:00Z",
 "rates_eu_per_wh":{"generated":"1","stored":"1","dispatched":"1","consumed":"1.1"},
 "bands":[{"name":"peak","days":["mon","tue","wed","thu","fri"],"start":"14:00","end":"20:00","multiplier":"1.5"},
          {"name":"night","days":["mon","tue","wed","thu","fri","sat","sun"],"start":"00:00","end":"06:00","multiplier":"0.6"}],
 "default_band":{"name":"standard","multiplier":"1"},
 "source_multipliers":{"gas_turbine":"1.2","solar":"0.9","grid":"1"}}"#;
    cmds.push(serde_json::from_str(tariff).expect("tariff JSON"));
    for (tenant, amount) in [
        ("acme-ai", "400000000"),
        ("beta-labs", "200000000"),
        ("gamma-ml", "100000000"),
    ] {
        cmds.push(
            json!({"command":"issue_credits","tenant_id":tenant,"amount_eu":amount,"memo":"November allocation"}),
        );
    }
    cmds
}

/// The week's readings, slot by slot (so the battery is charged before it is discharged).
fn week_commands() -> Vec<Value> {
    let week = utc(2026, 10, 26, 0, 0);
    let mut cmds = Vec::new();
    for i in 0..SLOTS {
        let t = week + Duration::minutes(15 * i);
        let (october, day, hour) = (t.month() == 10, t.day(), t.hour());
        cmds.push(reading("gt-01", "generated", t, 15, TURBINE_WH));
        if (15..21).contains(&hour) {
            cmds.push(reading("pv-01", "generated", t, 15, SOLAR_WH));
        }
        // CDT Mon–Fri 00:00–06:00 = 05:00–11:00Z on Oct 26…30.
        if october && (26..=30).contains(&day) && (5..11).contains(&hour) {
            cmds.push(reading("bess-01", "stored", t, 15, CHARGE_WH));
        }
        // CDT Mon–Fri 14:00–20:00 = 19:00Z–01:00Z (next UTC day), Oct 26 19:00Z … Oct 31 01:00Z.
        if october && (((26..=30).contains(&day) && hour >= 19) || ((27..=31).contains(&day) && hour < 1)) {
            cmds.push(reading("bess-01", "dispatched", t, 15, DISCHARGE_WH));
        }
        for (_, meter, wh) in TENANTS {
            let mut c = reading(meter, "consumed", t, 15, wh);
            if meter == "rack-a1" && t == utc(2026, 10, 28, 20, 0) {
                c["event_id"] = json!(ACME_PEAK_READING);
            }
            cmds.push(c);
        }
    }
    cmds
}

#[test]
fn a_campus_week_reconciles_to_hand_worked_numbers() {
    let campus = Campus::new();

    // ---------- A: set-up, credits, the week, correction 1, transfers ----------
    let mut a = setup_commands();
    let week = week_commands();
    // The generator follows the hand counts above.
    let count = |meter: &str, flow: &str| {
        week.iter()
            .filter(|c| c["meter_id"] == meter && c["flow"] == flow)
            .count()
    };
    assert_eq!(count("gt-01", "generated"), 672);
    assert_eq!(count("pv-01", "generated"), 168);
    assert_eq!(count("bess-01", "stored"), 120);
    assert_eq!(count("bess-01", "dispatched"), 120);
    assert_eq!(count("rack-a1", "consumed"), 672);
    assert_eq!(week.len(), 3096);
    a.extend(week);
    a.push(
        json!({"command":"correct_reading","event_id":ACME_PEAK_READING,"wh":"380000","reason":"meter recalibrated"}),
    );
    a.push(json!({"command":"transfer_credits","from_tenant":"acme-ai","to_tenant":"beta-labs","amount_eu":"25000000","memo":"spot purchase"}));
    a.push(json!({"command":"transfer_credits","from_tenant":"beta-labs","to_tenant":"gamma-ml","amount_eu":"12500000.5","memo":"night capacity"}));
    a.push(json!({"command":"transfer_credits","from_tenant":"gamma-ml","to_tenant":"acme-ai","amount_eu":"1000000","memo":"refund"}));
    let (code, ra, stderr) = campus.apply("a", &a);
    all_new(&ra);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("3114 accepted, 0 duplicates, 0 refused"), "{stderr}");
    // A fresh log: positions 1, 2, 3, … in command order.
    for (i, r) in ra.iter().enumerate() {
        assert_eq!(r["position"], i as u64 + 1, "position of command {i}: {r}");
    }

    // The CONTRACT's example price: a consumed peak Wh costs 1.1 × 1.5 = 1.65 EU.
    let i = reading_index(&a, "rack-a1", "consumed", "2026-10-28T20:00:00Z");
    let r = &ra[i];
    assert_eq!(r["event_id"], ACME_PEAK_READING);
    assert_eq!(r["stream"], "meter-rack-a1");
    assert_eq!(r["price"]["tariff_version"], 1);
    assert_eq!(r["price"]["band"], "peak");
    assert_eq!(dec(&r["price"]["multiplier"]), d("1.5"));
    assert_eq!(dec(&r["price"]["eu_per_wh"]), d("1.65"));
    assert_eq!(dec(&r["price"]["amount_eu"]), d("660000")); // 400000 × 1.65

    // The first turbine slot, 2026-10-26T00:00Z = CDT Sun 19:00, standard: 720000 × 1.2.
    let r = &ra[reading_index(&a, "gt-01", "generated", "2026-10-26T00:00:00Z")];
    assert_eq!(r["price"]["band"], "standard");
    assert_eq!(dec(&r["price"]["source_multiplier"]), d("1.2"));
    assert_eq!(dec(&r["price"]["eu_per_wh"]), d("1.2"));
    assert_eq!(dec(&r["price"]["amount_eu"]), d("864000"));
    // Solar in peak: 2026-10-26T19:00Z = CDT Mon 14:00: 150000 × 0.9 × 1.5 = 202500.
    let r = &ra[reading_index(&a, "pv-01", "generated", "2026-10-26T19:00:00Z")];
    assert_eq!(
        (r["price"]["band"].as_str(), dec(&r["price"]["amount_eu"])),
        (Some("peak"), d("202500"))
    );
    // Battery: stored at night (no source multiplier) 100000 × 0.6; dispatched at peak 90000 × 1.5.
    let r = &ra[reading_index(&a, "bess-01", "stored", "2026-10-26T05:00:00Z")];
    assert_eq!(
        (r["price"]["band"].as_str(), dec(&r["price"]["amount_eu"])),
        (Some("night"), d("60000"))
    );
    let r = &ra[reading_index(&a, "bess-01", "dispatched", "2026-10-31T00:45:00Z")];
    assert_eq!(
        (r["price"]["band"].as_str(), dec(&r["price"]["amount_eu"])),
        (Some("peak"), d("135000"))
    );

    // Band edges around the fall-back, for acme (400000 Wh): local time decides, not UTC.
    for (start, band, eu) in [
        ("2026-10-31T00:45:00Z", "peak", "660000"),     // CDT Fri 19:45
        ("2026-10-31T01:00:00Z", "standard", "440000"), // CDT Fri 20:00
        ("2026-10-31T10:45:00Z", "night", "264000"),    // CDT Sat 05:45
        ("2026-10-31T11:00:00Z", "standard", "440000"), // CDT Sat 06:00
        ("2026-10-31T19:00:00Z", "standard", "440000"), // CDT Sat 14:00: no peak on Saturday
        ("2026-11-01T04:45:00Z", "standard", "440000"), // CDT Sat 23:45
        ("2026-11-01T05:00:00Z", "night", "264000"),    // CDT Sun 00:00
        ("2026-11-01T06:30:00Z", "night", "264000"),    // CDT Sun 01:30 (first time)
        ("2026-11-01T07:30:00Z", "night", "264000"),    // CST Sun 01:30 (second time)
        ("2026-11-01T11:45:00Z", "night", "264000"),    // CST Sun 05:45 (UTC−5 would say 06:45)
        ("2026-11-01T12:00:00Z", "standard", "440000"), // CST Sun 06:00
        ("2026-11-01T20:00:00Z", "standard", "440000"), // CST Sun 14:00: no peak on Sunday
    ] {
        let r = &ra[reading_index(&a, "rack-a1", "consumed", start)];
        assert_eq!(r["price"]["band"], band, "band at {start}: {r}");
        assert_eq!(dec(&r["price"]["amount_eu"]), d(eu), "price at {start}: {r}");
    }

    // Correction 1 (period open): 380000 × 1.65 = 627000; delta 627000 − 660000 = −33000.
    let r = &ra[a.len() - 4];
    assert_eq!(r["event_type"], "ReadingCorrected");
    assert_eq!(r["position"], 3111);
    assert_eq!(dec(&r["price"]["amount_eu"]), d("627000"));
    assert_eq!(dec(&r["delta_eu"]), d("-33000"));
    assert_eq!(ra[a.len() - 1]["position"], 3114);

    // Beta's night reading that correction 2 will target: its id comes from the result line.
    let beta_night = &ra[reading_index(&a, "rack-b1", "consumed", "2026-10-27T08:00:00Z")];
    assert_eq!(
        (
            beta_night["price"]["band"].as_str(),
            dec(&beta_night["price"]["amount_eu"])
        ),
        (Some("night"), d("132000"))
    );
    let beta_night_id = beta_night["event_id"].as_str().expect("event_id").to_string();
    // And two results the refusals below refer back to.
    let turbine_first = ra[reading_index(&a, "gt-01", "generated", "2026-10-26T00:00:00Z")].clone();
    let acme_first_id = ra[reading_index(&a, "rack-a1", "consumed", "2026-10-26T00:00:00Z")]["event_id"].clone();

    // October is still open.
    assert_eq!(campus.statement("acme-ai", "2026-10")["final"], false);

    // ---------- B1: close October ----------
    let (code, rb1, stderr) = campus.apply("b1", &[json!({"command":"close_period","period":"2026-10"})]);
    assert_eq!(code, Some(0), "{stderr}");
    all_new(&rb1);
    assert_eq!(rb1[0]["position"], 3115);
    assert_eq!(rb1[0]["stream"], "period-2026-10");
    let october_at_close: Vec<Value> = TENANTS.iter().map(|(t, _, _)| campus.statement(t, "2026-10")).collect();

    // ---------- B2: late data for the closed period ----------
    let b2 = [
        json!({"command":"post_reading","meter_id":"rack-c1","flow":"consumed","start":"2026-10-14T18:30:00Z","end":"2026-10-14T19:30:00Z","wh":"400000"}),
        json!({"command":"correct_reading","event_id":beta_night_id,"wh":"230000","reason":"CT ratio fixed"}),
    ];
    let (code, rb2, stderr) = campus.apply("b2", &b2);
    assert_eq!(code, Some(0), "{stderr}");
    all_new(&rb2);
    // Late reading: CDT 13:30–14:30, half standard, half peak; 440000 × 1.25 = 550000.
    let late = &rb2[0];
    assert_eq!(late["position"], 3116);
    assert_eq!(late["price"]["band"], "mixed");
    assert_eq!(dec(&late["price"]["multiplier"]), d("1.25"));
    assert_eq!(dec(&late["price"]["eu_per_wh"]), d("1.375")); // 1.1 × 1.25
    assert_eq!(dec(&late["price"]["amount_eu"]), d("550000"));
    let parts = late["price"]["parts"].as_array().expect("parts");
    assert_eq!(parts.len(), 2, "{late}");
    assert_eq!(parts[0]["band"], "standard");
    assert_eq!(parts[0]["start"], "2026-10-14T18:30:00Z");
    assert_eq!(parts[0]["end"], "2026-10-14T19:00:00Z");
    assert_eq!(
        (dec(&parts[0]["energy_wh"]), dec(&parts[0]["amount_eu"])),
        (d("200000"), d("220000"))
    );
    assert_eq!(parts[1]["band"], "peak");
    assert_eq!(
        (dec(&parts[1]["energy_wh"]), dec(&parts[1]["amount_eu"])),
        (d("200000"), d("330000"))
    );
    // Correction 2: 230000 × 0.66 = 151800, was 132000: +19800.
    assert_eq!(rb2[1]["position"], 3117);
    assert_eq!(dec(&rb2[1]["price"]["amount_eu"]), d("151800"));
    assert_eq!(dec(&rb2[1]["delta_eu"]), d("19800"));

    // A closed period's statements do not move.
    for (i, (t, _, _)) in TENANTS.iter().enumerate() {
        assert_eq!(
            campus.statement(t, "2026-10"),
            october_at_close[i],
            "{t} 2026-10 changed after its close"
        );
    }

    // ---------- statements ----------
    let acme_oct = campus.statement("acme-ai", "2026-10");
    check_statement(
        &acme_oct,
        "acme-ai",
        "2026-10",
        &Expect {
            opening: "0",
            charges: "254463000",
            credits: "0",
            transfers_in: "0",
            transfers_out: "0",
            adjustments: "0",
            closing: "-254463000",
            consumption_wh: "230380000",
            is_final: true,
            first_position: 16,
            last_position: 3111,
        },
    );
    // Consumption lines by band (the correction is a line of its own).
    assert_eq!(band_totals(&acme_oct, "night"), (d("57600000"), d("38016000"))); // 144 slots
    assert_eq!(band_totals(&acme_oct, "peak"), (d("48000000"), d("79200000"))); // 120 slots
    assert_eq!(band_totals(&acme_oct, "standard"), (d("124800000"), d("137280000"))); // 312 slots
    assert_eq!(lines_of(&acme_oct, "consumption").len(), 18); // 6 UTC days × 3 bands
    let l = consumption_line(&acme_oct, "2026-10-26", "standard"); // 52 slots
    assert_eq!(
        (dec(&l["energy_wh"]), dec(&l["amount_eu"])),
        (d("20800000"), d("22880000"))
    );
    let l = consumption_line(&acme_oct, "2026-10-26", "peak"); // 20 slots
    assert_eq!(
        (dec(&l["energy_wh"]), dec(&l["amount_eu"])),
        (d("8000000"), d("13200000"))
    );
    let l = consumption_line(&acme_oct, "2026-10-31", "peak"); // 4 slots (Fri 19–20 CDT)
    assert_eq!(
        (dec(&l["energy_wh"]), dec(&l["amount_eu"])),
        (d("1600000"), d("2640000"))
    );
    let l = consumption_line(&acme_oct, "2026-10-31", "standard"); // 68 slots
    assert_eq!(
        (dec(&l["energy_wh"]), dec(&l["amount_eu"])),
        (d("27200000"), d("29920000"))
    );
    let corr = lines_of(&acme_oct, "correction");
    assert_eq!(corr.len(), 1, "{acme_oct:#}");
    assert_eq!(corr[0]["band"], "peak");
    assert_eq!(
        (dec(&corr[0]["energy_wh"]), dec(&corr[0]["amount_eu"])),
        (d("-20000"), d("-33000"))
    );

    let beta_oct = campus.statement("beta-labs", "2026-10");
    check_statement(
        &beta_oct,
        "beta-labs",
        "2026-10",
        &Expect {
            opening: "0",
            charges: "127248000",
            credits: "0",
            transfers_in: "0",
            transfers_out: "0",
            adjustments: "0",
            closing: "-127248000",
            consumption_wh: "115200000",
            is_final: true,
            first_position: 17,
            last_position: 2701, // beta's reading of the last October slot
        },
    );
    let gamma_oct = campus.statement("gamma-ml", "2026-10");
    check_statement(
        &gamma_oct,
        "gamma-ml",
        "2026-10",
        &Expect {
            opening: "0",
            charges: "63624000",
            credits: "0",
            transfers_in: "0",
            transfers_out: "0",
            adjustments: "0",
            closing: "-63624000",
            consumption_wh: "57600000",
            is_final: true,
            first_position: 18,
            last_position: 2702,
        },
    );

    // Credits and transfers are booked into the period of the ledger's clock. The hand numbers
    // above assume it is November 2026 (as when this was written); in a later month they move,
    // unchanged, from the 2026-11 statements to that month's (`now_period`), whose opening is
    // November's closing without them:
    //   acme  −254463000 − 37312000 = −291775000; then + 400000000 + 1000000 − 25000000 = 84225000
    //   beta  −127248000 − 18656000 − 19800 = −145923800; then + 200000000 + 25000000
    //         − 12500000.5 = 66576199.5
    //   gamma −63624000 − 9328000 − 550000 = −73502000; then + 100000000 + 12500000.5 − 1000000
    //         = 37998000.5
    // and November's first positions are the tenants' first November readings (2704, 2705,
    // 2706), acme's last its reading of the last slot (3108).
    let now_period = Utc::now().format("%Y-%m").to_string();
    let in_nov = now_period == "2026-11";
    let pick = |nov: &'static str, later: &'static str| if in_nov { nov } else { later };
    let pick_pos = |nov: u64, later: u64| if in_nov { nov } else { later };

    let acme_nov = campus.statement("acme-ai", "2026-11");
    check_statement(
        &acme_nov,
        "acme-ai",
        "2026-11",
        &Expect {
            opening: "-254463000",
            charges: "37312000",
            credits: pick("400000000", "0"),
            transfers_in: pick("1000000", "0"),
            transfers_out: pick("25000000", "0"),
            adjustments: "0",
            closing: pick("84225000", "-291775000"),
            consumption_wh: "38400000",
            is_final: false,
            first_position: pick_pos(12, 2704),  // the credits, booked into November
            last_position: pick_pos(3114, 3108), // T3 gamma → acme
        },
    );
    // The fall-back day: 28 night slots (7 h), 68 standard.
    let l = consumption_line(&acme_nov, "2026-11-01", "night");
    assert_eq!(
        (dec(&l["energy_wh"]), dec(&l["amount_eu"])),
        (d("11200000"), d("7392000"))
    );
    let l = consumption_line(&acme_nov, "2026-11-01", "standard");
    assert_eq!(
        (dec(&l["energy_wh"]), dec(&l["amount_eu"])),
        (d("27200000"), d("29920000"))
    );
    assert_eq!(lines_of(&acme_nov, "consumption").len(), 2);

    let beta_nov = campus.statement("beta-labs", "2026-11");
    check_statement(
        &beta_nov,
        "beta-labs",
        "2026-11",
        &Expect {
            opening: "-127248000",
            charges: "18656000",
            credits: pick("200000000", "0"),
            transfers_in: pick("25000000", "0"),
            transfers_out: pick("12500000.5", "0"),
            adjustments: "-19800",
            closing: pick("66576199.5", "-145923800"),
            consumption_wh: "19200000",
            is_final: false,
            first_position: pick_pos(13, 2705),
            last_position: 3117, // correction 2
        },
    );
    assert_eq!(dec(&beta_nov["adjustments_wh"]), d("30000"));
    let adj = lines_of(&beta_nov, "adjustment");
    assert_eq!(adj.len(), 1, "{beta_nov:#}");
    assert_eq!(adj[0]["original_period"], "2026-10");
    assert_eq!(adj[0]["band"], "night");
    assert_eq!(
        (dec(&adj[0]["energy_wh"]), dec(&adj[0]["amount_eu"])),
        (d("30000"), d("-19800"))
    );

    let gamma_nov = campus.statement("gamma-ml", "2026-11");
    check_statement(
        &gamma_nov,
        "gamma-ml",
        "2026-11",
        &Expect {
            opening: "-63624000",
            charges: "9328000",
            credits: pick("100000000", "0"),
            transfers_in: pick("12500000.5", "0"),
            transfers_out: pick("1000000", "0"),
            adjustments: "-550000",
            closing: pick("37998000.5", "-73502000"),
            consumption_wh: "9600000",
            is_final: false,
            first_position: pick_pos(14, 2706),
            last_position: 3116, // the late reading
        },
    );
    assert_eq!(dec(&gamma_nov["adjustments_wh"]), d("400000"));
    let adj = lines_of(&gamma_nov, "adjustment");
    assert_eq!(adj.len(), 1, "{gamma_nov:#}");
    assert_eq!(adj[0]["original_period"], "2026-10");
    assert_eq!(adj[0]["date"], "2026-10-14");
    assert_eq!(adj[0]["band"], "mixed");
    assert_eq!(
        (dec(&adj[0]["energy_wh"]), dec(&adj[0]["amount_eu"])),
        (d("400000"), d("-550000"))
    );

    // Each period's closing is the next one's opening.
    for (oct, nov) in [(&acme_oct, &acme_nov), (&beta_oct, &beta_nov), (&gamma_oct, &gamma_nov)] {
        assert_eq!(oct["closing_balance_eu"], nov["opening_balance_eu"]);
    }

    // The statements of the clock's period (November's own when it is November).
    let (acme_now, beta_now, gamma_now) = if in_nov {
        (acme_nov.clone(), beta_nov.clone(), gamma_nov.clone())
    } else {
        let now = |t: &str, e: &Expect| {
            let s = campus.statement(t, &now_period);
            check_statement(&s, t, &now_period, e);
            s
        };
        let only_money = |opening, credits, tin, tout, closing, first, last| Expect {
            opening,
            charges: "0",
            credits,
            transfers_in: tin,
            transfers_out: tout,
            adjustments: "0",
            closing,
            consumption_wh: "0",
            is_final: false,
            first_position: first,
            last_position: last,
        };
        (
            now(
                "acme-ai",
                &only_money("-291775000", "400000000", "1000000", "25000000", "84225000", 12, 3114),
            ),
            now(
                "beta-labs",
                &only_money(
                    "-145923800",
                    "200000000",
                    "25000000",
                    "12500000.5",
                    "66576199.5",
                    13,
                    3113,
                ),
            ),
            now(
                "gamma-ml",
                &only_money(
                    "-73502000",
                    "100000000",
                    "12500000.5",
                    "1000000",
                    "37998000.5",
                    14,
                    3114,
                ),
            ),
        )
    };
    let credit = lines_of(&acme_now, "credit");
    assert_eq!(credit.len(), 1);
    assert_eq!(
        (dec(&credit[0]["amount_eu"]), credit[0]["memo"].as_str()),
        (d("400000000"), Some("November allocation"))
    );
    let out = lines_of(&acme_now, "transfer_out");
    assert_eq!(out.len(), 1);
    assert_eq!(
        (dec(&out[0]["amount_eu"]), out[0]["counterparty"].as_str()),
        (d("25000000"), Some("beta-labs"))
    );
    let inn = lines_of(&acme_now, "transfer_in");
    assert_eq!(inn.len(), 1);
    assert_eq!(
        (dec(&inn[0]["amount_eu"]), inn[0]["counterparty"].as_str()),
        (d("1000000"), Some("gamma-ml"))
    );

    // ---------- balances ----------
    let accounts = [
        (
            "tenant:acme-ai",
            ["84225000", "316808000", "401033000"],
            ["-268780000", "268800000", "20000"],
        ),
        (
            "tenant:beta-labs",
            ["66576199.5", "158423800.5", "225000000"],
            ["-134430000", "134430000", "0"],
        ),
        (
            "tenant:gamma-ml",
            ["37998000.5", "74502000", "112500000.5"],
            ["-67600000", "67600000", "0"],
        ),
        (
            "asset:turbine-01",
            ["-573004800", "0", "573004800"],
            ["-483840000", "0", "483840000"],
        ),
        (
            "asset:solar-01",
            ["-25380000", "0", "25380000"],
            ["-25200000", "0", "25200000"],
        ),
        (
            "storage:megapack-01",
            ["-9000000", "7200000", "16200000"],
            ["1200000", "12000000", "10800000"],
        ),
        ("issuance", ["700000000", "700000000", "0"], ["0", "0", "0"]),
        (
            "site:memphis-1:bus",
            ["96184000", "614617800", "518433800"],
            ["37030000", "519860000", "482830000"],
        ),
    ];
    let mut balances = Vec::new();
    let (mut sum_eu, mut sum_wh) = (Decimal::ZERO, Decimal::ZERO);
    for (account, eu, wh) in accounts {
        let b = campus.balance(account);
        check_balance(&b, account, eu, wh);
        assert_eq!(b["position"], 3117, "{account}");
        sum_eu += dec(&b["debits_eu"]) - dec(&b["credits_eu"]);
        sum_wh += dec(&b["debits_wh"]) - dec(&b["credits_wh"]);
        balances.push(b);
    }
    // Settlement: every EU and every Wh posted is somewhere: debits − credits over all accounts.
    assert_eq!(sum_eu, Decimal::ZERO, "EU over all accounts");
    assert_eq!(sum_wh, Decimal::ZERO, "Wh over all accounts");
    // A tenant's balance is its latest statement's closing balance.
    for (i, latest) in [&acme_now, &beta_now, &gamma_now].into_iter().enumerate() {
        assert_eq!(dec(&balances[i]["balance_eu"]), dec(&latest["closing_balance_eu"]));
    }

    // ---------- audit ----------
    let audit = campus.audit();
    assert_eq!(audit["events"], 3117);
    assert_eq!(audit["head_position"], 3117);

    // ---------- the log itself ----------
    let log = campus.export();
    assert_eq!(log.len(), 3117);
    let hash_at = |p: u64| log[p as usize - 1]["hash"].clone();
    assert_eq!(log[3116]["hash"], audit["chain_hash"]);
    let close = &log[3114];
    assert_eq!(close["event_type"], "PeriodClosed");
    assert_eq!(close["data"]["last_position"], 3114, "the close pins the head it saw");
    assert_eq!(close["data"]["chain_hash"], hash_at(3114));
    assert_eq!(
        acme_oct["chain_hash"],
        hash_at(3111),
        "a statement records the chain hash at its last position"
    );
    assert_eq!(gamma_nov["chain_hash"], hash_at(3116));

    // ---------- C: refusals change nothing ----------
    let c = [
        // gamma holds 37998000.5; one millionth more overdraws it.
        json!({"command":"transfer_credits","from_tenant":"gamma-ml","to_tenant":"beta-labs","amount_eu":"37998000.500001","memo":"too much"}),
        // The battery holds 1200000 Wh; 1500000 in an hour is within its rating (1995000) but not its charge.
        json!({"command":"post_reading","meter_id":"bess-01","flow":"dispatched","start":"2026-10-31T15:00:00Z","end":"2026-10-31T16:00:00Z","wh":"1500000"}),
        // 1200000 + 3000000 = 4200000 > 3900000 (two hours, rating allows 3990000).
        json!({"command":"post_reading","meter_id":"bess-01","flow":"stored","start":"2026-10-31T12:00:00Z","end":"2026-10-31T14:00:00Z","wh":"3000000"}),
        // Ends after the real clock (+5 min).
        json!({"command":"post_reading","meter_id":"rack-a1","flow":"consumed","start":"2099-12-01T00:00:00Z","end":"2099-12-01T00:15:00Z","wh":"1000"}),
        // Same identity, other value.
        json!({"command":"post_reading","meter_id":"rack-a1","flow":"consumed","start":"2026-10-26T00:00:00Z","end":"2026-10-26T00:15:00Z","wh":"1"}),
        // An exact retry: recognised, not recorded again.
        reading("gt-01", "generated", utc(2026, 10, 26, 0, 0), 15, TURBINE_WH),
        // The clock's own period has not ended.
        json!({"command":"close_period","period":now_period}),
        // Above rated power: 1000000 W × 0.25 h × 1.05 = 262500 < 300000.
        json!({"command":"post_reading","meter_id":"rack-b1","flow":"consumed","start":"2026-10-20T00:00:00Z","end":"2026-10-20T00:15:00Z","wh":"300000"}),
        json!({"command":"transfer_credits","from_tenant":"acme-ai","to_tenant":"acme-ai","amount_eu":"1","memo":"self"}),
        json!({"command":"correct_reading","event_id":"00000000-0000-4000-8000-000000000000","wh":"1","reason":"no such reading"}),
    ];
    let (code, rc, stderr) = campus.apply("c", &c);
    assert_eq!(code, Some(1), "apply exits 1 when something was refused; {stderr}");
    assert!(stderr.contains("0 accepted, 1 duplicates, 9 refused"), "{stderr}");
    let refused = |i: usize, code: &str, field: &str| {
        assert_eq!(rc[i]["ok"], false, "command {i}: {}", rc[i]);
        assert_eq!(rc[i]["error"]["code"], code, "command {i}: {}", rc[i]);
        assert_eq!(rc[i]["error"]["field"], field, "command {i}: {}", rc[i]);
    };
    refused(0, "insufficient_credits", "amount_eu");
    refused(1, "storage_underflow", "wh");
    refused(2, "storage_overflow", "wh");
    refused(3, "validation", "end");
    refused(4, "conflict", "wh");
    assert_eq!(rc[4]["error"]["existing_event_id"], acme_first_id);
    assert_eq!(rc[5]["ok"], true);
    assert_eq!(rc[5]["duplicate"], true);
    assert_eq!(rc[5]["event_id"], turbine_first["event_id"]);
    assert_eq!(rc[5]["position"], 15);
    refused(6, "validation", "period");
    refused(7, "validation", "wh");
    refused(8, "validation", "to_tenant");
    refused(9, "not_found", "event_id");

    let after = campus.audit();
    assert_eq!(after["events"], 3117);
    assert_eq!(after["head_position"], 3117);
    assert_eq!(after["chain_hash"], audit["chain_hash"]);
    for (i, (account, _, _)) in accounts.iter().enumerate() {
        assert_eq!(campus.balance(account), balances[i], "{account} changed after refusals");
    }
    assert_eq!(campus.statement("gamma-ml", "2026-11"), gamma_nov);
}
