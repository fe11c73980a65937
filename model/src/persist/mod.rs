//! On-disk formats below both the pipeline and training: training checkpoints (trainable
//! tensors, optimiser state, step, RNG-free run state) and record stores of fixed-shape f32
//! records (the frozen encoders' cached outputs).

pub mod checkpoint;
pub mod record_store;
