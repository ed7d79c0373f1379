//! The real binary: `wattledger serve` creates its secret file (mode 0600) without logging it,
//! `wattledger token` mints a token the server accepts, and SIGTERM during a bulk request
//! lets the request finish — every line acknowledged — before the process exits 0. After a
//! restart every acknowledged line's position holds its event, and the audit is clean.

mod support;

use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Readings in the bulk request that SIGTERM interrupts.
const READINGS: usize = 20_000;
/// Events recorded before the bulk request: site, tenant, meter, tariff.
const SETUP_EVENTS: u64 = 4;
/// Longest wait for the server to answer /healthz after starting.
const START_WAIT: Duration = Duration::from_secs(30);
/// Longest wait for the server to exit after SIGTERM.
const EXIT_WAIT: Duration = Duration::from_secs(60);

use support::process::{Server, command};

/// Starts `wattledger serve` on a free port and waits (bounded) for /healthz.
async fn serve(dir: &Path, store: &str, log_name: &str) -> Server {
    serve_with(dir, store, log_name, &[]).await
}

async fn serve_with(dir: &Path, store: &str, log_name: &str, extra_args: &[&str]) -> Server {
    let start = support::process::Start {
        dir,
        log_name,
        store,
        extra_args,
        ready_path: "/healthz",
        wait: START_WAIT,
    };
    support::process::serve(command(), start).await
}

/// Runs a CLI command to completion: (exit status, stdout, stderr).
fn run(args: &[&str]) -> (ExitStatus, String, String) {
    let out = command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run wattledger");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mint(store: &str, role: &str) -> String {
    let (status, out, err) = run(&["token", "--role", role, "--store", store]);
    assert!(status.success(), "wattledger token: {status}\n{err}");
    let token = out.trim().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    token
}

/// Posts a JSON command; the answer is held against `api.yaml` under `spec_path`.
async fn post(
    client: &reqwest::Client,
    server: &Server,
    (path, spec_path): (&str, &str),
    token: &str,
    body: &Value,
) -> (u16, Value) {
    let r = client
        .post(server.url(path))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let media = media_type(&r);
    let v: Value = r.json().await.unwrap();
    support::assert_matches_spec("POST", spec_path, status, &media, &v);
    (status, v)
}

fn media_type(r: &reqwest::Response) -> String {
    r.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// (path, spec path, body) of the commands that precede the bulk request.
fn setup_commands() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "/v1/sites",
            "/v1/sites",
            json!({"site_id": "memphis-1", "time_zone": "America/Chicago"}),
        ),
        (
            "/v1/tenants",
            "/v1/tenants",
            json!({"tenant_id": "acme-ai", "name": "Acme AI"}),
        ),
        (
            "/v1/meters",
            "/v1/meters",
            json!({"meter_id": "rack-a1", "site_id": "memphis-1", "kind": "load", "tenant_id": "acme-ai",
                   "rated_power_w": "2000000"}),
        ),
        (
            "/v1/sites/memphis-1/tariffs",
            "/v1/sites/{site_id}/tariffs",
            json!({"effective_from": "2025-01-01T00:00:00Z",
                   "rates_eu_per_wh": {"generated": "1", "stored": "1", "dispatched": "1", "consumed": "1.1"},
                   "default_band": {"name": "standard", "multiplier": "1"}}),
        ),
    ]
}

/// Reading `k`: rack-a1, the `k`th 15-minute slot back from 2026-11-01 00:00Z.
fn reading_line(k: usize) -> String {
    let nov = chrono::DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let start = nov - chrono::Duration::minutes(15 * (k as i64 + 1));
    let end = start + chrono::Duration::minutes(15);
    json!({
        "meter_id": "rack-a1",
        "flow": "consumed",
        "start": start.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "end": end.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "wh": (100_000 + k % 1_000).to_string(),
    })
    .to_string()
}

/// A gauge or counter sample of /metrics.
async fn metric(client: &reqwest::Client, server: &Server, name: &str) -> Option<f64> {
    let text = client
        .get(server.url("/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
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
        let media = media_type(&r);
        let page: Value = r.json().await.unwrap();
        support::assert_matches_spec("GET", "/v1/events", 200, &media, &page);
        out.extend(page["events"].as_array().unwrap().iter().cloned());
        next = page["next_position"].as_u64();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_bulk_request_finish_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("w.db").display());
    let mut server = serve(dir.path(), &store, "serve-1.log").await;

    // The secret: created next to the store, owner-only, never logged.
    let secret_path = dir.path().join("jwt-secret");
    let meta = std::fs::metadata(&secret_path).expect("serve creates <store dir>/jwt-secret");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "the secret file is owner-only"
    );
    let secret = std::fs::read_to_string(&secret_path).unwrap().trim().to_string();
    assert!(secret.len() >= 32, "a secret of at least 32 bytes");

    // A token minted by the CLI over the same store is accepted.
    let token = mint(&store, "operator");
    assert!(!token.contains(&secret));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    for (i, (path, spec, body)) in setup_commands().iter().enumerate() {
        let (status, v) = post(&client, &server, (path, spec), &token, body).await;
        assert_eq!(status, 201, "{path}: {v}");
        assert_eq!(v["position"], json!(i as u64 + 1));
    }

    // The bulk request, in flight when SIGTERM arrives.
    let body = (0..READINGS).map(reading_line).collect::<Vec<_>>().join("\n") + "\n";
    let request = client
        .post(server.url("/v1/readings"))
        .bearer_auth(&token)
        .header("content-type", "application/x-ndjson")
        .body(body);
    let sent = Instant::now();
    let bulk = tokio::spawn(async move {
        let res = request.send().await.expect("the bulk request is answered");
        let status = res.status().as_u16();
        let text = res.text().await.expect("the whole bulk answer arrives");
        (status, text, sent.elapsed())
    });
    // Wait until the server is recording the request's readings, then SIGTERM.
    let poll = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let head = metric(&poll, &server, "wattledger_head_position").await.unwrap_or(0.0);
        if head > SETUP_EVENTS as f64 {
            break;
        }
        assert!(
            !bulk.is_finished(),
            "the bulk request ended before any reading was recorded"
        );
        assert!(Instant::now() < deadline, "the bulk request never started recording");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        !bulk.is_finished(),
        "the bulk request finished before SIGTERM could be sent: nothing was tested"
    );
    server.sigterm();
    let killed = Instant::now();
    println!("SIGTERM {:?} after the bulk request was sent", sent.elapsed());
    let status = server.exit(EXIT_WAIT).await;
    let exit_took = killed.elapsed();
    let log = server.log();
    let status = status.unwrap_or_else(|| panic!("no exit within {EXIT_WAIT:?} of SIGTERM:\n{log}"));
    println!("exited {status} {exit_took:?} after SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}\n{log}");
    assert!(!log.contains(&secret), "the server's log shows the secret:\n{log}");

    let (status, text, took) = tokio::time::timeout(Duration::from_secs(60), bulk)
        .await
        .expect("the bulk answer completes")
        .unwrap();
    println!("bulk: {READINGS} readings answered in {took:?}");
    assert_eq!(status, 200, "{text}");
    let answers: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        answers.len(),
        READINGS,
        "every line answered, though SIGTERM came mid-request"
    );
    for a in [&answers[0], &answers[READINGS - 1]] {
        support::assert_matches_spec("POST", "/v1/readings", 200, "application/x-ndjson", a);
    }
    let mut acked: Vec<(u64, String)> = Vec::new();
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a["line"], json!(i + 1), "{a}");
        assert_eq!(a["ok"], json!(true), "line {}: {a}", i + 1);
        assert_eq!(a["status"], json!(201), "line {}: {a}", i + 1);
        let p = a["position"].as_u64().unwrap();
        assert_eq!(
            p,
            SETUP_EVENTS + 1 + i as u64,
            "line {}: positions follow the lines",
            i + 1
        );
        acked.push((p, a["event_id"].as_str().unwrap().to_string()));
    }

    // SIGTERM saved the write state and the store's index, so the restart reads them and
    // not the whole log.
    for f in ["w.db.state.snapshot", "w.db.index"] {
        assert!(dir.path().join(f).exists(), "{f} is saved on SIGTERM");
    }

    // Restarted over the same store: every acknowledged position holds its event.
    let mut server = serve(dir.path(), &store, "serve-2.log").await;
    let from = format!(
        "from the write-state snapshot at position {} and 0 events after it",
        SETUP_EVENTS + READINGS as u64
    );
    assert!(server.log().contains(&from), "{from}:\n{}", server.log());
    let events = all_events(&client, &server, &token).await;
    assert_eq!(events.len() as u64, SETUP_EVENTS + READINGS as u64);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["position"], json!(i as u64 + 1));
    }
    for (p, id) in &acked {
        let e = &events[*p as usize - 1];
        assert_eq!(e["event_id"].as_str(), Some(id.as_str()), "position {p}");
        assert_eq!(e["event_type"], json!("EnergyConsumed"));
    }
    // The same reading again is a duplicate at its first position.
    let again: Value = serde_json::from_str(&reading_line(7)).unwrap();
    let (status, v) = post(&client, &server, ("/v1/readings", "/v1/readings"), &token, &again).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["position"], json!(acked[7].0));
    server.sigterm();
    let status = server
        .exit(EXIT_WAIT)
        .await
        .expect("the restarted server exits after SIGTERM");
    assert!(status.success(), "{status}\n{}", server.log());
    assert!(
        !server.log().contains(&secret),
        "the restarted server's log shows the secret"
    );

    // The CLI agrees: export holds every acknowledged event; the audit is clean.
    let (status, out, err) = run(&["export", "--format", "ndjson", "--store", &store]);
    assert!(status.success(), "export: {status}\n{err}");
    let exported: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(exported.len(), events.len());
    for (p, id) in &acked {
        assert_eq!(
            exported[*p as usize - 1]["event_id"].as_str(),
            Some(id.as_str()),
            "export at {p}"
        );
    }
    let (status, out, err) = run(&["audit", "--store", &store]);
    println!("audit: {}", out.trim());
    assert!(
        status.success(),
        "wattledger audit exits 0 on a clean log: {status}\n{out}\n{err}"
    );
}

/// A live (SSE) listener must not keep the server from stopping: a stream never ends on its
/// own, so graceful shutdown has to end it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_live_listener_connected_still_exits() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("w.db").display());
    let mut server = serve(dir.path(), &store, "serve.log").await;
    let token = mint(&store, "auditor");
    let client = reqwest::Client::new();
    let res = client
        .get(server.url("/v1/events/live"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let mut body = res.bytes_stream();
    server.sigterm();
    let killed = Instant::now();
    let status = server.exit(Duration::from_secs(20)).await;
    println!("with a live listener: {status:?} {:?} after SIGTERM", killed.elapsed());
    // The listener sees its stream end rather than hang.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        use futures_util::StreamExt;
        while let Some(Ok(_)) = body.next().await {}
    })
    .await
    .is_ok();
    let status = status.unwrap_or_else(|| {
        panic!(
            "wattledger serve did not exit within 20 s of SIGTERM while a /v1/events/live client was connected:\n{}",
            server.log()
        )
    });
    assert!(status.success(), "{status}");
    assert!(ended, "the live stream ends when the server stops");
}

/// `serve --checkpoint-every 1` saves the write state and the store's index while it runs:
/// after SIGKILL, the restart reads the last checkpoint and folds only what followed it, and
/// every acknowledged event is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_the_restart_folds_only_what_followed_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("w.db").display());
    let mut server = serve_with(dir.path(), &store, "serve-1.log", &["--checkpoint-every", "1"]).await;
    let token = mint(&store, "operator");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    for (path, spec, body) in setup_commands() {
        let (status, v) = post(&client, &server, (path, spec), &token, &body).await;
        assert_eq!(status, 201, "{path}: {v}");
    }
    let bulk = |server: &Server, lines: std::ops::Range<usize>| {
        let body = lines.map(reading_line).collect::<Vec<_>>().join("\n") + "\n";
        client
            .post(server.url("/v1/readings"))
            .bearer_auth(&token)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
    };
    let res = bulk(&server, 0..100).await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert_eq!(text.matches("\"ok\":true").count(), 100, "{text}");
    let checkpointed = SETUP_EVENTS + 100;
    let saved = format!("position={checkpointed}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server
        .log()
        .lines()
        .any(|l| l.contains("checkpoint saved") && l.contains(&saved))
    {
        assert!(
            Instant::now() < deadline,
            "no checkpoint at {checkpointed}:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // More readings, then a crash before the next checkpoint can see them.
    let res = bulk(&server, 100..150).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap().matches("\"ok\":true").count(), 50);
    server.kill();

    let mut server = serve(dir.path(), &store, "serve-2.log").await;
    let from = format!("from the write-state snapshot at position {checkpointed} and 50 events after it");
    assert!(server.log().contains(&from), "{from}:\n{}", server.log());
    let events = all_events(&client, &server, &token).await;
    assert_eq!(events.len() as u64, checkpointed + 50);
    // The readings after the checkpoint are known to the restarted ledger: a repost is
    // answered as the reading already recorded (200), not recorded again (201).
    let res = bulk(&server, 120..121).await.unwrap();
    let text = res.text().await.unwrap();
    assert!(text.contains("\"status\":200"), "{text}");
    assert_eq!(
        all_events(&client, &server, &token).await.len() as u64,
        checkpointed + 50
    );
    server.sigterm();
    assert!(server.exit(EXIT_WAIT).await.is_some_and(|s| s.success()));
}
