//! Training: loss weighting, the optimiser, the training step, caches of the frozen encoders' outputs, checkpoints.

pub mod adamw;
pub mod checkpoint;
pub mod encoder_cache;
pub mod loss_weights;
pub mod record_store;
pub mod run;
pub mod trainer;
