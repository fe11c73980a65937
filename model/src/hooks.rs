//! What a running job reports, and how it is asked to stop: the [`Hooks`] a job runs with.
//! Training, detector training and evaluation call them after every step or batch; the worker
//! forwards them to the coordinator, `spatiallock train` / `evaluate` draw progress and write
//! JSONL, tests record them. A stop request is answered by ending with
//! [`ModelError::Stopped`](crate::error::ModelError::Stopped), after a checkpoint when training.

use std::path::Path;

use serde::Serialize;

/// What one optimiser step reports.
#[derive(Debug, Clone, Serialize)]
pub struct StepMetrics {
    /// The step just completed (1-based).
    pub step: u64,
    /// The combined loss.
    pub loss: f64,
    /// ε-prediction MSE.
    pub loss_diffusion: f64,
    /// PoG loss (classification + regression), when PoG is on.
    pub loss_perception: Option<f64>,
    /// λg = exp(−s_g) (or the fixed weight).
    pub lambda_g: f64,
    /// λp = exp(−s_p) (or the fixed weight).
    pub lambda_p: f64,
    /// Mean |tanh(α)| over every grounding gate.
    pub gate_mean: f64,
    /// tanh(α) of each gate, by parameter name.
    pub gates: Vec<(String, f64)>,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Training throughput since the run (or its resume) started, in images per second.
    pub images_per_second: f64,
    /// Wall time of this optimiser step on this rank, in seconds (forward, backward, gradient
    /// all-reduce and update).
    pub step_seconds: f64,
    /// Wall time of this step's gradient all-reduce on this rank, in seconds (0 with one rank).
    pub allreduce_seconds: f64,
    /// Gradient bytes this rank all-reduced in this step: the sum of its flat buckets' sizes
    /// (0 with one rank).
    pub allreduce_bytes: u64,
}

/// The caller's side of a running job.
pub trait Hooks {
    /// A metric point: `name` (base units: seconds, images/s…), the training step it belongs to
    /// (0 for one-off results), its value.
    fn metric(&mut self, name: &str, step: u64, value: f64);

    /// A training step finished. The default reports it with [`report_step`].
    fn train_step(&mut self, m: &StepMetrics) {
        report_step(self, m);
    }

    /// Every rank's own step, rank 0's too: called on every rank of a data-parallel group
    /// (before [`Hooks::train_step`], which rank 0 alone gets) with the rank's number in the
    /// group, for per-rank timings ([`StepMetrics::step_seconds`],
    /// [`StepMetrics::allreduce_seconds`], [`StepMetrics::allreduce_bytes`]). Default: nothing.
    fn rank_step(&mut self, rank: usize, m: &StepMetrics) {
        let _ = (rank, m);
    }

    /// The checkpoint after `step` is completely written in `dir`: a retry may resume from it.
    fn checkpoint_committed(&mut self, step: u64, dir: &Path);

    /// A line for the job's log.
    fn log(&mut self, line: &str);

    /// Whether the job must stop now (cancel, lease loss, shutdown).
    fn should_stop(&mut self) -> bool;
}

/// Reports each field of a training step as a metric: `step`, `loss`, `loss_diffusion`,
/// `loss_perception` with `lambda_g` and `lambda_p` (when PoG is on), `gate_mean` (when there are
/// grounding gates), `lr`, `grad_norm`, `images_per_second`.
pub fn report_step<H: Hooks + ?Sized>(hooks: &mut H, m: &StepMetrics) {
    let s = m.step;
    hooks.metric("step", s, s as f64);
    hooks.metric("loss", s, m.loss);
    hooks.metric("loss_diffusion", s, m.loss_diffusion);
    if let Some(lp) = m.loss_perception {
        hooks.metric("loss_perception", s, lp);
        hooks.metric("lambda_g", s, m.lambda_g);
        hooks.metric("lambda_p", s, m.lambda_p);
    }
    if !m.gates.is_empty() {
        hooks.metric("gate_mean", s, m.gate_mean);
    }
    hooks.metric("lr", s, m.lr);
    hooks.metric("grad_norm", s, m.grad_norm);
    hooks.metric("images_per_second", s, m.images_per_second);
}

/// Hooks that record nothing and never stop (library callers and tests that only want the result).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl Hooks for NoHooks {
    fn metric(&mut self, _: &str, _: u64, _: f64) {}
    fn checkpoint_committed(&mut self, _: u64, _: &Path) {}
    fn log(&mut self, _: &str) {}
    fn should_stop(&mut self) -> bool {
        false
    }
}
