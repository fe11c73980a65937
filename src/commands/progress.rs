//! The CLI's hooks for the job executor: a one-line progress display on stderr (redrawn in
//! place on a terminal, a line every twentieth of the run otherwise), log lines, and for
//! training one JSON object per step in the job folder's `metrics.jsonl`.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::Context;
use spatiallock_model::hooks::{Hooks, StepMetrics};

/// Executor hooks that draw progress for one job and never ask it to stop (Ctrl-C ends the
/// process; re-running resumes from the last checkpoint).
pub struct TerminalHooks {
    label: String,
    total: u64,
    tty: bool,
    every: u64,
    metrics_log: Option<std::fs::File>,
    layouts_total: u64,
}

impl TerminalHooks {
    /// For job `label` of `total` steps (0 when it has none).
    pub fn new(label: &str, total: u64) -> Self {
        Self {
            label: label.to_string(),
            total,
            tty: std::io::stderr().is_terminal(),
            every: (total / 20).max(1),
            metrics_log: None,
            layouts_total: 0,
        }
    }

    /// Also appends every training step to `path` as one JSON object per line.
    pub fn with_metrics_log(mut self, path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        self.metrics_log = Some(file);
        Ok(self)
    }

    fn show(&self, step: u64, total: u64, text: &str) {
        let width = 24usize;
        let done = ((step as f64 / total.max(1) as f64) * width as f64) as usize;
        let bar: String = "#".repeat(done.min(width)) + &"-".repeat(width - done.min(width));
        let line = format!("{} [{bar}] {step}/{total} {text}", self.label);
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r{line}\x1b[K");
            if step == total {
                let _ = writeln!(err);
            }
        } else if step.is_multiple_of((total / 20).max(1)) || step == total {
            let _ = writeln!(err, "{line}");
        }
    }
}

impl Hooks for TerminalHooks {
    fn metric(&mut self, name: &str, step: u64, value: f64) {
        match name {
            // Detector training reports `step` then `loss`.
            "loss" if self.total > 0 => self.show(step, self.total, &format!("loss {value:.4}")),
            "layouts_total" => self.layouts_total = value as u64,
            "layouts_done" => {
                let total = self.layouts_total.max(value as u64);
                self.show(value as u64, total, "layouts generated")
            }
            _ => {}
        }
    }

    fn train_step(&mut self, m: &StepMetrics) {
        // λ and the gates only mean something when SpatialLock modules train.
        let perception = m
            .loss_perception
            .map(|l| format!(" Lp {l:.3} λg {:.3} λp {:.3}", m.lambda_g, m.lambda_p))
            .unwrap_or_default();
        let gates = if m.gates.is_empty() {
            String::new()
        } else {
            format!(" gate {:.4}", m.gate_mean)
        };
        let text = format!(
            "loss {:.4} Lg {:.4}{perception}{gates} lr {:.2e} {:.1} img/s",
            m.loss, m.loss_diffusion, m.lr, m.images_per_second
        );
        if self.tty || m.step.is_multiple_of(self.every) || m.step == self.total {
            self.show(m.step, self.total, &text);
        }
        if let Some(log) = &mut self.metrics_log {
            match serde_json::to_string(m) {
                Ok(row) => {
                    if let Err(e) = writeln!(log, "{row}") {
                        eprintln!("{}: cannot append to the metrics log: {e}", self.label);
                        self.metrics_log = None;
                    }
                }
                Err(e) => eprintln!("{}: step {} not logged: {e}", self.label, m.step),
            }
        }
    }

    fn checkpoint_committed(&mut self, _: u64, _: &Path) {}

    fn log(&mut self, line: &str) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
        eprintln!("{}: {line}", self.label);
    }

    fn should_stop(&mut self) -> bool {
        false
    }
}
