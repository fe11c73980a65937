//! `spatiallock logs TRIAL|JOB`: one section per job of a trial (dependencies first) or for one
//! job: a header (job, kind, state, attempt, description), why its attempts failed, then the
//! last lines of its latest attempt's log.

use spatiallock_protocol::api::{JobLog, JobState};
use spatiallock_worker::{ClientError, CoordinatorClient};

/// Whether `id` names a trial (`<experiment>.<index>`) rather than a job
/// (`<experiment>.<kind>-<hash>`).
pub fn is_trial_id(id: &str) -> bool {
    id.split_once('.')
        .is_some_and(|(_, rest)| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
}

/// One job's logs as the trial endpoint gives them, read from the job's own endpoints.
///
/// Errors: the coordinator's (404 naming an unknown job).
pub async fn job_log(client: &CoordinatorClient, job: &str, lines: u32) -> Result<JobLog, ClientError> {
    let view = client.job(job).await?;
    let tail = client.job_logs(job, lines).await?;
    Ok(JobLog {
        job: view.id,
        kind: view.kind,
        label: view.label,
        state: view.state,
        attempt: tail.attempt,
        last_error: view.last_error,
        attempts: view.attempts,
        lines: tail.lines,
    })
}

/// Prints the logs of every job of trial `id`, or of job `id`: the last `lines` lines of each
/// job's latest attempt, after why its attempts failed.
///
/// Errors: the coordinator's (404 naming an unknown trial or job).
pub async fn print(client: &CoordinatorClient, id: &str, lines: u32) -> anyhow::Result<()> {
    let jobs = if is_trial_id(id) {
        client.trial_logs(id, lines).await?.jobs
    } else {
        vec![job_log(client, id, lines).await?]
    };
    let sections: Vec<String> = jobs.iter().map(section).collect();
    print!("{}", sections.join("\n"));
    Ok(())
}

/// One job's section: `== <job>  <kind>  <state>  attempt <n>  <description>`, a line per
/// attempt that ended with an error (`attempt 2 failed-app: …`), the job's own reason when no
/// attempt gave it (a dependency failed), then the log lines.
pub fn section(job: &JobLog) -> String {
    let mut out = format!(
        "== {}  {}  {}  attempt {}  {}\n",
        job.job,
        job.kind.as_str(),
        job.state.as_str(),
        job.attempt,
        job.label
    );
    for a in &job.attempts {
        if let Some(error) = &a.error {
            out.push_str(&format!("attempt {} {}: {error}\n", a.attempt, a.outcome));
        }
    }
    if let Some(reason) = &job.last_error {
        let told = job
            .attempts
            .iter()
            .any(|a| a.error.as_deref().is_some_and(|e| reason.ends_with(e)));
        if !told && matches!(job.state, JobState::Failed | JobState::Cancelled) {
            out.push_str(&format!("reason: {reason}\n"));
        }
    }
    if job.lines.is_empty() {
        out.push_str(if job.attempt == 0 {
            "(not started)\n"
        } else {
            "(no log lines)\n"
        });
    }
    for line in &job.lines {
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use spatiallock_protocol::api::AttemptView;
    use spatiallock_protocol::JobKind;

    use super::*;

    fn attempt(n: u64, outcome: &str, error: Option<&str>) -> AttemptView {
        AttemptView {
            attempt: n,
            worker: "w".into(),
            started_at_ms: 0,
            ended_at_ms: Some(1),
            outcome: outcome.into(),
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn trials_and_jobs_are_told_apart() {
        assert!(is_trial_id("exp-0123abcd.0") && is_trial_id("exp-0123abcd.12"));
        assert!(!is_trial_id("exp-0123abcd.train-00ff00ff00ff00ff"));
        assert!(!is_trial_id("exp-0123abcd.") && !is_trial_id("exp-0123abcd"));
    }

    #[test]
    fn a_section_says_why_before_the_lines() {
        let failed = JobLog {
            job: "exp-1.evaluate-ab".into(),
            kind: JobKind::Evaluate,
            label: "evaluate trial 0 on coco:val".into(),
            state: JobState::Failed,
            attempt: 2,
            last_error: Some("attempt 2 (app): /data/val.json: No such file or directory (os error 2)".into()),
            attempts: vec![
                attempt(1, "lost", Some("lease expired")),
                attempt(
                    2,
                    "failed-app",
                    Some("/data/val.json: No such file or directory (os error 2)"),
                ),
            ],
            lines: vec!["attempt 2 on Cpu".into()],
        };
        assert_eq!(
            section(&failed),
            "== exp-1.evaluate-ab  evaluate  failed  attempt 2  evaluate trial 0 on coco:val\n\
             attempt 1 lost: lease expired\n\
             attempt 2 failed-app: /data/val.json: No such file or directory (os error 2)\n\
             attempt 2 on Cpu\n"
        );
        let never_ran = JobLog {
            job: "exp-1.evaluate-cd".into(),
            kind: JobKind::Evaluate,
            label: "evaluate trial 1 on coco:val".into(),
            state: JobState::Failed,
            attempt: 0,
            last_error: Some("dependency `exp-1.train-ef` failed".into()),
            attempts: Vec::new(),
            lines: Vec::new(),
        };
        let text = section(&never_ran);
        assert!(
            text.ends_with("reason: dependency `exp-1.train-ef` failed\n(not started)\n"),
            "{text}"
        );
    }
}
