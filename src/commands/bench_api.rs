//! `spatiallock bench api`: the coordinator under load, in its own process (`spatiallock
//! coordinator` on PostgreSQL + Redis) so that its CPU time and memory are its own.
//!
//! - **Reads**: `GET /v1/experiments` (one page of 100) with N experiments stored, from C
//!   concurrent connections, beside `GET /healthz` measured the same way in the same run.
//! - **Scale**: W simulated workers register, heartbeat and long-poll for leases while noop
//!   jobs flow; reports jobs/s, lease-request p99, the coordinator's CPU and memory, and the
//!   database connections it holds.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use spatiallock_coordinator::store::{create_postgres_database, drop_postgres_database};
use spatiallock_protocol::api::{CompleteRequest, RegisterWorker};
use spatiallock_worker::CoordinatorClient;

/// Settings of the API benchmark.
pub struct ApiBench {
    /// Experiments stored before the reads are timed.
    pub experiments: usize,
    /// Concurrent connections of the read phase.
    pub connections: usize,
    /// Seconds each read endpoint is driven.
    pub seconds: f64,
    /// Simulated workers of the scale phase (0 skips it).
    pub workers: usize,
    /// Noop jobs that flow during the scale phase.
    pub jobs: usize,
    /// Server to create the benchmark database on.
    pub postgres_admin_url: String,
    /// Redis.
    pub redis_url: String,
    /// The coordinator binary to load (default: `spatiallock-coordinator` beside this binary,
    /// else `spatiallock coordinator`).
    pub coordinator_binary: Option<std::path::PathBuf>,
}

/// The coordinator process; killed when dropped.
struct Coordinator {
    child: Child,
    url: String,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Coordinator {
    fn start(b: &ApiBench, database_url: &str, prefix: &str) -> anyhow::Result<Coordinator> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let this = std::env::current_exe().context("locating this binary")?;
        let beside = this.with_file_name("spatiallock-coordinator");
        let mut command = match &b.coordinator_binary {
            Some(path) => Command::new(path),
            None if beside.is_file() => Command::new(beside),
            None => {
                let mut c = Command::new(&this);
                c.arg("coordinator");
                c
            }
        };
        println!("  coordinator: {:?}", command.get_program());
        let child = command
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--database-url", database_url, "--redis-url", &b.redis_url])
            .args(["--max-trials", "100000"])
            .args(["--redis-prefix", prefix])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .context("starting `spatiallock coordinator`")?;
        let mut c = Coordinator {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_err() {
            if let Some(status) = c.child.try_wait()? {
                bail!("the coordinator exited with {status}");
            }
            if Instant::now() > deadline {
                bail!("the coordinator did not listen within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(c)
    }

    /// CPU seconds (user + system) and resident memory in MiB, from /proc.
    fn usage(&self) -> (f64, f64) {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (which is in parentheses and may hold spaces).
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        let cpu = (ticks(11) + ticks(12)) / 100.0; // utime, stime at USER_HZ = 100
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        (cpu, rss_kib / 1024.0)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn noop_grid(name: &str, n: usize) -> String {
    format!(
        "name: {name}\nlimits: {{max_trials: {n}}}\nseeds: {n}\nbase:\n  model: {{arch: tiny, base: {{pretrain: {{steps: 1}}}}}}\n  \
         data: {{train: {{kind: shapes, split: train, count: 4}}, val: [{{kind: shapes, split: val, count: 2}}], resolution: 32}}\n  \
         noop: {{sleep_ms: 0}}\n"
    )
}

/// Requests per second and latency percentiles (ms) of `GET url` from `connections` loops.
async fn drive(url: &str, connections: usize, seconds: f64) -> anyhow::Result<(f64, f64, f64)> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(connections).build()?;
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut loops = Vec::new();
    for _ in 0..connections {
        let (http, url) = (http.clone(), url.to_string());
        loops.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < until {
                let t = Instant::now();
                let r = http.get(&url).send().await?;
                let status = r.status();
                r.bytes().await?;
                if !status.is_success() {
                    anyhow::bail!("GET {url} answered {status}");
                }
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok(latencies)
        }));
    }
    let t0 = Instant::now();
    let mut all = Vec::new();
    for l in loops {
        all.extend(l.await??);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok((
        all.len() as f64 / elapsed,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
    ))
}

/// Stores the experiments, times the reads; returns how many jobs the experiments hold.
async fn reads(b: &ApiBench, c: &Coordinator) -> anyhow::Result<usize> {
    let client = CoordinatorClient::new(&c.url, None);
    let t = Instant::now();
    let mut jobs = 0;
    for i in 0..b.experiments {
        jobs += client
            .submit(&noop_grid(&format!("list-{i}"), 1), false, None)
            .await?
            .num_jobs as usize;
    }
    eprintln!(
        "  stored {} experiments in {:.1} s",
        b.experiments,
        t.elapsed().as_secs_f64()
    );
    let (h_rps, h_p50, h_p99) = drive(&format!("{}/healthz", c.url), b.connections, b.seconds).await?;
    let (l_rps, l_p50, l_p99) = drive(&format!("{}/v1/experiments", c.url), b.connections, b.seconds).await?;
    println!(
        "reads ({} connections, {:.0} s each, {} experiments, page of 100):",
        b.connections, b.seconds, b.experiments
    );
    println!("  {:<22} {:>10} {:>9} {:>9}", "endpoint", "req/s", "p50 ms", "p99 ms");
    println!("  {:<22} {h_rps:>10.0} {h_p50:>9.2} {h_p99:>9.2}", "GET /healthz");
    println!(
        "  {:<22} {l_rps:>10.0} {l_p50:>9.2} {l_p99:>9.2}",
        "GET /v1/experiments"
    );
    println!("  list / healthz throughput: {:.3}", l_rps / h_rps);
    Ok(jobs)
}

/// `queued`: jobs already waiting (the read phase's), leased along with the new ones.
async fn scale(b: &ApiBench, c: &Coordinator, database: &str, queued: usize) -> anyhow::Result<()> {
    let client = CoordinatorClient::new(&c.url, None);
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicUsize::new(0));
    let lease_ms: Arc<Mutex<Vec<f64>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let t_register = Instant::now();
    let mut ids = Vec::new();
    for k in 0..b.workers {
        let me = client
            .register(&RegisterWorker {
                name: format!("sim-{k}"),
                devices: vec!["cpu".into()],
                labels: Default::default(),
                metrics_address: None,
            })
            .await?;
        ids.push(me.worker_id);
    }
    eprintln!(
        "  registered {} workers in {:.1} s",
        b.workers,
        t_register.elapsed().as_secs_f64()
    );
    let mut tasks = Vec::new();
    for id in ids {
        let (client, stop, completed, lease_ms, errors) = (
            client.clone(),
            stop.clone(),
            completed.clone(),
            lease_ms.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut last_beat = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                if last_beat.elapsed() > Duration::from_secs(10) {
                    if let Err(e) = client.worker_heartbeat(&id).await {
                        errors.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string());
                    }
                    last_beat = Instant::now();
                }
                let t = Instant::now();
                match client.lease(&id, Duration::from_secs(2), 1, None).await {
                    Ok(Some(lease)) => {
                        lease_ms
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(t.elapsed().as_secs_f64() * 1000.0);
                        let done = CompleteRequest {
                            attempt: lease.attempt,
                            output: None,
                        };
                        match client.complete(&lease.job_id, &done).await {
                            Ok(()) => {
                                completed.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => errors.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string()),
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        errors.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string());
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }));
    }
    // Let every worker settle into its long-poll, measure the idle cost, then let jobs flow.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu_settled, _) = c.usage();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu_idle, rss_idle) = c.usage();
    let t0 = Instant::now();
    let total = queued + client.submit(&noop_grid("scale", b.jobs), false, None).await?.num_jobs as usize;
    let deadline = Instant::now() + Duration::from_secs(600);
    while completed.load(Ordering::SeqCst) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (cpu1, rss1) = c.usage();
    let connections = database_connections(database).await.unwrap_or(-1);
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        let _ = t.await;
    }
    let done = completed.load(Ordering::SeqCst);
    let mut l = lease_ms.lock().unwrap_or_else(|p| p.into_inner()).clone();
    l.sort_by(f64::total_cmp);
    let errors = errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    println!(
        "scale ({} simulated workers long-polling 2 s, {total} noop jobs queued at once):",
        b.workers
    );
    println!(
        "  jobs completed          {done} of {total} in {elapsed:.1} s ({:.0} jobs/s)",
        done as f64 / elapsed
    );
    println!(
        "  lease request → job     p50 {:.1} ms, p99 {:.1} ms",
        percentile(&l, 0.5),
        percentile(&l, 0.99)
    );
    println!(
        "  coordinator CPU         {:.2} cores idle-polling, {:.2} cores while jobs flow",
        (cpu_idle - cpu_settled) / 3.0,
        (cpu1 - cpu_idle) / elapsed
    );
    println!("  coordinator memory      {rss_idle:.0} MiB with the workers polling, {rss1:.0} MiB after the jobs");
    println!("  database connections    {connections}");
    println!("  request errors          {}", errors.len());
    if let Some(first) = errors.first() {
        println!("    first: {first}");
    }
    if done < total {
        bail!("only {done} of {total} jobs completed within 600 s");
    }
    Ok(())
}

async fn database_connections(database_url: &str) -> anyhow::Result<i64> {
    use sqlx::Row;
    let (admin, name) = database_url.rsplit_once('/').context("database URL without a name")?;
    let pool = sqlx::PgPool::connect(&format!("{admin}/postgres")).await?;
    let row = sqlx::query("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1")
        .bind(name)
        .fetch_one(&pool)
        .await?;
    Ok(row.try_get::<i64, _>("n")?)
}

/// Runs the benchmark and prints its tables.
pub fn run(b: &ApiBench) -> anyhow::Result<()> {
    if b.connections == 0 || b.seconds <= 0.0 {
        bail!("--connections and --seconds must be positive");
    }
    let rt = super::service::runtime()?;
    rt.block_on(async {
        println!(
            "bench api: coordinator process on PostgreSQL + Redis; load generator in this process; {} CPUs shared",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        );
        let name = format!("sl_bench_api_{}", std::process::id());
        let url = create_postgres_database(&b.postgres_admin_url, &name)
            .await
            .with_context(|| format!("PostgreSQL at {}", b.postgres_admin_url))?;
        let outcome = async {
            let c = Coordinator::start(b, &url, &name)?;
            let queued = reads(b, &c).await?;
            if b.workers > 0 {
                scale(b, &c, &url, queued).await?;
            }
            Ok::<(), anyhow::Error>(())
        }
        .await;
        let _ = drop_postgres_database(&b.postgres_admin_url, &name).await;
        outcome
    })
}
