//! The SpatialLock coordinator: REST API, store (Postgres or SQLite), dispatch (Redis or
//! in-process), scheduler and metrics. It never depends on tch, so it builds and deploys
//! without libtorch.
//!
//! The service arrives with the coordinator issue; this crate fixes the dependency shape now
//! (protocol only).

pub use spatiallock_protocol as protocol;
