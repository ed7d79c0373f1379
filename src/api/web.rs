//! The web dashboard: one page and its assets, embedded in the binary (no CDN, no build
//! step). The page holds no data of its own: it calls the `/v1` API with the token the user
//! pastes (kept in the browser's `sessionStorage`), so every scope the API enforces holds.
//!
//! The chart library is uPlot, vendored from the npm registry into `web/vendor/` (version and
//! licence in `web/vendor/README.md`).

use super::body::Path;
use super::error::ApiError;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// The page.
pub const INDEX_HTML: &str = include_str!("../../web/index.html");

/// Every asset served under `/assets/{file}`: name, content type, bytes.
pub const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/dashboard.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/vendor/uPlot.min.css"),
    ),
    (
        "uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../../web/vendor/uPlot.LICENSE"),
    ),
];

/// The page may load only what this server serves, and connect only to it: a token kept in
/// `sessionStorage` is out of reach of any script from elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn with_headers(body: Response, content_type: &'static str) -> Response {
    let mut res = body;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    res
}

/// `GET /`: the dashboard page.
pub async fn index() -> Response {
    let mut res = with_headers(INDEX_HTML.into_response(), "text/html; charset=utf-8");
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

/// `GET /assets/{file}`: a script, a style sheet, or the chart library's licence.
pub async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let (_, ctype, bytes) = ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .ok_or_else(|| ApiError::not_found(format!("no asset {file:?}")))?;
    Ok(with_headers((*bytes).into_response(), ctype))
}
