//! The web dashboard, end to end, on the real binary: `wattledger serve --demo` serves the page
//! and its assets from the binary (right content types, nothing loaded from elsewhere); the
//! flows read route adds up to the energy balance; and, where `/usr/bin/chromium` exists,
//! headless Chromium opens the page with an operator token and the DOM shows that the chart
//! drew every source and tenant of the demo week and that live events arrived over the fetch
//! stream, then with a tenant token and the DOM shows that tenant's statement totals exactly as
//! `GET /v1/tenants/{t}/statements/{p}` gives them, with its active holds, total and available
//! balance as `GET /v1/tenants/{t}/holds` gives them. Screenshots go to `target/dashboard.png`
//! and `target/dashboard-tenant.png`.

mod support;

use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};
use support::process::Server;
use wattledger::api::auth::{AuthConfig, Role};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The HS256 secret the test server verifies with (not a real secret).
const SECRET: &str = "dashboard-test-secret-0123456789-abcdefghijklmnop";
/// Longest wait for the server to load the demo week and answer /healthz.
const START_WAIT: Duration = Duration::from_secs(120);
/// Longest one Chromium run may take (it usually takes a second or two).
const BROWSER_WAIT: Duration = Duration::from_secs(120);
/// Virtual time the page gets to load and draw (virtual time stands still while a request
/// is in flight, so a slow server does not eat into it).
const VIRTUAL_TIME_BUDGET_MS: u32 = 20_000;
/// How many of the log's last events the page is asked to replay through its live feed.
const LIVE_REPLAY_EVENTS: u64 = 5;

/// A `wattledger serve --demo` child in its own folder; killed when dropped.
struct Demo {
    server: Server,
    auth: AuthConfig,
    client: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Demo {
    async fn start() -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let store = format!("sqlite://{}", dir.path().join("demo.db").display());
        let mut cmd = support::process::command();
        cmd.env("WATTLEDGER_JWT_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .current_dir(dir.path());
        let start = support::process::Start {
            dir: dir.path(),
            log_name: "serve.log",
            store: &store,
            extra_args: &["--demo"],
            ready_path: "/healthz",
            wait: START_WAIT,
        };
        let server = support::process::serve(cmd, start).await;
        Demo {
            server,
            auth: AuthConfig::hs256(SECRET.as_bytes(), "test").unwrap(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            dir,
        }
    }

    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    fn token(&self, role: Role, tenant: Option<&str>) -> String {
        self.auth.mint(support::claims(role, tenant, None, None, 3600)).unwrap()
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let res = self.client.get(self.url(path)).bearer_auth(token).send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get_ok(&self, path: &str, token: &str) -> Value {
        let (status, v) = self.get(path, token).await;
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }
}

fn dec(v: &Value) -> Decimal {
    Decimal::from_str(v.as_str().unwrap_or_else(|| panic!("not a decimal string: {v}"))).unwrap()
}

/// Every `src="…"` and `href="…"` value in an HTML text.
fn links(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["src=", "href="] {
        let mut rest = html;
        while let Some(i) = rest.find(attr) {
            rest = &rest[i + attr.len()..];
            let quote = rest.chars().next().unwrap_or(' ');
            let value = if quote == '"' || quote == '\'' {
                rest[1..].split(quote).next().unwrap_or("")
            } else {
                rest.split(|c: char| c.is_whitespace() || c == '>').next().unwrap_or("")
            };
            out.push(value.to_string());
        }
    }
    out
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_from_the_binary() {
    let demo = Demo::start().await;
    let res = demo.client.get(demo.url("/")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let csp = h["content-security-policy"].to_str().unwrap();
    for directive in ["default-src 'none'", "script-src 'self'", "connect-src 'self'"] {
        assert!(csp.contains(directive), "CSP {csp:?} lacks {directive:?}");
    }
    let html = res.text().await.unwrap();
    assert_eq!(html, wattledger::api::web::INDEX_HTML);

    // Nothing is loaded from elsewhere: every src and href is this server's (or data:).
    let found = links(&html);
    assert!(found.len() >= 4, "{found:?}");
    for l in &found {
        assert!(
            !l.contains("://") && !l.starts_with("//"),
            "the page refers to an external URL: {l:?}"
        );
        assert!(
            l.starts_with('/') || l.starts_with("data:") || l.starts_with('#'),
            "{l:?}"
        );
    }
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "an absolute URL in the page"
    );

    // Every asset the page names is served, with its content type.
    let expected = [
        ("/assets/dashboard.js", "text/javascript; charset=utf-8"),
        ("/assets/dashboard.css", "text/css; charset=utf-8"),
        ("/assets/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
        ("/assets/uPlot.min.css", "text/css; charset=utf-8"),
        ("/assets/uPlot.LICENSE", "text/plain; charset=utf-8"),
    ];
    for (path, ctype) in expected {
        let res = demo.client.get(demo.url(path)).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200, "{path}");
        assert_eq!(res.headers()["content-type"], ctype, "{path}");
        assert_eq!(res.headers()["x-content-type-options"], "nosniff", "{path}");
        let body = res.text().await.unwrap();
        assert!(body.len() > 500, "{path} is {} bytes", body.len());
        if path.ends_with(".css") {
            assert!(!body.contains("url(http"), "{path} loads from elsewhere");
        }
        if path == "/assets/dashboard.js" {
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{path} names a URL"
            );
        }
    }
    for l in found.iter().filter(|l| l.starts_with("/assets/")) {
        assert!(
            expected.iter().any(|(p, _)| p == l),
            "the page names {l}, which is not served"
        );
    }
    assert!(
        wattledger::api::web::ASSETS.len() == expected.len(),
        "an asset is not checked here"
    );
    let res = demo.client.get(demo.url("/assets/nothing.js")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 404);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let res = demo.client.get(demo.url("/assets/..%2Fapi.yaml")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 404);
}

#[tokio::test]
async fn the_flows_split_the_energy_balance_by_source_and_tenant() {
    let demo = Demo::start().await;
    let op = demo.token(Role::Operator, None);
    let sites = demo.get_ok("/v1/sites", &op).await;
    support::assert_matches_spec("GET", "/v1/sites", 200, "application/json", &sites);
    let site = &sites["sites"][0];
    assert_eq!(site["site_id"], "memphis-1");
    let (data_from, data_to) = (site["data_from"].as_str().unwrap(), site["data_to"].as_str().unwrap());
    // The demo is a week of 15-minute readings.
    assert_eq!(site["intervals"], 7 * 96);

    // Without a range: the last week of data.
    let flows = demo.get_ok("/v1/sites/memphis-1/flows", &op).await;
    support::assert_matches_spec("GET", "/v1/sites/{site_id}/flows", 200, "application/json", &flows);
    assert_eq!(
        (flows["from"].as_str(), flows["to"].as_str()),
        (Some(data_from), Some(data_to))
    );
    assert_eq!(flows["truncated"], false);
    let sources: Vec<&str> = flows["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(sources, ["gas_turbine", "grid", "solar"]);
    let tenants: Vec<&str> = flows["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant_id"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["acme-ai", "beta-labs", "cortex-compute"]);
    assert_eq!(flows["tenants"][0]["name"], "Acme AI");

    // Interval by interval, the splits add up to the energy balance's totals (each value is
    // rounded to the mWh, so a sum may differ by a few of them), and the rest is the same.
    let range = format!("from={data_from}&to={data_to}");
    let balance = demo
        .get_ok(&format!("/v1/sites/memphis-1/energy-balance?{range}"), &op)
        .await;
    let (fi, bi) = (
        flows["intervals"].as_array().unwrap(),
        balance["intervals"].as_array().unwrap(),
    );
    assert_eq!(fi.len(), 7 * 96);
    assert_eq!(fi.len(), bi.len());
    let tolerance = Decimal::new(5, 3);
    for (f, b) in fi.iter().zip(bi) {
        assert_eq!(f["start"], b["start"]);
        for k in ["generated_wh", "stored_wh", "dispatched_wh", "consumed_wh", "losses_wh"] {
            assert_eq!(f[k], b[k], "{k} at {}", f["start"]);
        }
        let sum = |m: &Value| m.as_object().unwrap().values().map(dec).sum::<Decimal>();
        let by_source = sum(&f["generated_by_source_wh"]);
        let by_tenant = sum(&f["consumed_by_tenant_wh"]);
        assert!((by_source - dec(&f["generated_wh"])).abs() <= tolerance, "{f}");
        assert!((by_tenant - dec(&f["consumed_wh"])).abs() <= tolerance, "{f}");
        assert_eq!(f["consumed_by_tenant_wh"].as_object().unwrap().len(), 3, "{f}");
    }
    // And over the week each tenant's share is what its statement lines charge it for.
    for t in &tenants {
        let week: Decimal = fi.iter().map(|f| dec(&f["consumed_by_tenant_wh"][*t])).sum();
        let acct = demo.get_ok(&format!("/v1/accounts/tenant:{t}"), &op).await;
        assert_eq!(week, -dec(&acct["balance_wh"]), "{t}");
    }

    // A range: only its intervals.
    let first = fi[0]["start"].as_str().unwrap();
    let fourth = fi[4]["start"].as_str().unwrap();
    let part = demo
        .get_ok(&format!("/v1/sites/memphis-1/flows?from={first}&to={fourth}"), &op)
        .await;
    assert_eq!(part["intervals"].as_array().unwrap().len(), 4);
    assert_eq!(part["data_to"], data_to);

    // Refusals.
    let (s, _) = demo.get("/v1/sites/nowhere/flows", &op).await;
    assert_eq!(s, 404);
    let (s, _) = demo
        .get(&format!("/v1/sites/memphis-1/flows?from={fourth}&to={first}"), &op)
        .await;
    assert_eq!(s, 422);
    let (s, _) = demo.get("/v1/sites/memphis-1/flows?from=monday", &op).await;
    assert_eq!(s, 422);
    let acme = demo.token(Role::Tenant, Some("acme-ai"));
    for path in ["/v1/sites", "/v1/sites/memphis-1/flows"] {
        let (s, v) = demo.get(path, &acme).await;
        assert_eq!(s, 403, "{path}: {v}");
    }
    let res = demo.client.get(demo.url("/v1/sites")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 401);

    // The spec documents the query parameters these handlers read.
    let spec: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/api.yaml")).unwrap())
            .unwrap();
    let spec = serde_json::to_value(spec).unwrap();
    let names = |path: &str| -> Vec<String> {
        let mut v: Vec<String> = spec["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| match p["$ref"].as_str() {
                Some(r) => {
                    let name = r.rsplit('/').next().unwrap();
                    spec["components"]["parameters"][name].clone()
                }
                None => p.clone(),
            })
            .filter(|p| p["in"] == "query")
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("/v1/sites/{site_id}/flows"), ["from", "min_position", "to"]);
    assert_eq!(names("/v1/sites"), ["min_position"]);
}

// ----- the browser -----

/// Runs headless Chromium on `url` with `mode` (`--dump-dom`, or `--screenshot=PATH`);
/// answers what it printed on standard output. Every run is bounded.
async fn chromium(profile: &Path, url: &str, mode: &str, out: &Path) -> String {
    let err = out.with_extension("stderr.txt");
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1400,2000",
            &format!("--user-data-dir={}", profile.display()),
            &format!("--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}"),
            mode,
            url,
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + BROWSER_WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish within {BROWSER_WAIT:?}:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.success(),
        "chromium exited with {status}:\n{}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    std::fs::read_to_string(out).unwrap_or_default()
}

fn unescape_attr(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// The page's own account of what it shows: the `data-summary` of `#dash-summary`.
fn page_summary(dom: &str) -> Value {
    let at = dom
        .find("id=\"dash-summary\"")
        .unwrap_or_else(|| panic!("no #dash-summary in the DOM:\n{dom}"));
    // Quotes are escaped inside attribute values, so the value ends at the next one.
    let rest = &dom[at..];
    let key = "data-summary=\"";
    let start = rest
        .find(key)
        .unwrap_or_else(|| panic!("#dash-summary has no data-summary: {}", &rest[..rest.len().min(300)]))
        + key.len();
    let value = &rest[start..start + rest[start..].find('"').unwrap()];
    serde_json::from_str(&unescape_attr(value)).unwrap_or_else(|e| panic!("data-summary is not JSON ({e}): {value}"))
}

/// Wh as the page shows MWh: three decimals (to the kWh), half away from zero, grouped.
fn mwh_text(wh: &Value) -> String {
    let mwh = (dec(wh) / Decimal::from(1_000_000)).round_dp_with_strategy(3, RoundingStrategy::MidpointAwayFromZero);
    format!("{mwh:.3}")
}

/// The statement totals the page shows equal the API's statement, to the last digit.
fn assert_statement_shown(dom: &str, shown: &Value, api: &Value) {
    assert_eq!(shown["tenant_id"], api["tenant_id"]);
    assert_eq!(shown["period"], api["period"]);
    assert_eq!(shown["lines"], api["lines"].as_array().unwrap().len());
    let fields = [
        "opening_balance_eu",
        "charges_eu",
        "credits_eu",
        "transfers_in_eu",
        "transfers_out_eu",
        "adjustments_eu",
        "closing_balance_eu",
        "consumption_wh",
    ];
    for f in fields {
        let t = &shown["totals"][f];
        assert_eq!(t["value"], api[f], "{f}: the page holds {t}");
        let text = t["text"].as_str().unwrap();
        let plain = text.replace(',', "");
        if f.ends_with("_eu") {
            assert_eq!(plain, api[f].as_str().unwrap(), "{f} shown as {text:?}");
        } else {
            assert_eq!(plain, mwh_text(&api[f]), "{f} shown as {text:?}");
        }
        // And it is in the document as rendered, not only in the summary.
        let cell = format!("data-field=\"{f}\" data-value=\"{}\"", api[f].as_str().unwrap());
        assert!(dom.contains(&cell), "the DOM has no {cell}");
        assert!(
            dom.contains(&format!("<span class=\"n\">{text}</span>")),
            "the DOM does not show {text:?} for {f}"
        );
    }
    // The closing balance is the opening balance plus the period's movements.
    let d = |f: &str| dec(&api[f]);
    assert_eq!(
        d("closing_balance_eu"),
        d("opening_balance_eu") - d("charges_eu") + d("credits_eu") + d("transfers_in_eu") - d("transfers_out_eu")
            + d("adjustments_eu")
    );
}

fn target_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target folder")
        .to_path_buf()
}

#[tokio::test]
async fn headless_chromium_draws_every_source_and_tenant_and_the_tenant_sees_its_totals() {
    if !Path::new(CHROMIUM).exists() {
        // Straight to stderr, past the test harness's capture, so the skip is seen.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {CHROMIUM} is not installed (apt-get install chromium; .ci/run installs it when it can), so the \
             dashboard was not opened in a browser"
        );
        return;
    }
    let demo = Demo::start().await;
    let work = demo.dir.path().join("browser");
    std::fs::create_dir_all(&work).unwrap();
    let op = demo.token(Role::Operator, None);
    let flows = demo.get_ok("/v1/sites/memphis-1/flows", &op).await;
    let intervals = flows["intervals"].as_array().unwrap().len();
    assert_eq!(intervals, 7 * 96);
    let head = demo.get_ok("/readyz", &op).await["head_position"].as_u64().unwrap();
    let live_from = head + 1 - LIVE_REPLAY_EVENTS;

    // The operator's view.
    let url = format!("{}/#token={op}&live_from={live_from}", demo.server.base);
    let dom = chromium(
        &work.join("profile-op"),
        &url,
        "--dump-dom",
        &work.join("operator.html"),
    )
    .await;
    let s = page_summary(&dom);
    assert_eq!(s["state"], "ready", "the page did not finish loading: {s}");
    assert_eq!(s["role"], "operator");
    assert_eq!(s["errors"], serde_json::json!([]), "{s}");
    assert_eq!(s["site"], "memphis-1");
    assert_eq!(
        (&s["from"], &s["to"]),
        (&flows["from"], &flows["to"]),
        "the default range is the demo week"
    );
    assert_eq!(s["chart"]["drawn"], true, "{s}");
    assert_eq!(s["chart"]["intervals"], intervals);
    assert!(s["chart"]["width"].as_u64().unwrap() > 400, "{s}");
    let series = s["series"].as_array().unwrap();
    let find = |key: &str| {
        series
            .iter()
            .find(|x| x["key"] == key)
            .unwrap_or_else(|| panic!("the chart has no series {key}: {series:?}"))
    };
    let mut expected: Vec<String> = flows["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| format!("generated:{}", x.as_str().unwrap()))
        .collect();
    expected.extend(
        flows["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| format!("consumed:{}", t["tenant_id"].as_str().unwrap())),
    );
    assert_eq!(expected.len(), 3 + 3, "{expected:?}");
    expected.extend(["dispatched", "stored", "losses"].map(String::from));
    for key in &expected {
        let x = find(key);
        assert_eq!(x["points"], intervals, "{x}");
        assert!(
            x["nonzero"].as_u64().unwrap() > 0,
            "the chart drew nothing for {key}: {x}"
        );
    }
    assert_eq!(series.len(), expected.len(), "{series:?}");
    // Each series' energy is what the flows say (the page draws MW; it sums back to MWh).
    let week_mwh = |key: &str| -> f64 {
        let (field, name) = key.split_once(':').unwrap();
        let map = if field == "generated" {
            "generated_by_source_wh"
        } else {
            "consumed_by_tenant_wh"
        };
        flows["intervals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i[map][name].as_str().map_or(0.0, |v| v.parse::<f64>().unwrap()))
            .sum::<f64>()
            / 1e6
    };
    for key in expected.iter().filter(|k| k.contains(':')) {
        let drawn = find(key)["total_mwh"].as_f64().unwrap();
        assert!((drawn - week_mwh(key)).abs() < 0.01, "{key}: drew {drawn} MWh");
    }
    // The other panels: conservation (the demo balances), batteries, settlement.
    assert_eq!(s["flagged"]["count"], 0);
    assert_eq!(s["flagged"]["intervals"], intervals);
    let storage = demo.get_ok("/v1/storage", &op).await;
    assert_eq!(s["batteries"]["count"], storage["batteries"].as_array().unwrap().len());
    assert_eq!(s["settlement"]["sum_eu"], "0");
    // The live feed (fetch with the Authorization header) delivered the replayed readings.
    assert_eq!(s["live"]["state"], "on", "{s}");
    assert!(
        s["live"]["readings"].as_u64().unwrap() >= 1,
        "no live reading arrived: {s}"
    );
    assert_eq!(s["live"]["last_position"], head, "{s}");
    // The operator sees a tenant's statement too: the first tenant, for the range's last month.
    let shown = &s["statement"];
    let api = demo
        .get_ok(
            &format!(
                "/v1/tenants/{}/statements/{}",
                shown["tenant_id"].as_str().unwrap(),
                shown["period"].as_str().unwrap()
            ),
            &op,
        )
        .await;
    assert_eq!(shown["tenant_id"], "acme-ai");
    assert_statement_shown(&dom, shown, &api);
    // The token does not stay in the address bar, and is not written into the page.
    assert!(!dom.contains(&op), "the token is in the DOM");

    let shot = target_dir().join("dashboard.png");
    chromium(
        &work.join("profile-op-shot"),
        &url,
        &format!("--screenshot={}", shot.display()),
        &work.join("shot.txt"),
    )
    .await;
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "{} bytes", png.len());

    // A tenant's view: its own statement only; the site panels answer 403 and are not shown.
    // It holds EU on hold for a job: the page shows its active holds, total and available.
    let beta = demo.token(Role::Tenant, Some("beta-labs"));
    let expires = wattledger::domain::time::fmt_time(&(chrono::Utc::now() + chrono::Duration::hours(6)));
    let placed = demo
        .client
        .post(demo.url("/v1/tenants/beta-labs/holds"))
        .bearer_auth(&beta)
        .json(&serde_json::json!({"hold_id":"train-9","amount_eu":"1234.5","expires_at":expires,"job_id":"train-9"}))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status().as_u16(), 201);
    let position = placed.json::<Value>().await.unwrap()["position"].as_u64().unwrap();
    let holds = demo
        .get_ok(
            &format!("/v1/tenants/beta-labs/holds?status=active&min_position={position}"),
            &beta,
        )
        .await;
    let url = format!("{}/#token={beta}", demo.server.base);
    let dom = chromium(
        &work.join("profile-tenant"),
        &url,
        "--dump-dom",
        &work.join("tenant.html"),
    )
    .await;
    let s = page_summary(&dom);
    assert_eq!(s["state"], "ready", "{s}");
    assert_eq!(s["role"], "tenant");
    assert_eq!(s["tenant_id"], "beta-labs");
    assert_eq!(s["series"], serde_json::json!([]), "a tenant token drew the site: {s}");
    assert_eq!(s["chart"]["drawn"], false);
    assert_eq!(s["errors"], serde_json::json!([]), "{s}");
    let shown = &s["statement"];
    assert_eq!(shown["tenant_id"], "beta-labs");
    let api = demo
        .get_ok(
            &format!("/v1/tenants/beta-labs/statements/{}", shown["period"].as_str().unwrap()),
            &beta,
        )
        .await;
    assert!(
        api["last_position"].as_u64().unwrap() > 0,
        "the page chose an empty period: {api}"
    );
    assert_statement_shown(&dom, shown, &api);
    assert_eq!(
        s["holds"],
        serde_json::json!({"active": 1, "held_eu": "1234.5", "balance_eu": holds["balance_eu"], "available_eu": holds["available_eu"]}),
        "{s}"
    );
    assert!(dom.contains("train-9"), "the hold is listed");
    assert!(
        dom.contains("id=\"operator-view\" hidden"),
        "the site panels are shown to a tenant"
    );
    // Its hourly sources: a chart with one point per hour of the attribution, and the
    // figures the API gives.
    let drawn = &s["attribution"];
    let period = shown["period"].as_str().unwrap();
    let api = demo
        .get_ok(&format!("/v1/tenants/beta-labs/attribution/{period}"), &beta)
        .await;
    let hours: std::collections::BTreeSet<&str> = api["hours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["hour"].as_str().unwrap())
        .collect();
    assert!(!hours.is_empty(), "the demo tenant consumed nothing: {api}");
    assert_eq!(drawn["hours"], hours.len(), "{drawn}");
    assert_eq!(drawn["chart"]["drawn"], true, "{drawn}");
    assert_eq!(drawn["chart"]["points"], hours.len());
    assert_eq!(drawn["carbon_kg"], api["carbon_kg"]);
    assert_eq!(drawn["carbon_free_share"], api["carbon_free_share"]);
    let sources: Vec<&str> = api["by_source_wh"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut shown_sources: Vec<&str> = drawn["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    shown_sources.sort();
    assert_eq!(shown_sources, sources);
    assert!(
        sources.contains(&"gas_turbine") && sources.contains(&"solar"),
        "{sources:?}"
    );
    assert!(dom.contains("Hourly carbon-free score"), "the KPIs are in the page");
    let shot = target_dir().join("dashboard-tenant.png");
    chromium(
        &work.join("profile-tenant-shot"),
        &url,
        &format!("--screenshot={}", shot.display()),
        &work.join("shot-tenant.txt"),
    )
    .await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
}
