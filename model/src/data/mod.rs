//! Datasets: samples of (image, boxes, categories, phrases, caption).

pub mod open;
pub mod rng;
pub mod shapes;

use tch::Tensor;

/// One training or validation example.
#[derive(Debug)]
pub struct Sample {
    /// `[3, H, W]` f32 in [-1, 1].
    pub image: Tensor,
    /// Normalised xyxy boxes, largest first.
    pub boxes: Vec<[f32; 4]>,
    /// Category index of each box.
    pub labels: Vec<i64>,
    /// Text of each box (the category name), for the phrase embeddings.
    pub phrases: Vec<String>,
    /// The image caption.
    pub caption: String,
}

/// A random-access dataset.
pub trait Dataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// True when empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sample `index` (deterministic).
    fn get(&self, index: usize) -> Result<Sample, crate::ModelError>;
    /// Category names, indexed by label.
    fn categories(&self) -> &[String];
}
