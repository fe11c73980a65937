//! `spatiallock coordinator` and `spatiallock worker`: the two long-running services.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use spatiallock_worker::{run_worker, RankLaunch, Roots, WorkerConfig};

pub use spatiallock_coordinator::cli::{init_logs, shutdown_signal, CoordinatorArgs};

/// A runtime for a command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Runs the coordinator until SIGTERM or Ctrl-C.
pub fn coordinator(args: &CoordinatorArgs) -> anyhow::Result<()> {
    init_logs(&args.log_format, "info");
    let config = args.config().map_err(anyhow::Error::msg)?;
    runtime()?.block_on(spatiallock_coordinator::cli::serve_until_signal(config))?;
    Ok(())
}

/// Arguments of `worker`.
#[derive(Args)]
pub struct WorkerArgs {
    /// The coordinator's URL.
    #[arg(long, env = "SPATIALLOCK_COORDINATOR", default_value = "http://127.0.0.1:8080")]
    pub coordinator: String,
    /// A worker (or admin) token, when the coordinator has tokens.
    #[arg(long, env = "SPATIALLOCK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Devices, comma-separated: `cpu`, `cuda:0,cuda:1` or `0,1`. A training job of world size
    /// N runs as N rank processes on the first N; other jobs run on the first. `cpu` may repeat
    /// (`cpu,cpu`: two CPU ranks).
    #[arg(long, alias = "device", default_value = "cpu")]
    pub devices: String,
    /// How long a rank waits for the others at the rendezvous and in each collective before
    /// the attempt fails naming the missing rank, in seconds.
    #[arg(long, default_value_t = 300)]
    pub collective_timeout: u64,
    /// Gradient bucket size for the all-reduce, in MiB (DDP's default).
    #[arg(long, default_value_t = 25.0)]
    pub bucket_mib: f64,
    /// Host name or address the other members of a gang reach this worker at (its rank 0
    /// serves the group's rendezvous store there; default: this host's name). Gangs train jobs
    /// with more ranks than one worker has devices, across workers; they need the artifact root
    /// on a filesystem every member shares.
    #[arg(long)]
    pub gang_address: Option<String>,
    /// Run only jobs that fit this worker's devices: never join a gang.
    #[arg(long, conflicts_with = "gang_address")]
    pub no_gangs: bool,
    /// Where job outputs and checkpoints go.
    #[arg(long, env = "SPATIALLOCK_ARTIFACTS", default_value = "artifacts")]
    pub artifacts: PathBuf,
    /// A folder datasets and base weights may be read from (repeatable).
    #[arg(long = "data-root")]
    pub data_roots: Vec<PathBuf>,
    /// Intra-op threads for libtorch.
    #[arg(long, default_value_t = 1)]
    pub threads: i32,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Serve the worker's Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9101); off when unset.
    #[arg(long, env = "SPATIALLOCK_WORKER_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// HOST:PORT at which Prometheus reaches those metrics, sent to the coordinator, whose
    /// GET /v1/prometheus/targets (Prometheus HTTP service discovery) lists every live worker's
    /// (default: this host's name and the port of --metrics-listen). Port 0 stands for the port
    /// --metrics-listen bound (e.g. with --metrics-listen 127.0.0.1:0).
    #[arg(
        long,
        env = "SPATIALLOCK_WORKER_METRICS_ADDRESS",
        requires = "metrics_listen",
        value_parser = host_port
    )]
    pub metrics_address: Option<String>,
}

/// `--metrics-address`: a `HOST:PORT` (see [`spatiallock_protocol::api::check_host_port`]), or
/// `HOST:0` for the port `--metrics-listen` binds (the worker advertises that one).
fn host_port(s: &str) -> Result<String, String> {
    match s.rsplit_once(':') {
        Some((host, "0")) => spatiallock_protocol::api::check_host_port(&format!("{host}:1"))
            .map_err(|e| e.replace(&format!("`{host}:1`"), &format!("`{s}`"))),
        _ => spatiallock_protocol::api::check_host_port(s),
    }
    .map(|()| s.to_string())
}

/// The metrics address a worker advertises: `--metrics-address`, else this host's name with the
/// port of `--metrics-listen`; none without `--metrics-listen`.
fn metrics_address(args: &WorkerArgs) -> Option<String> {
    let listen = args.metrics_listen?;
    Some(
        args.metrics_address
            .clone()
            .unwrap_or_else(|| format!("{}:{}", host_name(), listen.port())),
    )
}

/// `cuda:0,1` → `cuda:0`, `cuda:1`.
fn device_list(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some(n) = part.strip_prefix("cuda:") {
            out.push(format!("cuda:{n}"));
        } else if part.chars().all(|c| c.is_ascii_digit()) {
            out.push(format!("cuda:{part}"));
        } else {
            out.push(part.to_string());
        }
    }
    out
}

/// The device of a single-device command's `--devices`, written as the worker's list (`cpu`,
/// `cuda`, `cuda:N` or `N`) but naming one device.
///
/// Errors: no device, more than one (the worker is what runs on several), or one libtorch
/// does not know.
pub fn single_device(list: &str) -> anyhow::Result<tch::Device> {
    match device_list(list).as_slice() {
        [one] => spatiallock_model::runtime::parse_device(one).map_err(|e| anyhow::anyhow!("--devices: {e}")),
        [] => anyhow::bail!("--devices: name a device (cpu, cuda or cuda:N)"),
        many => anyhow::bail!(
            "--devices: this command runs on one device, not {} ({}); `spatiallock worker --devices` \
             is what runs on several",
            many.len(),
            many.join(", ")
        ),
    }
}

/// The host name, for worker names.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "worker".into())
}

/// Runs a worker until SIGTERM or Ctrl-C (the running job checkpoints and is requeued).
pub fn worker(args: &WorkerArgs) -> anyhow::Result<()> {
    init_logs(&args.log_format, "info");
    tch::set_num_threads(args.threads.max(1));
    anyhow::ensure!(
        args.collective_timeout >= 1,
        "--collective-timeout must be at least 1 second"
    );
    anyhow::ensure!(
        args.bucket_mib.is_finite() && args.bucket_mib > 0.0,
        "--bucket-mib must be a positive number"
    );
    let launch = RankLaunch {
        timeout: Duration::from_secs(args.collective_timeout),
        bucket_mib: args.bucket_mib,
        threads: args.threads.max(1),
        ..RankLaunch::default()
    };
    let config = WorkerConfig {
        coordinator: args.coordinator.clone(),
        token: args.token.clone().filter(|t| !t.is_empty()),
        name: format!("{}-{}", host_name(), std::process::id()),
        devices: device_list(&args.devices),
        launch,
        gang_address: if args.no_gangs {
            None
        } else {
            Some(args.gang_address.clone().unwrap_or_else(host_name))
        },
        roots: Roots {
            artifacts: args.artifacts.clone(),
            data: args.data_roots.clone(),
        },
        lease_wait: Duration::from_secs(20),
        max_attempts: None,
        metrics_listen: args.metrics_listen,
        metrics_address: metrics_address(args),
    };
    runtime()?.block_on(async {
        let stop = shutdown_signal();
        run_worker(config, stop).await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        worker: super::WorkerArgs,
    }

    fn parse(args: &[&str]) -> Result<super::WorkerArgs, clap::Error> {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("worker").chain(args.iter().copied())).map(|c| c.worker)
    }

    #[test]
    fn the_metrics_address_defaults_to_the_host_name_and_the_listen_port() {
        let args = parse(&["--metrics-listen", "0.0.0.0:9101"]).unwrap();
        assert_eq!(
            super::metrics_address(&args),
            Some(format!("{}:9101", super::host_name()))
        );
        let args = parse(&["--metrics-listen", "0.0.0.0:9101", "--metrics-address", "10.0.0.7:9200"]).unwrap();
        assert_eq!(super::metrics_address(&args).as_deref(), Some("10.0.0.7:9200"));
        assert_eq!(super::metrics_address(&parse(&[]).unwrap()), None);
        // Port 0: the port bound (the worker advertises it; tests use it against port races).
        let args = parse(&["--metrics-listen", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0"]).unwrap();
        assert_eq!(super::metrics_address(&args).as_deref(), Some("127.0.0.1:0"));
        let e = parse(&["--metrics-listen", "127.0.0.1:0", "--metrics-address", "a b:0"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("`a b:0`: the host must be"), "{e}");
        // An address needs a server to point at, and must be HOST:PORT.
        assert!(parse(&["--metrics-address", "10.0.0.7:9200"]).is_err());
        let e = parse(&[
            "--metrics-listen",
            "0.0.0.0:9101",
            "--metrics-address",
            "http://x:1/metrics",
        ])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("--metrics-address"), "{e}");
    }

    #[test]
    fn device_lists_expand_cuda_indices() {
        assert_eq!(super::device_list("cuda:0,1"), ["cuda:0", "cuda:1"]);
        assert_eq!(super::device_list("cpu"), ["cpu"]);
    }

    #[test]
    fn single_device_commands_take_the_list_syntax_but_one_device() {
        assert_eq!(super::single_device("cpu").unwrap(), tch::Device::Cpu);
        assert_eq!(super::single_device("1").unwrap(), tch::Device::Cuda(1));
        assert_eq!(super::single_device("cuda").unwrap(), tch::Device::Cuda(0));
        let e = super::single_device("cuda:0,1").unwrap_err().to_string();
        assert!(e.contains("one device, not 2 (cuda:0, cuda:1)"), "{e}");
        let e = super::single_device("tpu").unwrap_err().to_string();
        assert!(e.starts_with("--devices: unknown device `tpu`"), "{e}");
    }
}
