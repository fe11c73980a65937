//! `spatiallock-coordinator`: the coordinator alone, without libtorch (about a tenth of the
//! memory of the `spatiallock` binary, which links it). Same flags as `spatiallock coordinator`.

use anyhow::Context;
use clap::Parser;
use spatiallock_coordinator::cli::{init_logs, serve_until_signal, CoordinatorArgs};

/// The SpatialLock coordinator: REST API over PostgreSQL or SQLite, Redis dispatch.
#[derive(Parser)]
#[command(name = "spatiallock-coordinator", version)]
struct Cli {
    #[command(flatten)]
    args: CoordinatorArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(&cli.args.log_format, "info");
    let config = cli.args.config().map_err(anyhow::Error::msg)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve_until_signal(config))?;
    Ok(())
}
