//! `spatiallock bench queue`: orchestration throughput and latency with noop jobs, for
//! PostgreSQL + Redis and for SQLite, beside Ray Tune's overhead per trivial trial measured in
//! the same run (`scripts/bench/ray_tune_overhead.py`) when the reference Python has Ray.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use spatiallock_coordinator::store::{create_postgres_database, drop_postgres_database};
use spatiallock_coordinator::{start, Config};
use spatiallock_worker::CoordinatorClient;

/// Settings of the queue benchmark.
pub struct QueueBench {
    /// Jobs in the throughput phase.
    pub jobs: usize,
    /// Concurrent worker clients.
    pub clients: usize,
    /// Single-job submissions in the latency phase.
    pub probes: usize,
    /// Server to create the benchmark database on.
    pub postgres_admin_url: String,
    /// Redis.
    pub redis_url: String,
    /// A Python with `ray[tune]` for the reference; `None` or one without Ray skips it.
    pub ray_python: Option<std::path::PathBuf>,
    /// Trivial trials Ray Tune runs.
    pub ray_trials: usize,
}

/// Ray Tune's milliseconds per trivial trial, measured now; `Err` says why it was not.
fn ray_tune_reference(b: &QueueBench) -> Result<f64, String> {
    let python = b.ray_python.as_ref().ok_or("no --python given")?;
    let has_ray = std::process::Command::new(python)
        .args(["-c", "import ray.tune"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_ray {
        return Err(format!(
            "{} has no Ray (pip install \"ray[tune]\" into it)",
            python.display()
        ));
    }
    let store = tempfile::tempdir().map_err(|e| e.to_string())?;
    let script = super::bench::script("bench/ray_tune_overhead.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(b.ray_trials.to_string())
        .arg(store.path())
        .output()
        .map_err(|e| format!("starting {}: {e}", python.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| {
            format!(
                "Ray Tune printed no result: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
    if json["errors"].as_u64() != Some(0) {
        return Err(format!("Ray Tune trials failed: {json}"));
    }
    json["ms_per_trial"]
        .as_f64()
        .ok_or_else(|| format!("no ms_per_trial in {json}"))
}

fn noop_grid(name: &str, n: usize) -> String {
    format!(
        "name: {name}\nlimits: {{max_trials: {n}}}\nseeds: {n}\nbase:\n  model: {{arch: tiny, base: {{pretrain: {{steps: 1}}}}}}\n  \
         data: {{train: {{kind: shapes, split: train, count: 4}}, val: [{{kind: shapes, split: val, count: 2}}], resolution: 32}}\n  \
         noop: {{sleep_ms: 0}}\n"
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

struct Measured {
    jobs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn measure(config: Config, b: &QueueBench) -> anyhow::Result<Measured> {
    let running = start(config).await?;
    let client = CoordinatorClient::new(&running.url(), None);

    // Throughput: one experiment of N jobs, K clients lease → complete.
    let start_submit = Instant::now();
    client
        .submit(&noop_grid("bench-throughput", b.jobs), false, None)
        .await?;
    let submit_s = start_submit.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..b.clients {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let me = client
                .register(&spatiallock_protocol::api::RegisterWorker {
                    name: format!("bench-{k}"),
                    devices: vec!["cpu".into()],
                    labels: Default::default(),
                    metrics_address: None,
                })
                .await?;
            let mut n = 0usize;
            while let Some(lease) = client.lease(&me.worker_id, Duration::from_millis(200), 1, None).await? {
                client
                    .complete(
                        &lease.job_id,
                        &spatiallock_protocol::api::CompleteRequest {
                            attempt: lease.attempt,
                            output: None,
                        },
                    )
                    .await?;
                n += 1;
            }
            Ok::<usize, spatiallock_worker::ClientError>(n)
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await??;
    }
    // The last empty long-poll (200 ms) is not work: leave it out.
    let elapsed = (t0.elapsed().as_secs_f64() - 0.2).max(1e-6);
    anyhow::ensure!(done == b.jobs, "{done} of {} jobs completed", b.jobs);
    eprintln!("    submit of {} jobs took {submit_s:.2} s", b.jobs);

    // Latency: idle clients long-poll; single-job experiments arrive one at a time.
    // Lease times are recorded by experiment and matched afterwards: a lease can arrive
    // before the submitter has even read the answer to its POST.
    let mut submitted: HashMap<String, Instant> = HashMap::new();
    let leased: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut pollers = Vec::new();
    for k in 0..b.clients {
        let (client, leased, stop) = (client.clone(), leased.clone(), stop.clone());
        pollers.push(tokio::spawn(async move {
            let me = client
                .register(&spatiallock_protocol::api::RegisterWorker {
                    name: format!("probe-{k}"),
                    devices: vec!["cpu".into()],
                    labels: Default::default(),
                    metrics_address: None,
                })
                .await?;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Some(lease) = client.lease(&me.worker_id, Duration::from_millis(500), 1, None).await? {
                    leased
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(lease.experiment_id.clone(), Instant::now());
                    client
                        .complete(
                            &lease.job_id,
                            &spatiallock_protocol::api::CompleteRequest {
                                attempt: lease.attempt,
                                output: None,
                            },
                        )
                        .await?;
                }
            }
            Ok::<(), spatiallock_worker::ClientError>(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..b.probes {
        let text = noop_grid(&format!("probe-{i}"), 1);
        let sent = Instant::now();
        let r = client.submit(&text, false, None).await?;
        submitted.insert(r.id, sent);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while leased.lock().unwrap_or_else(|p| p.into_inner()).len() < b.probes && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for p in pollers {
        p.await??;
    }
    running.shutdown().await;
    let leased = leased.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut l: Vec<f64> = submitted
        .iter()
        .filter_map(|(id, sent)| {
            leased
                .get(id)
                .map(|at| at.saturating_duration_since(*sent).as_secs_f64() * 1000.0)
        })
        .collect();
    // Latencies that were never observed (a probe lost) would hide in an average: refuse.
    anyhow::ensure!(
        l.len() == b.probes,
        "only {} of {} probes were leased",
        l.len(),
        b.probes
    );
    l.sort_by(f64::total_cmp);
    Ok(Measured {
        jobs_per_s: b.jobs as f64 / elapsed,
        p50_ms: percentile(&l, 0.5),
        p99_ms: percentile(&l, 0.99),
    })
}

/// Runs the benchmark and prints its table.
pub fn run(b: &QueueBench) -> anyhow::Result<()> {
    let rt = super::service::runtime()?;
    rt.block_on(async {
        println!(
            "bench queue: {} noop jobs, {} concurrent worker clients; latency: {} single-job submissions to idle clients",
            b.jobs, b.clients, b.probes
        );
        println!("  (coordinator, clients and databases share this machine's {} CPUs)", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
        let mut rows = Vec::new();

        let name = format!("sl_bench_{}", std::process::id());
        let url = create_postgres_database(&b.postgres_admin_url, &name)
            .await
            .with_context(|| format!("PostgreSQL at {}", b.postgres_admin_url))?;
        let mut pg = Config::new(url, Some(b.redis_url.clone()), SocketAddr::from(([127, 0, 0, 1], 0)));
        pg.redis_prefix = name.clone();
        pg.max_trials = b.jobs.max(1);
        eprintln!("  postgres+redis …");
        rows.push(("postgres+redis", measure(pg, b).await?));
        drop_postgres_database(&b.postgres_admin_url, &name).await?;

        let dir = tempfile::tempdir()?;
        let mut lite = Config::new(
            format!("sqlite://{}", dir.path().join("bench.db").display()),
            None,
            SocketAddr::from(([127, 0, 0, 1], 0)),
        );
        lite.max_trials = b.jobs.max(1);
        eprintln!("  sqlite …");
        rows.push(("sqlite (embedded)", measure(lite, b).await?));

        eprintln!("  ray tune ({} trials) …", b.ray_trials);
        let ray = ray_tune_reference(b);
        let header = match &ray {
            Ok(ms) => format!("vs Ray Tune ({ms:.0} ms)"),
            Err(_) => "vs Ray Tune".into(),
        };
        println!("  {:<20} {:>10} {:>12} {:>12} {:>22}", "store", "jobs/s", "p50 ms", "p99 ms", header);
        for (name, m) in &rows {
            let ratio = match &ray {
                Ok(ms) => format!("{:.0}×", ms / (1000.0 / m.jobs_per_s)),
                Err(_) => "-".into(),
            };
            println!(
                "  {:<20} {:>10.0} {:>12.2} {:>12.2} {:>22}",
                name, m.jobs_per_s, m.p50_ms, m.p99_ms, ratio
            );
        }
        match &ray {
            Ok(ms) => println!("  Ray Tune: {ms:.0} ms of overhead per trivial trial, measured in this run"),
            Err(why) => println!("  Ray Tune: not measured ({why})"),
        }
        println!("  targets (postgres+redis): ≥ 1000 jobs/s, p99 ≤ 20 ms");
        Ok(())
    })
}
