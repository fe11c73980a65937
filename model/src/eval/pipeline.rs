//! Scoring generated (or real) images against their layouts: detections and layout boxes to
//! COCO form, mAP through [`super::coco`].

use std::collections::HashMap;

use super::coco::{evaluate, CocoEval, CocoGt, Detection, GtBox};
use super::detector::Detected;

/// One image's layout boxes (normalised xyxy) and labels.
#[derive(Debug, Clone)]
pub struct LayoutBoxes {
    /// Boxes, normalised xyxy.
    pub boxes: Vec<[f32; 4]>,
    /// Category indices.
    pub labels: Vec<i64>,
}

/// COCO ground truth from layouts (image ids 1…, category ids = label + 1, area = w·h pixels).
pub fn layouts_to_gt(layouts: &[LayoutBoxes], categories: &[String], resolution: f64) -> CocoGt {
    let mut annotations = Vec::new();
    for (i, l) in layouts.iter().enumerate() {
        for (b, &label) in l.boxes.iter().zip(&l.labels) {
            let (x, y) = (f64::from(b[0]) * resolution, f64::from(b[1]) * resolution);
            let (w, h) = (f64::from(b[2] - b[0]) * resolution, f64::from(b[3] - b[1]) * resolution);
            annotations.push(GtBox {
                id: annotations.len() as u64 + 1,
                image_id: i as u64 + 1,
                category_id: label as u64 + 1,
                bbox: [x, y, w, h],
                area: w * h,
                iscrowd: false,
            });
        }
    }
    CocoGt {
        images: (1..=layouts.len() as u64).collect(),
        categories: (1..=categories.len() as u64).collect(),
        category_names: categories
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u64 + 1, n.clone()))
            .collect::<HashMap<_, _>>(),
        annotations,
    }
}

/// COCO results from per-image detections (pixels xyxy → xywh).
pub fn detections_to_coco(dets: &[Vec<Detected>]) -> Vec<Detection> {
    dets.iter()
        .enumerate()
        .flat_map(|(i, ds)| {
            ds.iter().map(move |d| Detection {
                image_id: i as u64 + 1,
                category_id: d.label as u64 + 1,
                bbox: [
                    f64::from(d.bbox[0]),
                    f64::from(d.bbox[1]),
                    f64::from(d.bbox[2] - d.bbox[0]),
                    f64::from(d.bbox[3] - d.bbox[1]),
                ],
                score: f64::from(d.score),
            })
        })
        .collect()
}

/// mAP of detections against layouts.
pub fn score(layouts: &[LayoutBoxes], dets: &[Vec<Detected>], categories: &[String], resolution: f64) -> CocoEval {
    let gt = layouts_to_gt(layouts, categories, resolution);
    evaluate(&gt, &detections_to_coco(dets))
}
