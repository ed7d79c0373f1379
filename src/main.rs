//! The command line: parse arguments, call the library, print, exit.

/// mimalloc, not glibc's malloc: with the system allocator, allocation was 38 % of the deciding
/// thread's samples, and mimalloc took `bench ingest` from 39,570–43,170 to 62,039–66,812
/// readings/s (+20 % peak RSS) on the same host (docs/PERFORMANCE.md §11.5).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::process::ExitCode;
use wattledger::app::{self, AppError, DEFAULT_STORE, StatementFormat};
use wattledger::bench;

#[derive(Parser)]
#[command(name = "wattledger", version, about = "The energy ledger of AI compute campuses")]
struct Cli {
    /// Store URL: sqlite://PATH (the embedded store).
    #[arg(long, global = true, env = "WATTLEDGER_STORE", default_value = DEFAULT_STORE)]
    store: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Csv,
    Html,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the HTTP API (and the web page) on the store.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "WATTLEDGER_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        /// Start with a simulated week of a campus (the store must be fresh).
        #[arg(long)]
        demo: bool,
        /// Seconds between checkpoints (the write-state snapshot and the store's index saved
        /// while serving, so that a start after a crash folds only what followed); 0: only at
        /// a clean stop.
        #[arg(long, env = "WATTLEDGER_CHECKPOINT_S", default_value_t = app::CHECKPOINT_S_DEFAULT)]
        checkpoint_every: u64,
    },
    /// Print a signed token (JWT) for the server's key.
    Token {
        /// operator, meter, tenant or auditor.
        #[arg(long)]
        role: String,
        /// The tenant a tenant token is scoped to.
        #[arg(long)]
        tenant: Option<String>,
        /// Sites a meter token may post for (comma-separated).
        #[arg(long)]
        sites: Option<String>,
        /// Meters a meter token may post for (comma-separated).
        #[arg(long)]
        meters: Option<String>,
        /// Lifetime: 30s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// The token's subject (who it is for).
        #[arg(long)]
        sub: Option<String>,
    },
    /// Apply NDJSON commands from FILE (or - for standard input); one JSON result per line.
    Apply { file: String },
    /// A tenant's statement for a period.
    Statement {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        period: String,
        #[arg(long, value_enum, default_value = "json")]
        format: Format,
    },
    /// The balance of an account (tenant:ID, asset:ID, storage:ID, site:ID:bus, issuance).
    Balance {
        #[arg(long)]
        account: String,
    },
    /// Every account's net for a period; the nets sum to zero.
    Settlement {
        #[arg(long)]
        period: String,
    },
    /// A site's energy balance per 15-minute interval, with conservation flags.
    EnergyBalance {
        #[arg(long)]
        site: String,
        /// Start (RFC 3339).
        #[arg(long)]
        from: String,
        /// End (RFC 3339, exclusive).
        #[arg(long)]
        to: String,
    },
    /// Create or upgrade the store's schema (PostgreSQL; the embedded store migrates itself).
    Migrate,
    /// Replay the whole log and verify it; exit 0 when clean, 1 with findings.
    Audit {
        #[arg(long)]
        json: bool,
    },
    /// Write every recorded event, in log order: NDJSON, or an hledger journal.
    Export {
        /// ndjson or hledger.
        #[arg(long, default_value = "ndjson")]
        format: String,
    },
    /// Write the NDJSON commands of a simulated campus (deterministic for a seed), or post them.
    Simulate {
        #[arg(long, default_value_t = 7)]
        days: u32,
        #[arg(long, default_value_t = 3)]
        tenants: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// First day (2026-11-01, 00:00 UTC) or RFC 3339 time; default: DAYS days before today.
        #[arg(long)]
        start: Option<String>,
        #[arg(long, default_value = "memphis-1")]
        site: String,
        /// Do not close each simulated month after its last reading.
        #[arg(long)]
        keep_periods_open: bool,
        /// Send the commands to a server (http://HOST:PORT) instead of writing them.
        #[arg(long)]
        post_to: Option<String>,
        /// An operator token for --post-to.
        #[arg(long, env = "WATTLEDGER_TOKEN")]
        token: Option<String>,
    },
    /// Import a meter's readings from a CSV or Green Button (ESPI XML) file, through the ledger.
    Import {
        /// csv or greenbutton.
        #[arg(long)]
        format: String,
        /// The registered meter the readings belong to (its kind gives the flow).
        #[arg(long)]
        meter: String,
        /// Reading length for a start,wh CSV file: 15m, 900s, 1h.
        #[arg(long)]
        interval: Option<String>,
        /// For a storage meter: stored or dispatched.
        #[arg(long)]
        flow: Option<String>,
        /// The file: CSV with a header (start,end,wh or start,wh), or Green Button XML.
        file: String,
    },
    /// Measure throughput and latency beside the raw limits of the storage (docs/PERFORMANCE.md).
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// The full write path in process, then the raw append limit of the same backend.
    Ingest(bench::IngestArgs),
    /// The audit over an existing log, then the raw read-and-parse limit.
    Replay(bench::ReplayArgs),
    /// Statement and balance reads from the projections: p50, p99, p999.
    Read(bench::ReadArgs),
    /// The HTTP API on loopback with concurrent keep-alive clients.
    Http(bench::HttpArgs),
    /// The supply-mix attribution of an existing log: CPU per simulated day.
    Attribution(bench::AttributionArgs),
    /// Opening an existing store as `serve` does, and stopping it, twice: the second open
    /// is a restart from the snapshots the first stop saved.
    Restart(bench::RestartArgs),
}

async fn run(cli: Cli) -> Result<ExitCode, AppError> {
    match cli.command {
        Cmd::Serve {
            listen,
            demo,
            checkpoint_every,
        } => {
            app::serve(&cli.store, &listen, demo, checkpoint_every).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Token {
            role,
            tenant,
            sites,
            meters,
            ttl,
            sub,
        } => {
            println!("{}", app::token(&cli.store, &role, tenant, sites, meters, &ttl, sub)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Apply { file } => {
            let ledger = app::open_ledger(&cli.store).await?;
            let out = std::io::BufWriter::new(std::io::stdout());
            let summary = if file == "-" {
                app::apply(ledger.clone(), tokio::io::BufReader::new(tokio::io::stdin()), out).await?
            } else {
                let f = tokio::fs::File::open(&file)
                    .await
                    .map_err(|e| AppError::Usage(format!("cannot open {file}: {e}")))?;
                app::apply(ledger.clone(), tokio::io::BufReader::new(f), out).await?
            };
            ledger.close().await;
            eprintln!(
                "applied: {} accepted, {} duplicates, {} refused",
                summary.accepted, summary.duplicates, summary.refused
            );
            Ok(if summary.refused == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Statement { tenant, period, format } => {
            let format = match format {
                Format::Json => StatementFormat::Json,
                Format::Csv => StatementFormat::Csv,
                Format::Html => StatementFormat::Html,
            };
            print!("{}", app::statement(&cli.store, &tenant, &period, format).await?);
            if format == StatementFormat::Json {
                println!();
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Balance { account } => {
            println!("{}", app::balance(&cli.store, &account).await?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Migrate => {
            println!("{}", app::migrate(&cli.store).await?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Settlement { period } => {
            println!("{}", app::settlement(&cli.store, &period).await?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::EnergyBalance { site, from, to } => {
            println!("{}", app::energy_balance(&cli.store, &site, &from, &to).await?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Audit { json } => {
            let report = app::audit(&cli.store, !json && std::io::stderr().is_terminal()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report).expect("json"));
            } else {
                print!("{}", report.human());
            }
            Ok(if report.clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Bench { what } => {
            let given = bench::store_given().then_some(cli.store.as_str());
            let (report, json) = match what {
                BenchCmd::Ingest(a) => (bench::ingest(given, &a).await?, a.json),
                BenchCmd::Replay(a) => (bench::replay(&cli.store, &a).await?, a.json),
                BenchCmd::Read(a) => (bench::read(&cli.store, &a).await?, a.json),
                BenchCmd::Http(a) => (bench::http(given, &a).await?, a.json),
                BenchCmd::Attribution(a) => (bench::attribution(&cli.store, &a).await?, a.json),
                BenchCmd::Restart(a) => (bench::restart(&cli.store, &a).await?, a.json),
            };
            report.print(json);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Simulate {
            days,
            tenants,
            seed,
            start,
            site,
            keep_periods_open,
            post_to,
            token,
        } => {
            let args = app::SimulateArgs {
                days,
                tenants,
                seed,
                start,
                site,
                keep_periods_open,
                post_to,
                token,
            };
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let summary = app::simulate(&args, &mut out, std::io::stderr().is_terminal()).await?;
            eprintln!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Import {
            format,
            meter,
            interval,
            flow,
            file,
        } => {
            let args = app::ImportArgs {
                format,
                meter,
                interval,
                flow,
                file,
            };
            let out = std::io::BufWriter::new(std::io::stdout());
            let summary = app::import(&cli.store, &args, out).await?;
            eprintln!(
                "imported: {} accepted, {} duplicates, {} refused",
                summary.accepted, summary.duplicates, summary.refused
            );
            Ok(if summary.refused == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Export { format } => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            app::export(&cli.store, &format, &mut out).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wattledger: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wattledger: {e}");
            ExitCode::from(2)
        }
    }
}
