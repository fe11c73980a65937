//! One module per subcommand.

pub mod doctor;
pub mod model;
pub mod plan;
