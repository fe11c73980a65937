//! Training targets and losses of the perception head: anchors matched to the layout boxes
//! (IoU ≥ 0.5 positive, < 0.4 negative, best anchor of every box forced positive), sigmoid focal
//! loss (α 0.25, γ 2) summed over non-ignored anchors, box loss (smooth-L1 on encoded deltas with
//! β = 1/9, or GIoU on decoded boxes) summed over positives; both divided by the number of
//! positives (at least 1) and averaged over images.

use tch::{Kind, Tensor};

use spatiallock_protocol::trial::BoxLoss;

use super::head::PerceptionOutput;
use super::matcher::{match_anchors, BETWEEN};
use crate::ops::boxes::{box_iou, decode_boxes, encode_boxes};
use crate::ops::losses::{giou_loss, sigmoid_focal_loss, smooth_l1};

/// Ground truth of one image: `boxes` `[G, 4]` xyxy in pixels and `labels` `[G]` (int64).
#[derive(Debug)]
pub struct ImageTargets {
    /// Boxes, xyxy pixels.
    pub boxes: Tensor,
    /// Category indices.
    pub labels: Tensor,
}

/// The two perception losses (scalars).
#[derive(Debug)]
pub struct DetectionLoss {
    /// Focal classification loss.
    pub classification: Tensor,
    /// Box regression loss.
    pub regression: Tensor,
}

impl DetectionLoss {
    /// Their sum, L_p.
    pub fn total(&self) -> Tensor {
        &self.classification + &self.regression
    }
}

/// Smooth-L1 transition of the RetinaNet regression loss.
const SMOOTH_L1_BETA: f64 = 1.0 / 9.0;

/// Losses of `out` against one target per image.
pub fn detection_loss(out: &PerceptionOutput, targets: &[ImageTargets], box_loss: BoxLoss) -> DetectionLoss {
    let k = out.cls.size()[2];
    let mut cls_losses = Vec::with_capacity(targets.len());
    let mut reg_losses = Vec::with_capacity(targets.len());
    for (i, t) in targets.iter().enumerate() {
        let i = i as i64;
        let (cls, reg) = (out.cls.get(i), out.reg.get(i));
        let gt = t.boxes.to_kind(Kind::Float);
        let matches = match_anchors(&box_iou(&gt, &out.anchors), 0.5, 0.4);
        let fg = matches.ge(0);
        let num_fg = fg.sum(Kind::Float).clamp_min(1.0);
        let matched = matches.clamp_min(0);
        let target = if t.labels.size()[0] == 0 {
            cls.zeros_like()
        } else {
            let labels = t.labels.index_select(0, &matched);
            labels.one_hot(k).to_kind(cls.kind()) * fg.unsqueeze(-1).to_kind(cls.kind())
        };
        let valid = matches.ne(BETWEEN);
        let focal = sigmoid_focal_loss(&cls.index(&[Some(&valid)]), &target.index(&[Some(&valid)]), 0.25, 2.0);
        cls_losses.push(focal.sum(Kind::Float) / &num_fg);

        let fg_idx = fg.nonzero().squeeze_dim(1);
        if fg_idx.size()[0] == 0 {
            reg_losses.push(reg.sum(Kind::Float) * 0.0);
            continue;
        }
        let anchors = out.anchors.index_select(0, &fg_idx);
        let boxes = gt.index_select(0, &matched.index_select(0, &fg_idx));
        let pred = reg.index_select(0, &fg_idx);
        let loss = match box_loss {
            BoxLoss::SmoothL1 => smooth_l1(&pred, &encode_boxes(&boxes, &anchors), SMOOTH_L1_BETA),
            BoxLoss::Giou => giou_loss(&decode_boxes(&pred, &anchors), &boxes),
        };
        reg_losses.push(loss.sum(Kind::Float) / &num_fg);
    }
    let mean = |v: Vec<Tensor>| Tensor::stack(&v, 0).mean(Kind::Float);
    DetectionLoss {
        classification: mean(cls_losses),
        regression: mean(reg_losses),
    }
}
