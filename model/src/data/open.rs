//! Opening the dataset a config names.

use spatiallock_protocol::trial::DatasetSpec;

use super::shapes::Shapes;
use super::Dataset;
use crate::error::ModelError;

/// The dataset of `spec` at `resolution`² pixels.
pub fn open_dataset(spec: &DatasetSpec, resolution: u32) -> Result<Box<dyn Dataset>, ModelError> {
    match spec {
        DatasetSpec::Shapes { split, count, seed } => Ok(Box::new(Shapes::new(
            *count as usize,
            *seed,
            *split,
            resolution as usize,
        ))),
        other => Err(ModelError::Input(format!(
            "dataset {}: reading COCO, Flickr30k Entities and COCO-format files is not available in this \
             build yet; use the synthetic `shapes` dataset",
            other.label()
        ))),
    }
}
