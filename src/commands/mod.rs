//! One module per subcommand.

pub mod bench;
pub mod doctor;
pub mod eval;
pub mod evaluate;
pub mod fid;
pub mod model;
pub mod plan;
pub mod progress;
pub mod sample;
pub mod train;
