//! Everything in SpatialLock that touches tensors: networks, diffusion, training, data,
//! evaluation and collectives, on libtorch through `tch`.

pub mod diffusion;
pub mod runtime;
