//! Opening the dataset a config names.

use spatiallock_protocol::trial::DatasetSpec;

use std::path::Path;

use super::coco::CocoDataset;
use super::flickr::Flickr30k;
use super::shapes::Shapes;
use super::Dataset;
use crate::error::ModelError;

/// The dataset of `spec` at `resolution`² pixels.
pub fn open_dataset(spec: &DatasetSpec, resolution: u32) -> Result<Box<dyn Dataset>, ModelError> {
    match spec {
        DatasetSpec::Shapes {
            split,
            count,
            seed,
            variant,
        } => Ok(Box::new(
            Shapes::new(*count as usize, *seed, *split, resolution as usize).with_variant(*variant),
        )),
        DatasetSpec::Coco {
            images,
            instances,
            captions,
        } => Ok(Box::new(CocoDataset::open(
            Path::new(images),
            Path::new(instances),
            captions.as_deref().map(Path::new),
            resolution,
        )?)),
        DatasetSpec::CocoFormat { images, annotations } => Ok(Box::new(CocoDataset::open(
            Path::new(images),
            Path::new(annotations),
            None,
            resolution,
        )?)),
        DatasetSpec::Flickr30k {
            images,
            annotations,
            sentences,
            ids,
        } => Ok(Box::new(Flickr30k::open(
            Path::new(images),
            Path::new(annotations),
            Path::new(sentences),
            Path::new(ids),
            resolution,
        )?)),
    }
}
