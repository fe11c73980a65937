//! PoG (Position-Guided Learning): a detection head on the U-Net's multi-scale down-block
//! features — FPN, the optional Enh-Fusion transformer, RetinaNet-style classification and
//! regression branches — whose loss supervises object positions during training.
//!
//! Anchors: 3 per location = one size (4 × the level's stride, like torchvision's RetinaNet
//! sizes 32…512 at strides 8…128) × aspect ratios 0.5, 1, 2 (`perception.anchor_ratios`),
//! centred on each feature cell.
//!
//! Fused features are not fed back into the U-Net (`pog.reinject: true` is refused by validation): the
//! paper describes PoG as supervision during training, and re-injection would make sampling
//! depend on the perception head, which the paper's inference cost figures do not include.

pub mod anchors;
pub mod fpn;
pub mod fusion;
pub mod head;
pub mod matcher;
pub mod targets;

pub use head::{PerceptionHead, PerceptionOutput};
pub use targets::{DetectionLoss, ImageTargets};
