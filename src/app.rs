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
    let mut lines = input.lines();
    let mut line_no = 0u64;
    while let Some(line) = lines.next_line().await? {
        line_no += 1;
        if line.trim().is_empty() {
            continue;
        }
        let item = if line.len() > COMMAND_LINE_BYTES_MAX {
            Item::Done(refused_line(Rejection::validation(
                "command",
                format!("line {line_no} is longer than {COMMAND_LINE_BYTES_MAX} bytes"),
            )))
        } else {
            match serde_json::from_str::<Value>(&line) {
                Err(e) => Item::Done(refused_line(Rejection::validation(
                    "command",
                    format!("line {line_no} is not valid JSON: {e}"),
                ))),
                Ok(v) => match Command::from_json(&v) {
                    Err(r) => Item::Done(refused_line(r)),
                    Ok(cmd) => Item::Pending(ledger.submit(&cmd).await),
                },
            }
        };
        if tx.send(item).await.is_err() {
            break;
        }
    }
    drop(tx);
    Ok(printer.await.map_err(|e| AppError::Usage(e.to_string()))??)
}

/// Opens the ledger over a store for writing.
pub async fn open_ledger(url: &str) -> Result<Arc<Ledger>, AppError> {
    let store = store::open(url, Access::Write).await?;
    Ok(Ledger::open(store, Arc::new(SystemClock)).await?)
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
        .read(|b| b.statement(tenant, period))
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
        other => Err(AppError::Usage(format!(
            "--format {other:?} is not supported; use ndjson"
        ))),
    }
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

/// Runs the HTTP API until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn serve(url: &str, listen: &str) -> Result<(), AppError> {
    let auth = crate::api::auth::AuthConfig::from_env(&data_dir(url), true).map_err(AppError::Usage)?;
    let ledger = open_ledger(url).await?;
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
    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight requests");
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
        sub: sub.unwrap_or_else(|| format!("{role:?}").to_lowercase()),
        role,
        exp: now + ttl,
        iat: Some(now),
        tenant_id: tenant,
        sites: list(sites),
        meters: list(meters),
        iss: None,
        aud: None,
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
