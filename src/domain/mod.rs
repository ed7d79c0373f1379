//! The domain: pure types and rules. It never touches the store, the API or the clock.

pub mod commands;
pub mod error;
pub mod events;
pub mod ids;
pub mod jsontext;
pub mod postings;
pub mod quantity;
pub mod readings;
pub mod state;
pub mod tariff;
pub mod time;

pub use commands::Command;
pub use error::{Code, FieldError, Rejection};
pub use events::Event;
pub use state::{DecideContext, Decision, LedgerState, NewEvent};
