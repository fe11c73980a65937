//! Types shared by every SpatialLock component: the experiment-grid spec, the trial
//! configuration, the model architecture description, and the job DAG a grid expands into.
//!
//! Nothing here touches tensors, the network or a database, so the coordinator, the worker
//! and the CLI can all depend on it cheaply.

pub mod api;
pub mod canonical;
pub mod cost;
pub mod dotted;
pub mod error;
pub mod expand;
pub mod model_config;
pub mod schema;
pub mod spec;
pub mod storable;
pub mod trial;
pub mod validate;

pub use error::{SpecError, SpecErrors};
pub use expand::{expand, Job, JobKind, JobPayload, NoopSpec, Plan, Trial};
pub use model_config::ModelConfig;
pub use spec::{ExperimentSpec, SpecFormat};
pub use trial::TrialConfig;
