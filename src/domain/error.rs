//! Refusals: every refused command carries a typed code, a message that names the field and
//! the rule, and changes nothing.

use serde::Serialize;
use std::fmt;
use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    Validation,
    NotFound,
    Conflict,
    InsufficientCredits,
    StorageUnderflow,
    StorageOverflow,
    /// A hold cannot cover the capture asked of it.
    InsufficientHold,
    /// The hold was already released or has expired.
    HoldClosed,
    /// The tenant's spending limit for the period would be exceeded.
    SpendingLimit,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Validation => "validation",
            Code::NotFound => "not_found",
            Code::Conflict => "conflict",
            Code::InsufficientCredits => "insufficient_credits",
            Code::StorageUnderflow => "storage_underflow",
            Code::StorageOverflow => "storage_overflow",
            Code::InsufficientHold => "insufficient_hold",
            Code::HoldClosed => "hold_closed",
            Code::SpendingLimit => "spending_limit",
        }
    }
}

/// One field's problem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Why a command was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub code: Code,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every field's problem, when the input had several.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// For a conflict: the event already recorded that this command contradicts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub existing_event_id: Option<Uuid>,
}

impl Rejection {
    pub fn new(code: Code, field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = message.into();
        Self {
            code,
            message: format!("{field}: {message}"),
            field: Some(field.clone()),
            errors: vec![FieldError { field, message }],
            existing_event_id: None,
        }
    }

    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Code::Validation, field, message)
    }

    pub fn not_found(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, field, message)
    }

    pub fn conflict(field: impl Into<String>, message: impl Into<String>, existing: Option<Uuid>) -> Self {
        let mut r = Self::new(Code::Conflict, field, message);
        r.existing_event_id = existing;
        r
    }

    /// Names the recorded event a refusal is about.
    pub fn with_existing(mut self, existing: Option<Uuid>) -> Self {
        self.existing_event_id = existing;
        self
    }

    /// Several field problems at once (the first names the rejection).
    pub fn fields(errors: Vec<FieldError>) -> Self {
        let first = errors.first().cloned().unwrap_or(FieldError {
            field: String::new(),
            message: "invalid command".into(),
        });
        let message = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            code: Code::Validation,
            message,
            field: Some(first.field),
            errors,
            existing_event_id: None,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for Rejection {}
