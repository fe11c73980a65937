//! A one-line progress bar on stderr for training runs.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use spatiallock_model::train::trainer::StepMetrics;

/// Renders training progress: redrawn in place on a terminal, a line every `every` steps otherwise.
pub struct Progress {
    label: String,
    total: u64,
    start: Instant,
    first_step: Option<u64>,
    images_per_step: usize,
    tty: bool,
    every: u64,
}

impl Progress {
    /// For a run of `total` steps of `images_per_step` images.
    pub fn new(label: &str, total: u64, images_per_step: usize) -> Self {
        Self {
            label: label.to_string(),
            total,
            start: Instant::now(),
            first_step: None,
            images_per_step,
            tty: std::io::stderr().is_terminal(),
            every: (total / 20).max(1),
        }
    }

    /// Images per second since the first step seen.
    pub fn images_per_second(&mut self, step: u64) -> f64 {
        let first = *self.first_step.get_or_insert(step.saturating_sub(1));
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        (step - first) as f64 * self.images_per_step as f64 / secs
    }

    /// Shows one step.
    pub fn show(&mut self, m: &StepMetrics, images_per_s: f64) {
        let width = 24usize;
        let done = ((m.step as f64 / self.total.max(1) as f64) * width as f64) as usize;
        let bar: String = "#".repeat(done.min(width)) + &"-".repeat(width - done.min(width));
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
        let line = format!(
            "{} [{bar}] {}/{} loss {:.4} Lg {:.4}{perception}{gates} lr {:.2e} {:.1} img/s",
            self.label, m.step, self.total, m.loss, m.loss_diffusion, m.lr, images_per_s
        );
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r{line}\x1b[K");
            if m.step == self.total {
                let _ = writeln!(err);
            }
        } else if m.step.is_multiple_of(self.every) || m.step == self.total {
            let _ = writeln!(err, "{line}");
        }
    }
}
