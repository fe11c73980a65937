//! `spatiallock resume EXPERIMENT`: requeues an experiment's cancelled and failed jobs, each
//! continuing from its last committed checkpoint (a cancelled training job commits one as it
//! stops); and the hints that point to it from `submit` and `retry-failed`.

use spatiallock_protocol::api::{JobState, JobView};
use spatiallock_protocol::JobKind;
use spatiallock_worker::{ClientError, CoordinatorClient};

/// Requeues experiment `id`'s cancelled and failed jobs and prints how many, and from which
/// step each training job continues.
///
/// Errors: the coordinator's (404 naming an unknown experiment).
pub async fn resume(client: &CoordinatorClient, id: &str) -> anyhow::Result<()> {
    let before = client.jobs(id).await?;
    let changed = client.retry_failed(id, true).await?;
    print!("{}", resumed_text(id, changed.jobs, &before));
    Ok(())
}

/// What `resume` prints: the count, then a line per training job that was requeued, with the
/// step it continues from (`jobs` as they were before the requeue).
pub fn resumed_text(id: &str, requeued: u64, jobs: &[JobView]) -> String {
    if requeued == 0 {
        return format!("nothing to resume: no job of {id} is cancelled or failed\n");
    }
    let mut out = format!("{requeued} job(s) of {id} requeued\n");
    let stopped = |j: &&JobView| matches!(j.state, JobState::Cancelled | JobState::Failed);
    let training = jobs
        .iter()
        .filter(stopped)
        .filter(|j| matches!(j.kind, JobKind::Pretrain | JobKind::Train));
    for job in training {
        out.push_str(&match &job.checkpoint {
            Some(c) => format!(
                "{} ({}): continues from step {} ({})\n",
                job.id, job.label, c.step, c.uri
            ),
            None => format!(
                "{} ({}): starts from step 0 (no checkpoint committed)\n",
                job.id, job.label
            ),
        });
    }
    out
}

/// After `retry-failed` requeued `requeued` jobs of experiment `id`: when it requeued none but
/// some are cancelled, the line that says `spatiallock resume` requeues those (`None`
/// otherwise).
///
/// Errors: the coordinator's.
pub async fn after_retry_failed(
    client: &CoordinatorClient,
    id: &str,
    requeued: u64,
) -> Result<Option<String>, ClientError> {
    if requeued > 0 {
        return Ok(None);
    }
    let exp = client.experiment(id).await?;
    Ok(exp.jobs.get(JobState::Cancelled.as_str()).filter(|n| **n > 0).map(|n| {
        format!(
            "{n} job(s) of {id} are cancelled, not failed: `spatiallock resume {id}` requeues them from \
             their last checkpoints"
        )
    }))
}

/// For a grid submitted before (`submit` answered "already submitted"): when its experiment is
/// cancelled or failed, the line that says `spatiallock resume` continues it (`None`
/// otherwise).
///
/// Errors: the coordinator's.
pub async fn after_resubmit(client: &CoordinatorClient, id: &str) -> Result<Option<String>, ClientError> {
    let exp = client.experiment(id).await?;
    Ok(matches!(exp.state.as_str(), "cancelled" | "failed").then(|| {
        format!(
            "{id} is {}: `spatiallock resume {id}` requeues its cancelled and failed jobs from their last \
             checkpoints",
            exp.state
        )
    }))
}

#[cfg(test)]
mod tests {
    use spatiallock_protocol::api::CheckpointRef;

    use super::*;

    fn job(key: &str, kind: JobKind, state: JobState, step: Option<u64>) -> JobView {
        let mut view: JobView = serde_json::from_value(serde_json::json!({
            "id": format!("exp-1.{key}"), "experiment_id": "exp-1", "kind": kind, "label": key,
            "state": state, "priority": 0, "attempt": 1, "spent_attempts": 0, "max_attempts": 3,
            "depends_on": [], "trials": [0], "last_error": null, "checkpoint": null, "output": null,
        }))
        .expect("a job view");
        view.checkpoint = step.map(|step| CheckpointRef {
            step,
            uri: format!("file:///runs/{key}/step-{step}"),
        });
        view
    }

    #[test]
    fn resume_says_where_each_training_job_continues() {
        let jobs = [
            job("pretrain-a", JobKind::Pretrain, JobState::Succeeded, Some(6)),
            job("train-b", JobKind::Train, JobState::Cancelled, Some(210)),
            job("train-c", JobKind::Train, JobState::Failed, None),
            job("evaluate-d", JobKind::Evaluate, JobState::Cancelled, None),
        ];
        assert_eq!(
            resumed_text("exp-1", 3, &jobs),
            "3 job(s) of exp-1 requeued\n\
             exp-1.train-b (train-b): continues from step 210 (file:///runs/train-b/step-210)\n\
             exp-1.train-c (train-c): starts from step 0 (no checkpoint committed)\n"
        );
        assert!(resumed_text("exp-1", 0, &jobs).starts_with("nothing to resume"));
    }
}
