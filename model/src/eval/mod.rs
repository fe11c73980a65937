//! Evaluation: COCO bbox mAP identical to pycocotools, and the Fréchet distance.

pub mod coco;
pub mod frechet;
