//! Training: loss weighting, the optimiser, the training step, checkpoints.

pub mod adamw;
pub mod checkpoint;
pub mod loss_weights;
pub mod run;
pub mod trainer;
