//! The HTTP API (axum): routes of CONTRACT §3, JWT roles, problem+json errors, NDJSON bulk
//! ingest, server-sent events, health, readiness and metrics.
//!
//! Every route is declared once, in [`routes!`], which builds the router and the list of
//! routes that a test holds against `api.yaml`.

pub mod auth;
pub mod body;
pub mod commands;
pub mod error;
pub mod ops;
pub mod reads;
pub mod stream;
pub mod web;

use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::projections::engine::Projections;
use auth::AuthConfig;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use error::ApiError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// How often `serve` records what the log is owed without traffic (expired holds).
pub const SWEEP_INTERVAL_MS: u64 = 1_000;

/// What every handler can reach: one `Arc`, since axum clones the state for each request
/// (for each layer and extractor that takes it), and seven reference counts cloned and
/// dropped across the two cores showed in the single-request profile.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    pub ledger: Arc<Ledger>,
    pub projections: Arc<Projections>,
    pub auth: Arc<AuthConfig>,
    pub metrics: Arc<Metrics>,
    /// Live-event subscribers admitted ([`stream::SSE_SUBSCRIBERS_MAX`] at most).
    pub sse_slots: Arc<tokio::sync::Semaphore>,
    /// Turns true when the server stops: live streams end so that shutdown can finish.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

macro_rules! routes {
    ($( $method:ident $path:literal => $handler:path ),* $(,)?) => {
        /// Every route the router serves, as `(METHOD, path)`; `api.yaml` must list the same.
        pub const ROUTES: &[(&str, &str)] = &[ $( (stringify!($method), $path) ),* ];

        fn route_table() -> Router<AppState> {
            let mut r = Router::new();
            $( r = r.route($path, axum::routing::$method($handler)); )*
            r
        }
    };
}

routes! {
    post "/v1/sites" => commands::register_site,
    post "/v1/tenants" => commands::register_tenant,
    post "/v1/meters" => commands::register_meter,
    post "/v1/sites/{site_id}/tariffs" => commands::publish_tariff,
    post "/v1/sites/{site_id}/emission-factors" => commands::publish_emission_factors,
    post "/v1/readings" => commands::post_readings,
    post "/v1/readings/{event_id}/corrections" => commands::correct_reading,
    post "/v1/meters/{meter_id}/imports" => commands::import_readings,
    post "/v1/tenants/{tenant_id}/credits" => commands::issue_credits,
    post "/v1/transfers" => commands::transfer_credits,
    post "/v1/tenants/{tenant_id}/holds" => commands::place_hold,
    get "/v1/tenants/{tenant_id}/holds" => reads::holds,
    get "/v1/tenants/{tenant_id}/holds/{hold_id}" => reads::hold,
    post "/v1/tenants/{tenant_id}/holds/{hold_id}/captures" => commands::capture_hold,
    post "/v1/tenants/{tenant_id}/holds/{hold_id}/release" => commands::release_hold,
    post "/v1/tenants/{tenant_id}/spending-limit" => commands::set_spending_limit,
    post "/v1/periods/{period}/close" => commands::close_period,
    get "/v1/accounts/{account}" => reads::account,
    get "/v1/tenants/{tenant_id}/statements/{period}" => reads::statement,
    get "/v1/sites/{site_id}/energy-balance" => reads::energy_balance,
    get "/v1/settlements/{period}" => reads::settlement,
    get "/v1/storage" => reads::storage,
    get "/v1/sites" => reads::sites,
    get "/v1/sites/{site_id}/flows" => reads::flows,
    get "/v1/sites/{site_id}/mix" => reads::mix,
    get "/v1/sites/{site_id}/mix/{hour}/readings" => reads::hour_readings,
    get "/v1/tenants/{tenant_id}/attribution/{period}" => reads::attribution,
    get "/v1/streams/{stream}" => stream::read_stream,
    get "/v1/events" => stream::read_events,
    get "/v1/events/live" => stream::live,
    get "/v1/audit" => stream::audit,
    get "/healthz" => ops::healthz,
    get "/readyz" => ops::readyz,
    get "/metrics" => ops::metrics,
    get "/openapi.yaml" => ops::openapi,
    get "/" => web::index,
    get "/assets/{file}" => web::asset,
}

/// The router with its middleware: request ids, one span per request, metrics.
pub fn router(state: AppState) -> Router {
    route_table()
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // `Router::layer` wraps every route and the fallbacks, after routing: every request
        // — unmatched ones (404, 405) too — gets a request id, a span and a count, and a
        // matched one finds its route in its extensions.
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// Longest request id echoed back; longer or odd ones are replaced.
const REQUEST_ID_CHARS_MAX: usize = 128;

async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= REQUEST_ID_CHARS_MAX && v.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_string)
        // A version-4 id from the thread's generator (seeded from the OS): `new_v4` asks the
        // OS for each id, a system call per request.
        .unwrap_or_else(|| uuid::Builder::from_random_bytes(rand::random()).into_uuid().to_string());
    let method = req.method().clone();
    let span = tracing::info_span!("request", request_id = %id, method = %method, path = %req.uri().path());
    let started = Instant::now();
    let mut res = next.run(req).instrument(span.clone()).await;
    let status = res.status().as_u16();
    let route = matched.as_ref().map_or("unmatched", |m| m.as_str());
    span.in_scope(
        || tracing::info!(status, route = %route, latency_ms = started.elapsed().as_millis() as u64, "answered"),
    );
    state.metrics.count_request(method.as_str(), route, status);
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}

/// A running server: its address, and how to stop it.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: AppState,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    stopping: tokio::sync::watch::Sender<bool>,
    join: tokio::task::JoinHandle<std::io::Result<()>>,
    follower: tokio::task::JoinHandle<()>,
    sweeper: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// Stops accepting, finishes in-flight requests, flushes the writer, saves the snapshot.
    pub async fn stop(mut self) -> std::io::Result<()> {
        self.stopping.send_replace(true);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let served = self.join.await.map_err(std::io::Error::other)?;
        self.sweeper.abort();
        let _ = self.sweeper.await;
        self.state.ledger.close().await;
        self.follower.abort();
        // Wait for it to let go of the store, so that the store can be reopened at once.
        let _ = self.follower.await;
        let _ = self.state.projections.catch_up().await;
        if let Err(e) = self.state.projections.save() {
            tracing::warn!(error = %e, "could not save the projection snapshot");
        }
        served
    }
}

/// Binds `listen` and serves the API until [`RunningServer::stop`].
pub async fn start(
    listen: &str,
    ledger: Arc<Ledger>,
    projections: Arc<Projections>,
    auth: AuthConfig,
) -> std::io::Result<RunningServer> {
    let ledger_metrics = ledger.metrics().clone();
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    let state = AppState(Arc::new(Shared {
        ledger,
        projections: projections.clone(),
        auth: Arc::new(auth),
        metrics: ledger_metrics,
        sse_slots: Arc::new(tokio::sync::Semaphore::new(stream::SSE_SUBSCRIBERS_MAX)),
        stopping: stopping_rx,
    }));
    let follower = tokio::spawn(async move {
        loop {
            if let Err(e) = projections.clone().follow().await {
                tracing::error!(error = %e, "projections stopped following the log; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    });
    // Holds expire on time even when no command arrives: a bounded sweep once a second.
    let sweep_ledger = state.ledger.clone();
    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(SWEEP_INTERVAL_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match sweep_ledger.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, "recorded expired holds"),
                Err(e) => tracing::warn!(error = %e, "the sweep for expired holds failed; retrying"),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let app = router(state.clone());
    let join = tokio::spawn(async move {
        // Streamed answers (NDJSON, SSE) must not wait on delayed ACKs.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
    });
    Ok(RunningServer {
        addr,
        state,
        shutdown: Some(tx),
        stopping: stopping_tx,
        join,
        follower,
        sweeper,
    })
}
