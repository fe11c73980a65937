//! `spatiallock figures EXPERIMENT`: the pictures a paper shows, from a finished experiment.
//! `comparison.png` stacks each evaluation's `strip.png` (the same validation layouts and seeds
//! in every trial) in one row per trial and validation set, labelled with the trial's axes;
//! `curves-<trial>.png` draws each trial's training curves; `figures.md` lists them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use spatiallock_model::image_io::{decode_rgb, labelled_rows, read_rgb, write_png, RgbImage};
use spatiallock_model::layout::JobDir;
use spatiallock_protocol::api::{JobView, TrialView};
use spatiallock_protocol::JobKind;
use spatiallock_worker::CoordinatorClient;

use super::curves::{metric_names, write_curves};

/// Arguments of `spatiallock figures`.
#[derive(Args, Debug)]
pub struct FiguresArgs {
    /// An experiment id or name.
    pub experiment: String,
    /// The folder to write into (default: `<experiment name>-figures` in the current directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// What [`write_figures`] wrote.
#[derive(Debug)]
pub struct Figures {
    /// The folder holding them.
    pub dir: PathBuf,
    /// The files written, `figures.md` last.
    pub files: Vec<PathBuf>,
}

/// The default folder for an experiment's figures under `parent`: `<name>-figures`, the name's
/// characters other than letters, digits, `-`, `_` and `.` replaced by `_`.
pub fn default_dir(parent: &Path, experiment_name: &str) -> PathBuf {
    let safe: String = experiment_name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    parent.join(format!("{}-figures", safe.trim_start_matches('.')))
}

/// The local folder a job's output URI names: a `file://` URI or a plain path.
fn local_dir(uri: &str) -> Option<PathBuf> {
    match uri.strip_prefix("file://") {
        Some(path) => Some(PathBuf::from(path)),
        None if !uri.contains("://") => Some(PathBuf::from(uri)),
        None => None,
    }
}

/// The label lines of a trial's row: `trial N`, its axes, the validation set.
fn row_label(trial: &TrialView, eval: &JobView) -> Vec<String> {
    let mut lines = vec![format!("trial {}", trial.index)];
    lines.extend(trial.axes.iter().map(|(k, v)| match v {
        serde_json::Value::String(s) => format!("{k} = {s}"),
        other => format!("{k} = {other}"),
    }));
    // Repeats of a grid point differ only in their seed, which is not an axis.
    if let Some(seed) = trial
        .config
        .as_ref()
        .and_then(|c| c.get("seed"))
        .filter(|_| !trial.axes.contains_key("seed"))
    {
        lines.push(format!("seed = {seed}"));
    }
    let val = eval.label.split_once(" on ").map_or(eval.label.as_str(), |(_, v)| v);
    lines.push(format!("val: {val}"));
    lines
}

/// The trial's name in titles: `trial N (axis=value, …)`.
fn trial_title(trial: &TrialView) -> String {
    let axes: Vec<String> = trial
        .axes
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    if axes.is_empty() {
        format!("trial {}", trial.index)
    } else {
        format!("trial {} ({})", trial.index, axes.join(", "))
    }
}

/// The name of an evaluation's comparison strip in its output folder ([`JobDir::strip`]).
const STRIP: &str = "strip.png";

/// An evaluation's strip, or why it cannot be had (naming the job and its URI): as the
/// coordinator serves it (`GET /v1/jobs/{id}/files/strip.png`, which works from any machine when
/// the coordinator can read the output), else from the output folder when it is local here.
/// The second value says where it came from: `true` for the coordinator.
async fn strip_of(client: &CoordinatorClient, eval: &JobView) -> Result<(RgbImage, bool), String> {
    let Some(uri) = eval.output.as_deref() else {
        return Err(format!(
            "{} ({}) has no output yet (it is {})",
            eval.id,
            eval.label,
            eval.state.as_str()
        ));
    };
    let served = match client.job_file(&eval.id, STRIP).await {
        Ok(bytes) => match decode_rgb(&bytes, &format!("{}/v1/jobs/{}/files/{STRIP}", client.base(), eval.id)) {
            Ok(strip) => return Ok((strip, true)),
            Err(e) => format!("{:#}", anyhow::Error::from(e)),
        },
        Err(e) => format!("{:#}", anyhow::Error::from(e)),
    };
    let Some(dir) = local_dir(uri) else {
        return Err(format!(
            "{} ({}): the coordinator did not serve its strip ({served}) and its output {uri} is not a \
             local folder",
            eval.id, eval.label
        ));
    };
    let path = JobDir::new(dir).strip();
    read_rgb(&path).map(|strip| (strip, false)).map_err(|e| {
        format!(
            "{} ({}): no strip from the coordinator ({served}) nor at {uri}: {:#}",
            eval.id,
            eval.label,
            anyhow::Error::from(e)
        )
    })
}

/// Writes the experiment `experiment_id`'s figures into `dir` (created when missing), printing
/// to stderr each row or curve left out and why.
///
/// Errors: the coordinator's; the folder or a file cannot be written.
pub async fn write_figures(client: &CoordinatorClient, experiment_id: &str, dir: &Path) -> anyhow::Result<Figures> {
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!(
            "--out {} is a file: give a folder (it is created when missing)",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating the figures folder {}", dir.display()))?;
    let experiment = client.experiment(experiment_id).await?;
    let mut trials = client.trials(experiment_id).await?;
    trials.sort_by_key(|t| t.index);
    // Repeats of a grid point differ only in their seed, which only the full configuration
    // holds: fetch it so that the rows can say which seed they show.
    let repeated = |t: &TrialView| trials.iter().filter(|o| o.axes == t.axes).count() > 1;
    let need: Vec<usize> = (0..trials.len()).filter(|&i| repeated(&trials[i])).collect();
    for i in need {
        trials[i].config = client.trial(&trials[i].id).await?.config;
    }
    let jobs: BTreeMap<String, JobView> = client
        .jobs(experiment_id)
        .await?
        .into_iter()
        .map(|j| (j.id.clone(), j))
        .collect();
    let mut files = Vec::new();
    let mut notes = Vec::new();

    let mut rows = Vec::new();
    let mut served = 0;
    for trial in &trials {
        for key in &trial.eval_jobs {
            // A trial names its jobs without the experiment (`evaluate-…`), the job list with it.
            let Some(eval) = jobs.get(&format!("{experiment_id}.{key}")).or_else(|| jobs.get(key)) else {
                let why = format!("{key} (of trial {}): the coordinator lists no such job", trial.index);
                eprintln!("comparison: left out {why}");
                notes.push(format!("left out of the comparison: {why}"));
                continue;
            };
            match strip_of(client, eval).await {
                Ok((strip, from_coordinator)) => {
                    served += usize::from(from_coordinator);
                    rows.push((row_label(trial, eval), strip));
                }
                Err(why) => {
                    eprintln!("comparison: left out {why}");
                    notes.push(format!("left out of the comparison: {why}"));
                }
            }
        }
    }
    if !rows.is_empty() {
        let path = dir.join("comparison.png");
        write_png(&path, &labelled_rows(&rows)?)?;
        files.push((
            path,
            format!(
                "{} row(s), one per trial and validation set: the same layouts and seeds in each \
                 ({served} strip(s) served by the coordinator, {} read from output folders here)",
                rows.len(),
                rows.len() - served
            ),
        ));
    }

    for trial in &trials {
        let metrics = client.trial_metrics(&trial.id, &metric_names()).await?;
        let Some(train) = metrics.jobs.iter().find(|j| j.kind == JobKind::Train) else {
            notes.push(format!("trial {}: no training job, no curves", trial.index));
            continue;
        };
        let path = dir.join(format!("curves-{}.png", trial.index));
        let title = trial_title(trial);
        match write_curves(&path, &title, &train.series) {
            Ok(()) => files.push((path, format!("training curves of {title}"))),
            Err(e) => {
                eprintln!("curves: trial {} left out: {e:#}", trial.index);
                notes.push(format!("trial {}: no curves: {e:#}", trial.index));
            }
        }
    }

    let index = dir.join("figures.md");
    std::fs::write(&index, index_text(&experiment.name, &experiment.id, &files, &notes))
        .with_context(|| format!("writing {}", index.display()))?;
    let mut files: Vec<PathBuf> = files.into_iter().map(|(p, _)| p).collect();
    files.push(index);
    Ok(Figures {
        dir: dir.to_path_buf(),
        files,
    })
}

/// `figures.md`: each file with what it shows, and what was left out.
fn index_text(name: &str, id: &str, files: &[(PathBuf, String)], notes: &[String]) -> String {
    let mut text = format!("# Figures of {name} ({id})\n\n");
    if files.is_empty() {
        text.push_str("No figures: no evaluation strips or training curves could be read.\n");
    }
    for (path, what) in files {
        let file = path
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
        text.push_str(&format!("- [`{file}`]({file}): {what}\n"));
    }
    if !notes.is_empty() {
        text.push_str("\nLeft out:\n\n");
        for note in notes {
            text.push_str(&format!("- {note}\n"));
        }
    }
    text
}

/// Runs `spatiallock figures` for the experiment `id` (resolved from the argument): writes and
/// prints the files.
///
/// Errors: as [`write_figures`].
pub async fn run(client: &CoordinatorClient, id: &str, args: &FiguresArgs) -> anyhow::Result<()> {
    let dir = match &args.out {
        Some(dir) => dir.clone(),
        None => default_dir(&std::env::current_dir()?, &client.experiment(id).await?.name),
    };
    let figures = write_figures(client, id, &dir).await?;
    for file in &figures.files {
        println!("{}", file.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_named_after_the_experiment_and_uris_read_as_paths() {
        assert_eq!(
            default_dir(Path::new("runs"), "tiny-grid"),
            PathBuf::from("runs/tiny-grid-figures")
        );
        assert_eq!(default_dir(Path::new("."), "../a b"), PathBuf::from("./_a_b-figures"));
        assert_eq!(
            local_dir("file:///tmp/x/attempt-1"),
            Some(PathBuf::from("/tmp/x/attempt-1"))
        );
        assert_eq!(local_dir("/tmp/x"), Some(PathBuf::from("/tmp/x")));
        assert_eq!(local_dir("s3://bucket/x"), None);
    }

    #[test]
    fn the_index_lists_files_and_what_was_left_out() {
        let files = vec![(PathBuf::from("/o/comparison.png"), "2 rows".to_string())];
        let text = index_text("grid", "exp-1", &files, &["trial 1: no curves".into()]);
        assert!(text.contains("[`comparison.png`](comparison.png): 2 rows"), "{text}");
        assert!(text.contains("- trial 1: no curves"), "{text}");
    }
}
