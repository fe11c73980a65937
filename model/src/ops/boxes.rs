//! Box geometry on xyxy tensors, matching torchvision's `box_iou`, `generalized_box_iou`,
//! `BoxCoder` (weights 1) and `batched_nms`.

use tch::{Kind, Tensor};

use crate::error::ModelError;

/// Areas of `[N, 4]` xyxy boxes.
pub fn box_area(b: &Tensor) -> Tensor {
    (b.select(1, 2) - b.select(1, 0)) * (b.select(1, 3) - b.select(1, 1))
}

/// Intersection and union of every pair: `[N, M]` each.
fn inter_union(a: &Tensor, b: &Tensor) -> (Tensor, Tensor) {
    let (area_a, area_b) = (box_area(a), box_area(b));
    let lt = a.narrow(1, 0, 2).unsqueeze(1).maximum(&b.narrow(1, 0, 2).unsqueeze(0));
    let rb = a.narrow(1, 2, 2).unsqueeze(1).minimum(&b.narrow(1, 2, 2).unsqueeze(0));
    let wh = (rb - lt).clamp_min(0.0);
    let inter = wh.select(2, 0) * wh.select(2, 1);
    let union = area_a.unsqueeze(1) + area_b.unsqueeze(0) - &inter;
    (inter, union)
}

/// IoU of every pair `[N, M]`.
pub fn box_iou(a: &Tensor, b: &Tensor) -> Tensor {
    let (inter, union) = inter_union(a, b);
    inter / union
}

/// Generalised IoU of every pair `[N, M]`.
pub fn generalized_box_iou(a: &Tensor, b: &Tensor) -> Tensor {
    let (inter, union) = inter_union(a, b);
    let iou = &inter / &union;
    let lt = a.narrow(1, 0, 2).unsqueeze(1).minimum(&b.narrow(1, 0, 2).unsqueeze(0));
    let rb = a.narrow(1, 2, 2).unsqueeze(1).maximum(&b.narrow(1, 2, 2).unsqueeze(0));
    let wh = (rb - lt).clamp_min(0.0);
    let hull = wh.select(2, 0) * wh.select(2, 1);
    &iou - (&hull - &union) / hull
}

/// Largest log-scale delta the decoder accepts (torchvision's `log(1000/16)`).
pub const BBOX_XFORM_CLIP: f64 = 4.135_166_556_742_356;

fn centers(b: &Tensor) -> (Tensor, Tensor, Tensor, Tensor) {
    let w = b.select(1, 2) - b.select(1, 0);
    let h = b.select(1, 3) - b.select(1, 1);
    let cx = b.select(1, 0) + 0.5 * &w;
    let cy = b.select(1, 1) + 0.5 * &h;
    (cx, cy, w, h)
}

/// RetinaNet's box coder: `(dx, dy, log dw, log dh)` of `gt` relative to `anchors` (`[N, 4]`).
pub fn encode_boxes(gt: &Tensor, anchors: &Tensor) -> Tensor {
    let (gx, gy, gw, gh) = centers(gt);
    let (ax, ay, aw, ah) = centers(anchors);
    Tensor::stack(
        &[(gx - &ax) / &aw, (gy - &ay) / &ah, (gw / &aw).log(), (gh / &ah).log()],
        1,
    )
}

/// Inverse of [`encode_boxes`], with the log-scale deltas clamped at [`BBOX_XFORM_CLIP`].
pub fn decode_boxes(deltas: &Tensor, anchors: &Tensor) -> Tensor {
    let (ax, ay, aw, ah) = centers(anchors);
    let dw = deltas.select(1, 2).clamp_max(BBOX_XFORM_CLIP);
    let dh = deltas.select(1, 3).clamp_max(BBOX_XFORM_CLIP);
    let cx = deltas.select(1, 0) * &aw + ax;
    let cy = deltas.select(1, 1) * &ah + ay;
    let w = dw.exp() * aw;
    let h = dh.exp() * ah;
    Tensor::stack(&[&cx - 0.5 * &w, &cy - 0.5 * &h, &cx + 0.5 * &w, &cy + 0.5 * &h], 1)
}

/// Non-maximum suppression per class: indices of the kept boxes, highest score first.
/// Boxes of different classes never suppress each other. Equal scores keep their input order.
/// `boxes` `[N, 4]` xyxy, `scores` `[N]`, `classes` `[N]`.
///
/// Errors: [`ModelError::Shape`] when the shapes disagree; libtorch errors reading the tensors.
pub fn batched_nms(
    boxes: &Tensor,
    scores: &Tensor,
    classes: &Tensor,
    iou_threshold: f64,
) -> Result<Vec<i64>, ModelError> {
    let n = scores.size().first().copied().unwrap_or(0);
    if n == 0 {
        return Ok(Vec::new());
    }
    if boxes.size() != [n, 4] || classes.size() != [n] {
        return Err(ModelError::shape(
            "nms boxes/classes",
            format!("[{n}, 4] / [{n}]"),
            &boxes.size(),
        ));
    }
    let boxes = boxes.to_kind(Kind::Float).contiguous();
    let b: Vec<f32> = Vec::<f32>::try_from(boxes.view([-1]))?;
    let s: Vec<f32> = Vec::<f32>::try_from(scores.to_kind(Kind::Float).contiguous())?;
    let c: Vec<i64> = Vec::<i64>::try_from(classes.to_kind(Kind::Int64).contiguous())?;
    let mut order: Vec<usize> = (0..n as usize).collect();
    order.sort_by(|&i, &j| s[j].total_cmp(&s[i]));
    let area = |i: usize| (b[4 * i + 2] - b[4 * i]) * (b[4 * i + 3] - b[4 * i + 1]);
    let iou = |i: usize, j: usize| {
        let w = (b[4 * i + 2].min(b[4 * j + 2]) - b[4 * i].max(b[4 * j])).max(0.0);
        let h = (b[4 * i + 3].min(b[4 * j + 3]) - b[4 * i + 1].max(b[4 * j + 1])).max(0.0);
        let inter = w * h;
        inter / (area(i) + area(j) - inter)
    };
    let mut kept: Vec<usize> = Vec::new();
    for &i in &order {
        let suppressed = kept
            .iter()
            .any(|&k| c[k] == c[i] && f64::from(iou(k, i)) > iou_threshold);
        if !suppressed {
            kept.push(i);
        }
    }
    Ok(kept.into_iter().map(|i| i as i64).collect())
}
