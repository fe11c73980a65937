//! Evaluation: COCO bbox mAP identical to pycocotools, and the Fréchet distance.

pub mod coco;
pub mod detector;
pub mod frechet;
pub mod inception;
pub mod pipeline;
pub mod run;
