//! The SpatialLock coordinator: an HTTP API (axum) over a database that holds the truth
//! (PostgreSQL shared by replicas, or SQLite embedded) and a dispatch layer (Redis, or
//! in-process) that makes leasing fast. Leases are renewed by heartbeats, every worker write
//! is fenced by its attempt number, and a reaper requeues attempts whose lease expired.
//!
//! This crate never depends on tch: it schedules work, it does not run it.

pub mod api;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod server;
pub mod store;
pub mod telemetry;

pub use config::{check_exposure, parse_tokens, parse_tokens_file, Config, Role, Token};
pub use server::{start, Running, StartError};
