//! Disk faults (issue 7, item 2): the embedded store's folder on a 2 MiB tmpfs that fills
//! up. Appends must answer 503 with `Retry-After` (never 500, never a panic), nothing
//! already recorded may be damaged, and ingest must resume once space is freed.
//!
//! Needs root (to mount the tmpfs); elsewhere the test prints why and passes.

mod support;

use support::{Reply, read_reply};

use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{TEST_SECRET, assert_matches_spec, claims};
use wattledger::api::auth::{AuthConfig, Role};
use wattledger::ledger::{Ledger, SystemClock};
use wattledger::projections::engine::Projections;
use wattledger::store::EventStore;
use wattledger::store::sqlite::SqliteStore;

/// Readings posted at most while waiting for the disk to fill.
const FILL_READINGS_MAX: usize = 20_000;
/// Readings that must succeed after space is freed.
const RESUME_READINGS: usize = 20;

/// A tmpfs mounted over a temporary folder, unmounted (lazily if busy) when dropped.
struct Tmpfs {
    dir: Option<tempfile::TempDir>,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Self, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { geteuid() } != 0 {
            return Err("not root: mounting a tmpfs needs root".into());
        }
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self { dir: Some(dir) })
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let ok = std::process::Command::new("umount")
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = std::process::Command::new("umount").arg("-l").arg(dir.path()).status();
            }
            drop(dir);
        }
    }
}

unsafe extern "C" {
    fn geteuid() -> u32;
}

fn reading(k: usize, event_id: uuid::Uuid) -> Value {
    let end = chrono::DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z").unwrap()
        - chrono::Duration::minutes(15 * k as i64);
    let start = end - chrono::Duration::minutes(15);
    json!({
        "event_id": event_id,
        "meter_id": "rack-a1", "flow": "consumed",
        "start": start.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "end": end.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "wh": format!("{}.5", 1000 + k),
    })
}

async fn post(client: &reqwest::Client, base: &str, token: &str, path: &str, body: &Value) -> Reply {
    let res = client
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    read_reply(res).await
}

/// Every event id in the log, in order, checking positions are contiguous.
async fn logged_ids(store: &dyn EventStore) -> Vec<uuid::Uuid> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = store.read_all(after, 1_000).await.unwrap();
        let Some(last) = page.last() else { break };
        for r in &page {
            assert_eq!(r.position, out.len() as u64 + 1, "positions are contiguous");
            out.push(r.event_id);
        }
        after = last.position;
    }
    out
}

async fn assert_audit_clean(store: &dyn EventStore, when: &str) {
    let report = wattledger::audit::audit(store, wattledger::audit::Live::None, |_, _| {})
        .await
        .unwrap_or_else(|e| panic!("audit {when}: {e}"));
    assert!(report.clean, "audit {when} is clean: {}", report.human());
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().nth(1)?.trim().parse().ok()
}

/// A server over `<dir>/w.db`, built as `wattledger serve` builds it.
struct Served {
    server: wattledger::api::RunningServer,
    store: Arc<SqliteStore>,
    base: String,
    client: reqwest::Client,
    op: String,
}

async fn serve(dir: &Path) -> Result<Served, String> {
    let db = dir.join("w.db");
    let store = SqliteStore::open(&db).await.map_err(|e| format!("open: {e}"))?;
    let ledger = Ledger::open(store.clone(), Arc::new(SystemClock))
        .await
        .map_err(|e| format!("ledger: {e}"))?;
    let projections = Projections::open(store.clone(), Some(dir.join("w.db.snapshot.json")))
        .await
        .map_err(|e| format!("projections: {e}"))?;
    let auth = AuthConfig::hs256(TEST_SECRET.as_bytes(), "test").unwrap();
    let op = auth.mint(claims(Role::Operator, None, None, None, 3600)).unwrap();
    let server = wattledger::api::start("127.0.0.1:0", ledger, projections, auth)
        .await
        .map_err(|e| format!("start: {e}"))?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    Ok(Served {
        server,
        store,
        base,
        client,
        op,
    })
}

/// Stops a server and waits (bounded) until nothing but `store` holds the store, then drops
/// it, so that its file lock and descriptors are released.
async fn stop(server: wattledger::api::RunningServer, client: reqwest::Client, store: Arc<SqliteStore>) {
    server.stop().await.unwrap();
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(&store) > 1 {
        assert!(
            Instant::now() < deadline,
            "the store is still held {} times 10 s after the server stopped",
            Arc::strong_count(&store) - 1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.shutdown().await;
    drop(store);
}

/// Site, tenant, meter and tariff: positions 1–4.
async fn register(client: &reqwest::Client, base: &str, op: &str) {
    for (path, body) in [
        (
            "/v1/sites",
            json!({"site_id": "memphis-1", "time_zone": "America/Chicago", "loss_tolerance_pct": "5"}),
        ),
        ("/v1/tenants", json!({"tenant_id": "acme-ai", "name": "Acme AI"})),
        (
            "/v1/meters",
            json!({"meter_id": "rack-a1", "site_id": "memphis-1", "kind": "load", "tenant_id": "acme-ai", "rated_power_w": "2000000"}),
        ),
        (
            "/v1/sites/memphis-1/tariffs",
            json!({
                "effective_from": "2026-01-01T00:00:00Z",
                "rates_eu_per_wh": {"generated": "1", "stored": "1", "dispatched": "1", "consumed": "1.1"},
                "bands": [],
                "default_band": {"name": "standard", "multiplier": "1"},
                "source_multipliers": {"grid": "1"}
            }),
        ),
    ] {
        let r = post(client, base, op, path, &body).await;
        assert_eq!(r.status, 201, "setting up {path}: {}", r.text);
    }
}

/// Posts readings from slot `k` until `want` are refused with 503 (each checked); returns the
/// acknowledged ids and the refused `(slot, id)`s.
async fn fill(
    client: &reqwest::Client,
    base: &str,
    op: &str,
    k: &mut usize,
    want: usize,
    dir: &Path,
) -> (Vec<uuid::Uuid>, Vec<(usize, uuid::Uuid)>) {
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    let started = Instant::now();
    while *k < FILL_READINGS_MAX && refused.len() < want && started.elapsed() < Duration::from_secs(120) {
        let id = uuid::Uuid::new_v4();
        let r = post(client, base, op, "/v1/readings", &reading(*k, id)).await;
        match r.status {
            201 => acked.push(id),
            503 => {
                assert_eq!(r.content_type, "application/problem+json", "{}", r.text);
                assert_matches_spec("POST", "/v1/readings", 503, "application/problem+json", &r.json);
                assert!(
                    r.retry_after.as_deref().is_some_and(|v| v.parse::<u64>().is_ok()),
                    "a 503 says when to retry: {:?}",
                    r.retry_after
                );
                refused.push((*k, id));
            }
            s => panic!(
                "reading {k} on a filling disk ({:?} bytes free): expected 201 or 503, got {s}: {}",
                free_bytes(dir),
                r.text
            ),
        }
        *k += 1;
    }
    (acked, refused)
}

/// Stopped on a full disk (the snapshot cannot be saved), started again on it: the server
/// starts (or refuses to, with an error, never a panic), and appends answer 503; once space
/// is freed and the server restarted, ingest resumes and the log is whole.
#[tokio::test]
async fn a_server_restarted_on_a_full_disk_refuses_appends_then_resumes() {
    let fs = match Tmpfs::mount("2m") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED disk_full: {why}");
            return;
        }
    };
    let dir = fs.path().to_path_buf();
    let filler = dir.join("filler");
    std::fs::write(&filler, vec![0u8; 1024 * 1024]).unwrap();
    let s = serve(&dir).await.unwrap();
    register(&s.client, &s.base, &s.op).await;
    let mut k = 0;
    let (acked, refused) = fill(&s.client, &s.base, &s.op, &mut k, 3, &dir).await;
    assert!(!refused.is_empty(), "the disk never filled");
    stop(s.server, s.client, s.store).await;

    // Started again on the full disk.
    match serve(&dir).await {
        Err(why) => eprintln!("disk_full: the server would not start on a full disk: {why}"),
        Ok(s) => {
            let h = s.client.get(format!("{}/healthz", s.base)).send().await.unwrap();
            assert_eq!(h.status().as_u16(), 200);
            let id = uuid::Uuid::new_v4();
            let r = post(&s.client, &s.base, &s.op, "/v1/readings", &reading(k, id)).await;
            assert!(
                r.status == 503 || r.status == 201,
                "an append on a full disk after a restart: {} {}",
                r.status,
                r.text
            );
            eprintln!("disk_full: restarted on a full disk, an append answered {}", r.status);
            if r.status == 503 {
                assert!(r.retry_after.is_some());
                assert_eq!(r.content_type, "application/problem+json");
            }
            stop(s.server, s.client, s.store).await;
        }
    }

    // Space freed, started again: the log is whole and ingest resumes.
    std::fs::remove_file(&filler).unwrap();
    let s = serve(&dir).await.unwrap();
    let ids = logged_ids(s.store.as_ref()).await;
    let logged: HashSet<_> = ids.iter().copied().collect();
    for id in &acked {
        assert!(logged.contains(id), "acknowledged reading {id} survived the restarts");
    }
    assert_audit_clean(s.store.as_ref(), "after restarts on a full disk").await;
    for j in 0..RESUME_READINGS {
        let id = uuid::Uuid::new_v4();
        let r = post(&s.client, &s.base, &s.op, "/v1/readings", &reading(k + 1 + j, id)).await;
        assert_eq!(r.status, 201, "reading after space was freed: {}", r.text);
    }
    assert_audit_clean(s.store.as_ref(), "after ingest resumed").await;
    stop(s.server, s.client, s.store).await;
    drop(fs);
}

#[tokio::test]
async fn a_full_disk_answers_503_keeps_the_log_and_ingest_resumes_when_space_is_freed() {
    let fs = match Tmpfs::mount("2m") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED disk_full: {why}");
            return;
        }
    };
    let dir = fs.path().to_path_buf();
    let filler: PathBuf = dir.join("filler");
    std::fs::write(&filler, vec![0u8; 1024 * 1024]).unwrap();
    let db = dir.join("w.db");

    let Served {
        server,
        store,
        base,
        client,
        op,
    } = serve(&dir).await.unwrap();
    register(&client, &base, &op).await;

    // Fill the disk.
    let mut k = 0;
    let (mut acked, mut refused) = fill(&client, &base, &op, &mut k, 5, &dir).await;
    eprintln!(
        "disk_full: {} readings acknowledged, then {} refused, {:?} bytes free",
        acked.len(),
        refused.len(),
        free_bytes(&dir)
    );
    assert!(!refused.is_empty(), "the disk never filled after {k} readings");
    assert!(acked.len() > 10, "some readings were recorded before the disk filled");

    // While the disk is full: concurrent appends (one group commit) are each refused 503…
    let mut tasks = Vec::new();
    for j in 0..16 {
        let (client, base, op) = (client.clone(), base.clone(), op.clone());
        let kk = FILL_READINGS_MAX + 1_000 + j;
        tasks.push(tokio::spawn(async move {
            let id = uuid::Uuid::new_v4();
            (
                kk,
                id,
                post(&client, &base, &op, "/v1/readings", &reading(kk, id)).await,
            )
        }));
    }
    for t in tasks {
        let (kk, id, r) = t.await.unwrap();
        assert_eq!(r.status, 503, "concurrent reading {kk} on a full disk: {}", r.text);
        assert!(r.retry_after.is_some(), "503 with Retry-After");
        refused.push((kk, id));
    }
    // …and so is every line of a bulk request, on its own.
    let mut bulk = String::new();
    let mut bulk_ids = Vec::new();
    for j in 0..10 {
        let kk = FILL_READINGS_MAX + 2_000 + j;
        let id = uuid::Uuid::new_v4();
        bulk.push_str(&format!("{}\n", reading(kk, id)));
        bulk_ids.push((kk, id));
    }
    let res = client
        .post(format!("{base}/v1/readings"))
        .bearer_auth(&op)
        .header("content-type", "application/x-ndjson")
        .body(bulk)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let text = res.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 10, "{text}");
    for l in &lines {
        assert_eq!(l["status"], json!(503), "a bulk line on a full disk: {l}");
        assert_eq!(l["ok"], json!(false), "{l}");
    }
    refused.extend(bulk_ids);

    // The server is still up; nothing recorded is damaged; nothing refused is recorded.
    let h = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(h.status().as_u16(), 200);
    let store_dyn: &dyn EventStore = store.as_ref();
    assert_audit_clean(store_dyn, "on a full disk").await;
    let ids = logged_ids(store_dyn).await;
    let logged: HashSet<_> = ids.iter().copied().collect();
    assert_eq!(
        ids.len(),
        4 + acked.len(),
        "the log holds the setup and every acknowledged reading"
    );
    for id in &acked {
        assert!(logged.contains(id), "acknowledged reading {id} is in the log");
    }
    for (k, id) in &refused {
        assert!(!logged.contains(id), "refused reading {k} ({id}) is not in the log");
    }
    assert_eq!(store.head().await.unwrap().position, ids.len() as u64);

    // Free space: ingest resumes.
    std::fs::remove_file(&filler).unwrap();
    let resumed_at = Instant::now();
    // The first append after freeing space may still meet the last failure's fence once.
    let first = loop {
        let (k, id) = refused[0];
        let r = post(&client, &base, &op, "/v1/readings", &reading(k, id)).await;
        if r.status == 503 && resumed_at.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        break r;
    };
    assert_eq!(
        first.status, 201,
        "a refused reading, retried once space is free, is recorded as new: {}",
        first.text
    );
    acked.push(refused[0].1);
    for (k, id) in refused.iter().skip(1) {
        let r = post(&client, &base, &op, "/v1/readings", &reading(*k, *id)).await;
        assert_eq!(r.status, 201, "retry of refused reading {k}: {}", r.text);
        acked.push(*id);
    }
    for j in 0..RESUME_READINGS {
        let kk = k + j;
        let id = uuid::Uuid::new_v4();
        let r = post(&client, &base, &op, "/v1/readings", &reading(kk, id)).await;
        assert_eq!(r.status, 201, "reading {kk} after space was freed: {}", r.text);
        acked.push(id);
    }
    // Every acknowledged reading, once.
    assert_audit_clean(store_dyn, "after space was freed").await;
    let ids = logged_ids(store_dyn).await;
    assert_eq!(ids.len(), 4 + acked.len(), "each acknowledged reading is recorded once");
    let logged: HashSet<_> = ids.iter().copied().collect();
    assert_eq!(logged.len(), ids.len(), "no event id twice");
    for id in &acked {
        assert!(logged.contains(id), "acknowledged reading {id} is in the log");
    }
    // An acknowledged reading sent again is a duplicate of the recorded one.
    let r = post(&client, &base, &op, "/v1/readings", &reading(0, acked[0])).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["position"], json!(5), "{}", r.text);

    // The projections follow the log to its head.
    let head = ids.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client.get(format!("{base}/readyz")).send().await.unwrap();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if v["projection_position"] == json!(head) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "projections stuck behind the head {head}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    stop(server, client, store).await;
    // Reopened from the file, the log is whole.
    let reopened = SqliteStore::open_read_only(&db).await.unwrap();
    assert_audit_clean(reopened.as_ref(), "after a restart").await;
    assert_eq!(logged_ids(reopened.as_ref()).await, ids);
    drop(reopened);
    drop(fs);
}
