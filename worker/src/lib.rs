//! The SpatialLock worker: pulls jobs from the coordinator, runs them on its devices with the
//! model crate, heartbeats leases, and reports metrics and checkpoints.
//!
//! The job loop arrives with the worker issue; this crate fixes the dependency shape now
//! (protocol + model, never the coordinator).

pub use spatiallock_model as model;
pub use spatiallock_protocol as protocol;
