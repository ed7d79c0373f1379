//! Several API servers over one PostgreSQL database (skipped, with the reason printed,
//! without `WATTLEDGER_TEST_POSTGRES_URL`): two `serve` processes, 8 concurrent writers at
//! each; one gap-free log, every acknowledged reading present once, identical statements on
//! both servers, read-your-writes across them with `min_position`, and a clean audit.

mod pg;

use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wattledger::api::auth::{AuthConfig, Claims, Role};

const SECRET: &str = "postgres-servers-test-secret-0123456789abcdef";
const WRITERS_PER_SERVER: usize = 8;
const READINGS_PER_WRITER: usize = 40;

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start(url: &str, dir: &std::path::Path) -> Server {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_wattledger"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--store", url])
        .env("WATTLEDGER_JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let s = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{}/readyz", s.base)).send().await
            && r.status() == 200
        {
            return s;
        }
        assert!(Instant::now() < deadline, "the server did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn token(role: Role) -> String {
    let now = chrono::Utc::now().timestamp() as u64;
    AuthConfig::hs256(SECRET.as_bytes(), "test")
        .unwrap()
        .mint(Claims::unscoped("test", role, now, 3600))
        .unwrap()
}

/// Posts until answered 201/200 (retrying 503), bounded.
async fn post(client: &reqwest::Client, url: &str, tok: &str, body: &Value) -> Value {
    for _ in 0..50 {
        let r = client.post(url).bearer_auth(tok).json(body).send().await.unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        match status {
            200 | 201 => return v,
            503 => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => panic!("{url} {body}: {status} {v}"),
        }
    }
    panic!("{url}: still unavailable after 50 tries");
}

async fn get(client: &reqwest::Client, url: &str, tok: &str) -> Value {
    let r = client.get(url).bearer_auth(tok).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_one_database() {
    let Some(base) = pg::base_url("two_servers_one_database") else {
        return;
    };
    let url = pg::fresh_schema_url(&base).await;
    let dir = tempfile::tempdir().unwrap();
    let a = start(&url, dir.path()).await;
    let b = start(&url, dir.path()).await;
    let op = token(Role::Operator);
    let c = reqwest::Client::new();

    post(
        &c,
        &format!("{}/v1/sites", a.base),
        &op,
        &json!({"site_id":"s1","time_zone":"UTC"}),
    )
    .await;
    post(
        &c,
        &format!("{}/v1/sites/s1/tariffs", b.base),
        &op,
        &json!({"effective_from":"2026-01-01T00:00:00Z",
        "rates_eu_per_wh":{"generated":"1","stored":"1","dispatched":"1","consumed":"2"},
        "default_band":{"name":"flat","multiplier":"1"}}),
    )
    .await;
    for t in 0..4 {
        post(
            &c,
            &format!("{}/v1/tenants", a.base),
            &op,
            &json!({"tenant_id":format!("t{t}"),"name":format!("T{t}")}),
        )
        .await;
    }
    let writers = 2 * WRITERS_PER_SERVER;
    for m in 0..writers {
        // Registered alternately on each server: B must see A's tenants before deciding.
        let srv = if m % 2 == 0 { &a.base } else { &b.base };
        post(
            &c,
            &format!("{srv}/v1/meters"),
            &op,
            &json!({"meter_id":format!("m{m}"),"site_id":"s1","kind":"load",
            "tenant_id":format!("t{}", m % 4),"rated_power_w":"1000000"}),
        )
        .await;
    }

    let mut tasks = Vec::new();
    for w in 0..writers {
        let srv = if w < WRITERS_PER_SERVER {
            a.base.clone()
        } else {
            b.base.clone()
        };
        let (c, op) = (c.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            let start = chrono::DateTime::parse_from_rfc3339("2026-10-01T00:00:00Z").unwrap();
            for k in 0..READINGS_PER_WRITER {
                let s = start + chrono::Duration::minutes(15 * k as i64);
                let e = s + chrono::Duration::minutes(15);
                let v = post(
                    &c,
                    &format!("{srv}/v1/readings"),
                    &op,
                    &json!({"meter_id":format!("m{w}"),"flow":"consumed",
                    "start":s.to_rfc3339(),"end":e.to_rfc3339(),"wh":"10"}),
                )
                .await;
                acks.push((
                    v["position"].as_u64().unwrap(),
                    v["event_id"].as_str().unwrap().to_string(),
                ));
            }
            acks
        }));
    }
    let mut acks = Vec::new();
    for t in tasks {
        acks.extend(t.await.unwrap());
    }
    let n_readings = writers * READINGS_PER_WRITER;
    assert_eq!(acks.len(), n_readings);

    // The log: positions contiguous, every acknowledged reading present exactly once.
    let mut log = Vec::new();
    let mut from = 1;
    loop {
        let page = get(
            &c,
            &format!("{}/v1/events?from_position={from}&limit=1000", b.base),
            &op,
        )
        .await;
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            break;
        }
        from = events.last().unwrap()["position"].as_u64().unwrap() + 1;
        log.extend(events);
    }
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e["position"].as_u64(), Some(i as u64 + 1));
    }
    let head = log.len() as u64;
    for (pos, id) in &acks {
        assert_eq!(log[*pos as usize - 1]["event_id"].as_str(), Some(id.as_str()));
    }
    let ids: std::collections::HashSet<_> = log
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), log.len(), "no event twice");

    // Both servers answer the same statements once they have applied the head; each tenant
    // has 4 meters × 40 readings × 10 Wh × 2 EU/Wh = 3,200 EU of charges.
    for t in 0..4 {
        let path = format!("/v1/tenants/t{t}/statements/2026-10?min_position={head}");
        let sa = get(&c, &format!("{}{path}", a.base), &op).await;
        let sb = get(&c, &format!("{}{path}", b.base), &op).await;
        assert_eq!(sa, sb, "t{t}");
        assert_eq!(sa["charges_eu"], "3200");
        assert_eq!(sa["consumption_wh"], "1600");
    }

    // Read-your-writes across servers: write on A, read on B with min_position.
    let v = post(
        &c,
        &format!("{}/v1/tenants/t0/credits", a.base),
        &op,
        &json!({"amount_eu":"5","memo":"ryw"}),
    )
    .await;
    let pos = v["position"].as_u64().unwrap();
    let bal = get(&c, &format!("{}/v1/accounts/tenant:t0?min_position={pos}", b.base), &op).await;
    assert_eq!(bal["balance_eu"], "-3195");

    for s in [&a, &b] {
        let report = get(&c, &format!("{}/v1/audit", s.base), &token(Role::Auditor)).await;
        assert_eq!(report["clean"], true, "{report}");
        assert_eq!(report["head_position"].as_u64(), Some(pos));
    }
}
