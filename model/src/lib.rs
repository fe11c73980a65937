//! Everything in SpatialLock that touches tensors: networks, diffusion, training, data,
//! evaluation and collectives, on libtorch through `tch`.

pub mod assets;
pub mod autocast;
pub mod bench;
pub mod data;
pub mod diffusion;
pub mod dist;
pub mod error;
pub mod eval;
pub mod executor;
pub mod generate;
pub mod hooks;
pub mod image_io;
pub mod layout;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod persist;
pub mod pipeline;
pub mod runtime;
pub mod train;

pub use error::ModelError;
