//! One error type for the HTTP edge, rendered as `application/problem+json` (RFC 9457).

use crate::domain::{Code, FieldError, Rejection};
use crate::ledger::CommandError;
use crate::store::StoreError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Seconds a client should wait before retrying a 503.
pub const RETRY_AFTER_S: u64 = 1;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub errors: Vec<FieldError>,
    pub existing_event_id: Option<uuid::Uuid>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            errors: Vec::new(),
            existing_event_id: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed", detail)
    }
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }
    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", detail)
    }
    pub fn unsupported_media(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", detail)
    }
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Rejection::validation(field, message).into()
    }

    /// The problem object, also used as one line's answer in a bulk response.
    pub fn body(&self) -> serde_json::Value {
        let mut v = json!({
            "type": format!("https://wattledger.dev/problems/{}", self.code.replace('_', "-")),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        });
        let m = v.as_object_mut().expect("object");
        if !self.errors.is_empty() {
            m.insert("errors".into(), serde_json::to_value(&self.errors).expect("errors"));
        }
        if let Some(id) = self.existing_event_id {
            m.insert("existing_event_id".into(), json!(id));
        }
        v
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        let status = match r.code {
            Code::Validation
            | Code::InsufficientCredits
            | Code::StorageUnderflow
            | Code::StorageOverflow
            | Code::InsufficientHold
            | Code::SpendingLimit => StatusCode::UNPROCESSABLE_ENTITY,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::Conflict | Code::HoldClosed => StatusCode::CONFLICT,
        };
        Self {
            status,
            code: r.code.as_str(),
            detail: r.message,
            errors: r.errors,
            existing_event_id: r.existing_event_id,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::VersionConflict { .. } | StoreError::DuplicateEventId(_) => {
                Self::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            StoreError::Busy(_) => Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string()),
            // Never show a database's own message to clients: it is logged instead.
            other => {
                tracing::error!(error = %other, "store error");
                Self::unavailable("the store is unavailable; retry shortly")
            }
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Rejected(r) => r.into(),
            CommandError::Store(s) => s.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, axum::Json(self.body())).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}
