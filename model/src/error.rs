//! Errors of the model crate.

use std::path::PathBuf;

/// Anything that can go wrong building, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    // The cause is the error source, so `{:#}` prints "path: cause" once.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A config file is malformed or asks for something unsupported.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Weights do not match the architecture.
    #[error("{path}: {message}")]
    Weights {
        /// The weights file or folder.
        path: PathBuf,
        /// Which keys or shapes disagree.
        message: String,
    },
    /// An input tensor has the wrong shape.
    #[error("{tensor}: expected shape {expected}, got {got:?}")]
    Shape {
        /// The input's name.
        tensor: String,
        /// What was expected.
        expected: String,
        /// What was given.
        got: Vec<i64>,
    },
    /// An input has invalid values.
    #[error("{0}")]
    Input(String),
    /// Training diverged: a loss became NaN or infinite.
    #[error("step {step}: {what} is not finite ({value})")]
    NonFinite {
        /// The optimiser step.
        step: u64,
        /// Which quantity.
        what: String,
        /// Its value.
        value: f64,
    },
    /// The caller asked the run to stop before it finished (cancel, lease loss, shutdown);
    /// the text says where it stopped.
    #[error("stopped on request {0}")]
    Stopped(String),
    /// A collective of a data-parallel group failed: another rank is gone or stalled, or the
    /// rendezvous did not complete in time. The text names the rank(s) when they are known.
    #[error("data-parallel group: {0}")]
    Collective(String),
    /// A value could not be turned into JSON (a non-finite float, a map with non-string keys).
    #[error("cannot write {what} as JSON: {message}")]
    Json {
        /// What was being written.
        what: String,
        /// serde_json's message.
        message: String,
    },
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// `value` as a JSON value. Errors: [`ModelError::Json`] naming `what`.
pub fn to_json<T: serde::Serialize + ?Sized>(what: &str, value: &T) -> Result<serde_json::Value, ModelError> {
    serde_json::to_value(value).map_err(|e| ModelError::Json {
        what: what.to_string(),
        message: e.to_string(),
    })
}

/// `value` as pretty-printed JSON text. Errors: [`ModelError::Json`] naming `what`.
pub fn to_json_text<T: serde::Serialize + ?Sized>(what: &str, value: &T) -> Result<String, ModelError> {
    serde_json::to_string_pretty(value).map_err(|e| ModelError::Json {
        what: what.to_string(),
        message: e.to_string(),
    })
}

impl ModelError {
    /// A shape error for `tensor`.
    pub fn shape(tensor: &str, expected: impl Into<String>, got: &[i64]) -> Self {
        ModelError::Shape {
            tensor: tensor.to_string(),
            expected: expected.into(),
            got: got.to_vec(),
        }
    }
}
