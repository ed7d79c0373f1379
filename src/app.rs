//! What the command line does, as library functions (so tests drive them too).

use crate::audit::AuditReport;
use crate::domain::postings::parse_account;
use crate::domain::time::Period;
use crate::domain::{Command, Rejection};
use crate::ledger::{CommandError, Ledger, Pending, SystemClock};
use crate::projections::engine::{Projections, snapshot_path_for};
use crate::projections::render::{statement_csv, statement_html};
use crate::store::{self, Access, EventStore, READ_PAGE_EVENTS_MAX, StoreError};
use serde_json::Value;
use std::io::Write;
use std::sync::Arc;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// The store URL used when none is given.
pub const DEFAULT_STORE: &str = "sqlite://data/wattledger.db";
/// Most commands `apply` has decided but not yet answered (bounds memory, keeps order).
pub const APPLY_IN_FLIGHT_MAX: usize = 4_096;
/// Longest command line `apply` reads, in bytes.
pub const COMMAND_LINE_BYTES_MAX: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Counts of what `apply` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplySummary {
    pub accepted: u64,
    pub duplicates: u64,
    pub refused: u64,
}

fn refused_line(r: Rejection) -> Value {
    CommandError::Rejected(r).to_json()
}

/// Reads NDJSON commands and writes one JSON result per line, in order. Commands are
/// decided one after another but their appends overlap, so many share one commit.
pub async fn apply(
    ledger: Arc<Ledger>,
    input: impl AsyncBufRead + Unpin,
    mut out: impl Write + Send + 'static,
) -> Result<ApplySummary, AppError> {
    enum Item {
        Done(Value),
        Pending(Pending),
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Item>(APPLY_IN_FLIGHT_MAX);
    let printer = tokio::spawn(async move {
        let mut summary = ApplySummary::default();
        while let Some(item) = rx.recv().await {
            let v = match item {
                Item::Done(v) => v,
                Item::Pending(p) => match p.wait().await {
                    Ok(a) => a.to_json(),
                    Err(e) => e.to_json(),
                },
            };
            match (v["ok"].as_bool(), v["duplicate"].as_bool()) {
                (Some(true), Some(true)) => summary.duplicates += 1,
                (Some(true), _) => summary.accepted += 1,
                _ => summary.refused += 1,
            }
            writeln!(out, "{v}")?;
            if rx.is_empty() {
                out.flush()?;
            }
        }
        out.flush()?;
        Ok::<_, std::io::Error>(summary)
    });
    // Reading and parsing a line needs no state: it happens here, while a task of its own
    // decides the parsed commands in order, so that the decider only decides.
    enum Parsed {
        Refused(Value),
        Command(Command),
    }
    let (ctx, mut crx) = tokio::sync::mpsc::channel::<Parsed>(APPLY_IN_FLIGHT_MAX);
    // The decider takes what is parsed already (up to a chunk) and decides it under one
    // acquisition of the ledger's lock, as a bulk request does.
    let decider = tokio::spawn(async move {
        let mut chunk = Vec::new();
        while let Some(first) = crx.recv().await {
            chunk.push(first);
            while chunk.len() < crate::ledger::SUBMIT_CHUNK_COMMANDS {
                match crx.try_recv() {
                    Ok(p) => chunk.push(p),
                    Err(_) => break,
                }
            }
            let items = chunk.drain(..).map(|p| match p {
                Parsed::Refused(v) => Err(v),
                Parsed::Command(cmd) => Ok(cmd),
            });
            for item in ledger.submit_each(items.collect()).await {
                let item = match item {
                    Err(v) => Item::Done(v),
                    Ok(p) => Item::Pending(p),
                };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut lines = input.lines();
    let mut line_no = 0u64;
    while let Some(line) = lines.next_line().await? {
        line_no += 1;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = if line.len() > COMMAND_LINE_BYTES_MAX {
            Parsed::Refused(refused_line(Rejection::validation(
                "command",
                format!("line {line_no} is longer than {COMMAND_LINE_BYTES_MAX} bytes"),
            )))
        } else if let Some(cmd) = Command::reading_from_text(&line) {
            Parsed::Command(cmd)
        } else {
            match serde_json::from_str::<Value>(&line) {
                Err(e) => Parsed::Refused(refused_line(Rejection::validation(
                    "command",
                    format!("line {line_no} is not valid JSON: {e}"),
                ))),
                Ok(v) => match Command::from_json(&v) {
                    Err(r) => Parsed::Refused(refused_line(r)),
                    Ok(cmd) => Parsed::Command(cmd),
                },
            }
        };
        if ctx.send(parsed).await.is_err() {
            break;
        }
    }
    drop(ctx);
    decider.await.map_err(|e| AppError::Usage(e.to_string()))?;
    Ok(printer.await.map_err(|e| AppError::Usage(e.to_string()))??)
}

/// Opens the ledger over a store for writing, from its write-state snapshot and the log's
/// tail when it has one (`Ledger::close` saves it again).
pub async fn open_ledger(url: &str) -> Result<Arc<Ledger>, AppError> {
    let t = std::time::Instant::now();
    // The snapshot is read on one core while the store opens (reads its index) on the other.
    let path = crate::ledger::snapshot::path_for(url);
    let read = tokio::spawn(crate::ledger::snapshot::read_in_background(path.clone()));
    let store = store::open(url, Access::Write).await?;
    let opened = t.elapsed();
    let read = read.await.map_err(|e| AppError::Usage(e.to_string()))?;
    let read_at = t.elapsed();
    let ledger = Ledger::open_preread(store, Arc::new(SystemClock), Some((path, read))).await?;
    tracing::info!(
        "store opened in {:.2} s; write-state snapshot read by {:.2} s; write state built by {:.2} s from {}",
        opened.as_secs_f64(),
        read_at.as_secs_f64(),
        t.elapsed().as_secs_f64(),
        ledger.opened_from
    );
    Ok(ledger)
}

/// Opens the projections over a store for reading, caught up, with the snapshot refreshed.
pub async fn open_projections(url: &str) -> Result<Arc<Projections>, AppError> {
    let store = store::open(url, Access::Read).await?;
    let p = Projections::open(store, Some(snapshot_path_for(url))).await?;
    if let Some(note) = &p.snapshot_note {
        eprintln!("note: {note}");
    }
    if let Err(e) = p.save() {
        eprintln!("note: could not refresh the projection snapshot: {e}");
    }
    Ok(p)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatementFormat {
    Json,
    Csv,
    Html,
}

pub async fn statement(url: &str, tenant: &str, period: &str, format: StatementFormat) -> Result<String, AppError> {
    let period = Period::parse(period).map_err(|m| AppError::Usage(format!("--period {m}")))?;
    let p = open_projections(url).await?;
    let s = p
        .statement(tenant, period)
        .ok_or_else(|| AppError::Usage(format!("no tenant {tenant:?} is registered")))?;
    Ok(match format {
        StatementFormat::Json => serde_json::to_string_pretty(&s.to_json()).expect("json"),
        StatementFormat::Csv => statement_csv(&s),
        StatementFormat::Html => statement_html(&s),
    })
}

pub async fn balance(url: &str, account: &str) -> Result<String, AppError> {
    parse_account(account).map_err(|m| AppError::Usage(format!("--account {m}")))?;
    let p = open_projections(url).await?;
    let b = p
        .read(|b| b.balance(account))
        .ok_or_else(|| AppError::Usage(format!("nothing has been posted to account {account:?}")))?;
    Ok(serde_json::to_string_pretty(&b).expect("json"))
}

/// Every account's net for a period (debit-positive; the nets sum to zero).
pub async fn settlement(url: &str, period: &str) -> Result<String, AppError> {
    let period = Period::parse(period).map_err(|m| AppError::Usage(format!("--period {m}")))?;
    let p = open_projections(url).await?;
    Ok(serde_json::to_string_pretty(&p.read(|b| b.settlement(period))).expect("json"))
}

/// A site's energy balance per 15-minute interval over `[from, to)`.
pub async fn energy_balance(url: &str, site: &str, from: &str, to: &str) -> Result<String, AppError> {
    let from = crate::domain::time::parse_time(from).map_err(|m| AppError::Usage(format!("--from {m}")))?;
    let to = crate::domain::time::parse_time(to).map_err(|m| AppError::Usage(format!("--to {m}")))?;
    if from >= to {
        return Err(AppError::Usage("--to must be after --from".into()));
    }
    let p = open_projections(url).await?;
    let v = p
        .read(|b| b.energy_balance(site, from, to))
        .ok_or_else(|| AppError::Usage(format!("no site {site:?} is registered")))?;
    Ok(serde_json::to_string_pretty(&v).expect("json"))
}

/// Runs the audit; shows a progress bar when `progress` (stderr is a terminal).
pub async fn audit(url: &str, progress: bool) -> Result<AuditReport, AppError> {
    let store = store::open(url, Access::Read).await?;
    let bar = progress.then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("auditing {bar:40} {pos}/{len} events ({per_sec}, {eta})")
                .expect("template"),
        );
        b
    });
    let snapshot = snapshot_path_for(url);
    let mut report = crate::audit::audit(store.as_ref(), crate::audit::Live::from_file(&snapshot), |pos, head| {
        if let Some(b) = &bar {
            b.set_length(head);
            b.set_position(pos);
        }
    })
    .await?;
    let kept = crate::projections::engine::quarantine_path(&snapshot);
    crate::audit::check_quarantined(store.as_ref(), &kept, &mut report).await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(report)
}

/// Writes every recorded event as one JSON line, in log order, a page at a time.
pub async fn export_ndjson(store: &dyn EventStore, out: &mut impl Write) -> Result<u64, AppError> {
    let mut after = 0;
    let mut n = 0;
    loop {
        let page = store.read_all(after, READ_PAGE_EVENTS_MAX).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for r in &page {
            writeln!(out, "{}", r.to_json())?;
            n += 1;
        }
    }
    out.flush()?;
    Ok(n)
}

pub async fn export(url: &str, format: &str, out: &mut impl Write) -> Result<u64, AppError> {
    match format {
        "ndjson" => {
            let store = store::open(url, Access::Read).await?;
            export_ndjson(store.as_ref(), out).await
        }
        "hledger" => {
            let store = store::open(url, Access::Read).await?;
            crate::export::hledger_journal(store.as_ref(), out)
                .await
                .map_err(|e| match e {
                    crate::export::ExportError::Store(s) => AppError::Store(s),
                    crate::export::ExportError::Io(e) => AppError::Io(e),
                    crate::export::ExportError::Corrupt(m) => AppError::Usage(m),
                })
        }
        other => Err(AppError::Usage(format!(
            "--format {other:?} is not supported; use ndjson or hledger"
        ))),
    }
}

/// What `wattledger simulate` is asked for.
#[derive(Clone, Debug)]
pub struct SimulateArgs {
    pub days: u32,
    pub tenants: u32,
    pub seed: u64,
    /// A date (`2026-11-01`) or RFC 3339 time; by default `days` days before today, 00:00 UTC.
    pub start: Option<String>,
    pub site: String,
    pub keep_periods_open: bool,
    /// Send the commands to this server instead of writing them.
    pub post_to: Option<String>,
    pub token: Option<String>,
}

fn sim_config(args: &SimulateArgs) -> Result<crate::sim::SimConfig, AppError> {
    let start = match &args.start {
        Some(s) => crate::sim::parse_start(s).map_err(AppError::Usage)?,
        None => crate::sim::default_start(args.days, chrono::Utc::now()),
    };
    let mut cfg = crate::sim::SimConfig::new(args.days, args.tenants, args.seed, start);
    cfg.site_id = args.site.clone();
    cfg.close_periods = !args.keep_periods_open;
    cfg.check().map_err(AppError::Usage)?;
    Ok(cfg)
}

/// Writes a simulated campus as NDJSON commands to `out`, or posts them to a server
/// (`--post-to`); returns a one-line summary.
pub async fn simulate(args: &SimulateArgs, out: &mut impl Write, progress: bool) -> Result<String, AppError> {
    let cfg = sim_config(args)?;
    let what = |s: &crate::sim::SimSummary| {
        format!(
            "{} days from {}, {} tenants, {} meters ({} batteries): {} commands, {} readings, {} credit allocations, {} transfers, {} periods closed",
            cfg.days,
            crate::domain::time::fmt_time(&cfg.start),
            cfg.tenants,
            s.meters,
            s.batteries,
            s.commands,
            s.readings,
            s.credits,
            s.transfers,
            s.periods_closed
        )
    };
    let Some(url) = &args.post_to else {
        let mut failed: Option<std::io::Error> = None;
        let summary = crate::sim::simulate(&cfg, &mut |v| {
            if failed.is_none()
                && let Err(e) = writeln!(out, "{v}")
            {
                failed = Some(e);
            }
        })
        .map_err(AppError::Usage)?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        out.flush()?;
        return Ok(format!("simulated {}", what(&summary)));
    };
    let token = args.token.as_deref().ok_or_else(|| {
        AppError::Usage("--post-to needs --token (an operator's: wattledger token --role operator)".into())
    })?;
    // The simulation runs on a blocking thread and streams its commands to the poster, so a
    // long run never sits in memory whole.
    let (tx, rx) = tokio::sync::mpsc::channel(crate::sim::POST_CHUNK_LINES_MAX);
    let sim_cfg = cfg.clone();
    let simulation = tokio::task::spawn_blocking(move || {
        crate::sim::simulate(&sim_cfg, &mut |v| {
            // A closed channel means the poster stopped on an error, which it reports.
            let _ = tx.blocking_send(v);
        })
    });
    let bar = indicatif::ProgressBar::new(crate::sim::estimated_commands(&cfg));
    if !progress {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("posting {bar:40} {pos}/{len} commands ({per_sec}, {eta})")
            .expect("template"),
    );
    let mut refusals = 0usize;
    let posted = crate::sim::post_commands(
        url,
        token,
        rx,
        &|n| {
            if n > bar.length().unwrap_or(0) {
                bar.set_length(n);
            }
            bar.set_position(n)
        },
        &mut |line| {
            refusals += 1;
            if refusals <= 10 {
                bar.suspend(|| eprintln!("{line}"));
            }
        },
    )
    .await
    .map_err(AppError::Usage)?;
    bar.finish_and_clear();
    let summary = simulation
        .await
        .map_err(|e| AppError::Usage(e.to_string()))?
        .map_err(AppError::Usage)?;
    let line = format!(
        "posted {} to {url} in {} requests: {} accepted, {} duplicates, {} refused",
        what(&summary),
        posted.requests,
        posted.accepted,
        posted.duplicates,
        posted.refused
    );
    if posted.refused > 0 {
        return Err(AppError::Usage(line));
    }
    Ok(line)
}

/// How `serve --demo` fills a fresh store: a simulated week of three tenants.
pub const DEMO_DAYS: u32 = 7;
pub const DEMO_TENANTS: u32 = 3;
pub const DEMO_SEED: u64 = 2026;

/// Applies a simulated week into a fresh store; refuses a store that already has events.
pub async fn load_demo(ledger: &Arc<Ledger>, url: &str) -> Result<ApplySummary, AppError> {
    let head = ledger.store().head().await?;
    if head.position > 0 {
        return Err(AppError::Usage(format!(
            "--demo loads a simulated week into a fresh store, but {} already holds {} events; give another --store (such as sqlite://data/demo.db)",
            store::redact_url(url),
            head.position
        )));
    }
    let cfg = crate::sim::SimConfig::new(
        DEMO_DAYS,
        DEMO_TENANTS,
        DEMO_SEED,
        crate::sim::default_start(DEMO_DAYS, chrono::Utc::now()),
    );
    let mut text = String::new();
    crate::sim::simulate(&cfg, &mut |v| {
        text.push_str(&v.to_string());
        text.push('\n');
    })
    .map_err(AppError::Usage)?;
    let summary = apply(ledger.clone(), std::io::Cursor::new(text.into_bytes()), std::io::sink()).await?;
    if summary.refused > 0 {
        return Err(AppError::Usage(format!(
            "the demo week was not accepted whole: {} commands refused",
            summary.refused
        )));
    }
    Ok(summary)
}

/// What `wattledger import` is asked for.
#[derive(Clone, Debug)]
pub struct ImportArgs {
    /// `csv` or `greenbutton`.
    pub format: String,
    pub meter: String,
    /// The reading length of a `start,wh` CSV file (`15m`).
    pub interval: Option<String>,
    /// For a storage meter: `stored` or `dispatched`.
    pub flow: Option<String>,
    pub file: String,
}

/// Imports a meter's readings from a file through the ledger, like `apply`: one JSON result
/// per reading on `out`, in time order.
pub async fn import(url: &str, args: &ImportArgs, out: impl Write + Send + 'static) -> Result<ApplySummary, AppError> {
    let meta = std::fs::metadata(&args.file).map_err(|e| AppError::Usage(format!("cannot open {}: {e}", args.file)))?;
    if meta.len() > crate::import::IMPORT_FILE_BYTES_MAX {
        return Err(AppError::Usage(format!(
            "{} is larger than {} bytes; split it",
            args.file,
            crate::import::IMPORT_FILE_BYTES_MAX
        )));
    }
    let text =
        std::fs::read_to_string(&args.file).map_err(|e| AppError::Usage(format!("cannot read {}: {e}", args.file)))?;
    let readings = crate::import::parse_file(&args.format, &text, args.interval.as_deref())
        .map_err(|m| AppError::Usage(format!("{}: {m}", args.file)))?;
    let ledger = open_ledger(url).await?;
    let meter = crate::domain::ids::MeterId::parse(&args.meter).map_err(|m| AppError::Usage(format!("--meter {m}")))?;
    let kind = ledger
        .with_state(|st| st.meters.get(&meter).map(|m| m.reg.kind))
        .await
        .ok_or_else(|| AppError::Usage(format!("no meter {:?} is registered", args.meter)))?;
    let flow = crate::import::flow_for(&args.meter, kind, args.flow.as_deref()).map_err(AppError::Usage)?;
    let mut text = String::new();
    for r in &readings {
        text.push_str(&r.command(meter.as_str(), flow).to_string());
        text.push('\n');
    }
    let summary = apply(ledger.clone(), std::io::Cursor::new(text.into_bytes()), out).await;
    ledger.close().await;
    summary
}

/// The folder that holds a store's companions (the JWT secret, snapshots): the SQLite
/// file's folder, else `./data`.
pub fn data_dir(url: &str) -> std::path::PathBuf {
    let path = url.strip_prefix("sqlite://").unwrap_or(url);
    if url.starts_with("sqlite://") || !url.contains("://") {
        match std::path::Path::new(path).parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        }
    } else {
        std::path::PathBuf::from("data")
    }
}

/// Seconds between `serve`'s checkpoints by default.
pub const CHECKPOINT_S_DEFAULT: u64 = 300;

/// Every `every` seconds, if the log moved since the last one, a checkpoint
/// ([`Ledger::checkpoint`]); a failure is logged and tried again at the next tick.
fn checkpointer(ledger: Arc<Ledger>, every: u64) -> Option<tokio::task::JoinHandle<()>> {
    if every == 0 {
        return None;
    }
    Some(tokio::spawn(async move {
        let period = std::time::Duration::from_secs(every);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = ledger.store().watch_head().borrow().to_owned();
        loop {
            tick.tick().await;
            let head = *ledger.store().watch_head().borrow();
            if head == last {
                continue;
            }
            let t = std::time::Instant::now();
            match ledger.checkpoint().await {
                Ok(saved) => {
                    last = saved.map_or(head, |h| h.position);
                    tracing::info!(
                        position = last,
                        "checkpoint saved in {:.2} s",
                        t.elapsed().as_secs_f64()
                    );
                }
                Err(e) => tracing::warn!("checkpoint not saved: {e}"),
            }
        }
    }))
}

/// Runs the HTTP API until SIGTERM or SIGINT, then shuts down gracefully.
/// With `demo`, a fresh store is first loaded with a simulated week (`load_demo`).
/// Every `checkpoint_every` seconds (0: never) the write state and the store's index are
/// saved while serving.
pub async fn serve(url: &str, listen: &str, demo: bool, checkpoint_every: u64) -> Result<(), AppError> {
    let auth = crate::api::auth::AuthConfig::from_env(&data_dir(url), true).map_err(AppError::Usage)?;
    let ledger = open_ledger(url).await?;
    if demo {
        let started = std::time::Instant::now();
        let loaded = load_demo(&ledger, url).await?;
        tracing::info!(
            "demo: loaded a simulated week ({DEMO_TENANTS} tenants, {} events) in {:.1} s",
            loaded.accepted,
            started.elapsed().as_secs_f64()
        );
    }
    let projections = Projections::open(ledger.store().clone(), Some(snapshot_path_for(url))).await?;
    if let Some(note) = &projections.snapshot_note {
        tracing::warn!("{note}");
    }
    let source = auth.source.clone();
    let server = crate::api::start(listen, ledger, projections, auth).await?;
    tracing::info!(
        "wattledger listening on http://{} (store {}); tokens are verified with the {}; mint one with: wattledger token --role operator --store {}",
        server.addr,
        store::redact_url(url),
        source,
        store::redact_url(url)
    );
    let checkpoints = checkpointer(server.state.ledger.clone(), checkpoint_every);
    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight requests");
    if let Some(c) = checkpoints {
        c.abort();
        let _ = c.await;
    }
    server.stop().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Mints a token signed with the key the server uses.
pub fn token(
    url: &str,
    role: &str,
    tenant: Option<String>,
    sites: Option<String>,
    meters: Option<String>,
    ttl: &str,
    sub: Option<String>,
) -> Result<String, AppError> {
    use crate::api::auth::{AuthConfig, Claims, Role, parse_ttl};
    let role = Role::parse(role).map_err(AppError::Usage)?;
    if role == Role::Tenant && tenant.is_none() {
        return Err(AppError::Usage("a tenant token needs --tenant".into()));
    }
    if role == Role::Meter && sites.is_none() && meters.is_none() {
        return Err(AppError::Usage("a meter token needs --sites or --meters".into()));
    }
    let list = |s: Option<String>| {
        s.map(|s| {
            s.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect()
        })
    };
    let ttl = parse_ttl(ttl).map_err(AppError::Usage)?;
    let auth = AuthConfig::from_env(&data_dir(url), false).map_err(AppError::Usage)?;
    let now = chrono::Utc::now().timestamp() as u64;
    let claims = Claims {
        tenant_id: tenant,
        sites: list(sites),
        meters: list(meters),
        ..Claims::unscoped(
            sub.unwrap_or_else(|| format!("{role:?}").to_lowercase()),
            role,
            now,
            ttl,
        )
    };
    auth.mint(claims).map_err(AppError::Usage)
}

/// Applies the store's migrations (opening a store migrates it) and says where it stands.
pub async fn migrate(url: &str) -> Result<String, AppError> {
    let store = store::open(url, Access::Write).await?;
    let head = store.head().await?;
    store.shutdown().await;
    Ok(format!(
        "{} is migrated; its log holds {} events",
        store::redact_url(url),
        head.position
    ))
}
