//! Diffusion maths: the noise schedule (and, later, the ε-prediction loss and DDIM sampling).

pub mod ddim;
pub mod sampler;
pub mod schedule;
