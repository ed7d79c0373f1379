//! wattledger: an append-only, event-sourced ledger for the energy of AI compute campuses.
//!
//! Read top-down: [`domain`] (pure types and rules), [`store`] (the event log),
//! [`ledger`] (the write path), [`projections`] (the read side), [`audit`] (replay and
//! verify), [`app`] (what the command line does).

pub mod api;
pub mod app;
pub mod audit;
pub mod bench;
pub mod digest;
pub mod domain;
pub mod export;
pub mod idmap;
pub mod import;
pub mod ledger;
pub mod metrics;
pub mod projections;
pub mod scratch;
pub mod sim;
pub mod snapfile;
pub mod store;
pub mod vecs;
