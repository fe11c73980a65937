//! `spatiallock plan FILE [--json]`: expand a grid and show its trials and jobs.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::Value;
use spatiallock_protocol::expand::{expand, Plan};
use spatiallock_protocol::spec::ExperimentSpec;

/// Arguments of `plan`.
#[derive(Args)]
pub struct PlanArgs {
    /// The experiment spec (YAML or JSON).
    pub file: PathBuf,
    /// Print the whole plan (trials with full configs, jobs with payloads) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Loads, expands and prints.
pub fn run(args: &PlanArgs) -> anyhow::Result<()> {
    let spec = ExperimentSpec::load(&args.file).with_context(|| format!("{}", args.file.display()))?;
    let plan = expand(&spec).with_context(|| format!("{}", args.file.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", render(&plan));
    }
    Ok(())
}

fn short(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn fmt_num(x: Option<f64>) -> String {
    x.map(|v| format!("{v}")).unwrap_or_else(|| "-".into())
}

/// Lays rows out in aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::from(" ");
        for (cell, w) in cells.iter().zip(&widths) {
            s.push_str(&format!(" {cell:<w$} "));
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

/// The human-readable plan.
pub fn render(plan: &Plan) -> String {
    use spatiallock_protocol::expand::JobKind::*;
    let kinds: Vec<String> = [Pretrain, Train, TrainDetector, Evaluate, Noop]
        .into_iter()
        .filter(|k| *k != Noop || plan.count(Noop) > 0)
        .map(|k| format!("{} {}", plan.count(k), k.as_str()))
        .collect();
    let mut out = format!(
        "experiment {}: {} trial{}, {} jobs ({}); priority {}, max_attempts {}\n",
        plan.name,
        plan.trials.len(),
        if plan.trials.len() == 1 { "" } else { "s" },
        plan.jobs.len(),
        kinds.join(", "),
        plan.priority,
        plan.max_attempts,
    );
    for axis in &plan.axes {
        let values: Vec<String> = axis.values.iter().map(short).collect();
        out.push_str(&format!(
            "axis {} ({}): {}\n",
            axis.name,
            axis.source,
            values.join(" | ")
        ));
    }

    out.push_str("\ntrials\n");
    let mut header: Vec<&str> = vec!["#"];
    header.extend(plan.axes.iter().map(|a| a.name.as_str()));
    header.extend(["seed", "model from", "evaluations", "paper FID/mAP/AP50/AP75/s"]);
    let rows: Vec<Vec<String>> = plan
        .trials
        .iter()
        .map(|t| {
            let mut row = vec![t.index.to_string()];
            row.extend(
                plan.axes
                    .iter()
                    .map(|a| t.axes.get(&a.name).map(short).unwrap_or_default()),
            );
            row.push(t.config.seed.to_string());
            row.push(t.model_job.clone().unwrap_or_else(|| "base weights".into()));
            row.push(t.eval_jobs.join(", "));
            row.push(
                t.reference
                    .map(|r| {
                        [r.fid, r.map, r.ap50, r.ap75, r.infer_s]
                            .iter()
                            .map(|x| fmt_num(*x))
                            .collect::<Vec<_>>()
                            .join("/")
                    })
                    .unwrap_or_else(|| "-".into()),
            );
            row
        })
        .collect();
    out.push_str(&table(&header, &rows));

    out.push_str("\njobs (dependencies first)\n");
    let rows: Vec<Vec<String>> = plan
        .jobs
        .iter()
        .map(|j| {
            let trials: Vec<String> = j.trials.iter().map(|t| t.to_string()).collect();
            vec![
                j.id.clone(),
                j.kind.as_str().to_string(),
                if j.depends_on.is_empty() {
                    "-".into()
                } else {
                    j.depends_on.join(", ")
                },
                trials.join(","),
                j.label.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&["job", "kind", "after", "trials", "what"], &rows));

    if !plan.warnings.is_empty() {
        out.push_str("\nwarnings\n");
        for w in &plan.warnings {
            out.push_str(&format!("  - {w}\n"));
        }
    }
    out
}
