//! Request bodies: content type checked, size bounded before anything is read whole, JSON
//! parsed with the line and column of a mistake.

use super::error::ApiError;
use axum::body::Body;
use axum::http::{HeaderMap, header};
use futures_util::StreamExt;
use serde_json::{Map, Value};

/// Largest JSON body, in bytes.
pub const JSON_BODY_BYTES_MAX: usize = 64 * 1024;
/// Largest NDJSON (bulk) body, in bytes.
pub const NDJSON_BODY_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Most lines in one bulk request.
pub const NDJSON_LINES_MAX: usize = 100_000;
/// Longest a client may take to send a body, in seconds; then 408 and the connection is freed.
pub const BODY_READ_TIMEOUT_S: u64 = 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Json,
    Ndjson,
}

/// The media type of a request, without parameters.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

/// Which of the accepted kinds the request's content type names; 415 otherwise.
pub fn kind(headers: &HeaderMap, allow_ndjson: bool) -> Result<Kind, ApiError> {
    match media_type(headers).as_deref() {
        Some("application/json") => Ok(Kind::Json),
        Some("application/x-ndjson") if allow_ndjson => Ok(Kind::Ndjson),
        other => Err(ApiError::unsupported_media(format!(
            "content type {} is not accepted here; send application/json{}",
            other.map_or("(none)".to_string(), |o| format!("{o:?}")),
            if allow_ndjson { " or application/x-ndjson" } else { "" }
        ))),
    }
}

/// Reads a body of at most `limit` bytes: refused (413) on its declared length before any
/// of it is read, or as soon as more than `limit` bytes arrive.
pub async fn read_limited(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || ApiError::too_large(format!("the body exceeds {limit} bytes"));
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large());
    }
    let read = async {
        let mut out = Vec::new();
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::bad_request(format!("could not read the body: {e}")))?;
            if out.len() + chunk.len() > limit {
                return Err(too_large());
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    };
    tokio::time::timeout(std::time::Duration::from_secs(BODY_READ_TIMEOUT_S), read)
        .await
        .map_err(|_| {
            ApiError::new(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!("the body did not arrive within {BODY_READ_TIMEOUT_S} s"),
            )
        })?
}

/// Parses a JSON object, naming the line and column of a syntax error.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        // serde_json's message ends with the line and column of the mistake.
        ApiError::bad_request(format!("malformed JSON: {e}"))
    })?;
    match v {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::bad_request(format!(
            "the body must be a JSON object, got {}",
            crate::domain::quantity::json_kind(&other)
        ))),
    }
}

/// Reads and parses a JSON object body (content type, size and syntax checked).
pub async fn json_object(headers: &HeaderMap, body: Body) -> Result<Map<String, Value>, ApiError> {
    kind(headers, false)?;
    parse_object(&read_limited(headers, body, JSON_BODY_BYTES_MAX).await?)
}

/// Query parameters, parsed with problem+json on failure (axum's own rejection is plain text).
pub struct Query<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(t)) => Ok(Query(t)),
            Err(e) => Err(ApiError::bad_request(format!(
                "invalid query string: {}",
                e.body_text()
            ))),
        }
    }
}

/// Path parameters, parsed with problem+json on failure (axum's own rejection is plain text,
/// for instance for a parameter that is not UTF-8).
pub struct Path<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(t)) => Ok(Path(t)),
            Err(e) => Err(ApiError::bad_request(format!("invalid path: {}", e.body_text()))),
        }
    }
}
