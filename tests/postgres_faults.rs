//! PostgreSQL stopped and started again in the middle of ingest (skipped, with the reason printed, without
//! `WATTLEDGER_TEST_POSTGRES_URL` or where the cluster cannot be restarted): requests that
//! did not commit answer 503 with `Retry-After`, the server reconnects by itself, and a
//! client that retries every refused request ends with each reading recorded exactly once.

mod pg;

use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wattledger::api::auth::{AuthConfig, Claims, Role};
use wattledger::ledger::{Ledger, SystemClock};
use wattledger::projections::engine::Projections;
use wattledger::store::postgres::PgStore;

const SECRET: &str = "postgres-faults-test-secret-0123456789abcdef";
const CLIENTS: usize = 4;
const READINGS_PER_CLIENT: usize = 150;
const DEADLINE: Duration = Duration::from_secs(90);

fn restart_command() -> Option<Vec<String>> {
    let versions = std::fs::read_dir("/etc/postgresql").ok()?;
    let version = versions.flatten().next()?.file_name().into_string().ok()?;
    let uid = std::process::Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return None;
    }
    Some(
        ["pg_ctlcluster", "--skip-systemctl-redirect", &version, "main"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    )
}

fn token() -> String {
    let now = chrono::Utc::now().timestamp() as u64;
    AuthConfig::hs256(SECRET.as_bytes(), "test")
        .unwrap()
        .mint(Claims::unscoped("test", Role::Operator, now, 3600))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_during_ingest() {
    let Some(base) = pg::base_url("postgres_restarted_during_ingest") else {
        return;
    };
    let Some(restart) = restart_command() else {
        eprintln!(
            "skipped postgres_restarted_during_ingest: cannot restart the local cluster (needs root and /etc/postgresql)"
        );
        return;
    };
    let url = pg::fresh_schema_url(&base).await;
    let store = PgStore::open(&url).await.unwrap();
    let ledger = Ledger::open(store.clone(), Arc::new(SystemClock)).await.unwrap();
    let projections = Projections::open(store, None).await.unwrap();
    let server = wattledger::api::start(
        "127.0.0.1:0",
        ledger,
        projections,
        AuthConfig::hs256(SECRET.as_bytes(), "test").unwrap(),
    )
    .await
    .unwrap();
    let base_url = format!("http://{}", server.addr);
    let tok = token();
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for body in [
        ("/v1/sites", json!({"site_id":"s1","time_zone":"UTC"})),
        ("/v1/tenants", json!({"tenant_id":"t1","name":"T"})),
        (
            "/v1/sites/s1/tariffs",
            json!({"effective_from":"2026-01-01T00:00:00Z",
            "rates_eu_per_wh":{"generated":"1","stored":"1","dispatched":"1","consumed":"1"},
            "default_band":{"name":"flat","multiplier":"1"}}),
        ),
    ] {
        let r = c
            .post(format!("{base_url}{}", body.0))
            .bearer_auth(&tok)
            .json(&body.1)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    for m in 0..CLIENTS {
        let r = c
            .post(format!("{base_url}/v1/meters"))
            .bearer_auth(&tok)
            .json(&json!({"meter_id":format!("m{m}"),"site_id":"s1","kind":"load","tenant_id":"t1","rated_power_w":"1000000"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }

    let started = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));
    let refused_503 = Arc::new(AtomicU64::new(0));
    let restarted = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for m in 0..CLIENTS {
        let (c, tok, base_url) = (c.clone(), tok.clone(), base_url.clone());
        let (acked, refused_503, restarted) = (acked.clone(), refused_503.clone(), restarted.clone());
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            let t0 = chrono::DateTime::parse_from_rfc3339("2026-10-01T00:00:00Z").unwrap();
            for k in 0..READINGS_PER_CLIENT {
                let s = t0 + chrono::Duration::minutes(15 * k as i64);
                let body = json!({"meter_id":format!("m{m}"),"flow":"consumed","start":s.to_rfc3339(),
                    "end":(s + chrono::Duration::minutes(15)).to_rfc3339(),"wh":"7"});
                // Slow down a little before the restart so that it lands mid-ingest.
                if !restarted.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                loop {
                    assert!(started.elapsed() < DEADLINE, "ingest did not finish in time");
                    match c
                        .post(format!("{base_url}/v1/readings"))
                        .bearer_auth(&tok)
                        .json(&body)
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 201 || r.status() == 200 => {
                            let v: Value = r.json().await.unwrap();
                            acks.push((
                                v["position"].as_u64().unwrap(),
                                v["event_id"].as_str().unwrap().to_string(),
                            ));
                            acked.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        Ok(r) if r.status() == 503 => {
                            assert!(r.headers().contains_key("retry-after"), "503 carries Retry-After");
                            let v: Value = r.json().await.unwrap();
                            assert_eq!(v["status"], 503);
                            refused_503.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Ok(r) => panic!("unexpected {}: {}", r.status(), r.text().await.unwrap_or_default()),
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
            acks
        }));
    }
    // Restart once a quarter of the readings are in.
    while acked.load(Ordering::SeqCst) < (CLIENTS * READINGS_PER_CLIENT / 4) as u64 {
        assert!(started.elapsed() < DEADLINE);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Down for longer than a request waits for a connection, so some requests are refused.
    let cluster = |action: &'static str| {
        let cmd = restart.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(&cmd[0])
                .args(&cmd[1..])
                .arg(action)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{action}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        })
    };
    /// Starts the cluster again if the test fails while it is stopped.
    struct Restart(Vec<String>);
    impl Drop for Restart {
        fn drop(&mut self) {
            let _ = std::process::Command::new(&self.0[0])
                .args(&self.0[1..])
                .arg("start")
                .output();
        }
    }
    let _guard = Restart(restart.clone());
    cluster("stop").await.unwrap();
    tokio::time::sleep(Duration::from_millis(
        wattledger::store::postgres::POOL_ACQUIRE_TIMEOUT_MS + 2_000,
    ))
    .await;
    cluster("start").await.unwrap();
    restarted.store(true, Ordering::SeqCst);
    let mut acks = Vec::new();
    for t in tasks {
        acks.extend(t.await.unwrap());
    }
    assert!(
        refused_503.load(Ordering::SeqCst) > 0,
        "requests made while PostgreSQL was down were refused with 503"
    );
    eprintln!(
        "{} readings acknowledged, {} answers were 503 during the restart, {:?} in all",
        acks.len(),
        refused_503.load(Ordering::SeqCst),
        started.elapsed()
    );

    // Every reading exactly once, every acknowledgement where it said.
    let mut log = Vec::new();
    let mut from = 1;
    loop {
        let r = c
            .get(format!("{base_url}/v1/events?from_position={from}&limit=1000"))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        let page: Value = r.json().await.unwrap();
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            break;
        }
        from = events.last().unwrap()["position"].as_u64().unwrap() + 1;
        log.extend(events);
    }
    let mut by_identity: HashMap<(String, String), usize> = HashMap::new();
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e["position"].as_u64(), Some(i as u64 + 1), "positions are contiguous");
        if e["event_type"] == "EnergyConsumed" {
            let key = (
                e["data"]["meter_id"].as_str().unwrap().to_string(),
                e["data"]["start"].as_str().unwrap().to_string(),
            );
            *by_identity.entry(key).or_default() += 1;
        }
    }
    assert_eq!(by_identity.len(), CLIENTS * READINGS_PER_CLIENT);
    assert!(
        by_identity.values().all(|n| *n == 1),
        "each reading recorded exactly once"
    );
    for (pos, id) in &acks {
        assert_eq!(log[*pos as usize - 1]["event_id"].as_str(), Some(id.as_str()));
    }
    let audit_tok = {
        let now = chrono::Utc::now().timestamp() as u64;
        AuthConfig::hs256(SECRET.as_bytes(), "t")
            .unwrap()
            .mint(Claims::unscoped("a", Role::Auditor, now, 600))
            .unwrap()
    };
    let report: Value = c
        .get(format!("{base_url}/v1/audit"))
        .bearer_auth(audit_tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["clean"], true, "{report}");
    server.stop().await.unwrap();
}
