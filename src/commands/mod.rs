//! One module per subcommand.

pub mod bench;
pub mod bench_api;
pub mod bench_dp;
pub mod bench_queue;
pub mod board;
pub mod client;
pub mod curves;
pub mod doctor;
pub mod eval;
pub mod evaluate;
pub mod fid;
pub mod figures;
pub mod logs;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod progress;
pub mod rank;
pub mod resume;
pub mod run;
pub mod sample;
pub mod schema;
pub mod service;
pub mod tensorboard;
pub mod train;
