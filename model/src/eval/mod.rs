//! Evaluation: COCO bbox mAP identical to pycocotools, per-object layout accuracy (grounding
//! accuracy, mean IoU, category recall), the Fréchet distance, and the detector augmentation
//! study (paper Table 5).

pub mod augment;
pub mod coco;
pub mod detector;
pub mod frechet;
pub mod grounding;
pub mod inception;
pub mod pipeline;
pub mod run;
