//! Issue 7 item 1: the HTTP server killed with SIGKILL while four clients post readings.
//!
//! One store; 20 rounds. Each round starts `wattledger serve` (the previous round's restart),
//! retries every reading that got no answer in the previous round (each must now be answered
//! 201, or 200 if it had been recorded before the kill), runs four concurrent clients posting
//! single readings for their own meter on consecutive 15-minute intervals, and kills the
//! server (SIGKILL) after a random 20–200 ms. After the restart the log (GET /v1/events) must
//! hold every acknowledged reading exactly once at its acknowledged position, with positions
//! exactly 1..=N. At the end `wattledger audit --json` is clean and the statement served after
//! a restart equals the one `wattledger statement` rebuilds from the log with no snapshot.
//!
//! The seed is printed; set `WATTLEDGER_CRASH_SEED` to replay one run's delays.

mod support;

use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wattledger::api::auth::{AuthConfig, Claims, Role};

const SECRET: &str = "crash-http-test-secret-0123456789abcdef";
const ROUNDS: usize = 20;
const METERS: u64 = 4;
/// Most readings one client posts in one round (the kill comes well before).
const PER_CLIENT_MAX: u64 = 2_000;
const KILL_DELAY_MS: (u64, u64) = (20, 200);
const START_WAIT: Duration = Duration::from_secs(15);
const TEST_DEADLINE: Duration = Duration::from_secs(60);
const TENANT: &str = "crash-tenant";
const SITE: &str = "crash-site";
const PERIOD: &str = "2025-01";

/// xorshift64*: reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn seed() -> u64 {
    if let Ok(s) = std::env::var("WATTLEDGER_CRASH_SEED") {
        return s.parse().expect("WATTLEDGER_CRASH_SEED is a u64");
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn command() -> Command {
    let mut c = support::process::command();
    c.env("WATTLEDGER_JWT_SECRET", SECRET);
    c
}

fn token() -> String {
    let auth = AuthConfig::hs256(SECRET.as_bytes(), "test secret").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    auth.mint(Claims::unscoped("crash-http", Role::Operator, now, 3600))
        .unwrap()
}

use support::process::Server;

/// Starts `wattledger serve` on a free port and waits (bounded) for /readyz.
async fn serve(dir: &Path, store: &str, log_name: &str) -> Server {
    let start = support::process::Start {
        dir,
        log_name,
        store,
        extra_args: &[],
        ready_path: "/readyz",
        wait: START_WAIT,
    };
    support::process::serve(command(), start).await
}

/// Runs a CLI command to completion: (exit code, stdout, stderr).
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run wattledger");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn meter_id(m: u64) -> String {
    format!("crash-rack-{m}")
}

fn origin() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339("2025-01-02T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc)
}

fn fmt(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Reading `k` of meter `m`: the `k`th quarter hour from 2025-01-02 00:00Z.
fn reading(m: u64, k: u64) -> (String, Value) {
    let start = origin() + chrono::Duration::minutes(15 * k as i64);
    let end = start + chrono::Duration::minutes(15);
    let body = json!({
        "meter_id": meter_id(m),
        "flow": "consumed",
        "start": fmt(start),
        "end": fmt(end),
        "wh": (1_000 + (k * 7_919 + m * 31) % 100_000).to_string(),
    });
    (fmt(start), body)
}

#[derive(Clone, Debug)]
struct Ack {
    event_id: String,
    position: u64,
}

/// The outcome of one POST: an acknowledgement, or no answer (the server died).
enum Outcome {
    Ack(u16, Ack),
    NoAnswer(String),
}

async fn post_reading(client: &reqwest::Client, server_base: &str, token: &str, body: &Value) -> Outcome {
    let r = match client
        .post(format!("{server_base}/v1/readings"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return Outcome::NoAnswer(e.to_string()),
    };
    let status = r.status().as_u16();
    let v: Value = match r.json().await {
        Ok(v) => v,
        // The headers arrived but the body did not: not an acknowledgement.
        Err(e) => return Outcome::NoAnswer(format!("status {status}, body lost: {e}")),
    };
    assert!(
        status == 201 || status == 200,
        "POST /v1/readings {body} answered {status}: {v}"
    );
    Outcome::Ack(
        status,
        Ack {
            event_id: v["event_id"].as_str().expect("event_id").to_string(),
            position: v["position"].as_u64().expect("position"),
        },
    )
}

async fn setup(client: &reqwest::Client, server: &Server, token: &str) {
    let mut cmds = vec![
        (
            "/v1/sites".to_string(),
            json!({"site_id": SITE, "time_zone": "America/Chicago"}),
        ),
        (
            "/v1/tenants".to_string(),
            json!({"tenant_id": TENANT, "name": "Crash Test AI"}),
        ),
        (
            format!("/v1/sites/{SITE}/tariffs"),
            json!({"effective_from": "2024-01-01T00:00:00Z",
                   "rates_eu_per_wh": {"generated": "1", "stored": "1", "dispatched": "1", "consumed": "1.1"},
                   "default_band": {"name": "standard", "multiplier": "1"}}),
        ),
    ];
    for m in 0..METERS {
        cmds.push((
            "/v1/meters".to_string(),
            json!({"meter_id": meter_id(m), "site_id": SITE, "kind": "load", "tenant_id": TENANT,
                   "rated_power_w": "100000000"}),
        ));
    }
    for (i, (path, body)) in cmds.iter().enumerate() {
        let r = client
            .post(server.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, 201, "{path}: {v}");
        assert_eq!(v["position"], json!(i as u64 + 1), "{path}: {v}");
    }
}

/// Every recorded event, read through GET /v1/events a page at a time.
async fn all_events(client: &reqwest::Client, server: &Server, token: &str) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut next = Some(1u64);
    while let Some(from) = next {
        let r = client
            .get(server.url(&format!("/v1/events?from_position={from}&limit=1000")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let page: Value = r.json().await.unwrap();
        out.extend(page["events"].as_array().unwrap().iter().cloned());
        next = page["next_position"].as_u64();
    }
    out
}

/// The log holds exactly 1..=N, and every acknowledged reading exactly once, at its position.
async fn check_log(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
    acked: &BTreeMap<(u64, String), Ack>,
    round: usize,
) -> usize {
    let events = all_events(client, server, token).await;
    let mut seen: HashMap<(String, String), Vec<u64>> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        let pos = e["position"].as_u64().expect("position");
        assert_eq!(
            pos,
            i as u64 + 1,
            "round {round}: positions are not exactly 1..=N (a gap or a duplicate)"
        );
        if let (Some(m), Some(s)) = (e["data"]["meter_id"].as_str(), e["data"]["start"].as_str())
            && e["event_type"].as_str().is_some_and(|t| t.starts_with("Energy"))
        {
            let s = chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| fmt(t.with_timezone(&chrono::Utc)))
                .unwrap_or_else(|_| s.to_string());
            seen.entry((m.to_string(), s)).or_default().push(pos);
        }
    }
    for ((m, start), ack) in acked {
        let e = events.get(ack.position as usize - 1).unwrap_or_else(|| {
            panic!(
                "round {round}: acknowledged reading {} {start} at position {} is missing: the log ends at {}",
                meter_id(*m),
                ack.position,
                events.len()
            )
        });
        assert_eq!(
            e["event_id"].as_str(),
            Some(ack.event_id.as_str()),
            "round {round}: position {} does not hold the acknowledged event of {} {start}: {e}",
            ack.position,
            meter_id(*m)
        );
        let n = seen.get(&(meter_id(*m), start.clone())).map_or(0, Vec::len);
        assert_eq!(
            n,
            1,
            "round {round}: reading {} {start} is recorded {n} times: {:?}",
            meter_id(*m),
            seen.get(&(meter_id(*m), start.clone()))
        );
    }
    events.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_concurrent_posts_loses_and_duplicates_nothing() {
    let began = Instant::now();
    let seed = seed();
    eprintln!("crash_http seed: {seed} (set WATTLEDGER_CRASH_SEED={seed} to replay)");
    let mut rng = Rng(seed.max(1));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("w.db");
    let store = format!("sqlite://{}", db.display());
    let token = token();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    let mut server = serve(dir.path(), &store, "serve-0.log").await;
    setup(&client, &server, &token).await;

    // (meter, start) → acknowledgement.
    let mut acked: BTreeMap<(u64, String), Ack> = BTreeMap::new();
    // Readings with no answer, to retry after the restart: (meter, k).
    let mut unanswered: Vec<(u64, u64)> = Vec::new();
    // The next new reading index of each meter.
    let mut next_k = [0u64; METERS as usize];
    let (mut total_unanswered, mut total_dup_on_retry) = (0usize, 0usize);

    for round in 1..=ROUNDS {
        assert!(
            began.elapsed() < TEST_DEADLINE,
            "round {round}: the test ran past {TEST_DEADLINE:?}"
        );
        // Retry what the previous kill left unanswered.
        for (m, k) in std::mem::take(&mut unanswered) {
            let (start, body) = reading(m, k);
            match post_reading(&client, &server.base, &token, &body).await {
                Outcome::Ack(status, ack) => {
                    if status == 200 {
                        total_dup_on_retry += 1;
                    }
                    let prev = acked.insert((m, start.clone()), ack);
                    assert!(prev.is_none(), "{} {start} acknowledged twice", meter_id(m));
                }
                Outcome::NoAnswer(e) => {
                    panic!(
                        "round {round}: retry of {} {start} got no answer from a running server: {e}\n{}",
                        meter_id(m),
                        server.log()
                    )
                }
            }
        }

        // Four concurrent clients, each on its own meter.
        let mut tasks = Vec::new();
        for m in 0..METERS {
            let client = client.clone();
            let base = server.base.clone();
            let token = token.clone();
            let first = next_k[m as usize];
            tasks.push(tokio::spawn(async move {
                let mut acks = Vec::new();
                let mut lost = None;
                for k in first..first + PER_CLIENT_MAX {
                    let (start, body) = reading(m, k);
                    match post_reading(&client, &base, &token, &body).await {
                        Outcome::Ack(status, ack) => {
                            assert_eq!(status, 201, "a new reading {} {start} answered {status}", meter_id(m));
                            acks.push((start, ack));
                        }
                        Outcome::NoAnswer(_) => {
                            lost = Some(k);
                            break;
                        }
                    }
                }
                (m, acks, lost)
            }));
        }
        let delay = rng.between(KILL_DELAY_MS.0, KILL_DELAY_MS.1);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.kill();

        let mut round_acks = 0;
        for t in tasks {
            let (m, acks, lost) = t.await.expect("client task");
            round_acks += acks.len();
            let mut k_after = next_k[m as usize] + acks.len() as u64;
            for (start, ack) in acks {
                let prev = acked.insert((m, start.clone()), ack);
                assert!(prev.is_none(), "{} {start} acknowledged twice", meter_id(m));
            }
            if let Some(k) = lost {
                assert_eq!(k, k_after, "client {m} posts consecutively");
                unanswered.push((m, k));
                k_after += 1;
            } else {
                panic!("round {round}: client {m} posted {PER_CLIENT_MAX} readings before the kill at {delay} ms");
            }
            next_k[m as usize] = k_after;
        }
        total_unanswered += unanswered.len();

        server = serve(dir.path(), &store, &format!("serve-{round}.log")).await;
        let n = check_log(&client, &server, &token, &acked, round).await;
        eprintln!(
            "round {round}: killed after {delay} ms, {round_acks} acknowledged, {} unanswered, log holds {n} events",
            unanswered.len()
        );
    }

    // Retry the last round's unanswered readings, then check once more.
    for (m, k) in std::mem::take(&mut unanswered) {
        let (start, body) = reading(m, k);
        match post_reading(&client, &server.base, &token, &body).await {
            Outcome::Ack(status, ack) => {
                if status == 200 {
                    total_dup_on_retry += 1;
                }
                acked.insert((m, start), ack);
            }
            Outcome::NoAnswer(e) => panic!("final retry of {} {start}: no answer: {e}", meter_id(m)),
        }
    }
    let n = check_log(&client, &server, &token, &acked, ROUNDS + 1).await;
    assert_eq!(
        n,
        7 + acked.len(),
        "the log holds exactly the set-up events and the acknowledged readings"
    );

    // The projections after a restart equal a replay of the log.
    server.kill();
    server = serve(dir.path(), &store, "serve-final.log").await;
    let r = client
        .get(server.url(&format!("/v1/tenants/{TENANT}/statements/{PERIOD}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let served: Value = r.json().await.unwrap();
    let sigterm = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sigterm.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "serve did not stop after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "serve exits 0 on SIGTERM: {status}\n{}", server.log());
    drop(server);

    let (code, out, err) = run(&["audit", "--json", "--store", &store]);
    assert_eq!(code, Some(0), "audit exits 0 after {ROUNDS} kills: {out}\n{err}");
    let report: Value = serde_json::from_str(&out).expect("audit --json prints JSON");
    assert_eq!(report["clean"], json!(true), "{out}");
    assert_eq!(report["events"].as_u64(), Some(n as u64), "{out}");

    let snapshot = PathBuf::from(format!("{}.snapshot.json", db.display()));
    if snapshot.exists() {
        std::fs::remove_file(&snapshot).unwrap();
    }
    let (code, out, err) = run(&["statement", "--tenant", TENANT, "--period", PERIOD, "--store", &store]);
    assert_eq!(code, Some(0), "wattledger statement: {err}");
    let replayed: Value = serde_json::from_str(&out).expect("statement prints JSON");
    assert_eq!(
        served, replayed,
        "the statement served after a restart differs from a replay of the log"
    );
    eprintln!(
        "{} readings acknowledged, {total_unanswered} unanswered and retried ({total_dup_on_retry} had been recorded), in {:?}",
        acked.len(),
        began.elapsed()
    );
    assert!(began.elapsed() < TEST_DEADLINE, "the test took {:?}", began.elapsed());
}
