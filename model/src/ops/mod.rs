//! Tensor operations shared by the perception head, the evaluation detector and the metrics.

pub mod boxes;
pub mod losses;
