//! torchvision's `Matcher(0.5, 0.4, allow_low_quality_matches=True)`: each anchor takes its
//! best GT (first on ties); IoU below 0.4 → background (−1), in [0.4, 0.5) → ignored (−2);
//! then every anchor that is a best anchor of some GT (ties included) gets its best GT back.

use tch::Tensor;

/// Anchor is background.
pub const BELOW: i64 = -1;
/// Anchor is ignored by the classification loss.
pub const BETWEEN: i64 = -2;

/// Matches for an IoU matrix `[G, A]` → `[A]` GT indices or [`BELOW`]/[`BETWEEN`].
pub fn match_anchors(iou: &Tensor, high: f64, low: f64) -> Tensor {
    let a = iou.size()[1];
    if iou.size()[0] == 0 {
        return Tensor::full([a], BELOW, (tch::Kind::Int64, iou.device()));
    }
    let (vals, all_matches) = iou.max_dim(0, false);
    let below = vals.lt(low);
    let between = vals.ge(low).logical_and(&vals.lt(high));
    let matches = all_matches.masked_fill(&below, BELOW).masked_fill(&between, BETWEEN);
    // Low-quality matches: the best anchors of each GT keep their match.
    let (best_per_gt, _) = iou.max_dim(1, true);
    let is_best = iou.eq_tensor(&best_per_gt).any_dim(0, false);
    matches.where_self(&is_best.logical_not(), &all_matches)
}
