//! Datasets: samples of (image, boxes, categories, phrases, caption).

pub mod coco;
pub mod flickr;
pub mod open;
pub mod preprocess;
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

/// What a loader skipped, by documented rule, instead of failing.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LoadReport {
    /// Crowd annotations (`iscrowd: 1`).
    pub skipped_crowd: usize,
    /// Images with no usable box.
    pub skipped_images_without_boxes: usize,
    /// Annotations whose image is not listed.
    pub skipped_annotations_of_unknown_images: usize,
    /// Flickr30k phrases without a box (scene, non-visual).
    pub skipped_phrases_without_box: usize,
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
