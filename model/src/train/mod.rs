//! Training: loss weighting, the optimiser, the training step, checkpoints.

pub mod adamw;
pub mod loss_weights;
