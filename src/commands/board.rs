//! A live view of an experiment's jobs: one progress line per job and a summary, redrawn in
//! place on a terminal, printed as changes otherwise.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use spatiallock_protocol::api::{ExperimentView, JobState, JobView};
use spatiallock_worker::{ClientError, CoordinatorClient};

/// The view's state between refreshes.
pub struct Board {
    experiment: String,
    tty: bool,
    drawn: usize,
    totals: HashMap<String, Option<u64>>,
    states: HashMap<String, JobState>,
    last_print: Instant,
    started: Instant,
}

fn total_steps(job: &JobView) -> Option<u64> {
    let p = job.payload.as_ref()?;
    let steps = p
        .pointer("/pretrain/steps")
        .or_else(|| p.pointer("/training/steps"))
        .or_else(|| p.get("steps"))?;
    steps.as_u64()
}

fn bar(done: u64, total: u64) -> String {
    let width = 20usize;
    let filled = ((done as f64 / total.max(1) as f64) * width as f64).round() as usize;
    let filled = filled.min(width);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

fn symbol(s: JobState) -> &'static str {
    match s {
        JobState::Blocked => "·",
        JobState::Queued => "…",
        JobState::Running => "▶",
        JobState::Succeeded => "✓",
        JobState::Failed => "✗",
        JobState::Cancelled => "⊘",
    }
}

impl Board {
    /// A board for one experiment.
    pub fn new(experiment: &str) -> Board {
        Board {
            experiment: experiment.to_string(),
            tty: std::io::stderr().is_terminal(),
            drawn: 0,
            totals: HashMap::new(),
            states: HashMap::new(),
            last_print: Instant::now(),
            started: Instant::now(),
        }
    }

    fn line(&self, job: &JobView) -> String {
        let mut s = format!("  {} {:<9} {}", symbol(job.state), job.state.as_str(), job.label);
        let step = job.latest.get("step").copied().map(|v| v as u64);
        let total = self.totals.get(&job.id).copied().flatten();
        match (step, total) {
            (Some(done), Some(total)) => s.push_str(&format!("  {} {done}/{total}", bar(done, total))),
            _ => {
                if let (Some(d), Some(t)) = (job.latest.get("layouts_done"), job.latest.get("layouts_total")) {
                    s.push_str(&format!("  {} {d}/{t} layouts", bar(*d as u64, *t as u64)));
                }
            }
        }
        let m = &job.latest;
        match (m.get("loss_diffusion"), m.get("loss")) {
            (Some(lg), _) => s.push_str(&format!("  Lg {lg:.4}")),
            (None, Some(l)) => s.push_str(&format!("  loss {l:.4}")),
            _ => {}
        }
        if let Some(lp) = m.get("loss_perception") {
            s.push_str(&format!("  Lp {lp:.4}"));
        }
        if let Some(map) = m.get("map") {
            s.push_str(&format!("  mAP {map:.2}"));
        }
        if job.state == JobState::Failed {
            if let Some(e) = &job.last_error {
                s.push_str(&format!("\n      {e}"));
            }
        }
        if let Some(why) = &job.waiting {
            s.push_str(&format!("\n      waiting: {why}"));
        }
        s
    }

    fn summary(&self, exp: &ExperimentView) -> String {
        let counts: Vec<String> = exp.jobs.iter().map(|(s, n)| format!("{n} {s}")).collect();
        let t = self.started.elapsed().as_secs();
        format!(
            "{} ({}): {} — jobs: {} — {}m{:02}s",
            exp.name,
            exp.id,
            exp.state,
            counts.join(", "),
            t / 60,
            t % 60
        )
    }

    /// Fetches and shows the current state; returns the experiment.
    pub async fn refresh(&mut self, client: &CoordinatorClient) -> Result<(ExperimentView, Vec<JobView>), ClientError> {
        let exp = client.experiment(&self.experiment).await?;
        let jobs = client.jobs(&self.experiment).await?;
        for job in &jobs {
            if !self.totals.contains_key(&job.id) {
                let full = client.job(&job.id).await?;
                self.totals.insert(job.id.clone(), total_steps(&full));
            }
        }
        let mut err = std::io::stderr();
        if self.tty {
            let mut text = String::new();
            if self.drawn > 0 {
                text.push_str(&format!("\x1b[{}A\x1b[J", self.drawn));
            }
            let mut lines = vec![self.summary(&exp)];
            lines.extend(jobs.iter().map(|j| self.line(j)));
            let body = lines.join("\n");
            self.drawn = body.lines().count();
            text.push_str(&body);
            text.push('\n');
            let _ = err.write_all(text.as_bytes());
        } else {
            let mut changed = Vec::new();
            for job in &jobs {
                if self.states.get(&job.id) != Some(&job.state) {
                    changed.push(self.line(job));
                }
            }
            let periodic = self.last_print.elapsed() > Duration::from_secs(30);
            if !changed.is_empty() || periodic {
                let _ = writeln!(err, "{}", self.summary(&exp));
                for l in changed {
                    let _ = writeln!(err, "{l}");
                }
                if periodic {
                    for job in jobs.iter().filter(|j| j.state == JobState::Running) {
                        let _ = writeln!(err, "{}", self.line(job));
                    }
                }
                self.last_print = Instant::now();
            }
        }
        self.states = jobs.iter().map(|j| (j.id.clone(), j.state)).collect();
        Ok((exp, jobs))
    }
}

/// Where the results of an experiment's evaluations are (job label → output folder).
pub fn result_locations(jobs: &[JobView]) -> BTreeMap<String, String> {
    jobs.iter()
        .filter(|j| j.kind == spatiallock_protocol::JobKind::Evaluate)
        .filter_map(|j| {
            let out = j.output.as_ref()?.trim_start_matches("file://").to_string();
            Some((j.label.clone(), out))
        })
        .collect()
}
