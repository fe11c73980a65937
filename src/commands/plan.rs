//! `spatiallock plan FILE [--json]`: expand a grid and show its trials, its jobs with what each
//! costs (steps, images generated, sampler steps, an estimated time; the model is
//! `spatiallock_protocol::cost`), and the warnings expansion found.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::Value;
use spatiallock_protocol::cost::{
    format_duration, plan_cost, JobCost, PlanCost, INFER_FLOP_PER_CORE_SECOND, TRAIN_FLOP_PER_CORE_SECOND,
};
use spatiallock_protocol::expand::{expand, JobKind, Plan};
use spatiallock_protocol::spec::ExperimentSpec;

/// Arguments of `plan`.
#[derive(Args)]
pub struct PlanArgs {
    /// The experiment spec (YAML or JSON).
    pub file: PathBuf,
    /// Print the whole plan as JSON: trials with full configs, jobs with payloads, warnings, and
    /// `cost` (per job: steps, images generated, sampler steps, TFLOP, estimated seconds; the
    /// sums and the rates they assume).
    #[arg(long)]
    pub json: bool,
}

/// Loads, expands and prints.
pub fn run(args: &PlanArgs) -> anyhow::Result<()> {
    let spec = ExperimentSpec::load(&args.file).with_context(|| format!("{}", args.file.display()))?;
    let plan = expand(&spec).with_context(|| format!("{}", args.file.display()))?;
    if args.json {
        let mut value = serde_json::to_value(&plan)?;
        if let Value::Object(fields) = &mut value {
            fields.insert("cost".into(), serde_json::to_value(plan_cost(&plan))?);
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
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
    let kinds: Vec<String> = JobKind::ALL
        .into_iter()
        .filter(|k| !matches!(k, Noop | AugmentDetector) || plan.count(*k) > 0)
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

    let cost = plan_cost(plan);
    out.push_str("\njobs (dependencies first; times are estimates, see below)\n");
    let rows: Vec<Vec<String>> = plan
        .jobs
        .iter()
        .zip(&cost.jobs)
        .map(|(j, c)| {
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
                steps_cell(c),
                images_cell(c),
                if matches!(c.kind, JobKind::Evaluate | JobKind::AugmentDetector) {
                    c.sampler_steps.to_string()
                } else {
                    "-".into()
                },
                time_cell(c),
                j.label.clone(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "job",
            "kind",
            "after",
            "trials",
            "steps×batch",
            "images",
            "DDIM",
            "est. time",
            "what",
        ],
        &rows,
    ));
    out.push_str(&cost_summary(&cost));

    if !plan.warnings.is_empty() {
        out.push_str("\nwarnings\n");
        for w in &plan.warnings {
            out.push_str(&format!("  - {w}\n"));
        }
    }
    out
}

/// `300×16` for a training job, `-` for others.
fn steps_cell(c: &JobCost) -> String {
    if c.steps == 0 {
        "-".into()
    } else {
        format!("{}×{}", c.steps, c.batch_size)
    }
}

/// Images an evaluation generates: `32`, or `64 (32×2)` with several per layout; `?` when its
/// layouts are counted only once the dataset is read. A detector augmentation's synthetic images.
fn images_cell(c: &JobCost) -> String {
    match c.kind {
        JobKind::Evaluate => {}
        JobKind::AugmentDetector => return c.images_generated.map_or_else(|| "?".into(), |n| n.to_string()),
        _ => return "-".into(),
    }
    match (c.images_generated, c.layouts) {
        (Some(images), Some(layouts)) if images != layouts => {
            format!("{images} ({layouts}×{})", images / layouts.max(1))
        }
        (Some(images), _) => images.to_string(),
        _ => "?".into(),
    }
}

/// The estimated time, with the ranks a multi-rank job runs on.
fn time_cell(c: &JobCost) -> String {
    match c.seconds {
        None => "?".into(),
        Some(s) if c.ranks > 1 => format!("{} on {} ranks", format_duration(s), c.ranks),
        Some(s) => format_duration(s),
    }
}

/// The plan's total time, what it assumes, and what it leaves out.
fn cost_summary(cost: &PlanCost) -> String {
    let mut out = format!(
        "estimated time: {} with the jobs one after another; at best {} with every job on cores of its own \
         (the longest chain of dependent jobs); {:.1} TFLOP in all\n",
        format_duration(cost.sequential_seconds),
        format_duration(cost.critical_path_seconds),
        cost.tflop
    );
    out.push_str(&format!(
        "  an estimate for one CPU core per rank at rates measured with the tiny model (training {:.0} GFLOP/s, \
         sampling and scoring {:.0} GFLOP/s), scaled by each job's FLOP; on a device sustaining F TFLOP/s the \
         training takes about {:.2}/F and the sampling {:.2}/F of these times (no GPU has been measured here); \
         read it to within about 2×; not counted: start-up, encoder caches filled on first use, VAE and text \
         encoding, checkpoints\n",
        TRAIN_FLOP_PER_CORE_SECOND / 1e9,
        INFER_FLOP_PER_CORE_SECOND / 1e9,
        TRAIN_FLOP_PER_CORE_SECOND / 1e12,
        INFER_FLOP_PER_CORE_SECOND / 1e12,
    ));
    if !cost.unknown.is_empty() {
        out.push_str(&format!(
            "  not in these sums: {} (its layouts are counted only when the dataset's files are read; set \
             eval.max_layouts to bound it)\n",
            cost.unknown.join(", ")
        ));
    }
    out
}
