//! The link between a running job (a blocking thread) and its attempt supervisor: metric
//! points, checkpoints and log lines go out; a stop request comes in.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use spatiallock_model::hooks::StepMetrics;
use tokio::sync::mpsc::UnboundedSender;

/// Why a job must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The experiment was cancelled.
    Cancel,
    /// The lease is gone (409, or no successful heartbeat for too long).
    LeaseLost,
    /// The worker is shutting down (SIGTERM, Ctrl-C).
    Shutdown,
}

impl StopReason {
    fn code(self) -> u8 {
        match self {
            StopReason::Cancel => 1,
            StopReason::LeaseLost => 2,
            StopReason::Shutdown => 3,
        }
    }

    fn from_code(c: u8) -> Option<StopReason> {
        match c {
            1 => Some(StopReason::Cancel),
            2 => Some(StopReason::LeaseLost),
            3 => Some(StopReason::Shutdown),
            _ => None,
        }
    }
}

/// A shared stop flag; the first reason set wins.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicU8>);

impl StopFlag {
    /// Asks the job to stop.
    pub fn set(&self, reason: StopReason) {
        let _ = self
            .0
            .compare_exchange(0, reason.code(), Ordering::SeqCst, Ordering::SeqCst);
    }

    /// The reason, once set.
    pub fn get(&self) -> Option<StopReason> {
        StopReason::from_code(self.0.load(Ordering::SeqCst))
    }
}

/// What a job reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// A metric point.
    Metric {
        /// Name.
        name: String,
        /// Step.
        step: u64,
        /// Value.
        value: f64,
    },
    /// A checkpoint was written completely.
    Checkpoint {
        /// Step it holds.
        step: u64,
        /// Its URI.
        uri: String,
    },
    /// A log line.
    Log(String),
    /// One rank's timing of a training step (every rank reports its own; the worker's
    /// `/metrics` only, not sent to the coordinator).
    StepTiming(StepTiming),
}

/// One rank's timing of one training step, as the worker's `/metrics` exports it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepTiming {
    /// The rank's number in its data-parallel group (0 for a one-rank job).
    pub rank: usize,
    /// The step just completed (1-based).
    pub step: u64,
    /// Wall time of the step on this rank, in seconds.
    pub seconds: f64,
    /// Wall time of the step's gradient all-reduce on this rank, in seconds (0 with one rank).
    pub allreduce_seconds: f64,
    /// Gradient bytes this rank all-reduced in the step (0 with one rank).
    pub allreduce_bytes: u64,
}

impl StepTiming {
    /// Rank `rank`'s timing from its step's metrics.
    pub fn of(rank: usize, m: &StepMetrics) -> StepTiming {
        StepTiming {
            rank,
            step: m.step,
            seconds: m.step_seconds,
            allreduce_seconds: m.allreduce_seconds,
            allreduce_bytes: m.allreduce_bytes,
        }
    }
}

/// The job side of the link.
#[derive(Clone)]
pub struct Reporter {
    events: UnboundedSender<Event>,
    stop: StopFlag,
}

impl Reporter {
    /// A reporter sending to `events` and watching `stop`.
    pub fn new(events: UnboundedSender<Event>, stop: StopFlag) -> Reporter {
        Reporter { events, stop }
    }

    /// Reports a metric point.
    pub fn metric(&self, name: &str, step: u64, value: f64) {
        if value.is_finite() {
            let _ = self.events.send(Event::Metric {
                name: name.to_string(),
                step,
                value,
            });
        }
    }

    /// Reports a rank's timing of a training step.
    pub fn step_timing(&self, timing: StepTiming) {
        let _ = self.events.send(Event::StepTiming(timing));
    }

    /// Reports a written checkpoint.
    pub fn checkpoint(&self, step: u64, uri: String) {
        let _ = self.events.send(Event::Checkpoint { step, uri });
    }

    /// Adds a line to the attempt's log (and the worker's own log).
    pub fn log(&self, line: impl Into<String>) {
        let line = line.into();
        tracing::info!(target: "job", "{line}");
        let _ = self.events.send(Event::Log(line));
    }

    /// Whether, and why, the job must stop.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop.get()
    }
}
