//! A view of an experiment's jobs: a summary line (state, job counts, elapsed time, ETA) and
//! one line per job (state, progress, elapsed time, rate, ETA, current losses).
//! `spatiallock status EXP` prints it once on stdout; `status --watch` and `spatiallock run`
//! redraw it on stderr as it changes (in place on a terminal, as changes otherwise).
//!
//! Times come from the coordinator: the experiment's submission time and each job's current
//! attempt (its start and end), so they mean the same whoever looks and whenever.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use spatiallock_protocol::api::{ExperimentView, JobState, JobView};
use spatiallock_worker::{ClientError, CoordinatorClient};

/// How far a job has come at a moment: `done` units (training steps, layouts) at `at_ms`
/// (milliseconds since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// When.
    pub at_ms: i64,
    /// Units done by then.
    pub done: u64,
}

/// What a job's detail view (`GET /v1/jobs/{id}`) adds to its list view: its total steps and
/// its current attempt's times. Read again whenever the job's state or attempt changes.
#[derive(Debug, Clone, PartialEq)]
struct JobDetail {
    /// The list view's state when this was read.
    state: JobState,
    /// The list view's attempt when this was read.
    attempt: u64,
    /// Training steps in all (pretrain, train, train-detector jobs).
    total_steps: Option<u64>,
    /// When the current attempt started.
    started_at_ms: Option<i64>,
    /// When it ended.
    ended_at_ms: Option<i64>,
}

impl JobDetail {
    fn of(list_view: &JobView, full: &JobView) -> JobDetail {
        let current = full
            .attempts
            .iter()
            .find(|a| a.attempt == full.attempt)
            .or_else(|| full.attempts.iter().max_by_key(|a| a.attempt));
        JobDetail {
            state: list_view.state,
            attempt: list_view.attempt,
            total_steps: total_steps(full),
            started_at_ms: current.map(|a| a.started_at_ms),
            ended_at_ms: current.and_then(|a| a.ended_at_ms),
        }
    }
}

/// The view's state between refreshes.
pub struct Board {
    experiment: String,
    tty: bool,
    drawn: usize,
    details: HashMap<String, JobDetail>,
    /// Each running job's progress when first seen in its current attempt (attempt, progress):
    /// the start of a measured rate while watching.
    first_seen: HashMap<String, (u64, Progress)>,
    states: HashMap<String, JobState>,
    last_print: Instant,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn total_steps(job: &JobView) -> Option<u64> {
    let p = job.payload.as_ref()?;
    let steps = p
        .pointer("/pretrain/steps")
        .or_else(|| p.pointer("/training/steps"))
        .or_else(|| p.get("steps"))
        // An augment-detector job: the augmented detector's training.
        .or_else(|| p.pointer("/detector/steps"))?;
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

/// Whether a job in state `s` has yet to finish.
fn unfinished(s: JobState) -> bool {
    matches!(s, JobState::Blocked | JobState::Queued | JobState::Running)
}

/// A duration for people: `42s`, `3m 05s`, `2h 07m` (negative durations read as zero).
pub fn duration_text(ms: i64) -> String {
    // Whole seconds elapsed (not rounded up), written as `plan` writes its estimates.
    spatiallock_protocol::cost::format_duration((ms.max(0) / 1000) as f64)
}

/// Units per second between two observations of a job; `None` when they are less than a
/// second apart or the count went backwards (a restart from an earlier checkpoint).
pub fn rate_per_second(from: Progress, to: Progress) -> Option<f64> {
    let dt_ms = to.at_ms - from.at_ms;
    if dt_ms < 1000 || to.done < from.done {
        return None;
    }
    Some((to.done - from.done) as f64 * 1000.0 / dt_ms as f64)
}

/// Milliseconds until `total` units are done, from `done` at `per_second`; zero when done,
/// `None` when nothing moves (a zero or unknown rate).
pub fn eta_ms(done: u64, total: u64, per_second: f64) -> Option<i64> {
    if done >= total {
        return Some(0);
    }
    if !(per_second.is_finite() && per_second > 0.0) {
        return None;
    }
    Some(((total - done) as f64 / per_second * 1000.0).round() as i64)
}

/// An experiment's elapsed time: from its submission to now while it runs, to its last job's
/// end once it has finished (`last_end_ms`); `None` for a finished experiment none of whose
/// jobs ever ran (cancelled while queued: it has no end to measure to).
pub fn experiment_elapsed_ms(created_at_ms: i64, finished: bool, last_end_ms: Option<i64>, now_ms: i64) -> Option<i64> {
    let end = if finished { last_end_ms? } else { now_ms };
    Some((end - created_at_ms).max(0))
}

/// When an unfinished experiment will end, from its jobs' states and ETAs: the latest of its
/// running jobs' ETAs when every unfinished job is running with a known ETA; `None` (unknown)
/// while any job waits to start (its duration is unknown) or runs at an unknown rate.
pub fn experiment_eta_ms(jobs: &[(JobState, Option<i64>)]) -> Option<i64> {
    let mut latest = 0;
    for (state, eta) in jobs {
        match state {
            JobState::Blocked | JobState::Queued => return None,
            JobState::Running => latest = latest.max((*eta)?),
            _ => {}
        }
    }
    Some(latest)
}

/// `12`, `3.4` or `0.52`: enough digits for a rate.
fn rate_text(per_second: f64) -> String {
    if per_second >= 10.0 {
        format!("{per_second:.0}")
    } else if per_second >= 1.0 {
        format!("{per_second:.1}")
    } else {
        format!("{per_second:.2}")
    }
}

/// A job's progress from its latest metrics: (done, total, unit).
fn progress_of(job: &JobView, total_steps: Option<u64>) -> Option<(u64, Option<u64>, &'static str)> {
    if let Some(step) = job.latest.get("step") {
        return Some((*step as u64, total_steps, "steps"));
    }
    if let Some(done) = job.latest.get("synthetic_done") {
        let total = job.latest.get("synthetic_total").map(|t| *t as u64);
        return Some((*done as u64, total, "images"));
    }
    let done = job.latest.get("layouts_done")?;
    let total = job.latest.get("layouts_total").map(|t| *t as u64);
    Some((*done as u64, total, "layouts"))
}

/// One job's timing as shown: elapsed time of its current attempt, rate, ETA.
struct JobTiming {
    elapsed_ms: Option<i64>,
    rate: Option<(f64, &'static str)>,
    eta_ms: Option<i64>,
}

impl Board {
    /// A board for one experiment (its id).
    pub fn new(experiment: &str) -> Board {
        Board {
            experiment: experiment.to_string(),
            tty: std::io::stderr().is_terminal(),
            drawn: 0,
            details: HashMap::new(),
            first_seen: HashMap::new(),
            states: HashMap::new(),
            last_print: Instant::now(),
        }
    }

    fn timing(&self, job: &JobView, now_ms: i64) -> JobTiming {
        let detail = self.details.get(&job.id);
        let started = detail.and_then(|d| d.started_at_ms);
        let elapsed_ms = match job.state {
            JobState::Running => started.map(|s| now_ms - s),
            JobState::Succeeded | JobState::Failed | JobState::Cancelled => {
                match (started, detail.and_then(|d| d.ended_at_ms)) {
                    (Some(s), Some(e)) => Some(e - s),
                    _ => None,
                }
            }
            JobState::Blocked | JobState::Queued => None,
        };
        let mut timing = JobTiming {
            elapsed_ms,
            rate: None,
            eta_ms: None,
        };
        if job.state != JobState::Running {
            return timing;
        }
        let Some((done, total, unit)) = progress_of(job, detail.and_then(|d| d.total_steps)) else {
            return timing;
        };
        let now = Progress { at_ms: now_ms, done };
        // While watching: since this attempt was first seen, once that is a while ago.
        let watched = self
            .first_seen
            .get(&job.id)
            .filter(|(attempt, first)| *attempt == job.attempt && now_ms - first.at_ms >= 5_000)
            .and_then(|(_, first)| rate_per_second(*first, now))
            .filter(|r| *r > 0.0);
        // A first attempt started from nothing when it started.
        let since_start = || {
            let start = started.filter(|_| job.attempt == 1)?;
            rate_per_second(Progress { at_ms: start, done: 0 }, now)
        };
        timing.rate = watched.or_else(since_start).map(|r| (r, unit));
        if let (Some(total), Some((r, _))) = (total, timing.rate) {
            timing.eta_ms = eta_ms(done, total, r);
        }
        timing
    }

    fn line(&self, job: &JobView, now_ms: i64) -> String {
        let mut s = format!("  {} {:<9} {}", symbol(job.state), job.state.as_str(), job.label);
        let total_steps = self.details.get(&job.id).and_then(|d| d.total_steps);
        match progress_of(job, total_steps) {
            Some((done, Some(total), "steps")) => s.push_str(&format!("  {} {done}/{total}", bar(done, total))),
            Some((done, Some(total), unit)) => s.push_str(&format!("  {} {done}/{total} {unit}", bar(done, total))),
            _ => {}
        }
        let timing = self.timing(job, now_ms);
        if let Some(e) = timing.elapsed_ms {
            s.push_str(&format!("  {}", duration_text(e)));
        }
        if let Some((r, unit)) = timing.rate {
            s.push_str(&format!("  {} {unit}/s", rate_text(r)));
        }
        if job.state == JobState::Running && progress_of(job, total_steps).is_some() {
            match timing.eta_ms {
                Some(eta) => s.push_str(&format!("  ETA {}", duration_text(eta))),
                None => s.push_str("  ETA unknown"),
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

    fn summary(&self, exp: &ExperimentView, jobs: &[JobView], now_ms: i64) -> String {
        let counts: Vec<String> = exp.jobs.iter().map(|(s, n)| format!("{n} {s}")).collect();
        let finished = !matches!(exp.state.as_str(), "queued" | "running");
        let last_end = self.details.values().filter_map(|d| d.ended_at_ms).max();
        let elapsed = experiment_elapsed_ms(exp.created_at_ms, finished, last_end, now_ms);
        let mut s = format!(
            "{} ({}): {} — jobs: {} — elapsed {}",
            exp.name,
            exp.id,
            exp.state,
            counts.join(", "),
            elapsed.map_or_else(|| "–".to_string(), duration_text)
        );
        if !finished {
            let etas: Vec<(JobState, Option<i64>)> = jobs
                .iter()
                .filter(|j| unfinished(j.state))
                .map(|j| (j.state, self.timing(j, now_ms).eta_ms))
                .collect();
            match experiment_eta_ms(&etas) {
                Some(eta) => s.push_str(&format!(" — ETA {}", duration_text(eta))),
                None => s.push_str(" — ETA unknown"),
            }
        }
        s
    }

    /// The whole view: the summary line, then one line per job (a failed job's error and a
    /// waiting job's reason on lines of their own).
    pub fn table(&self, exp: &ExperimentView, jobs: &[JobView]) -> String {
        let now = now_ms();
        let mut lines = vec![self.summary(exp, jobs, now)];
        lines.extend(jobs.iter().map(|j| self.line(j, now)));
        lines.join("\n")
    }

    /// Fetches the experiment and its jobs (a started job's details again when its state or
    /// attempt changed), without showing anything.
    ///
    /// Errors: the coordinator could not be reached or refused.
    pub async fn fetch(&mut self, client: &CoordinatorClient) -> Result<(ExperimentView, Vec<JobView>), ClientError> {
        let exp = client.experiment(&self.experiment).await?;
        let jobs = client.jobs(&self.experiment).await?;
        let now = now_ms();
        for job in &jobs {
            let stale = self
                .details
                .get(&job.id)
                .is_none_or(|d| d.state != job.state || d.attempt != job.attempt);
            if stale {
                // A job never started has no attempt times or progress to fetch: the list's
                // view is all there is (a large grid's waiting jobs cost no request each).
                let detail = if job.attempt == 0 {
                    JobDetail::of(job, job)
                } else {
                    JobDetail::of(job, &client.job(&job.id).await?)
                };
                self.details.insert(job.id.clone(), detail);
            }
            if job.state == JobState::Running {
                let total = self.details.get(&job.id).and_then(|d| d.total_steps);
                if let Some((done, _, _)) = progress_of(job, total) {
                    let seen_now = (job.attempt, Progress { at_ms: now, done });
                    let entry = self.first_seen.entry(job.id.clone()).or_insert(seen_now);
                    if entry.0 != job.attempt {
                        *entry = seen_now;
                    }
                }
            }
        }
        Ok((exp, jobs))
    }

    /// Shows the current state on stderr: redrawn in place on a terminal; otherwise the jobs
    /// whose state changed (and every 30 s the running ones).
    pub fn draw(&mut self, exp: &ExperimentView, jobs: &[JobView]) {
        let now = now_ms();
        let mut err = std::io::stderr();
        if self.tty {
            let mut text = String::new();
            if self.drawn > 0 {
                text.push_str(&format!("\x1b[{}A\x1b[J", self.drawn));
            }
            let body = self.table(exp, jobs);
            self.drawn = body.lines().count();
            text.push_str(&body);
            text.push('\n');
            let _ = err.write_all(text.as_bytes());
        } else {
            let changed: Vec<String> = jobs
                .iter()
                .filter(|j| self.states.get(&j.id) != Some(&j.state))
                .map(|j| self.line(j, now))
                .collect();
            let periodic = self.last_print.elapsed() > Duration::from_secs(30);
            if !changed.is_empty() || periodic {
                let _ = writeln!(err, "{}", self.summary(exp, jobs, now));
                for l in changed {
                    let _ = writeln!(err, "{l}");
                }
                if periodic {
                    for job in jobs.iter().filter(|j| j.state == JobState::Running) {
                        let _ = writeln!(err, "{}", self.line(job, now));
                    }
                }
                self.last_print = Instant::now();
            }
        }
        self.states = jobs.iter().map(|j| (j.id.clone(), j.state)).collect();
    }

    /// Erases what [`Board::draw`] drew in place on a terminal (before the final table goes
    /// to the same terminal on stdout).
    pub fn clear(&mut self) {
        if self.tty && self.drawn > 0 {
            let _ = std::io::stderr().write_all(format!("\x1b[{}A\x1b[J", self.drawn).as_bytes());
            self.drawn = 0;
        }
    }

    /// Fetches and shows the current state on stderr; returns the experiment and its jobs.
    ///
    /// Errors: the coordinator could not be reached or refused.
    pub async fn refresh(&mut self, client: &CoordinatorClient) -> Result<(ExperimentView, Vec<JobView>), ClientError> {
        let (exp, jobs) = self.fetch(client).await?;
        self.draw(&exp, &jobs);
        Ok((exp, jobs))
    }
}

/// The experiment list: a header, then one line per experiment (id, state, name, age, jobs by
/// state); a line saying how to submit one when there are none.
pub fn experiment_table(items: &[ExperimentView], now_ms: i64) -> String {
    if items.is_empty() {
        return "no experiments yet; submit one with `spatiallock submit FILE`".into();
    }
    let rows: Vec<[String; 5]> = items
        .iter()
        .map(|e| {
            let counts: Vec<String> = e.jobs.iter().map(|(s, n)| format!("{n} {s}")).collect();
            [
                e.id.clone(),
                e.state.clone(),
                e.name.clone(),
                format!("{} ago", duration_text(now_ms - e.created_at_ms)),
                counts.join(", "),
            ]
        })
        .collect();
    let header = ["ID", "STATE", "NAME", "SUBMITTED", "JOBS"].map(String::from);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(rows.iter()) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    std::iter::once(&header)
        .chain(rows.iter())
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .enumerate()
                .map(|(i, (cell, w))| {
                    if i + 1 == row.len() {
                        cell.clone()
                    } else {
                        format!("{cell:<w$}")
                    }
                })
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration_text(0), "0s");
        assert_eq!(duration_text(-5_000), "0s");
        assert_eq!(duration_text(42_900), "42s");
        assert_eq!(duration_text(185_000), "3m 05s");
        assert_eq!(duration_text(2 * 3_600_000 + 7 * 60_000 + 59_000), "2h 07m");
    }

    #[test]
    fn rates_need_a_second_and_forward_progress() {
        let at = |at_ms, done| Progress { at_ms, done };
        assert_eq!(rate_per_second(at(0, 0), at(10_000, 50)), Some(5.0));
        assert_eq!(rate_per_second(at(0, 10), at(500, 20)), None, "under a second");
        assert_eq!(rate_per_second(at(0, 30), at(5_000, 20)), None, "went backwards");
        assert_eq!(rate_per_second(at(0, 20), at(5_000, 20)), Some(0.0));
    }

    #[test]
    fn eta_is_the_remaining_work_at_the_rate() {
        assert_eq!(eta_ms(50, 200, 5.0), Some(30_000));
        assert_eq!(eta_ms(200, 200, 0.0), Some(0), "done needs no rate");
        assert_eq!(eta_ms(10, 200, 0.0), None, "stalled");
        assert_eq!(eta_ms(10, 200, f64::NAN), None);
    }

    #[test]
    fn elapsed_runs_from_submission_to_now_or_to_the_last_end() {
        assert_eq!(experiment_elapsed_ms(1_000, false, Some(5_000), 61_000), Some(60_000));
        assert_eq!(experiment_elapsed_ms(1_000, true, Some(5_000), 61_000), Some(4_000));
        assert_eq!(
            experiment_elapsed_ms(1_000, true, None, 61_000),
            None,
            "no job ran: nothing to measure to"
        );
        assert_eq!(
            experiment_elapsed_ms(70_000, false, None, 61_000),
            Some(0),
            "clock skew reads as zero"
        );
    }

    #[test]
    fn an_experiment_eta_is_known_only_when_every_unfinished_job_runs_with_one() {
        use JobState::*;
        assert_eq!(
            experiment_eta_ms(&[(Running, Some(10)), (Running, Some(30)), (Succeeded, None)]),
            Some(30)
        );
        assert_eq!(experiment_eta_ms(&[(Running, Some(10)), (Queued, None)]), None);
        assert_eq!(experiment_eta_ms(&[(Running, Some(10)), (Blocked, None)]), None);
        assert_eq!(experiment_eta_ms(&[(Running, None)]), None);
        assert_eq!(experiment_eta_ms(&[(Succeeded, None)]), Some(0));
    }

    fn experiment(id: &str, name: &str, created_at_ms: i64) -> ExperimentView {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": name, "state": "running", "priority": 0,
            "created_at_ms": created_at_ms, "num_trials": 3, "jobs": {"queued": 3}
        }))
        .unwrap()
    }

    #[test]
    fn the_experiment_list_has_a_header_and_says_when_it_is_empty() {
        assert_eq!(
            experiment_table(&[], 0),
            "no experiments yet; submit one with `spatiallock submit FILE`"
        );
        let table = experiment_table(&[experiment("exp-1", "noop-grid", 0)], 125_000);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2, "{table}");
        assert!(lines[0].starts_with("ID") && lines[0].contains("NAME"), "{table}");
        assert!(
            lines[1].contains("exp-1") && lines[1].contains("noop-grid") && lines[1].contains("2m 05s ago"),
            "{table}"
        );
        assert!(lines[1].ends_with("3 queued"), "{table}");
    }

    fn job(state: JobState, attempt: u64, latest: &[(&str, f64)]) -> JobView {
        let latest: BTreeMap<String, f64> = latest.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        serde_json::from_value(serde_json::json!({
            "id": "exp-1.train-1", "experiment_id": "exp-1", "kind": "train", "label": "train",
            "state": state, "priority": 0, "attempt": attempt, "spent_attempts": 0,
            "max_attempts": 3, "depends_on": [], "trials": [0], "last_error": null,
            "checkpoint": null, "output": null, "latest": latest
        }))
        .unwrap()
    }

    #[test]
    fn a_first_attempt_rate_counts_from_its_start() {
        let mut board = Board::new("exp-1");
        let running = job(JobState::Running, 1, &[("step", 50.0)]);
        board.details.insert(
            running.id.clone(),
            JobDetail {
                state: JobState::Running,
                attempt: 1,
                total_steps: Some(200),
                started_at_ms: Some(0),
                ended_at_ms: None,
            },
        );
        let t = board.timing(&running, 10_000);
        assert_eq!(t.elapsed_ms, Some(10_000));
        assert_eq!(t.rate, Some((5.0, "steps")));
        assert_eq!(t.eta_ms, Some(30_000));
        let line = board.line(&running, 10_000);
        assert!(
            line.contains("50/200") && line.contains("5.0 steps/s") && line.contains("ETA 30s"),
            "{line}"
        );

        // A later attempt resumed from a checkpoint: its rate is unknown until watched a while.
        let resumed = job(JobState::Running, 2, &[("step", 150.0)]);
        board.details.get_mut(&resumed.id).unwrap().attempt = 2;
        let t = board.timing(&resumed, 10_000);
        assert_eq!((t.rate, t.eta_ms), (None, None));
        assert!(board.line(&resumed, 10_000).contains("ETA unknown"));
        board.first_seen.insert(
            resumed.id.clone(),
            (
                2,
                Progress {
                    at_ms: 10_000,
                    done: 150,
                },
            ),
        );
        let later = job(JobState::Running, 2, &[("step", 170.0)]);
        let t = board.timing(&later, 20_000);
        assert_eq!(t.rate, Some((2.0, "steps")));
        assert_eq!(t.eta_ms, Some(15_000));
    }
}
