//! Training: the training step, its run (checkpoints, resume, hooks), and the caches of the frozen encoders' outputs.

pub mod ema;
pub mod encoder_cache;
pub mod min_snr;
pub mod run;
pub mod trainer;
