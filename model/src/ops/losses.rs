//! Detection losses, matching torchvision's `sigmoid_focal_loss` and
//! `generalized_box_iou_loss`, and smooth-L1.

use tch::{Reduction, Tensor};

/// Element-wise sigmoid focal loss (no reduction): `ce·(1−p_t)^γ·α_t`.
pub fn sigmoid_focal_loss(logits: &Tensor, targets: &Tensor, alpha: f64, gamma: f64) -> Tensor {
    let p = logits.sigmoid();
    let ce = logits.binary_cross_entropy_with_logits::<Tensor>(targets, None, None, Reduction::None);
    let p_t = &p * targets + (1.0 - &p) * (1.0 - targets);
    let one_minus: Tensor = 1.0 - p_t;
    let mut loss: Tensor = ce * one_minus.pow_tensor_scalar(gamma);
    if alpha >= 0.0 {
        let alpha_t = alpha * targets + (1.0 - alpha) * (1.0 - targets);
        loss = alpha_t * loss;
    }
    loss
}

/// `1 − GIoU` of matching rows of two `[N, 4]` xyxy tensors (no reduction), with
/// torchvision's epsilon of 1e-7 in both denominators.
pub fn giou_loss(pred: &Tensor, target: &Tensor) -> Tensor {
    const EPS: f64 = 1e-7;
    let col = |t: &Tensor, i: i64| t.select(1, i);
    let (x1, y1, x2, y2) = (col(pred, 0), col(pred, 1), col(pred, 2), col(pred, 3));
    let (u1, v1, u2, v2) = (col(target, 0), col(target, 1), col(target, 2), col(target, 3));
    let iw = (x2.minimum(&u2) - x1.maximum(&u1)).clamp_min(0.0);
    let ih = (y2.minimum(&v2) - y1.maximum(&v1)).clamp_min(0.0);
    let inter = iw * ih;
    let union = (&x2 - &x1) * (&y2 - &y1) + (&u2 - &u1) * (&v2 - &v1) - &inter;
    let iou = &inter / (&union + EPS);
    let hull = (x2.maximum(&u2) - x1.minimum(&u1)) * (y2.maximum(&v2) - y1.minimum(&v1));
    1.0 - (iou - (&hull - &union) / (hull + EPS))
}

/// Smooth-L1 with transition point `beta` (no reduction), as `torch.nn.functional.smooth_l1_loss`.
pub fn smooth_l1(pred: &Tensor, target: &Tensor, beta: f64) -> Tensor {
    let diff = (pred - target).abs();
    if beta < 1e-5 {
        return diff;
    }
    let quadratic: Tensor = 0.5 * diff.square() / beta;
    let linear = &diff - 0.5 * beta;
    quadratic.where_self(&diff.lt(beta), &linear)
}
