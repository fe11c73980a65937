//! Evaluation: COCO bbox mAP identical to pycocotools, per-object layout accuracy (grounding
//! accuracy, mean IoU, category recall), and the Fréchet distance.

pub mod coco;
pub mod detector;
pub mod frechet;
pub mod grounding;
pub mod inception;
pub mod pipeline;
pub mod run;
