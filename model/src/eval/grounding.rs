//! Per-object layout accuracy: how many of the input boxes a generated image actually shows, at
//! the right place ("grounding accuracy", the YOLO-score family of layout-to-image metrics
//! reported by LostGAN (Sun & Wu, ICCV 2019), LAMA (Li et al., ICCV 2021) and GLIGEN (Li et al.,
//! CVPR 2023)), and whether it shows their categories at all (category recall).
//!
//! Matching follows pycocotools' greedy `evaluateImg` at one IoU threshold (0.5): detections in
//! descending score order (stable), each taking the still unmatched input box of its own category
//! with the highest IoU ≥ 0.5 (on equal IoU the later box wins, as pycocotools' strict `<`
//! makes it); one-to-one. Unlike COCO AP it yields one number per object, not a ranking curve.

use std::collections::HashMap;

use super::detector::Detected;
use super::pipeline::LayoutBoxes;

/// The IoU at which a detection counts as placing an input box (pycocotools' AP50 threshold).
pub const MATCH_IOU: f64 = 0.5;

/// The least detection score that counts as the detector seeing an object (the detections the
/// sample pictures draw). mAP ranks every detection down to `eval.detections.score_threshold`
/// (0.05 by default), but a per-object count would credit a detector for low-score guesses
/// sprayed over an image, so these metrics take only confident detections.
pub const MIN_SCORE: f32 = 0.3;

/// Layout accuracy over a set of generated images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroundingScores {
    /// Percent of input boxes matched by a detection of their category at IoU ≥ 0.5; `None`
    /// when the layouts have no boxes.
    pub grounding_accuracy: Option<f64>,
    /// Mean IoU (fraction 0–1) of the matched (input box, detection) pairs; `None` when nothing
    /// matched.
    pub mean_iou: Option<f64>,
    /// Percent of input objects whose category is detected anywhere in their image (location
    /// ignored; a detection counts for one object); `None` when the layouts have no boxes.
    pub category_recall: Option<f64>,
    /// Input boxes scored.
    pub objects: usize,
    /// Input boxes matched at IoU ≥ 0.5.
    pub matched: usize,
}

/// IoU of two xyxy boxes in the same units; 0 when they do not overlap or are degenerate.
fn iou_xyxy(a: [f64; 4], b: [f64; 4]) -> f64 {
    let w = a[2].min(b[2]) - a[0].max(b[0]);
    let h = a[3].min(b[3]) - a[1].max(b[1]);
    if w <= 0.0 || h <= 0.0 {
        return 0.0;
    }
    let inter = w * h;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// The IoUs of one image's matched pairs. `layout` boxes are normalised xyxy, `dets` are pixel
/// xyxy on an image of side `resolution` pixels.
pub fn match_image(layout: &LayoutBoxes, dets: &[Detected], resolution: f64) -> Vec<f64> {
    let gts: Vec<[f64; 4]> = layout.boxes.iter().map(|b| b.map(f64::from)).collect();
    let mut order: Vec<&Detected> = dets.iter().collect();
    order.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut taken = vec![false; gts.len()];
    let mut ious = Vec::new();
    for d in order {
        let bbox = d.bbox.map(|v| f64::from(v) / resolution);
        let mut best = MATCH_IOU.min(1.0 - 1e-10);
        let mut found = None;
        for (g, gt) in gts.iter().enumerate() {
            if taken[g] || layout.labels.get(g) != Some(&d.label) {
                continue;
            }
            let v = iou_xyxy(bbox, *gt);
            if v >= best {
                best = v;
                found = Some(g);
            }
        }
        if let Some(g) = found {
            taken[g] = true;
            ious.push(best);
        }
    }
    ious
}

/// Input objects of one image whose category is detected: per category, the fewer of its input
/// objects and its detections.
pub fn categories_found(layout: &LayoutBoxes, dets: &[Detected]) -> usize {
    let mut wanted: HashMap<i64, usize> = HashMap::new();
    for &l in &layout.labels {
        *wanted.entry(l).or_default() += 1;
    }
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for d in dets {
        *seen.entry(d.label).or_default() += 1;
    }
    wanted
        .iter()
        .map(|(l, &n)| n.min(seen.get(l).copied().unwrap_or(0)))
        .sum()
}

/// Scores each image's detections (`dets[i]`, pixel xyxy, after NMS) scoring at least
/// [`MIN_SCORE`] against its own input layout (`layouts[i]`, normalised xyxy) on images of side
/// `resolution` pixels. Images beyond the shorter of the two lists are ignored.
pub fn grounding_scores(layouts: &[LayoutBoxes], dets: &[Vec<Detected>], resolution: f64) -> GroundingScores {
    let (mut objects, mut found) = (0usize, 0usize);
    let mut ious = Vec::new();
    for (layout, all) in layouts.iter().zip(dets) {
        let d: Vec<Detected> = all.iter().filter(|d| d.score >= MIN_SCORE).cloned().collect();
        let d = d.as_slice();
        objects += layout.boxes.len().min(layout.labels.len());
        ious.extend(match_image(layout, d, resolution));
        found += categories_found(layout, d);
    }
    let pct = |n: usize| (objects > 0).then(|| 100.0 * n as f64 / objects as f64);
    GroundingScores {
        grounding_accuracy: pct(ious.len()),
        mean_iou: (!ious.is_empty()).then(|| ious.iter().sum::<f64>() / ious.len() as f64),
        category_recall: pct(found),
        objects,
        matched: ious.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One image of side 100 px with input boxes (normalised) and labels.
    fn layout(boxes: &[([f32; 4], i64)]) -> LayoutBoxes {
        LayoutBoxes {
            boxes: boxes.iter().map(|(b, _)| *b).collect(),
            labels: boxes.iter().map(|(_, l)| *l).collect(),
        }
    }

    /// A detection in pixels on a 100 px image.
    fn det(bbox: [f32; 4], label: i64, score: f32) -> Detected {
        Detected { bbox, score, label }
    }

    /// Equal up to the f32 rounding of the boxes.
    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-6)
    }

    #[test]
    fn a_perfect_detection_matches_with_iou_one() {
        let l = layout(&[([0.1, 0.1, 0.5, 0.5], 0), ([0.6, 0.6, 0.9, 0.9], 1)]);
        let d = vec![
            det([10.0, 10.0, 50.0, 50.0], 0, 0.9),
            det([60.0, 60.0, 90.0, 90.0], 1, 0.8),
        ];
        let s = grounding_scores(&[l], &[d], 100.0);
        assert!(close(s.grounding_accuracy, 100.0), "{s:?}");
        assert!(close(s.mean_iou, 1.0), "{s:?}");
        assert!(close(s.category_recall, 100.0), "{s:?}");
        assert_eq!((s.objects, s.matched), (2, 2));
    }

    #[test]
    fn a_detection_of_another_category_does_not_match() {
        let l = layout(&[([0.1, 0.1, 0.5, 0.5], 0)]);
        let d = vec![det([10.0, 10.0, 50.0, 50.0], 3, 0.9)];
        let s = grounding_scores(&[l], &[d], 100.0);
        assert!(close(s.grounding_accuracy, 0.0), "{s:?}");
        assert_eq!(s.mean_iou, None);
        assert!(close(s.category_recall, 0.0), "{s:?}");
    }

    #[test]
    fn iou_below_one_half_does_not_match_but_the_category_counts() {
        // 40×40 box against a 40×40 box shifted by 20 px: IoU 800 / 2400 = 1/3.
        let l = layout(&[([0.1, 0.1, 0.5, 0.5], 0)]);
        let d = vec![det([30.0, 10.0, 70.0, 50.0], 0, 0.9)];
        let s = grounding_scores(&[l], &[d], 100.0);
        assert!(close(s.grounding_accuracy, 0.0), "{s:?}");
        assert_eq!(s.mean_iou, None);
        assert!(close(s.category_recall, 100.0), "{s:?}");
        // Shifted by 10 px: IoU 1200 / 2000 = 0.6 matches.
        let d = vec![det([20.0, 10.0, 60.0, 50.0], 0, 0.9)];
        let s = grounding_scores(&[layout(&[([0.1, 0.1, 0.5, 0.5], 0)])], &[d], 100.0);
        assert!(close(s.grounding_accuracy, 100.0) && close(s.mean_iou, 0.6), "{s:?}");
    }

    #[test]
    fn two_detections_of_one_box_match_it_once_highest_score_first() {
        let l = layout(&[([0.1, 0.1, 0.5, 0.5], 0), ([0.6, 0.6, 0.9, 0.9], 0)]);
        // The higher-scored, less exact detection takes the box; the exact one finds it taken.
        let d = vec![
            det([10.0, 10.0, 50.0, 50.0], 0, 0.5),
            det([20.0, 10.0, 60.0, 50.0], 0, 0.9),
        ];
        let s = grounding_scores(&[l], &[d], 100.0);
        assert!(close(s.grounding_accuracy, 50.0), "{s:?}");
        assert!(close(s.mean_iou, 0.6), "{s:?}");
        // Both boxes are of category 0 and there are two detections of it.
        assert!(close(s.category_recall, 100.0), "{s:?}");
    }

    #[test]
    fn no_detections_score_zero_and_no_boxes_score_nothing() {
        let l = layout(&[([0.1, 0.1, 0.5, 0.5], 0), ([0.6, 0.6, 0.9, 0.9], 2)]);
        let s = grounding_scores(&[l], &[vec![]], 100.0);
        assert!(
            close(s.grounding_accuracy, 0.0) && close(s.category_recall, 0.0),
            "{s:?}"
        );
        assert_eq!((s.mean_iou, s.objects, s.matched), (None, 2, 0));
        let s = grounding_scores(&[layout(&[])], &[vec![det([0.0, 0.0, 9.0, 9.0], 0, 0.9)]], 100.0);
        assert_eq!(
            (s.grounding_accuracy, s.category_recall, s.mean_iou),
            (None, None, None)
        );
    }

    #[test]
    fn detections_below_the_minimum_score_do_not_count() {
        let l = layout(&[([0.1, 0.1, 0.5, 0.5], 0)]);
        let guess = vec![det([10.0, 10.0, 50.0, 50.0], 0, MIN_SCORE - 0.01)];
        let s = grounding_scores(std::slice::from_ref(&l), &[guess], 100.0);
        assert!(close(s.grounding_accuracy, 0.0) && close(s.category_recall, 0.0));
        let seen = vec![det([10.0, 10.0, 50.0, 50.0], 0, MIN_SCORE)];
        let s = grounding_scores(&[l], &[seen], 100.0);
        assert!(close(s.grounding_accuracy, 100.0) && close(s.category_recall, 100.0));
    }

    #[test]
    fn each_image_is_scored_against_its_own_layout() {
        let a = layout(&[([0.1, 0.1, 0.5, 0.5], 0)]);
        let b = layout(&[([0.6, 0.6, 0.9, 0.9], 1)]);
        // Image 1's detection sits where image 0's box is: it must not count for image 0.
        let dets = vec![vec![], vec![det([10.0, 10.0, 50.0, 50.0], 0, 0.9)]];
        let s = grounding_scores(&[a, b], &dets, 100.0);
        assert!(
            close(s.grounding_accuracy, 0.0) && close(s.category_recall, 0.0),
            "{s:?}"
        );
    }
}
