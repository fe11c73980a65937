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

impl Sample {
    /// Everything but the pixels.
    pub fn annotations(&self) -> Annotations {
        Annotations {
            boxes: self.boxes.clone(),
            labels: self.labels.clone(),
            phrases: self.phrases.clone(),
            caption: self.caption.clone(),
        }
    }
}

/// What a sample says about its image, without the pixels (enough to train on a cached latent).
#[derive(Debug, Clone, PartialEq)]
pub struct Annotations {
    /// Normalised xyxy boxes, largest first.
    pub boxes: Vec<[f32; 4]>,
    /// Category index of each box.
    pub labels: Vec<i64>,
    /// Text of each box.
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
    /// Sample `index` without its pixels; datasets that can skip decoding the image override it.
    fn annotations(&self, index: usize) -> Result<Annotations, crate::ModelError> {
        self.get(index).map(|s| s.annotations())
    }
    /// Identifies the pixels this dataset yields (sources and preprocessing): two datasets with
    /// the same image fingerprint give the same image at every index, so they share latents.
    fn image_fingerprint(&self) -> String;
    /// Identifies everything else a sample holds (boxes, labels, phrases, captions): two datasets
    /// with the same annotation fingerprint give the same annotations at every index.
    fn annotation_fingerprint(&self) -> String;
}
