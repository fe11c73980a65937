//! `spatiallock metrics TRIAL|JOB`: the metric series of each job of a trial, kept apart
//! (pretraining, training and the detector's training all report `loss`), or of one job; as a
//! table, CSV, JSON, or TensorBoard event files (one run folder per job).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use spatiallock_protocol::api::{JobMetrics, TrialMetrics};
use spatiallock_worker::CoordinatorClient;

use super::logs::is_trial_id;
use super::tensorboard::EventFile;

/// How `spatiallock metrics` writes the series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetricsFormat {
    /// Per job and metric: points, steps, last value.
    Table,
    /// `job,kind,name,step,value`, a row per point.
    Csv,
    /// As the coordinator answers: `{trial, jobs: [{job, kind, label, series}]}` for a trial,
    /// `{job, kind, label, series}` for a job.
    Json,
    /// TensorBoard event files under `--out`: a run folder per job, scalars tagged by metric
    /// name at their training step.
    Tensorboard,
}

/// Arguments of `spatiallock metrics`.
#[derive(Args, Debug)]
pub struct MetricsArgs {
    /// A trial (`<experiment>.<index>`: each of its jobs) or a job (`<experiment>.<job>`); the
    /// experiment by id or name.
    pub target: String,
    /// Only the trial's jobs of this kind (pretrain, train, train-detector, evaluate) or this
    /// job (`<experiment>.<job>` or `<job>`).
    #[arg(long)]
    pub job: Option<String>,
    /// table, csv, json or tensorboard.
    #[arg(long, value_enum, default_value_t = MetricsFormat::Table)]
    pub format: MetricsFormat,
    /// A file for csv and json (default: standard output); the log folder for tensorboard
    /// (required: `tensorboard --logdir PATH` then shows a run per job).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only these metrics (comma-separated names, e.g. `loss,loss_diffusion`).
    #[arg(long, value_delimiter = ',')]
    pub names: Vec<String>,
}

/// Whether `job` is the one `wanted` names: its kind, its id, or its id without the
/// experiment.
fn job_matches(job: &JobMetrics, wanted: &str) -> bool {
    job.kind.as_str() == wanted || job.job == wanted || job.job.split_once('.').is_some_and(|(_, key)| key == wanted)
}

/// The series asked for: a trial's jobs (`trial` set) or one job's (`trial` empty), with
/// `--job` applied.
///
/// Errors: the coordinator's (404 naming an unknown trial or job); `--job` matching no job.
async fn fetch(client: &CoordinatorClient, target: &str, args: &MetricsArgs) -> anyhow::Result<TrialMetrics> {
    let names = args.names.join(",");
    let mut metrics = if is_trial_id(target) {
        client.trial_metrics(target, &names).await?
    } else {
        let view = client.job(target).await?;
        let series = client.job_metrics(target, &names).await?;
        TrialMetrics {
            trial: String::new(),
            jobs: vec![JobMetrics {
                job: view.id,
                kind: view.kind,
                label: view.label,
                series,
            }],
        }
    };
    if let Some(wanted) = &args.job {
        let all: Vec<String> = metrics.jobs.iter().map(|j| j.job.clone()).collect();
        metrics.jobs.retain(|j| job_matches(j, wanted));
        if metrics.jobs.is_empty() {
            bail!(
                "no job of {} is `{wanted}` (give a kind: pretrain, train, train-detector, evaluate; or one \
                 of {})",
                target,
                all.join(", ")
            );
        }
    }
    Ok(metrics)
}

/// Runs `spatiallock metrics` for `target`, the trial or job `args.target` names with its
/// experiment given by id.
///
/// Errors: the coordinator's; `--format tensorboard` without `--out`; files that cannot be
/// written.
pub async fn run(client: &CoordinatorClient, target: &str, args: &MetricsArgs) -> anyhow::Result<()> {
    if args.format == MetricsFormat::Tensorboard && args.out.is_none() {
        bail!("--format tensorboard writes a folder of runs: give it with --out PATH");
    }
    let metrics = fetch(client, target, args).await?;
    let text = match args.format {
        MetricsFormat::Table => table(&metrics.jobs),
        MetricsFormat::Csv => csv(&metrics.jobs),
        MetricsFormat::Json if metrics.trial.is_empty() && metrics.jobs.len() == 1 => {
            format!("{}\n", serde_json::to_string_pretty(&metrics.jobs[0])?)
        }
        MetricsFormat::Json => format!("{}\n", serde_json::to_string_pretty(&metrics)?),
        MetricsFormat::Tensorboard => {
            let dir = args.out.as_deref().unwrap_or(Path::new("."));
            let runs = write_tensorboard(dir, &metrics.jobs)?;
            for (run, points) in &runs {
                println!("{}: {points} points", run.display());
            }
            println!("tensorboard --logdir {}", dir.display());
            return Ok(());
        }
    };
    match &args.out {
        Some(path) => std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}

/// A job id without its experiment (`train-0123…`): a run folder's name.
fn job_key(job: &str) -> &str {
    job.split_once('.').map_or(job, |(_, key)| key)
}

/// Per job and metric: how many points, from which step to which, the last value.
pub fn table(jobs: &[JobMetrics]) -> String {
    let mut rows = vec![[
        "job".to_string(),
        "kind".into(),
        "metric".into(),
        "points".into(),
        "steps".into(),
        "last".into(),
    ]];
    for job in jobs {
        for (name, points) in &job.series {
            let (Some(first), Some(last)) = (points.first(), points.last()) else {
                continue;
            };
            rows.push([
                job.job.clone(),
                job.kind.as_str().into(),
                name.clone(),
                points.len().to_string(),
                format!("{}-{}", first.step, last.step),
                format!("{:.6}", last.value),
            ]);
        }
    }
    if rows.len() == 1 {
        return "no metrics reported yet\n".into();
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row.iter().zip(widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `job,kind,name,step,value`: a row per point, jobs in the trial's order, names sorted, steps
/// ascending; values in Rust's shortest round-trip spelling.
pub fn csv(jobs: &[JobMetrics]) -> String {
    let mut out = String::from("job,kind,name,step,value\n");
    for job in jobs {
        for (name, points) in &job.series {
            for p in points {
                out.push_str(&format!(
                    "{},{},{},{},{}\n",
                    csv_field(&job.job),
                    job.kind.as_str(),
                    csv_field(name),
                    p.step,
                    p.value
                ));
            }
        }
    }
    out
}

/// Writes each job's series as a TensorBoard run, `<dir>/<job without experiment>/`: one event
/// per step holding every metric of that step, tagged by metric name (values as float32, the
/// precision of TensorBoard's scalars). An earlier export's event files in a run folder are
/// replaced. The points carry no time of their own: every event gets the export's time.
/// Returns each run folder and its number of points.
///
/// Errors: a folder or file that cannot be created, removed or written.
pub fn write_tensorboard(dir: &Path, jobs: &[JobMetrics]) -> anyhow::Result<Vec<(PathBuf, usize)>> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let mut runs = Vec::new();
    for job in jobs {
        let run = dir.join(job_key(&job.job));
        remove_event_files(&run)?;
        let mut by_step: BTreeMap<u64, Vec<(&str, f32)>> = BTreeMap::new();
        for (name, points) in &job.series {
            for p in points {
                by_step.entry(p.step).or_default().push((name.as_str(), p.value as f32));
            }
        }
        let mut file =
            EventFile::create(&run, now).with_context(|| format!("creating an event file in {}", run.display()))?;
        let mut points = 0;
        for (step, values) in &by_step {
            let step = i64::try_from(*step).with_context(|| format!("step {step} of {} is too large", job.job))?;
            file.scalars(step, values, now)
                .with_context(|| format!("writing to {}", run.display()))?;
            points += values.len();
        }
        file.finish().with_context(|| format!("writing to {}", run.display()))?;
        runs.push((run, points));
    }
    Ok(runs)
}

/// Removes the TensorBoard event files (`events.out.tfevents.*`) of a run folder, if it exists.
fn remove_event_files(run: &Path) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(run) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", run.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", run.display()))?;
        if entry.file_name().to_string_lossy().starts_with("events.out.tfevents.") {
            std::fs::remove_file(entry.path()).with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use spatiallock_protocol::api::MetricPoint;
    use spatiallock_protocol::JobKind;

    use super::*;

    fn job(id: &str, kind: JobKind, loss: &[(u64, f64)]) -> JobMetrics {
        let points = loss.iter().map(|&(step, value)| MetricPoint { step, value }).collect();
        JobMetrics {
            job: id.into(),
            kind,
            label: String::new(),
            series: BTreeMap::from([("loss".to_string(), points)]),
        }
    }

    #[test]
    fn csv_and_table_keep_jobs_apart() {
        let jobs = [
            job("exp-1.pretrain-aa", JobKind::Pretrain, &[(1, 3.5), (2, 3.25)]),
            job("exp-1.train-bb", JobKind::Train, &[(1, 2.5)]),
        ];
        assert_eq!(
            csv(&jobs),
            "job,kind,name,step,value\nexp-1.pretrain-aa,pretrain,loss,1,3.5\nexp-1.pretrain-aa,pretrain,loss,2,3.25\n\
             exp-1.train-bb,train,loss,1,2.5\n"
        );
        let t = table(&jobs);
        assert!(t.starts_with("job  "), "{t}");
        assert!(
            t.contains("exp-1.pretrain-aa  pretrain  loss    2       1-2    3.250000"),
            "{t}"
        );
        assert_eq!(csv_field("a,b \"c\""), "\"a,b \"\"c\"\"\"");
    }

    #[test]
    fn jobs_are_picked_by_kind_or_id() {
        let j = job("exp-1.train-bb", JobKind::Train, &[]);
        assert!(job_matches(&j, "train") && job_matches(&j, "train-bb") && job_matches(&j, "exp-1.train-bb"));
        assert!(!job_matches(&j, "pretrain") && !job_matches(&j, "train-b"));
    }
}
