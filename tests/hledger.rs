//! `wattledger export --format hledger`: hledger accepts the journal in strict mode, its
//! balance assertions hold (and fail when tampered with), and `hledger balance -O csv`
//! equals wattledger's own balance of every account to the last digit.
//!
//! Needs the `hledger` program (Debian's `hledger` package; `.ci/run` installs it). Without
//! it the test prints why and passes without checking.

use rust_decimal::Decimal;
use serde_json::Value;
use std::collections::BTreeMap;
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

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn hledger_available() -> bool {
    match Command::new("hledger").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        _ => {
            // Straight to stderr, past the test harness's capture, so the skip is seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: the hledger program is not installed (apt-get install hledger); the journal was not checked"
            );
            false
        }
    }
}

fn hledger(journal: &Path, args: &[&str]) -> Output {
    Command::new("hledger")
        .arg("-f")
        .arg(journal)
        .args(args)
        .output()
        .expect("run hledger")
}

fn apply(store: &Path, dir: &Path, name: &str, text: &str) -> Vec<Value> {
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    let out = ok(wl(store, &["apply", file.to_str().unwrap()]), name);
    let results: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(results.iter().all(|r| r["ok"] == true), "{name}: {out}");
    results
}

/// Parses hledger's `balance -O csv --layout bare`: account → commodity → amount.
fn hledger_balances(csv: &str) -> BTreeMap<String, BTreeMap<String, Decimal>> {
    let mut out: BTreeMap<String, BTreeMap<String, Decimal>> = BTreeMap::new();
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').map(|s| s.trim_matches('"')).collect();
        assert_eq!(f.len(), 3, "{line}");
        if f[0] == "total" || f[0] == "Total:" {
            continue;
        }
        let amount = Decimal::from_str(f[2]).unwrap_or_else(|_| panic!("{line}"));
        out.entry(f[0].to_string())
            .or_default()
            .insert(f[1].to_string(), amount);
    }
    out
}

#[test]
fn hledger_accepts_the_journal_and_agrees_with_every_balance() {
    if !hledger_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("w.db");

    // A simulated month across the end of September (the simulator closes 2026-09),
    // then a late reading and a correction for September, booked into October, then
    // October closed too: both closed periods carry assertions.
    let sim = ok(
        Command::new(BIN)
            .args([
                "simulate",
                "--days",
                "30",
                "--tenants",
                "3",
                "--seed",
                "11",
                "--start",
                "2026-09-15",
            ])
            .output()
            .unwrap(),
        "simulate",
    );
    assert!(sim.contains("\"close_period\""));
    let results = apply(&store, dir.path(), "sim.ndjson", &sim);
    let first_reading = sim
        .lines()
        .position(|l| l.contains("\"acme-ai-hall-1\"") && l.contains("post_reading"))
        .unwrap();
    let corrected = results[first_reading]["event_id"].as_str().unwrap().to_string();
    // Holds: placed (one for a job whose reading draws on it), captured, released; and a
    // spending limit the tenant is already past, which the ledger flags.
    let expires = wattledger::domain::time::fmt_time(&(chrono::Utc::now() + chrono::Duration::hours(2)));
    let period = wattledger::domain::time::Period::of(chrono::Utc::now()).to_string();
    let late = format!(
        "{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
        r#"{"command":"register_meter","meter_id":"acme-ai-hall-2","site_id":"memphis-1","kind":"load","tenant_id":"acme-ai","rated_power_w":"2000000"}"#,
        r#"{"command":"post_reading","meter_id":"acme-ai-hall-2","flow":"consumed","start":"2026-09-29T20:00:00Z","end":"2026-09-29T20:15:00Z","wh":"450000.125"}"#,
        serde_json::json!({"command":"correct_reading","event_id":corrected,"wh":"1000","reason":"meter swap; recalibrated"}),
        r#"{"command":"close_period","period":"2026-10"}"#,
        serde_json::json!({"command":"place_hold","hold_id":"hl-1","tenant_id":"acme-ai","amount_eu":"5000","expires_at":expires,"memo":"train; 36 h","job_id":"train-1"}),
        r#"{"command":"post_reading","meter_id":"acme-ai-hall-2","flow":"consumed","start":"2026-11-02T20:00:00Z","end":"2026-11-02T20:15:00Z","wh":"1000","job_id":"train-1"}"#,
        r#"{"command":"capture_hold","hold_id":"hl-1","amount_eu":"10.5"}"#,
        serde_json::json!({"command":"place_hold","hold_id":"hl-2","tenant_id":"acme-ai","amount_eu":"7","expires_at":expires}),
        r#"{"command":"release_hold","hold_id":"hl-2"}"#,
        serde_json::json!({"command":"set_spending_limit","tenant_id":"acme-ai","limit_eu":"1","period":period}),
    );
    let late_results = apply(&store, dir.path(), "late.ndjson", &late);
    assert_eq!(late_results[1]["price"]["tariff_version"], 1);
    assert!(
        late_results[5]["hold_draws"][0]["amount_eu"].is_string(),
        "{}",
        late_results[5]
    );
    assert_eq!(late_results[9]["triggered"][0]["event_type"], "SpendingLimitExceeded");

    let journal = dir.path().join("wattledger.journal");
    let text = ok(wl(&store, &["export", "--format", "hledger"]), "export");
    std::fs::write(&journal, &text).unwrap();
    assert!(text.contains("commodity 1000.000000 EU") && text.contains("commodity 1000.000 Wh"));
    // One transaction per event.
    let events = ok(wl(&store, &["export", "--format", "ndjson"]), "export ndjson")
        .lines()
        .count();
    let transactions = text.lines().filter(|l| l.starts_with("20")).count();
    assert_eq!(transactions, events);
    // Assertions at both closed periods; the late movements are dated into October.
    assert!(text.contains("2026-09-30 * period 2026-09 closed"));
    assert!(text.contains("2026-10-31 * period 2026-10 closed"));
    assert!(text.contains("2026-10-01 * consumed 450000.125 Wh (late, of 2026-09) by acme-ai-hall-2"));
    assert!(text.contains("2026-10-01 * correction of consumed"));
    let assertions = text.lines().filter(|l| l.contains(" = ")).count();
    assert!(assertions > 50, "{assertions} assertions");

    let check = hledger(&journal, &["check", "--strict"]);
    assert!(
        check.status.success(),
        "hledger check --strict: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    // hledger's balances against wattledger's, for every account the journal declares.
    let csv = String::from_utf8(hledger(&journal, &["balance", "-O", "csv", "--layout", "bare"]).stdout).unwrap();
    let h = hledger_balances(&csv);
    let accounts: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("account "))
        .filter(|a| a.contains(':') && !a.contains(' ') && !a.starts_with("held:"))
        .chain(["issuance"])
        .collect();
    assert!(accounts.len() >= 3 + 12 + 5 + 3, "{accounts:?}");
    for account in &accounts {
        let b: Value = serde_json::from_str(&ok(wl(&store, &["balance", "--account", account]), account)).unwrap();
        let d = |k: &str| Decimal::from_str(b[k].as_str().unwrap()).unwrap();
        // hledger's signs: debit positive. Tenants are credit-normal in wattledger.
        let sign = if b["normal_side"] == "credit" {
            -Decimal::ONE
        } else {
            Decimal::ONE
        };
        let zero = BTreeMap::new();
        let hb = h.get(*account).unwrap_or(&zero);
        let get = |c: &str| hb.get(c).copied().unwrap_or_default();
        assert_eq!(
            get("EU"),
            sign * d("balance_eu"),
            "{account} EU: hledger {hb:?}, wattledger {b}"
        );
        assert_eq!(
            get("Wh"),
            sign * d("balance_wh"),
            "{account} Wh: hledger {hb:?}, wattledger {b}"
        );
        assert_eq!(get("EU").scale().max(6), 6, "to the last digit");
    }
    // What each tenant has on hold: hledger's virtual `held:` accounts against wattledger's
    // `held_eu` (hl-1: 5000 − the reading's draw − 10.5 captured; hl-2 released).
    let b: Value = serde_json::from_str(&ok(wl(&store, &["balance", "--account", "tenant:acme-ai"]), "acme")).unwrap();
    let held = Decimal::from_str(b["held_eu"].as_str().unwrap()).unwrap();
    let drawn = Decimal::from_str(late_results[5]["hold_draws"][0]["amount_eu"].as_str().unwrap()).unwrap();
    assert_eq!(held, Decimal::from(5000) - drawn - Decimal::from_str("10.5").unwrap());
    assert_eq!(h["held:acme-ai"]["EU"], held);
    let real =
        String::from_utf8(hledger(&journal, &["balance", "--real", "-O", "csv", "--layout", "bare"]).stdout).unwrap();
    assert!(
        !hledger_balances(&real).contains_key("held:acme-ai"),
        "--real leaves holds out"
    );
    // Nothing in hledger that wattledger does not know.
    for a in h.keys() {
        assert!(accounts.contains(&a.as_str()) || a == "held:acme-ai", "hledger has {a}");
    }

    // The assertions are checked: one changed digit and hledger refuses the journal.
    let line = text
        .lines()
        .find(|l| l.contains("tenant:acme-ai") && l.contains(" EU = "))
        .unwrap();
    let at = line.find(" EU = ").unwrap() + " EU = ".len();
    let at = if line[at..].starts_with('-') { at + 1 } else { at };
    let changed = format!("{}1{}", &line[..at], &line[at..]);
    let tampered = text.replacen(line, &changed, 1);
    let bad = dir.path().join("tampered.journal");
    std::fs::write(&bad, tampered).unwrap();
    let out = hledger(&bad, &["check", "--strict"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("balance assertion"));
}
